//! ACPI system description table helpers (ACPI 6.5 section 5.2).

/// Signature and length of an SDT header, after checking the checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdtInfo {
    pub signature: [u8; 4],
    pub length: u32,
}

/// What is wrong with a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdtError {
    /// Fewer than 36 bytes, or fewer than the header's length field.
    Short,
    /// The bytes do not sum to zero.
    Checksum,
}

/// Length field of an SDT whose first 36 bytes are `header`.
pub fn sdt_length(header: &[u8]) -> Option<u32> {
    header.get(4..8).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Validates a whole table (`bytes` must be exactly the length its header gives).
pub fn validate_sdt(bytes: &[u8]) -> Result<SdtInfo, SdtError> {
    let length = sdt_length(bytes).ok_or(SdtError::Short)?;
    if bytes.len() < 36 || (length as usize) != bytes.len() {
        return Err(SdtError::Short);
    }
    if bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) != 0 {
        return Err(SdtError::Checksum);
    }
    Ok(SdtInfo { signature: [bytes[0], bytes[1], bytes[2], bytes[3]], length })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(sig: &[u8; 4], body: &[u8]) -> alloc::vec::Vec<u8> {
        let mut t = alloc::vec![0u8; 36];
        t[..4].copy_from_slice(sig);
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[9] = 0u8.wrapping_sub(sum);
        t
    }

    #[test]
    fn valid_table() {
        let t = table(b"iBFT", &[1, 2, 3]);
        assert_eq!(validate_sdt(&t), Ok(SdtInfo { signature: *b"iBFT", length: 39 }));
    }

    #[test]
    fn corrupt_tables() {
        let mut t = table(b"APIC", &[9; 10]);
        t[40] ^= 1;
        assert_eq!(validate_sdt(&t), Err(SdtError::Checksum));
        assert_eq!(validate_sdt(&t[..20]), Err(SdtError::Short));
        let t = table(b"APIC", &[9; 10]);
        assert_eq!(validate_sdt(&t[..40]), Err(SdtError::Short));
    }
}
