//! AHCI SATA controller (Serial ATA AHCI 1.3.1), polled, behind the storage layer's
//! [`BlockDevice`]: every port with an ATA disk (signature 0x101), one command slot at a time.
//!
//! Register and structure layouts from the AHCI specification, commands from ACS-3 (IDENTIFY DEVICE,
//! READ/WRITE DMA EXT, FLUSH CACHE EXT; 48-bit addressing is required). Data moves through a 64 KiB
//! bounce buffer described by one PRD entry. Every command has a time-out; a task file error is
//! reported with the device's status and error registers. Not built: ATAPI devices, port multipliers,
//! NCQ, interrupts.

use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use ember_hw::mm::frames::FrameAllocator;
use ember_platform::arch::x86_64::dma::DmaBuffer;
use ember_platform::arch::x86_64::mmio::MmioRegion;
use ember_platform::arch::x86_64::timer;
use ember_platform::firmware::pcie::PciFunction;
use ember_storage::block::{BlockDevice, IoError};
use ember_storage::persist::Disk;

// Generic host control (3.1).
const CAP: u64 = 0x00;
const GHC: u64 = 0x04;
const PI: u64 = 0x0c;
const CAP2: u64 = 0x24;
const BOHC: u64 = 0x28;
const GHC_AE: u32 = 1 << 31;

// Port registers (3.3), at 0x100 + 0x80 * port.
const PX_CLB: u64 = 0x00;
const PX_FB: u64 = 0x08;
const PX_IS: u64 = 0x10;
const PX_IE: u64 = 0x14;
const PX_CMD: u64 = 0x18;
const PX_TFD: u64 = 0x20;
const PX_SIG: u64 = 0x24;
const PX_SSTS: u64 = 0x28;
const PX_SERR: u64 = 0x30;
const PX_CI: u64 = 0x38;
const CMD_ST: u32 = 1 << 0;
const CMD_FRE: u32 = 1 << 4;
const CMD_FR: u32 = 1 << 14;
const CMD_CR: u32 = 1 << 15;
const IS_TFES: u32 = 1 << 30;
const TFD_ERR: u32 = 1 << 0;
const TFD_DRQ: u32 = 1 << 3;
const TFD_BSY: u32 = 1 << 7;
const SIG_ATA: u32 = 0x0000_0101;

const ATA_IDENTIFY: u8 = 0xec;
const ATA_READ_DMA_EXT: u8 = 0x25;
const ATA_WRITE_DMA_EXT: u8 = 0x35;
const ATA_FLUSH_CACHE_EXT: u8 = 0xea;

const BOUNCE: usize = 64 * 1024;
const COMMAND_TIMEOUT_MS: u64 = 10_000;

/// One controller's registers, shared by its ports.
struct Hba {
    regs: MmioRegion,
}

pub struct AhciDisk {
    hba: Rc<Hba>,
    port: u64,
    /// Command list (32 headers), received FIS area, command table.
    list: DmaBuffer,
    fis: DmaBuffer,
    table: DmaBuffer,
    bounce: DmaBuffer,
    blocks: u64,
    block_size: u32,
}

fn wait(what: &str, ms: u64, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let end = timer::now_ms() + ms;
    while !done() {
        if timer::now_ms() > end {
            return Err(format!("{what} did not happen within {ms} ms"));
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// Binds every ATA disk on AHCI controller `f`; disks are named `sata0`, `sata1`, ... from `first_index`.
pub fn probe(f: &PciFunction, frames: &mut FrameAllocator, first_index: usize) -> Vec<Disk> {
    let mut disks = Vec::new();
    let Some(regs) = f.map_memory_bar(5, frames) else {
        kprintln!("ember: WARNING: AHCI at {}: no ABAR (BAR5)", f.bdf);
        return disks;
    };
    if regs.len() < 0x180 {
        kprintln!("ember: WARNING: AHCI at {}: register window too small", f.bdf);
        return disks;
    }
    f.enable_memory_and_dma();
    let hba = Rc::new(Hba { regs });
    let r = &hba.regs;
    // BIOS/OS hand-off (10.6), then AHCI mode.
    if r.read32(CAP2) & 1 != 0 {
        r.write32(BOHC, r.read32(BOHC) | 2);
        let _ = wait("AHCI BIOS hand-off", 1000, || r.read32(BOHC) & 1 == 0);
    }
    r.write32(GHC, r.read32(GHC) | GHC_AE);
    let cap = r.read32(CAP);
    let implemented = r.read32(PI);
    let s64a = cap & (1 << 31) != 0;
    for port in 0..32u64 {
        if implemented & (1 << port) == 0 || 0x100 + 0x80 * (port + 1) > r.len() {
            continue;
        }
        let base = 0x100 + 0x80 * port;
        if r.read32(base + PX_SSTS) & 0xf != 3 || r.read32(base + PX_SIG) != SIG_ATA {
            continue;
        }
        match AhciDisk::new(hba.clone(), base, s64a) {
            Ok((disk, model, serial)) => {
                let name = format!("sata{}", first_index + disks.len());
                kprintln!(
                    "ember: {name}: AHCI at {} port {port}: {model}, {} MiB in {}-byte blocks",
                    f.bdf,
                    (disk.blocks * disk.block_size as u64) >> 20,
                    disk.block_size
                );
                disks.push(Disk::new(name, "ahci", Box::new(disk)).described(&model, &serial));
            }
            Err(e) => kprintln!("ember: WARNING: AHCI at {} port {port}: {e}", f.bdf),
        }
    }
    disks
}

impl AhciDisk {
    fn read(&self, reg: u64) -> u32 {
        self.hba.regs.read32(self.port + reg)
    }

    fn write(&self, reg: u64, v: u32) {
        self.hba.regs.write32(self.port + reg, v)
    }

    fn new(hba: Rc<Hba>, port: u64, s64a: bool) -> Result<(AhciDisk, String, String), String> {
        let mut d = AhciDisk {
            hba,
            port,
            list: DmaBuffer::new(1024).ok_or("out of memory")?,
            fis: DmaBuffer::new(256).ok_or("out of memory")?,
            table: DmaBuffer::new(256).ok_or("out of memory")?,
            bounce: DmaBuffer::new(BOUNCE).ok_or("out of memory")?,
            blocks: 0,
            block_size: 512,
        };
        if !s64a
            && [d.list.phys(), d.fis.phys(), d.table.phys(), d.bounce.phys()].iter().any(|a| a >> 32 != 0)
        {
            return Err(String::from("32-bit DMA only and memory is above 4 GiB"));
        }
        // Stop the port's engines before pointing them at new memory (10.1.2).
        d.write(PX_CMD, d.read(PX_CMD) & !CMD_ST);
        wait("command list stop", 500, || d.read(PX_CMD) & CMD_CR == 0)?;
        d.write(PX_CMD, d.read(PX_CMD) & !CMD_FRE);
        wait("FIS receive stop", 500, || d.read(PX_CMD) & CMD_FR == 0)?;
        let (clb, fb) = (d.list.phys(), d.fis.phys());
        d.write(PX_CLB, clb as u32);
        d.write(PX_CLB + 4, (clb >> 32) as u32);
        d.write(PX_FB, fb as u32);
        d.write(PX_FB + 4, (fb >> 32) as u32);
        d.write(PX_SERR, u32::MAX);
        d.write(PX_IS, u32::MAX);
        d.write(PX_IE, 0);
        d.write(PX_CMD, d.read(PX_CMD) | CMD_FRE);
        wait("device ready", 5000, || d.read(PX_TFD) & (TFD_BSY | TFD_DRQ) == 0)?;
        d.write(PX_CMD, d.read(PX_CMD) | CMD_ST);

        d.command(ATA_IDENTIFY, 0, 0, 512, false)?;
        let mut id = [0u8; 512];
        d.bounce.read(0, &mut id);
        let word = |i: usize| u16::from_le_bytes([id[2 * i], id[2 * i + 1]]);
        if word(83) & (1 << 10) == 0 {
            return Err(String::from("the disk does not support 48-bit addressing"));
        }
        d.blocks = (0..4).map(|i| (word(100 + i) as u64) << (16 * i)).sum();
        // Logical sector larger than 512 bytes (word 106 bit 12; words 117-118 in words).
        if word(106) & 0xc000 == 0x4000 && word(106) & (1 << 12) != 0 {
            let words = word(117) as u32 | (word(118) as u32) << 16;
            d.block_size = words * 2;
        }
        if d.blocks == 0 || !(512..=65536).contains(&d.block_size) || !d.block_size.is_power_of_two() {
            return Err(format!("unusable geometry ({} blocks of {} bytes)", d.blocks, d.block_size));
        }
        // ATA strings hold two characters per word, the first in the high byte.
        let text = |words: core::ops::Range<usize>| {
            let mut t = String::new();
            for i in words {
                for b in word(i).to_be_bytes() {
                    t.push(if b.is_ascii_graphic() || b == b' ' { b as char } else { '?' });
                }
            }
            String::from(t.trim())
        };
        // Model number: words 27-46; serial number: words 10-19 (ACS-3 7.12.7).
        Ok((d, text(27..47), text(10..20)))
    }

    /// Issues one ATA command in slot 0 (5.5.1) moving `len` bytes of the bounce buffer.
    fn command(&mut self, ata: u8, lba: u64, count: u16, len: usize, write: bool) -> Result<(), String> {
        // Command FIS: Register Host to Device (SATA 3.x 10.5.5).
        let mut fis = [0u8; 20];
        fis[0] = 0x27;
        fis[1] = 0x80;
        fis[2] = ata;
        fis[4] = lba as u8;
        fis[5] = (lba >> 8) as u8;
        fis[6] = (lba >> 16) as u8;
        fis[7] = 0x40; // LBA mode
        fis[8] = (lba >> 24) as u8;
        fis[9] = (lba >> 32) as u8;
        fis[10] = (lba >> 40) as u8;
        fis[12] = count as u8;
        fis[13] = (count >> 8) as u8;
        self.table.write(0, &fis);
        let prdtl = u32::from(len > 0);
        if len > 0 {
            let p = self.bounce.phys();
            self.table.write(0x80, &p.to_le_bytes());
            self.table.write(0x88, &0u32.to_le_bytes());
            self.table.write(0x8c, &((len as u32 - 1) & 0x3f_ffff).to_le_bytes());
        }
        let flags = 5 | if write { 1 << 6 } else { 0 } | (prdtl << 16);
        let t = self.table.phys();
        let mut header = [0u8; 32];
        header[0..4].copy_from_slice(&flags.to_le_bytes());
        header[8..16].copy_from_slice(&t.to_le_bytes());
        self.list.write(0, &header);
        self.write(PX_IS, u32::MAX);
        self.write(PX_CI, 1);
        let end = timer::now_ms() + COMMAND_TIMEOUT_MS;
        loop {
            if self.read(PX_IS) & IS_TFES != 0 || self.read(PX_TFD) & TFD_ERR != 0 {
                let tfd = self.read(PX_TFD);
                self.recover();
                return Err(format!(
                    "ATA command {ata:#04x} failed (status {:#04x}, error {:#04x})",
                    tfd & 0xff,
                    (tfd >> 8) & 0xff
                ));
            }
            if self.read(PX_CI) & 1 == 0 {
                return Ok(());
            }
            if timer::now_ms() > end {
                self.recover();
                return Err(format!("ATA command {ata:#04x} not completed within {COMMAND_TIMEOUT_MS} ms"));
            }
            core::hint::spin_loop();
        }
    }

    /// After an error: restart the command engine so the next command can run (6.2.2.1).
    fn recover(&mut self) {
        self.write(PX_CMD, self.read(PX_CMD) & !CMD_ST);
        let _ = wait("command list stop", 500, || self.read(PX_CMD) & CMD_CR == 0);
        self.write(PX_SERR, u32::MAX);
        self.write(PX_IS, u32::MAX);
        self.write(PX_CMD, self.read(PX_CMD) | CMD_ST);
    }
}

impl super::Bounced for AhciDisk {
    fn bounce(&self) -> &DmaBuffer {
        &self.bounce
    }

    fn max_piece(&self) -> usize {
        BOUNCE
    }

    /// One READ or WRITE DMA EXT of `len` bytes of the bounce buffer at block `lba`.
    fn piece(&mut self, write: bool, lba: u64, len: usize) -> Result<(), IoError> {
        let op = if write { ATA_WRITE_DMA_EXT } else { ATA_READ_DMA_EXT };
        let count = (len / self.block_size as usize) as u16;
        self.command(op, lba, count, len, write)
            .map_err(|e| IoError::Device(format!("SATA disk at block {lba}: {e}")))
    }
}

impl BlockDevice for AhciDisk {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.blocks
    }

    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        super::read_bounced(self, lba, buf)
    }

    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        super::write_bounced(self, lba, buf)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.command(ATA_FLUSH_CACHE_EXT, 0, 0, 0, false)
            .map_err(|e| IoError::Device(format!("SATA flush: {e}")))
    }
}
