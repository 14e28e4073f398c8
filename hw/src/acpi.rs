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

/// What the MADT (ACPI 6.5 5.2.12) says about processors and interrupt controllers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MadtSummary {
    /// Local APIC physical address (the override entry wins over the header field).
    pub local_apic_address: u64,
    /// Processors as (APIC ID, enabled at boot). Entries that are only "online capable" are hot-plug
    /// slots and are listed as not enabled.
    pub cpus: alloc::vec::Vec<(u32, bool)>,
    /// I/O APICs as (id, address, GSI base).
    pub io_apics: alloc::vec::Vec<(u8, u32, u32)>,
}

/// What is wrong with a MADT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MadtError {
    /// The table is not a valid SDT.
    Table(SdtError),
    /// The signature is not "APIC".
    NotMadt,
    /// An entry at `offset` has a length below 2, past the table end, or below its type's size.
    BadEntry { offset: usize, kind: u8, length: u8 },
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes a whole MADT, checking every entry length, so a corrupt table gives an error instead of a
/// loop or a read past its end.
pub fn parse_madt(table: &[u8]) -> Result<MadtSummary, MadtError> {
    let info = validate_sdt(table).map_err(MadtError::Table)?;
    if &info.signature != b"APIC" || table.len() < 44 {
        return Err(MadtError::NotMadt);
    }
    let mut out = MadtSummary { local_apic_address: le32(table, 36) as u64, ..Default::default() };
    let mut off = 44;
    while off < table.len() {
        let kind = table[off];
        let length = *table.get(off + 1).ok_or(MadtError::BadEntry { offset: off, kind, length: 0 })?;
        let bad = MadtError::BadEntry { offset: off, kind, length };
        let min = match kind {
            0 => 8,  // processor local APIC
            1 => 12, // I/O APIC
            5 => 12, // local APIC address override
            9 => 16, // processor local x2APIC
            _ => 2,
        };
        if (length as usize) < min || off + length as usize > table.len() {
            return Err(bad);
        }
        let e = &table[off..off + length as usize];
        match kind {
            0 => out.cpus.push((e[3] as u32, le32(e, 4) & 1 != 0)),
            1 => out.io_apics.push((e[2], le32(e, 4), le32(e, 8))),
            5 => out.local_apic_address = u64::from_le_bytes(e[4..12].try_into().unwrap_or([0; 8])),
            9 => out.cpus.push((le32(e, 4), le32(e, 8) & 1 != 0)),
            _ => {}
        }
        off += length as usize;
    }
    Ok(out)
}

/// SLP_TYPa and SLP_TYPb for the S5 (soft off) state, from `Name(_S5_, Package() {a, b, ...})` in
/// the DSDT's AML (ACPI 6.5 7.4.2, 20.2.5). A bounded scan of the bytes, not an AML interpreter: it
/// takes the first `_S5_` name whose package holds two integer constants.
pub fn s5_sleep_types(aml: &[u8]) -> Option<(u8, u8)> {
    const NAME_OP: u8 = 0x08;
    const PACKAGE_OP: u8 = 0x12;
    let integer = |b: &[u8]| -> Option<(u8, usize)> {
        match *b.first()? {
            0x00 => Some((0, 1)),
            0x01 => Some((1, 1)),
            0x0a => Some((*b.get(1)?, 2)), // BytePrefix
            0x0b => Some((*b.get(1)?, 3)), // WordPrefix (low byte)
            0x0c => Some((*b.get(1)?, 5)), // DWordPrefix (low byte)
            _ => None,
        }
    };
    let mut from = 0;
    while let Some(pos) = aml.get(from..)?.windows(4).position(|w| w == b"_S5_") {
        let at = from + pos;
        from = at + 4;
        let named = at >= 1
            && (aml[at - 1] == NAME_OP || (at >= 2 && aml[at - 1] == b'\\' && aml[at - 2] == NAME_OP));
        if !named || aml.get(at + 4) != Some(&PACKAGE_OP) {
            continue;
        }
        let Some(&lead) = aml.get(at + 5) else { continue };
        // PkgLength: bits 6-7 of the lead byte count the bytes that follow it.
        let mut i = at + 5 + 1 + (lead >> 6) as usize + 1; // past PkgLength and NumElements
        let Some((a, n)) = aml.get(i..).and_then(integer) else { continue };
        i += n;
        let Some((b, _)) = aml.get(i..).and_then(integer) else { continue };
        return Some((a & 7, b & 7));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_from_qemu_and_intel_style_aml() {
        // QEMU: Name (_S5, Package (0x04) { Zero, Zero, Zero, Zero })
        let qemu = [0x10, 0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(s5_sleep_types(&qemu), Some((0, 0)));
        // Name (\_S5, Package () { 0x07, 0x07, Zero, Zero }) behind a decoy string mentioning _S5_.
        let mut intel = b"xx_S5_yy".to_vec();
        intel.extend_from_slice(&[
            0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x0a, 0x04, 0x0a, 0x07, 0x0a, 0x07, 0x00, 0x00,
        ]);
        assert_eq!(s5_sleep_types(&intel), Some((7, 7)));
        // Two-byte PkgLength and word constants.
        let long = [0x08, b'_', b'S', b'5', b'_', 0x12, 0x40, 0x01, 0x02, 0x0b, 0x05, 0x00, 0x0b, 0x05, 0x00];
        assert_eq!(s5_sleep_types(&long), Some((5, 5)));
        assert_eq!(s5_sleep_types(b"no sleep states here"), None);
        for n in 0..qemu.len() {
            let _ = s5_sleep_types(&qemu[..n]);
        }
        assert_eq!(s5_sleep_types(&qemu[..9]), None);
    }

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

    fn madt(entries: &[&[u8]]) -> alloc::vec::Vec<u8> {
        let mut body = alloc::vec::Vec::new();
        body.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
        for e in entries {
            body.extend_from_slice(e);
        }
        table(b"APIC", &body)
    }

    /// The shape of QEMU q35's MADT with two CPUs, an I/O APIC and an override.
    #[test]
    fn madt_cpus_and_ioapic() {
        let t = madt(&[
            &[0, 8, 0, 0, 1, 0, 0, 0],
            &[0, 8, 1, 1, 1, 0, 0, 0],
            &[0, 8, 2, 2, 2, 0, 0, 0], // online capable only: a hot-plug slot
            &[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0],
            &[2, 10, 0, 0, 2, 0, 0, 0, 0, 0], // interrupt source override: skipped
            &[9, 16, 0, 0, 0x00, 0x01, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0],
        ]);
        let m = parse_madt(&t).unwrap();
        assert_eq!(m.local_apic_address, 0xfee0_0000);
        assert_eq!(m.cpus, alloc::vec![(0, true), (1, true), (2, false), (256, true)]);
        assert_eq!(m.io_apics, alloc::vec![(0, 0xfec0_0000, 0)]);
        let t = madt(&[&[5, 12, 0, 0, 0, 0, 0xe0, 0xfe, 0, 0, 0, 0]]);
        assert_eq!(parse_madt(&t).unwrap().local_apic_address, 0xfee0_0000);
    }

    #[test]
    fn madt_bad_entries() {
        assert_eq!(
            parse_madt(&madt(&[&[0, 8, 0, 0, 1, 0, 0, 0], &[0, 0]])),
            Err(MadtError::BadEntry { offset: 52, kind: 0, length: 0 }),
            "a zero-length entry would loop forever"
        );
        assert_eq!(
            parse_madt(&madt(&[&[0, 200, 0, 0]])),
            Err(MadtError::BadEntry { offset: 44, kind: 0, length: 200 })
        );
        assert_eq!(
            parse_madt(&madt(&[&[9, 8, 0, 0, 0, 0, 0, 0]])),
            Err(MadtError::BadEntry { offset: 44, kind: 9, length: 8 }),
            "an x2APIC entry must be 16 bytes"
        );
        assert_eq!(parse_madt(&table(b"FACP", &[0; 8])), Err(MadtError::NotMadt));
        let mut t = madt(&[]);
        t[40] ^= 1;
        assert_eq!(parse_madt(&t), Err(MadtError::Table(SdtError::Checksum)));
        // Every truncation and every single-byte corruption gives a value, never a panic.
        let t = madt(&[&[0, 8, 0, 0, 1, 0, 0, 0], &[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]]);
        for cut in 0..t.len() {
            let _ = parse_madt(&t[..cut]);
        }
        for i in 36..t.len() {
            for v in [0u8, 1, 2, 0xff] {
                let mut c = t.clone();
                c[i] = v;
                let sum = c.iter().fold(0u8, |a, b| a.wrapping_add(*b));
                c[9] = c[9].wrapping_sub(sum);
                let _ = parse_madt(&c);
            }
        }
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
