//! Decoding the instruction behind an MMIO access. Under QEMU TCG (and on CPUs without decode
//! assists) a nested page fault on an MMIO page says only the address: the hypervisor reads the
//! faulting instruction from guest memory, decodes it here with `iced-x86` (a complete, well-tested
//! x86 decoder; `no_std`, decoder only), emulates the access, and advances RIP by its length.
//!
//! The forms Linux's MMIO accessors compile to are handled: `MOV` between a register and memory,
//! `MOV` of an immediate to memory, and `MOVZX`/`MOVSX` loads. Anything else touching MMIO is an
//! [`DecodeError::Unsupported`] access that ends the VM with its name in the log.

use iced_x86::{Decoder, DecoderError, DecoderOptions, MemorySize, Mnemonic, OpKind, Register};

/// A general-purpose register operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpr {
    /// 0 = RAX ... 15 = R15 (the ModRM/REX numbering).
    pub index: u8,
    /// Operand width in bytes: 1, 2, 4 or 8.
    pub width: u8,
    /// AH, CH, DH, BH: bits 8-15 of registers 0-3.
    pub high8: bool,
}

/// How a loaded value is widened into its register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extend {
    None,
    Zero,
    Sign,
}

/// What is written to memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Register(Gpr),
    Immediate(u64),
}

/// The memory access an instruction makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Load `size` bytes into `dest`.
    Read { size: u8, dest: Gpr, extend: Extend },
    /// Store the low `size` bytes of `value`.
    Write { size: u8, value: Source },
}

/// A decoded MMIO instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioInstruction {
    /// Bytes to advance RIP by.
    pub len: u8,
    pub access: Access,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end inside the instruction (fetch the rest from the next page).
    Truncated,
    /// Not a valid instruction in 64-bit mode.
    Invalid,
    /// A valid instruction this emulator does not perform on MMIO.
    Unsupported(&'static str),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "the instruction runs past the bytes fetched"),
            DecodeError::Invalid => write!(f, "not a valid 64-bit instruction"),
            DecodeError::Unsupported(what) => write!(f, "{what} on MMIO is not emulated"),
        }
    }
}

/// The general-purpose register `r` names, from iced's register numbering (8-bit AL, CL, DL, BL,
/// AH, CH, DH, BH, SPL, BPL, SIL, DIL, R8L-R15L; then the 16-, 32- and 64-bit registers, each in
/// RAX-R15 order).
fn gpr(r: Register) -> Option<Gpr> {
    let n = r as u32;
    let from = |base: Register, count: u32| n.checked_sub(base as u32).filter(|i| *i < count);
    if let Some(i) = from(Register::AL, 20) {
        let (index, high8) = match i {
            0..=3 => (i, false),
            4..=7 => (i.wrapping_sub(4), true),
            _ => (i.wrapping_sub(4), false),
        };
        return Some(Gpr { index: index as u8, width: 1, high8 });
    }
    [(Register::AX, 2), (Register::EAX, 4), (Register::RAX, 8)]
        .iter()
        .find_map(|&(base, width)| from(base, 16).map(|i| Gpr { index: i as u8, width, high8: false }))
}

fn unsupported(m: Mnemonic) -> DecodeError {
    DecodeError::Unsupported(match m {
        Mnemonic::Add | Mnemonic::Sub | Mnemonic::And | Mnemonic::Or | Mnemonic::Xor => "arithmetic",
        Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd | Mnemonic::Movsq => "a string instruction",
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq => "a string instruction",
        Mnemonic::Cmp | Mnemonic::Test => "a compare",
        Mnemonic::Xchg | Mnemonic::Cmpxchg | Mnemonic::Xadd => "an atomic exchange",
        _ => "this instruction",
    })
}

/// Decodes the instruction at the start of `bytes` (at most 15 are looked at) in 64-bit mode.
pub fn decode_mmio(bytes: &[u8]) -> Result<MmioInstruction, DecodeError> {
    let bytes = bytes.get(..bytes.len().min(15)).unwrap_or_default();
    let mut d = Decoder::new(64, bytes, DecoderOptions::NONE);
    let i = d.decode();
    match d.last_error() {
        DecoderError::None => {}
        DecoderError::NoMoreBytes => return Err(DecodeError::Truncated),
        _ => return Err(DecodeError::Invalid),
    }
    let len = i.len() as u8;
    let mem_size = match i.memory_size() {
        MemorySize::UInt8 | MemorySize::Int8 => 1,
        MemorySize::UInt16 | MemorySize::Int16 => 2,
        MemorySize::UInt32 | MemorySize::Int32 => 4,
        MemorySize::UInt64 | MemorySize::Int64 => 8,
        _ => 0,
    };
    let access = match (i.mnemonic(), i.op_count()) {
        (Mnemonic::Mov, 2) => match (i.op0_kind(), i.op1_kind()) {
            (OpKind::Memory, OpKind::Register) => {
                let r = gpr(i.op1_register()).ok_or(DecodeError::Unsupported("a non-integer register"))?;
                Access::Write { size: r.width, value: Source::Register(r) }
            }
            (
                OpKind::Memory,
                OpKind::Immediate8 | OpKind::Immediate16 | OpKind::Immediate32 | OpKind::Immediate32to64,
            ) => Access::Write { size: mem_size, value: Source::Immediate(i.immediate(1)) },
            (OpKind::Register, OpKind::Memory) => {
                let r = gpr(i.op0_register()).ok_or(DecodeError::Unsupported("a non-integer register"))?;
                Access::Read { size: r.width, dest: r, extend: Extend::None }
            }
            _ => return Err(unsupported(Mnemonic::Mov)),
        },
        (m @ (Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd), 2)
            if i.op0_kind() == OpKind::Register && i.op1_kind() == OpKind::Memory =>
        {
            let r = gpr(i.op0_register()).ok_or(DecodeError::Unsupported("a non-integer register"))?;
            let extend = if m == Mnemonic::Movzx { Extend::Zero } else { Extend::Sign };
            if mem_size == 0 {
                return Err(DecodeError::Unsupported("this operand size"));
            }
            Access::Read { size: mem_size, dest: r, extend }
        }
        (m, _) => return Err(unsupported(m)),
    };
    Ok(MmioInstruction { len, access })
}

/// The operand `r` names, from the value of its 64-bit register.
pub fn operand_of(register: u64, r: Gpr) -> u64 {
    match (r.width, r.high8) {
        (1, true) => (register >> 8) & 0xff,
        (1, false) => register & 0xff,
        (2, _) => register & 0xffff,
        (4, _) => register & 0xffff_ffff,
        _ => register,
    }
}

/// The 64-bit register `dest` is part of, after a loaded `size`-byte `value` is put into it the
/// way the CPU does: widened per `extend`, a 32-bit destination clears bits 32-63, 8- and 16-bit
/// destinations keep the other bits.
pub fn loaded_into(old: u64, dest: Gpr, size: u8, extend: Extend, value: u64) -> u64 {
    // 8 to 64: the shifts and subtractions below stay in range.
    let bits = u32::from(size.clamp(1, 8)).wrapping_mul(8);
    let mask = u64::MAX.checked_shr(64u32.wrapping_sub(bits)).unwrap_or(u64::MAX);
    let value = value & mask;
    let sign = value.checked_shr(bits.wrapping_sub(1)).unwrap_or(0) & 1 == 1;
    let value = match extend {
        Extend::Sign if bits < 64 && sign => value | !mask,
        _ => value,
    };
    match (dest.width, dest.high8) {
        (1, true) => (old & !0xff00) | ((value & 0xff) << 8),
        (1, false) => (old & !0xff) | (value & 0xff),
        (2, _) => (old & !0xffff) | (value & 0xffff),
        (4, _) => value & 0xffff_ffff,
        _ => value,
    }
}

/// The value of register `r` (its operand width) from the 16 general-purpose registers.
pub fn read_gpr(regs: &[u64; 16], r: Gpr) -> u64 {
    operand_of(regs.get(usize::from(r.index)).copied().unwrap_or(0), r)
}

/// [`loaded_into`] on the 16 general-purpose registers.
pub fn write_gpr(regs: &mut [u64; 16], dest: Gpr, size: u8, extend: Extend, value: u64) {
    if let Some(reg) = regs.get_mut(usize::from(dest.index)) {
        *reg = loaded_into(*reg, dest, size, extend, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAX: u8 = 0;
    const RCX: u8 = 1;

    fn r(index: u8, width: u8) -> Gpr {
        Gpr { index, width, high8: false }
    }

    #[test]
    fn the_mmio_forms() {
        let cases: &[(&[u8], u8, Access)] = &[
            // mov dword [rax], ecx
            (&[0x89, 0x08], 2, Access::Write { size: 4, value: Source::Register(r(RCX, 4)) }),
            // mov eax, [rdi+0x10]
            (&[0x8b, 0x47, 0x10], 3, Access::Read { size: 4, dest: r(RAX, 4), extend: Extend::None }),
            // mov byte [rbx], 0x5a
            (&[0xc6, 0x03, 0x5a], 3, Access::Write { size: 1, value: Source::Immediate(0x5a) }),
            // mov qword [rdx], r9
            (&[0x4c, 0x89, 0x0a], 3, Access::Write { size: 8, value: Source::Register(r(9, 8)) }),
            // mov dword [rip+0x100], 7
            (
                &[0xc7, 0x05, 0, 1, 0, 0, 7, 0, 0, 0],
                10,
                Access::Write { size: 4, value: Source::Immediate(7) },
            ),
            // movzx eax, word [rsi]
            (&[0x0f, 0xb7, 0x06], 3, Access::Read { size: 2, dest: r(RAX, 4), extend: Extend::Zero }),
            // movsx rax, word [rsi]
            (&[0x48, 0x0f, 0xbf, 0x06], 4, Access::Read { size: 2, dest: r(RAX, 8), extend: Extend::Sign }),
            // mov ah, [rcx]
            (
                &[0x8a, 0x21],
                2,
                Access::Read { size: 1, dest: Gpr { index: 0, width: 1, high8: true }, extend: Extend::None },
            ),
            // mov word [r8], ax (operand-size prefix)
            (&[0x66, 0x41, 0x89, 0x00], 4, Access::Write { size: 2, value: Source::Register(r(RAX, 2)) }),
        ];
        for (bytes, len, access) in cases {
            // Trailing bytes of the next instruction do not matter.
            let mut b = bytes.to_vec();
            b.extend([0x90; 8]);
            assert_eq!(decode_mmio(&b), Ok(MmioInstruction { len: *len, access: *access }), "{bytes:02x?}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(decode_mmio(&[0x01, 0x08]), Err(DecodeError::Unsupported("arithmetic")));
        assert_eq!(decode_mmio(&[0xf3, 0xa5]), Err(DecodeError::Unsupported("a string instruction")));
        assert_eq!(decode_mmio(&[0x87, 0x08]), Err(DecodeError::Unsupported("an atomic exchange")));
        assert_eq!(decode_mmio(&[0x8b]), Err(DecodeError::Truncated));
        assert_eq!(decode_mmio(&[0xc7, 0x05, 0, 1]), Err(DecodeError::Truncated));
        assert_eq!(decode_mmio(&[]), Err(DecodeError::Truncated));
        assert_eq!(
            decode_mmio(&[0x06, 0x90, 0x90]),
            Err(DecodeError::Invalid),
            "push es is invalid in 64-bit mode"
        );
        // mov rax, cr0: registers only.
        assert!(decode_mmio(&[0x0f, 0x20, 0xc0]).is_err());
        // Every byte pattern of a few lengths: an answer, never a panic.
        for a in 0..=255u8 {
            for b in [0u8, 0x05, 0x44, 0x80, 0xff] {
                let _ = decode_mmio(&[a, b, 0x10, 0x20, 0x30]);
                let _ = decode_mmio(&[0x66, 0x67, 0xf0, a, b]);
            }
        }
    }

    #[test]
    fn loads_into_registers_like_the_cpu() {
        let mut regs = [u64::MAX; 16];
        write_gpr(&mut regs, r(RAX, 4), 4, Extend::None, 0x1234);
        assert_eq!(regs[0], 0x1234, "32-bit loads clear the upper half");
        write_gpr(&mut regs, r(RCX, 2), 2, Extend::None, 0xabcd);
        assert_eq!(regs[1], 0xffff_ffff_ffff_abcd, "16-bit loads keep the rest");
        write_gpr(&mut regs, Gpr { index: 0, width: 1, high8: true }, 1, Extend::None, 0x99);
        assert_eq!(regs[0], 0x9934);
        write_gpr(&mut regs, r(2, 8), 2, Extend::Sign, 0x8000);
        assert_eq!(regs[2], 0xffff_ffff_ffff_8000);
        write_gpr(&mut regs, r(3, 4), 1, Extend::Zero, 0x1ff);
        assert_eq!(regs[3], 0xff);
        assert_eq!(read_gpr(&regs, Gpr { index: 0, width: 1, high8: true }), 0x99);
        assert_eq!(read_gpr(&regs, r(1, 4)), 0xffff_abcd);
    }
}
