//! The configuration lifecycle, seen the way an administrator sees it: the first boot stores the
//! configuration on the boot media, changes made through the API are stored before they are
//! acknowledged, and a reboot of the same media comes back with them.

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
    let mut cfg = QemuConfig::new(name, img);
    cfg.disk = disk;
    cfg.nics = vec![NicSpec::new("virtio-net-pci", &format!("user,hostfwd=tcp:127.0.0.1:{port}-:80"))];
    Qemu::start(&cfg)
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
    q.wait_for("built-in configuration stored (sequence 1)", BOOT_TIMEOUT);
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
    q.wait_for_screen("http://esx-store/", HTTP_TIMEOUT);
}

#[test]
fn without_a_driver_for_the_boot_media_changes_say_they_do_not_persist() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let port = free_port();
    let addr = loopback(port);
    let mut q = boot("config_store_usb", &img, Disk::Usb, port);
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
