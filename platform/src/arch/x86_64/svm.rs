//! AMD SVM (AMD64 APM vol. 2, chapter 15): detection, enabling on the bootstrap CPU, VMRUN with the
//! guest's general-purpose registers switched, exit translation to the generic handler, and a
//! boot-time check that it all works - a tiny 64-bit probe guest under nested paging that asks
//! CPUID for the hypervisor's name and writes it to its COM1.
//!
//! This is the platform end of the hypervisor: the VMCB layout (APM appendix B), the host save
//! area, and the VMRUN instruction. The generic parts (nested page tables, guest memory, decoding)
//! are in `ember_vmm`. Not built yet: the vCPU loop for real guests (MSR emulation,
//! VMLOAD/VMSAVE of the hidden segment state, event injection, interrupt windows, TSC handling),
//! and running vCPUs on the application processors (SVM is enabled on every CPU at start-up).

use super::dma::DmaBuffer;
use super::{cpu, timer};
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use ember_vmm::bus::Buses;
use ember_vmm::cpuid::{guest_cpuid, Leaf, VcpuIdentity};
use ember_vmm::exit::{handle_exit, svm_io_exit, ExitAction, ExitContext, VcpuRegs, VmExit};
use ember_vmm::linux;
use ember_vmm::memory::{checked_range, GuestMemory, OutOfRange};
use ember_vmm::msr::{Saved, VcpuMsrs};
use ember_vmm::npt::{NestedPageTables, Npt, TableFrames};
use ember_vmm::paging::PagingState;
use ember_vmm::pvclock::GuestClock;
use ember_vmm::serial::{ComPort, ConsoleLog, Serial};
use ember_vmm::vcpu::Vcpu;
use ember_vmm::{GuestPhysAddr, HostPhysAddr};

const MSR_EFER: u32 = 0xc000_0080;
const EFER_SVME: u64 = 1 << 12;
const MSR_VM_CR: u32 = 0xc001_0114;
const VM_CR_SVMDIS: u64 = 1 << 4;
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;

// VMCB control area offsets (APM B-1).
const INTERCEPT_EXCEPTIONS: usize = 0x008;
const INTERCEPT_MISC1: usize = 0x00c;
const INTERCEPT_MISC2: usize = 0x010;
const IOPM_BASE: usize = 0x040;
const MSRPM_BASE: usize = 0x048;
const TSC_OFFSET: usize = 0x050;
const GUEST_ASID: usize = 0x058;
const TLB_CONTROL: usize = 0x05c;
const V_INTR: usize = 0x060;
const V_INTR_VECTOR: usize = 0x064;
const INTERRUPT_SHADOW: usize = 0x068;
const EXITCODE: usize = 0x070;
const EXITINFO1: usize = 0x078;
const EXITINFO2: usize = 0x080;
const NP_ENABLE: usize = 0x090;
const EXITINTINFO: usize = 0x088;
const EVENTINJ: usize = 0x0a8;
const NRIP: usize = 0x0c8;
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
const INTERCEPT_VINTR: u32 = 1 << 4;
const INTERCEPT_CPUID: u32 = 1 << 18;
const INTERCEPT_PAUSE: u32 = 1 << 23;
const INTERCEPT_HLT: u32 = 1 << 24;
const INTERCEPT_IOIO: u32 = 1 << 27;
const INTERCEPT_MSR: u32 = 1 << 28;
const INTERCEPT_SHUTDOWN: u32 = 1 << 31;
const INTERCEPT_INVLPGA: u32 = 1 << 26;
const INTERCEPT_RDPMC: u32 = 1 << 15;
const INTERCEPT_INVD: u32 = 1 << 22;
const INTERCEPT_WBINVD: u32 = 1 << 9;
/// Exceptions intercepted (bit n: vector n): #DB (1) and #AC (17), whose delivery a guest can
/// make fault again forever without an exit (CVE-2015-8104, CVE-2015-5307).
const EXCEPTION_INTERCEPTS: u32 = (1 << DB_VECTOR) | (1 << AC_VECTOR);
const DB_VECTOR: u8 = 1;
const AC_VECTOR: u8 = 17;
/// Misc vector 2: VMRUN, VMMCALL, VMLOAD, VMSAVE, STGI, CLGI, SKINIT (bits 0-6), MONITOR, MWAIT
/// and conditional MWAIT (bits 10-12).
const INTERCEPT_VMRUN: u32 = 1 << 0;
const MISC2_INTERCEPTS: u32 = 0x7f | (7 << 10);

// Exit codes (APM C-1).
const EXIT_INTR: u64 = 0x60;
const EXIT_NMI: u64 = 0x61;
const EXIT_VINTR: u64 = 0x64;
const EXIT_CPUID: u64 = 0x72;
const EXIT_MSR: u64 = 0x7c;
const EXIT_HLT: u64 = 0x78;
const EXIT_PAUSE: u64 = 0x77;
const EXIT_IOIO: u64 = 0x7b;
const EXIT_SHUTDOWN: u64 = 0x7f;
const EXIT_NPF: u64 = 0x400;
const EXIT_DB: u64 = 0x40 + DB_VECTOR as u64;
const EXIT_AC: u64 = 0x40 + AC_VECTOR as u64;
const EXIT_RDPMC: u64 = 0x6f;
const EXIT_INVD: u64 = 0x76;
const EXIT_WBINVD: u64 = 0x89;

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

/// CPUs with SVM enabled (each application processor counts itself when it starts; the bootstrap
/// CPU when [`enable`] succeeds on it).
pub static CPUS_READY: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// SVM switched on for this CPU: EFER.SVME and the host save area.
pub struct SvmCpu {
    _host_save: DmaBuffer,
    /// Where VMSAVE keeps this CPU's own FS/GS/TR/LDTR/syscall state while a guest runs.
    host_state: DmaBuffer,
    pub features: SvmFeatures,
}

/// Enables SVM on the calling CPU.
pub fn enable() -> Result<SvmCpu, String> {
    let features = detect()?;
    if !features.nested_paging {
        return Err(String::from("the CPU has SVM but no nested paging"));
    }
    let host_save = DmaBuffer::new(4096).ok_or("out of memory for the SVM host save area")?;
    let host_state = DmaBuffer::new(4096).ok_or("out of memory for the SVM host state page")?;
    // SAFETY: EFER exists on every x86_64 CPU; setting SVME on a CPU that reports SVM (checked above)
    // only makes the SVM instructions available. VM_HSAVE_PA gets a page-aligned page that lives as
    // long as the returned `SvmCpu` (which is kept for the life of the system).
    unsafe {
        cpu::wrmsr(MSR_EFER, cpu::rdmsr(MSR_EFER) | EFER_SVME);
        cpu::wrmsr(MSR_VM_HSAVE_PA, host_save.phys());
    }
    if !has_xsave() {
        return Err(String::from(
            "the CPU has SVM but no XSAVE (needed to keep each guest's FPU state apart)",
        ));
    }
    // SAFETY: the CPU reports XSAVE (checked above); CR4.OSXSAVE only makes XSAVE, XRSTOR, XGETBV
    // and XSETBV usable here. Ember's own code uses no FPU/SSE state (soft-float target).
    unsafe {
        x86_64::registers::control::Cr4::update(|f| f.insert(x86_64::registers::control::Cr4Flags::OSXSAVE));
    }
    Ok(SvmCpu { _host_save: host_save, host_state, features })
}

fn has_xsave() -> bool {
    cpu::cpuid(1, 0).ecx & (1 << 26) != 0
}

/// A vCPU's x87/SSE/AVX register state and XCR0, which VMRUN does not switch: saved when the
/// vCPU leaves a host CPU and restored when it comes back, so guests sharing a CPU never see
/// (or clobber) each other's registers.
pub struct GuestFpu {
    /// The XSAVE area (standard format; 64-byte aligned: it is page aligned).
    area: DmaBuffer,
    xcr0: u64,
}

impl GuestFpu {
    /// The state of a vCPU after reset: every component in its initial state, XCR0 = x87 only.
    pub fn new() -> Option<GuestFpu> {
        let size = (cpu::cpuid(0xd, 0).ecx as usize).max(576);
        Some(GuestFpu { area: DmaBuffer::new(size)?, xcr0: 1 })
    }

    /// Bytes of a vCPU's XSAVE area (whole pages).
    pub fn bytes() -> u64 {
        ((cpu::cpuid(0xd, 0).ecx as u64).max(576) + 4095) & !4095
    }

    /// Loads this state into the calling CPU (before the vCPU's first VMRUN there). XRSTOR runs
    /// under every component the CPU supports (XCR0 = that mask), so components this vCPU has not
    /// enabled are set from its own area or to their initial state, never left with what the
    /// previous vCPU on this CPU had; then the vCPU's own XCR0 is loaded.
    pub fn load(&self) {
        let p = self.area.phys();
        let all = supported_xcr0();
        // SAFETY: CR4.OSXSAVE is set on every CPU that runs vCPUs (`enable`). `all` is the set of
        // XCR0 components CPUID leaf 0xD reports (a valid XCR0), and `xcr0` either the reset
        // value 1 or a value the guest itself set with XSETBV and the CPU accepted, so neither
        // XSETBV faults. `p` is a 64-byte aligned area of the size CPUID leaf 0xD gives for all
        // supported components, holding either zeros (a valid standard-format header: every
        // component in its initial state) or what `save` stored; XRSTOR reads only that area.
        // The host uses no state XRSTOR replaces.
        unsafe {
            core::arch::asm!("xsetbv", in("ecx") 0, in("eax") all as u32, in("edx") (all >> 32) as u32);
            core::arch::asm!("xrstor64 [{0}]", in(reg) p, in("eax") u32::MAX, in("edx") u32::MAX);
            core::arch::asm!("xsetbv", in("ecx") 0, in("eax") self.xcr0 as u32, in("edx") (self.xcr0 >> 32) as u32);
        }
    }

    /// Saves the calling CPU's state as this vCPU's (after its last VMRUN there): its XCR0, then
    /// every supported component (under the full mask, as `load` restores them).
    pub fn save(&mut self) {
        let p = self.area.phys();
        let all = supported_xcr0();
        let (lo, hi): (u32, u32);
        // SAFETY: CR4.OSXSAVE is set (`enable`); XGETBV(0) reads XCR0; XSETBV with the supported
        // mask cannot fault (see `load`); XSAVE writes at most the size CPUID leaf 0xD gives for
        // all supported components into the vCPU's own 64-byte aligned area, which nothing else
        // uses meanwhile.
        unsafe {
            core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi);
            core::arch::asm!("xsetbv", in("ecx") 0, in("eax") all as u32, in("edx") (all >> 32) as u32);
            core::arch::asm!("xsave64 [{0}]", in(reg) p, in("eax") u32::MAX, in("edx") u32::MAX);
        }
        self.xcr0 = (hi as u64) << 32 | lo as u64;
    }
}

/// Every XCR0 component the CPU supports (CPUID leaf 0xD, subleaf 0: EDX:EAX).
fn supported_xcr0() -> u64 {
    static MASK: spin::Once<u64> = spin::Once::new();
    *MASK.call_once(|| {
        let l = cpu::cpuid(0xd, 0);
        (l.edx as u64) << 32 | l.eax as u64
    })
}

/// Page-table frames for nested page tables, from DMA buffers (zeroed, page aligned, identity
/// mapped, so their address is their host-physical address).
#[derive(Default)]
pub struct Frames(Vec<DmaBuffer>);

impl Frames {
    /// Bytes held in table frames.
    pub fn bytes(&self) -> u64 {
        self.0.len() as u64 * 4096
    }

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

/// Guest RAM in one DMA buffer, guest-physical 0 at its start (the probe's; bounds-checked).
struct DmaRam(DmaBuffer);

impl GuestMemory for DmaRam {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&self, addr: GuestPhysAddr, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let r = checked_range(self.size(), addr, buf.len())?;
        self.0.read(r.start, buf);
        Ok(())
    }
    fn write(&mut self, addr: GuestPhysAddr, data: &[u8]) -> Result<(), OutOfRange> {
        let r = checked_range(self.size(), addr, data.len())?;
        self.0.write(r.start, data);
        Ok(())
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
    segment_at(vmcb, at, selector, attrib, limit, 0);
}

fn segment_at(vmcb: &DmaBuffer, at: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
    vmcb.write(at, &selector.to_le_bytes());
    vmcb.write(at + 2, &attrib.to_le_bytes());
    put32(vmcb, at + 4, limit);
    put64(vmcb, at + 8, base);
}

/// The guest general-purpose registers VMRUN does not switch (RAX and RSP live in the VMCB), in
/// the order the entry code below expects.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct GuestGprs {
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

/// Runs the guest of `vmcb` with `gprs` until its next #VMEXIT; returns the exit code, with the
/// guest's registers back in `gprs`. Host interrupts that arrive meanwhile end the run (INTR exit)
/// and are taken right after it.
fn vmrun(host_state: u64, vmcb: &DmaBuffer, gprs: &mut GuestGprs) -> u64 {
    let pa = vmcb.phys();
    let host = host_state;
    let was_enabled = x86_64::instructions::interrupts::are_enabled();
    let regs: *mut GuestGprs = gprs;
    x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: SVM is enabled on this CPU (EFER.SVME and VM_HSAVE_PA set by `enable`), and `pa`
        // and `host` (this CPU's host state page, see `SvmVcpu::bind`) are page-aligned VMCB pages
        // that stay allocated across the call. VMRUN saves
        // the host state it restores on #VMEXIT (RSP, RIP, RFLAGS, RAX, CR0/3/4, EFER, segments and
        // descriptor tables) in the host save area; the state VMRUN does not switch (FS, GS, TR,
        // LDTR with their hidden parts, KernelGsBase, STAR/LSTAR/CSTAR/SFMASK, SYSENTER) is saved
        // to `host` with VMSAVE and the guest's loaded with VMLOAD before the run, and the other
        // way round after it, all with GIF clear (CLGI ... STGI) as the APM's sequence has it. The general-purpose registers are switched here: the host's RBX and
        // RBP (which cannot be asm operands) and the pointer to `gprs` are pushed, the guest's are
        // loaded from `gprs` (a `#[repr(C)]` struct of 14 u64, offsets as below), and after the exit
        // stored back; every other register is declared clobbered. `gprs` is exclusively borrowed
        // for the call. CLGI/STGI bracket the run as the APM requires; interrupts are off around
        // it, and a physical interrupt during the guest is an INTR exit (intercepted): RFLAGS.IF is
        // set only while GIF is clear (so no host handler can run between CLGI and STGI), which
        // lets the guest's physical interrupts cause that exit under V_INTR_MASKING. The return
        // stack refill after the exit pushes 32 return addresses it never returns to and drops
        // them again (RSP is back where it was; RCX, clobbered, is its counter).
        unsafe {
            core::arch::asm!(
                "push rbp",
                "push rbx",
                "push rsi",
                "push rdi",
                "clgi",
                "sti",
                "push rax",
                "mov rax, rsi",
                "vmsave rax",
                "pop rax",
                "vmload rax",
                "mov rbx, [rdi + 0x00]",
                "mov rcx, [rdi + 0x08]",
                "mov rdx, [rdi + 0x10]",
                "mov rsi, [rdi + 0x18]",
                "mov rbp, [rdi + 0x28]",
                "mov r8, [rdi + 0x30]",
                "mov r9, [rdi + 0x38]",
                "mov r10, [rdi + 0x40]",
                "mov r11, [rdi + 0x48]",
                "mov r12, [rdi + 0x50]",
                "mov r13, [rdi + 0x58]",
                "mov r14, [rdi + 0x60]",
                "mov r15, [rdi + 0x68]",
                "mov rdi, [rdi + 0x20]",
                "vmrun rax",
                "vmsave rax",
                "push rdi",
                "mov rdi, [rsp + 8]",
                "mov [rdi + 0x00], rbx",
                "mov [rdi + 0x08], rcx",
                "mov [rdi + 0x10], rdx",
                "mov [rdi + 0x18], rsi",
                "mov [rdi + 0x28], rbp",
                "mov [rdi + 0x30], r8",
                "mov [rdi + 0x38], r9",
                "mov [rdi + 0x40], r10",
                "mov [rdi + 0x48], r11",
                "mov [rdi + 0x50], r12",
                "mov [rdi + 0x58], r13",
                "mov [rdi + 0x60], r14",
                "mov [rdi + 0x68], r15",
                "pop qword ptr [rdi + 0x20]",
                "add rsp, 8",
                // Refill the return stack buffer with 32 harmless entries (each a speculation
                // trap), so no return after the exit is predicted from what the guest left there.
                "mov ecx, 16",
                "2:",
                "call 3f",
                "4:",
                "pause",
                "lfence",
                "jmp 4b",
                "3:",
                "call 5f",
                "6:",
                "pause",
                "lfence",
                "jmp 6b",
                "5:",
                "dec ecx",
                "jnz 2b",
                "add rsp, 256",
                "pop rax",
                "vmload rax",
                "cli",
                "stgi",
                "pop rbx",
                "pop rbp",
                inout("rax") pa => _,
                inout("rdi") regs => _,
                inout("rsi") host => _,
                out("rcx") _, out("rdx") _,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            );
        }
    });
    let code = get64(vmcb, EXITCODE);
    if code == EXIT_INTR && !was_enabled {
        // The host interrupt that ended the run is pending: take it now (its handler EOIs).
        x86_64::instructions::interrupts::enable();
        core::hint::spin_loop();
        x86_64::instructions::interrupts::disable();
    }
    code
}

/// The probe guest (64-bit mode, at 0x1000): CPUID leaf 0x40000100 (Ember's), then the 12 bytes of the
/// hypervisor's name from EBX, ECX, EDX out to COM1 one at a time; then `!` written to TSC_AUX
/// with WRMSR, read back with RDMSR and sent to COM1 too; then CLGI, which must raise #UD (its
/// handler, [`PROBE_UD_HANDLER`], prints `U` and skips it); then HLT.
#[rustfmt::skip]
const PROBE_CODE: &[u8] = &[
    0xb8, 0x00, 0x01, 0x00, 0x40,   // mov eax, 0x40000100
    0x0f, 0xa2,                     // cpuid
    0x89, 0xd6,                     // mov esi, edx
    0x66, 0xba, 0xf8, 0x03,         // mov dx, 0x3f8
    0x89, 0xd8,                     // mov eax, ebx; then 4 x (out dx, al; shr eax, 8)
    0xee, 0xc1, 0xe8, 0x08, 0xee, 0xc1, 0xe8, 0x08, 0xee, 0xc1, 0xe8, 0x08, 0xee,
    0x89, 0xc8,                     // mov eax, ecx; the same
    0xee, 0xc1, 0xe8, 0x08, 0xee, 0xc1, 0xe8, 0x08, 0xee, 0xc1, 0xe8, 0x08, 0xee,
    0x89, 0xf0,                     // mov eax, esi; the same
    0xee, 0xc1, 0xe8, 0x08, 0xee, 0xc1, 0xe8, 0x08, 0xee, 0xc1, 0xe8, 0x08, 0xee,
    0xb9, 0x03, 0x01, 0x00, 0xc0,   // mov ecx, 0xc0000103 (TSC_AUX)
    0xb8, b'!', 0x00, 0x00, 0x00,   // mov eax, '!'
    0x31, 0xd2,                     // xor edx, edx
    0x0f, 0x30,                     // wrmsr
    0x31, 0xc0,                     // xor eax, eax
    0x0f, 0x32,                     // rdmsr
    0x66, 0xba, 0xf8, 0x03,         // mov dx, 0x3f8
    0xee,                           // out dx, al
    0x0f, 0x01, 0xdd,               // clgi
    0xf4,                           // hlt
];
const PROBE_GPA: u64 = 0x1000;
/// The probe's #UD handler (at [`PROBE_UD_GPA`], through the IDT at [`PROBE_IDT_GPA`]).
#[rustfmt::skip]
const PROBE_UD_HANDLER: &[u8] = &[
    0xb0, b'U',                     // mov al, 'U'
    0xee,                           // out dx, al
    0x48, 0x83, 0x04, 0x24, 0x03,   // add qword [rsp], 3 (past the 3-byte CLGI)
    0x48, 0xcf,                     // iretq
];
const PROBE_UD_GPA: u64 = 0x1800;
const PROBE_IDT_GPA: u64 = 0x3000;
/// The probe's RAM: 64 KiB from guest-physical 0 (its GDT and page tables live there too).
const PROBE_RAM: usize = 64 * 1024;

/// One virtual CPU on SVM: its VMCB (with the I/O and MSR permission maps: every port and MSR
/// intercepted) and the general-purpose registers VMRUN does not switch.
pub struct SvmVcpu {
    vmcb: DmaBuffer,
    _iopm: DmaBuffer,
    _msrpm: DmaBuffer,
    gprs: GuestGprs,
    /// The host state page of the CPU the vCPU runs on (`bind`).
    host_state: u64,
    fpu: GuestFpu,
    /// The guest's DR0-DR3, which VMRUN does not switch (DR6 and DR7 are in the VMCB).
    debug: [u64; 4],
    /// The CPU saves the next instruction's address on intercepts (`bind`: the CPU's feature).
    nrip_save: bool,
}

/// The intercepts every vCPU has (APM 15.9-15.13): physical interrupts and NMIs (the host keeps
/// its CPUs), CPUID, HLT, all port I/O and MSRs, triple faults, and the SVM instructions
/// (VMRUN is required; the others work in guest mode because the guest runs with EFER.SVME set,
/// and CLGI would let a guest keep its CPU from the host): they and MONITOR/MWAIT (not in the
/// guest's CPUID) raise #UD in the guest. PAUSE is intercepted on request (`set_pause_exits`).
/// INVD and WBINVD are done as no-ops (the guest's memory is coherent write-back memory; INVD
/// would discard the host's dirty cache lines, WBINVD stall the whole host CPU), RDPMC raises
/// #GP (the host's performance counters are not the guest's).
const MISC1_INTERCEPTS: u32 = INTERCEPT_INTR
    | INTERCEPT_NMI
    | INTERCEPT_CPUID
    | INTERCEPT_RDPMC
    | INTERCEPT_INVD
    | INTERCEPT_HLT
    | INTERCEPT_INVLPGA
    | INTERCEPT_IOIO
    | INTERCEPT_MSR
    | INTERCEPT_SHUTDOWN;
/// V_INTR_MASKING: the guest's RFLAGS.IF masks only its own (virtual) interrupts.
const V_INTR_MASKING: u64 = 1 << 24;
const V_IRQ: u64 = 1 << 8;
/// V_INTR_PRIO 15 and V_IGN_TPR: a requested window opens whenever RFLAGS.IF allows.
const V_IRQ_WINDOW: u64 = V_IRQ | (0xf << 16) | (1 << 20);

impl SvmVcpu {
    /// A vCPU of the VM whose nested page tables start at `npt_root`, tagged with `asid`.
    pub fn new(asid: u32, npt_root: HostPhysAddr) -> Result<SvmVcpu, String> {
        let oom = || String::from("out of memory for a VMCB");
        let vmcb = DmaBuffer::new(4096).ok_or_else(oom)?;
        let iopm = DmaBuffer::new(3 * 4096).ok_or_else(oom)?;
        let msrpm = DmaBuffer::new(2 * 4096).ok_or_else(oom)?;
        iopm.write(0, &[0xff; 3 * 4096]);
        msrpm.write(0, &[0xff; 2 * 4096]);
        put32(&vmcb, INTERCEPT_MISC1, MISC1_INTERCEPTS);
        put32(&vmcb, INTERCEPT_MISC2, MISC2_INTERCEPTS | INTERCEPT_VMRUN | INTERCEPT_WBINVD);
        put32(&vmcb, INTERCEPT_EXCEPTIONS, EXCEPTION_INTERCEPTS);
        put64(&vmcb, IOPM_BASE, iopm.phys());
        put64(&vmcb, MSRPM_BASE, msrpm.phys());
        put32(&vmcb, GUEST_ASID, asid);
        vmcb.write(TLB_CONTROL, &[1]); // flush this ASID's TLB entries on the first run
        put64(&vmcb, NP_ENABLE, 1);
        put64(&vmcb, N_CR3, npt_root.0);
        put64(&vmcb, V_INTR, V_INTR_MASKING);
        let fpu = GuestFpu::new().ok_or_else(oom)?;
        Ok(SvmVcpu {
            vmcb,
            _iopm: iopm,
            _msrpm: msrpm,
            gprs: GuestGprs::default(),
            host_state: 0,
            fpu,
            debug: [0; 4],
            nrip_save: false,
        })
    }

    /// Puts the vCPU in 64-bit mode with paging on and interrupts off: flat segments from the
    /// loader's GDT (`linux::CODE_SELECTOR`, `linux::DATA_SELECTOR`), `cr3`'s page tables, at `rip`
    /// with `rsp` and `rsi` (the Linux 64-bit boot protocol's entry state).
    pub fn enter_long_mode(&mut self, rip: u64, rsp: u64, rsi: u64, cr3: u64, gdt_base: u64, gdt_limit: u16) {
        let vmcb = &self.vmcb;
        // A long-mode code segment (L, P, S, execute/read) and flat data segments (G, D/B, P, S,
        // read/write).
        let (code, data) = (0x0a9b, 0x0c93);
        let (cs, ds) = (linux::CODE_SELECTOR, linux::DATA_SELECTOR);
        for (i, (sel, attrib)) in
            [(ds, data), (cs, code), (ds, data), (ds, data), (ds, data), (ds, data)].iter().enumerate()
        {
            segment(vmcb, SAVE + 0x10 * i, *sel, *attrib, 0xffff_ffff); // ES, CS, SS, DS, FS, GS
        }
        segment(vmcb, SAVE + 0x60, 0, 0, gdt_limit as u32); // GDTR
        put64(vmcb, SAVE + 0x68, gdt_base);
        segment(vmcb, SAVE + 0x70, 0, 0x0082, 0xffff); // LDTR
        segment(vmcb, SAVE + 0x80, 0, 0, 0); // IDTR: the guest sets up its own
        segment(vmcb, SAVE + 0x90, 0, 0x008b, 0xffff); // TR
        put64(vmcb, EFER, EFER_SVME | EFER_LME | EFER_LMA);
        put64(vmcb, CR0, CR0_PE | CR0_ET | CR0_NE | CR0_PG);
        put64(vmcb, CR3, cr3);
        put64(vmcb, CR4, CR4_PAE);
        put64(vmcb, DR6, 0xffff_0ff0);
        put64(vmcb, DR7, 0x400);
        put64(vmcb, RFLAGS, 0x2);
        put64(vmcb, RIP, rip);
        put64(vmcb, RSP, rsp);
        put64(vmcb, G_PAT, 0x0007_0406_0007_0406);
        self.gprs = GuestGprs { rsi, ..GuestGprs::default() };
    }

    /// Makes the vCPU run on the calling CPU, whose SVM state is `cpu`, and flushes its TLB
    /// entries there on the next entry (ASIDs are shared by VMs over time).
    /// Its FPU/SSE/AVX state and XCR0 are loaded on this CPU: call [`Self::unbind`] when it leaves.
    /// So are its debug address registers DR0-DR3.
    pub fn bind(&mut self, cpu: &SvmCpu) {
        self.host_state = cpu.host_state.phys();
        self.nrip_save = cpu.features.nrip_save;
        self.vmcb.write(TLB_CONTROL, &[1]);
        self.fpu.load();
        cpu::set_debug_addresses(&self.debug);
    }

    /// The vCPU leaves this CPU: its FPU/SSE/AVX state, XCR0 and DR0-DR3 are saved for the next
    /// `bind` (and the debug registers cleared, so the next vCPU here never sees them).
    pub fn unbind(&mut self) {
        self.fpu.save();
        self.debug = cpu::debug_addresses();
        cpu::set_debug_addresses(&[0; 4]);
        self.host_state = 0;
    }

    /// Runs the guest until the next exit (on the CPU it is bound to: call only there).
    pub fn run_bound(&mut self) -> VmExit {
        assert!(self.host_state != 0, "a vCPU runs only on the CPU it is bound to");
        let code = vmrun(self.host_state, &self.vmcb, &mut self.gprs);
        self.vmcb.write(TLB_CONTROL, &[0]);
        // An event the exit interrupted (an interrupt or exception being delivered when, say, a
        // nested page fault hit the IDT or stack) is delivered again on the next entry.
        let interrupted = get64(&self.vmcb, EXITINTINFO);
        if interrupted & (1 << 31) != 0 {
            put64(&self.vmcb, EVENTINJ, interrupted);
        }
        if code == EXIT_VINTR {
            self.close_interrupt_window();
        }
        exit_of(&self.vmcb, code, self.nrip_save)
    }

    fn close_interrupt_window(&mut self) {
        put64(&self.vmcb, V_INTR, get64(&self.vmcb, V_INTR) & !V_IRQ_WINDOW);
        let misc1 = get64(&self.vmcb, INTERCEPT_MISC1) as u32 & !INTERCEPT_VINTR;
        put32(&self.vmcb, INTERCEPT_MISC1, misc1);
    }
}

impl Vcpu for SvmVcpu {
    fn run(&mut self) -> VmExit {
        self.run_bound()
    }
    /// RFLAGS.IF set, no interrupt shadow and no event waiting in EVENTINJ.
    fn can_take_interrupt(&self) -> bool {
        get64(&self.vmcb, RFLAGS) & (1 << 9) != 0
            && get64(&self.vmcb, INTERRUPT_SHADOW) & 1 == 0
            && get64(&self.vmcb, EVENTINJ) & (1 << 31) == 0
    }
    /// EVENTINJ type 0 (external interrupt).
    fn inject_interrupt(&mut self, vector: u8) {
        put64(&self.vmcb, EVENTINJ, vector as u64 | (1 << 31));
    }
    fn can_take_nmi(&self) -> bool {
        get64(&self.vmcb, EVENTINJ) & (1 << 31) == 0
    }
    /// EVENTINJ type 2 (NMI), vector 2.
    fn inject_nmi(&mut self) {
        put64(&self.vmcb, EVENTINJ, 2 | (2 << 8) | (1 << 31));
    }
    fn set_pause_exits(&mut self, on: bool) {
        let misc1 = get64(&self.vmcb, INTERCEPT_MISC1) as u32 & !INTERCEPT_PAUSE;
        put32(&self.vmcb, INTERCEPT_MISC1, if on { misc1 | INTERCEPT_PAUSE } else { misc1 });
    }
    /// Real mode at `vector << 12` (CS selector `vector << 8`, IP 0), the rest as after INIT
    /// (APM vol. 2 14.1.3): CR0 with CD, NW and ET, paging off, EFER only SVME, 64 KiB segments.
    fn start_at(&mut self, vector: u8) {
        let vmcb = &self.vmcb;
        let (code, data) = (0x009b, 0x0093);
        for i in 0..6 {
            let (sel, attrib, base) =
                if i == 1 { ((vector as u16) << 8, code, (vector as u64) << 12) } else { (0, data, 0) };
            segment_at(vmcb, SAVE + 0x10 * i, sel, attrib, 0xffff, base); // ES, CS, SS, DS, FS, GS
        }
        segment(vmcb, SAVE + 0x60, 0, 0, 0xffff); // GDTR
        segment(vmcb, SAVE + 0x70, 0, 0x0082, 0xffff); // LDTR
        segment(vmcb, SAVE + 0x80, 0, 0, 0xffff); // IDTR
        segment(vmcb, SAVE + 0x90, 0, 0x008b, 0xffff); // TR
        put64(vmcb, EFER, EFER_SVME);
        put64(vmcb, CR0, CR0_CD | CR0_NW | CR0_ET);
        put64(vmcb, CR3, 0);
        put64(vmcb, CR4, 0);
        put64(vmcb, DR6, 0xffff_0ff0);
        put64(vmcb, DR7, 0x400);
        put64(vmcb, RFLAGS, 0x2);
        put64(vmcb, RIP, 0);
        put64(vmcb, RSP, 0);
        put64(vmcb, RAX, 0);
        put64(vmcb, G_PAT, 0x0007_0406_0007_0406);
        put64(vmcb, EVENTINJ, 0);
        put64(vmcb, INTERRUPT_SHADOW, 0);
        self.close_interrupt_window();
        self.gprs = GuestGprs::default();
    }
    /// A virtual interrupt is requested (V_IRQ) and its delivery intercepted (VINTR exit).
    fn request_interrupt_window(&mut self) {
        put64(&self.vmcb, V_INTR, get64(&self.vmcb, V_INTR) | V_IRQ_WINDOW);
        self.vmcb.write(V_INTR_VECTOR, &[0]);
        let misc1 = get64(&self.vmcb, INTERCEPT_MISC1) as u32 | INTERCEPT_VINTR;
        put32(&self.vmcb, INTERCEPT_MISC1, misc1);
    }
    fn interrupts_enabled(&self) -> bool {
        get64(&self.vmcb, RFLAGS) & (1 << 9) != 0
    }
}

impl VcpuRegs for SvmVcpu {
    fn gpr(&self, index: usize) -> u64 {
        let g = &self.gprs;
        match index {
            0 => get64(&self.vmcb, RAX),
            1 => g.rcx,
            2 => g.rdx,
            3 => g.rbx,
            4 => get64(&self.vmcb, RSP),
            5 => g.rbp,
            6 => g.rsi,
            7 => g.rdi,
            8 => g.r8,
            9 => g.r9,
            10 => g.r10,
            11 => g.r11,
            12 => g.r12,
            13 => g.r13,
            14 => g.r14,
            _ => g.r15,
        }
    }
    fn set_gpr(&mut self, index: usize, v: u64) {
        let g = &mut self.gprs;
        match index {
            0 => put64(&self.vmcb, RAX, v),
            1 => g.rcx = v,
            2 => g.rdx = v,
            3 => g.rbx = v,
            4 => put64(&self.vmcb, RSP, v),
            5 => g.rbp = v,
            6 => g.rsi = v,
            7 => g.rdi = v,
            8 => g.r8 = v,
            9 => g.r9 = v,
            10 => g.r10 = v,
            11 => g.r11 = v,
            12 => g.r12 = v,
            13 => g.r13 = v,
            14 => g.r14 = v,
            _ => g.r15 = v,
        }
    }
    fn saved_msr(&self, which: Saved) -> u64 {
        match which {
            Saved::Efer => get64(&self.vmcb, EFER) & !EFER_SVME,
            Saved::Tsc => cpu::rdtsc().wrapping_add(get64(&self.vmcb, TSC_OFFSET)),
            other => get64(&self.vmcb, saved_offset(other)),
        }
    }
    fn set_saved_msr(&mut self, which: Saved, v: u64) {
        match which {
            // SVME stays set: VMRUN requires it in the guest's EFER; the guest never sees it.
            Saved::Efer => put64(&self.vmcb, EFER, v | EFER_SVME),
            Saved::Tsc => put64(&self.vmcb, TSC_OFFSET, v.wrapping_sub(cpu::rdtsc())),
            other => put64(&self.vmcb, saved_offset(other), v),
        }
    }
    fn paging(&self) -> PagingState {
        let (cr0, cr3, cr4) = (get64(&self.vmcb, CR0), get64(&self.vmcb, CR3), get64(&self.vmcb, CR4));
        PagingState { cr0, cr3, cr4, efer: get64(&self.vmcb, EFER) }
    }
    fn tsc_offset(&self) -> u64 {
        get64(&self.vmcb, TSC_OFFSET)
    }
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        // EVENTINJ (APM 15.20): vector, type 3 (exception), error code valid, valid.
        let ev = error_code.map_or(0, |e| (1 << 11) | ((e as u64) << 32));
        put64(&self.vmcb, EVENTINJ, vector as u64 | (3 << 8) | ev | (1 << 31));
    }
    fn rip(&self) -> u64 {
        get64(&self.vmcb, RIP)
    }
    /// The instruction at the old RIP is done (emulated or skipped by the exit handler): an
    /// interrupt shadow it was in (STI; HLT - the idle loop's `sti; hlt`) is over, so an interrupt
    /// can be delivered on the next entry without an interrupt-window exit first.
    fn set_rip(&mut self, v: u64) {
        put64(&self.vmcb, RIP, v);
        put64(&self.vmcb, INTERRUPT_SHADOW, get64(&self.vmcb, INTERRUPT_SHADOW) & !1);
    }
}

/// Where the VMCB keeps an MSR (APM B-2); EFER and the TSC are handled apart.
fn saved_offset(which: Saved) -> usize {
    match which {
        Saved::Pat => G_PAT,
        Saved::Star => 0x600,
        Saved::Lstar => 0x608,
        Saved::Cstar => 0x610,
        Saved::Sfmask => 0x618,
        Saved::KernelGsBase => 0x620,
        Saved::SysenterCs => 0x628,
        Saved::SysenterEsp => 0x630,
        Saved::SysenterEip => 0x638,
        Saved::FsBase => SAVE + 0x48,
        Saved::GsBase => SAVE + 0x58,
        Saved::Efer => EFER,
        Saved::Tsc => TSC_OFFSET,
    }
}

/// The last exit of the guest of `vmcb`, in vendor-neutral terms. `nrip_save`: the CPU saved the
/// next instruction's address; without it (QEMU's TCG) the length of the instruction is the one
/// of its usual encoding.
fn exit_of(vmcb: &DmaBuffer, code: u64, nrip_save: bool) -> VmExit {
    let next = |len: u64| if nrip_save { get64(vmcb, NRIP) } else { get64(vmcb, RIP).wrapping_add(len) };
    match code {
        EXIT_INTR | EXIT_NMI => VmExit::HostInterrupt,
        EXIT_VINTR => VmExit::InterruptWindow,
        EXIT_IOIO => svm_io_exit(get64(vmcb, EXITINFO1), get64(vmcb, EXITINFO2)),
        EXIT_HLT => VmExit::Hlt,
        EXIT_PAUSE => VmExit::Pause,
        // Without next-RIP save (TCG) the length is CPUID's own: 0F A2.
        EXIT_CPUID => VmExit::Cpuid { next_rip: next(2) },
        // RDMSR (0F 32) and WRMSR (0F 30) are two bytes too, and so are INVD (0F 08) and WBINVD
        // (0F 09).
        EXIT_MSR => VmExit::Msr { write: get64(vmcb, EXITINFO1) & 1 != 0, next_rip: next(2) },
        EXIT_INVD => VmExit::Skipped { what: "INVD", next_rip: next(2) },
        EXIT_WBINVD => VmExit::Skipped { what: "WBINVD", next_rip: next(2) },
        EXIT_RDPMC => VmExit::Refused { what: "RDPMC" },
        // #DB has no error code; #AC's is always 0.
        EXIT_DB => VmExit::Exception { vector: DB_VECTOR, error_code: None },
        EXIT_AC => VmExit::Exception { vector: AC_VECTOR, error_code: Some(0) },
        EXIT_SHUTDOWN => VmExit::Shutdown,
        0x7a => VmExit::Undefined { what: "INVLPGA" },
        // VMMCALL is 0F 01 D9.
        0x81 => VmExit::Hypercall { next_rip: next(3) },
        0x80..=0x86 => VmExit::Undefined {
            what: ["VMRUN", "VMMCALL", "VMLOAD", "VMSAVE", "STGI", "CLGI", "SKINIT"][(code - 0x80) as usize],
        },
        0x8a..=0x8c => VmExit::Undefined { what: "MONITOR/MWAIT" },
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
pub fn probe(cpu: &SvmCpu) -> Result<String, String> {
    let mut frames = Frames::default();
    let oom = || String::from("out of memory for the probe guest");
    let mut npt = NestedPageTables::<Npt>::new(&mut frames).map_err(|e| format!("{e}"))?;
    let mut ram = DmaRam(DmaBuffer::new(PROBE_RAM).ok_or_else(oom)?);
    ram.write(GuestPhysAddr(PROBE_GPA), PROBE_CODE).map_err(|e| format!("{e}"))?;
    ram.write(GuestPhysAddr(PROBE_UD_GPA), PROBE_UD_HANDLER).map_err(|e| format!("{e}"))?;
    // IDT entry 6: a 64-bit interrupt gate to the handler in the loader's code segment.
    let mut gate = [0u8; 16];
    gate[0..2].copy_from_slice(&(PROBE_UD_GPA as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&linux::CODE_SELECTOR.to_le_bytes());
    gate[5] = 0x8e;
    gate[6..8].copy_from_slice(&((PROBE_UD_GPA >> 16) as u16).to_le_bytes());
    ram.write(GuestPhysAddr(PROBE_IDT_GPA + 16 * 6), &gate).map_err(|e| format!("{e}"))?;
    let (cr3, gdt_base, gdt_limit) = linux::write_long_mode_tables(&mut ram).map_err(|e| format!("{e}"))?;
    npt.map(&mut frames, GuestPhysAddr(0), HostPhysAddr(ram.0.phys()), PROBE_RAM as u64, true)
        .map_err(|e| format!("{e}"))?;
    let mut vcpu = SvmVcpu::new(1, npt.root())?;
    vcpu.enter_long_mode(PROBE_GPA, 0x8000, 0, cr3, gdt_base, gdt_limit);
    segment_at(&vcpu.vmcb, SAVE + 0x80, 0, 0, 16 * 7 - 1, PROBE_IDT_GPA); // IDTR: entries 0-6
    vcpu.bind(cpu);

    let console = Rc::new(RefCell::new(ConsoleLog::default()));
    let mut bus = Buses::default();
    bus.io.add(0x3f8, 8, Box::new(ComPort { uart: Serial::new(), log: console.clone() }))?;
    let identity = VcpuIdentity { apic_id: 0, vcpus: 1, lapic: false, pv_clock: false };
    let mut msrs = VcpuMsrs::new(0);
    let mut vm = ExitContext {
        bus: &mut bus,
        cpuid: |leaf, sub| guest_cpuid(leaf, sub, identity, host_cpuid),
        msrs: &mut msrs,
        mem: &mut ram,
        // Not used: the probe guest does not turn the paravirtual clock on.
        clock: GuestClock { tsc_hz: timer::clock_hz(), wall_base: 0, invariant_tsc: false },
    };
    // Exits the guest caused (host interrupts that end a run are not counted: they vary).
    let mut exits = 0;
    let mut runs = 0;
    loop {
        runs += 1;
        if runs > 1000 {
            return Err(String::from("the probe guest did not halt within 1000 runs"));
        }
        let exit = vcpu.run_bound();
        if exit != VmExit::HostInterrupt {
            exits += 1;
        }
        match handle_exit(&exit, &mut vcpu, &mut vm) {
            ExitAction::Resume | ExitAction::Spinning => {}
            ExitAction::Halted => break,
            ExitAction::Stop(why) => return Err(format!("the probe guest stopped: {why}")),
        }
    }
    let out = String::from_utf8_lossy(&console.borrow().contents()).into_owned();
    if out != "EmberEmberHV!U" {
        return Err(format!(
            "the probe guest halted, but its console shows {out:?}, not its CPUID and MSR answers and the #UD for CLGI"
        ));
    }
    Ok(format!(
        "64-bit probe guest read CPUID leaf 0x40000100, wrote and read back an MSR, got #UD for CLGI, and printed {out:?} on its COM1 ({exits} exits)"
    ))
}

/// The host's CPUID, as the guest CPUID policy takes it.
pub fn host_cpuid(leaf: u32, sub: u32) -> Leaf {
    let r = cpu::cpuid(leaf, sub);
    Leaf { eax: r.eax, ebx: r.ebx, ecx: r.ecx, edx: r.edx }
}
