//! Per-CPU GDT and TSS. The TSS provides IST stacks so a double fault (for example a kernel stack
//! overflow) and an NMI still get a clean report.

use alloc::boxed::Box;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST index (1-based in the IDT, 0-based in the TSS array) used for #DF.
pub const DOUBLE_FAULT_IST: u16 = 1;
/// IST index used for NMI and #MC.
pub const NMI_IST: u16 = 2;
const IST_STACK_BYTES: usize = 16 * 1024;

/// Kernel code segment selector.
pub const KERNEL_CS: u16 = 0x08;

/// Builds and loads a GDT and TSS for the calling CPU. Called once per CPU; the tables live forever.
pub fn init_this_cpu() {
    let mut tss = TaskStateSegment::new();
    for ist in [DOUBLE_FAULT_IST, NMI_IST] {
        let stack: &'static mut [u8] = Box::leak(alloc::vec![0u8; IST_STACK_BYTES].into_boxed_slice());
        let top = (stack.as_ptr() as u64 + IST_STACK_BYTES as u64) & !0xf;
        tss.interrupt_stack_table[(ist - 1) as usize] = VirtAddr::new(top);
    }
    let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));
    let gdt: &'static mut GlobalDescriptorTable = Box::leak(Box::new(GlobalDescriptorTable::new()));
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_sel = gdt.append(Descriptor::tss_segment(tss));
    debug_assert_eq!(code.0, KERNEL_CS);
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, which lives forever; the code segment is a
    // 64-bit ring-0 segment so execution continues unchanged, and the TSS descriptor is fresh (not busy).
    unsafe {
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        load_tss(tss_sel);
    }
}
