//! AMD SVM (AMD64 APM vol. 2, chapter 15): detection, enabling on the bootstrap CPU, and a boot-time
//! check that VMRUN works - a tiny real-mode probe guest under nested paging that writes one byte to
//! an intercepted I/O port and halts.
//!
//! This is the platform end of the hypervisor: the VMCB layout (APM appendix B), the host save
//! area, and the VMRUN instruction. The generic parts (nested page tables, guest memory, decoding)
//! are in `ember_kernel::vmm`. Not built yet: the vCPU loop for real guests, guest GPR switching,
//! VMLOAD/VMSAVE of the hidden segment state, event injection, and enabling SVM on the other CPUs.

use super::cpu;
use super::dma::DmaBuffer;
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use ember_kernel::vmm::bus::IoBus;
use ember_kernel::vmm::exit::{handle_exit, svm_io_exit, ExitAction, VcpuRegs, VmExit};
use ember_kernel::vmm::npt::{NestedPageTables, TableFrames};
use ember_kernel::vmm::serial::{ComPort, ConsoleLog, Serial};
use ember_kernel::vmm::{GuestPhysAddr, HostPhysAddr};

const MSR_EFER: u32 = 0xc000_0080;
const EFER_SVME: u64 = 1 << 12;
const MSR_VM_CR: u32 = 0xc001_0114;
const VM_CR_SVMDIS: u64 = 1 << 4;
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;

// VMCB control area offsets (APM B-1).
const INTERCEPT_MISC1: usize = 0x00c;
const INTERCEPT_MISC2: usize = 0x010;
const IOPM_BASE: usize = 0x040;
const MSRPM_BASE: usize = 0x048;
const GUEST_ASID: usize = 0x058;
const TLB_CONTROL: usize = 0x05c;
const EXITCODE: usize = 0x070;
const EXITINFO1: usize = 0x078;
const EXITINFO2: usize = 0x080;
const NP_ENABLE: usize = 0x090;
const N_CR3: usize = 0x0b0;
// State save area offsets (APM B-2), from the VMCB start.
const SAVE: usize = 0x400;
const EFER: usize = 0x4d0;
const CR4: usize = 0x548;
const CR3: usize = 0x550;
const CR0: usize = 0x558;
const DR7: usize = 0x560;
const DR6: usize = 0x568;
const RFLAGS: usize = 0x570;
const RIP: usize = 0x578;
const RSP: usize = 0x5d8;
const RAX: usize = 0x5f8;
const G_PAT: usize = 0x668;

// Intercepts (APM B-1): misc vector 1, misc vector 2.
const INTERCEPT_INTR: u32 = 1 << 0;
const INTERCEPT_NMI: u32 = 1 << 1;
const INTERCEPT_CPUID: u32 = 1 << 18;
const INTERCEPT_HLT: u32 = 1 << 24;
const INTERCEPT_IOIO: u32 = 1 << 27;
const INTERCEPT_MSR: u32 = 1 << 28;
const INTERCEPT_SHUTDOWN: u32 = 1 << 31;
const INTERCEPT_VMRUN: u32 = 1 << 0;

// Exit codes (APM C-1).
const EXIT_INTR: u64 = 0x60;
const EXIT_NMI: u64 = 0x61;
const EXIT_HLT: u64 = 0x78;
const EXIT_IOIO: u64 = 0x7b;
const EXIT_SHUTDOWN: u64 = 0x7f;
const EXIT_NPF: u64 = 0x400;

/// What the CPU offers (CPUID 0x8000000A).
#[derive(Debug, Clone, Copy)]
pub struct SvmFeatures {
    pub asids: u32,
    pub nested_paging: bool,
    pub nrip_save: bool,
    pub decode_assists: bool,
}

/// SVM support, or why there is none.
pub fn detect() -> Result<SvmFeatures, String> {
    if cpu::cpuid(0x8000_0000, 0).eax < 0x8000_000a || cpu::cpuid(0x8000_0001, 0).ecx & (1 << 2) == 0 {
        if cpu::cpuid(1, 0).ecx & (1 << 5) != 0 {
            return Err(String::from("the CPU offers Intel VMX; this build has only the AMD SVM backend"));
        }
        return Err(String::from("the CPU offers no hardware virtualization (neither SVM nor VMX)"));
    }
    // SAFETY: VM_CR exists on every CPU that reports SVM.
    if unsafe { cpu::rdmsr(MSR_VM_CR) } & VM_CR_SVMDIS != 0 {
        return Err(String::from("SVM is disabled by the firmware (VM_CR.SVMDIS)"));
    }
    let l = cpu::cpuid(0x8000_000a, 0);
    Ok(SvmFeatures {
        asids: l.ebx,
        nested_paging: l.edx & (1 << 0) != 0,
        nrip_save: l.edx & (1 << 3) != 0,
        decode_assists: l.edx & (1 << 7) != 0,
    })
}

/// SVM switched on for this CPU: EFER.SVME and the host save area.
pub struct SvmCpu {
    _host_save: DmaBuffer,
    pub features: SvmFeatures,
}

/// Enables SVM on the calling CPU.
pub fn enable() -> Result<SvmCpu, String> {
    let features = detect()?;
    if !features.nested_paging {
        return Err(String::from("the CPU has SVM but no nested paging"));
    }
    let host_save = DmaBuffer::new(4096).ok_or("out of memory for the SVM host save area")?;
    // SAFETY: EFER exists on every x86_64 CPU; setting SVME on a CPU that reports SVM (checked above)
    // only makes the SVM instructions available. VM_HSAVE_PA gets a page-aligned page that lives as
    // long as the returned `SvmCpu` (which is kept for the life of the system).
    unsafe {
        cpu::wrmsr(MSR_EFER, cpu::rdmsr(MSR_EFER) | EFER_SVME);
        cpu::wrmsr(MSR_VM_HSAVE_PA, host_save.phys());
    }
    Ok(SvmCpu { _host_save: host_save, features })
}

/// Page-table frames for nested page tables, from DMA buffers (zeroed, page aligned, identity
/// mapped, so their address is their host-physical address).
#[derive(Default)]
struct Frames(Vec<DmaBuffer>);

impl Frames {
    fn get(&self, table: HostPhysAddr) -> &DmaBuffer {
        self.0.iter().find(|b| b.phys() == table.0).expect("a table this allocator handed out")
    }
}

impl TableFrames for Frames {
    fn alloc(&mut self) -> Option<HostPhysAddr> {
        let b = DmaBuffer::new(4096)?;
        let a = HostPhysAddr(b.phys());
        self.0.push(b);
        Some(a)
    }
    fn read_entry(&self, table: HostPhysAddr, index: usize) -> u64 {
        let mut e = [0u8; 8];
        self.get(table).read(index * 8, &mut e);
        u64::from_le_bytes(e)
    }
    fn write_entry(&mut self, table: HostPhysAddr, index: usize, value: u64) {
        self.get(table).write(index * 8, &value.to_le_bytes());
    }
}

fn put32(b: &DmaBuffer, at: usize, v: u32) {
    b.write(at, &v.to_le_bytes());
}

fn put64(b: &DmaBuffer, at: usize, v: u64) {
    b.write(at, &v.to_le_bytes());
}

fn get64(b: &DmaBuffer, at: usize) -> u64 {
    let mut v = [0u8; 8];
    b.read(at, &mut v);
    u64::from_le_bytes(v)
}

/// A segment register in the state save area: selector, attributes (descriptor bits 40-47 and
/// 52-55), limit, base.
fn segment(vmcb: &DmaBuffer, at: usize, selector: u16, attrib: u16, limit: u32) {
    vmcb.write(at, &selector.to_le_bytes());
    vmcb.write(at + 2, &attrib.to_le_bytes());
    put32(vmcb, at + 4, limit);
    put64(vmcb, at + 8, 0);
}

/// Runs the guest of `vmcb` until its next #VMEXIT; returns the exit code.
fn vmrun(vmcb: &DmaBuffer) -> u64 {
    let pa = vmcb.phys();
    x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: SVM is enabled on this CPU (EFER.SVME and VM_HSAVE_PA set by `enable`), and `pa`
        // is a page-aligned VMCB that stays allocated across the call. VMRUN saves the host state it
        // restores on #VMEXIT (RSP, RIP, RFLAGS, CR0/3/4, EFER, segments and descriptor tables) in
        // the host save area; the general-purpose registers are not switched, so every one the
        // guest may change is declared clobbered, and RBX/RBP (which cannot be) are saved on the
        // stack. CLGI/STGI bracket the run as the APM requires; interrupts are off around it, and a
        // physical interrupt during the guest is an INTR exit (intercepted).
        unsafe {
            core::arch::asm!(
                "push rbx",
                "push rbp",
                "clgi",
                "vmrun rax",
                "stgi",
                "pop rbp",
                "pop rbx",
                inout("rax") pa => _,
                out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            );
        }
    });
    get64(vmcb, EXITCODE)
}

/// The probe guest (real mode, at 0x1000): `mov dx, 0x3f8; mov al, 'K'; out dx, al; hlt`.
const PROBE_CODE: [u8; 7] = [0xba, 0xf8, 0x03, 0xb0, b'K', 0xee, 0xf4];
const PROBE_GPA: u64 = 0x1000;

/// A vCPU's VMCB as the generic exit handler sees it.
struct VmcbRegs<'a>(&'a DmaBuffer);

impl VcpuRegs for VmcbRegs<'_> {
    fn rax(&self) -> u64 {
        get64(self.0, RAX)
    }
    fn set_rax(&mut self, v: u64) {
        put64(self.0, RAX, v)
    }
    fn rip(&self) -> u64 {
        get64(self.0, RIP)
    }
    fn set_rip(&mut self, v: u64) {
        put64(self.0, RIP, v)
    }
}

/// The last exit of the guest of `vmcb`, in vendor-neutral terms.
fn exit_of(vmcb: &DmaBuffer, code: u64) -> VmExit {
    match code {
        EXIT_INTR | EXIT_NMI => VmExit::HostInterrupt,
        EXIT_IOIO => svm_io_exit(get64(vmcb, EXITINFO1), get64(vmcb, EXITINFO2)),
        EXIT_HLT => VmExit::Hlt,
        EXIT_SHUTDOWN => VmExit::Shutdown,
        EXIT_NPF => {
            VmExit::NestedPageFault { gpa: get64(vmcb, EXITINFO2), write: get64(vmcb, EXITINFO1) & 2 != 0 }
        }
        u64::MAX => VmExit::InvalidState,
        code => VmExit::Other { code, what: String::from("SVM exit") },
    }
}

/// Checks that VMRUN works: runs the probe guest under nested paging with every I/O port and MSR
/// intercepted, its COM1 writes going through the generic exit handler and the I/O bus to the
/// 16550A model, and expects `K` on that console and then a HLT. Returns what happened, in words.
pub fn probe(_cpu: &SvmCpu) -> Result<String, String> {
    let mut frames = Frames::default();
    let oom = || String::from("out of memory for the probe guest");
    let mut npt = NestedPageTables::new(&mut frames).map_err(|e| format!("{e}"))?;
    let ram = DmaBuffer::new(4096).ok_or_else(oom)?;
    ram.write(0, &PROBE_CODE);
    npt.map(&mut frames, GuestPhysAddr(PROBE_GPA), HostPhysAddr(ram.phys()), 4096, true)
        .map_err(|e| format!("{e}"))?;
    let vmcb = DmaBuffer::new(4096).ok_or_else(oom)?;
    let iopm = DmaBuffer::new(3 * 4096).ok_or_else(oom)?;
    let msrpm = DmaBuffer::new(2 * 4096).ok_or_else(oom)?;
    iopm.write(0, &[0xff; 3 * 4096]);
    msrpm.write(0, &[0xff; 2 * 4096]);

    let misc1 = INTERCEPT_INTR
        | INTERCEPT_NMI
        | INTERCEPT_CPUID
        | INTERCEPT_HLT
        | INTERCEPT_IOIO
        | INTERCEPT_MSR
        | INTERCEPT_SHUTDOWN;
    put32(&vmcb, INTERCEPT_MISC1, misc1);
    put32(&vmcb, INTERCEPT_MISC2, INTERCEPT_VMRUN);
    put64(&vmcb, IOPM_BASE, iopm.phys());
    put64(&vmcb, MSRPM_BASE, msrpm.phys());
    put32(&vmcb, GUEST_ASID, 1);
    vmcb.write(TLB_CONTROL, &[1]); // flush this ASID's TLB entries on the first run
    put64(&vmcb, NP_ENABLE, 1);
    put64(&vmcb, N_CR3, npt.root().0);
    // Real mode: code and data segments at base 0, 64 KiB limits.
    let (code, data) = (0x009b, 0x0093);
    for (i, attrib) in [data, code, data, data, data, data].iter().enumerate() {
        segment(&vmcb, SAVE + 0x10 * i, 0, *attrib, 0xffff); // ES, CS, SS, DS, FS, GS
    }
    segment(&vmcb, SAVE + 0x60, 0, 0, 0xffff); // GDTR
    segment(&vmcb, SAVE + 0x70, 0, 0x0082, 0xffff); // LDTR
    segment(&vmcb, SAVE + 0x80, 0, 0, 0x3ff); // IDTR (the real-mode vector table)
    segment(&vmcb, SAVE + 0x90, 0, 0x008b, 0xffff); // TR
    put64(&vmcb, EFER, EFER_SVME);
    put64(&vmcb, CR0, 0x10);
    put64(&vmcb, CR3, 0);
    put64(&vmcb, CR4, 0);
    put64(&vmcb, DR6, 0xffff_0ff0);
    put64(&vmcb, DR7, 0x400);
    put64(&vmcb, RFLAGS, 0x2);
    put64(&vmcb, RIP, PROBE_GPA);
    put64(&vmcb, RSP, 0);
    put64(&vmcb, G_PAT, 0x0007_0406_0007_0406);

    let console = Rc::new(RefCell::new(ConsoleLog::default()));
    let mut bus = IoBus::new();
    bus.add(0x3f8, 8, Box::new(ComPort { uart: Serial::new(), log: console.clone() }))?;
    let mut exits = 0;
    loop {
        exits += 1;
        if exits > 1000 {
            return Err(String::from("the probe guest did not halt within 1000 exits"));
        }
        let code = vmrun(&vmcb);
        vmcb.write(TLB_CONTROL, &[0]);
        let exit = exit_of(&vmcb, code);
        match handle_exit(&exit, &mut VmcbRegs(&vmcb), &mut bus) {
            ExitAction::Resume => {}
            ExitAction::Halted => break,
            ExitAction::Stop(why) => return Err(format!("the probe guest stopped: {why}")),
        }
    }
    let out = console.borrow().contents();
    if out != b"K" {
        return Err(format!("the probe guest halted, but its console shows {out:?} instead of \"K\""));
    }
    Ok(format!("probe guest wrote 'K' to its COM1 and halted ({exits} exits)"))
}
