//! USB mass storage (Bulk-Only Transport, SCSI transparent command set) on the xHCI driver, behind
//! the storage layer's [`BlockDevice`]: USB sticks and the USB-attached SD card readers servers boot
//! from (REFERENCE.md 3).
//!
//! Each command is CBW, data, CSW (formats in `ember_storage::scsi`). A stalled data stage is cleared
//! and the CSW still read; a stalled CSW read is cleared and retried once; a phase error or a bad CSW
//! triggers the reset recovery of BOT 5.3.4. A failed command's REQUEST SENSE is part of its error.
//! SYNCHRONIZE CACHE makes writes durable; a device that does not know the command (ILLEGAL REQUEST)
//! has no volatile cache to flush.

use super::usb::{set_configuration, Enumerated};
use super::xhci::{EndpointSpec, TransferError, Xhci, EP_BULK_IN, EP_BULK_OUT};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use ember_hw::usb::{self, MassStorage};
use ember_platform::arch::x86_64::dma::DmaBuffer;
use ember_storage::block::{BlockDevice, IoError};
use ember_storage::scsi::{self, Capacity, CswStatus, Direction, Sense};

/// Largest data stage of one command.
const MAX_TRANSFER: usize = 64 * 1024;

pub struct UsbStorage {
    pub capacity: Capacity,
    hc: Rc<RefCell<Xhci>>,
    slot: u8,
    interface: u8,
    bulk_in: u8,
    bulk_out: u8,
    tag: u32,
    data: DmaBuffer,
    wrapper: DmaBuffer,
    /// SYNCHRONIZE CACHE was refused as unknown: nothing to flush.
    no_cache: bool,
}

/// Binds the enumerated device when it is a SCSI Bulk-Only mass storage device; returns it with its
/// description (vendor, product, IDs).
pub fn attach(hc: &Rc<RefCell<Xhci>>, e: &Enumerated) -> Result<Option<(UsbStorage, String)>, String> {
    let Some(ms) = usb::find_mass_storage(&e.config)? else { return Ok(None) };
    let (slot, device) = (e.slot, e.device);
    let MassStorage { configuration_value, interface, bulk_in, bulk_out } = ms;
    let mut c = hc.borrow_mut();
    set_configuration(&mut c, slot, configuration_value)?;
    let (ep_in, ep_out) = (0x80 | bulk_in.number, bulk_out.number);
    let spec = |address, kind, ep: usb::BulkEndpoint| EndpointSpec {
        address,
        kind,
        max_packet: ep.max_packet_size,
        interval: 0,
    };
    c.configure_endpoints(slot, &[spec(ep_in, EP_BULK_IN, bulk_in), spec(ep_out, EP_BULK_OUT, bulk_out)])?;
    drop(c);
    let mut dev = UsbStorage {
        hc: hc.clone(),
        slot,
        interface,
        bulk_in: ep_in,
        bulk_out: ep_out,
        tag: 0,
        capacity: Capacity { blocks: 0, block_size: 512 },
        data: DmaBuffer::new(MAX_TRANSFER).ok_or("out of memory")?,
        wrapper: DmaBuffer::new(4096).ok_or("out of memory")?,
        no_cache: false,
    };
    let inquiry = dev.scsi_in(&[scsi::INQUIRY, 0, 0, 0, 36, 0], 36)?;
    let text = |b: &[u8]| -> String {
        b.iter()
            .map(|&c| if c.is_ascii_graphic() || c == b' ' { c as char } else { '?' })
            .collect::<String>()
            .trim()
            .into()
    };
    let what = if inquiry.len() >= 32 {
        format!(
            "{} {} ({:04x}:{:04x})",
            text(&inquiry[8..16]),
            text(&inquiry[16..32]),
            device.vendor,
            device.product
        )
    } else {
        format!("{:04x}:{:04x}", device.vendor, device.product)
    };
    dev.wait_ready()?;
    let ten = dev.scsi_in(&[scsi::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8)?;
    dev.capacity = match scsi::parse_read_capacity_10(&ten)? {
        Some(c) => c,
        None => {
            let mut cdb = [0u8; 16];
            cdb[0] = scsi::SERVICE_ACTION_IN_16;
            cdb[1] = scsi::READ_CAPACITY_16_ACTION;
            cdb[13] = 32;
            scsi::parse_read_capacity_16(&dev.scsi_in(&cdb, 32)?)?
        }
    };
    Ok(Some((dev, what)))
}

/// A failed command: the CSW status or the transport error, in words.
enum CommandError {
    Failed,
    Transport(String),
}

impl UsbStorage {
    /// TEST UNIT READY until the medium is ready (a fresh device reports a unit attention first).
    fn wait_ready(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..20 {
            match self.command(&[scsi::TEST_UNIT_READY, 0, 0, 0, 0, 0], Direction::None, 0) {
                Ok(_) => return Ok(()),
                Err(CommandError::Failed) => {
                    let sense = self.sense();
                    match sense {
                        Some(s) if s.is_transient() => last = format!("{s}"),
                        Some(s) => return Err(format!("TEST UNIT READY: {s}")),
                        None => return Err(String::from("TEST UNIT READY failed without sense data")),
                    }
                }
                Err(CommandError::Transport(e)) => return Err(e),
            }
            ember_platform::arch::x86_64::timer::delay_us(100_000);
        }
        Err(format!("the medium did not become ready: {last}"))
    }

    fn sense(&mut self) -> Option<Sense> {
        match self.command(&[scsi::REQUEST_SENSE, 0, 0, 0, 18, 0], Direction::In, 18) {
            Ok(n) => {
                let mut b = alloc::vec![0u8; n];
                self.data.read(0, &mut b);
                Sense::parse(&b)
            }
            Err(_) => None,
        }
    }

    /// A command with a data-in stage; returns the data.
    fn scsi_in(&mut self, cdb: &[u8], len: usize) -> Result<Vec<u8>, String> {
        match self.command(cdb, Direction::In, len) {
            Ok(n) => {
                let mut b = alloc::vec![0u8; n];
                self.data.read(0, &mut b);
                Ok(b)
            }
            Err(e) => Err(self.describe(cdb[0], e)),
        }
    }

    fn describe(&mut self, op: u8, e: CommandError) -> String {
        match e {
            CommandError::Transport(w) => format!("SCSI command {op:#04x}: {w}"),
            CommandError::Failed => match self.sense() {
                Some(s) => format!("SCSI command {op:#04x} failed: {s}"),
                None => format!("SCSI command {op:#04x} failed"),
            },
        }
    }

    /// BOT reset recovery (BOT 5.3.4): Bulk-Only Mass Storage Reset, then clear both pipes.
    fn reset_recovery(&mut self) {
        let mut hc = self.hc.borrow_mut();
        let reset = [0x21, 0xff, 0, 0, self.interface, 0, 0, 0];
        let _ = hc.control(self.slot, reset, None);
        let _ = hc.clear_stall(self.slot, self.bulk_in);
        let _ = hc.clear_stall(self.slot, self.bulk_out);
    }

    /// CBW, data stage of `len` bytes through `self.data`, CSW. Returns the bytes moved.
    fn command(&mut self, cdb: &[u8], dir: Direction, len: usize) -> Result<usize, CommandError> {
        self.tag = self.tag.wrapping_add(1);
        let tag = self.tag;
        let cbw = scsi::cbw(tag, len as u32, dir, cdb);
        self.wrapper.write(0, &cbw);
        let (slot, bulk_in, bulk_out) = (self.slot, self.bulk_in, self.bulk_out);
        let transport = |e: TransferError| CommandError::Transport(format!("{e}"));
        let sent = self.hc.borrow_mut().bulk(slot, bulk_out, &self.wrapper, scsi::CBW_LEN);
        if let Err(e) = sent {
            self.reset_recovery();
            return Err(transport(e));
        }
        let mut moved = 0;
        if len > 0 {
            let ep = if dir == Direction::In { bulk_in } else { bulk_out };
            let result = self.hc.borrow_mut().bulk(slot, ep, &self.data, len);
            match result {
                Ok(n) => moved = n,
                // A stalled data stage ends the data; the CSW says how the command went.
                Err(TransferError::Stall) => {
                    self.hc.borrow_mut().clear_stall(slot, ep).map_err(CommandError::Transport)?;
                }
                Err(e) => {
                    self.reset_recovery();
                    return Err(transport(e));
                }
            }
        }
        let mut csw = self.hc.borrow_mut().bulk(slot, bulk_in, &self.wrapper, scsi::CSW_LEN);
        if csw == Err(TransferError::Stall) {
            self.hc.borrow_mut().clear_stall(slot, bulk_in).map_err(CommandError::Transport)?;
            csw = self.hc.borrow_mut().bulk(slot, bulk_in, &self.wrapper, scsi::CSW_LEN);
        }
        let n = match csw {
            Ok(n) => n,
            Err(e) => {
                self.reset_recovery();
                return Err(transport(e));
            }
        };
        let mut raw = [0u8; scsi::CSW_LEN];
        self.wrapper.read(0, &mut raw);
        match scsi::parse_csw(&raw[..n.min(scsi::CSW_LEN)], tag, len as u32) {
            Ok(CswStatus::Passed { residue }) => Ok(moved.min(len - residue as usize)),
            Ok(CswStatus::Failed { .. }) => Err(CommandError::Failed),
            Ok(CswStatus::PhaseError) => {
                self.reset_recovery();
                Err(CommandError::Transport(String::from("phase error")))
            }
            Err(e) => {
                self.reset_recovery();
                Err(CommandError::Transport(e.to_string()))
            }
        }
    }
}

impl super::Bounced for UsbStorage {
    fn bounce(&self) -> &DmaBuffer {
        &self.data
    }

    fn max_piece(&self) -> usize {
        MAX_TRANSFER
    }

    /// One READ or WRITE of `len` bytes of the data buffer at block `lba`.
    fn piece(&mut self, write: bool, lba: u64, len: usize) -> Result<(), IoError> {
        let blocks = (len / self.capacity.block_size as usize) as u32;
        let (cdb, cdb_len) = scsi::read_write_cdb(write, lba, blocks);
        let dir = if write { Direction::Out } else { Direction::In };
        match self.command(&cdb[..cdb_len], dir, len) {
            Ok(moved) if moved == len => Ok(()),
            Ok(moved) => Err(IoError::Device(format!("USB disk: {moved} of {len} bytes at block {lba}"))),
            Err(e) => Err(IoError::Device(format!("USB disk at block {lba}: {}", self.describe(cdb[0], e)))),
        }
    }
}

impl BlockDevice for UsbStorage {
    fn block_size(&self) -> u32 {
        self.capacity.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.capacity.blocks
    }

    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        super::read_bounced(self, lba, buf)
    }

    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        super::write_bounced(self, lba, buf)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        if self.no_cache {
            return Ok(());
        }
        let cdb = [scsi::SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        match self.command(&cdb, Direction::None, 0) {
            Ok(_) => Ok(()),
            Err(CommandError::Failed) => match self.sense() {
                // ILLEGAL REQUEST: the device has no cache to synchronize; its writes are complete.
                Some(s) if s.key == 0x5 => {
                    self.no_cache = true;
                    Ok(())
                }
                Some(s) => Err(IoError::Device(format!("USB disk: SYNCHRONIZE CACHE failed: {s}"))),
                None => Err(IoError::Device(String::from("USB disk: SYNCHRONIZE CACHE failed"))),
            },
            Err(CommandError::Transport(e)) => {
                Err(IoError::Device(format!("USB disk: SYNCHRONIZE CACHE: {e}")))
            }
        }
    }
}
