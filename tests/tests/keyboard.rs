//! The DCUI from the machine's own keyboards, keys pressed through the QEMU monitor (`sendkey`):
//! a USB keyboard (QEMU `usb-kbd` on the xHCI controller beside the boot stick) logs in, sets the
//! German layout in Configure Keyboard and types a new root password with it (checked on the API:
//! the characters are the German ones); then the USB keyboard is unplugged and the PS/2 keyboard
//! (the q35 machine's i8042) logs in with the same German keys and shuts the host down with F12.
#![forbid(unsafe_code)]

use ember_systests::net::*;
use ember_systests::*;
use std::net::SocketAddr;
use std::time::Duration;

const T: Duration = Duration::from_secs(180);

/// `ember-initial` on a US keyboard.
const INITIAL: &[&str] = &["e", "m", "b", "e", "r", "minus", "i", "n", "i", "t", "i", "a", "l"];
/// Keys pressed for the new password (named by their US legends, as `sendkey` names them). With the
/// German layout they type `Germanz/y@-1`; with US they would type `Germany&z` and so on. AltGr is
/// pressed as Ctrl+Alt: QEMU's USB keyboard loses `sendkey altgr-...` combinations now and then
/// (its E0-prefixed modifier handling), while Ctrl+Alt arrives whole.
const PASSWORD_KEYS: &[&str] =
    &["shift-g", "e", "r", "m", "a", "n", "y", "shift-7", "z", "ctrl-alt-q", "slash", "1"];
const PASSWORD_GERMAN: &str = "Germanz/y@-1";

fn with_enter(keys: &[&'static str]) -> Vec<&'static str> {
    let mut k = keys.to_vec();
    k.push("ret");
    k
}

#[test]
fn usb_and_ps2_keyboards_drive_the_menu_with_the_german_layout() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cfg = QemuConfig::new("keyboard", &img);
    cfg.nics = vec![NicSpec::new("virtio-net-pci", &format!("user,hostfwd=tcp:127.0.0.1:{port}-:443"))];
    cfg.extra = vec!["-device".into(), "usb-kbd,bus=xhci.0,id=kbd".into()];
    let mut q = Qemu::start(&cfg);
    q.wait_for("USB keyboard", T);
    q.wait_for("PS/2 keyboard controller (i8042) ready", T);
    q.wait_for_screen("To manage this host, go to:", T);

    // USB keyboard: F2, the initial password, Configure Keyboard (item 5), German (ten down).
    q.sendkeys(&["f2"]);
    q.wait_for_screen("Authentication Required on", T);
    q.sendkeys(&with_enter(INITIAL));
    q.wait_for_screen("System Customization", T);
    q.sendkeys(&["down"; 5]);
    q.sendkeys(&["ret"]);
    q.wait_for_screen("(o) US Default", T);
    q.sendkeys(&["down"; 10]);
    q.sendkeys(&["ret"]);
    q.wait_for_screen("Keyboard layout set to German.", T);

    // Configure Password (five up), typed with the German layout.
    q.sendkeys(&["up"; 5]);
    q.sendkeys(&["ret"]);
    q.wait_for_screen("Enter a new root password", T);
    let mut keys = PASSWORD_KEYS.to_vec();
    keys.push("tab");
    keys.extend(PASSWORD_KEYS);
    keys.push("ret");
    q.sendkeys(&keys);
    q.wait_for_screen("Password changed.", T);
    wait_for_http(addr, T);
    let auth = Some(("root", PASSWORD_GERMAN));
    assert_eq!(request(addr, "GET", "/api/v1/host", auth, None).status, 200, "the German password works");
    let config = request(addr, "GET", "/api/v1/config", auth, None);
    assert_eq!(config.json()["keyboard"].as_str(), Some("German"), "{config:?}");
    q.sendkeys(&["esc"]);
    q.wait_for_screen("To manage this host, go to:", T);

    // The USB keyboard goes away (the host carries on); keys now come from the PS/2 keyboard.
    q.monitor("device_del kbd");
    std::thread::sleep(Duration::from_secs(2));
    q.sendkeys(&["f12"]);
    q.wait_for_screen("Authentication Required on", T);
    q.sendkeys(&with_enter(PASSWORD_KEYS));
    q.wait_for_screen("<F2> Shut Down  <F11> Restart  <Esc> Cancel", T);
    q.sendkeys(&["f2"]);
    assert_eq!(q.wait_exit(T), 0, "QEMU ends on ACPI power-off");
}
