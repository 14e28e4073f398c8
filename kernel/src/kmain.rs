//! Kernel-phase wiring: what runs after ExitBootServices, in order.

use alloc::format;
use alloc::string::String;
use alloc::string::ToString;
use alloc::vec::Vec;
use ember_dcui::idle::{Band, HostIdentity, ManagementAddress};
use ember_dcui::menu::{Action, Menu, View};
use ember_hw::keyboard::Layout;
use ember_hw::keys::{Key, KeyDecoder};
use ember_hw::mm::{self, frames::FrameAllocator};
use ember_net::api::{ApiState, HostFacts, NicInfo};
use ember_net::auth::{self, PasswordHash};
use ember_net::config::{Ipv6Mode, ManagementConfig};
use ember_net::firstboot;
use ember_net::host::{HostPower, HostState, Persistence, Ticket};
use ember_net::hostnet::HostNetwork;
use ember_net::mgmt::{KickstartTls, ManagedNic, ManagementNetwork};
use ember_net::tls::Trust;
use ember_platform::arch::x86_64::{apic, cpu, gdt, idt, paging, power, smp, svm, timer};
use ember_platform::boot::BootInfo;
use ember_platform::boot::FirstBootKickstart;
use ember_platform::console;
use ember_platform::firmware::{acpi, pcie};
use ember_storage::bootcfg::SelfTest;
use ember_storage::disks::HostDisks;
use ember_storage::firstboot::KsSource;
use ember_storage::hostconfig::{AvailabilityTimer, HostConfig};
use ember_storage::persist::{self, Disk, HostStore};

/// Draws the DCUI idle screen (laid out by `ember_dcui::idle`) on the consoles.
fn show_idle_screen(id: &HostIdentity) {
    console::show_idle_screen(&|cols, rows| {
        let (split, lines) = ember_dcui::idle::layout(id, cols, rows);
        let lines = lines
            .into_iter()
            .map(|l| console::BandedLine { row: l.row, col: l.col, top: l.band == Band::Top, text: l.text })
            .collect();
        (split, lines)
    });
}

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
    // The VM runtime exists before the application processors start: they become its workers.
    crate::vmhost::create(info.wall_clock);
    console::set_vcpu_panic_hook(crate::vmhost::on_vcpu_cpu_panic);
    smp::start_aps(&acpi_info.cpus, info.trampoline_page, pml4, &mut frames, crate::vmhost::ap_worker);
    let functions = pcie::scan(&acpi_info.ecam);
    let nics = ember_drivers::probe_nics(&functions, &mut frames);
    let (disks, usb_keyboards) = ember_drivers::probe_disks(&functions, &mut frames);
    let ps2 = ember_drivers::ps2::Ps2::probe();

    let cpus = smp::online_cpus();
    let cpu_model = cpu::brand_string()
        .or_else(|| info.system.cpu_model.clone())
        .unwrap_or_else(|| String::from("unknown CPU"));
    kprintln!("{}", ember_dcui::boot_line(crate::VERSION, cpus, usable));
    // The hypervisor's hardware: SVM on this CPU, checked by running a probe guest once.
    let (_svm, virtualization, vm_support) = match svm::enable() {
        Ok(c) => {
            let f = c.features;
            let extras = [(f.nrip_save, ", next-RIP save"), (f.decode_assists, ", decode assists")];
            let extras: String = extras.iter().filter(|e| e.0).map(|e| e.1).collect();
            let (summary, support) = match svm::probe(&c) {
                Ok(what) => {
                    svm::CPUS_READY.fetch_add(1, core::sync::atomic::Ordering::AcqRel);
                    let ready = svm::CPUS_READY.load(core::sync::atomic::Ordering::Acquire);
                    kprintln!(
                        "ember: SVM ready on {ready} of {cpus} CPUs: nested paging, {} ASIDs{extras}; VMRUN verified: {what}",
                        f.asids
                    );
                    (String::from("AMD SVM with nested paging, VMRUN verified"), Ok(f.asids))
                }
                Err(e) => {
                    kprintln!("ember: ERROR: SVM enabled but VMRUN failed its check: {e}");
                    let s = format!("AMD SVM with nested paging, but VMRUN failed its check: {e}");
                    (s.clone(), Err(s))
                }
            };
            (Some(c), summary, support)
        }
        Err(why) => {
            kprintln!("ember: no hardware virtualization: {why}; virtual machines cannot run on this host");
            (None, format!("none: {why}"), Err(why))
        }
    };
    // Guest RAM comes from the frame allocator from now on.
    crate::vmhost::init(frames, &vm_support);

    let identity = HostIdentity {
        version: String::from(crate::VERSION),
        build: String::from(crate::BUILD_ID),
        vendor: info.system.vendor.clone(),
        product: info.system.product.clone(),
        cpus,
        cpu_model,
        memory_bytes: usable,
        management: ManagementAddress::None,
        ipv6: None,
        certificate_sha256: None,
        notice: None,
    };

    if let Some(test) = info.options.selftest {
        run_selftest(test, &acpi_info);
    }

    let nic_infos: Vec<NicInfo> = nics.iter().map(NicInfo::of).collect();
    let mut disks = disks;
    let boot = host_configuration(&mut disks, info, &nic_infos);
    let mut keyboards = LocalKeyboards { ps2, usb: usb_keyboards, layout: String::from("US Default") };
    keyboards.set_layout(&boot.host.keyboard);
    let mut identity = identity;
    identity.notice = boot.notice;
    let mut network = start_management_network(nics, &identity, info, boot.host, boot.store, &virtualization);
    if let Some(fetch) = boot.fetch {
        if let Err(e) = network.net.fetch_kickstart(&network.host, &fetch.url, fetch.tls) {
            identity.notice = Some(first_boot_failed(format!("kickstart {e}")));
        }
    }
    let mut hypervisor = crate::vmhost::Hypervisor::new();
    network.host.disks = scan_disks(disks, boot.boot_disk);
    let inventory = network.host.config.vms.clone();
    hypervisor.register_inventory(&mut network.host.disks, &inventory);
    let (listed, delay) =
        (network.host.config.autostart.clone(), network.host.config.autostart_delay_seconds);
    hypervisor.autostart(&mut network.host.disks, &listed, delay, timer::now_ms());
    network.host.vms = alloc::boxed::Box::new(hypervisor);
    network.net.vms_changed();
    print_network_log(&mut network);
    identity.management = console_address(&network);
    identity.certificate_sha256 = certificate_sha256(&network);
    show_idle_screen(&identity);
    let support = support_information(&identity, info);
    let local = LocalConsole {
        identity,
        menu: Menu::new(),
        keys: KeyDecoder::new(),
        keyboards,
        support,
        reset: acpi_info.reset,
        poweroff: acpi_info.poweroff,
        saving: Vec::new(),
        held: alloc::collections::VecDeque::new(),
        shown_generation: network.host.generation,
    };
    management_loop(local, network)
}

/// The host's disks, the boot media (`boot`, shared with the configuration store) first, with the
/// datastores on them mounted.
fn scan_disks(disks: Vec<Disk>, boot: Option<Disk>) -> HostDisks {
    let mut log = Vec::new();
    let disks = HostDisks::scan(disks, boot, cpu::random_u64(), &mut log);
    for line in log {
        kprintln!("ember: {line}");
    }
    disks
}

/// Fresh random bytes for salts and keys.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(8) {
        chunk.copy_from_slice(&cpu::random_u64().to_le_bytes()[..chunk.len()]);
    }
    out
}

/// The management network from the boot options (they seed a first boot), or DHCP on vmnic0.
fn boot_option_network(info: &BootInfo) -> ManagementConfig {
    match ManagementConfig::from_boot_options(&info.options.network) {
        Ok(c) => c,
        Err(e) => {
            kprintln!("ember: ERROR: boot option {e}; using the default management network (DHCP on vmnic0)");
            ManagementConfig::default()
        }
    }
}

/// The built-in configuration: the documented initial password (hashed with a fresh salt) and the
/// management network from the boot options.
fn default_configuration(info: &BootInfo) -> HostConfig {
    let started = timer::now_ms();
    let hash = PasswordHash::new(auth::INITIAL_PASSWORD, random_bytes(), auth::DEFAULT_ITERATIONS);
    kprintln!("ember: initial password hash ready in {} ms", timer::now_ms() - started);
    let mut host = HostConfig::defaults(hash.encode());
    host.network = boot_option_network(info);
    host
}

/// The config store on the boot media (the disk holding the partition Ember was loaded from), taken
/// out of `disks`, and a second handle on the boot media for the datastores in its free space.
fn open_store(disks: &mut Vec<Disk>, info: &BootInfo) -> Result<(HostStore, Disk), String> {
    let (i, layout) = persist::find_boot_media(disks, info.boot_partition).map_err(|e| e.to_string())?;
    let Disk { name, driver, model, serial, dev } = disks.swap_remove(i);
    let dev = ember_storage::block::SharedDevice::new(dev);
    let datastores =
        Disk::new(name.clone(), driver, alloc::boxed::Box::new(dev.clone())).described(&model, &serial);
    let store = HostStore::open(
        Disk { name: name.clone(), driver, model, serial, dev: alloc::boxed::Box::new(dev) },
        &layout,
    )
    .map_err(|e| format!("boot media {name}: {e}"))?;
    kprintln!("ember: boot media is {name}: configuration store in its config partition");
    Ok((store, datastores))
}

/// The configuration a boot runs with.
struct BootConfiguration {
    host: HostConfig,
    /// The boot media, for the datastores in its free space (its device is shared with `store`).
    boot_disk: Option<Disk>,
    store: Persistence,
    /// Shown on the idle screen: what went wrong with the first boot's configuration.
    notice: Option<String>,
    /// A kickstart URL to fetch once the management network is up (first boot only).
    fetch: Option<Fetch>,
}

/// A kickstart to download once the management network is up.
struct Fetch {
    url: String,
    /// For `https://`: what the server certificate must chain to, and the clock to check it at.
    tls: Option<KickstartTls>,
}

/// A failed first-boot source: said on the console and the idle screen; the host runs on the
/// built-in configuration, and nothing is stored, so the next boot tries again.
fn first_boot_failed(what: String) -> String {
    kprintln!("ember: ERROR: first boot: {what}");
    kprintln!("ember: ERROR: first boot: nothing applied or stored; running on the built-in configuration");
    format!("First boot configuration failed: {what}. Nothing was applied; the host runs on the built-in configuration.")
}

/// A first boot's configuration (PRODUCT.md 2).
struct FirstBoot {
    host: HostConfig,
    /// Store it now (a complete first boot), or not (a failed source: the next boot tries again;
    /// a download: stored once it has been applied).
    store: bool,
    notice: Option<String>,
    fetch: Option<Fetch>,
}

/// A first boot's configuration: the kickstart the UEFI phase found, else the built-in one, with
/// the VMs the boot media lists (`ember_storage::vmdef::FIRST_BOOT_VMS_FILE`) in the inventory.
fn first_boot_configuration(info: &BootInfo, nics: &[NicInfo]) -> FirstBoot {
    let mut first = kickstart_configuration(info, nics);
    // The VMs `ember-image build --vm` put on the image's datastore join the inventory.
    match &info.first_boot_vms {
        Ok(vms) => {
            for v in vms {
                kprintln!("ember: first boot: VM {v} joins the inventory");
            }
            first.host.vms = vms.iter().map(|v| v.to_string()).collect();
        }
        Err(e) => kprintln!("ember: ERROR: first boot: no VMs registered: {e}"),
    }
    first
}

/// The kickstart's configuration, or the built-in one (with a notice when the kickstart failed).
fn kickstart_configuration(info: &BootInfo, nics: &[NicInfo]) -> FirstBoot {
    let fallback = |notice: String| FirstBoot {
        host: default_configuration(info),
        store: false,
        notice: Some(notice),
        fetch: None,
    };
    let (source, parsed) = match &info.kickstart {
        FirstBootKickstart::None => {
            kprintln!("ember: first boot: no kickstart (no ks= boot option, no ks.cfg on the boot media)");
            return FirstBoot { host: default_configuration(info), store: true, notice: None, fetch: None };
        }
        FirstBootKickstart::Refused(why) => return fallback(first_boot_failed(why.clone())),
        FirstBootKickstart::Remote { source: src, .. } if nics.is_empty() => {
            return fallback(first_boot_failed(format!("kickstart {src}: no supported NIC to fetch it with")))
        }
        FirstBootKickstart::Remote { source: src, ca } => {
            let tls = match src {
                KsSource::Https(_) => match kickstart_tls(ca, info) {
                    Ok(t) => Some(t),
                    Err(why) => return fallback(first_boot_failed(format!("kickstart {src}: {why}"))),
                },
                _ => None,
            };
            // Until it has been fetched and applied the host runs, reachable, on the built-in
            // configuration (with the network boot options, which say how to reach the server).
            return FirstBoot {
                host: default_configuration(info),
                store: false,
                notice: Some(format!("First boot: fetching the kickstart from {src} ...")),
                fetch: Some(Fetch { url: src.to_string(), tls }),
            };
        }
        FirstBootKickstart::Local { source, parsed } => (source, parsed),
    };
    kprintln!("ember: first boot: kickstart {source}");
    let ks = match parsed {
        Ok(ks) => ks,
        Err(e) => return fallback(first_boot_failed(format!("kickstart {source}: {e}"))),
    };
    // The kickstart sets the root password, so the initial one is not hashed for it.
    let mut base = HostConfig::defaults(String::new());
    base.network = boot_option_network(info);
    match firstboot::config_from_kickstart(ks, &base, nics, &mut |pw| {
        firstboot::hash_password(pw, random_bytes())
    }) {
        Ok(applied) => {
            for n in &applied.notes {
                kprintln!("ember: first boot: kickstart {source}: {n}");
            }
            kprintln!("ember: first boot: kickstart {source} applied");
            FirstBoot { host: applied.config, store: true, notice: None, fetch: None }
        }
        Err(e) => fallback(first_boot_failed(format!("kickstart {source}: {e}"))),
    }
}

/// Runs the configuration's pending `%firstboot` scripts (once: the result is stored without them).
fn run_firstboot(host: &mut HostConfig, store: Option<&mut HostStore>) {
    if host.firstboot.is_empty() {
        return;
    }
    let (log, stored) = match store {
        Some(s) => {
            let (log, stored) = s.finish_firstboot(host);
            (log, Some(stored))
        }
        None => (ember_storage::script::run_firstboot(host), None),
    };
    for line in log {
        kprintln!("ember: first boot: {line}");
    }
    match stored {
        Some(Ok(seq)) => kprintln!("ember: first boot: %firstboot result stored (sequence {seq})"),
        // Still pending in the store: they run again at the next boot.
        Some(Err(e)) => kprintln!(
            "ember: ERROR: storing the %firstboot result failed: {e}; the scripts run again at the next boot"
        ),
        None => kprintln!("ember: first boot: %firstboot result not stored (no configuration store)"),
    }
}

/// What an `https://` kickstart is checked with: the boot media's CA file, else the built-in root
/// store; the wall clock from the firmware; and the TLS client's random source is seeded.
fn kickstart_tls(ca: &Result<Option<Vec<u8>>, String>, info: &BootInfo) -> Result<KickstartTls, String> {
    use ember_storage::firstboot::KS_CA_FILE;
    let trust = match ca {
        Ok(Some(pem)) => Trust::from_pem(KS_CA_FILE, pem)?,
        Ok(None) => Trust::BuiltIn,
        Err(why) => return Err(format!("{KS_CA_FILE}: {why}")),
    };
    ember_net::tls::crypto::seed(random_bytes());
    let boot_unix = info.wall_clock.map(|w| w - (timer::now_ms() / 1000) as i64);
    Ok(KickstartTls { trust, boot_unix })
}

/// Finds the boot media's config store and the configuration to run with: the stored one, or - on a
/// first boot - the kickstart's or the built-in configuration, which is then stored so later boots
/// use it.
fn host_configuration(disks: &mut Vec<Disk>, info: &BootInfo, nics: &[NicInfo]) -> BootConfiguration {
    let (mut s, boot_disk) = match open_store(disks, info) {
        Ok(s) => s,
        Err(why) => {
            kprintln!("ember: WARNING: no configuration store: {why}");
            kprintln!("ember: WARNING: configuration changes will not survive a reboot");
            let mut first = first_boot_configuration(info, nics);
            run_firstboot(&mut first.host, None);
            return BootConfiguration {
                host: first.host,
                boot_disk: None,
                store: Persistence::None(why),
                notice: first.notice,
                fetch: first.fetch,
            };
        }
    };
    match s.load() {
        Ok(loaded) => {
            for w in &loaded.warnings {
                kprintln!("ember: WARNING: {w}");
            }
            if let Some(mut host) = loaded.config {
                let (slot, seq) = s.in_use().unwrap_or(('?', 0));
                kprintln!("ember: configuration loaded from {} slot {slot} (sequence {seq})", s.disk.name);
                if !info.options.network.is_empty() {
                    kprintln!("ember: network boot options ignored: the stored configuration is used");
                }
                // Stored but not run: the boot that stored them stopped before they had run.
                run_firstboot(&mut host, Some(&mut s));
                return BootConfiguration {
                    host,
                    boot_disk: Some(boot_disk),
                    store: Persistence::Store(s),
                    notice: None,
                    fetch: None,
                };
            }
            kprintln!("ember: first boot: no configuration stored yet");
            let FirstBoot { host, store, mut notice, fetch } = first_boot_configuration(info, nics);
            let mut host = host;
            if store {
                // The HTTPS key and certificate are stored with the first configuration.
                ember_net::tls::crypto::seed(random_bytes());
                let unix_now = info.wall_clock.and_then(|w| u64::try_from(w).ok());
                match ember_net::tls::server::self_signed(&host.network.hostname, unix_now) {
                    Ok(id) => host.tls = Some(id.stored),
                    Err(e) => kprintln!("ember: ERROR: no HTTPS certificate could be made: {e}"),
                }
                match s.save(&host) {
                    Ok(seq) => {
                        kprintln!("ember: first boot: configuration stored (sequence {seq})");
                        run_firstboot(&mut host, Some(&mut s));
                    }
                    Err(e) => {
                        kprintln!("ember: ERROR: storing the configuration failed: {e}");
                        notice = Some(format!("The configuration could not be stored: {e}"));
                    }
                }
            }
            BootConfiguration {
                host,
                boot_disk: Some(boot_disk),
                store: Persistence::Store(s),
                notice,
                fetch,
            }
        }
        Err(e) => {
            // Damage is reported, not repaired behind the operator's back: the host runs on the
            // built-in configuration, and the next change made through the API is stored afresh.
            kprintln!("ember: ERROR: {e}; running on the built-in configuration");
            let notice = Some(format!(
                "The stored configuration is damaged ({e}); the host runs on the built-in configuration."
            ));
            BootConfiguration {
                host: default_configuration(info),
                boot_disk: Some(boot_disk),
                store: Persistence::Store(s),
                notice,
                fetch: None,
            }
        }
    }
}

/// The management plane: the host's state (configuration, store, accounts, VMs), owned here and
/// lent to the management network (API, consoles, first boot) and the DCUI for each call.
struct Plane {
    host: HostState,
    /// The physical NICs (`vmnicN`) and the virtual switch, lent to the management network for
    /// each call.
    hostnet: HostNetwork,
    net: ManagementNetwork,
}

/// Builds the host's state for configuration `host` and starts the management network.
fn start_management_network(
    nics: Vec<ManagedNic>,
    identity: &HostIdentity,
    info: &BootInfo,
    host: HostConfig,
    store: Persistence,
    virtualization: &str,
) -> Plane {
    // Without NICs the service still runs: it holds the configuration the DCUI changes, and the
    // management interface reports no uplink.
    let facts = HostFacts {
        version: identity.version.clone(),
        build: identity.build.clone(),
        cpus: identity.cpus,
        cpu_model: identity.cpu_model.clone(),
        memory_bytes: identity.memory_bytes,
        vendor: info.system.vendor.clone().unwrap_or_default(),
        product: info.system.product.clone().unwrap_or_default(),
        serial: info.system.serial.clone().unwrap_or_default(),
        virtualization: virtualization.to_string(),
    };
    // The HTTPS key of a new host comes from the TLS random source.
    ember_net::tls::crypto::seed(random_bytes());
    if !cpu::has_rdrand() {
        kprintln!("ember: WARNING: the CPU has no RDRAND: a new HTTPS key is seeded from timer jitter only; install a certificate with a key made elsewhere (PUT /api/v1/host/certificate)");
    }
    let mut state = match HostState::new(host, store, random_bytes(), cpu::random_u64()) {
        Ok(s) => s,
        Err(e) => {
            // Only a stored hash the decoder accepted but the verifier cannot use gets here.
            kprintln!("ember: ERROR: stored root {e}; the initial password is in force until reboot");
            let host = default_configuration(info);
            HostState::new(
                host,
                Persistence::None(String::from("the stored configuration is unusable")),
                random_bytes(),
                cpu::random_u64(),
            )
            .expect("the built-in hash is valid")
        }
    };
    state.boot_unix = info.wall_clock.map(|w| w - (timer::now_ms() / 1000) as i64);
    let mut hostnet = HostNetwork::new(nics);
    let net = ManagementNetwork::new(
        &mut hostnet,
        ApiState::new(facts),
        &mut state,
        cpu::random_u64(),
        timer::now_ms(),
    );
    Plane { host: state, hostnet, net }
}

/// The fingerprint of the API's HTTPS certificate, for the idle screen.
fn certificate_sha256(net: &Plane) -> Option<String> {
    net.host.https.as_ref().map(|h| h.info.fingerprint())
}

fn console_address(net: &Plane) -> ManagementAddress {
    if net.net.api.nics.is_empty() {
        return ManagementAddress::None;
    }
    match net.net.console_address() {
        (hostname, Some(ip), dhcp) => ManagementAddress::Ipv4 { hostname, ipv4: ip.to_string(), dhcp },
        (_, None, _) => ManagementAddress::Unavailable(alloc::format!(
            "{}: {}",
            net.host.config.network.uplink,
            net.net.api.status.state.as_str()
        )),
    }
}

fn print_network_log(net: &mut Plane) {
    for line in net.net.take_log() {
        kprintln!("ember: {line}");
    }
}

/// What View Support Information lists.
fn support_information(id: &HostIdentity, info: &BootInfo) -> Vec<(String, String)> {
    let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| String::from("(not reported)"));
    alloc::vec![
        (String::from("Serial Number"), or_unknown(&info.system.serial)),
        (String::from("Vendor"), or_unknown(&info.system.vendor)),
        (String::from("Product"), or_unknown(&info.system.product)),
        (
            String::from("BIOS"),
            format!("{} {}", or_unknown(&info.system.bios_vendor), or_unknown(&info.system.bios_version))
        ),
        (String::from("Ember Version"), id.version.clone()),
        (String::from("Build"), id.build.clone()),
        (String::from("CPUs"), format!("{} x {}", id.cpus, id.cpu_model)),
        (String::from("Memory"), ember_dcui::idle::memory_gib(id.memory_bytes)),
    ]
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
        SelfTest::VmPanic => crate::vmhost::inject_vm_panic(),
    }
}

/// Polls without sleeping for this long after the last network activity (a request in progress gets
/// its next segment without waiting for the next timer tick).
const BUSY_POLL_MS: u64 = 20;
/// How often the local keyboards are read (the i8042 and the USB keyboards buffer what comes meanwhile).
const KEYBOARD_POLL_MS: u64 = 5;

/// The keyboards attached to the host (the serial console has its own decoder).
struct LocalKeyboards {
    ps2: Option<ember_drivers::ps2::Ps2>,
    usb: Vec<ember_drivers::usb_keyboard::UsbKeyboard>,
    /// The configured layout name they type with.
    layout: String,
}

impl LocalKeyboards {
    /// Types with the configured layout `name` from now on.
    fn set_layout(&mut self, name: &str) {
        if name == self.layout {
            return;
        }
        let (layout, own) = Layout::for_name(name);
        if own {
            kprintln!("ember: local keyboards: layout {name}");
        } else {
            kprintln!(
                "ember: local keyboards: layout {name} has no keymap in this build; typing as US Default"
            );
        }
        if let Some(p) = self.ps2.as_mut() {
            p.decoder.state.set_layout(layout);
        }
        for k in &mut self.usb {
            k.decoder.state.set_layout(layout);
        }
        self.layout = name.to_string();
    }

    /// Keys typed since the last poll, and repeats that are due.
    fn poll(&mut self, now: u64, keys: &mut Vec<Key>) {
        if let Some(p) = self.ps2.as_mut() {
            p.poll(|k| keys.extend(k.into_iter().flatten()));
        }
        for k in &mut self.usb {
            k.poll(now, keys);
        }
    }
}

/// The local console: the idle screen, and the menu behind F2/F12 driven by keys from the serial
/// line and the local keyboards.
struct LocalConsole {
    identity: HostIdentity,
    menu: Menu,
    keys: KeyDecoder,
    keyboards: LocalKeyboards,
    support: Vec<(String, String)>,
    reset: Option<acpi::ResetRegister>,
    poweroff: Option<acpi::PowerOff>,
    /// The menu's changes being saved (a failure is shown when the save ends).
    saving: Vec<Ticket>,
    /// Changes asked for while another change was being saved, in order, with the configuration
    /// change they were made on (`HostState::generation`).
    held: alloc::collections::VecDeque<(Action, u64)>,
    /// The configuration change the menu shows (`HostState::generation`).
    shown_generation: u64,
}

impl LocalConsole {
    /// Shuts the host down or restarts it: running VMs are shut down first
    /// ([`LocalConsole::shut_down_vms`]) and changes being saved finish.
    fn power(&mut self, n: &mut Plane, what: HostPower) -> ! {
        self.shut_down_vms(n);
        finish_saving(n);
        match what {
            HostPower::Shutdown => power::shutdown(self.poweroff.as_ref()),
            HostPower::Reboot => power::reboot(self.reset.as_ref()),
        }
    }

    /// Presses the ACPI power button of every running VM and waits (serving their disks) until
    /// they have powered off, at most the VM shutdown time-out; then powers off the rest.
    fn shut_down_vms(&mut self, n: &mut Plane) {
        use ember_net::vms::{VmAction, VmState};
        n.host.vms.cancel_autostart();
        let start = timer::now_ms();
        let running = |n: &Plane| -> Vec<String> {
            n.host
                .vms
                .list(timer::now_ms())
                .into_iter()
                .filter(|v| !matches!(v.run.state, VmState::Stopped | VmState::Failed | VmState::Invalid))
                .map(|v| v.name)
                .collect()
        };
        let names = running(n);
        if names.is_empty() {
            return;
        }
        kprintln!("ember: shutting down {} VM(s) before the host: {}", names.len(), names.join(", "));
        for name in &names {
            if let Err(e) = n.host.vms.act(&mut n.host.disks, name, VmAction::Stop, start) {
                kprintln!("ember: VM {name}: shutdown: {e}");
            }
        }
        let deadline = start.saturating_add(crate::vmhost::SHUTDOWN_TIMEOUT_MS);
        loop {
            let now = timer::now_ms();
            let unix = ember_net::datastores::unix_now(&n.host);
            n.host.vms.poll(&mut n.host.disks, now, unix);
            let left = running(n);
            if left.is_empty() {
                break;
            }
            if now >= deadline {
                for name in &left {
                    kprintln!("ember: VM {name}: did not shut down in time; powered off");
                    let _ = n.host.vms.act(&mut n.host.disks, name, VmAction::PowerOff, now);
                }
                break;
            }
            core::hint::spin_loop();
        }
        // What the guests wrote is committed (the next call commits the datastores they wrote).
        let unix = ember_net::datastores::unix_now(&n.host);
        n.host.vms.poll(&mut n.host.disks, timer::now_ms().saturating_add(2_000), unix);
        kprintln!("ember: VMs shut down in {} ms", timer::now_ms().saturating_sub(start));
    }

    fn redraw(&self, net: &Plane) {
        if self.menu.is_idle() {
            show_idle_screen(&self.identity);
            return;
        }
        let (logs, nics, ipv6) = (console::log_lines(), nic_rows(net), ipv6_rows(net));
        let view = menu_view(net, &self.support, &logs, &nics, &ipv6);
        console::show_menu(|area, buf| self.menu.render(&view, area, buf));
    }

    /// Handles one key; carries out what the menu asks.
    fn key(&mut self, key: Key, net: &mut Plane, now: u64) {
        if self.menu.is_idle() && matches!(key, Key::Redraw | Key::Enter) {
            // Ctrl-L or Enter redraws, as terminals expect.
            show_idle_screen(&self.identity);
            return;
        }
        let (logs, nics, ipv6) = (console::log_lines(), nic_rows(net), ipv6_rows(net));
        let action = {
            let view = menu_view(net, &self.support, &logs, &nics, &ipv6);
            self.menu.key(key, &view, now)
        };
        if let Some(a) = action {
            self.act(a, net, now);
        }
        self.redraw(net);
    }

    /// Shows the failures of the menu's changes whose saves have ended, then carries out a change
    /// held back while another was being saved.
    fn after_saves(&mut self, n: &mut Plane, now: u64) {
        let mut failed = None;
        self.saving.retain(|t| match n.host.outcome(*t) {
            None => true,
            Some(Ok(())) => false,
            Some(Err(e)) => {
                failed = Some(format!("Not changed: {e}"));
                false
            }
        });
        if let Some(f) = failed {
            self.menu.notify(f);
            self.redraw(n);
        } else if n.host.generation != self.shown_generation && !self.menu.is_idle() {
            // A change took effect (the menu's, the API's, a time-out's): show it.
            self.redraw(n);
        }
        self.shown_generation = n.host.generation;
        if !n.host.saving() {
            if let Some((a, made_on)) = self.held.pop_front() {
                if matches!(a, Action::ApplyNetwork { .. }) && made_on != n.host.generation {
                    // The form holds every management setting as it was: applied now it would undo
                    // the change saved meanwhile.
                    kprintln!(
                        "ember: DCUI: management network settings not applied: they were changed meanwhile"
                    );
                    self.menu.notify(String::from(
                        "Not changed: the management network settings were changed meanwhile; review them and apply again",
                    ));
                } else {
                    self.act(a, n, now);
                }
                self.redraw(n);
            }
        }
    }

    fn act(&mut self, action: Action, n: &mut Plane, now: u64) {
        // A change made while another is being saved waits for it (and builds on it).
        if action.changes_config() && (n.host.saving() || !self.held.is_empty()) {
            self.held.push_back((action, n.host.generation));
            return;
        }
        // A change is stored before it takes effect (the log says so once it is saved); when
        // storing fails the screen says so.
        let mut failure = None;
        let saving = &mut self.saving;
        let mut change = |f: &dyn Fn(&mut HostConfig), what: &str| {
            let mut host = n.host.config.clone();
            f(&mut host);
            match n.host.begin_commit(host, Some(format!("DCUI: {what}"))) {
                Ok(ticket) => saving.push(ticket),
                Err(e) => {
                    kprintln!("ember: ERROR: DCUI: {what}: {e}");
                    failure = Some(format!("Not changed: {e}"));
                }
            }
        };
        match action {
            Action::CheckLogin(pw) => {
                let ok = n.host.root.hash().verify(&pw);
                if let Some(Action::Log(l)) = self.menu.login_result(ok, timer::now_ms()) {
                    kprintln!("ember: {l}");
                }
            }
            Action::SetPassword(pw) => {
                let hash = PasswordHash::new(&pw, random_bytes(), auth::DEFAULT_ITERATIONS).encode();
                change(&|h| h.root_password_hash = hash.clone(), "root password changed");
            }
            Action::SetKeyboard(k) => change(&|h| h.keyboard = k.clone(), &format!("keyboard layout {k}")),
            Action::SetShell(on) => change(
                &|h| h.shell_enabled = on,
                if on { "local shell enabled" } else { "local shell disabled" },
            ),
            Action::SetSsh(on) => {
                change(&|h| h.ssh_enabled = on, if on { "SSH enabled" } else { "SSH disabled" })
            }
            Action::SetShellTimeouts { availability, idle } => change(
                &|h| {
                    h.shell_timeout_minutes = availability;
                    h.shell_idle_timeout_minutes = idle;
                },
                &format!(
                    "shell and SSH time-outs: availability {availability} min, idle {idle} min (0 = never)"
                ),
            ),
            Action::SetDcuiTimeout(m) => {
                change(&|h| h.dcui_timeout_minutes = m, &format!("DCUI idle time-out {m} min (0 = never)"))
            }
            Action::RestartAgents => {
                kprintln!("ember: DCUI: restarting the management agents");
                n.net.restart_agents(&mut n.host, now);
            }
            // The management network restarts with the new settings once they are saved.
            Action::ApplyNetwork { network, dns_search } => change(
                &|h| {
                    h.network = network.clone();
                    h.dns_search = dns_search.clone();
                },
                "management network settings changed",
            ),
            Action::TestNetwork => {
                kprintln!("ember: DCUI: testing the management network");
                n.net.start_network_test(now);
            }
            Action::RestartManagementNetwork => {
                kprintln!("ember: DCUI: restarting the management network");
                n.net.restart(&mut n.hostnet, now);
            }
            Action::ResetConfiguration => {
                kprintln!("ember: DCUI: resetting the system configuration to factory defaults");
                self.shut_down_vms(n);
                if let Err(e) = n.host.erase_store() {
                    kprintln!("ember: ERROR: the configuration store could not be erased: {e}");
                    self.menu.notify(format!("Reset failed: {e}"));
                    return;
                }
                power::reboot(self.reset.as_ref());
            }
            Action::Shutdown => self.power(n, HostPower::Shutdown),
            Action::Restart => self.power(n, HostPower::Reboot),
            Action::Log(l) => kprintln!("ember: {l}"),
        }
        if let Some(f) = failure {
            self.menu.notify(f);
        }
    }
}

/// Carries a change being saved to its end (before the power goes).
fn finish_saving(n: &mut Plane) {
    while n.host.poll_store() {}
    print_network_log(n);
}

/// The NICs as the menu lists them: name, MAC address, link.
fn nic_rows(net: &Plane) -> Vec<(String, String, bool)> {
    net.net.api.nics.iter().map(|i| (i.name.clone(), ember_hw::nic::mac_string(&i.mac), i.link)).collect()
}

/// The management interface's IPv6 addresses, as `address/prefix`.
fn ipv6_rows(net: &Plane) -> Vec<String> {
    net.net.api.status.ipv6.iter().map(|(a, p)| format!("{a}/{p}")).collect()
}

/// The idle screen's IPv6 line: the first address that is not link-local (a browser needs a zone
/// for those), and whether it is the static one.
fn idle_ipv6(net: &Plane) -> Option<(String, bool)> {
    let (a, _) = net.net.api.status.ipv6.iter().find(|(a, _)| !ember_net::config::is_link_local_v6(*a))?;
    let fixed = matches!(net.host.config.network.ipv6, Ipv6Mode::Static { address, .. } if address == *a);
    Some((a.to_string(), fixed))
}

/// What the menu shows of the host.
fn menu_view<'a>(
    n: &'a Plane,
    support: &'a [(String, String)],
    logs: &'a [String],
    nics: &'a [(String, String, bool)],
    ipv6: &'a [String],
) -> View<'a> {
    View {
        hostname: &n.host.config.network.hostname,
        network: &n.host.config.network,
        dns_search: &n.host.config.dns_search,
        nics,
        tests: n.net.network_test(),
        ipv6_addresses: ipv6,
        keyboard: &n.host.config.keyboard,
        shell: n.host.config.shell_enabled,
        ssh: n.host.config.ssh_enabled,
        shell_timeout: n.host.config.shell_timeout_minutes,
        shell_idle_timeout: n.host.config.shell_idle_timeout_minutes,
        dcui_timeout: n.host.config.dcui_timeout_minutes,
        support,
        logs,
    }
}

/// The management plane's loop on the bootstrap CPU: console input and the DCUI, the management
/// network, and the idle screen kept current with the management address.
fn management_loop(mut local: LocalConsole, mut network: Plane) -> ! {
    let mut last_activity = 0u64;
    let mut last_shown = None;
    let mut last_hostname = String::new();
    let mut last_ipv6 = Vec::new();
    let mut typed = Vec::new();
    let mut last_keyboard_poll = 0u64;
    let mut availability = AvailabilityTimer::default();
    let mut power_asked = None;
    loop {
        let now = timer::now_ms();
        while let Some(b) = console::read_serial_byte() {
            for key in local.keys.feed(b, now).into_iter().flatten() {
                local.key(key, &mut network, now);
            }
            last_activity = now;
        }
        if let Some(key) = local.keys.tick(now) {
            local.key(key, &mut network, now);
        }
        // Keyboards are polled every few milliseconds, not on every pass: the busy loop serving the
        // network would otherwise spend its time reading their registers.
        if now.saturating_sub(last_keyboard_poll) >= KEYBOARD_POLL_MS {
            last_keyboard_poll = now;
            local.keyboards.poll(now, &mut typed);
        }
        for key in typed.drain(..) {
            local.key(key, &mut network, now);
            last_activity = now;
        }
        let dcui_timeout = network.host.config.dcui_timeout_minutes;
        if local.menu.tick(now, dcui_timeout) {
            kprintln!("ember: DCUI: idle time-out ({dcui_timeout} min); logged out");
            local.redraw(&network);
        }
        {
            let net = &mut network;
            // One device command of a configuration change being saved per pass.
            if net.host.poll_store() {
                last_activity = now;
            }
            // Looked at between saves only (the timer restarts whenever it answers), first thing
            // after one ends, so that a stream of other changes cannot put it off.
            if let Some(off) =
                (!net.host.saving()).then(|| availability.check(&net.host.config, now)).flatten()
            {
                let minutes = off.shell_timeout_minutes;
                let what = format!("local shell and SSH disabled: availability time-out ({minutes} min)");
                if let Err(e) = net.host.begin_commit(off, Some(what)) {
                    kprintln!("ember: ERROR: availability time-out: shell and SSH not disabled: {e}")
                }
            }
            local.after_saves(net, now);
            if net.net.poll(&mut net.host, &mut net.hostnet, now) {
                last_activity = now;
            }
            print_network_log(net);
            if let Some(what) = net.host.power_request {
                // The answer has had a moment to go out.
                let since = *power_asked.get_or_insert(now);
                if now.saturating_sub(since) > 500 {
                    kprintln!(
                        "ember: API: host {}",
                        if what == HostPower::Shutdown { "shutdown" } else { "restart" }
                    );
                    local.power(net, what);
                }
            }
            let unix = ember_net::datastores::unix_now(&net.host);
            if net.host.vms.poll(&mut net.host.disks, now, unix) {
                last_activity = now;
            }
            if net.host.vms.serve_network(&mut net.hostnet, now) {
                last_activity = now;
            }
            if let Some(notice) = net.net.take_notice() {
                local.identity.notice = notice;
                local.redraw(net);
            }
            local.keyboards.set_layout(&net.host.config.keyboard);
            if net.net.take_test_changed() && !local.menu.is_idle() {
                local.redraw(net);
            }
            // Compare without allocating (this runs on every pass of the loop); rebuild the text only
            // when what the screen shows has changed.
            let shown = (
                net.net.api.status.state,
                net.net.api.status.address,
                net.host.config.network.ipv4,
                net.host.config.network.ipv6,
                // Every committed change, a new HTTPS certificate included.
                net.host.generation,
            );
            if Some(shown) != last_shown
                || net.host.config.network.hostname != last_hostname
                || net.net.api.status.ipv6 != last_ipv6
            {
                last_shown = Some(shown);
                last_hostname.clone_from(&net.host.config.network.hostname);
                last_ipv6.clone_from(&net.net.api.status.ipv6);
                let (address, ipv6) = (console_address(net), idle_ipv6(net));
                let fingerprint = certificate_sha256(net);
                if address != local.identity.management
                    || ipv6 != local.identity.ipv6
                    || fingerprint != local.identity.certificate_sha256
                {
                    local.identity.management = address;
                    local.identity.ipv6 = ipv6;
                    local.identity.certificate_sha256 = fingerprint;
                    if local.menu.is_idle() {
                        show_idle_screen(&local.identity);
                    }
                }
            }
        }
        // A pending Esc needs the decoder's time-out even without further input.
        if now.saturating_sub(last_activity) > BUSY_POLL_MS && !local.keys.pending() {
            cpu::wait_for_interrupt();
        } else {
            core::hint::spin_loop();
        }
    }
}
