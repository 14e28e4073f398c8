//! CPU exception reports (Intel SDM vol. 3A table 6-1, AMD APM vol. 2 table 8-1).
//!
//! The platform's interrupt entry saves the registers into a [`TrapFrame`] and, for a fatal
//! exception, asks [`write_report`] for the text it prints on every console.

use core::fmt::{self, Write};

/// Registers saved by the interrupt entry stub, lowest address first (the layout the stub pushes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Mnemonic and name of an exception vector.
pub fn exception_name(vector: u64) -> (&'static str, &'static str) {
    match vector {
        0 => ("#DE", "Divide Error"),
        1 => ("#DB", "Debug"),
        2 => ("NMI", "Non-Maskable Interrupt"),
        3 => ("#BP", "Breakpoint"),
        4 => ("#OF", "Overflow"),
        5 => ("#BR", "BOUND Range Exceeded"),
        6 => ("#UD", "Invalid Opcode"),
        7 => ("#NM", "Device Not Available"),
        8 => ("#DF", "Double Fault"),
        10 => ("#TS", "Invalid TSS"),
        11 => ("#NP", "Segment Not Present"),
        12 => ("#SS", "Stack-Segment Fault"),
        13 => ("#GP", "General Protection"),
        14 => ("#PF", "Page Fault"),
        16 => ("#MF", "x87 Floating-Point Error"),
        17 => ("#AC", "Alignment Check"),
        18 => ("#MC", "Machine Check"),
        19 => ("#XM", "SIMD Floating-Point"),
        20 => ("#VE", "Virtualization Exception"),
        21 => ("#CP", "Control Protection"),
        28 => ("#HV", "Hypervisor Injection"),
        29 => ("#VC", "VMM Communication"),
        30 => ("#SX", "Security Exception"),
        _ => ("#??", "Reserved"),
    }
}

/// Decodes a page-fault error code (bit 0 present, 1 write, 2 user, 3 reserved bit, 4 fetch).
pub fn page_fault_cause(code: u64) -> PageFaultCause {
    PageFaultCause(code)
}

/// Display helper for a page-fault error code.
pub struct PageFaultCause(u64);

impl fmt::Display for PageFaultCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        write!(
            f,
            "{} {} in {} mode",
            if c & 1 != 0 { "protection violation" } else { "page not present" },
            if c & 16 != 0 {
                "on instruction fetch"
            } else if c & 2 != 0 {
                "on write"
            } else {
                "on read"
            },
            if c & 4 != 0 { "user" } else { "kernel" }
        )?;
        if c & 8 != 0 {
            write!(f, ", reserved bit set")?;
        }
        Ok(())
    }
}

/// Everything a report shows besides the frame.
pub struct ReportContext<'a> {
    pub cpu: u32,
    pub cr2: u64,
    pub cr3: u64,
    /// Words at the faulting RSP, if the stack is readable.
    pub stack: &'a [u64],
}

/// Writes the human-readable report of a fatal exception.
pub fn write_report(out: &mut dyn Write, f: &TrapFrame, ctx: &ReportContext<'_>) -> fmt::Result {
    let (mnemonic, name) = exception_name(f.vector);
    writeln!(out, "*** CPU EXCEPTION on CPU {}: {mnemonic} {name} (vector {})", ctx.cpu, f.vector)?;
    write!(out, "error code {:#x}", f.error_code)?;
    if f.vector == 14 {
        write!(out, " ({})", page_fault_cause(f.error_code))?;
    }
    writeln!(out)?;
    writeln!(out, "RIP {:#018x}  CS {:#06x}  RFLAGS {:#010x}", f.rip, f.cs, f.rflags)?;
    writeln!(out, "RSP {:#018x}  SS {:#06x}", f.rsp, f.ss)?;
    writeln!(out, "CR2 {:#018x}  CR3 {:#018x}", ctx.cr2, ctx.cr3)?;
    let regs = [
        ("RAX", f.rax),
        ("RBX", f.rbx),
        ("RCX", f.rcx),
        ("RDX", f.rdx),
        ("RSI", f.rsi),
        ("RDI", f.rdi),
        ("RBP", f.rbp),
        ("R8 ", f.r8),
        ("R9 ", f.r9),
        ("R10", f.r10),
        ("R11", f.r11),
        ("R12", f.r12),
        ("R13", f.r13),
        ("R14", f.r14),
        ("R15", f.r15),
    ];
    for row in regs.chunks(3) {
        for (i, (n, v)) in row.iter().enumerate() {
            if i > 0 {
                write!(out, "  ")?;
            }
            write!(out, "{n} {v:#018x}")?;
        }
        writeln!(out)?;
    }
    if ctx.stack.is_empty() {
        writeln!(out, "stack: not readable")?;
    } else {
        writeln!(out, "stack:")?;
        for (i, pair) in ctx.stack.chunks(2).enumerate() {
            write!(out, "  [rsp+{:#05x}]", i * 16)?;
            for w in pair {
                write!(out, " {w:#018x}")?;
            }
            writeln!(out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    #[test]
    fn page_fault_report() {
        let f =
            TrapFrame { vector: 14, error_code: 0, rip: 0x1234, cs: 8, rsp: 0x8000, ..Default::default() };
        let mut s = String::new();
        write_report(&mut s, &f, &ReportContext { cpu: 0, cr2: 0xdead_0000, cr3: 0x1000, stack: &[1, 2, 3] })
            .unwrap();
        assert!(s.starts_with("*** CPU EXCEPTION on CPU 0: #PF Page Fault (vector 14)\n"), "{s}");
        assert!(s.contains("error code 0x0 (page not present on read in kernel mode)"));
        assert!(s.contains("RIP 0x0000000000001234"));
        assert!(s.contains("CR2 0x00000000dead0000"));
        assert!(s.contains("[rsp+0x000] 0x0000000000000001 0x0000000000000002"));
        assert!(s.contains("[rsp+0x010] 0x0000000000000003"));
    }

    #[test]
    fn names_and_causes() {
        assert_eq!(exception_name(0), ("#DE", "Divide Error"));
        assert_eq!(exception_name(13).0, "#GP");
        assert_eq!(exception_name(15).1, "Reserved");
        assert_eq!(
            page_fault_cause(0b10111).to_string(),
            "protection violation on instruction fetch in user mode"
        );
        assert_eq!(
            page_fault_cause(0b1010).to_string(),
            "page not present on write in kernel mode, reserved bit set"
        );
    }

    #[test]
    fn unreadable_stack_is_said() {
        let mut s = String::new();
        write_report(&mut s, &TrapFrame::default(), &ReportContext { cpu: 3, cr2: 0, cr3: 0, stack: &[] })
            .unwrap();
        assert!(s.contains("stack: not readable"));
        assert!(s.contains("on CPU 3: #DE"));
    }
}
