//! xHCI USB host controller (eXtensible Host Controller Interface 1.2), polled: enough of it to
//! enumerate the devices on the root hub ports and move data on their control, bulk and interrupt
//! endpoints (used by [`super::usb_storage`] and [`super::usb_keyboard`]).
//!
//! Register and data-structure layouts are written from the xHCI 1.2 specification (section numbers
//! in the comments), through the platform's [`MmioRegion`] and [`DmaBuffer`] like the other drivers;
//! the `xhci` crate was not used because its register access needs a second MMIO abstraction (the
//! `accessor` crate's mapper) beside the platform's.
//!
//! What is built: BIOS hand-off (USB Legacy Support capability), controller reset, scratchpad buffers,
//! one command ring, one event ring (interrupter 0, polled, no interrupts), root hub port reset, slot
//! enable and addressing, control transfers on endpoint 0, bulk and interrupt endpoint configuration,
//! bulk transfers (waited for) and interrupt IN transfers (queued, then polled), stall recovery (Reset
//! Endpoint, Set TR Dequeue Pointer, CLEAR_FEATURE). Every wait has a time-out. One event ring serves
//! every device: completions for interrupt endpoints that arrive while a command or bulk transfer is
//! waited for are kept for their owner's next poll. Not built: hubs (devices behind a hub are not
//! seen), isochronous endpoints, streams, full-speed devices whose endpoint 0 packet size is not 64.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use ember_platform::arch::x86_64::dma::DmaBuffer;
use ember_platform::arch::x86_64::mmio::MmioRegion;
use ember_platform::arch::x86_64::timer;

const TRB_LEN: usize = 16;
/// TRBs per ring segment (one 4 KiB page; the last one is the Link TRB).
const RING_TRBS: usize = 256;
const PAGE: usize = 4096;

// TRB types (6.4.6, table 6-91).
const TRB_NORMAL: u32 = 1;
const TRB_SETUP: u32 = 2;
const TRB_DATA: u32 = 3;
const TRB_STATUS: u32 = 4;
const TRB_LINK: u32 = 6;
const TRB_ENABLE_SLOT: u32 = 9;
const TRB_ADDRESS_DEVICE: u32 = 11;
const TRB_CONFIGURE_ENDPOINT: u32 = 12;
const TRB_RESET_ENDPOINT: u32 = 14;
const TRB_SET_TR_DEQUEUE: u32 = 16;
const TRB_TRANSFER_EVENT: u32 = 32;
const TRB_COMMAND_COMPLETION: u32 = 33;

// TRB control bits.
const CYCLE: u32 = 1 << 0;
const TOGGLE_CYCLE: u32 = 1 << 1;
const ISP: u32 = 1 << 2;
const CHAIN: u32 = 1 << 4;
const IOC: u32 = 1 << 5;
const IDT: u32 = 1 << 6;
const DIR_IN: u32 = 1 << 16;

// Completion codes (6.4.5, table 6-90).
const CC_SUCCESS: u32 = 1;
const CC_STALL: u32 = 6;
const CC_SHORT_PACKET: u32 = 13;

// Operational registers (5.4).
const USBCMD: u64 = 0x00;
const USBSTS: u64 = 0x04;
const CRCR: u64 = 0x18;
const DCBAAP: u64 = 0x30;
const CONFIG: u64 = 0x38;
const PORTSC_BASE: u64 = 0x400;
const CMD_RUN: u32 = 1 << 0;
const CMD_RESET: u32 = 1 << 1;
const STS_HALTED: u32 = 1 << 0;
const STS_NOT_READY: u32 = 1 << 11;

// PORTSC bits (5.4.8).
const PORT_CONNECTED: u32 = 1 << 0;
const PORT_ENABLED: u32 = 1 << 1;
const PORT_RESET: u32 = 1 << 4;
const PORT_POWER: u32 = 1 << 9;
const PORT_RESET_CHANGE: u32 = 1 << 21;
/// Status change bits, cleared by writing 1: never written back by accident.
const PORT_CHANGE_BITS: u32 = 0x00fe_0000;

/// Time-outs. A transfer may take as long as a SCSI command may (Linux's `sd` allows 30 s): a busy
/// stick (or an emulated one on a loaded host) that answers in 10-30 s is slow, not broken.
const COMMAND_TIMEOUT_MS: u64 = 5_000;
const TRANSFER_TIMEOUT_MS: u64 = 30_000;

/// Endpoint types in an endpoint context (6.2.3, table 6-9).
pub const EP_BULK_OUT: u32 = 2;
pub const EP_CONTROL: u32 = 4;
pub const EP_BULK_IN: u32 = 6;
pub const EP_INTERRUPT_IN: u32 = 7;

/// Completions for interrupt endpoints kept while nobody polls them (a keyboard has one TRB queued).
const MAX_KEPT_EVENTS: usize = 64;

/// The device context index of an endpoint address (4.5.1).
fn dci(address: u8) -> u32 {
    ((address & 0x0f) as u32) * 2 + (address >> 7) as u32
}

/// An endpoint to configure: address, type (`EP_*`), max packet size, and for interrupt endpoints
/// the context Interval (an exponent of 125 us periods).
#[derive(Debug, Clone, Copy)]
pub struct EndpointSpec {
    pub address: u8,
    pub kind: u32,
    pub max_packet: u16,
    pub interval: u8,
}

fn trb_type(dw3: u32) -> u32 {
    (dw3 >> 10) & 0x3f
}

/// A producer ring (command or transfer): one segment closed by a Link TRB back to its start.
struct Ring {
    buf: DmaBuffer,
    enqueue: usize,
    cycle: bool,
}

impl Ring {
    fn new() -> Result<Ring, String> {
        let buf = DmaBuffer::new(RING_TRBS * TRB_LEN).ok_or("out of memory for an xHCI ring")?;
        let base = buf.phys();
        let link = (RING_TRBS - 1) * TRB_LEN;
        buf.write(link, &(base as u32).to_le_bytes());
        buf.write(link + 4, &((base >> 32) as u32).to_le_bytes());
        Ok(Ring { buf, enqueue: 0, cycle: true })
    }

    fn phys(&self) -> u64 {
        self.buf.phys()
    }

    /// Address of the next TRB to be written, with the cycle state (for Set TR Dequeue Pointer).
    fn dequeue_pointer(&self) -> u64 {
        (self.buf.phys() + (self.enqueue * TRB_LEN) as u64) | self.cycle as u64
    }

    /// Writes a TRB (its cycle bit last) and returns its address.
    fn push(&mut self, dw: [u32; 4]) -> u64 {
        let at = self.enqueue * TRB_LEN;
        for (i, w) in dw[..3].iter().enumerate() {
            self.buf.write(at + 4 * i, &w.to_le_bytes());
        }
        let control = (dw[3] & !CYCLE) | self.cycle as u32;
        self.buf.write(at + 12, &control.to_le_bytes());
        let addr = self.buf.phys() + at as u64;
        self.enqueue += 1;
        if self.enqueue == RING_TRBS - 1 {
            // Hand the Link TRB to the controller, then wrap.
            let link = (RING_TRBS - 1) * TRB_LEN;
            let control = (TRB_LINK << 10) | TOGGLE_CYCLE | self.cycle as u32;
            self.buf.write(link + 12, &control.to_le_bytes());
            self.enqueue = 0;
            self.cycle = !self.cycle;
        }
        addr
    }
}

/// An event seen on the event ring.
#[derive(Debug, Clone, Copy)]
struct Event {
    kind: u32,
    /// The TRB the event is about.
    pointer: u64,
    code: u32,
    /// Transfer events: bytes not transferred.
    residual: u32,
    slot: u8,
    endpoint: u8,
}

/// Why a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferError {
    /// The endpoint returned STALL (it is halted until cleared).
    Stall,
    Other(String),
}

impl core::fmt::Display for TransferError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TransferError::Stall => write!(f, "the endpoint stalled"),
            TransferError::Other(w) => write!(f, "{w}"),
        }
    }
}

/// A device that has an address, with its endpoint rings.
struct Device {
    slot: u8,
    port: u8,
    speed: u32,
    _output: DmaBuffer,
    input: DmaBuffer,
    /// Transfer rings by DCI (1 = endpoint 0).
    rings: Vec<(u8, Ring)>,
}

/// The controller.
pub struct Xhci {
    regs: MmioRegion,
    op: u64,
    runtime: u64,
    doorbells: u64,
    ctx_size: usize,
    max_ports: u8,
    dcbaa: DmaBuffer,
    _scratchpad: Vec<DmaBuffer>,
    commands: Ring,
    events: DmaBuffer,
    _event_table: DmaBuffer,
    event_dequeue: usize,
    event_cycle: bool,
    devices: Vec<Device>,
    /// Interrupt endpoints (slot, DCI): their completions are kept when someone else is waiting.
    interrupt_endpoints: Vec<(u8, u8)>,
    kept: Vec<Event>,
}

impl Xhci {
    fn read(&self, offset: u64) -> u32 {
        self.regs.read32(offset)
    }

    fn write(&self, offset: u64, v: u32) {
        self.regs.write32(offset, v)
    }

    fn write64(&self, offset: u64, v: u64) {
        self.regs.write32(offset, v as u32);
        self.regs.write32(offset + 4, (v >> 32) as u32);
    }

    fn wait_until(&self, what: &str, ms: u64, mut done: impl FnMut(&Xhci) -> bool) -> Result<(), String> {
        let end = timer::now_ms() + ms;
        while !done(self) {
            if timer::now_ms() > end {
                return Err(format!("xHCI: {what} did not happen within {ms} ms"));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// Takes the controller from the firmware, resets it and starts it (4.2).
    pub fn new(regs: MmioRegion) -> Result<Xhci, String> {
        if regs.len() < 0x1000 {
            return Err(String::from("register window too small"));
        }
        let caplength = (regs.read32(0) & 0xff) as u64;
        let hcs1 = regs.read32(0x04);
        let hcs2 = regs.read32(0x08);
        let hcc1 = regs.read32(0x10);
        let doorbells = (regs.read32(0x14) & !0x3) as u64;
        let runtime = (regs.read32(0x18) & !0x1f) as u64;
        let max_slots = (hcs1 & 0xff) as u8;
        let max_ports = (hcs1 >> 24) as u8;
        let op = caplength;
        // Every register Ember touches must lie inside the BAR.
        let needed = [op + PORTSC_BASE + 0x10 * max_ports as u64, runtime + 0x40, doorbells + 4 * 256];
        if caplength < 0x20 || needed.iter().any(|&end| end > regs.len()) || max_slots == 0 {
            return Err(format!("implausible capability registers (CAPLENGTH {caplength:#x})"));
        }
        let ac64 = hcc1 & 1 != 0;
        let ctx_size = if hcc1 & (1 << 2) != 0 { 64 } else { 32 };
        let scratchpads = (((hcs2 >> 21) & 0x1f) << 5 | (hcs2 >> 27)) as usize;

        let dcbaa = DmaBuffer::new(2048).ok_or("out of memory")?;
        let commands = Ring::new()?;
        let events = DmaBuffer::new(RING_TRBS * TRB_LEN).ok_or("out of memory")?;
        let event_table = DmaBuffer::new(64).ok_or("out of memory")?;
        let mut scratch = Vec::new();
        if scratchpads > 0 {
            let array = DmaBuffer::new(scratchpads * 8).ok_or("out of memory")?;
            for i in 0..scratchpads {
                let page = DmaBuffer::new(PAGE).ok_or("out of memory")?;
                array.write(i * 8, &page.phys().to_le_bytes());
                scratch.push(page);
            }
            dcbaa.write(0, &array.phys().to_le_bytes());
            scratch.push(array);
        }
        let highest = [dcbaa.phys(), commands.phys(), events.phys(), event_table.phys()];
        if !ac64 && highest.iter().any(|&a| a >> 32 != 0) {
            return Err(String::from("controller has 32-bit DMA only and memory is above 4 GiB"));
        }
        let hc = Xhci {
            regs,
            op,
            runtime,
            doorbells,
            ctx_size,
            max_ports,
            dcbaa,
            _scratchpad: scratch,
            commands,
            events,
            _event_table: event_table,
            event_dequeue: 0,
            event_cycle: true,
            devices: Vec::new(),
            interrupt_endpoints: Vec::new(),
            kept: Vec::new(),
        };
        hc.bios_handoff(hcc1);
        hc.write(hc.op + USBCMD, hc.read(hc.op + USBCMD) & !CMD_RUN);
        hc.wait_until("controller halt", 1000, |h| h.read(h.op + USBSTS) & STS_HALTED != 0)?;
        hc.write(hc.op + USBCMD, CMD_RESET);
        hc.wait_until("controller reset", 1000, |h| {
            h.read(h.op + USBCMD) & CMD_RESET == 0 && h.read(h.op + USBSTS) & STS_NOT_READY == 0
        })?;
        hc.write(hc.op + CONFIG, max_slots.min(16) as u32);
        hc.write64(hc.op + DCBAAP, hc.dcbaa.phys());
        hc.write64(hc.op + CRCR, hc.commands.phys() | 1);
        // One event ring segment (6.5): its table entry, then interrupter 0's registers (5.5.2).
        hc._event_table.write(0, &hc.events.phys().to_le_bytes());
        hc._event_table.write(8, &(RING_TRBS as u32).to_le_bytes());
        let ir0 = hc.runtime + 0x20;
        hc.write(ir0, 0); // IMAN: interrupts off, polled
        hc.write(ir0 + 0x08, 1); // ERSTSZ
        hc.write64(ir0 + 0x18, hc.events.phys()); // ERDP
        hc.write64(ir0 + 0x10, hc._event_table.phys()); // ERSTBA, written last
        hc.write(hc.op + USBCMD, CMD_RUN);
        hc.wait_until("controller start", 1000, |h| h.read(h.op + USBSTS) & STS_HALTED == 0)?;
        Ok(hc)
    }

    /// Asks the firmware to give up the controller (USB Legacy Support capability, 7.1.1).
    fn bios_handoff(&self, hcc1: u32) {
        let mut at = ((hcc1 >> 16) as u64) * 4;
        for _ in 0..64 {
            if at == 0 || at + 8 > self.regs.len() {
                return;
            }
            let cap = self.read(at);
            if cap & 0xff == 1 {
                self.write(at, cap | (1 << 24));
                let released = self.wait_until("firmware hand-off", 1000, |h| h.read(at) & (1 << 16) == 0);
                if released.is_err() {
                    kprintln!("ember: WARNING: xHCI: the firmware did not release the controller; taking it");
                    self.write(at, (self.read(at) & !(1 << 16)) | (1 << 24));
                }
                // No more SMIs from the controller's events.
                self.write(at + 4, self.read(at + 4) & !0x0000_e011);
                return;
            }
            let next = ((cap >> 8) & 0xff) as u64;
            if next == 0 {
                return;
            }
            at += next * 4;
        }
    }

    /// The next event, if the controller has posted one (4.9.4).
    fn next_event(&mut self) -> Option<Event> {
        let at = self.event_dequeue * TRB_LEN;
        // The controller writes an event TRB's cycle bit (in its last dword) after the rest: read
        // that dword first, in one load, and the others only once it says the TRB is new. Reading
        // all 16 bytes at once, or that dword byte by byte, can see the new cycle bit with the old
        // pointer or type while the controller is still writing, and lose the event (a USB transfer
        // then "timed out" on a loaded host).
        let control = self.events.read_u32(at + 12);
        if (control & CYCLE != 0) != self.event_cycle {
            return None;
        }
        let mut raw = [0u8; TRB_LEN];
        self.events.read(at, &mut raw);
        raw[12..].copy_from_slice(&control.to_le_bytes());
        let dw = |i: usize| u32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]]);
        self.event_dequeue += 1;
        if self.event_dequeue == RING_TRBS {
            self.event_dequeue = 0;
            self.event_cycle = !self.event_cycle;
        }
        // Tell the controller how far software has read (and clear Event Handler Busy).
        let erdp = self.events.phys() + (self.event_dequeue * TRB_LEN) as u64;
        self.write64(self.runtime + 0x20 + 0x18, erdp | (1 << 3));
        Some(Event {
            kind: trb_type(dw(3)),
            pointer: dw(0) as u64 | (dw(1) as u64) << 32,
            code: dw(2) >> 24,
            residual: dw(2) & 0x00ff_ffff,
            slot: (dw(3) >> 24) as u8,
            endpoint: ((dw(3) >> 16) & 0x1f) as u8,
        })
    }

    /// The next event for a command or a waited-for transfer; completions on interrupt endpoints
    /// are kept aside for [`Xhci::interrupt_poll`].
    fn poll_event(&mut self) -> Option<Event> {
        loop {
            let e = self.next_event()?;
            let interrupt =
                e.kind == TRB_TRANSFER_EVENT && self.interrupt_endpoints.contains(&(e.slot, e.endpoint));
            if !interrupt {
                return Some(e);
            }
            if self.kept.len() >= MAX_KEPT_EVENTS {
                self.kept.remove(0);
            }
            self.kept.push(e);
        }
    }

    /// Waits for the event about TRB `pointer` (other events are dropped, interrupt completions kept).
    fn wait_event(&mut self, kind: u32, pointer: u64, ms: u64) -> Result<Event, String> {
        let end = timer::now_ms() + ms;
        loop {
            while let Some(e) = self.poll_event() {
                if e.kind == kind && e.pointer == pointer {
                    return Ok(e);
                }
            }
            if timer::now_ms() > end {
                return Err(format!("xHCI: no completion within {ms} ms"));
            }
            core::hint::spin_loop();
        }
    }

    /// Runs one command; returns the slot id of its completion event.
    fn command(&mut self, what: &str, dw: [u32; 4]) -> Result<u8, String> {
        let trb = self.commands.push(dw);
        self.write(self.doorbells, 0);
        let e = self
            .wait_event(TRB_COMMAND_COMPLETION, trb, COMMAND_TIMEOUT_MS)
            .map_err(|e| format!("{what}: {e}"))?;
        if e.code != CC_SUCCESS {
            return Err(format!("xHCI: {what} failed (completion code {})", e.code));
        }
        Ok(e.slot)
    }

    fn portsc(&self, port: u8) -> u64 {
        self.op + PORTSC_BASE + 0x10 * (port as u64 - 1)
    }

    /// Root hub ports with a device connected, each reset and enabled (4.3.1): (port, speed).
    pub fn connected_ports(&mut self) -> Vec<(u8, u32)> {
        let mut out = Vec::new();
        for port in 1..=self.max_ports {
            let reg = self.portsc(port);
            let v = self.read(reg);
            if v & PORT_POWER == 0 {
                self.write(reg, (v & !(PORT_ENABLED | PORT_CHANGE_BITS)) | PORT_POWER);
                timer::delay_us(20_000);
            }
            let v = self.read(reg);
            if v & PORT_CONNECTED == 0 {
                continue;
            }
            if v & PORT_ENABLED == 0 {
                // USB2 ports need a reset to enable; USB3 ports enable themselves after link training.
                self.write(reg, (v & !(PORT_ENABLED | PORT_CHANGE_BITS)) | PORT_RESET);
                let reset = self.wait_until("port reset", 500, |h| h.read(reg) & PORT_RESET_CHANGE != 0);
                let v = self.read(reg);
                self.write(reg, (v & !(PORT_ENABLED | PORT_CHANGE_BITS)) | PORT_RESET_CHANGE);
                if reset.is_err() || self.read(reg) & PORT_ENABLED == 0 {
                    kprintln!(
                        "ember: WARNING: xHCI port {port}: device connected but the port did not enable"
                    );
                    continue;
                }
            }
            timer::delay_us(10_000);
            out.push((port, (self.read(reg) >> 10) & 0xf));
        }
        out
    }

    fn device(&mut self, slot: u8) -> Result<&mut Device, String> {
        self.devices
            .iter_mut()
            .find(|d| d.slot == slot)
            .ok_or_else(|| format!("xHCI: no device in slot {slot}"))
    }

    /// Enables a slot for the device on `port` and gives it an address (4.3.2, 4.3.3, 4.6.5).
    pub fn address_device(&mut self, port: u8, speed: u32) -> Result<u8, String> {
        let slot = self.command("Enable Slot", [0, 0, 0, TRB_ENABLE_SLOT << 10])?;
        if slot == 0 || slot as usize >= 256 {
            return Err(format!("xHCI: Enable Slot returned slot {slot}"));
        }
        let c = self.ctx_size;
        let output = DmaBuffer::new(32 * c).ok_or("out of memory")?;
        let input = DmaBuffer::new(33 * c).ok_or("out of memory")?;
        let ep0 = Ring::new()?;
        self.dcbaa.write(slot as usize * 8, &output.phys().to_le_bytes());
        let max_packet = match speed {
            2 => 8,     // low speed
            4.. => 512, // SuperSpeed and faster
            _ => 64,    // full and high speed
        };
        write32(&input, 4, 0b11); // add slot and endpoint 0
        write32(&input, c, (1 << 27) | (speed << 20)); // one context entry, route string 0
        write32(&input, c + 4, (port as u32) << 16);
        let ep = 2 * c;
        write32(&input, ep + 4, (3 << 1) | (EP_CONTROL << 3) | (max_packet << 16));
        write64(&input, ep + 8, ep0.phys() | 1);
        write32(&input, ep + 16, 8);
        let ictx = input.phys();
        self.devices.push(Device { slot, port, speed, _output: output, input, rings: alloc::vec![(1, ep0)] });
        self.command(
            "Address Device",
            [ictx as u32, (ictx >> 32) as u32, 0, (TRB_ADDRESS_DEVICE << 10) | ((slot as u32) << 24)],
        )?;
        Ok(slot)
    }

    /// A control transfer on endpoint 0 (4.11.2.2): `setup` is the 8-byte request; the data stage
    /// moves `data` (IN when the request's direction bit is set). Returns the bytes transferred.
    pub fn control(
        &mut self,
        slot: u8,
        setup: [u8; 8],
        data: Option<&DmaBuffer>,
    ) -> Result<usize, TransferError> {
        let len = u16::from_le_bytes([setup[6], setup[7]]) as u32;
        let dir_in = setup[0] & 0x80 != 0;
        let with_data = data.is_some() && len > 0;
        if data.is_some_and(|b| len as usize > b.len()) {
            return Err(TransferError::Other(format!(
                "control transfer of {len} bytes into a smaller buffer"
            )));
        }
        let trt = match (with_data, dir_in) {
            (false, _) => 0,
            (true, false) => 2,
            (true, true) => 3,
        };
        let dev = self.device(slot).map_err(TransferError::Other)?;
        let ring = &mut dev.rings.iter_mut().find(|r| r.0 == 1).expect("endpoint 0 ring").1;
        let w = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        ring.push([w(&setup[0..4]), w(&setup[4..8]), 8, (TRB_SETUP << 10) | IDT | (trt << 16)]);
        let mut data_trb = None;
        if let (true, Some(buf)) = (with_data, data) {
            let p = buf.phys();
            let dir = if dir_in { DIR_IN } else { 0 };
            data_trb = Some(ring.push([p as u32, (p >> 32) as u32, len, (TRB_DATA << 10) | dir | IOC | ISP]));
        }
        let status_dir = if with_data && dir_in { 0 } else { DIR_IN };
        let status = ring.push([0, 0, 0, (TRB_STATUS << 10) | status_dir | IOC]);
        self.write(self.doorbells + 4 * slot as u64, 1);
        let mut transferred = 0;
        if let Some(trb) = data_trb {
            let e = self
                .wait_event(TRB_TRANSFER_EVENT, trb, TRANSFER_TIMEOUT_MS)
                .map_err(TransferError::Other)?;
            check_completion(e.code)?;
            transferred = len.saturating_sub(e.residual) as usize;
        }
        let e =
            self.wait_event(TRB_TRANSFER_EVENT, status, TRANSFER_TIMEOUT_MS).map_err(TransferError::Other)?;
        check_completion(e.code)?;
        Ok(transferred)
    }

    /// Adds endpoints to a configured device (4.6.6).
    pub fn configure_endpoints(&mut self, slot: u8, endpoints: &[EndpointSpec]) -> Result<(), String> {
        let c = self.ctx_size;
        let dev = self.device(slot)?;
        let input = &dev.input;
        let mut add = 1u32; // the slot context
        let mut highest = 1u32;
        let mut interrupt = Vec::new();
        input.write(0, &alloc::vec![0u8; 33 * c]);
        for e in endpoints {
            let dci = dci(e.address);
            add |= 1 << dci;
            highest = highest.max(dci);
            let ring = Ring::new()?;
            let ep = (dci as usize + 1) * c;
            let max_packet = e.max_packet as u32;
            write32(input, ep, (e.interval as u32) << 16);
            write32(input, ep + 4, (3 << 1) | (e.kind << 3) | (max_packet << 16));
            write64(input, ep + 8, ring.phys() | 1);
            // Average TRB length, and for interrupt endpoints the Max ESIT Payload (one packet).
            let (average, esit) = if e.kind == EP_INTERRUPT_IN { (8, max_packet) } else { (1024, 0) };
            write32(input, ep + 16, average | (esit << 16));
            dev.rings.push((dci as u8, ring));
            if e.kind == EP_INTERRUPT_IN {
                interrupt.push((slot, dci as u8));
            }
        }
        write32(input, 4, add);
        write32(input, c, (highest << 27) | (dev.speed << 20));
        write32(input, c + 4, (dev.port as u32) << 16);
        let ictx = input.phys();
        self.command(
            "Configure Endpoint",
            [ictx as u32, (ictx >> 32) as u32, 0, (TRB_CONFIGURE_ENDPOINT << 10) | ((slot as u32) << 24)],
        )?;
        self.interrupt_endpoints.extend(interrupt);
        Ok(())
    }

    /// Queues one interrupt IN transfer of `len` bytes into `buf` on endpoint `address`; its
    /// completion is collected with [`Xhci::interrupt_poll`]. Returns the TRB's address.
    pub fn interrupt_in(
        &mut self,
        slot: u8,
        address: u8,
        buf: &DmaBuffer,
        len: usize,
    ) -> Result<u64, String> {
        let dci = dci(address);
        if len == 0 || len > buf.len() || len > PAGE - (buf.phys() as usize % PAGE) {
            return Err(format!("interrupt transfer of {len} bytes does not fit its buffer"));
        }
        let dev = self.device(slot)?;
        let Some((_, ring)) = dev.rings.iter_mut().find(|r| r.0 as u32 == dci) else {
            return Err(format!("endpoint {address:#x} is not configured"));
        };
        let p = buf.phys();
        let trb = ring.push([p as u32, (p >> 32) as u32, len as u32, (TRB_NORMAL << 10) | IOC | ISP]);
        self.write(self.doorbells + 4 * slot as u64, dci);
        Ok(trb)
    }

    /// The completion of interrupt transfer `trb` on endpoint `address` if it has come: the bytes
    /// transferred, or why it failed.
    pub fn interrupt_poll(
        &mut self,
        slot: u8,
        address: u8,
        len: usize,
        trb: u64,
    ) -> Option<Result<usize, TransferError>> {
        let endpoint = dci(address) as u8;
        // Everything else the ring holds is for nobody (no command or bulk transfer is running).
        while self.poll_event().is_some() {}
        let i =
            self.kept.iter().position(|e| e.slot == slot && e.endpoint == endpoint && e.pointer == trb)?;
        let e = self.kept.remove(i);
        Some(check_completion(e.code).map(|()| len.saturating_sub(e.residual as usize)))
    }

    /// A bulk transfer of `len` bytes of `buf` on endpoint `address` (4.11.2.1): one Normal TRB per page,
    /// chained, so no TRB crosses a 64 KiB boundary. Returns the bytes transferred.
    pub fn bulk(
        &mut self,
        slot: u8,
        address: u8,
        buf: &DmaBuffer,
        len: usize,
    ) -> Result<usize, TransferError> {
        let dci = dci(address);
        if len == 0 || len > buf.len() {
            return Err(TransferError::Other(format!(
                "bulk transfer of {len} bytes from a {}-byte buffer",
                buf.len()
            )));
        }
        let dev = self.device(slot).map_err(TransferError::Other)?;
        let Some((_, ring)) = dev.rings.iter_mut().find(|r| r.0 as u32 == dci) else {
            return Err(TransferError::Other(format!("endpoint {address:#x} is not configured")));
        };
        let mut trbs = Vec::new();
        let mut at = 0usize;
        while at < len {
            let n = (PAGE - (buf.phys() as usize + at) % PAGE).min(len - at);
            let last = at + n == len;
            let p = buf.phys() + at as u64;
            // TD Size: packets still to come after this TRB (4.11.2.4), at most 31.
            let remaining = (len - at - n).div_ceil(512).min(31) as u32;
            let flags = if last { IOC | ISP } else { CHAIN | ISP };
            trbs.push((
                ring.push([
                    p as u32,
                    (p >> 32) as u32,
                    n as u32 | (remaining << 17),
                    (TRB_NORMAL << 10) | flags,
                ]),
                n,
            ));
            at += n;
        }
        self.write(self.doorbells + 4 * slot as u64, dci);
        let end = timer::now_ms() + TRANSFER_TIMEOUT_MS;
        loop {
            while let Some(e) = self.poll_event() {
                if e.kind != TRB_TRANSFER_EVENT || e.slot != slot || e.endpoint as u32 != dci {
                    continue;
                }
                let Some(i) = trbs.iter().position(|(p, _)| *p == e.pointer) else { continue };
                check_completion(e.code)?;
                let before: usize = trbs[..i].iter().map(|t| t.1).sum();
                return Ok(before + trbs[i].1.saturating_sub(e.residual as usize));
            }
            if timer::now_ms() > end {
                return Err(TransferError::Other(format!(
                    "bulk transfer on endpoint {address:#x} timed out"
                )));
            }
            core::hint::spin_loop();
        }
    }

    /// Clears a halted bulk or interrupt endpoint (4.6.8, 4.6.10, USB 2.0 9.4.1): Reset Endpoint, move the ring's
    /// dequeue pointer past the failed transfer, then CLEAR_FEATURE(ENDPOINT_HALT) on the device.
    pub fn clear_stall(&mut self, slot: u8, address: u8) -> Result<(), String> {
        let dci = dci(address);
        self.command(
            "Reset Endpoint",
            [0, 0, 0, (TRB_RESET_ENDPOINT << 10) | (dci << 16) | ((slot as u32) << 24)],
        )?;
        let dev = self.device(slot)?;
        let ring = &dev.rings.iter().find(|r| r.0 as u32 == dci).ok_or("endpoint not configured")?.1;
        let deq = ring.dequeue_pointer();
        self.command(
            "Set TR Dequeue Pointer",
            [
                deq as u32,
                (deq >> 32) as u32,
                0,
                (TRB_SET_TR_DEQUEUE << 10) | (dci << 16) | ((slot as u32) << 24),
            ],
        )?;
        let clear = [0x02, 0x01, 0, 0, address, 0, 0, 0];
        self.control(slot, clear, None).map(|_| ()).map_err(|e| format!("CLEAR_FEATURE(ENDPOINT_HALT): {e}"))
    }
}

fn check_completion(code: u32) -> Result<(), TransferError> {
    match code {
        CC_SUCCESS | CC_SHORT_PACKET => Ok(()),
        CC_STALL => Err(TransferError::Stall),
        c => Err(TransferError::Other(format!("transfer failed (xHCI completion code {c})"))),
    }
}

fn write32(buf: &DmaBuffer, at: usize, v: u32) {
    buf.write(at, &v.to_le_bytes());
}

fn write64(buf: &DmaBuffer, at: usize, v: u64) {
    buf.write(at, &v.to_le_bytes());
}
