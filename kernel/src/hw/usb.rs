//! USB descriptors (USB 2.0 9.6) as far as finding a mass storage interface needs them: the device
//! descriptor, and a configuration's interfaces and endpoints. Every length is checked; a descriptor
//! list that lies about its lengths is an error, never a panic.

use alloc::format;
use alloc::string::String;

pub const DESCRIPTOR_DEVICE: u8 = 1;
pub const DESCRIPTOR_CONFIGURATION: u8 = 2;
pub const DESCRIPTOR_INTERFACE: u8 = 4;
pub const DESCRIPTOR_ENDPOINT: u8 = 5;

/// Mass storage class, SCSI transparent command set, Bulk-Only Transport (USB MSC overview 2, 3).
pub const CLASS_MASS_STORAGE: u8 = 0x08;
pub const SUBCLASS_SCSI: u8 = 0x06;
pub const PROTOCOL_BULK_ONLY: u8 = 0x50;

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

/// Finds the first SCSI Bulk-Only interface of a whole configuration (descriptor, interfaces,
/// endpoints, and whatever class descriptors lie between) with one bulk IN and one bulk OUT endpoint.
pub fn find_mass_storage(config: &[u8]) -> Result<Option<MassStorage>, String> {
    configuration_total_length(config)?;
    let configuration_value = config[5];
    let mut at = 0usize;
    let mut current: Option<(u8, Option<BulkEndpoint>, Option<BulkEndpoint>)> = None;
    let mut found = None;
    while at < config.len() {
        let len = config[at] as usize;
        if len < 2 || at + len > config.len() {
            return Err(format!("descriptor at byte {at} has a bad length {len}"));
        }
        let d = &config[at..at + len];
        match d[1] {
            DESCRIPTOR_INTERFACE if len >= 9 => {
                if let Some((iface, Some(i), Some(o))) = current.take() {
                    found.get_or_insert(MassStorage {
                        configuration_value,
                        interface: iface,
                        bulk_in: i,
                        bulk_out: o,
                    });
                }
                // Alternate settings other than 0 are not used.
                if d[5] == CLASS_MASS_STORAGE
                    && d[6] == SUBCLASS_SCSI
                    && d[7] == PROTOCOL_BULK_ONLY
                    && d[3] == 0
                {
                    current = Some((d[2], None, None));
                }
            }
            DESCRIPTOR_ENDPOINT if len >= 7 => {
                if let Some((_, bulk_in, bulk_out)) = current.as_mut() {
                    let address = d[2];
                    let bulk = d[3] & 0x3 == 2;
                    let ep = BulkEndpoint {
                        number: address & 0x0f,
                        max_packet_size: u16::from_le_bytes([d[4], d[5]]) & 0x7ff,
                    };
                    if bulk && ep.number != 0 && ep.max_packet_size != 0 {
                        let slot = if address & 0x80 != 0 { bulk_in } else { bulk_out };
                        slot.get_or_insert(ep);
                    }
                }
            }
            _ => {}
        }
        at += len;
    }
    if let Some((iface, Some(i), Some(o))) = current {
        found.get_or_insert(MassStorage { configuration_value, interface: iface, bulk_in: i, bulk_out: o });
    }
    Ok(found)
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
