//! USB on an xHCI controller: every device on the root hub ports is addressed and its descriptors
//! read, then bound to the driver for what it is - mass storage ([`super::usb_storage`]) or a boot
//! protocol keyboard ([`super::usb_keyboard`]). Other devices are named in the log and left alone.

use super::usb_keyboard::{self, UsbKeyboard};
use super::usb_storage;
use super::xhci::Xhci;
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use ember_hw::mm::frames::FrameAllocator;
use ember_hw::usb::{self, DeviceDescriptor};
use ember_platform::arch::x86_64::dma::DmaBuffer;
use ember_platform::firmware::pcie::PciFunction;
use ember_storage::persist::Disk;

/// A device with an address, and what it says it is.
pub struct Enumerated {
    pub port: u8,
    /// The xHCI port speed (1 full, 2 low, 3 high, 4+ SuperSpeed).
    pub speed: u32,
    pub slot: u8,
    pub device: DeviceDescriptor,
    /// Its first configuration, whole.
    pub config: Vec<u8>,
}

/// What one controller's ports hold.
#[derive(Default)]
pub struct UsbDevices {
    pub disks: Vec<Disk>,
    pub keyboards: Vec<UsbKeyboard>,
}

/// Takes xHCI controller `f` and binds the devices on its root hub ports; disks are named from
/// `usb{first_disk}` on.
pub fn probe(f: &PciFunction, frames: &mut FrameAllocator, first_disk: usize) -> UsbDevices {
    let mut found = UsbDevices::default();
    let Some(regs) = f.map_memory_bar(0, frames) else {
        kprintln!("ember: WARNING: xHCI at {}: no register BAR", f.bdf);
        return found;
    };
    f.enable_memory_and_dma();
    let mut hc = match Xhci::new(regs) {
        Ok(hc) => hc,
        Err(e) => {
            kprintln!("ember: WARNING: xHCI at {} not usable: {e}", f.bdf);
            return found;
        }
    };
    let ports = hc.connected_ports();
    let hc = Rc::new(RefCell::new(hc));
    for (port, speed) in ports {
        let where_ = format!("xHCI {} port {port}", f.bdf);
        let enumerated = enumerate(&mut hc.borrow_mut(), port, speed);
        let bound = enumerated.and_then(|e| bind(&hc, &e, &mut found, first_disk));
        match bound {
            Ok(Some(what)) => kprintln!("ember: {what} ({where_})"),
            Ok(None) => {
                kprintln!("ember: {where_}: no driver for this device (not mass storage or a keyboard)")
            }
            Err(e) => kprintln!("ember: WARNING: {where_}: {e}"),
        }
    }
    found
}

/// Binds `e` to its driver; returns the log line's description, or `None` for no driver.
fn bind(
    hc: &Rc<RefCell<Xhci>>,
    e: &Enumerated,
    found: &mut UsbDevices,
    first_disk: usize,
) -> Result<Option<String>, String> {
    if let Some((dev, what)) = usb_storage::attach(hc, e)? {
        let name = format!("usb{}", first_disk + found.disks.len());
        let (blocks, size) = (dev.capacity.blocks, dev.capacity.block_size);
        let line = format!(
            "{name}: USB mass storage {what}, {} MiB in {size}-byte blocks",
            (blocks * size as u64) >> 20
        );
        found.disks.push(Disk::new(name, "usb-storage", Box::new(dev)).described(&what, ""));
        return Ok(Some(line));
    }
    if let Some(k) = usb_keyboard::attach(hc, e)? {
        let line = format!("USB keyboard {:04x}:{:04x}", e.device.vendor, e.device.product);
        found.keyboards.push(k);
        return Ok(Some(line));
    }
    Ok(None)
}

/// Addresses the device on `port` and reads its device and first configuration descriptors.
fn enumerate(hc: &mut Xhci, port: u8, speed: u32) -> Result<Enumerated, String> {
    let slot = hc.address_device(port, speed)?;
    let buf = DmaBuffer::new(4096).ok_or("out of memory")?;
    let device = DeviceDescriptor::parse(&get_descriptor(hc, slot, usb::DESCRIPTOR_DEVICE, 18, &buf)?)?;
    let head = get_descriptor(hc, slot, usb::DESCRIPTOR_CONFIGURATION, 9, &buf)?;
    let total = usb::configuration_total_length(&head)?.clamp(9, 4096);
    let config = get_descriptor(hc, slot, usb::DESCRIPTOR_CONFIGURATION, total, &buf)?;
    Ok(Enumerated { port, speed, slot, device, config })
}

fn get_descriptor(hc: &mut Xhci, slot: u8, kind: u8, len: u16, buf: &DmaBuffer) -> Result<Vec<u8>, String> {
    let setup = [0x80, 6, 0, kind, 0, 0, len as u8, (len >> 8) as u8];
    let n = hc.control(slot, setup, Some(buf)).map_err(|e| format!("GET_DESCRIPTOR({kind}): {e}"))?;
    let mut out = alloc::vec![0u8; n.min(len as usize)];
    buf.read(0, &mut out);
    Ok(out)
}

/// SET_CONFIGURATION (USB 2.0 9.4.7).
pub fn set_configuration(hc: &mut Xhci, slot: u8, value: u8) -> Result<(), String> {
    hc.control(slot, [0x00, 9, value, 0, 0, 0, 0, 0], None)
        .map(|_| ())
        .map_err(|e| format!("SET_CONFIGURATION: {e}"))
}
