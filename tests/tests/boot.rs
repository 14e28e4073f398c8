//! Boot the real image the way a user does and check what the consoles show.
#![forbid(unsafe_code)]

use ember_systests::*;
use std::time::Duration;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Panics naming the first of `wants` that `text` (what a person sees in `place`) lacks.
fn assert_shows(place: &str, text: &str, wants: &[&str]) {
    for want in wants {
        assert!(text.contains(want), "{place} lacks {want:?}:\n{text}");
    }
}

/// What the idle screen shows for the default 2-CPU, 512 MiB test VM (key bar excluded).
fn idle_screen_lines() -> Vec<String> {
    [
        format!("Ember {VERSION} (build "),
        "QEMU Standard PC (Q35 + ICH9, 2009)".into(),
        "2 x AMD EPYC Processor".into(),
        "0.5 GiB Memory".into(),
        "To manage this host, go to:".into(),
        "no management network".into(),
    ]
    .into()
}

fn assert_key_bar_last(screen: &str) {
    let last = screen.trim_end().lines().last().unwrap_or("");
    assert!(
        last.starts_with("<F2> Customize System/View Logs") && last.ends_with("<F12> Shut Down/Restart"),
        "the key bar is not the last line:\n{screen}"
    );
}

/// Boots from `disk` with `cpus` CPUs and checks the one boot line: CPU count and usable memory.
fn boot_line_case(name: &str, disk: Disk, cpus: u32) {
    boot_line_with_memory(name, disk, cpus, 256 * cpus.max(2));
}

fn boot_line_with_memory(name: &str, disk: Disk, cpus: u32, memory_mib: u32) {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let mut cfg = QemuConfig::new(name, &img);
    cfg.disk = disk;
    cfg.cpus = cpus;
    cfg.memory_mib = memory_mib;
    let mut q = Qemu::start(&cfg);
    let line = q.wait_for(" booted: ", BOOT_TIMEOUT);
    let (n, mib) = parse_boot_line(&line).unwrap_or_else(|| panic!("malformed boot line {line:?}"));
    assert!(line.starts_with(&format!("Ember {VERSION} booted: ")), "{line:?}");
    assert_eq!(n, cpus, "CPU count in {line:?}");
    // Firmware keeps a little RAM for itself: usable memory is below, and close to, what QEMU gives.
    assert!(
        mib <= memory_mib as u64 && mib >= memory_mib as u64 * 9 / 10,
        "{mib} MiB of {memory_mib} in {line:?}"
    );
    // The idle screen follows; by then the boot line must have been printed exactly once.
    q.wait_for("<F12> Shut Down/Restart", BOOT_TIMEOUT);
    assert_eq!(q.text().matches(" booted: ").count(), 1, "exactly one boot line");
}

macro_rules! boot_matrix {
    ($($name:ident: $disk:expr, $cpus:expr;)*) => {$(
        #[test]
        fn $name() {
            boot_line_case(stringify!($name), $disk, $cpus);
        }
    )*};
}

boot_matrix! {
    usb_stick_1_cpu: Disk::Usb, 1;
    usb_stick_2_cpus: Disk::Usb, 2;
    usb_stick_4_cpus: Disk::Usb, 4;
    nvme_1_cpu: Disk::Nvme, 1;
    nvme_2_cpus: Disk::Nvme, 2;
    nvme_4_cpus: Disk::Nvme, 4;
    virtio_1_cpu: Disk::Virtio, 1;
    virtio_2_cpus: Disk::Virtio, 2;
    virtio_4_cpus: Disk::Virtio, 4;
}

/// RAM above 4 GiB (the identity map and the memory count must reach it) and more CPUs than the
/// emulator host has cores.
#[test]
fn usb_stick_8_cpus_6_gib() {
    boot_line_with_memory("usb_stick_8_cpus_6_gib", Disk::Usb, 8, 6144);
}

/// The idle screen as a person sees it on an 80x24 serial terminal, and a redraw on request.
#[test]
fn idle_screen_on_serial_console() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let mut q = Qemu::start(&QemuConfig::new("idle_screen", &img));
    q.wait_for("<F12> Shut Down/Restart", BOOT_TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    let screen = q.screen(24, 80);
    let lines = idle_screen_lines();
    let wants: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_shows("serial idle screen", &screen, &wants);
    assert_key_bar_last(&screen);

    // The monitor shows the same screen: read the framebuffer back into text.
    let fb = q.framebuffer_text("idle");
    assert_shows("framebuffer idle screen", &fb, &wants);
    assert_key_bar_last(&fb);

    // Ctrl-L redraws the screen (keys reach the appliance).
    q.send(b"\x0c");
    q.wait_for("To manage this host, go to:", BOOT_TIMEOUT);
    // Garbage on the serial line does not break anything; Enter still redraws.
    q.send(b"\x1b[\x1bO\xff\x00zz\x1b[99~");
    q.send(b"\r");
    q.wait_for("To manage this host, go to:", BOOT_TIMEOUT);

    // Without any NIC the DCUI still logs in (the configuration service runs without a network).
    q.send(b"\x1bOQ");
    q.wait_for_screen("Authentication Required on", BOOT_TIMEOUT);
    q.send(b"ember-initial\r");
    q.wait_for_screen("System Customization", BOOT_TIMEOUT);
}

/// The boot log on the serial console shows the bring-up steps with real values.
#[test]
fn a_cpu_without_svm_is_reported_and_the_host_still_boots() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let mut cfg = QemuConfig::new("no_svm", &img);
    cfg.cpu = "EPYC,-svm".into();
    let mut q = Qemu::start(&cfg);
    q.wait_for(" booted: ", BOOT_TIMEOUT);
    q.wait_for(
        "ember: no hardware virtualization: the CPU offers no hardware virtualization (neither SVM nor VMX); \
         virtual machines cannot run on this host",
        BOOT_TIMEOUT,
    );
    q.wait_for("<F12> Shut Down/Restart", BOOT_TIMEOUT);
}

#[test]
fn boot_log_reports_hardware() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let mut cfg = QemuConfig::new("boot_log", &img);
    cfg.cpus = 2;
    let mut q = Qemu::start(&cfg);
    q.wait_for(" booted: ", BOOT_TIMEOUT);
    // The hypervisor's hardware: SVM enabled and VMRUN checked by running a probe guest.
    let svm = q.wait_for("ember: SVM ready on 2 of 2 CPUs: nested paging, ", BOOT_TIMEOUT);
    let want = "VMRUN verified: 64-bit probe guest read CPUID leaf 0x40000100, wrote and read back an \
                MSR, got #UD for CLGI, and printed \"EmberEmberHV!U\" on its COM1 (19 exits)";
    assert!(svm.contains(want), "{svm}");
    let log = q.text();
    assert_shows(
        "boot log",
        &log,
        &[
            "ember: ACPI tables: FACP APIC HPET MCFG",
            "ember: MADT: 2 CPUs (2 enabled), local APIC at 0xfee00000",
            "ember: HPET at 0xfed00000",
            "ember: MCFG: segment 0 buses 0-255 at 0xb0000000",
            "ember: 2 of 2 CPUs listed in the MADT are running",
            "ember: pci 0000:00:00.0 8086:29c0 host bridge",
            "ember: pci 0000:00:02.0 1b36:000d USB controller",
            "ember: own page tables active",
            "ember: FADT reset register: Io { port: 3321, value: 15 }",
            "ember: timer tick verified: ",
            "ember: no iBFT (not booted from iSCSI)",
        ],
    );
    assert!(
        log.contains("ember: TSC ") && log.contains("(calibrated against the HPET); tick 100 Hz"),
        "timer calibration missing"
    );
}

/// Each provoked CPU exception produces the report and stops the machine cleanly.
fn exception_case(name: &str, selftest: &str, first_line: &str, more: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[&format!("ember.selftest={selftest}"), "ember.debugexit"]);
    let mut q = Qemu::start(&QemuConfig::new(name, &img));
    q.wait_for(" booted: ", BOOT_TIMEOUT);
    let line = q.wait_for("*** CPU EXCEPTION", BOOT_TIMEOUT);
    assert_eq!(line.trim(), first_line);
    q.wait_for("System halted.", BOOT_TIMEOUT);
    let text = q.text();
    assert_shows(
        "exception report",
        &text,
        &["RIP 0x", "RSP 0x", "CR2 0x", "RAX 0x", "stack:\r\n  [rsp+0x000] 0x"],
    );
    assert_shows("exception report", &text, more);
    // isa-debug-exit: status 0x10 becomes QEMU exit code 0x21.
    assert_eq!(q.wait_exit(BOOT_TIMEOUT), 33);
}

#[test]
fn page_fault_report() {
    exception_case(
        "exception_pf",
        "pagefault",
        "*** CPU EXCEPTION on CPU 0: #PF Page Fault (vector 14)",
        &["error code 0x0 (page not present on read in kernel mode)", "CR2 0x00007fdead000000"],
    );
}

#[test]
fn divide_error_report() {
    exception_case("exception_de", "divide", "*** CPU EXCEPTION on CPU 0: #DE Divide Error (vector 0)", &[]);
}

#[test]
fn invalid_opcode_report() {
    exception_case(
        "exception_ud",
        "invalid-opcode",
        "*** CPU EXCEPTION on CPU 0: #UD Invalid Opcode (vector 6)",
        &[],
    );
}

#[test]
fn general_protection_report() {
    exception_case(
        "exception_gp",
        "gpfault",
        "*** CPU EXCEPTION on CPU 0: #GP General Protection (vector 13)",
        &["error code 0xfff8"],
    );
}

/// Without `ember.debugexit` the machine stays halted and the monitor shows the same report.
#[test]
fn exception_report_on_framebuffer() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &["ember.selftest=pagefault"]);
    let mut q = Qemu::start(&QemuConfig::new("exception_fb", &img));
    q.wait_for("System halted.", BOOT_TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    let fb = q.framebuffer_text("report");
    assert_shows(
        "framebuffer report",
        &fb,
        &[
            "*** CPU EXCEPTION on CPU 0: #PF Page Fault (vector 14)",
            "CR2 0x00007fdead000000",
            "System halted.",
        ],
    );
}

/// Reboot through the FADT reset register: with -no-reboot QEMU exits instead of resetting.
#[test]
fn reboot_resets_the_machine() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &["ember.selftest=reboot"]);
    let mut cfg = QemuConfig::new("reboot", &img);
    cfg.extra = vec!["-no-reboot".into()];
    let mut q = Qemu::start(&cfg);
    q.wait_for(" booted: ", BOOT_TIMEOUT);
    q.wait_for("ember: restarting the system", BOOT_TIMEOUT);
    assert_eq!(q.wait_exit(BOOT_TIMEOUT), 0, "QEMU should exit on the guest reset");
}

/// Timer calibration uses the HPET, the 8254 PIT on machines without one, and the appliance still boots
/// (without a tick, polling its console) when neither exists.
fn timer_reference_case(name: &str, machine: &str, want: &str) {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let mut cfg = QemuConfig::new(name, &img);
    cfg.machine = machine.into();
    let mut q = Qemu::start(&cfg);
    q.wait_for(want, BOOT_TIMEOUT);
    let line = q.wait_for(" booted: ", BOOT_TIMEOUT);
    assert_eq!(parse_boot_line(&line).map(|(n, _)| n), Some(2), "{line}");
    // The console answers keys with or without a tick.
    q.wait_for("<F12> Shut Down/Restart", BOOT_TIMEOUT);
    q.send(b"\x0c");
    q.wait_for("To manage this host, go to:", BOOT_TIMEOUT);
}

#[test]
fn boots_without_pit() {
    timer_reference_case("no_pit", "q35,pit=off", "(calibrated against the HPET); tick 100 Hz");
}

#[test]
fn boots_without_hpet() {
    timer_reference_case("no_hpet", "q35,hpet=off", "(calibrated against the PIT); tick 100 Hz");
}

#[test]
fn boots_without_pit_or_hpet() {
    timer_reference_case(
        "no_pit_no_hpet",
        "q35,pit=off,hpet=off",
        "ember: WARNING: no usable timer reference (PIT, HPET); timer calibration skipped, no tick",
    );
}

/// The by-signature ACPI lookup finds a table the acpi crate does not know: an iBFT injected by QEMU.
#[test]
fn ibft_is_found_by_signature() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    // A minimal iBFT: the 48-byte ACPI header (REFERENCE.md 4) and an empty control structure area.
    let mut t = Vec::new();
    t.extend_from_slice(b"iBFT");
    t.extend_from_slice(&64u32.to_le_bytes());
    t.extend_from_slice(&[1, 0]);
    t.extend_from_slice(b"EMBERTTESTIBFT");
    t.resize(64, 0);
    t[9] = 0u8.wrapping_sub(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)));
    let table = dir.path().join("ibft.bin");
    std::fs::write(&table, &t).unwrap();
    let mut cfg = QemuConfig::new("ibft", &img);
    cfg.extra = vec!["-acpitable".into(), format!("file={}", table.display())];
    let mut q = Qemu::start(&cfg);
    let tables = q.wait_for("ember: ACPI tables: ", BOOT_TIMEOUT);
    assert!(tables.contains(" iBFT"), "{tables}");
    q.wait_for("ember: iBFT present (64 bytes): firmware booted from iSCSI", BOOT_TIMEOUT);
    q.wait_for(" booted: ", BOOT_TIMEOUT);
}

/// `console=com2` moves the console; unknown boot options are reported, not fatal.
#[test]
fn console_on_com2_and_unknown_options() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &["console=com2", "frobnicate=1"]);
    let mut cfg = QemuConfig::new("com2", &img);
    cfg.console_port = 2;
    let mut q = Qemu::start(&cfg);
    q.wait_for("ember: boot options: console=com2 frobnicate=1", BOOT_TIMEOUT);
    q.wait_for("ember: WARNING: unknown boot option `frobnicate=1` ignored", BOOT_TIMEOUT);
    q.wait_for(" booted: ", BOOT_TIMEOUT);
}

/// A boot.cfg edited by hand into an invalid state: the error names the file, line and option, and
/// the appliance still boots on default options.
#[test]
fn invalid_boot_cfg_is_reported_and_defaults_used() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let cfg_file = dir.path().join("boot.cfg");
    std::fs::write(&cfg_file, "title=Ember\n\nkernelopt=console=com9\n").unwrap();
    let status = std::process::Command::new("mcopy")
        .args([
            "-o",
            "-i",
            &format!("{}@@1M", img.display()),
            cfg_file.to_str().unwrap(),
            "::/EFI/ember/boot.cfg",
        ])
        .status()
        .expect("mcopy (mtools; run scripts/setup)");
    assert!(status.success());
    let mut q = Qemu::start(&QemuConfig::new("bad_boot_cfg", &img));
    q.wait_for(
        "ember: ERROR: \\EFI\\ember\\boot.cfg:line 3: boot option `console`: expected com1 or com2; using default boot options",
        BOOT_TIMEOUT,
    );
    q.wait_for(" booted: ", BOOT_TIMEOUT);
}
