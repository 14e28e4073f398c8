//! Switching from the firmware's stack to the kernel stack.

use crate::boot::BootInfo;

/// Continues in `entry(info)` on the stack whose top is `top`. The firmware stack (boot-services
/// memory, soon reused by the frame allocator) is abandoned.
pub fn switch_to(
    top: u64,
    entry: extern "sysv64" fn(&'static mut BootInfo) -> !,
    info: &'static mut BootInfo,
) -> ! {
    assert!(top.is_multiple_of(16), "kernel stack top must be 16-byte aligned");
    // SAFETY: `top` is the end of a LOADER_DATA allocation reserved for this stack; nothing on the old
    // stack is referenced afterwards (`info` is a leaked heap object). The call leaves RSP 16-byte
    // aligned minus the return address, as the SysV ABI expects at function entry.
    unsafe {
        core::arch::asm!(
            "mov rsp, {top}",
            "xor ebp, ebp",
            "call {entry}",
            "ud2",
            top = in(reg) top,
            entry = in(reg) entry,
            in("rdi") info,
            options(noreturn)
        )
    }
}
