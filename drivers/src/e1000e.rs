//! Intel 82574L (QEMU's `e1000e`) Gigabit Ethernet, polled, with legacy descriptors.
//!
//! Register and descriptor layouts from the Intel 82574 GbE Controller Family datasheet: device
//! control and status (10.2.2), receive (10.2.5, descriptor 7.1.4.1 "legacy"), transmit (10.2.6,
//! descriptor 7.2.10.1 "legacy"). Interrupts are masked: the management loop polls the rings.
//! The MAC address is read from RAL0/RAH0, which the controller loads from its NVM at reset.

use ember_hw::mm::frames::FrameAllocator;
use ember_hw::nic::Nic;
use ember_platform::arch::x86_64::dma::DmaBuffer;
use ember_platform::arch::x86_64::mmio::MmioRegion;
use ember_platform::arch::x86_64::timer;
use ember_platform::firmware::pcie::PciFunction;

const CTRL: u64 = 0x0000;
const STATUS: u64 = 0x0008;
const ICR: u64 = 0x00c0;
const IMC: u64 = 0x00d8;
const RCTL: u64 = 0x0100;
const TCTL: u64 = 0x0400;
const TIPG: u64 = 0x0410;
const RDBAL: u64 = 0x2800;
const RDBAH: u64 = 0x2804;
const RDLEN: u64 = 0x2808;
const RDH: u64 = 0x2810;
const RDT: u64 = 0x2818;
const TDBAL: u64 = 0x3800;
const TDBAH: u64 = 0x3804;
const TDLEN: u64 = 0x3808;
const TDH: u64 = 0x3810;
const TDT: u64 = 0x3818;
const MTA: u64 = 0x5200;
const RAL0: u64 = 0x5400;
const RAH0: u64 = 0x5404;

const CTRL_SLU: u32 = 1 << 6;
const CTRL_ASDE: u32 = 1 << 5;
const CTRL_RST: u32 = 1 << 26;
const STATUS_LU: u32 = 1 << 1;
const RCTL_EN: u32 = 1 << 1;
const RCTL_BAM: u32 = 1 << 15;
/// Unicast and multicast promiscuous (82574L datasheet 10.2.5.1).
const RCTL_UPE: u32 = 1 << 3;
const RCTL_MPE: u32 = 1 << 4;
const RCTL_SECRC: u32 = 1 << 26;
const TCTL_EN: u32 = 1 << 1;
const TCTL_PSP: u32 = 1 << 3;
const RAH_AV: u32 = 1 << 31;

const DESC_LEN: usize = 16;
const RX_RING: usize = 64;
const TX_RING: usize = 64;
const BUF_LEN: usize = 2048;

// Legacy descriptor fields.
const RX_STATUS: usize = 12;
const RX_ERRORS: usize = 13;
const RX_LENGTH: usize = 8;
const RX_DD: u8 = 1 << 0;
const RX_EOP: u8 = 1 << 1;
const TX_LENGTH: usize = 8;
const TX_CMD: usize = 11;
const TX_STATUS: usize = 12;
const TX_CMD_EOP: u8 = 1 << 0;
const TX_CMD_IFCS: u8 = 1 << 1;
const TX_CMD_RS: u8 = 1 << 3;
const TX_DD: u8 = 1 << 0;

pub struct E1000e {
    regs: MmioRegion,
    mac: [u8; 6],
    rx_desc: DmaBuffer,
    rx_bufs: DmaBuffer,
    rx_next: usize,
    tx_desc: DmaBuffer,
    tx_bufs: DmaBuffer,
    /// Next descriptor to fill.
    tx_tail: usize,
    /// Oldest descriptor not yet reclaimed.
    tx_clean: usize,
    tx_in_flight: usize,
}

fn write_u64(buf: &DmaBuffer, offset: usize, v: u64) {
    buf.write(offset, &v.to_le_bytes());
}

impl E1000e {
    pub fn new(f: &PciFunction, frames: &mut FrameAllocator) -> Result<Self, &'static str> {
        let regs = f.map_memory_bar(0, frames).ok_or("BAR0 is not an assigned memory BAR")?;
        if regs.len() < 0x2_0000 {
            return Err("BAR0 smaller than the 128 KiB register file");
        }
        f.enable_memory_and_dma();
        // Mask interrupts, reset, mask again (datasheet 4.6.1).
        regs.write32(IMC, 0xffff_ffff);
        regs.write32(CTRL, regs.read32(CTRL) | CTRL_RST);
        timer::delay_us(1000);
        let mut waited = 0;
        while regs.read32(CTRL) & CTRL_RST != 0 {
            if waited > 100 {
                return Err("controller did not come out of reset");
            }
            timer::delay_us(1000);
            waited += 1;
        }
        regs.write32(IMC, 0xffff_ffff);
        let _ = regs.read32(ICR);
        regs.write32(CTRL, regs.read32(CTRL) | CTRL_SLU | CTRL_ASDE);

        let ral = regs.read32(RAL0);
        let rah = regs.read32(RAH0);
        if rah & RAH_AV == 0 {
            return Err("no valid MAC address in RAL0/RAH0");
        }
        let mac =
            [ral as u8, (ral >> 8) as u8, (ral >> 16) as u8, (ral >> 24) as u8, rah as u8, (rah >> 8) as u8];
        for i in 0..128 {
            regs.write32(MTA + 4 * i, 0);
        }

        let alloc = |n| DmaBuffer::new(n).ok_or("out of memory for descriptor rings");
        let rx_desc = alloc(RX_RING * DESC_LEN)?;
        let rx_bufs = alloc(RX_RING * BUF_LEN)?;
        let tx_desc = alloc(TX_RING * DESC_LEN)?;
        let tx_bufs = alloc(TX_RING * BUF_LEN)?;
        for i in 0..RX_RING {
            write_u64(&rx_desc, i * DESC_LEN, rx_bufs.phys() + (i * BUF_LEN) as u64);
        }
        for i in 0..TX_RING {
            write_u64(&tx_desc, i * DESC_LEN, tx_bufs.phys() + (i * BUF_LEN) as u64);
        }

        regs.write32(RDBAL, rx_desc.phys() as u32);
        regs.write32(RDBAH, (rx_desc.phys() >> 32) as u32);
        regs.write32(RDLEN, (RX_RING * DESC_LEN) as u32);
        regs.write32(RDH, 0);
        regs.write32(RDT, (RX_RING - 1) as u32);
        // 2048-byte buffers (BSIZE 00), broadcast accept, strip CRC; legacy descriptors (RFCTL.EXSTEN 0).
        regs.write32(RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC);

        regs.write32(TDBAL, tx_desc.phys() as u32);
        regs.write32(TDBAH, (tx_desc.phys() >> 32) as u32);
        regs.write32(TDLEN, (TX_RING * DESC_LEN) as u32);
        regs.write32(TDH, 0);
        regs.write32(TDT, 0);
        regs.write32(TIPG, 0x0060_2008);
        // Collision threshold 15, collision distance 63 (full duplex values from the datasheet).
        regs.write32(TCTL, TCTL_EN | TCTL_PSP | (0x0f << 4) | (0x3f << 12));

        Ok(E1000e {
            regs,
            mac,
            rx_desc,
            rx_bufs,
            rx_next: 0,
            tx_desc,
            tx_bufs,
            tx_tail: 0,
            tx_clean: 0,
            tx_in_flight: 0,
        })
    }

    fn reclaim_tx(&mut self) {
        while self.tx_in_flight > 0 && self.tx_desc.read_u8(self.tx_clean * DESC_LEN + TX_STATUS) & TX_DD != 0
        {
            self.tx_clean = (self.tx_clean + 1) % TX_RING;
            self.tx_in_flight -= 1;
        }
    }
}

impl Nic for E1000e {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&mut self) -> bool {
        self.regs.read32(STATUS) & STATUS_LU != 0
    }

    fn set_promiscuous(&mut self, on: bool) {
        let rctl = self.regs.read32(RCTL) & !(RCTL_UPE | RCTL_MPE);
        self.regs.write32(RCTL, if on { rctl | RCTL_UPE | RCTL_MPE } else { rctl });
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let d = self.rx_next * DESC_LEN;
            let status = self.rx_desc.read_u8(d + RX_STATUS);
            if status & RX_DD == 0 {
                return None;
            }
            let len = self.rx_desc.read_u16(d + RX_LENGTH) as usize;
            let errors = self.rx_desc.read_u8(d + RX_ERRORS);
            let good =
                status & RX_EOP != 0 && errors == 0 && len <= buf.len() && (14..=BUF_LEN).contains(&len);
            if good {
                self.rx_bufs.read(self.rx_next * BUF_LEN, &mut buf[..len]);
            }
            // Hand the descriptor back to the controller.
            self.rx_desc.write_u8(d + RX_STATUS, 0);
            self.regs.write32(RDT, self.rx_next as u32);
            self.rx_next = (self.rx_next + 1) % RX_RING;
            if good {
                return Some(len);
            }
        }
    }

    fn can_transmit(&mut self) -> bool {
        self.reclaim_tx();
        self.tx_in_flight < TX_RING - 1
    }

    fn transmit(&mut self, frame: &[u8]) -> bool {
        if frame.len() > BUF_LEN || !self.can_transmit() {
            return false;
        }
        let i = self.tx_tail;
        self.tx_bufs.write(i * BUF_LEN, frame);
        let d = i * DESC_LEN;
        self.tx_desc.write(d + TX_LENGTH, &(frame.len() as u16).to_le_bytes());
        self.tx_desc.write_u8(d + TX_STATUS, 0);
        self.tx_desc.write_u8(d + TX_CMD, TX_CMD_EOP | TX_CMD_IFCS | TX_CMD_RS);
        self.tx_tail = (i + 1) % TX_RING;
        self.tx_in_flight += 1;
        self.regs.write32(TDT, self.tx_tail as u32);
        true
    }
}
