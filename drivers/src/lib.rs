//! Host device drivers, bound to PCIe functions found by the scan.
//!
//! NICs are named `vmnic0`, `vmnic1`, ... in PCI order (segment, bus, device, function), whatever
//! their driver, as ESXi names them. Disks are named by driver in PCI order: `vda`, `vdb`, ... for
//! virtio-blk, `usb0`, ... for USB mass storage on xHCI, `nvme0`, ... for NVMe namespaces,
//! `sata0`, ... for AHCI disks.
//!
//! Drivers reach hardware only through the platform's MMIO windows, DMA buffers and PCI accessors:
//! no `unsafe` here. The crate builds only for `x86_64-unknown-uefi`; on the build host it is empty.
#![cfg(target_os = "uefi")]
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[macro_use]
extern crate ember_platform;

pub mod ahci;
pub mod e1000e;
pub mod nvme;
pub mod ps2;
pub mod usb;
pub mod usb_keyboard;
pub mod usb_storage;
pub mod virtio_blk;
pub mod virtio_net;
pub mod xhci;

use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;
use ember_hw::mm::frames::FrameAllocator;
use ember_hw::nic::ManagedNic;
use ember_hw::nic::Nic;
use ember_platform::arch::x86_64::dma::DmaBuffer;
use ember_platform::arch::x86_64::dma::EmberHal;
use ember_platform::firmware::pcie::PciFunction;
use ember_storage::block::{in_pieces, BlockDevice, IoError};
use ember_storage::persist::Disk;
use usb_keyboard::UsbKeyboard;
use virtio_drivers::transport::pci::bus::DeviceFunction;
use virtio_drivers::transport::pci::PciTransport;

/// A block driver that moves data through one DMA bounce buffer, one command per piece.
trait Bounced: BlockDevice {
    fn bounce(&self) -> &DmaBuffer;
    /// Largest piece one command moves, in bytes.
    fn max_piece(&self) -> usize;
    /// Reads or writes `len` bytes of the bounce buffer at block `lba`.
    fn piece(&mut self, write: bool, lba: u64, len: usize) -> Result<(), IoError>;
}

/// `BlockDevice::read_blocks` for a [`Bounced`] driver.
fn read_bounced<D: Bounced>(d: &mut D, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
    d.check_request(lba, buf.len())?;
    let (bs, max) = (d.block_size(), d.max_piece());
    in_pieces(lba, buf.len(), bs, max, |block, r| {
        d.piece(false, block, r.len())?;
        d.bounce().read(0, &mut buf[r]);
        Ok(())
    })
}

/// `BlockDevice::write_blocks` for a [`Bounced`] driver.
fn write_bounced<D: Bounced>(d: &mut D, lba: u64, buf: &[u8]) -> Result<(), IoError> {
    d.check_request(lba, buf.len())?;
    let (bs, max) = (d.block_size(), d.max_piece());
    in_pieces(lba, buf.len(), bs, max, |block, r| {
        d.bounce().write(0, &buf[r.clone()]);
        d.piece(true, block, r.len())
    })
}

/// Maps a virtio function's BARs, enables it and finds its virtio PCI capabilities (virtio 1.2 4.1).
fn virtio_pci_transport(f: &PciFunction, frames: &mut FrameAllocator) -> Result<PciTransport, &'static str> {
    f.map_all_memory_bars(frames);
    f.enable_memory_and_dma();
    let mut root = f.virtio_pci_root();
    let df = DeviceFunction { bus: f.bdf.bus, device: f.bdf.device, function: f.bdf.function };
    PciTransport::new::<EmberHal, _>(&mut root, df).map_err(|_| "virtio PCI capabilities not usable")
}

/// Binds a driver to every supported disk controller and returns the disks in PCI order, with the
/// USB keyboards found on the xHCI controllers.
pub fn probe_disks(functions: &[PciFunction], frames: &mut FrameAllocator) -> (Vec<Disk>, Vec<UsbKeyboard>) {
    let mut disks = Vec::new();
    let mut keyboards = Vec::new();
    let mut virtio = 0u8;
    for f in functions {
        // xHCI: serial bus controller, USB, programming interface 0x30 (PCI code and ID assignment).
        let count = |driver: &str, disks: &Vec<Disk>| disks.iter().filter(|d| d.driver == driver).count();
        match (f.class, f.subclass, f.prog_if) {
            (0x0c, 0x03, 0x30) => {
                let found = usb::probe(f, frames, count("usb-storage", &disks));
                disks.extend(found.disks);
                keyboards.extend(found.keyboards);
                continue;
            }
            // Mass storage, SATA, AHCI 1.0.
            (0x01, 0x06, 0x01) => {
                let first = count("ahci", &disks);
                disks.extend(ahci::probe(f, frames, first));
                continue;
            }
            // Mass storage, non-volatile memory, NVM Express.
            (0x01, 0x08, 0x02) => {
                match nvme::Nvme::new(f, frames) {
                    Ok(dev) => {
                        let name = format!("nvme{}", count("nvme", &disks));
                        kprintln!(
                            "ember: {name}: NVMe at {}: {}, namespace 1: {} MiB in {}-byte blocks",
                            f.bdf,
                            dev.model,
                            (dev.num_blocks() * dev.block_size() as u64) >> 20,
                            dev.block_size()
                        );
                        let (model, serial) = (dev.model.clone(), dev.serial.clone());
                        disks.push(Disk::new(name, "nvme", Box::new(dev)).described(&model, &serial));
                    }
                    Err(why) => kprintln!("ember: WARNING: NVMe at {} not usable: {why}", f.bdf),
                }
                continue;
            }
            _ => {}
        }
        if let (0x1af4, 0x1001) | (0x1af4, 0x1042) = (f.vendor, f.device) {
            match virtio_blk::VirtioBlk::new(f, frames) {
                Ok(dev) => {
                    let name = format!("vd{}", char::from(b'a' + virtio % 26));
                    virtio = virtio.wrapping_add(1);
                    kprintln!(
                        "ember: {name}: virtio-blk at {}, {} MiB{}",
                        f.bdf,
                        dev.num_blocks() / 2048,
                        if dev.readonly() { ", read-only" } else { "" }
                    );
                    disks.push(Disk::new(name, "virtio-blk", Box::new(dev)));
                }
                Err(why) => kprintln!("ember: WARNING: virtio-blk at {} not usable: {why}", f.bdf),
            }
        }
    }
    (disks, keyboards)
}

/// A driver's attempt to take a function: the NIC, or why not.
type Binding = Result<Box<dyn Nic>, &'static str>;

/// Binds a driver to every supported NIC and returns them named in PCI order.
pub fn probe_nics(functions: &[PciFunction], frames: &mut FrameAllocator) -> Vec<ManagedNic> {
    let mut nics = Vec::new();
    for f in functions {
        let bound: Option<(&'static str, Binding)> = match (f.vendor, f.device) {
            (0x1af4, 0x1000) | (0x1af4, 0x1041) => Some((
                "virtio-net",
                virtio_net::VirtioNet::new(f, frames).map(|n| Box::new(n) as Box<dyn Nic>),
            )),
            (0x8086, 0x10d3) => {
                Some(("e1000e", e1000e::E1000e::new(f, frames).map(|n| Box::new(n) as Box<dyn Nic>)))
            }
            _ => None,
        };
        match bound {
            None => {}
            Some((driver, Ok(nic))) => {
                let name = format!("vmnic{}", nics.len());
                let mut nic = nic;
                kprintln!(
                    "ember: {name}: {driver} at {}, MAC {}, link {}",
                    f.bdf,
                    ember_hw::nic::mac_string(&nic.mac()),
                    if nic.link_up() { "up" } else { "down" }
                );
                nics.push(ManagedNic { name, driver, nic });
            }
            Some((driver, Err(why))) => {
                kprintln!("ember: WARNING: {driver} at {} not usable: {why}", f.bdf);
            }
        }
    }
    if nics.is_empty() {
        kprintln!("ember: no supported NIC found (virtio-net, Intel 82574L e1000e)");
    }
    nics
}
