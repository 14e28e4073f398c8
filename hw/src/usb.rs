//! USB descriptors (USB 2.0 9.6) as far as finding a mass storage interface or a boot keyboard needs
//! them: the device descriptor, and a configuration's interfaces and endpoints. Every length is
//! checked; a descriptor list that lies about its lengths is an error, never a panic.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

pub const DESCRIPTOR_DEVICE: u8 = 1;
pub const DESCRIPTOR_CONFIGURATION: u8 = 2;
pub const DESCRIPTOR_INTERFACE: u8 = 4;
pub const DESCRIPTOR_ENDPOINT: u8 = 5;

/// Mass storage class, SCSI transparent command set, Bulk-Only Transport (USB MSC overview 2, 3).
pub const CLASS_MASS_STORAGE: u8 = 0x08;
pub const SUBCLASS_SCSI: u8 = 0x06;
pub const PROTOCOL_BULK_ONLY: u8 = 0x50;

/// HID class, boot interface subclass, keyboard protocol (HID 1.11 4.2, 4.3).
pub const CLASS_HID: u8 = 0x03;
pub const SUBCLASS_BOOT: u8 = 0x01;
pub const PROTOCOL_KEYBOARD: u8 = 0x01;
/// HID class requests (HID 1.11 7.2).
pub const HID_SET_IDLE: u8 = 0x0a;
pub const HID_SET_PROTOCOL: u8 = 0x0b;

/// The fields of a device descriptor Ember uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDescriptor {
    pub usb_version: u16,
    pub class: u8,
    pub max_packet_size0: u8,
    pub vendor: u16,
    pub product: u16,
    pub configurations: u8,
}

impl DeviceDescriptor {
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        if b.len() < 18 || b[0] < 18 || b[1] != DESCRIPTOR_DEVICE {
            return Err(format!("not a device descriptor ({} bytes)", b.len()));
        }
        Ok(DeviceDescriptor {
            usb_version: u16::from_le_bytes([b[2], b[3]]),
            class: b[4],
            max_packet_size0: b[7],
            vendor: u16::from_le_bytes([b[8], b[9]]),
            product: u16::from_le_bytes([b[10], b[11]]),
            configurations: b[17],
        })
    }
}

/// A bulk endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkEndpoint {
    /// Endpoint number (1-15).
    pub number: u8,
    pub max_packet_size: u16,
}

/// A Bulk-Only mass storage interface in a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MassStorage {
    pub configuration_value: u8,
    pub interface: u8,
    pub bulk_in: BulkEndpoint,
    pub bulk_out: BulkEndpoint,
}

/// `wTotalLength` of a configuration descriptor's first 9 bytes.
pub fn configuration_total_length(b: &[u8]) -> Result<u16, String> {
    if b.len() < 9 || b[1] != DESCRIPTOR_CONFIGURATION || b[0] < 9 {
        return Err(String::from("not a configuration descriptor"));
    }
    Ok(u16::from_le_bytes([b[2], b[3]]))
}

/// The descriptors of a whole configuration (descriptor, interfaces, endpoints and whatever class
/// descriptors lie between), each with its length checked.
fn descriptors(config: &[u8]) -> Result<Vec<&[u8]>, String> {
    configuration_total_length(config)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < config.len() {
        let len = config[at] as usize;
        if len < 2 || at + len > config.len() {
            return Err(format!("descriptor at byte {at} has a bad length {len}"));
        }
        out.push(&config[at..at + len]);
        at += len;
    }
    Ok(out)
}

/// An endpoint descriptor's fields: (address, transfer type, endpoint, interval).
fn endpoint(d: &[u8]) -> Option<(u8, u8, BulkEndpoint, u8)> {
    (d[1] == DESCRIPTOR_ENDPOINT && d.len() >= 7).then(|| {
        let ep =
            BulkEndpoint { number: d[2] & 0x0f, max_packet_size: u16::from_le_bytes([d[4], d[5]]) & 0x7ff };
        (d[2], d[3] & 0x3, ep, d[6])
    })
}

/// The interface descriptor's (number, alternate setting, class, subclass, protocol).
fn interface(d: &[u8]) -> Option<(u8, u8, u8, u8, u8)> {
    (d[1] == DESCRIPTOR_INTERFACE && d.len() >= 9).then(|| (d[2], d[3], d[5], d[6], d[7]))
}

/// Finds the first SCSI Bulk-Only interface of a whole configuration with one bulk IN and one bulk
/// OUT endpoint.
pub fn find_mass_storage(config: &[u8]) -> Result<Option<MassStorage>, String> {
    let configuration_value = config.get(5).copied().unwrap_or(0);
    let mut current: Option<(u8, Option<BulkEndpoint>, Option<BulkEndpoint>)> = None;
    for d in descriptors(config)? {
        if let Some((number, alternate, class, subclass, protocol)) = interface(d) {
            if let Some((interface, Some(bulk_in), Some(bulk_out))) = current.take() {
                return Ok(Some(MassStorage { configuration_value, interface, bulk_in, bulk_out }));
            }
            // Alternate settings other than 0 are not used.
            let bot = (class, subclass, protocol) == (CLASS_MASS_STORAGE, SUBCLASS_SCSI, PROTOCOL_BULK_ONLY);
            if bot && alternate == 0 {
                current = Some((number, None, None));
            }
        } else if let (Some((address, kind, ep, _)), Some((_, bulk_in, bulk_out))) =
            (endpoint(d), current.as_mut())
        {
            if kind == 2 && ep.number != 0 && ep.max_packet_size != 0 {
                let slot = if address & 0x80 != 0 { bulk_in } else { bulk_out };
                slot.get_or_insert(ep);
            }
        }
    }
    Ok(match current {
        Some((interface, Some(bulk_in), Some(bulk_out))) => {
            Some(MassStorage { configuration_value, interface, bulk_in, bulk_out })
        }
        _ => None,
    })
}

/// A boot-protocol keyboard interface in a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootKeyboard {
    pub configuration_value: u8,
    pub interface: u8,
    /// Its interrupt IN endpoint.
    pub endpoint: BulkEndpoint,
    /// The endpoint's `bInterval` (frames at full/low speed, an exponent at high speed).
    pub interval: u8,
}

/// Finds the first HID boot keyboard interface (alternate setting 0) with an interrupt IN endpoint.
pub fn find_boot_keyboard(config: &[u8]) -> Result<Option<BootKeyboard>, String> {
    let configuration_value = config.get(5).copied().unwrap_or(0);
    let mut current = None;
    for d in descriptors(config)? {
        if let Some((number, alternate, class, subclass, protocol)) = interface(d) {
            let keyboard = (class, subclass, protocol) == (CLASS_HID, SUBCLASS_BOOT, PROTOCOL_KEYBOARD);
            current = (keyboard && alternate == 0).then_some(number);
        } else if let (Some((address, kind, ep, interval)), Some(interface)) = (endpoint(d), current) {
            if kind == 3 && address & 0x80 != 0 && ep.number != 0 && ep.max_packet_size >= 8 {
                return Ok(Some(BootKeyboard { configuration_value, interface, endpoint: ep, interval }));
            }
        }
    }
    Ok(None)
}

/// The xHCI endpoint-context Interval (xHCI 1.2 6.2.3.6: the period is 2^Interval x 125 us) for an
/// interrupt endpoint's `bInterval` at xHCI port speed `speed` (1 full, 2 low, 3 high, 4+ SuperSpeed).
pub fn xhci_interrupt_interval(speed: u32, b_interval: u8) -> u8 {
    match speed {
        // Full and low speed: bInterval is in 1 ms frames (1-255): the largest power of two of
        // 125 us periods not longer than it.
        1 | 2 => {
            let micro_frames = (b_interval.max(1) as u32) * 8;
            (31 - micro_frames.leading_zeros()).clamp(3, 10) as u8
        }
        // High speed and faster: 2^(bInterval-1) micro-frames, bInterval 1-16.
        _ => b_interval.clamp(1, 16) - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration as QEMU's `usb-storage` reports it at high speed.
    const QEMU_STICK: [u8; 32] = [
        9, 2, 32, 0, 1, 1, 0, 0xc0, 50, // configuration
        9, 4, 0, 0, 2, 8, 6, 0x50, 0, // interface 0: mass storage, SCSI, BOT
        7, 5, 0x81, 2, 0x00, 0x02, 0, // EP1 IN bulk 512
        7, 5, 0x02, 2, 0x00, 0x02, 0, // EP2 OUT bulk 512
    ];

    #[test]
    fn finds_the_bulk_only_interface() {
        assert_eq!(configuration_total_length(&QEMU_STICK), Ok(32));
        let m = find_mass_storage(&QEMU_STICK).unwrap().unwrap();
        assert_eq!(m.configuration_value, 1);
        assert_eq!(m.bulk_in, BulkEndpoint { number: 1, max_packet_size: 512 });
        assert_eq!(m.bulk_out, BulkEndpoint { number: 2, max_packet_size: 512 });
    }

    #[test]
    fn other_devices_and_broken_lists() {
        let mut hid = QEMU_STICK;
        hid[14] = 3; // HID class
        assert_eq!(find_mass_storage(&hid), Ok(None));
        let mut one_ep = QEMU_STICK;
        one_ep[28] = 3; // the OUT endpoint is interrupt, not bulk
        assert_eq!(find_mass_storage(&one_ep), Ok(None));
        let mut lying = QEMU_STICK;
        lying[18] = 40; // an endpoint claiming to run past the end
        assert!(find_mass_storage(&lying).unwrap_err().contains("bad length"));
        let mut zero = QEMU_STICK;
        zero[9] = 0;
        assert!(find_mass_storage(&zero).is_err());
        assert!(find_mass_storage(&QEMU_STICK[..5]).is_err());
        for n in 0..QEMU_STICK.len() {
            let _ = find_mass_storage(&QEMU_STICK[..n]);
        }
    }

    /// A configuration as QEMU's `usb-kbd` reports it at full speed (with its HID class descriptor).
    const QEMU_KEYBOARD: [u8; 34] = [
        9, 2, 34, 0, 1, 1, 0, 0xa0, 50, // configuration
        9, 4, 0, 0, 1, 3, 1, 1, 0, // interface 0: HID, boot, keyboard
        9, 0x21, 0x11, 0x01, 0, 1, 0x22, 63, 0, // HID descriptor
        7, 5, 0x81, 3, 8, 0, 10, // EP1 IN interrupt 8 bytes, every 10 ms
    ];

    #[test]
    fn finds_the_boot_keyboard() {
        let k = find_boot_keyboard(&QEMU_KEYBOARD).unwrap().unwrap();
        assert_eq!(
            k,
            BootKeyboard {
                configuration_value: 1,
                interface: 0,
                endpoint: BulkEndpoint { number: 1, max_packet_size: 8 },
                interval: 10
            }
        );
        assert_eq!(find_mass_storage(&QEMU_KEYBOARD), Ok(None));
        assert_eq!(find_boot_keyboard(&QEMU_STICK), Ok(None));
        let mut mouse = QEMU_KEYBOARD;
        mouse[16] = 2; // boot protocol mouse
        assert_eq!(find_boot_keyboard(&mouse), Ok(None));
        let mut out = QEMU_KEYBOARD;
        out[29] = 0x01; // an OUT endpoint
        assert_eq!(find_boot_keyboard(&out), Ok(None));
        let mut bulk = QEMU_KEYBOARD;
        bulk[30] = 2;
        assert_eq!(find_boot_keyboard(&bulk), Ok(None));
        for n in 0..QEMU_KEYBOARD.len() {
            let _ = find_boot_keyboard(&QEMU_KEYBOARD[..n]);
        }
    }

    #[test]
    fn interrupt_intervals() {
        // Full speed 10 ms -> 2^6 x 125 us = 8 ms; 1 ms -> 2^3; 255 ms -> capped at 2^10.
        assert_eq!(xhci_interrupt_interval(1, 10), 6);
        assert_eq!(xhci_interrupt_interval(2, 1), 3);
        assert_eq!(xhci_interrupt_interval(1, 0), 3);
        assert_eq!(xhci_interrupt_interval(1, 255), 10);
        // High speed bInterval 7 -> 2^6 micro-frames; out-of-range values are clamped.
        assert_eq!(xhci_interrupt_interval(3, 7), 6);
        assert_eq!(xhci_interrupt_interval(3, 0), 0);
        assert_eq!(xhci_interrupt_interval(4, 200), 15);
    }

    #[test]
    fn device_descriptor() {
        let d = [18, 1, 0, 2, 0, 0, 0, 64, 0x27, 0x06, 0x01, 0x00, 0, 0, 1, 2, 3, 1];
        let p = DeviceDescriptor::parse(&d).unwrap();
        assert_eq!(
            (p.usb_version, p.max_packet_size0, p.vendor, p.product, p.configurations),
            (0x200, 64, 0x0627, 1, 1)
        );
        assert!(DeviceDescriptor::parse(&d[..17]).is_err());
    }
}
