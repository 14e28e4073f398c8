//! NVMe (NVM Express Base Specification 2.0) controller, polled, behind the storage layer's
//! [`BlockDevice`]: namespace 1 of each controller, through one I/O queue pair.
//!
//! Register, queue entry and command layouts from the specification (section numbers in comments),
//! through the platform's [`MmioRegion`] and [`DmaBuffer`]. Data moves through a 1 MiB bounce buffer
//! described by PRP entries (a PRP list for more than two pages). A request larger than the
//! controller's maximum transfer size goes out as several commands in flight at once (up to
//! [`MAX_IN_FLIGHT`], each with its own part of the bounce buffer and its own PRP list), as Linux's
//! driver sends them: the controller works on them together. Flush (opcode 0) makes writes durable.
//! Every command has a time-out; a controller that reports a fatal status is left alone. Not built:
//! other namespaces, interrupts, more queues.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use ember_hw::mm::frames::FrameAllocator;
use ember_platform::arch::x86_64::dma::DmaBuffer;
use ember_platform::arch::x86_64::mmio::MmioRegion;
use ember_platform::arch::x86_64::timer;
use ember_platform::firmware::pcie::PciFunction;
use ember_storage::block::{in_pieces, BlockDevice, IoError};

// Controller registers (3.1).
const CAP: u64 = 0x00;
const CC: u64 = 0x14;
const CSTS: u64 = 0x1c;
const AQA: u64 = 0x24;
const ASQ: u64 = 0x28;
const ACQ: u64 = 0x30;
const DOORBELLS: u64 = 0x1000;
const CC_ENABLE: u32 = 1;
const CSTS_READY: u32 = 1;
const CSTS_FATAL: u32 = 1 << 1;

// Opcodes (5, 7).
const ADMIN_CREATE_SQ: u8 = 0x01;
const ADMIN_CREATE_CQ: u8 = 0x05;
const ADMIN_IDENTIFY: u8 = 0x06;
const IO_FLUSH: u8 = 0x00;
const IO_WRITE: u8 = 0x01;
const IO_READ: u8 = 0x02;

const QUEUE_ENTRIES: usize = 32;
const SQ_ENTRY: usize = 64;
const CQ_ENTRY: usize = 16;
const PAGE: usize = 4096;
/// The bounce buffer: 1 MiB moves a guest's large sequential requests in few commands (each is
/// waited for); its PRP list takes one page.
const BOUNCE: usize = 1024 * 1024;
const _: () = assert!(BOUNCE / PAGE - 1 <= PAGE / 8);
/// Commands in flight at once on the I/O queue, at most: the pieces of one request (QEMU's NVMe
/// controller allows 512 KiB per command, so a guest's 1 MiB request is two commands).
const MAX_IN_FLIGHT: usize = 8;
const _: () = assert!(MAX_IN_FLIGHT < QUEUE_ENTRIES);
/// A command may take as long as Linux's NVMe driver allows an I/O command (30 s): a flush on a
/// busy host can take seconds.
const COMMAND_TIMEOUT_MS: u64 = 30_000;
/// How much longer timed-out commands are waited for before the next command reuses the bounce
/// buffer they may still be transferring.
const LATE_COMPLETION_MS: u64 = 60_000;

/// A submission queue and its completion queue.
struct QueuePair {
    id: u16,
    /// Entries in each of the two queues (at most [`QUEUE_ENTRIES`]; fewer if the controller's
    /// queues are smaller).
    entries: usize,
    sq: DmaBuffer,
    cq: DmaBuffer,
    tail: usize,
    head: usize,
    phase: bool,
    next_cid: u16,
    /// Commands that timed out and may still be moving data through the bounce buffer.
    late: Vec<u16>,
    /// The controller stopped answering: every command fails (until the host restarts).
    dead: bool,
}

impl QueuePair {
    fn new(id: u16, entries: usize) -> Result<QueuePair, String> {
        Ok(QueuePair {
            id,
            entries,
            sq: DmaBuffer::new(QUEUE_ENTRIES * SQ_ENTRY).ok_or("out of memory")?,
            cq: DmaBuffer::new(QUEUE_ENTRIES * CQ_ENTRY).ok_or("out of memory")?,
            tail: 0,
            head: 0,
            phase: true,
            next_cid: 0,
            late: Vec::new(),
            dead: false,
        })
    }
}

/// A command's fields beyond the opcode: (nsid, prp1, prp2, cdw10, cdw11, cdw12).
type Fields = (u32, u64, u64, u32, u32, u32);

pub struct Nvme {
    regs: MmioRegion,
    stride: u64,
    admin: QueuePair,
    io: QueuePair,
    bounce: DmaBuffer,
    /// One page of PRP entries for each command in flight.
    prp_lists: DmaBuffer,
    block_size: u32,
    blocks: u64,
    /// Largest transfer per command, in bytes (a multiple of the block size).
    max_transfer: usize,
    /// Commands in flight at once, at most (fewer when the controller's queues are small).
    depth: usize,
    pub model: String,
    pub serial: String,
}

impl Nvme {
    fn write64(&self, offset: u64, v: u64) {
        self.regs.write32(offset, v as u32);
        self.regs.write32(offset + 4, (v >> 32) as u32);
    }

    fn wait_ready(&self, ready: bool, timeout_ms: u64) -> Result<(), String> {
        let end = timer::now_ms() + timeout_ms;
        loop {
            let csts = self.regs.read32(CSTS);
            if csts & CSTS_FATAL != 0 {
                return Err(String::from("the controller reports a fatal status"));
            }
            if (csts & CSTS_READY != 0) == ready {
                return Ok(());
            }
            if timer::now_ms() > end {
                return Err(format!(
                    "the controller did not become {} within {timeout_ms} ms",
                    if ready { "ready" } else { "idle" }
                ));
            }
            core::hint::spin_loop();
        }
    }

    /// Resets and enables the controller (3.5.1), identifies it and namespace 1, creates I/O queue 1.
    pub fn new(f: &PciFunction, frames: &mut FrameAllocator) -> Result<Nvme, String> {
        let regs = f.map_memory_bar(0, frames).ok_or("no register BAR")?;
        if regs.len() < 0x2000 {
            return Err(String::from("register window too small"));
        }
        f.enable_memory_and_dma();
        let cap = regs.read32(CAP) as u64 | (regs.read32(CAP + 4) as u64) << 32;
        let stride = 4u64 << ((cap >> 32) & 0xf);
        let timeout_ms = ((cap >> 24) & 0xff).max(1) * 500;
        let max_entries = (cap & 0xffff) as usize + 1;
        if max_entries < 2 || (cap >> 37) & 1 == 0 {
            return Err(String::from("the controller does not support the NVM command set"));
        }
        if DOORBELLS + 4 * stride > regs.len() {
            return Err(String::from("doorbells outside the register window"));
        }
        let entries = QUEUE_ENTRIES.min(max_entries);
        let mut n = Nvme {
            regs,
            stride,
            admin: QueuePair::new(0, entries)?,
            io: QueuePair::new(1, entries)?,
            bounce: DmaBuffer::new(BOUNCE).ok_or("out of memory")?,
            prp_lists: DmaBuffer::new(MAX_IN_FLIGHT * PAGE).ok_or("out of memory")?,
            block_size: 512,
            blocks: 0,
            max_transfer: BOUNCE,
            depth: MAX_IN_FLIGHT.min(entries - 1),
            model: String::new(),
            serial: String::new(),
        };
        n.regs.write32(CC, 0);
        n.wait_ready(false, timeout_ms)?;
        n.regs.write32(AQA, ((entries as u32 - 1) << 16) | (entries as u32 - 1));
        n.write64(ASQ, n.admin.sq.phys());
        n.write64(ACQ, n.admin.cq.phys());
        // NVM command set, 4 KiB pages, 64-byte submission and 16-byte completion entries.
        n.regs.write32(CC, CC_ENABLE | (6 << 16) | (4 << 20));
        n.wait_ready(true, timeout_ms)?;

        let identify = n.bounce.phys();
        n.admin_command(ADMIN_IDENTIFY, (0, identify, 0, 1, 0, 0))?;
        let mut id = [0u8; PAGE];
        n.bounce.read(0, &mut id);
        // Identify Controller: serial number bytes 4-23, model number 24-63 (NVMe 1.4 5.15.2.2).
        n.model = String::from_utf8_lossy(&id[24..64]).trim().into();
        n.serial = String::from_utf8_lossy(&id[4..24]).trim().into();
        let mdts = id[77];
        if mdts != 0 {
            let mpsmin = PAGE << ((cap >> 48) & 0xf);
            n.max_transfer = BOUNCE.min(mpsmin.checked_shl(mdts as u32).unwrap_or(BOUNCE));
        }
        n.admin_command(ADMIN_IDENTIFY, (1, identify, 0, 0, 0, 0))?;
        n.bounce.read(0, &mut id);
        let nsze = u64::from_le_bytes(id[0..8].try_into().expect("8 bytes"));
        let format = (id[26] & 0xf) as usize;
        let lbads = id[128 + 4 * format + 2];
        if !(9..=16).contains(&lbads) || nsze == 0 {
            return Err(format!("namespace 1 unusable (size {nsze}, block size 2^{lbads})"));
        }
        n.block_size = 1 << lbads;
        n.blocks = nsze;
        if n.max_transfer < n.block_size as usize {
            return Err(format!(
                "namespace 1 has {}-byte blocks, more than the {}-byte largest transfer",
                n.block_size, n.max_transfer
            ));
        }
        n.max_transfer -= n.max_transfer % n.block_size as usize;
        let q = (entries as u32 - 1) << 16 | 1;
        let (cq, sq) = (n.io.cq.phys(), n.io.sq.phys());
        n.admin_command(ADMIN_CREATE_CQ, (0, cq, 0, q, 1, 0))?;
        n.admin_command(ADMIN_CREATE_SQ, (0, sq, 0, q, (1 << 16) | 1, 0))?;
        Ok(n)
    }

    fn admin_command(&mut self, opcode: u8, fields: Fields) -> Result<u32, String> {
        let (regs, stride) = (&self.regs, self.stride);
        submit(regs, stride, &mut self.admin, opcode, fields)
    }

    fn io_command(&mut self, opcode: u8, fields: Fields) -> Result<u32, String> {
        let (regs, stride) = (&self.regs, self.stride);
        submit(regs, stride, &mut self.io, opcode, fields)
    }

    /// [`settle`] for the I/O queue, before the bounce buffer is touched.
    fn settle(&mut self, what: &str) -> Result<(), IoError> {
        settle(&self.regs, self.stride, &mut self.io)
            .map_err(|e| IoError::Device(format!("NVMe {what}: {e}")))
    }

    /// Bytes moved by one batch of commands in flight together.
    fn batch_bytes(&self) -> usize {
        BOUNCE.min(self.max_transfer * self.depth)
    }

    /// PRP entries for `len` bytes of the bounce buffer from byte `at` (a page boundary), with PRP
    /// list page `slot` for more than two pages (4.1.1).
    fn prps(&self, at: usize, len: usize, slot: usize) -> (u64, u64) {
        let base = self.bounce.phys() + at as u64;
        let pages = len.div_ceil(PAGE);
        match pages {
            0 | 1 => (base, 0),
            2 => (base, base + PAGE as u64),
            _ => {
                let list = slot * PAGE;
                for i in 1..pages {
                    self.prp_lists.write(list + (i - 1) * 8, &(base + (i * PAGE) as u64).to_le_bytes());
                }
                (base, self.prp_lists.phys() + list as u64)
            }
        }
    }

    /// Reads `len` bytes at block `lba` into the bounce buffer, or writes `data` (`len` bytes) there
    /// through it: one command per maximum transfer, all in flight together; returns once every one
    /// of them has ended (the bounce buffer is free again), with the first failure. Commands that
    /// timed out earlier are settled first, before the bounce buffer is filled.
    fn transfer(&mut self, data: Option<&[u8]>, lba: u64, len: usize) -> Result<(), IoError> {
        let write = data.is_some();
        let what = if write { "write" } else { "read" };
        let fail = |block: u64, e: String| IoError::Device(format!("NVMe {what} at block {block}: {e}"));
        let opcode = if write { IO_WRITE } else { IO_READ };
        let bs = self.block_size as usize;
        self.settle(what)?;
        if let Some(d) = data {
            self.bounce.write(0, d);
        }
        let mut sent: Vec<(u16, u64)> = Vec::with_capacity(self.depth);
        let mut result = Ok(());
        let mut at = 0;
        while at < len {
            let n = (len - at).min(self.max_transfer);
            let block = lba + (at / bs) as u64;
            let (prp1, prp2) = self.prps(at, n, sent.len());
            let count = (n / bs) as u32 - 1;
            let fields = (1, prp1, prp2, block as u32, (block >> 32) as u32, count);
            match push(&self.regs, self.stride, &mut self.io, opcode, fields) {
                Ok(cid) => sent.push((cid, block)),
                Err(e) => {
                    result = Err(fail(block, e));
                    break;
                }
            }
            at += n;
        }
        let mut pending: Vec<u16> = sent.iter().map(|&(cid, _)| cid).collect();
        let block_of = |cid: u16| sent.iter().find(|s| s.0 == cid).map_or(lba, |s| s.1);
        match wait_completions(&self.regs, self.stride, &mut self.io, &mut pending, COMMAND_TIMEOUT_MS) {
            Ok(Ok(_)) => result,
            Ok(Err((cid, status))) => result.and(Err(fail(block_of(cid), status_text(opcode, status)))),
            Err(()) => {
                let first = pending.first().map_or(lba, |&cid| block_of(cid));
                self.io.late = pending;
                result.and(Err(fail(first, format!("not completed within {COMMAND_TIMEOUT_MS} ms"))))
            }
        }
    }
}

/// Why a command failed, from its completion status.
fn status_text(opcode: u8, status: u32) -> String {
    format!("command {opcode:#04x} failed (status type {}, code {:#04x})", (status >> 8) & 0x7, status & 0xff)
}

/// Waits for the commands of `q` that timed out earlier: they may still read or write the bounce
/// buffer and their PRP lists, so this comes before either is touched again. One that never ends
/// takes the controller offline.
fn settle(regs: &MmioRegion, stride: u64, q: &mut QueuePair) -> Result<(), String> {
    if q.dead {
        return Err(String::from(
            "the controller stopped answering; the disk is offline until the host restarts",
        ));
    }
    if !q.late.is_empty() {
        let mut late = core::mem::take(&mut q.late);
        if wait_completions(regs, stride, q, &mut late, LATE_COMPLETION_MS).is_err() {
            q.dead = true;
            return Err(format!(
                "{} earlier command(s) never completed; the disk is offline until the host restarts",
                late.len()
            ));
        }
    }
    Ok(())
}

/// Puts one command on `q` and rings its doorbell; its command identifier. Commands that timed out
/// earlier are waited for first ([`settle`]; a caller that fills the bounce buffer settles before
/// it does).
fn push(
    regs: &MmioRegion,
    stride: u64,
    q: &mut QueuePair,
    opcode: u8,
    fields: Fields,
) -> Result<u16, String> {
    let (nsid, prp1, prp2, cdw10, cdw11, cdw12) = fields;
    settle(regs, stride, q)?;
    let cid = q.next_cid;
    q.next_cid = q.next_cid.wrapping_add(1);
    let mut e = [0u8; SQ_ENTRY];
    e[0] = opcode;
    e[2..4].copy_from_slice(&cid.to_le_bytes());
    e[4..8].copy_from_slice(&nsid.to_le_bytes());
    e[24..32].copy_from_slice(&prp1.to_le_bytes());
    e[32..40].copy_from_slice(&prp2.to_le_bytes());
    e[40..44].copy_from_slice(&cdw10.to_le_bytes());
    e[44..48].copy_from_slice(&cdw11.to_le_bytes());
    e[48..52].copy_from_slice(&cdw12.to_le_bytes());
    q.sq.write(q.tail * SQ_ENTRY, &e);
    q.tail = (q.tail + 1) % q.entries;
    regs.write32(DOORBELLS + 2 * q.id as u64 * stride, q.tail as u32);
    Ok(cid)
}

/// Submits one command on `q` and waits for its completion; returns completion dword 0.
fn submit(
    regs: &MmioRegion,
    stride: u64,
    q: &mut QueuePair,
    opcode: u8,
    fields: Fields,
) -> Result<u32, String> {
    let mut pending = alloc::vec![push(regs, stride, q, opcode, fields)?];
    match wait_completions(regs, stride, q, &mut pending, COMMAND_TIMEOUT_MS) {
        Ok(Ok(dw0)) => Ok(dw0),
        Ok(Err((_, status))) => Err(status_text(opcode, status)),
        Err(()) => {
            q.late = pending;
            Err(format!("command {opcode:#04x} not completed within {COMMAND_TIMEOUT_MS} ms"))
        }
    }
}

/// Waits up to `ms` for the completions of the commands in `pending`, taking each out as it
/// completes (completions of other commands are stale and dropped): the dword 0 of the last one,
/// or the first failure among them (its command identifier and status) once all have ended.
/// `Err(())` on time-out, with `pending` holding the commands still outstanding.
fn wait_completions(
    regs: &MmioRegion,
    stride: u64,
    q: &mut QueuePair,
    pending: &mut Vec<u16>,
    ms: u64,
) -> Result<Result<u32, (u16, u32)>, ()> {
    let end = timer::now_ms() + ms;
    let mut result = Ok(0);
    while !pending.is_empty() {
        // Dword 3 (phase bit, status and command identifier) first, in one load, and dword 0 only
        // once the phase says the entry is new: the controller may be writing the entry while it
        // is read, and dword 3 read byte by byte can pair the new phase bit with the identifier of
        // the command that used the slot one lap earlier (a loaded host saw exactly that: a read
        // "not completed within 30 s" whose completion had arrived in microseconds).
        let dw3 = q.cq.read_u32(q.head * CQ_ENTRY + 12);
        if (dw3 >> 16) & 1 == q.phase as u32 {
            let dw0 = q.cq.read_u32(q.head * CQ_ENTRY);
            q.head += 1;
            if q.head == q.entries {
                q.head = 0;
                q.phase = !q.phase;
            }
            regs.write32(DOORBELLS + (2 * q.id as u64 + 1) * stride, q.head as u32);
            let cid = (dw3 & 0xffff) as u16;
            // Completions of other commands are stale and dropped.
            if let Some(k) = pending.iter().position(|&p| p == cid) {
                pending.swap_remove(k);
                let status = (dw3 >> 17) & 0x7fff;
                if result.is_ok() {
                    result = if status != 0 { Err((cid, status)) } else { Ok(dw0) };
                }
            }
        } else {
            core::hint::spin_loop();
        }
        // Looked at after every entry too: a controller that keeps posting completions of other
        // commands must not hold the CPU past the time-out.
        if !pending.is_empty() && timer::now_ms() > end {
            return Err(());
        }
    }
    Ok(result)
}

impl BlockDevice for Nvme {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.blocks
    }

    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.check_request(lba, buf.len())?;
        in_pieces(lba, buf.len(), self.block_size, self.batch_bytes(), |block, r| {
            self.transfer(None, block, r.len())?;
            self.bounce.read(0, &mut buf[r]);
            Ok(())
        })
    }

    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        self.check_request(lba, buf.len())?;
        in_pieces(lba, buf.len(), self.block_size, self.batch_bytes(), |block, r| {
            self.transfer(Some(&buf[r.clone()]), block, r.len())
        })
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.io_command(IO_FLUSH, (1, 0, 0, 0, 0, 0))
            .map(|_| ())
            .map_err(|e| IoError::Device(format!("NVMe flush: {e}")))
    }
}
