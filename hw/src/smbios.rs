//! SMBIOS (DMTF DSP0134 3.7): entry points and the structures Ember shows - type 0 (BIOS), type 1
//! (system), type 4 (processor). The platform copies the bytes out of firmware memory; this module
//! never trusts a length or a string index.

use alloc::string::String;
use alloc::vec::Vec;

/// Where the structure table is, from an entry point structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLocation {
    /// Physical address of the structure table.
    pub address: u64,
    /// Length (2.x: exact; 3.x: maximum) of the table in bytes.
    pub length: u32,
    /// SMBIOS major.minor version.
    pub version: (u8, u8),
}

/// What is wrong with an entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPointError {
    /// Neither "_SM_" nor "_SM3_".
    BadAnchor,
    /// Shorter than its declared length.
    Short,
    /// Checksum does not sum to zero.
    Checksum,
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// Decodes a 32-bit ("_SM_", 31 bytes) or 64-bit ("_SM3_", 24 bytes) entry point.
pub fn parse_entry_point(b: &[u8]) -> Result<TableLocation, EntryPointError> {
    if b.starts_with(b"_SM3_") {
        let len = *b.get(6).ok_or(EntryPointError::Short)? as usize;
        let ep = b.get(..len.max(24)).ok_or(EntryPointError::Short)?;
        if sum(ep) != 0 {
            return Err(EntryPointError::Checksum);
        }
        Ok(TableLocation {
            address: u64::from_le_bytes(ep[0x10..0x18].try_into().unwrap_or([0; 8])),
            length: u32::from_le_bytes(ep[0x0C..0x10].try_into().unwrap_or([0; 4])),
            version: (ep[7], ep[8]),
        })
    } else if b.starts_with(b"_SM_") {
        let len = *b.get(5).ok_or(EntryPointError::Short)? as usize;
        let ep = b.get(..len.max(31)).ok_or(EntryPointError::Short)?;
        if sum(&ep[..len.max(31)]) != 0 || sum(&ep[0x10..0x1F]) != 0 {
            return Err(EntryPointError::Checksum);
        }
        Ok(TableLocation {
            address: u32::from_le_bytes(ep[0x18..0x1C].try_into().unwrap_or([0; 4])) as u64,
            length: u16::from_le_bytes([ep[0x16], ep[0x17]]) as u32,
            version: (ep[6], ep[7]),
        })
    } else {
        Err(EntryPointError::BadAnchor)
    }
}

/// One structure: its formatted area and its strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Structure<'a> {
    pub kind: u8,
    pub handle: u16,
    pub formatted: &'a [u8],
    strings: &'a [u8],
}

impl<'a> Structure<'a> {
    /// Byte at `offset` of the formatted area.
    pub fn byte(&self, offset: usize) -> Option<u8> {
        self.formatted.get(offset).copied()
    }
    /// The string referenced by the index byte at `offset` (1-based index; 0 = none).
    pub fn string_at(&self, offset: usize) -> Option<String> {
        let idx = self.byte(offset)? as usize;
        if idx == 0 {
            return None;
        }
        let raw = self.strings.split(|b| *b == 0).nth(idx - 1)?;
        let s: String =
            raw.iter().map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '?' }).collect();
        let t = s.trim();
        (!t.is_empty()).then(|| String::from(t))
    }
}

/// Walks the structure table, stopping at the end-of-table structure (type 127), at the end of the
/// buffer, or at the first malformed structure.
pub fn structures(table: &[u8]) -> Vec<Structure<'_>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 4 <= table.len() {
        let kind = table[pos];
        let len = table[pos + 1] as usize;
        if len < 4 || pos + len > table.len() {
            break;
        }
        let handle = u16::from_le_bytes([table[pos + 2], table[pos + 3]]);
        let formatted = &table[pos..pos + len];
        // Strings end with a double NUL.
        let rest = &table[pos + len..];
        let Some(end) = rest.windows(2).position(|w| w == [0, 0]) else { break };
        out.push(Structure { kind, handle, formatted, strings: &rest[..end + 1] });
        if kind == 127 {
            break;
        }
        pos += len + end + 2;
    }
    out
}

/// What Ember shows about the machine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SystemInfo {
    pub vendor: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    pub bios_vendor: Option<String>,
    pub bios_version: Option<String>,
    pub bios_date: Option<String>,
    /// Processor version string of the first populated socket (type 4).
    pub cpu_model: Option<String>,
    /// Number of populated processor sockets.
    pub sockets: u32,
}

/// Extracts [`SystemInfo`] from a structure table.
pub fn system_info(table: &[u8]) -> SystemInfo {
    let mut info = SystemInfo::default();
    for s in structures(table) {
        match s.kind {
            0 => {
                info.bios_vendor = s.string_at(0x04);
                info.bios_version = s.string_at(0x05);
                info.bios_date = s.string_at(0x08);
            }
            1 => {
                info.vendor = s.string_at(0x04);
                info.product = s.string_at(0x05);
                info.serial = s.string_at(0x07);
            }
            4
                // Status byte 0x18 bit 6: socket populated.
                if s.byte(0x18).is_some_and(|st| st & 0x40 != 0) => {
                    info.sockets += 1;
                    if info.cpu_model.is_none() {
                        info.cpu_model = s.string_at(0x10);
                    }
                }
            _ => {}
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_struct(t: &mut Vec<u8>, kind: u8, formatted_len: usize, set: &[(usize, u8)], strings: &[&str]) {
        let mut f = alloc::vec![0u8; formatted_len];
        f[0] = kind;
        f[1] = formatted_len as u8;
        for (o, v) in set {
            f[*o] = *v;
        }
        t.extend_from_slice(&f);
        if strings.is_empty() {
            t.extend_from_slice(&[0, 0]);
        } else {
            for s in strings {
                t.extend_from_slice(s.as_bytes());
                t.push(0);
            }
            t.push(0);
        }
    }

    fn qemu_like_table() -> Vec<u8> {
        let mut t = Vec::new();
        push_struct(
            &mut t,
            0,
            0x1a,
            &[(4, 1), (5, 2), (8, 3)],
            &["EFI Development Kit II / OVMF", "0.0.0", "02/06/2015"],
        );
        push_struct(
            &mut t,
            1,
            0x1b,
            &[(4, 1), (5, 2), (7, 3)],
            &["QEMU", "Standard PC (Q35 + ICH9, 2009)", "SN-42"],
        );
        push_struct(&mut t, 4, 0x30, &[(0x10, 2), (0x18, 0x41)], &["CPU 0", "pc-q35-7.2"]);
        push_struct(&mut t, 4, 0x30, &[(0x10, 1), (0x18, 0x41)], &["pc-q35-7.2"]);
        push_struct(&mut t, 127, 4, &[], &[]);
        t
    }

    #[test]
    fn decodes_system_bios_and_cpu() {
        let info = system_info(&qemu_like_table());
        assert_eq!(info.vendor.as_deref(), Some("QEMU"));
        assert_eq!(info.product.as_deref(), Some("Standard PC (Q35 + ICH9, 2009)"));
        assert_eq!(info.serial.as_deref(), Some("SN-42"));
        assert_eq!(info.bios_vendor.as_deref(), Some("EFI Development Kit II / OVMF"));
        assert_eq!(info.bios_date.as_deref(), Some("02/06/2015"));
        assert_eq!(info.cpu_model.as_deref(), Some("pc-q35-7.2"));
        assert_eq!(info.sockets, 2);
    }

    #[test]
    fn truncated_and_hostile_tables_do_not_panic() {
        let t = qemu_like_table();
        for cut in 0..t.len() {
            let _ = system_info(&t[..cut]);
        }
        // A string index past the strings gives None.
        let mut t = Vec::new();
        push_struct(&mut t, 1, 0x1b, &[(4, 9)], &["only one"]);
        assert_eq!(system_info(&t).vendor, None);
        // Length byte below 4 stops the walk.
        assert!(structures(&[1, 2, 0, 0, 0, 0]).is_empty());
    }

    #[test]
    fn entry_points() {
        let mut ep3 = [0u8; 24];
        ep3[..5].copy_from_slice(b"_SM3_");
        ep3[6] = 24;
        ep3[7] = 3;
        ep3[8] = 0;
        ep3[0x0C..0x10].copy_from_slice(&0x1234u32.to_le_bytes());
        ep3[0x10..0x18].copy_from_slice(&0x7f00_0000u64.to_le_bytes());
        ep3[5] = 0u8.wrapping_sub(sum(&ep3));
        assert_eq!(
            parse_entry_point(&ep3),
            Ok(TableLocation { address: 0x7f00_0000, length: 0x1234, version: (3, 0) })
        );
        let mut bad = ep3;
        bad[0x11] ^= 1;
        assert_eq!(parse_entry_point(&bad), Err(EntryPointError::Checksum));
        assert_eq!(parse_entry_point(b"_XX_"), Err(EntryPointError::BadAnchor));
        assert_eq!(parse_entry_point(&ep3[..10]), Err(EntryPointError::Short));

        let mut ep2 = [0u8; 31];
        ep2[..4].copy_from_slice(b"_SM_");
        ep2[5] = 31;
        ep2[6] = 2;
        ep2[7] = 8;
        ep2[0x10..0x15].copy_from_slice(b"_DMI_");
        ep2[0x16..0x18].copy_from_slice(&300u16.to_le_bytes());
        ep2[0x18..0x1C].copy_from_slice(&0xF0000u32.to_le_bytes());
        ep2[0x15] = 0u8.wrapping_sub(sum(&ep2[0x10..0x1F]));
        ep2[4] = 0u8.wrapping_sub(sum(&ep2));
        assert_eq!(
            parse_entry_point(&ep2),
            Ok(TableLocation { address: 0xF0000, length: 300, version: (2, 8) })
        );
    }
}
