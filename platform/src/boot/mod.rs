//! The UEFI phase: gather what the kernel needs from firmware, then ExitBootServices.
//!
//! Everything allocated here uses `LOADER_DATA`, which the kernel phase treats as in use (never handed
//! out by the frame allocator): the heap, the kernel stack, the AP start-up page and the memory map.

mod files;

pub use files::FirstBootKickstart;

use crate::arch::x86_64::{heap, serial, stack};
use crate::console;
use crate::firmware::smbios;
use alloc::string::String;
use alloc::vec::Vec;
use ember_hw::mm::{Region, RegionKind};
use ember_hw::smbios::SystemInfo;
use ember_storage::bootcfg::{self, BootOptions, MAX_BOOT_CFG_LEN};
use ember_storage::firstboot::KsSource;
use ember_storage::gpt::Guid;
use uefi::boot::{self, AllocateType, MemoryType};
use uefi::mem::memory_map::MemoryMap;
use uefi::proto::console::gop::{GraphicsOutput, PixelFormat};
use uefi::proto::device_path::media::PartitionSignature;
use uefi::proto::device_path::{DevicePathNodeEnum, LoadedImageDevicePath};
use uefi::proto::media::fs::SimpleFileSystem;
use uefi::table::cfg;
use uefi::Status;

/// Kernel heap size (the management plane, datastore metadata, and up to
/// `ember_vmm::blkio::HOST_IN_FLIGHT_BYTES` of VM disk requests in flight; guest RAM and the
/// kernels of VMs on datastores come from the frame allocator).
const HEAP_BYTES: usize = 64 << 20;
/// Kernel (bootstrap CPU) stack size.
const STACK_BYTES: usize = 256 << 10;

/// The framebuffer the firmware left us.
#[derive(Debug, Clone, Copy)]
pub struct FramebufferInfo {
    pub base: u64,
    pub size: u64,
    pub width: usize,
    pub height: usize,
    /// Pixels per scan line.
    pub stride: usize,
    /// True for BGR (blue in the low byte), false for RGB.
    pub bgr: bool,
}

/// Everything the kernel phase receives.
pub struct BootInfo {
    pub memory_map: Vec<Region>,
    pub rsdp: Option<u64>,
    pub system: SystemInfo,
    pub framebuffer: Option<FramebufferInfo>,
    pub options: BootOptions,
    /// A 4 KiB page below 1 MiB for the AP start-up code.
    pub trampoline_page: u64,
    /// Unique GUID of the GPT partition Ember was loaded from (identifies the boot media).
    pub boot_partition: Option<Guid>,
    /// The kickstart a first boot would apply.
    pub kickstart: FirstBootKickstart,
    /// The VMs a first boot registers (`ember_storage::vmdef::FIRST_BOOT_VMS_FILE` on the boot
    /// media; empty without it), or why the file cannot be used.
    pub first_boot_vms: Result<Vec<ember_storage::vmdef::DsPath>, String>,
    /// Wall-clock time when the UEFI phase ended (seconds since 1970, UTC), if the firmware knows it.
    pub wall_clock: Option<i64>,
}

/// The kernel phase's entry: runs on the kernel stack with the boot information, never returns.
pub type KernelMain = extern "sysv64" fn(&'static mut BootInfo) -> !;

/// The UEFI phase, called from the appliance's firmware entry point: gathers what the kernel needs,
/// leaves boot services and continues in `kernel_main` on the kernel stack. `version` and `build`
/// go into the first log line. Returns only when the firmware cannot give the heap.
pub fn start(version: &str, build: &str, kernel_main: KernelMain) -> Status {
    // The heap first: everything after this may allocate.
    let heap_pages = HEAP_BYTES / 4096;
    let Ok(heap_mem) = boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, heap_pages)
    else {
        return Status::OUT_OF_RESOURCES;
    };
    heap::init(heap_mem.as_ptr() as u64, HEAP_BYTES);

    // The boot volume is opened once, for boot.cfg and a local kickstart.
    let mut boot_fs = boot::get_image_file_system(boot::image_handle()).ok();
    // boot.cfg decides the console port, so read it before saying anything.
    let (options, cfg_messages) = read_boot_options(boot_fs.as_deref_mut());
    console::init_serial(serial::SerialPort::new(options.console.io_base()));
    kprintln!();
    kprintln!("Ember {version} (build {build}) starting");
    for m in &cfg_messages {
        kprintln!("ember: {m}");
    }

    let (rsdp, smbios_ep) = uefi::system::with_config_table(|entries| {
        let find = |guid| entries.iter().find(|e| e.guid == guid).map(|e| e.address as u64);
        (
            find(cfg::ConfigTableEntry::ACPI2_GUID).or_else(|| find(cfg::ConfigTableEntry::ACPI_GUID)),
            find(cfg::ConfigTableEntry::SMBIOS3_GUID).or_else(|| find(cfg::ConfigTableEntry::SMBIOS_GUID)),
        )
    });
    let system = smbios_ep.map(smbios::read_system_info).unwrap_or_default();
    kprintln!(
        "ember: firmware: {} {} (BIOS {} {})",
        system.vendor.as_deref().unwrap_or("?"),
        system.product.as_deref().unwrap_or("?"),
        system.bios_vendor.as_deref().unwrap_or("?"),
        system.bios_version.as_deref().unwrap_or("?")
    );

    let ks_source = KsSource::parse(options.kickstart.as_deref());
    let kickstart = match boot_fs.as_deref_mut() {
        Some(fs) => files::first_boot_kickstart(fs, ks_source),
        None if matches!(ks_source, Ok(KsSource::BootMedia)) => FirstBootKickstart::None,
        None => FirstBootKickstart::Refused(String::from("the boot volume has no readable file system")),
    };
    let first_boot_vms = match boot_fs.as_deref_mut() {
        Some(fs) => files::first_boot_vms(fs),
        None => Ok(Vec::new()),
    };
    drop(boot_fs);
    let wall_clock = uefi::runtime::get_time().ok().and_then(|t| {
        ember_vmm::rtc::unix_time(
            t.year() as i64,
            t.month() as i64,
            t.day() as i64,
            t.hour() as i64,
            t.minute() as i64,
            t.second() as i64,
        )
    });

    let boot_partition = boot_partition_guid();
    match &boot_partition {
        Some(g) => kprintln!("ember: loaded from GPT partition {g}"),
        None => {
            kprintln!("ember: WARNING: the firmware did not say which GPT partition Ember was loaded from")
        }
    }

    let framebuffer = find_framebuffer();
    match &framebuffer {
        Some(fb) => kprintln!("ember: framebuffer {}x{} at {:#x}", fb.width, fb.height, fb.base),
        None => kprintln!("ember: no graphics output; serial console only"),
    }

    let Ok(trampoline) = boot::allocate_pages(AllocateType::MaxAddress(0x9_f000), MemoryType::LOADER_DATA, 1)
    else {
        kprintln!("ember: FATAL: no free page below 1 MiB for CPU start-up");
        return Status::OUT_OF_RESOURCES;
    };
    let Ok(stack_mem) =
        boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, STACK_BYTES / 4096)
    else {
        return Status::OUT_OF_RESOURCES;
    };

    kprintln!("ember: leaving UEFI boot services");
    // SAFETY: no boot-services objects (protocols, pool memory) are used after this point: the
    // framebuffer and tables are plain physical memory that stays valid, and all our allocations are
    // LOADER_DATA pages.
    let map = unsafe { boot::exit_boot_services(None) };
    let memory_map: Vec<Region> = map
        .entries()
        .map(|d| Region { start: d.phys_start, pages: d.page_count, kind: region_kind(d.ty) })
        .collect();

    let info = alloc::boxed::Box::leak(alloc::boxed::Box::new(BootInfo {
        memory_map,
        rsdp,
        system,
        framebuffer,
        options,
        trampoline_page: trampoline.as_ptr() as u64,
        boot_partition,
        kickstart,
        first_boot_vms,
        wall_clock,
    }));
    if let Some(fb) = info.framebuffer {
        console::init_framebuffer(fb);
    }
    console::set_debug_exit(info.options.debug_exit);
    stack::switch_to(stack_mem.as_ptr() as u64 + STACK_BYTES as u64, kernel_main, info)
}

fn region_kind(ty: MemoryType) -> RegionKind {
    match ty {
        MemoryType::CONVENTIONAL | MemoryType::BOOT_SERVICES_CODE | MemoryType::BOOT_SERVICES_DATA => {
            RegionKind::Free
        }
        MemoryType::LOADER_CODE | MemoryType::LOADER_DATA => RegionKind::Loader,
        MemoryType::ACPI_RECLAIM => RegionKind::AcpiReclaim,
        MemoryType::ACPI_NON_VOLATILE => RegionKind::AcpiNvs,
        MemoryType::RUNTIME_SERVICES_CODE | MemoryType::RUNTIME_SERVICES_DATA => RegionKind::FirmwareRuntime,
        MemoryType::MMIO | MemoryType::MMIO_PORT_SPACE => RegionKind::Mmio,
        _ => RegionKind::Reserved,
    }
}

/// Reads and validates `\EFI\ember\boot.cfg` from the volume Ember was loaded from. Problems are
/// returned as messages to print once the console is up; the options fall back to defaults.
fn read_boot_options(boot_fs: Option<&mut SimpleFileSystem>) -> (BootOptions, Vec<String>) {
    let mut messages = Vec::new();
    let bytes = match boot_fs.ok_or(String::from("boot volume has no file system")).and_then(|fs| {
        files::read_file(fs, "/EFI/ember/boot.cfg", MAX_BOOT_CFG_LEN).map_err(|e| match e {
            files::ReadError::NotFound => String::from("file not found"),
            files::ReadError::Other(why) => why,
        })
    }) {
        Ok(b) => b,
        Err(why) => {
            messages.push(alloc::format!(
                "no usable {}: {why}; using default boot options",
                bootcfg::BOOT_CFG_PATH
            ));
            return (BootOptions::default(), messages);
        }
    };
    match bootcfg::parse_boot_cfg(&bytes) {
        Ok(cfg) => {
            messages.push(alloc::format!(
                "boot options: {}",
                if cfg.kernelopt.is_empty() { "(none)" } else { &cfg.kernelopt }
            ));
            for u in &cfg.options.unknown {
                messages.push(alloc::format!("WARNING: unknown boot option `{u}` ignored"));
            }
            (cfg.options, messages)
        }
        Err(e) => {
            messages.push(alloc::format!("ERROR: {e}; using default boot options"));
            (BootOptions::default(), messages)
        }
    }
}

/// The unique GUID of the partition in the loaded image's device path (its HardDrive node).
fn boot_partition_guid() -> Option<Guid> {
    let path = boot::open_protocol_exclusive::<LoadedImageDevicePath>(boot::image_handle()).ok()?;
    path.node_iter().find_map(|node| match node.as_enum() {
        Ok(DevicePathNodeEnum::MediaHardDrive(hd)) => match hd.partition_signature() {
            PartitionSignature::Guid(g) => Some(Guid::from_bytes(g.to_bytes())),
            _ => None,
        },
        _ => None,
    })
}

fn find_framebuffer() -> Option<FramebufferInfo> {
    let handle = boot::get_handle_for_protocol::<GraphicsOutput>().ok()?;
    let mut gop = boot::open_protocol_exclusive::<GraphicsOutput>(handle).ok()?;
    let mode = gop.current_mode_info();
    let bgr = match mode.pixel_format() {
        PixelFormat::Bgr => true,
        PixelFormat::Rgb => false,
        // Bit-mask and blt-only modes are not drawn on; the serial console still works.
        _ => return None,
    };
    let (width, height) = mode.resolution();
    let stride = mode.stride();
    let mut fb = gop.frame_buffer();
    Some(FramebufferInfo { base: fb.as_mut_ptr() as u64, size: fb.size() as u64, width, height, stride, bgr })
}
