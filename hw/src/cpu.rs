//! CPUID decoding (Intel SDM vol. 2A "CPUID", AMD APM vol. 3 appendix E).

use alloc::string::String;

/// Builds the processor brand string from the twelve registers of leaves 0x80000002..=0x80000004
/// (EAX, EBX, ECX, EDX of each), trimming padding. Returns `None` if it is empty.
pub fn brand_string(regs: &[u32; 12]) -> Option<String> {
    let mut bytes = [0u8; 48];
    for (i, r) in regs.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
    }
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(48);
    let s: String = bytes[..end]
        .iter()
        .map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '?' })
        .collect();
    let mut out = String::new();
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs_of(s: &str) -> [u32; 12] {
        let mut b = [0u8; 48];
        b[..s.len()].copy_from_slice(s.as_bytes());
        let mut r = [0u32; 12];
        for i in 0..12 {
            r[i] = u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        }
        r
    }

    #[test]
    fn brand_is_trimmed() {
        assert_eq!(brand_string(&regs_of("AMD EPYC Processor")).as_deref(), Some("AMD EPYC Processor"));
        assert_eq!(
            brand_string(&regs_of("      Intel(R) Xeon(R)  CPU E5-2680 v4 @ 2.40GHz")).as_deref(),
            Some("Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz")
        );
        assert_eq!(brand_string(&[0; 12]), None);
    }
}
