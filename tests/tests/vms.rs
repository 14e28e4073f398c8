//! Virtual machines, as an administrator runs them: an unmodified Debian kernel with a busybox
//! initramfs (built by `scripts/guest-fixtures` into `target/guest/`) is put into the image with
//! `ember-image build --vm` (which puts them on a datastore in the image's free space, registered at
//! first boot), the appliance boots from a USB stick with two CPUs, and the VMs are
//! watched and driven through the API: the guest's userspace marker in its console, a guest that
//! reads its virtio disk (checksum), writes it, reboots, reads the write back and powers itself
//! off, the serial console over TCP both ways, SMP guests (2 vCPUs, and 4 on the one CPU left for
//! VMs), one that triple-faults (stopped with its reason while the other keeps running), reset, stop
//! and start through the API, and the disk write still there after a power cut and a new boot of
//! the host, the datastore on the boot media checking clean.
//! A second image holds the hostile-guest suite: a guest that abuses every device of its VM while
//! another VM keeps printing and the API keeps answering.
#![forbid(unsafe_code)]

use ember_systests::net::*;
use ember_systests::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: (&str, &str) = ("root", "ember-initial");
/// A nested Linux boot under TCG takes tens of seconds; several share one CPU here.
const GUEST_TIMEOUT: Duration = Duration::from_secs(420);
const MARKER: &str = "EMBER-GUEST: userspace reached";
/// The `stay` VM's serial console port on the management interface.
const CONSOLE_PORT: u16 = 9101;

fn fixtures() -> PathBuf {
    let dir = workspace().join("target/guest");
    assert!(
        dir.join("vmlinuz").exists() && dir.join("initramfs.gz").exists(),
        "guest fixtures missing in {}: run scripts/guest-fixtures (scripts/test does)",
        dir.display()
    );
    dir
}

/// Writes a VM directory (definition with its vCPUs and MiB of RAM, and its files, a disk image and
/// console port if given) under `root`; returns the definition's path.
fn vm_dir(
    root: &Path,
    name: &str,
    (vcpus, memory_mib): (u32, u32),
    cmdline: &str,
    autostart: bool,
    disk: Option<&[u8]>,
    console_port: Option<u16>,
) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let fx = fixtures();
    std::fs::copy(fx.join("vmlinuz"), dir.join("vmlinuz")).unwrap();
    std::fs::copy(fx.join("initramfs.gz"), dir.join("initrd.gz")).unwrap();
    let mut disks = Vec::new();
    if let Some(d) = disk {
        std::fs::write(dir.join("disk.img"), d).unwrap();
        disks.push(serde_json::json!({"file": "disk.img", "readonly": false}));
    }
    let def = serde_json::json!({
        "name": name, "vcpus": vcpus, "memory_mib": memory_mib, "kernel": "vmlinuz",
        "initrd": "initrd.gz", "cmdline": cmdline, "autostart": autostart, "disks": disks,
        "console_port": console_port,
    });
    let path = dir.join("vm.json");
    std::fs::write(&path, def.to_string()).unwrap();
    path
}

/// Boots `cfg` with one NIC of `model` on QEMU's user network, the API forwarded to a free port
/// here; returns QEMU and the API's address once it answers.
fn boot_with_api(mut cfg: QemuConfig, model: &str) -> (Qemu, SocketAddr) {
    let port = free_port();
    cfg.nics = vec![NicSpec::new(model, &format!("user,hostfwd=tcp:127.0.0.1:{port}-:443"))];
    let q = Qemu::start(&cfg);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_http(addr, BOOT_TIMEOUT);
    (q, addr)
}

/// Gives the VM whose definition is at `def` the NICs `nics` (a JSON list).
fn set_nics(def: &Path, nics: Value) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(def).unwrap()).unwrap();
    v["nics"] = nics;
    std::fs::write(def, v.to_string()).unwrap();
}

/// An image with the VMs of `defs` (and `boot_options`); returns it and what `ember-image build`
/// printed.
fn image_with_vms(dir: &Path, defs: &[PathBuf], boot_options: &[&str]) -> (PathBuf, String) {
    let out = dir.join("ember.img");
    let efi = efi_path();
    let mut args = vec!["build", "--out", out.to_str().unwrap(), "--efi", efi.to_str().unwrap()];
    for d in defs {
        args.extend(["--vm", d.to_str().unwrap()]);
    }
    for o in boot_options {
        args.extend(["--boot-option", o]);
    }
    let (ok, stdout, stderr) = run_tool(&args);
    assert!(ok, "ember-image build --vm failed:\n{stdout}\n{stderr}");
    (out, stdout)
}

/// Reads the TCP console into `seen` until it contains `want`.
fn read_until(tcp: &mut TlsStream, seen: &mut String, want: &str) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while !seen.contains(want) {
        assert!(start.elapsed() < GUEST_TIMEOUT, "{want:?} not on the TCP console; it showed:\n{seen}");
        match std::io::Read::read(tcp, &mut buf) {
            Ok(0) => panic!("the TCP console closed; it showed:\n{seen}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("TCP console: {e}"),
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

fn vm(addr: SocketAddr, name: &str) -> Value {
    let r = request(addr, "GET", &format!("/api/v1/vms/{name}"), Some(ROOT), None);
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

fn console(addr: SocketAddr, name: &str) -> String {
    let r = request(addr, "GET", &format!("/api/v1/vms/{name}/console"), Some(ROOT), None);
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

/// Whether the console shows a heartbeat of the `stay` guest after its last userspace marker (its
/// init starts acpid between the two: a power button pressed before then is not heard).
fn heartbeat_since_marker(console: &str) -> bool {
    console.rsplit_once(MARKER).is_some_and(|(_, after)| after.contains("EMBER-GUEST: alive"))
}

/// Polls until `check` holds for the VM (its JSON and console), or fails with both.
fn wait_vm(
    addr: SocketAddr,
    name: &str,
    what: &str,
    check: impl Fn(&Value, &str) -> bool,
) -> (Value, String) {
    let start = Instant::now();
    loop {
        let (v, c) = (vm(addr, name), console(addr, name));
        if check(&v, &c) {
            return (v, c);
        }
        if start.elapsed() > GUEST_TIMEOUT {
            let tail: String = c.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("VM {name}: {what} did not happen within {GUEST_TIMEOUT:?}\nstatus: {v}\nconsole tail:\n{tail}");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn linux_guests_run_power_off_reboot_fault_and_are_stopped_and_started() {
    let dir = tempfile::tempdir().unwrap();
    // A 2 MiB disk: a known first MiB (its SHA-256 is what the guest must read), then zeros.
    let mut disk: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    disk.resize(2 << 20, 0);
    let sha = sha256_hex(&disk[..1 << 20]);
    let defs = [
        vm_dir(
            dir.path(),
            "stay",
            (2, 192),
            "console=ttyS0 ember.action=stay",
            true,
            None,
            Some(CONSOLE_PORT),
        ),
        vm_dir(dir.path(), "off", (1, 160), "console=ttyS0 ember.action=write", true, Some(&disk), None),
        vm_dir(
            dir.path(),
            "fault",
            (4, 160),
            "console=ttyS0 reboot=t ember.action=triplefault",
            false,
            None,
            None,
        ),
    ];
    // A VM that cannot start: its kernel is no bzImage.
    let mut defs = defs.to_vec();
    let d = dir.path().join("badkern");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("vmlinuz"), vec![0u8; 4096]).unwrap();
    let def = serde_json::json!({"name": "badkern", "vcpus": 1, "memory_mib": 64, "kernel": "vmlinuz"});
    std::fs::write(d.join("vm.json"), def.to_string()).unwrap();
    defs.push(d.join("vm.json"));
    let (out, stdout) = image_with_vms(dir.path(), &defs, &[]);
    assert!(stdout.contains("VM stay: 3 files in [datastore1] stay/, registered at first boot"), "{stdout}");

    let port = free_port();
    let console_port = free_port();
    let mut cfg = QemuConfig::new("vms", &out);
    cfg.memory_mib = 1024;
    let forwards = format!(
        "user,hostfwd=tcp:127.0.0.1:{port}-:443,hostfwd=tcp:127.0.0.1:{console_port}-:{CONSOLE_PORT}"
    );
    cfg.nics = vec![NicSpec::new("virtio-net-pci", &forwards)];
    let unix_now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let booted = unix_now();
    let mut q = Qemu::start(&cfg);
    q.wait_for("ember: first boot: VM [datastore1] stay/stay.json joins the inventory", BOOT_TIMEOUT);
    q.wait_for("ember: VM stay: started (autostart)", BOOT_TIMEOUT);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_http(addr, BOOT_TIMEOUT);
    // The VMs' datastore is in the boot media's free space.
    let disks = request(addr, "GET", "/api/v1/disks", Some(ROOT), None).json();
    assert_eq!(disks["disks"][0]["used_by"], "boot media and datastore \"datastore1\"", "{disks}");

    let list = request(addr, "GET", "/api/v1/vms", Some(ROOT), None).json();
    let names: Vec<&str> =
        list["vms"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["stay", "off", "fault", "badkern"], "in the inventory's order");
    let r = request(addr, "POST", "/api/v1/vms/badkern/start", Some(ROOT), None);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("kernel vmlinuz: "), "the kernel is named: {r:?}");
    assert_eq!(vm(addr, "badkern")["state"].as_str(), Some("stopped"), "nothing changed");

    // Two autostarted guests (2 vCPUs and 1) share the second CPU: both reach userspace, the first
    // with both its CPUs online; one powers off.
    let (stay, c) = wait_vm(addr, "stay", "the userspace marker", |_, c| c.contains("EMBER-GUEST: alive"));
    assert!(c.contains("Linux version 6."), "an unmodified Debian kernel booted:\n{c}");
    assert!(c.contains(&format!("{MARKER}, nproc=2, action=stay")), "{c}");
    // The guest found Ember's paravirtual clock by itself and reads time without exits, and its
    // clocksource watchdog had nothing to say.
    for l in c.lines().filter(|l| ["clocksource", "kvm-clock", "tsc:"].iter().any(|w| l.contains(w))) {
        eprintln!("guest: {l}");
    }
    assert!(c.contains("EMBER-GUEST: clocksource kvm-clock "), "{c}");
    // Its time of day (from the paravirtual wall clock, which Ember took from the firmware's RTC,
    // which QEMU sets from this machine's clock) is this machine's: between the boot and now.
    let date: u64 = c
        .lines()
        .find_map(|l| l.split_once("EMBER-GUEST: alive ")?.1.split_once(" date ")?.1.trim().parse().ok())
        .unwrap_or_else(|| panic!("no time of day in the heartbeat:\n{c}"));
    assert!((booted.saturating_sub(2)..=unix_now() + 2).contains(&date), "{date} not in {booted}..now");
    assert!(c.contains("kvm-clock: Using msrs 4b564d01 and 4b564d00"), "{c}");
    for complaint in ["timekeeping watchdog", "Marking clocksource", "due to clocksource watchdog"] {
        assert!(!c.contains(complaint), "{complaint}:\n{c}");
    }
    assert_eq!((stay["state"].as_str(), stay["vcpus"].as_u64()), (Some("running"), Some(2)));
    assert!(stay["exits"].as_u64().unwrap() > 1000 && stay["interrupts"].as_u64().unwrap() > 10, "{stay}");
    let by_kind: u64 = stay["exit_counts"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert!(by_kind > 0 && stay["exit_counts"]["io"].as_u64() > Some(0), "{stay}");
    // Its serial console over TCP (TLS, with the API's certificate) asks for the root password
    // first: a wrong one shows nothing of the console; then the kept output, then live; a line
    // typed reaches the guest.
    let mut tcp =
        tls_connect(SocketAddr::from(([127, 0, 0, 1], console_port)), Duration::from_secs(5)).unwrap();
    let mut seen = String::new();
    read_until(&mut tcp, &mut seen, "root password: ");
    let host = request(addr, "GET", "/api/v1/host", Some(ROOT), None).json();
    assert_eq!(tcp.certificate_sha256().as_deref(), host["certificate_sha256"].as_str());
    std::io::Write::write_all(&mut tcp, b"not-the-password\r\n").unwrap();
    read_until(&mut tcp, &mut seen, "Login incorrect.");
    assert!(!seen.contains("EMBER-GUEST"), "nothing of the console before the password: {seen}");
    std::thread::sleep(Duration::from_millis(1100)); // the per-source budget of password checks
    std::io::Write::write_all(&mut tcp, format!("{}\r\n", ROOT.1).as_bytes()).unwrap();
    read_until(&mut tcp, &mut seen, MARKER);
    std::io::Write::write_all(&mut tcp, b"hello from tcp\n").unwrap();
    read_until(&mut tcp, &mut seen, "EMBER-GUEST: got hello from tcp");
    drop(tcp);
    let overhead = stay["overhead_bytes"].as_u64().unwrap();
    assert!(overhead > 0 && overhead < 1 << 20, "hypervisor memory per VM: {overhead} bytes");
    // The other reads its virtio disk (checksum), writes it, reboots, reads the write back and
    // powers off.
    let (off, c) =
        wait_vm(addr, "off", "write, reboot, read back, power-off", |v, _| v["state"] == "stopped");
    assert!(c.contains(&format!("{MARKER}, nproc=1, action=write")), "{c}");
    assert_eq!(c.matches(&format!("EMBER-GUEST: vda sha256 {sha}")).count(), 2, "read on both boots:\n{c}");
    assert!(c.contains("EMBER-GUEST: wrote vda, rebooting"), "{c}");
    assert!(c.contains("EMBER-GUEST: after reboot vda says EMBER-WRITTEN"), "{c}");
    assert_eq!(off["resets"].as_u64(), Some(1), "the guest's reboot: {off}");
    assert_eq!(off["exit_reason"].as_str(), Some("the guest powered off"), "{off}");

    // A 4-vCPU guest boots on the one CPU left for VMs (next to the 2-vCPU one) with all four
    // online; its triple fault stops it with its reason; the other guest keeps running.
    let r = request(addr, "POST", "/api/v1/vms/fault/start", Some(ROOT), None);
    assert_eq!(r.status, 200, "{r:?}");
    let (fault, c) = wait_vm(addr, "fault", "the triple fault", |v, _| v["state"] == "stopped");
    assert!(c.contains(&format!("{MARKER}, nproc=4, action=triplefault")), "{c}");
    assert!(c.contains("EMBER-GUEST: triple fault requested"), "{c}");
    let reason = fault["exit_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("guest fault on vCPU ") && reason.contains(": triple fault at guest RIP 0x"),
        "{reason}"
    );
    q.wait_for("ember: VM fault stopped: guest fault on vCPU ", BOOT_TIMEOUT);
    let before = console(addr, "stay").matches("EMBER-GUEST: alive").count();
    wait_vm(addr, "stay", "more heartbeats after the fault", |_, c| {
        c.matches("EMBER-GUEST: alive").count() > before + 1
    });

    // A reset through the API starts the guest again from its kernel.
    assert_eq!(request(addr, "POST", "/api/v1/vms/stay/reset", Some(ROOT), None).status, 200);
    // Up to a heartbeat of the new boot: its acpid runs by then (the marker comes before it).
    let (st, _) = wait_vm(addr, "stay", "a reset and a second boot", |v, c| {
        v["resets"].as_u64() >= Some(1) && c.matches(MARKER).count() >= 2 && heartbeat_since_marker(c)
    });
    assert_eq!(st["state"].as_str(), Some("running"));

    // Shut down through the API (the guest's ACPI power button: its acpid powers it off), start
    // again, power off; a stopped VM cannot be stopped again, nor a running one started.
    assert_eq!(request(addr, "POST", "/api/v1/vms/stay/start", Some(ROOT), None).status, 409);
    let r = request(addr, "POST", "/api/v1/vms/stay/stop", Some(ROOT), None);
    assert_eq!(r.status, 202, "a shutdown under way: {r:?}");
    let (st, c) = wait_vm(addr, "stay", "a shutdown", |v, _| v["state"] == "stopped");
    assert_eq!(st["exit_reason"].as_str(), Some("the guest powered off"), "{st}\n{c}");
    assert!(c.contains("EMBER-GUEST: power button pressed"), "{c}");
    assert_eq!(request(addr, "POST", "/api/v1/vms/stay/start", Some(ROOT), None).status, 200);
    wait_vm(addr, "stay", "a new run", |v, c| v["state"] == "running" && c.matches(MARKER).count() >= 3);
    let r = request(addr, "POST", "/api/v1/vms/stay/poweroff", Some(ROOT), None);
    assert_eq!((r.status, r.json()["state"].as_str()), (200, Some("stopped")), "{r:?}");
    assert_eq!(vm(addr, "stay")["exit_reason"].as_str(), Some("powered off through the API"));
    assert_eq!(request(addr, "POST", "/api/v1/vms/stay/stop", Some(ROOT), None).status, 409);
    assert_eq!(request(addr, "POST", "/api/v1/vms/stay/poweroff", Some(ROOT), None).status, 409);
    assert_eq!(request(addr, "POST", "/api/v1/vms/off/start", Some(ROOT), None).status, 200);
    // The console log keeps the runs (the last 64 KiB of output, across restarts); the disk kept
    // the write, so this run powers off at once.
    let (off, c) = wait_vm(addr, "off", "a second power-off", |v, c| {
        v["state"] == "stopped" && c.matches(MARKER).count() == 3
    });
    assert_eq!(off["exit_reason"].as_str(), Some("the guest powered off"));
    assert_eq!(c.matches("after reboot vda says EMBER-WRITTEN").count(), 2, "{c}");
    assert_eq!(request(addr, "GET", "/api/v1/vms/nope", Some(ROOT), None).status, 404);
    assert_eq!(request(addr, "POST", "/api/v1/vms/off/start", None, None).status, 401);

    // The next boot starts the autostart VMs 30 s apart.
    let r = request(addr, "PUT", "/api/v1/config", Some(ROOT), Some(r#"{"autostart_delay_seconds":30}"#));
    assert_eq!(r.status, 200, "{r:?}");

    // The disk's writes are on the boot media's datastore: after a power cut (QEMU killed) it
    // checks clean, and the host boots again and the guest finds its write on its first boot.
    drop(q);
    let (ok, fsck, err) = run_tool(&["datastore", "fsck", out.to_str().unwrap()]);
    assert!(ok && fsck.contains("clean"), "{fsck}{err}");
    let port = free_port();
    let mut cfg = QemuConfig::new("vms-again", &out);
    cfg.memory_mib = 1024;
    cfg.nics = vec![NicSpec::new("virtio-net-pci", &format!("user,hostfwd=tcp:127.0.0.1:{port}-:443"))];
    let mut q = Qemu::start(&cfg);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    q.wait_for("ember: autostart: 2 VM(s), 30 s apart", BOOT_TIMEOUT);
    wait_for_http(addr, BOOT_TIMEOUT);
    // `stay` first, `off` (the order of the inventory) once `stay` has run for the delay.
    q.wait_for("ember: VM off: started (autostart)", GUEST_TIMEOUT);
    let up = vm(addr, "stay")["uptime_seconds"].as_u64().unwrap();
    assert!(up >= 29, "off started {up} s after stay; the delay is 30 s");
    let (off, c) = wait_vm(addr, "off", "a power-off after the host restart", |v, _| v["state"] == "stopped");
    assert_eq!(off["exit_reason"].as_str(), Some("the guest powered off"), "{off}\n{c}");
    assert!(c.contains("EMBER-GUEST: after reboot vda says EMBER-WRITTEN"), "the write survived:\n{c}");
    assert_eq!(c.matches(MARKER).count(), 1, "one boot: nothing written this time\n{c}");
    assert!(c.contains(&format!("EMBER-GUEST: vda sha256 {sha}")), "the first MiB is unchanged:\n{c}");

    // A host shutdown through the API shuts the running VM down first (its ACPI power button),
    // then powers the host off.
    wait_vm(addr, "stay", "the autostarted guest's userspace", |v, c| {
        v["state"] == "running" && heartbeat_since_marker(c)
    });
    let r = request(addr, "POST", "/api/v1/host/shutdown", Some(ROOT), Some("{}"));
    assert_eq!((r.status, r.json()["running_vms"].as_u64()), (202, Some(1)), "{r:?}");
    q.wait_exit(GUEST_TIMEOUT);
    let log = q.text();
    assert!(log.contains("ember: shutting down 1 VM(s) before the host: stay"), "{log}");
    assert!(log.contains("ember: VM stay stopped: the guest powered off"), "a graceful shutdown: {log}");
    assert!(log.contains("ember: VMs shut down in"), "{log}");
}

/// The hostile-guest suite: a guest (`tests/guest/hostile.c`) abuses every device of its VM -
/// CPUID and MSR ranges, every port with the chipset's registers written at random, an 8042 that
/// is written a million times and never read, an exit storm, the APIC windows, and its virtio disk
/// driven by hand (the reproduced attack: a flush, then queue size 0 while the queue is enabled;
/// bad queue sizes, descriptors outside RAM, absurd lengths, loops, bad ring indexes, illegal
/// status changes, a notify storm), then writes the chipset's ports and COM1 at random (which may
/// wedge the guest: it is then stopped through the API) and halts. Meanwhile a second VM on the
/// same CPU keeps printing and the management API keeps answering; the hostile VM's disk device
/// still works after a reset, and the host log names what the guest's driver did wrong. A third
/// guest halts with interrupts disabled and is ended with that reason.
#[test]
fn a_hostile_guest_harms_neither_the_host_nor_another_vm() {
    let dir = tempfile::tempdir().unwrap();
    let disk = vec![0x5au8; 1 << 20];
    let defs = [
        vm_dir(dir.path(), "calm", (1, 160), "console=ttyS0 ember.action=stay", true, None, None),
        vm_dir(
            dir.path(),
            "hostile",
            (1, 160),
            // iomem=relaxed: the Debian kernel's /dev/mem otherwise refuses the APIC windows.
            "console=ttyS0 iomem=relaxed ember.action=hostile",
            false,
            Some(&disk),
            None,
        ),
        vm_dir(dir.path(), "halter", (1, 128), "console=ttyS0 ember.action=halt", false, None, None),
    ];
    let (out, _) = image_with_vms(dir.path(), &defs, &[]);
    let port = free_port();
    let mut cfg = QemuConfig::new("vms-hostile", &out);
    cfg.memory_mib = 1024;
    cfg.nics = vec![NicSpec::new("virtio-net-pci", &format!("user,hostfwd=tcp:127.0.0.1:{port}-:443"))];
    let q = Qemu::start(&cfg);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_http(addr, BOOT_TIMEOUT);
    wait_vm(addr, "calm", "the userspace marker", |_, c| c.contains("EMBER-GUEST: alive"));
    let before = console(addr, "calm").matches("EMBER-GUEST: alive").count();
    assert_eq!(request(addr, "POST", "/api/v1/vms/hostile/start", Some(ROOT), None).status, 200);

    // The API answers throughout (every poll is a request) while the guest works through its
    // phases; after them its random chipset and COM1 writes may wedge it, or it halts with
    // interrupts disabled, which ends the VM. A wedged guest is stopped through the API.
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut done_at = None;
    let hostile = loop {
        let t = Instant::now();
        let (v, c) = (vm(addr, "hostile"), console(addr, "hostile"));
        assert_eq!(request(addr, "GET", "/api/v1/host", Some(ROOT), None).status, 200);
        slowest = slowest.max(t.elapsed());
        if v["state"] == "stopped" {
            break v;
        }
        if c.contains("EMBER-HOSTILE: done;") {
            let since = *done_at.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(90) {
                let r = request(addr, "POST", "/api/v1/vms/hostile/poweroff", Some(ROOT), None);
                assert_eq!(r.status, 200, "a wedged guest is stopped: {r:?}");
            }
        }
        assert!(
            start.elapsed() < GUEST_TIMEOUT,
            "the hostile VM did not get through its phases within {GUEST_TIMEOUT:?}: {v}\n{c}"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let c = console(addr, "hostile");
    eprintln!("hostile guest: ended after {:?}; slowest API poll {slowest:?}\n{c}", start.elapsed());
    for phase in
        ["cpuid done", "msr done", "ports done", "8042 flood done", "port storm done", "apic done", "done;"]
    {
        assert!(c.contains(&format!("EMBER-HOSTILE: {phase}")), "phase {phase:?} missing:\n{c}");
    }
    assert!(c.contains("(local APIC mapped, I/O APIC mapped)"), "both APIC windows were abused:\n{c}");
    // The device refused every illegal use and still works after a reset.
    for line in [
        "virtio valid read: status register 0xf, request status 0, used 1, first byte 0x5a",
        "virtio bad queue sizes and alignment: 6 of 6 refused",
        "virtio bad descriptors: 200 submitted, 200 returned with an error or unused",
        "virtio bad ring indexes: 2 of 2 need a reset; sector 2^64-1 gives status 1",
        "virtio illegal status changes: 3 of 3 need a reset",
        "virtio notify storm and register noise done",
        "virtio after reset: status register 0xf, request status 0, first byte 0x5a",
    ] {
        assert!(c.contains(&format!("EMBER-HOSTILE: {line}")), "{line:?} missing:\n{c}");
    }
    // The reproduced attack (the flush waits for the disk's write-back, or is done at once).
    assert!(
        ["0", "238"].iter().any(|s| c.contains(&format!(
            "EMBER-HOSTILE: virtio queue size 0 while enabled: flush status {s}, needs reset 1"
        ))),
        "{c}"
    );
    let reason = hostile["exit_reason"].as_str().unwrap();
    assert!(
        reason.contains("halted with interrupts disabled") || reason == "powered off through the API",
        "{reason}"
    );
    assert!(c.matches("EMBER-HOSTILE: 8042 flood done: ").count() == 1);
    let waiting: u32 =
        c.split("8042 flood done: ").nth(1).and_then(|t| t.split(' ').next()).unwrap().parse().unwrap();
    assert!(waiting <= 16, "the 8042 kept {waiting} answers");
    assert!(
        q.text().contains(
            "ember: VM hostile: virtio disk 0 (disk.img): the driver changed a queue's configuration while the queue was enabled"
        ),
        "the host log names the driver's first violation"
    );
    // The other VM kept running and printing.
    wait_vm(addr, "calm", "more heartbeats after the hostile VM", |v, c| {
        v["state"] == "running" && c.matches("EMBER-GUEST: alive").count() > before + 2
    });
    // A guest that halts with interrupts disabled can never wake up: its VM ends with the reason.
    assert_eq!(request(addr, "POST", "/api/v1/vms/halter/start", Some(ROOT), None).status, 200);
    let (halter, _) = wait_vm(addr, "halter", "the halt", |v, _| v["state"] == "stopped");
    let reason = halter["exit_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("guest fault: the guest halted with interrupts disabled at RIP 0x"),
        "{reason}"
    );
    assert_eq!(vm(addr, "calm")["state"], "running");
}

/// A fault in the hypervisor's own code for one VM (`ember.selftest=vm-panic`: a panic on the CPU
/// running its vCPU, with its device, disk and console locks held) ends that VM as failed with the
/// reason; the CPU that ran it stops, and the management API, the DCUI, the disk write-back and the
/// other VM (on the host's other CPU for VMs) carry on.
#[test]
fn a_fault_in_one_vms_path_leaves_the_host_and_the_other_vm_running() {
    let dir = tempfile::tempdir().unwrap();
    let disk = vec![0u8; 1 << 20];
    let defs = [
        vm_dir(dir.path(), "victim", (1, 128), "console=ttyS0 ember.action=stay", true, Some(&disk), None),
        vm_dir(dir.path(), "calm", (1, 128), "console=ttyS0 ember.action=stay", true, None, None),
    ];
    let (out, _) = image_with_vms(dir.path(), &defs, &["ember.selftest=vm-panic"]);
    let port = free_port();
    let mut cfg = QemuConfig::new("vms-fault", &out);
    cfg.cpus = 3;
    cfg.memory_mib = 1024;
    cfg.nics = vec![NicSpec::new("virtio-net-pci", &format!("user,hostfwd=tcp:127.0.0.1:{port}-:443"))];
    let mut q = Qemu::start(&cfg);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_http(addr, BOOT_TIMEOUT);
    let (victim, _) = wait_vm(addr, "victim", "the injected fault", |v, _| v["state"] == "failed");
    let reason = victim["exit_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the CPU running it stopped: ") && reason.contains("ember.selftest=vm-panic"),
        "{reason}"
    );
    q.wait_for("stopped while running VM victim: ", BOOT_TIMEOUT);
    // Its console is held by the stopped CPU: the API answers anyway, and refuses to run it again.
    let t = Instant::now();
    assert_eq!(request(addr, "GET", "/api/v1/vms/victim/console", Some(ROOT), None).status, 200);
    assert!(t.elapsed() < Duration::from_secs(10), "the console request took {:?}", t.elapsed());
    for action in ["start", "stop", "reset"] {
        let r = request(addr, "POST", &format!("/api/v1/vms/victim/{action}"), Some(ROOT), None);
        assert_eq!(r.status, 409, "{action}: {r:?}");
        assert!(r.body.contains("failed"), "{r:?}");
    }
    // The other VM keeps printing, on the CPU left for VMs.
    let before = console(addr, "calm").matches("EMBER-GUEST: alive").count();
    wait_vm(addr, "calm", "heartbeats after the fault", |v, c| {
        v["state"] == "running" && c.matches("EMBER-GUEST: alive").count() > before + 2
    });
    // The DCUI answers its keys.
    q.send(b"\x1b@");
    q.wait_for_screen("Authentication Required on", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    q.send(b"\x1b");
    assert_eq!(request(addr, "GET", "/api/v1/host", Some(ROOT), None).status, 200);
}

/// A guest with 3.5 GiB of RAM: 3 GiB below the MMIO window, the rest from 4 GiB (in its e820
/// map), and Linux uses all of it.
#[test]
fn a_guest_gets_ram_above_4_gib() {
    let dir = tempfile::tempdir().unwrap();
    let defs =
        [vm_dir(dir.path(), "big", (1, 3584), "console=ttyS0 ember.action=poweroff", true, None, None)];
    let (out, _) = image_with_vms(dir.path(), &defs, &[]);
    let port = free_port();
    let mut cfg = QemuConfig::new("vms-big", &out);
    // q35 puts RAM beyond 2 GiB above 4 GiB: 6 GiB there, room for 3.5 GiB in one run.
    cfg.memory_mib = 8192;
    cfg.nics = vec![NicSpec::new("virtio-net-pci", &format!("user,hostfwd=tcp:127.0.0.1:{port}-:443"))];
    let _q = Qemu::start(&cfg);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_http(addr, BOOT_TIMEOUT);
    let (v, c) = wait_vm(addr, "big", "the power-off", |v, _| v["state"] == "stopped");
    assert_eq!(v["exit_reason"], "the guest powered off", "{v}\n{c}");
    assert!(c.contains("BIOS-e820: [mem 0x0000000100000000-0x000000011fffffff] usable"), "{c}");
    let kb: u64 = c
        .lines()
        .find_map(|l| l.split("EMBER-GUEST: memory ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no memory line:\n{c}"));
    assert!(kb > 3 << 20, "Linux uses more than 3 GiB: {kb} kB");
}

/// Issue 18: a VM with a virtio NIC on "VM Network" of `vSwitch0`, whose uplink is the host's
/// management NIC (QEMU user networking): the guest gets an address from the LAN's DHCP server
/// (the broadcast goes out of the uplink, the answer comes back to its MAC), pings the LAN's
/// gateway (10.0.2.2) and the host's own management interface (vmk0, 10.0.2.15: VM to vmk0
/// inside the switch), sends a line to a TCP server on this machine, and the API shows the NIC
/// with the address Ember made for it and the
/// switch's ports with their counters. Once with a virtio-net uplink, once with an e1000e one
/// (which drops frames for other MACs unless the switch makes it promiscuous).
#[test]
fn a_guest_nic_on_the_vm_network_gets_an_address_and_reaches_the_lan_and_the_host() {
    let dir = tempfile::tempdir().unwrap();
    // A TCP server on this machine, which QEMU's user network shows the LAN as 10.0.2.2.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = server.local_addr().unwrap().port();
    let cmdline =
        format!("console=ttyS0 ember.action=net ember.ping=10.0.2.2,10.0.2.15 ember.tcp=10.0.2.2:{tcp_port}");
    let def = vm_dir(dir.path(), "net1", (1, 128), &cmdline, false, None, None);
    set_nics(&def, serde_json::json!([{"portgroup": "VM Network"}]));
    let (out, _) = image_with_vms(dir.path(), &[def], &[]);
    for model in ["virtio-net-pci", "e1000e"] {
        let (q, addr) = boot_with_api(QemuConfig::new(&format!("vms-net-{model}"), &out), model);
        let nic = vm(addr, "net1")["nics"][0].clone();
        assert_eq!(
            (nic["portgroup"].as_str(), nic["connected"].as_bool()),
            (Some("VM Network"), Some(true)),
            "{nic}"
        );
        let mac = nic["mac"].as_str().unwrap().to_string();
        assert!(mac.starts_with("02:45:4d:"), "a made address: {nic}");
        // The server takes one line and closes the connection (the guest's nc ends then).
        let listener = server.try_clone().unwrap();
        let (tx, got) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Ok((conn, _)) = listener.accept() {
                conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut line = String::new();
                let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(&conn), &mut line);
                let _ = tx.send(line);
            }
        });
        // Started once the host has its address (the guest pings it).
        let r = request(addr, "POST", "/api/v1/vms/net1/start", Some(ROOT), Some("{}"));
        assert_eq!(r.status, 200, "{r:?}");
        let (v, c) = wait_vm(addr, "net1", "the network checks", |v, _| v["state"] == "stopped");
        assert_eq!(v["exit_reason"], "the guest powered off", "{model}: {v}\n{c}");
        assert!(c.contains(&format!("EMBER-GUEST: eth0 {mac}")), "{model}: the guest sees its MAC:\n{c}");
        assert!(
            c.contains("EMBER-GUEST: dhcp 10.0.2."),
            "{model}: an address from the LAN's DHCP server:\n{c}"
        );
        assert!(
            c.contains("EMBER-GUEST: ping 10.0.2.2 ok (3 replies)"),
            "{model}: the LAN's gateway answers:\n{c}"
        );
        assert!(
            c.contains("EMBER-GUEST: ping 10.0.2.15 ok (3 replies)"),
            "{model}: the host's vmk0 answers:\n{c}"
        );
        // The line the guest sent reached the server here.
        let line = got.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        assert_eq!(line.trim(), format!("EMBER-TCP hello from {mac}"), "{model}:\n{c}");
        // The switch: its uplink and vmk0 with counters; the VM's port gone with the VM.
        std::thread::sleep(Duration::from_secs(2));
        let r = request(addr, "GET", "/api/v1/network/switches", Some(ROOT), None);
        assert_eq!(r.status, 200, "{r:?}");
        let sw = &r.json()["switches"][0];
        let names: Vec<&str> =
            sw["ports"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
        assert_eq!(names, ["vmnic0", "vmk0"], "{sw}");
        assert!(sw["ports"][1]["counters"]["packets_received"].as_u64() > Some(10), "{sw}");
        assert!(!q.text().contains("PANIC"), "{}", q.text());
    }
}

/// Issue 18: two VMs on "VM Network" with static addresses ping each other through the switch
/// (unicast between two VM ports, ARP broadcasts to both), while the host's management interface
/// keeps answering; each NIC's given MAC is the one its guest sees.
#[test]
fn two_guests_on_the_vm_network_reach_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut defs = Vec::new();
    for (name, me, peer, mac) in [
        ("peer-a", "10.0.2.50", "10.0.2.51", "00:50:56:3f:00:0a"),
        ("peer-b", "10.0.2.51", "10.0.2.50", "00:50:56:3f:00:0b"),
    ] {
        let cmdline =
            format!("console=ttyS0 ember.action=net ember.ip={me}/24 ember.ping={peer} ember.linger=30");
        let def = vm_dir(dir.path(), name, (1, 128), &cmdline, true, None, None);
        set_nics(&def, serde_json::json!([{"portgroup": "VM Network", "mac": mac}]));
        defs.push((name, peer, mac, def));
    }
    let paths: Vec<PathBuf> = defs.iter().map(|d| d.3.clone()).collect();
    let (out, _) = image_with_vms(dir.path(), &paths, &[]);
    let (q, addr) = boot_with_api(QemuConfig::new("vms-peers", &out), "virtio-net-pci");
    for (name, peer, mac, _) in &defs {
        let (v, c) = wait_vm(addr, name, "the pings", |v, _| v["state"] == "stopped");
        assert_eq!(v["exit_reason"], "the guest powered off", "{name}: {v}\n{c}");
        assert!(c.contains(&format!("EMBER-GUEST: eth0 {mac}")), "{name}:\n{c}");
        assert!(
            c.contains(&format!("EMBER-GUEST: ping {peer} ok (3 replies)")),
            "{name} reaches its peer:\n{c}"
        );
    }
    assert_eq!(request(addr, "GET", "/api/v1/host", Some(ROOT), None).status, 200);
    assert!(!q.text().contains("PANIC"), "{}", q.text());
}

/// Issue 18: a running VM's NIC is disconnected and connected again through the API (its switch
/// port's link follows), and a NIC it does not have is refused.
#[test]
fn a_running_vms_nic_is_disconnected_and_connected_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let def = vm_dir(dir.path(), "linked", (1, 128), "console=ttyS0 ember.action=stay", true, None, None);
    set_nics(&def, serde_json::json!([{"portgroup": "VM Network"}]));
    let (out, _) = image_with_vms(dir.path(), &[def], &[]);
    let (q, addr) = boot_with_api(QemuConfig::new("vms-nic-link", &out), "virtio-net-pci");
    wait_vm(addr, "linked", "the userspace marker", |_, c| c.contains(MARKER));
    let link = |want: &str| {
        let start = Instant::now();
        loop {
            let r = request(addr, "GET", "/api/v1/network/switches", Some(ROOT), None);
            let sw = r.json()["switches"][0].clone();
            let p = sw["ports"].as_array().unwrap().iter().find(|p| p["name"] == "linked nic0").cloned();
            if p.as_ref().is_some_and(|p| p["link"] == want) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "link {want} expected: {sw}");
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    link("up");
    let r = request(addr, "POST", "/api/v1/vms/linked/nics/0/disconnect", Some(ROOT), None);
    assert_eq!((r.status, r.json()["nics"][0]["connected"].as_bool()), (200, Some(false)), "{r:?}");
    link("down");
    let r = request(addr, "POST", "/api/v1/vms/linked/nics/0/connect", Some(ROOT), None);
    assert_eq!((r.status, r.json()["nics"][0]["connected"].as_bool()), (200, Some(true)), "{r:?}");
    link("up");
    let r = request(addr, "POST", "/api/v1/vms/linked/nics/1/connect", Some(ROOT), None);
    assert_eq!(r.status, 404, "{r:?}");
    let r = request(addr, "GET", "/api/v1/vms/linked/nics/0/connect", Some(ROOT), None);
    assert_eq!(r.status, 405, "{r:?}");
    let r = request(addr, "POST", "/api/v1/vms/linked/poweroff", Some(ROOT), None);
    assert_eq!(r.status, 200, "{r:?}");
    let r = request(addr, "POST", "/api/v1/vms/linked/nics/0/connect", Some(ROOT), None);
    assert_eq!(r.status, 409, "not running: {r:?}");
    assert!(q.text().contains("ember: VM linked: nic0 disconnected"), "{}", q.text());
}

/// Issue 18: a guest floods its port group with broadcast frames as fast as its NIC takes them for
/// a minute; the host's API keeps answering throughout (every request within the usual time-out;
/// the answer times are printed), the switch counts what the flood sent and what it dropped, and
/// the VM ends normally.
#[test]
fn a_guest_flooding_broadcasts_leaves_the_api_answering() {
    let dir = tempfile::tempdir().unwrap();
    let def = vm_dir(
        dir.path(),
        "flooder",
        (1, 128),
        "console=ttyS0 ember.action=flood ember.flood=60",
        false,
        None,
        None,
    );
    set_nics(&def, serde_json::json!([{"portgroup": "VM Network"}]));
    let (out, _) = image_with_vms(dir.path(), &[def], &[]);
    let (q, addr) = boot_with_api(QemuConfig::new("vms-flood", &out), "virtio-net-pci");
    let r = request(addr, "POST", "/api/v1/vms/flooder/start", Some(ROOT), Some("{}"));
    assert_eq!(r.status, 200, "{r:?}");
    wait_vm(addr, "flooder", "the flood", |_, c| c.contains("EMBER-GUEST: flooding"));
    let mut times = Vec::new();
    let mut flood_port = Value::Null;
    for _ in 0..15 {
        let start = Instant::now();
        let r = request(addr, "GET", "/api/v1/network/switches", Some(ROOT), None);
        times.push(start.elapsed().as_millis());
        assert_eq!(r.status, 200, "{r:?}");
        let ports = r.json()["switches"][0]["ports"].clone();
        if let Some(p) = ports.as_array().unwrap().iter().find(|p| p["name"] == "flooder nic0") {
            flood_port = p.clone();
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!("API answer times during the flood (ms): {times:?}; the flooding port: {flood_port}");
    assert!(
        flood_port["counters"]["packets_sent"].as_u64() > Some(1000),
        "the flood went through: {flood_port}"
    );
    let (v, c) = wait_vm(addr, "flooder", "the end of the flood", |v, _| v["state"] == "stopped");
    assert_eq!(v["exit_reason"], "the guest powered off", "{v}\n{c}");
    assert!(c.contains("EMBER-GUEST: flood sent"), "{c}");
    assert!(!q.text().contains("PANIC"), "{}", q.text());
}

/// A VM directory for the bare test guest (`tests/guest/bare.S`): one vCPU, `role` as its command line.
fn bare_vm_dir(root: &Path, name: &str, role: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let bare = fixtures().join("bare.bzImage");
    assert!(bare.exists(), "{} missing: run scripts/guest-fixtures", bare.display());
    std::fs::copy(bare, dir.join("bare")).unwrap();
    let def = serde_json::json!({
        "name": name, "vcpus": 1, "memory_mib": 16, "kernel": "bare", "cmdline": role, "autostart": true,
    });
    let path = dir.join("vm.json");
    std::fs::write(&path, def.to_string()).unwrap();
    path
}

/// Issue 16, finding 3: a vCPU's SSE registers are restored under every component the CPU has, not
/// only under the guest's XCR0 (x87 after reset), so a VM never sees the XMM registers another VM
/// left on the same physical CPU. The machine has one CPU for VMs, so the two vCPUs take turns on
/// it. (With the restore under the guest's XCR0 the reader says LEAK within its first slice.)
#[test]
fn a_vm_never_sees_the_sse_registers_another_vm_left_on_its_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let defs = [bare_vm_dir(dir.path(), "painter", "P"), bare_vm_dir(dir.path(), "reader", "R")];
    let (out, _) = image_with_vms(dir.path(), &defs, &[]);
    let port = free_port();
    let mut cfg = QemuConfig::new("vms-xmm", &out);
    cfg.cpus = 2;
    cfg.nics = vec![NicSpec::new("virtio-net-pci", &format!("user,hostfwd=tcp:127.0.0.1:{port}-:443"))];
    let _q = Qemu::start(&cfg);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_http(addr, BOOT_TIMEOUT);
    let ended = |v: &Value, c: &str| v["state"] == "stopped" && c.lines().count() >= 2;
    let (_, painter) = wait_vm(addr, "painter", "the painter's verdict", ended);
    let (_, reader) = wait_vm(addr, "reader", "the reader's verdict", ended);
    assert!(painter.contains("EMBER-BARE: painted"), "{painter}");
    assert!(reader.contains("EMBER-BARE: reader started"), "{reader}");
    assert!(reader.contains("EMBER-BARE: clean"), "the reader saw another VM's registers:\n{reader}");
    assert!(painter.contains("EMBER-BARE: painter kept its registers"), "{painter}");
}

/// Issue 16, finding 4: a guest's WBINVD and INVD go on (no-ops: they would flush or discard the
/// host's caches), RDPMC raises #GP (the host's counters stay the host's), 100,000 single-step #DBs
/// reach the guest through the #DB intercept, and DR0-DR3 stay each VM's own while two VMs take
/// turns on one CPU. Then each guest arms a data breakpoint on the slot of its #DB stack that
/// delivering #DB writes and raises #DB (CVE-2015-8104): on hardware without the #DB intercept
/// that CPU would never leave the guest. Here the host keeps answering, and both VMs are stopped
/// through the API. (QEMU's TCG may not check breakpoints during delivery; the guest then says so
/// and halts, which ends its VM - both outcomes are accepted, the rest is checked either way.)
#[test]
fn exceptions_cache_and_counter_instructions_and_debug_registers_stay_inside_a_vm() {
    let dir = tempfile::tempdir().unwrap();
    let defs = [bare_vm_dir(dir.path(), "exc1", "E1"), bare_vm_dir(dir.path(), "exc2", "E2")];
    let (out, _) = image_with_vms(dir.path(), &defs, &[]);
    let port = free_port();
    let mut cfg = QemuConfig::new("vms-exceptions", &out);
    cfg.cpus = 2;
    cfg.nics = vec![NicSpec::new("virtio-net-pci", &format!("user,hostfwd=tcp:127.0.0.1:{port}-:443"))];
    let q = Qemu::start(&cfg);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_http(addr, BOOT_TIMEOUT);
    let looping = |_: &Value, c: &str| c.contains("EMBER-BARE: #DB delivery loop");
    let mut states = Vec::new();
    for name in ["exc1", "exc2"] {
        let (_, c) = wait_vm(addr, name, "the #DB delivery loop", looping);
        for line in [
            "wbinvd and invd went on",
            "rdpmc raised #GP",
            "100000 single-step #DB delivered",
            "debug registers kept",
        ] {
            assert!(c.contains(&format!("EMBER-BARE: {line}")), "{name}: {line:?} missing:\n{c}");
        }
    }
    // The host answers while the guests loop (or have ended).
    for _ in 0..10 {
        assert_eq!(request(addr, "GET", "/api/v1/host", Some(ROOT), None).status, 200);
        std::thread::sleep(Duration::from_secs(1));
    }
    for name in ["exc1", "exc2"] {
        let (v, c) = (vm(addr, name), console(addr, name));
        if v["state"] == "stopped" {
            assert!(c.contains("EMBER-BARE: no #DB delivery loop"), "{name} ended early: {v}\n{c}");
            states.push("halted");
        } else {
            let r = request(addr, "POST", &format!("/api/v1/vms/{name}/poweroff"), Some(ROOT), None);
            assert_eq!(r.status, 200, "{name}: {r:?}");
            let (v, _) = wait_vm(addr, name, "the stop", |v, _| v["state"] == "stopped");
            assert_eq!(v["exit_reason"], "powered off through the API", "{v}");
            states.push("looping until stopped");
        }
    }
    eprintln!("#DB delivery loop: {states:?}");
    assert!(!q.text().contains("PANIC"), "{}", q.text());
}
