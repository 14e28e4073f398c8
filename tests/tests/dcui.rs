//! The DCUI menu driven over the serial console the way an operator at a terminal would: function
//! keys in both terminal forms, the root login, Configure Password (then used on the API, and still
//! in force after a reboot), Configure Management Network (a static address reached on the API, kept
//! across a power-off), Test Management Network (the gateway answers), Network Restore Options (back
//! to DHCP), Reset System Configuration back to a first boot, and F12 Shut Down ending
//! QEMU. Screens are read through a terminal emulator (`vt100`).
#![forbid(unsafe_code)]

use ember_systests::net::*;
use ember_systests::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(180);
const F2_XTERM: &[u8] = b"\x1bOQ";
const F2_VT100: &[u8] = b"\x1b2";
const F11: &[u8] = b"\x1b[23~";
const F12_VT100: &[u8] = b"\x1b@";
const DOWN: &[u8] = b"\x1b[B";

/// Boots `img` with one virtio NIC: the API at the DHCP address is forwarded to `port`, the API at
/// the static address 10.0.2.20 to `static_port`.
fn boot(name: &str, img: &Path, port: u16, static_port: u16) -> Qemu {
    let mut cfg = QemuConfig::new(name, img);
    let fwd =
        format!("user,hostfwd=tcp:127.0.0.1:{port}-:443,hostfwd=tcp:127.0.0.1:{static_port}-10.0.2.20:443");
    cfg.nics = vec![NicSpec::new("virtio-net-pci", &fwd)];
    Qemu::start(&cfg)
}

/// Types slowly enough that a terminal's escape sequences stay whole and distinct.
fn keys(q: &mut Qemu, bytes: &[u8]) {
    q.send(bytes);
    std::thread::sleep(Duration::from_millis(300));
}

/// Moves the menu selection down `n` items.
fn down(q: &mut Qemu, n: usize) {
    for _ in 0..n {
        keys(q, DOWN);
    }
}

fn login(q: &mut Qemu, function_key: &[u8], password: &str) {
    keys(q, function_key);
    q.wait_for_screen("Authentication Required on", T);
    keys(q, format!("{password}\r").as_bytes());
}

#[test]
fn menu_over_the_serial_console_changes_the_password_resets_and_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let (port, static_port) = (free_port(), free_port());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let static_addr = SocketAddr::from(([127, 0, 0, 1], static_port));
    let mut q = boot("dcui_menu", &img, port, static_port);
    q.wait_for_screen("https://ember/  https://10.0.2.15/ (DHCP)", T);

    // A wrong password is refused and said so; line noise at the prompt changes nothing.
    login(&mut q, F2_XTERM, "wrong-password");
    q.wait_for_screen("Login incorrect.", T);
    keys(&mut q, b"\x1b[99~\x1b[\x01\x02");
    keys(&mut q, b"ember-initial\r");
    let s = q.wait_for_screen("System Customization", T);
    // The monitor shows the same screen (a screendump read back with the console font; the dump is
    // kept in target/systest-logs/).
    std::thread::sleep(Duration::from_secs(1));
    let fb = q.framebuffer_text("system_customization");
    for item in [
        "System Customization",
        "Configure Password",
        "Restart Management Network",
        "View Support Information",
        "Reset System Configuration",
    ] {
        assert!(s.contains(item), "{item} missing on the serial console:\n{s}");
        assert!(fb.contains(item), "{item} missing on the framebuffer:\n{fb}");
    }

    // Configure Password: mismatch refused, then a good one.
    keys(&mut q, b"\r");
    q.wait_for_screen("Enter a new root password", T);
    keys(&mut q, b"dcui-pass-1\tdcui-pass-2\r");
    q.wait_for_screen("The passwords do not match.", T);
    keys(&mut q, b"dcui-pass-1\tdcui-pass-1\r");
    q.wait_for_screen("Password changed.", T);
    wait_for_http(addr, T);
    assert_eq!(request(addr, "GET", "/api/v1/host", Some(("root", "ember-initial")), None).status, 401);
    assert_eq!(request(addr, "GET", "/api/v1/host", Some(("root", "dcui-pass-1")), None).status, 200);
    keys(&mut q, b"\x1b");
    login(&mut q, F2_XTERM, "dcui-pass-1");
    q.wait_for_screen("System Customization", T);

    // Configure Management Network: a static address, applied after the Y/N question, reached on the
    // API at its new address.
    down(&mut q, 1);
    keys(&mut q, b"\r");
    q.wait_for_screen("IPv4: DHCP", T);
    down(&mut q, 2);
    keys(&mut q, b"\r");
    q.wait_for_screen("Use dynamic IPv4 address", T);
    keys(&mut q, b" 10.0.2.20\t255.255.255.0\t10.0.2.2\r");
    q.wait_for_screen("IPv4: static 10.0.2.20/24, gateway 10.0.2.2", T);
    // IPv6 Configuration: Space from "Disable IPv6" to automatic (QEMU's router advertises fec0::/64).
    down(&mut q, 3);
    keys(&mut q, b"\r");
    q.wait_for_screen("(o) Disable IPv6", T);
    keys(&mut q, b" \r");
    q.wait_for_screen("IPv6: automatic", T);
    keys(&mut q, b"\x1b");
    q.wait_for_screen("Apply changes and restart management network? (Y/N)", T);
    keys(&mut q, b"y");
    q.wait_for_screen("Management network settings applied", T);
    wait_for_http(static_addr, T);
    let m = request(static_addr, "GET", "/api/v1/network/management", Some(("root", "dcui-pass-1")), None);
    assert_eq!(m.status, 200, "{m:?}");
    assert_eq!(
        (m.json()["mode"].as_str(), m.json()["address"].as_str()),
        (Some("static"), Some("10.0.2.20"))
    );
    // The address from the router advertisement (EUI-64 of the MAC), in the API and on the idle
    // screen's IPv6 line (checked after logging out below).
    let start = std::time::Instant::now();
    loop {
        let m =
            request(static_addr, "GET", "/api/v1/network/management", Some(("root", "dcui-pass-1")), None);
        let v6 = m.json()["ipv6_addresses"].clone();
        if v6.as_array().is_some_and(|l| l.iter().any(|a| a == "fec0::5054:ff:fe00:10/64")) {
            break;
        }
        assert!(start.elapsed() < T, "no SLAAC address: {m:?}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Test Management Network (the menu keeps its place: from item 1, two down): QEMU's gateway answers
    // ping; every check ends OK or FAILED.
    down(&mut q, 2);
    keys(&mut q, b"\r");
    let s = q.wait_for_screen("Pinging default gateway (10.0.2.2).", T);
    assert!(s.contains("Test Management Network"), "{s}");
    let start = std::time::Instant::now();
    let screen = loop {
        let s = q.screen(24, 80);
        if !s.contains("...") || start.elapsed() > T {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let gateway =
        screen.lines().find(|l| l.contains("Pinging default gateway (10.0.2.2).")).unwrap_or_default();
    assert!(gateway.contains("OK."), "the gateway did not answer:\n{screen}");
    assert!(screen.contains("Resolving hostname (ember)."), "{screen}");
    keys(&mut q, b"\x1b");

    // Troubleshooting Options (from item 3, three down): the shell/SSH and DCUI time-outs, stored and
    // shown by the API; Restart Management Agents (F11) and the API answers again.
    down(&mut q, 3);
    keys(&mut q, b"\r");
    q.wait_for_screen("Modify Shell and SSH timeouts  never / never", T);
    down(&mut q, 2);
    keys(&mut q, b"\r");
    q.wait_for_screen("Availability timeout (minutes, 0 = never):", T);
    keys(&mut q, b"\x7f30\t\x7f5\r");
    q.wait_for_screen("Shell and SSH timeouts set.", T);
    down(&mut q, 1);
    keys(&mut q, b"\r");
    keys(&mut q, b"\x7f\x7f20\r");
    q.wait_for_screen("DCUI idle timeout set.", T);
    q.wait_for_screen("Modify DCUI idle timeout       20 min", T);
    down(&mut q, 1);
    keys(&mut q, b"\r");
    q.wait_for_screen("Restart the management agents?", T);
    keys(&mut q, F11);
    q.wait_for_screen("Management agents restarted.", T);
    let c = request(static_addr, "GET", "/api/v1/config", Some(("root", "dcui-pass-1")), None);
    assert_eq!(c.status, 200, "{c:?}");
    let minutes = |f: &str| c.json()[f].as_u64();
    assert_eq!(
        (
            minutes("shell_timeout_minutes"),
            minutes("shell_idle_timeout_minutes"),
            minutes("dcui_timeout_minutes")
        ),
        (Some(30), Some(5), Some(20))
    );
    keys(&mut q, b"\x1b");
    q.wait_for_screen("System Customization", T);

    // View System Logs (from item 6, one down): the configuration log has the password change, the
    // management agent log the DHCP lease.
    down(&mut q, 1);
    keys(&mut q, b"\r");
    q.wait_for_screen("3) Configuration log", T);
    keys(&mut q, b"3");
    q.wait_for_screen("ember: DCUI: root password changed", T);
    keys(&mut q, b"\x1b");
    keys(&mut q, b"4");
    q.wait_for_screen("ember: DHCP lease 10.0.2.15/24", T);
    keys(&mut q, b"\x1b");
    keys(&mut q, b"\x1b");
    q.wait_for_screen("System Customization", T);

    // View Support Information (from item 7, one down) shows the SMBIOS facts; Esc goes back, Esc
    // again logs out.
    down(&mut q, 1);
    keys(&mut q, b"\r");
    q.wait_for_screen("Serial Number", T);
    keys(&mut q, b"\x1b");
    q.wait_for_screen("System Customization", T);
    keys(&mut q, b"\x1b");
    q.wait_for_screen("To manage this host, go to:", T);
    q.wait_for_screen("https://[fec0::5054:ff:fe00:10]/ (AUTOCONF)", T);

    // F12 (VT100+ form): Shut Down powers the machine off through ACPI: QEMU exits.
    login(&mut q, F12_VT100, "dcui-pass-1");
    q.wait_for_screen("<F2> Shut Down  <F11> Restart  <Esc> Cancel", T);
    keys(&mut q, F2_VT100);
    assert_eq!(q.wait_exit(T), 0, "QEMU ends on ACPI power-off");
    drop(q);

    // The password and the static address survive the power-off; Reset System Configuration goes
    // back to a first boot.
    let mut q = boot("dcui_menu_reset", &img, port, static_port);
    q.wait_for("configuration loaded from usb0", T);
    wait_for_http(static_addr, T);
    assert_eq!(request(static_addr, "GET", "/api/v1/host", Some(("root", "dcui-pass-1")), None).status, 200);
    q.wait_for_screen("https://ember/  https://10.0.2.20/ (STATIC)", T);
    login(&mut q, F2_VT100, "dcui-pass-1");
    q.wait_for_screen("System Customization", T);
    // Network Restore Options: back to DHCP (F11 confirms), reached at the DHCP address again.
    down(&mut q, 4);
    keys(&mut q, b"\r");
    q.wait_for_screen("<F11> Restore  <Esc> Cancel", T);
    keys(&mut q, F11);
    q.wait_for_screen("Network settings restored to the defaults", T);
    wait_for_http(addr, T);
    let m = request(addr, "GET", "/api/v1/network/management", Some(("root", "dcui-pass-1")), None);
    assert_eq!(m.json()["mode"], "dhcp", "{m:?}");
    // Reset System Configuration (five further down).
    down(&mut q, 5);
    keys(&mut q, b"\r");
    q.wait_for_screen("<F11> Reset  <Esc> Cancel", T);
    keys(&mut q, F11);
    q.wait_for("first boot: no configuration stored yet", T);
    wait_for_http(addr, T);
    assert_eq!(request(addr, "GET", "/api/v1/host", Some(("root", "ember-initial")), None).status, 200);
}
