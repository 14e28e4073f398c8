//! x86_64 platform code. Each module owns one piece of hardware state; `unsafe` is confined here and
//! every block carries a `SAFETY:` comment.
pub mod apic;
pub mod cpu;
pub mod dma;
pub mod gdt;
pub mod guest_ram;
pub mod heap;
pub mod hypervisor;
pub mod idt;
pub mod mmio;
pub mod paging;
pub mod port;
pub mod power;
pub mod serial;
pub mod smp;
pub mod stack;
pub mod svm;
pub mod timer;
