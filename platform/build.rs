//! Generates the 256 interrupt entry stubs.
use std::fmt::Write;

fn main() {
    let out = std::env::var("OUT_DIR").unwrap();
    // Vectors for which the CPU pushes an error code (Intel SDM vol. 3 6.3.1, AMD APM vol. 2 8.2).
    let has_error = |v: u32| matches!(v, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30);
    let mut s = String::new();
    s.push_str(".section .text\n.global ember_isr_stubs\n.balign 16\nember_isr_stubs:\n");
    for v in 0..256u32 {
        // Every stub is exactly 16 bytes apart, so stub N is at ember_isr_stubs + 16 * N and the IDT can
        // be filled without a table of absolute addresses.
        writeln!(s, ".balign 16").unwrap();
        if !has_error(v) {
            writeln!(s, "    push 0").unwrap();
        }
        writeln!(s, "    push {v}").unwrap();
        writeln!(s, "    jmp ember_isr_common").unwrap();
    }
    std::fs::write(format!("{out}/isr_stubs.s"), s).unwrap();
    println!("cargo:rerun-if-changed=build.rs");
}
