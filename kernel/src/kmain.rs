//! Kernel-phase wiring: what runs after ExitBootServices, in order.

use crate::arch::x86_64::{apic, cpu, gdt, idt, paging, power, smp, timer};
use crate::boot::BootInfo;
use crate::console;
use crate::firmware::{acpi, pcie};
use alloc::string::String;
use ember_kernel::dcui::idle::{HostIdentity, ManagementAddress};
use ember_kernel::mm::{self, frames::FrameAllocator};
use ember_storage::bootcfg::SelfTest;

/// Entry of the kernel phase, on the kernel stack, boot services gone.
pub extern "sysv64" fn kernel_main(info: &'static mut BootInfo) -> ! {
    gdt::init_this_cpu();
    idt::init();
    kprintln!("ember: GDT, IDT and exception handlers installed");

    let usable = mm::usable_bytes(&info.memory_map);
    let mut frames = FrameAllocator::from_map(&info.memory_map);
    kprintln!(
        "ember: memory map: {} regions, {} MiB usable, {} MiB free for allocation",
        info.memory_map.len(),
        usable >> 20,
        frames.free_bytes() >> 20
    );

    let mut limit = mm::top_of_ram(&info.memory_map).max(1 << 32);
    if let Some(fb) = &info.framebuffer {
        limit = limit.max(fb.base + fb.size);
    }
    let pml4 = paging::install_identity_map(&mut frames, limit);
    kprintln!(
        "ember: own page tables active (identity map up to {} GiB, CR3 {pml4:#x})",
        limit.div_ceil(1 << 30)
    );

    let acpi_info = match info.rsdp {
        Some(rsdp) => acpi::read_tables(rsdp),
        None => {
            kprintln!("ember: WARNING: firmware gave no ACPI RSDP; running on one CPU without ACPI");
            acpi::AcpiInfo::default()
        }
    };

    // iSCSI boot (a later piece of work) starts from the firmware's iBFT; report whether there is one.
    match acpi::find_table(b"iBFT") {
        Some(t) => kprintln!("ember: iBFT present ({} bytes): firmware booted from iSCSI", t.len()),
        None => kprintln!("ember: no iBFT (not booted from iSCSI)"),
    }

    apic::init_bsp(acpi_info.lapic_address);
    timer::calibrate_and_start(acpi_info.hpet);
    smp::start_aps(&acpi_info.cpus, info.trampoline_page, pml4, &mut frames);
    pcie::scan(&acpi_info.ecam);

    let cpus = smp::online_cpus();
    let cpu_model = cpu::brand_string()
        .or_else(|| info.system.cpu_model.clone())
        .unwrap_or_else(|| String::from("unknown CPU"));
    kprintln!("{}", ember_kernel::boot_line(cpus, usable));

    let identity = HostIdentity {
        version: String::from(ember_kernel::VERSION),
        build: String::from(ember_kernel::BUILD_ID),
        vendor: info.system.vendor.clone(),
        product: info.system.product.clone(),
        cpus,
        cpu_model,
        memory_bytes: usable,
        management: ManagementAddress::None,
    };

    if let Some(test) = info.options.selftest {
        run_selftest(test, &acpi_info);
    }

    console::show_idle_screen(&identity);
    idle_loop(&identity)
}

/// Test-only actions requested with `ember.selftest=` (documented in storage::bootcfg).
fn run_selftest(test: SelfTest, acpi_info: &acpi::AcpiInfo) {
    kprintln!("ember: SELFTEST {test:?} requested by boot option ember.selftest");
    match test {
        SelfTest::PageFault => cpu::provoke_page_fault(),
        SelfTest::Divide => cpu::provoke_divide_error(),
        SelfTest::InvalidOpcode => cpu::provoke_invalid_opcode(),
        SelfTest::GeneralProtection => cpu::provoke_general_protection(),
        SelfTest::Reboot => power::reboot(acpi_info.reset.as_ref()),
    }
}

/// The management plane's loop: for now it only redraws the idle screen on request.
fn idle_loop(identity: &HostIdentity) -> ! {
    loop {
        while let Some(b) = console::read_serial_byte() {
            // Ctrl-L or Enter redraws, as terminals expect.
            if b == 0x0c || b == b'\r' {
                console::show_idle_screen(identity);
            }
        }
        cpu::wait_for_interrupt();
    }
}
