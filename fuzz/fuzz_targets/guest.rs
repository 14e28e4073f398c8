//! Fuzz target for guest-controlled and VM-definition input to the hypervisor: instruction bytes
//! through the MMIO decoder; the bytes of a kernel image (checked as a bzImage, then loaded with an
//! initrd and a command line cut from the same input into 8 MiB of guest RAM); the nested page
//! table builder fed with ranges from the input; and the serial console model driven by register
//! accesses from the input; the CMOS clock and 8254 timer models driven by port accesses; and the
//! guest page walk over page tables made of the input; the whole chipset (8259A PICs, timer, COM1,
//! CMOS, 8042, ACPI PM) driven by port accesses with interrupt acknowledges in between; a 4-vCPU
//! VM's local APICs and I/O APIC driven by MMIO accesses of every width through each vCPU's view
//! (IPIs, INIT/STARTUP, EOIs routed), ISA line levels and timers, and the x2APIC's MSRs with its
//! mode switched on and off; and the
//! virtio block device (on a write-back disk image whose write-back passes the input starts,
//! completes and fails, so flushes wait, complete and fail) driven by register writes and queue
//! notifications over guest memory and descriptor tables made of the input; the virtio network
//! device the same way, with frames for the guest arriving, the host taking what it sent, and its
//! link going up and down as the input says. Any panic is a finding; refusals are expected.
#![no_main]

use ember_vmm::blkio::{IoDone, IoOp, IoQueue};
use ember_vmm::board::{Board, CpuState, IOAPIC_BASE, LAPIC_BASE};
use ember_vmm::bus::{ApicTimer, MmioBus, MmioDevice, MmioSpace, PortBus};
use ember_vmm::decode::{self, Access};
use ember_vmm::linux::{self, BzImage};
use ember_vmm::machine::Machine;
use ember_vmm::memory::{GuestMemory, GuestRam};
use ember_vmm::npt::{NestedPageTables, Npt, TableFrames};
use ember_vmm::paging::{self, PagingState};
use ember_vmm::pit::Pit;
use ember_vmm::rtc::Rtc;
use ember_vmm::serial::ConsoleLog;
use ember_vmm::serial::{IrqLine, Serial, SerialOutput, FIFO_LEN};
use ember_vmm::virtio_blk::{Backing, VirtioBlk};
use ember_vmm::virtio_net::{NetPort, VirtioNet};
use ember_vmm::{GuestPhysAddr, HostPhysAddr};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

/// Page-table frames in a vector (at most 64), at made-up host addresses.
#[derive(Default)]
struct Frames(Vec<[u64; 512]>);

impl TableFrames for Frames {
    fn alloc(&mut self) -> Option<HostPhysAddr> {
        (self.0.len() < 64).then(|| {
            self.0.push([0; 512]);
            HostPhysAddr(0x1000_0000 + (self.0.len() as u64 - 1) * 4096)
        })
    }
    fn read_entry(&self, t: HostPhysAddr, i: usize) -> u64 {
        self.0[((t.0 - 0x1000_0000) / 4096) as usize][i]
    }
    fn write_entry(&mut self, t: HostPhysAddr, i: usize, v: u64) {
        self.0[((t.0 - 0x1000_0000) / 4096) as usize][i] = v;
    }
}

struct Sink(usize);
impl SerialOutput for Sink {
    fn write_byte(&mut self, _: u8) {
        self.0 += 1;
    }
}
struct Line;
impl IrqLine for Line {
    fn set_level(&mut self, _: bool) {}
}

fuzz_target!(|data: &[u8]| {
    // The chipset: each 4 bytes are a port access (port from a list of the chipset's ports and
    // neighbours, size, value) at a time from the input; pending interrupts are acknowledged.
    const PORTS: [u16; 16] = [
        0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1, 0x40, 0x43, 0x61, 0x60, 0x64, 0x70, 0x3f9, 0x600, 0x604, 0xcf9,
    ];
    let mut m = Machine::new(1_700_000_000, Arc::new(spin::Mutex::new(ConsoleLog::default())));
    let mut now = 0u64;
    for q in data.chunks(4) {
        let b = |i: usize| q.get(i).copied().unwrap_or(0);
        now += u64::from(b(3)) * 50_000;
        m.set_time(now);
        let port = PORTS[(b(0) & 15) as usize] + u16::from(b(0) >> 6);
        let size = [1, 2, 4, 1][(b(0) >> 4 & 3) as usize];
        if b(1) & 1 == 0 {
            m.write(port, size, u32::from(b(2)) | u32::from(b(1)) << 8);
        } else {
            let _ = m.read(port, size);
        }
        let _ = m.update_timers();
        if b(1) & 0x80 != 0 && m.pic.interrupt_pending() {
            let _ = m.pic.acknowledge();
        }
        let _ = m.request();
        let _ = m.console_input(&q[..q.len().min(2)]);
    }
    // A 4-vCPU VM's local APICs and I/O APIC as its vCPUs reach them (MMIO through each vCPU's
    // view, with IPIs, INIT/STARTUP and EOIs routed): each 7 bytes are a vCPU, an operation (a
    // 1-, 2-, 4- or 8-byte register access, an ISA line level, timers, an acknowledge) and a
    // value, at a time from the input.
    let machine = Machine::new(0, Arc::new(spin::Mutex::new(ConsoleLog::default())));
    let mut board = Board::new(machine, 4, MmioBus::new(), Box::new(GuestRam::new(4096)));
    let mut t = 0u64;
    for q in data.chunks(7) {
        let b = |i: usize| q.get(i).copied().unwrap_or(0);
        let cpu = usize::from(b(0) & 3);
        let value = u32::from_le_bytes([b(3), b(4), b(5), b(6)]);
        t += u64::from(b(2)) * 1000;
        let base = if b(1) & 0x40 == 0 { LAPIC_BASE } else { IOAPIC_BASE };
        let addr = base + u64::from(b(2)) * 4;
        let len = [1usize, 2, 4, 8][usize::from(b(1) >> 4 & 3)];
        if b(1) & 0x80 != 0 {
            // x2APIC: an MSR write (64 bits: the ICR's destination above) or read, or the mode.
            let msr = 0x800 + u32::from(b(2) & 0x3f);
            let mut bus = board.view(cpu).0;
            match b(1) & 3 {
                0 => drop(bus.x2apic_write(msr, u64::from(value) | u64::from(b(3) ^ b(6)) << 32)),
                1 => drop(bus.x2apic_read(msr)),
                _ => bus.set_x2apic(b(3) & 1 == 1),
            }
            continue;
        }
        match b(1) & 7 {
            0 | 1 => drop(board.view(cpu).0.mmio_write(addr, &value.to_le_bytes().repeat(2)[..len])),
            2 => drop(board.view(cpu).0.mmio_read(addr, &mut [0u8; 8][..len])),
            3 => {
                board.machine.set_irq(b(2) % 16, b(3) & 1 == 1);
                board.route();
            }
            4 => drop(board.update(cpu, t)),
            5 => {
                if let CpuState::Startup(_) = board.apics.state(cpu) {
                    board.apics.set_running(cpu);
                }
            }
            _ => {
                let _ = board.pending(cpu);
                let _ = board.acknowledge(cpu);
                let _ = board.apics.take_wakes();
            }
        }
    }
    // The virtio block device: the input is guest memory (descriptor tables, rings, headers);
    // each 5 bytes after the first 64 are a register write (offset, value) and maybe a notify.
    if data.len() > 64 {
        let mut ram = GuestRam::new(64 * 1024);
        let _ = ram.write(GuestPhysAddr(0), &data[..data.len().min(64 * 1024)]);
        // The disk is behind a request queue (as VM disks on datastores are): the input takes its
        // requests and completes them, or fails them.
        let q = Arc::new(IoQueue::new(16 * 512));
        let mut dev = VirtioBlk::<Vec<u8>>::with_backing(Backing::Queue(q.clone()), data[0] & 1 == 1, 5);
        for q_bytes in data[64..].chunks(5).take(512) {
            let b = |i: usize| q_bytes.get(i).copied().unwrap_or(0);
            let offset = u64::from(b(0) & 0x3f) * 4;
            let value = u32::from_le_bytes([b(1), b(2), b(3), b(4) & 0x0f]);
            dev.write(offset, &value.to_le_bytes());
            let mut r = [0u8; 4];
            dev.read(offset, &mut r);
            if b(4) & 0x80 != 0 {
                dev.write(0x50, &0u32.to_le_bytes());
                dev.process(&mut ram);
            }
            match (b(4) >> 4) & 7 {
                k @ (1 | 2) => {
                    for r in q.take_requests(usize::from(b(3) & 7)).unwrap_or_default() {
                        let ok = k == 1;
                        let data = match r.op {
                            IoOp::Read { len, .. } if ok => vec![0xa5; len],
                            _ => Vec::new(),
                        };
                        q.complete(IoDone { tag: r.tag, ok, data });
                    }
                }
                3 => dev.process(&mut ram),
                _ => {}
            }
            let _ = dev.take_notice();
            let _ = dev.irq();
        }
    }
    // The virtio network device: guest memory and register writes as for the block device; the
    // host side (frames arriving for the guest, its sent frames taken, its link) from the input.
    if data.len() > 64 {
        let mut ram = GuestRam::new(64 * 1024);
        let _ = ram.write(GuestPhysAddr(0), &data[..data.len().min(64 * 1024)]);
        let port = Arc::new(NetPort::new([2, 0x45, 0x4d, 0, 0, 1], 1500, None));
        let mut dev = VirtioNet::new(port.clone(), 5);
        for q_bytes in data[64..].chunks(5).take(512) {
            let b = |i: usize| q_bytes.get(i).copied().unwrap_or(0);
            let offset = u64::from(b(0) & 0x7f) * 2;
            let value = u32::from_le_bytes([b(1), b(2), b(3), b(4) & 0x0f]);
            // Aligned 32-bit writes, and reads of every width (configuration space included).
            dev.write(offset & !3, &value.to_le_bytes());
            let mut r = [0u8; 8];
            dev.read(offset, &mut r[..usize::from(b(2) % 8) + 1]);
            if b(4) & 0x80 != 0 {
                dev.write(0x50, &u32::from(b(3) & 1).to_le_bytes());
            }
            match (b(4) >> 4) & 7 {
                1 => drop(port.deliver(vec![vec![0x5a; usize::from(b(1)) * 8]; usize::from(b(2) % 4)])),
                2 => drop(port.take_sent(usize::from(b(3)))),
                3 => port.set_link(b(1) & 1 == 1),
                4 => port.clear(),
                _ => {}
            }
            dev.process(&mut ram);
            let _ = dev.take_notice();
            let _ = dev.irq();
        }
    }
    // The clock and timer models: each byte pair is a port access at a time taken from the input.
    let (mut rtc, mut pit) = (Rtc::new(), Pit::new());
    let mut now = 0u64;
    for pair in data.chunks(2) {
        let (op, value) = (pair[0], pair.get(1).copied().unwrap_or(0));
        now += u64::from(op) * 10_007;
        match op % 6 {
            0 => rtc.write(u16::from(op >> 7), value, now as i64),
            1 => drop(rtc.read(u16::from(op >> 7), now as i64)),
            2 => pit.write(u16::from(op >> 6), value, now),
            3 => drop(pit.read(u16::from(op >> 6), now)),
            4 => pit.write_port_b(value, now),
            _ => drop(pit.read_port_b(now)),
        }
    }
    // The guest page walk over page tables made of the input, in each paging mode.
    if data.len() >= 8 {
        let mut ram = GuestRam::new(64 * 1024);
        let _ = ram.write(GuestPhysAddr(0), &data[..data.len().min(64 * 1024)]);
        let va = u64::from_le_bytes(data[..8].try_into().unwrap());
        for (cr4, efer) in [(0x20, 0x500), (0x20, 0), (0x10, 0), (0, 0)] {
            let p = PagingState { cr0: 0x8000_0001, cr3: u64::from(data[0]) << 12, cr4, efer };
            if let Ok((_, n)) = paging::fetch_instruction(&ram, &p, va) {
                assert!(n <= 15);
            }
        }
    }
    // The instruction behind an MMIO access: decoded, and a load put into a register.
    if let Ok(m) = decode::decode_mmio(data) {
        assert!(m.len >= 1 && m.len as usize <= data.len().min(15));
        let mut regs = [0x0123_4567_89ab_cdefu64; 16];
        match m.access {
            Access::Read { size, dest, extend } => decode::write_gpr(&mut regs, dest, size, extend, u64::MAX),
            Access::Write { size, .. } => assert!(matches!(size, 1 | 2 | 4 | 8)),
        }
    }
    // The serial console model: each byte pair is a register access (or console input).
    let mut uart = Serial::new();
    let (mut out, mut irq) = (Sink(0), Line);
    for pair in data.chunks(2) {
        let (op, value) = (pair[0], pair.get(1).copied().unwrap_or(0));
        match op >> 6 {
            0 => drop(uart.read(u16::from(op & 0x0f), &mut irq)),
            1 => uart.write(u16::from(op & 0x0f), value, &mut out, &mut irq),
            _ => assert!(uart.enqueue_input(&[value; 3], &mut irq) <= FIFO_LEN),
        }
    }
    if let Ok(bz) = BzImage::parse(data) {
        let mut ram = GuestRam::new(8 << 20);
        let split = data.len() / 3;
        let cmdline = String::from_utf8_lossy(&data[..split.min(300)]);
        let _ = linux::load(&mut ram, &bz, Some(&data[split..]), &cmdline);
    }
    let mut frames = Frames::default();
    let mut npt = NestedPageTables::<Npt>::new(&mut frames).unwrap();
    for chunk in data.chunks(24).take(16) {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            let part = chunk.get(i..(i + 8).min(chunk.len())).unwrap_or(&[]);
            b[..part.len()].copy_from_slice(part);
            u64::from_le_bytes(b)
        };
        let (g, h, len) = (word(0) & 0xffff_ffff_f000, word(8) & 0xffff_ffff_f000, (word(16) % 64) << 12);
        if npt.map(&mut frames, GuestPhysAddr(g), HostPhysAddr(h), len, g & 0x1000 != 0).is_ok() && len > 0 {
            let t = npt.translate(&frames, GuestPhysAddr(g + len - 1));
            assert_eq!(t.map(|(a, _)| a), Some(HostPhysAddr(h + len - 1)), "a mapping made must translate");
        }
    }
});
