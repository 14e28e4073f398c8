//! The configuration lifecycle, seen the way an administrator sees it: the first boot stores the
//! configuration on the boot media, changes made through the API are stored before they are
//! acknowledged, and a reboot of the same media comes back with them.
#![forbid(unsafe_code)]

use ember_systests::net::*;
use ember_systests::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const INITIAL: (&str, &str) = ("root", "ember-initial");
const HTTP_TIMEOUT: Duration = Duration::from_secs(180);

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Boots `img` from `disk` with one virtio NIC whose API is forwarded to `port`.
fn boot(name: &str, img: &Path, disk: Disk, port: u16) -> Qemu {
    Qemu::start(&boot_config(name, img, disk, port))
}

fn boot_config(name: &str, img: &Path, disk: Disk, port: u16) -> QemuConfig {
    let mut cfg = QemuConfig::new(name, img);
    cfg.disk = disk;
    cfg.nics = vec![NicSpec::new("virtio-net-pci", &format!("user,hostfwd=tcp:127.0.0.1:{port}-:443"))];
    cfg
}

fn get_config(addr: SocketAddr, auth: (&str, &str)) -> Value {
    let r = request(addr, "GET", "/api/v1/config", Some(auth), None);
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

fn inspect(img: &Path) -> String {
    let (ok, out, err) = run_tool(&["inspect", img.to_str().unwrap()]);
    assert!(ok, "inspect failed: {out}{err}");
    out
}

/// The store is written and read back through every block driver the boot media can sit behind.
#[test]
fn the_store_works_through_every_block_driver() {
    let drivers = [
        (Disk::Usb, "usb0", "usb-storage"),
        (Disk::Nvme, "nvme0", "nvme"),
        (Disk::Ahci, "sata0", "ahci"),
        (Disk::Virtio, "vda", "virtio-blk"),
    ];
    for (disk, name, driver) in drivers {
        let dir = tempfile::tempdir().unwrap();
        let img = build_image(dir.path(), &[]);
        let port = free_port();
        let addr = loopback(port);
        let tag = format!("config_driver_{driver}");
        let mut q = boot(&tag, &img, disk, port);
        q.wait_for(
            &format!("boot media is {name}: configuration store in its config partition"),
            BOOT_TIMEOUT,
        );
        q.wait_for("first boot: configuration stored (sequence 1)", BOOT_TIMEOUT);
        wait_for_http(addr, HTTP_TIMEOUT);
        let body = format!(r#"{{"dns_search":["{driver}.example"]}}"#);
        let r = request(addr, "PUT", "/api/v1/config", Some(INITIAL), Some(&body));
        assert_eq!(r.status, 200, "{driver}: {r:?}");
        let v = r.json();
        assert_eq!(
            (v["store"]["disk"].as_str(), v["store"]["driver"].as_str()),
            (Some(name), Some(driver)),
            "{v}"
        );
        assert_eq!(v["store"]["sequence"], 2);
        drop(q);
        let report = inspect(&img);
        assert!(report.contains("config store: configuration sequence 2 in slot B"), "{driver}: {report}");
        let mut q = boot(&format!("{tag}_reboot"), &img, disk, port);
        q.wait_for(&format!("configuration loaded from {name} slot B (sequence 2)"), BOOT_TIMEOUT);
        wait_for_http(addr, HTTP_TIMEOUT);
        assert_eq!(get_config(addr, INITIAL)["dns_search"][0], format!("{driver}.example"));
    }
}

#[test]
fn changes_are_stored_before_they_are_acknowledged_and_survive_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    assert!(inspect(&img).contains("config store: empty"), "{}", inspect(&img));
    let port = free_port();
    let addr = loopback(port);

    let mut q = boot("config_store_first", &img, Disk::Virtio, port);
    q.wait_for("boot media is vda: configuration store in its config partition", BOOT_TIMEOUT);
    q.wait_for("first boot: no configuration stored yet", BOOT_TIMEOUT);
    q.wait_for("first boot: no kickstart (no ks= boot option, no ks.cfg on the boot media)", BOOT_TIMEOUT);
    q.wait_for("first boot: configuration stored (sequence 1)", BOOT_TIMEOUT);
    wait_for_http(addr, HTTP_TIMEOUT);
    let cfg = get_config(addr, INITIAL);
    assert_eq!(cfg["store"]["persistent"], true, "{cfg}");
    assert_eq!(cfg["store"]["disk"], "vda");
    assert_eq!(cfg["store"]["driver"], "virtio-blk");
    assert_eq!(cfg["store"]["sequence"], 1);
    assert_eq!(cfg["root_password"]["scheme"], "pbkdf2-sha256");
    assert!(cfg.get("root_password_hash").is_none(), "the hash is never shown: {cfg}");

    // A bad field is named and nothing is written.
    let r = request(addr, "PUT", "/api/v1/config", Some(INITIAL), Some(r#"{"keyboard":"Klingon"}"#));
    assert_eq!(r.status, 400);
    assert!(r.body.contains("keyboard"), "{r:?}");
    assert_eq!(get_config(addr, INITIAL)["store"]["sequence"], 1);

    let change =
        r#"{"keyboard":"German","ssh":true,"dns_search":["lab.example"],"network":{"hostname":"esx-store"}}"#;
    let r = request(addr, "PUT", "/api/v1/config", Some(INITIAL), Some(change));
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!((v["store"]["sequence"].clone(), v["store"]["slot"].clone()), (2.into(), "B".into()), "{v}");
    assert_eq!(v["restarting_management_network"], true);
    q.wait_for("management network: vmnic0", HTTP_TIMEOUT);
    wait_for_http(addr, HTTP_TIMEOUT);
    let r = request(
        addr,
        "PUT",
        "/api/v1/account/root/password",
        Some(INITIAL),
        Some(r#"{"password":"stored-secret"}"#),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["persistent"], true);

    // Power off without warning: what was acknowledged is on the medium.
    drop(q);
    let report = inspect(&img);
    assert!(
        report.contains("config store: configuration sequence 3 in slot A, host name esx-store"),
        "{report}"
    );

    let mut q = boot("config_store_reboot", &img, Disk::Virtio, port);
    q.wait_for("configuration loaded from vda slot A (sequence 3)", BOOT_TIMEOUT);
    wait_for_http(addr, HTTP_TIMEOUT);
    assert!(!q.text().contains("first boot"), "a stored configuration means no first boot");
    let r = request(addr, "GET", "/api/v1/config", Some(INITIAL), None);
    assert_eq!(r.status, 401, "the initial password was replaced");
    let cfg = get_config(addr, ("root", "stored-secret"));
    assert_eq!(cfg["keyboard"], "German");
    assert_eq!(cfg["ssh"], true);
    assert_eq!(cfg["dns_search"][0], "lab.example");
    assert_eq!(cfg["network"]["hostname"], "esx-store");
    assert_eq!(cfg["store"]["sequence"], 3);
    q.wait_for_screen("https://esx-store/", HTTP_TIMEOUT);
}

/// A slow boot medium (QEMU writes 1 KiB a second to it) does not stop the host answering:
/// while a change is being saved, one device command per pass of the management loop, a client
/// with an open connection keeps getting answers (the configuration in force until the change is
/// saved); the change is acknowledged once it is on the medium.
#[test]
fn while_a_slow_medium_saves_a_change_the_api_keeps_answering() {
    use std::io::Write;
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let port = free_port();
    let addr = loopback(port);
    let mut cfg = boot_config("config_slow_medium", &img, Disk::Virtio, port);
    cfg.drive_options = ",throttling.bps-write=1024".into();
    let mut q = Qemu::start(&cfg);
    q.wait_for("first boot: configuration stored (sequence 1)", BOOT_TIMEOUT);
    wait_for_http(addr, HTTP_TIMEOUT);

    // A client that keeps its connection open, reading the configuration.
    let keep_alive = |method: &str, body: Option<&str>| {
        let raw = request_bytes(method, "/api/v1/config", Some(INITIAL), body);
        String::from_utf8(raw).unwrap().replace("Connection: close", "Connection: keep-alive").into_bytes()
    };
    let mut reader = tls_connect(addr, HTTP_TIMEOUT).unwrap();
    let mut read = || {
        reader.write_all(&keep_alive("GET", None)).unwrap();
        let r = read_response(&mut reader).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    };
    assert_eq!(read()["store"]["sequence"], 1);

    // The change, on a connection of its own: six long search domains make the configuration
    // take several write commands of the store (1 KiB each), each waiting for the medium.
    let label = "s".repeat(60);
    let domains: Vec<String> = (0..6).map(|i| format!("{label}.{label}.{label}.d{i}.example")).collect();
    let body = serde_json::json!({ "dns_search": domains }).to_string();
    let mut writer = tls_connect(addr, HTTP_TIMEOUT).unwrap();
    writer.write_all(&keep_alive("PUT", Some(&body))).unwrap();
    let sent = Instant::now();
    let change = std::thread::spawn(move || (read_response(&mut writer).unwrap(), sent.elapsed()));
    // (asked, answered, the stored sequence the answer showed) for each read answered before the
    // change's own answer arrived.
    let mut answered = Vec::new();
    while !change.is_finished() {
        let asked = sent.elapsed();
        let v = read();
        if !change.is_finished() {
            answered.push((asked, sent.elapsed(), v["store"]["sequence"].as_u64()));
        }
    }
    let (r, took) = change.join().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["store"]["sequence"], 2);
    assert_eq!(r.json()["dns_search"][5], domains[5].as_str());
    eprintln!(
        "the change was answered after {took:?}; reads (asked, answered, sequence) meanwhile: {answered:?}"
    );
    // Once a read shows the change, every later one does (whether the change's own answer has
    // reached this client by then depends on thread scheduling here, not on the appliance; that
    // nothing is in force before its save ends is checked by the host tests of `HostState`).
    let first_new = answered.iter().position(|a| a.2 == Some(2)).unwrap_or(answered.len());
    assert!(answered.iter().skip(first_new).all(|a| a.2 == Some(2)), "{answered:?}");
    assert!(answered.iter().take(first_new).all(|a| a.2 == Some(1)), "{answered:?}");
    // The first read that had to wait for the medium shows the save under way. Saved in one go, the
    // save would be over when that read is answered; saved one command per pass, a read asked
    // after it is answered with the old configuration while the rest of the save goes on.
    let waited = answered.iter().position(|(asked, done, _)| *done - *asked >= Duration::from_millis(100));
    let mid_save = waited.map_or(0, |i| answered.iter().skip(i + 1).filter(|a| a.2 == Some(1)).count());
    assert!(mid_save >= 1, "the API stopped answering while the change was saved: {answered:?} in {took:?}");
    assert_eq!(read()["store"]["sequence"], 2);
    drop(q);
    assert!(inspect(&img).contains("config store: configuration sequence 2 in slot B"), "{}", inspect(&img));
}

#[test]
fn without_a_driver_for_the_boot_media_changes_say_they_do_not_persist() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let port = free_port();
    let addr = loopback(port);
    // The firmware boots from virtio-scsi; Ember has no driver for that controller.
    let mut q = boot("config_store_no_driver", &img, Disk::VirtioScsi, port);
    q.wait_for("WARNING: no configuration store: none of the 0 disk(s)", BOOT_TIMEOUT);
    q.wait_for("configuration changes will not survive a reboot", BOOT_TIMEOUT);
    wait_for_http(addr, HTTP_TIMEOUT);
    let cfg = get_config(addr, INITIAL);
    assert_eq!(cfg["store"]["persistent"], false, "{cfg}");
    assert!(cfg["store"]["reason"].as_str().unwrap().contains("boot media"), "{cfg}");
    let r = request(addr, "PUT", "/api/v1/config", Some(INITIAL), Some(r#"{"keyboard":"German"}"#));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["store"]["persistent"], false);
    drop(q);
    assert!(inspect(&img).contains("config store: empty"));
}

/// Writes `files` (path on the ESP, contents) into the image's ESP with mtools.
fn put_on_esp(img: &Path, files: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let target = format!("{}@@1M", img.display());
    for (path, contents) in files {
        let local = dir.path().join(path.replace('/', "_"));
        std::fs::write(&local, contents).unwrap();
        let parent = Path::new(path).parent().unwrap().to_str().unwrap();
        if !parent.is_empty() {
            // An existing directory is not an error for the test's purpose.
            let _ = std::process::Command::new("mmd").args(["-i", &target, &format!("::/{parent}")]).output();
        }
        let out = std::process::Command::new("mcopy")
            .args(["-o", "-i", &target, local.to_str().unwrap(), &format!("::/{path}")])
            .output()
            .expect("run mcopy (scripts/setup installs mtools)");
        assert!(out.status.success(), "mcopy {path}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// `openssl passwd -6 -salt saltsalt "correct horse"`
const CRYPTED: &str =
    "$6$saltsalt$hRM5XZ86KXEw9UOmjigeVqFgULtFB2sgpC9lXQDfMib3Zgw7mEiUvBJI2EplzfAqxL5Vvwp2scFtv/uamSo5z0";

#[test]
fn kickstart_on_the_boot_media_configures_the_first_boot_once() {
    let dir = tempfile::tempdir().unwrap();
    let ks = dir.path().join("ks.cfg");
    std::fs::write(
        &ks,
        format!(
            "vmaccepteula\nrootpw --iscrypted {CRYPTED}\n\
             network --bootproto=static --ip=10.0.2.20 --netmask=255.255.255.0 --gateway=10.0.2.2 --hostname=esx-ks\n\
             keyboard German\n\
             %post\nesxcli system hostname set --domain=lab.example\n\
             %firstboot\nvim-cmd hostsvc/enable_ssh\n\
             esxcli network ip dns search add --domain lab.example && echo \"configured $?\"\n"
        ),
    )
    .unwrap();
    let img = image_with_ks(dir.path(), &ks);
    let port = free_port();
    let addr = loopback(port);
    let mut q = Qemu::start(&static_boot("config_ks_esp", &img, port));
    q.wait_for("first boot: kickstart ks.cfg on the boot media", BOOT_TIMEOUT);
    q.wait_for("first boot: kickstart ks.cfg on the boot media applied", BOOT_TIMEOUT);
    q.wait_for("first boot: configuration stored (sequence 1)", BOOT_TIMEOUT);
    // %firstboot runs once the configuration is stored, and its result is stored in turn.
    q.wait_for("first boot: %firstboot ks.cfg:line 7: line 9: configured 0", BOOT_TIMEOUT);
    q.wait_for("first boot: %firstboot ks.cfg:line 7: exit status 0 (3 commands run)", BOOT_TIMEOUT);
    q.wait_for("first boot: %firstboot result stored (sequence 2)", BOOT_TIMEOUT);
    wait_for_http(addr, HTTP_TIMEOUT);
    assert_eq!(request(addr, "GET", "/api/v1/config", Some(INITIAL), None).status, 401);
    let cfg = get_config(addr, ("root", "correct horse"));
    assert_eq!(cfg["network"]["hostname"], "esx-ks.lab.example", "%post ran");
    assert_eq!(cfg["ssh"], true, "%firstboot ran");
    assert_eq!(cfg["dns_search"], serde_json::json!(["lab.example"]));
    assert!(cfg.get("firstboot").is_none(), "{cfg}");
    assert_eq!(cfg["network"]["mode"], "static");
    assert_eq!(cfg["network"]["address"], "10.0.2.20");
    assert_eq!(cfg["keyboard"], "German");
    assert_eq!(cfg["root_password"]["scheme"], "sha512-crypt");
    q.wait_for_screen("https://esx-ks.lab.example/  https://10.0.2.20/ (STATIC)", HTTP_TIMEOUT);
    drop(q);

    // The next boot uses what is stored; neither the kickstart nor %firstboot runs again.
    let mut q = Qemu::start(&static_boot("config_ks_esp_reboot", &img, port));
    q.wait_for("configuration loaded from vda slot B (sequence 2)", BOOT_TIMEOUT);
    wait_for_http(addr, HTTP_TIMEOUT);
    assert!(!q.text().contains("first boot"), "no second first boot");
    assert_eq!(get_config(addr, ("root", "correct horse"))["network"]["hostname"], "esx-ks.lab.example");
}

/// A hostile or failing `%firstboot` (a variable that doubles past every bound, a command that
/// fails, a non-zero exit) cannot keep the host from its DCUI and API: each failure is logged
/// with its line, the commands that are fine still run, the result is stored, and the next boot
/// does not run the script again.
#[test]
fn a_failing_hostile_firstboot_still_reaches_the_dcui_and_does_not_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let ks = dir.path().join("ks.cfg");
    let doubling = "A=$A$A$A$A\n".repeat(12);
    // One DNS server more than a host may have.
    let dns: String =
        (1..=4).map(|i| format!("esxcli network ip dns server add --server=10.0.0.{i}\n")).collect();
    std::fs::write(
        &ks,
        format!(
            "vmaccepteula\nrootpw --iscrypted {CRYPTED}\n\
             network --bootproto=static --ip=10.0.2.20 --netmask=255.255.255.0 --gateway=10.0.2.2\n\
             %firstboot\nA=0123456789abcdef\n{doubling}echo \"$A\"\n\
             {dns}vim-cmd hostsvc/enable_ssh\nexit 3\n"
        ),
    )
    .unwrap();
    let img = image_with_ks(dir.path(), &ks);
    let port = free_port();
    let addr = loopback(port);
    let mut q = Qemu::start(&static_boot("config_ks_hostile_firstboot", &img, port));
    q.wait_for("first boot: configuration stored (sequence 1)", BOOT_TIMEOUT);
    q.wait_for("first boot: %firstboot result stored (sequence 2)", BOOT_TIMEOUT);
    let log = q.text();
    for want in ["more than 16384 bytes", "at most 3 DNS servers", "exit status 3"] {
        assert!(
            log.lines().any(|l| l.contains("first boot: %firstboot ks.cfg:line 4") && l.contains(want)),
            "{want:?} not logged:\n{log}"
        );
    }
    q.wait_for_screen("https://10.0.2.20/ (STATIC)", HTTP_TIMEOUT);
    wait_for_http(addr, HTTP_TIMEOUT);
    let cfg = get_config(addr, ("root", "correct horse"));
    assert_eq!(cfg["ssh"], true, "the commands that are fine ran: {cfg}");
    assert!(cfg.get("firstboot").is_none(), "the script is not kept: {cfg}");
    drop(q);

    let mut q = Qemu::start(&static_boot("config_ks_hostile_firstboot_reboot", &img, port));
    q.wait_for("configuration loaded from vda slot B (sequence 2)", BOOT_TIMEOUT);
    q.wait_for_screen("https://10.0.2.20/ (STATIC)", HTTP_TIMEOUT);
    assert!(!q.text().contains("%firstboot"), "the script does not run again");
}

/// An image in `dir` built with `build --ks ks`.
fn image_with_ks(dir: &Path, ks: &Path) -> std::path::PathBuf {
    let img = dir.join("ember.img");
    let efi = efi_path();
    let (ok, out, err) = run_tool(&[
        "build",
        "--out",
        img.to_str().unwrap(),
        "--efi",
        efi.to_str().unwrap(),
        "--ks",
        ks.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    img
}

/// A virtio-blk boot whose API, at the static address 10.0.2.20, is forwarded to `port`.
fn static_boot(name: &str, img: &Path, port: u16) -> QemuConfig {
    let mut cfg = QemuConfig::new(name, img);
    cfg.disk = Disk::Virtio;
    cfg.nics =
        vec![NicSpec::new("virtio-net-pci", &format!("user,hostfwd=tcp:127.0.0.1:{port}-10.0.2.20:443"))];
    cfg
}

#[test]
fn a_bad_kickstart_line_is_reported_with_its_file_and_line_and_nothing_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &["ks=usb:/ks/host1.cfg"]);
    put_on_esp(
        &img,
        &[
            ("ks/host1.cfg", "vmaccepteula\nrootpw long-enough-pw\n%include net.cfg\nkeyboard German\n"),
            ("ks/net.cfg", "# network for host1\nnetwork --bootproto=static --ip=10.0.2.300\n"),
        ],
    );
    let port = free_port();
    let addr = loopback(port);
    let mut q = boot("config_ks_bad_include", &img, Disk::Virtio, port);
    let line = q.wait_for("ERROR: first boot: kickstart usb:/ks/host1.cfg (on the boot media)", BOOT_TIMEOUT);
    assert!(line.contains("error parsing the installation script: net.cfg:line 2:"), "{line}");
    assert!(line.contains("10.0.2.300"), "{line}");
    q.wait_for("nothing applied or stored; running on the built-in configuration", BOOT_TIMEOUT);
    // Reachable on the defaults, with the initial password, so an operator can fix it.
    wait_for_http(addr, HTTP_TIMEOUT);
    let cfg = get_config(addr, INITIAL);
    assert_eq!(cfg["keyboard"], "US Default");
    assert_eq!(cfg["store"]["sequence"], Value::Null, "nothing stored: {cfg}");
    q.wait_for_screen("First boot configuration failed:", HTTP_TIMEOUT);
    drop(q);
    assert!(inspect(&img).contains("config store: empty"));

    // A malformed ks.cfg on the ESP (no ks= option), and an unsupported source.
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    put_on_esp(&img, &[("ks.cfg", "vmaccepteula\nrootpw long-enough-pw\nfrobnicate --hard\n")]);
    let mut q = boot("config_ks_bad_esp", &img, Disk::Virtio, free_port());
    let line = q.wait_for("ERROR: first boot: kickstart ks.cfg on the boot media", BOOT_TIMEOUT);
    assert!(line.contains("ks.cfg:line 3: unknown command `frobnicate`"), "{line}");
    q.wait_for("management network: vmnic0", BOOT_TIMEOUT);
    drop(q);
    let report = inspect(&img);
    assert!(report.contains("config store: empty"), "{report}");
    assert!(report.contains("ks.cfg: INVALID, a first boot would not apply it: error parsing the installation script: \\ks.cfg:line 3: unknown command `frobnicate`"), "{report}");
}

#[test]
fn kickstart_over_https_is_fetched_from_trusted_tls_1_3_and_1_2_servers_and_refused_from_an_untrusted_one() {
    let certs = workspace().join("net/src/tls/testdata");
    let ca = certs.join("ca.pem");
    let ks =
        format!("vmaccepteula\nrootpw --iscrypted {CRYPTED}\nnetwork --bootproto=dhcp --hostname=esx-tls\n");

    // A server whose certificate (for IP 10.0.2.2) was issued by the CA given to ember-image.
    let server = HttpsServer::start(&certs.join("server.pem"), &certs.join("server.key"), &ks);
    let url = format!("https://10.0.2.2:{}/ks/esx-tls.cfg", server.port);
    let dir = tempfile::tempdir().unwrap();
    let img = build_image_with(dir.path(), &[&format!("ks={url}")], &["--ks-ca", ca.to_str().unwrap()]);
    assert!(inspect(&img).contains("ks-ca.pem: the CA certificates in ks-ca.pem (1)"));
    let port = free_port();
    let addr = loopback(port);
    let mut q = boot("config_ks_https", &img, Disk::Virtio, port);
    q.wait_for(
        &format!("first boot: {url}: the server certificate must chain to the CA certificates in /EFI/ember/ks-ca.pem (1)"),
        BOOT_TIMEOUT,
    );
    q.wait_for(&format!("first boot: kickstart {url} applied and stored (sequence 1)"), HTTP_TIMEOUT);
    assert_eq!(server.requests(), ["GET /ks/esx-tls.cfg"]);
    wait_for_http(addr, HTTP_TIMEOUT);
    assert_eq!(get_config(addr, ("root", "correct horse"))["network"]["hostname"], "esx-tls");
    drop(q);
    drop(server);

    // The same kickstart from a server whose certificate another CA issued: refused, nothing applied.
    let server = HttpsServer::start(&certs.join("stranger.pem"), &certs.join("stranger.key"), &ks);
    let url = format!("https://10.0.2.2:{}/ks/esx-tls.cfg", server.port);
    let dir = tempfile::tempdir().unwrap();
    let img = build_image_with(dir.path(), &[&format!("ks={url}")], &["--ks-ca", ca.to_str().unwrap()]);
    let mut q = boot("config_ks_https_untrusted", &img, Disk::Virtio, port);
    q.wait_for(
        &format!("ERROR: first boot: kickstart {url}: the certificate of 10.0.2.2 is not issued by a CA in the CA certificates in /EFI/ember/ks-ca.pem (1)"),
        HTTP_TIMEOUT,
    );
    q.wait_for("nothing applied or stored; running on the built-in configuration", HTTP_TIMEOUT);
    wait_for_http(addr, HTTP_TIMEOUT);
    assert_eq!(get_config(addr, INITIAL)["store"]["sequence"], Value::Null);
    drop(q);
    assert!(inspect(&img).contains("config store: empty"));

    // A server that speaks TLS 1.2 at most (OpenSSL's ECDHE-ECDSA-AES-GCM): fetched and applied,
    // and the kickstart's %firstboot runs once its configuration is stored.
    let ks = format!("{ks}%firstboot\nvim-cmd hostsvc/enable_ssh\n");
    let server = HttpsServer::start_with(&certs.join("server.pem"), &certs.join("server.key"), &ks, true);
    let url = format!("https://10.0.2.2:{}/ks/esx-tls.cfg", server.port);
    let dir = tempfile::tempdir().unwrap();
    let img = build_image_with(dir.path(), &[&format!("ks={url}")], &["--ks-ca", ca.to_str().unwrap()]);
    let mut q = boot("config_ks_https_tls12", &img, Disk::Virtio, port);
    q.wait_for(
        &format!("first boot: kickstart {url}: %firstboot {url}:line 4: exit status 0 (1 command run)"),
        HTTP_TIMEOUT,
    );
    q.wait_for(&format!("first boot: kickstart {url} applied and stored (sequence 2)"), HTTP_TIMEOUT);
    assert_eq!(server.requests(), ["GET /ks/esx-tls.cfg"]);
    wait_for_http(addr, HTTP_TIMEOUT);
    assert_eq!(get_config(addr, ("root", "correct horse"))["ssh"], true);
}

#[test]
fn kickstart_over_http_is_retried_after_a_server_error_applied_once_and_never_fetched_again() {
    let ks = format!(
        "vmaccepteula\nrootpw --iscrypted {CRYPTED}\nnetwork --bootproto=dhcp --hostname=esx-http\nkeyboard German\n"
    );
    let server = ScriptedHttp::start(vec![(500, String::from("try again")), (200, ks)]);
    let url = format!("http://10.0.2.2:{}/ks/esx-http.cfg", server.port);
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[&format!("ks={url}")]);
    let port = free_port();
    let addr = loopback(port);
    let mut q = boot("config_ks_http", &img, Disk::Virtio, port);
    q.wait_for(
        &format!("first boot: kickstart {url} will be fetched once the management network has an address"),
        BOOT_TIMEOUT,
    );
    q.wait_for(&format!("first boot: kickstart {url}: attempt 1 failed: server error 500 Internal Server Error; next attempt in 100 ms"), HTTP_TIMEOUT);
    q.wait_for(&format!("first boot: kickstart {url} applied and stored (sequence 1)"), HTTP_TIMEOUT);
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests[1].starts_with("GET /ks/esx-http.cfg HTTP/1.1\r\n"), "{}", requests[1]);
    q.wait_for("management network: vmnic0", HTTP_TIMEOUT);
    wait_for_http(addr, HTTP_TIMEOUT);
    let cfg = get_config(addr, ("root", "correct horse"));
    assert_eq!(cfg["network"]["hostname"], "esx-http");
    assert_eq!(cfg["keyboard"], "German");
    assert_eq!(request(addr, "GET", "/api/v1/host", Some(INITIAL), None).status, 401);
    q.wait_for_screen("https://esx-http/", HTTP_TIMEOUT);
    drop(q);
    drop(server);

    // The server is gone: the next boot uses the stored configuration and does not try to fetch.
    let mut q = boot("config_ks_http_reboot", &img, Disk::Virtio, port);
    q.wait_for("configuration loaded from vda slot A (sequence 1)", BOOT_TIMEOUT);
    wait_for_http(addr, HTTP_TIMEOUT);
    assert!(!q.text().contains("will be fetched"), "a configured host never fetches again");
    assert_eq!(get_config(addr, ("root", "correct horse"))["network"]["hostname"], "esx-http");
}

#[test]
fn a_missing_kickstart_on_the_server_is_a_final_failure_said_on_the_console_and_screen() {
    let server = ScriptedHttp::start(vec![(404, String::from("no such file"))]);
    let url = format!("http://10.0.2.2:{}/ks/absent.cfg", server.port);
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[&format!("ks={url}")]);
    let port = free_port();
    let addr = loopback(port);
    let mut q = boot("config_ks_http_404", &img, Disk::Virtio, port);
    q.wait_for(&format!("ERROR: first boot: kickstart {url}: HTTP 404 Not Found"), BOOT_TIMEOUT);
    q.wait_for("nothing applied or stored; running on the built-in configuration", HTTP_TIMEOUT);
    q.wait_for_screen("First boot configuration failed:", HTTP_TIMEOUT);
    // The operator can reach the host on the defaults to fix it.
    wait_for_http(addr, HTTP_TIMEOUT);
    let cfg = get_config(addr, INITIAL);
    assert_eq!(cfg["store"]["sequence"], Value::Null, "nothing stored: {cfg}");
    assert_eq!(server.requests().len(), 1, "a 404 is not retried");
    drop(q);
    assert!(inspect(&img).contains("config store: empty"));
}
