//! USB mass storage Bulk-Only Transport (USB MSC BOT 1.0) wrappers and the SCSI commands Ember sends
//! through them (SPC-4 / SBC-3): formats only, host-tested; the transfers are the xHCI driver's.
//!
//! A command is a 31-byte Command Block Wrapper (CBW) on the bulk OUT pipe, an optional data stage,
//! then a 13-byte Command Status Wrapper (CSW) on the bulk IN pipe (BOT 5.1, 5.2). Every CSW is
//! checked: signature, the tag of its CBW, a residue no larger than the transfer, a known status.

use alloc::format;
use alloc::string::String;
use core::fmt;

/// `USBC`, little endian (BOT 5.1).
pub const CBW_SIGNATURE: u32 = 0x4342_5355;
/// `USBS`, little endian (BOT 5.2).
pub const CSW_SIGNATURE: u32 = 0x5342_5355;
pub const CBW_LEN: usize = 31;
pub const CSW_LEN: usize = 13;

pub const TEST_UNIT_READY: u8 = 0x00;
pub const REQUEST_SENSE: u8 = 0x03;
pub const INQUIRY: u8 = 0x12;
pub const READ_CAPACITY_10: u8 = 0x25;
pub const READ_10: u8 = 0x28;
pub const WRITE_10: u8 = 0x2a;
pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
pub const READ_16: u8 = 0x88;
pub const WRITE_16: u8 = 0x8a;
pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
/// READ CAPACITY (16) is service action 0x10 of SERVICE ACTION IN (16).
pub const READ_CAPACITY_16_ACTION: u8 = 0x10;

/// Data direction of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    None,
    /// Device to host.
    In,
    /// Host to device.
    Out,
}

/// A Command Block Wrapper for `cdb` (1-16 bytes) moving `len` bytes in `dir`, on LUN 0.
pub fn cbw(tag: u32, len: u32, dir: Direction, cdb: &[u8]) -> [u8; CBW_LEN] {
    let mut w = [0u8; CBW_LEN];
    w[0..4].copy_from_slice(&CBW_SIGNATURE.to_le_bytes());
    w[4..8].copy_from_slice(&tag.to_le_bytes());
    w[8..12].copy_from_slice(&len.to_le_bytes());
    w[12] = if dir == Direction::In { 0x80 } else { 0 };
    w[13] = 0; // LUN
    let n = cdb.len().min(16);
    w[14] = n as u8;
    w[15..15 + n].copy_from_slice(&cdb[..n]);
    w
}

/// The outcome a device reported in its CSW.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CswStatus {
    Passed {
        residue: u32,
    },
    /// The command failed; REQUEST SENSE says why.
    Failed {
        residue: u32,
    },
    /// The device and host disagree about the transfer: a reset recovery is needed.
    PhaseError,
}

/// A malformed CSW.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CswError(pub String);

impl fmt::Display for CswError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad command status wrapper: {}", self.0)
    }
}

/// Checks a CSW against the CBW it answers (tag, `len` bytes expected).
pub fn parse_csw(b: &[u8], tag: u32, len: u32) -> Result<CswStatus, CswError> {
    if b.len() != CSW_LEN {
        return Err(CswError(format!("{} bytes instead of {CSW_LEN}", b.len())));
    }
    let word = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if word(0) != CSW_SIGNATURE {
        return Err(CswError(format!("signature {:#010x}", word(0))));
    }
    if word(4) != tag {
        return Err(CswError(format!("tag {} answers another command (expected {tag})", word(4))));
    }
    let residue = word(8);
    if residue > len {
        return Err(CswError(format!("residue {residue} exceeds the {len}-byte transfer")));
    }
    match b[12] {
        0 => Ok(CswStatus::Passed { residue }),
        1 => Ok(CswStatus::Failed { residue }),
        2 => Ok(CswStatus::PhaseError),
        s => Err(CswError(format!("unknown status {s}"))),
    }
}

/// READ(10)/WRITE(10), or the 16-byte forms when the LBA or count needs them.
pub fn read_write_cdb(write: bool, lba: u64, blocks: u32) -> ([u8; 16], usize) {
    let mut c = [0u8; 16];
    if lba <= u32::MAX as u64 && blocks <= u16::MAX as u32 {
        c[0] = if write { WRITE_10 } else { READ_10 };
        c[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
        c[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
        (c, 10)
    } else {
        c[0] = if write { WRITE_16 } else { READ_16 };
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        (c, 16)
    }
}

/// A disk's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub blocks: u64,
    pub block_size: u32,
}

/// Why a capacity answer cannot be used.
fn capacity(last_lba: u64, block_size: u32) -> Result<Capacity, String> {
    if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(format!("unsupported block size {block_size}"));
    }
    let blocks = last_lba.checked_add(1).ok_or_else(|| String::from("capacity overflows"))?;
    Ok(Capacity { blocks, block_size })
}

/// READ CAPACITY (10) data (SBC-3 5.16). `Ok(None)`: the disk is too large, ask READ CAPACITY (16).
pub fn parse_read_capacity_10(b: &[u8]) -> Result<Option<Capacity>, String> {
    if b.len() < 8 {
        return Err(format!("READ CAPACITY (10) answer of {} bytes", b.len()));
    }
    let last = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if last == u32::MAX {
        return Ok(None);
    }
    capacity(last as u64, u32::from_be_bytes([b[4], b[5], b[6], b[7]])).map(Some)
}

/// READ CAPACITY (16) data (SBC-3 5.17).
pub fn parse_read_capacity_16(b: &[u8]) -> Result<Capacity, String> {
    if b.len() < 12 {
        return Err(format!("READ CAPACITY (16) answer of {} bytes", b.len()));
    }
    let mut last = [0u8; 8];
    last.copy_from_slice(&b[0..8]);
    capacity(u64::from_be_bytes(last), u32::from_be_bytes([b[8], b[9], b[10], b[11]]))
}

/// Sense data, as far as an error message needs it (SPC-4 4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl Sense {
    /// Fixed or descriptor format sense data.
    pub fn parse(b: &[u8]) -> Option<Sense> {
        match b.first().map(|c| c & 0x7f)? {
            0x70 | 0x71 if b.len() >= 14 => Some(Sense { key: b[2] & 0x0f, asc: b[12], ascq: b[13] }),
            0x72 | 0x73 if b.len() >= 4 => Some(Sense { key: b[1] & 0x0f, asc: b[2], ascq: b[3] }),
            _ => None,
        }
    }

    /// UNIT ATTENTION or NOT READY, becoming ready: worth asking again.
    pub fn is_transient(&self) -> bool {
        self.key == 0x6 || (self.key == 0x2 && self.asc == 0x04 && self.ascq == 0x01)
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match self.key {
            0x0 => "no sense",
            0x1 => "recovered error",
            0x2 => "not ready",
            0x3 => "medium error",
            0x4 => "hardware error",
            0x5 => "illegal request",
            0x6 => "unit attention",
            0x7 => "data protect (write protected)",
            0xb => "aborted command",
            _ => "sense key",
        };
        write!(f, "{key} (key {:#x}, ASC {:#04x}, ASCQ {:#04x})", self.key, self.asc, self.ascq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cbw_layout() {
        let (cdb, n) = read_write_cdb(false, 0x1234_5678, 8);
        let w = cbw(7, 4096, Direction::In, &cdb[..n]);
        assert_eq!(&w[0..4], b"USBC");
        assert_eq!(u32::from_le_bytes([w[4], w[5], w[6], w[7]]), 7);
        assert_eq!(u32::from_le_bytes([w[8], w[9], w[10], w[11]]), 4096);
        assert_eq!((w[12], w[13], w[14]), (0x80, 0, 10));
        assert_eq!(&w[15..25], &[READ_10, 0, 0x12, 0x34, 0x56, 0x78, 0, 0, 8, 0]);
        assert_eq!(cbw(1, 0, Direction::Out, &[TEST_UNIT_READY; 6])[12], 0);
        let (big, n) = read_write_cdb(true, 1 << 33, 1);
        assert_eq!((big[0], n), (WRITE_16, 16));
        assert_eq!(&big[2..10], &(1u64 << 33).to_be_bytes());
    }

    #[test]
    fn csw_checks() {
        let mut c = [0u8; 13];
        c[0..4].copy_from_slice(b"USBS");
        c[4..8].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(parse_csw(&c, 9, 512), Ok(CswStatus::Passed { residue: 0 }));
        c[12] = 1;
        c[8..12].copy_from_slice(&12u32.to_le_bytes());
        assert_eq!(parse_csw(&c, 9, 512), Ok(CswStatus::Failed { residue: 12 }));
        c[12] = 2;
        assert_eq!(parse_csw(&c, 9, 512), Ok(CswStatus::PhaseError));
        assert!(parse_csw(&c, 9, 8).unwrap_err().0.contains("residue"));
        assert!(parse_csw(&c, 10, 512).unwrap_err().0.contains("tag"));
        c[12] = 7;
        assert!(parse_csw(&c, 9, 512).unwrap_err().0.contains("unknown status"));
        c[0] = b'X';
        assert!(parse_csw(&c, 9, 512).unwrap_err().0.contains("signature"));
        assert!(parse_csw(&c[..12], 9, 512).is_err());
    }

    #[test]
    fn capacities_and_sense() {
        let ten = [0, 0, 0x9f, 0xff, 0, 0, 2, 0];
        assert_eq!(parse_read_capacity_10(&ten), Ok(Some(Capacity { blocks: 0xa000, block_size: 512 })));
        assert_eq!(parse_read_capacity_10(&[0xff, 0xff, 0xff, 0xff, 0, 0, 2, 0]), Ok(None));
        assert!(parse_read_capacity_10(&[0, 0, 0, 1, 0, 0, 0, 3]).unwrap_err().contains("block size 3"));
        assert!(parse_read_capacity_10(&[0; 4]).is_err());
        let mut sixteen = [0u8; 32];
        sixteen[0..8].copy_from_slice(&((1u64 << 33) - 1).to_be_bytes());
        sixteen[8..12].copy_from_slice(&4096u32.to_be_bytes());
        assert_eq!(parse_read_capacity_16(&sixteen), Ok(Capacity { blocks: 1 << 33, block_size: 4096 }));
        sixteen[0..8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(parse_read_capacity_16(&sixteen).is_err());

        let mut fixed = [0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x06;
        fixed[12] = 0x28;
        let s = Sense::parse(&fixed).unwrap();
        assert_eq!(s, Sense { key: 6, asc: 0x28, ascq: 0 });
        assert!(s.is_transient());
        assert_eq!(
            Sense::parse(&[0x72, 0x07, 0x27, 0x00]).unwrap().to_string(),
            "data protect (write protected) (key 0x7, ASC 0x27, ASCQ 0x00)"
        );
        assert_eq!(Sense::parse(&[0x70, 0, 0]), None);
        assert_eq!(Sense::parse(&[]), None);
    }
}
