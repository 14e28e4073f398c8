//! The management network and API, driven from outside the way an administrator's tools reach them:
//! QEMU user networking with a port forward (virtio-net, e1000e), and network namespaces with a tap
//! cable, a real DHCP/DNS server (dnsmasq), ping and raw hostile frames.
#![forbid(unsafe_code)]

use ember_systests::net::*;
use ember_systests::*;
use serde_json::Value;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const ROOT: (&str, &str) = ("root", "ember-initial");
const LEASE_TIMEOUT: Duration = Duration::from_secs(120);
const HTTP_TIMEOUT: Duration = Duration::from_secs(120);
/// The MAC the harness gives the first NIC.
const VMNIC0_MAC: &str = "52:54:00:00:00:10";

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn boot_with_nics(
    name: &str,
    options: &[&str],
    nics: Vec<NicSpec>,
    netns: Option<String>,
) -> (Qemu, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), options);
    let mut cfg = QemuConfig::new(name, &img);
    cfg.nics = nics;
    cfg.netns = netns;
    // NICs are reported before the boot line: callers wait for what they need in order.
    (Qemu::start(&cfg), dir)
}

/// Extracts the leased address from `DHCP lease a.b.c.d/nn from ...`.
fn leased_address(line: &str) -> String {
    let rest = line.split("DHCP lease ").nth(1).unwrap_or_else(|| panic!("no lease in {line:?}"));
    rest.split('/').next().unwrap().to_string()
}

fn get_host(addr: SocketAddr) -> Value {
    let r = request(addr, "GET", "/api/v1/host", Some(ROOT), None);
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

#[test]
fn api_on_virtio_net_with_user_networking() {
    let port = free_port();
    let static_port = free_port();
    let http_port = free_port();
    let nic = NicSpec::new(
        "virtio-net-pci",
        &format!("user,hostfwd=tcp:127.0.0.1:{port}-:443,hostfwd=tcp:127.0.0.1:{static_port}-10.0.2.20:443,hostfwd=tcp:127.0.0.1:{http_port}-:80"),
    );
    let (mut q, _dir) = boot_with_nics("net_virtio_user", &[], vec![nic], None);
    q.wait_for(&format!("vmnic0: virtio-net at 0000:00:03.0, MAC {VMNIC0_MAC}, link up"), BOOT_TIMEOUT);
    let lease =
        q.wait_for("DHCP lease 10.0.2.15/24 from 10.0.2.2, gateway 10.0.2.2, DNS 10.0.2.3", LEASE_TIMEOUT);
    assert_eq!(leased_address(&lease), "10.0.2.15");
    q.wait_for_screen("https://ember/  https://10.0.2.15/ (DHCP)", LEASE_TIMEOUT);
    let monitor_screen = q.framebuffer_text("net_virtio_idle");
    assert!(monitor_screen.contains("https://ember/  https://10.0.2.15/ (DHCP)"), "{monitor_screen}");
    let api = loopback(port);
    let landing = wait_for_http(api, HTTP_TIMEOUT);
    assert_eq!(landing.status, 200);
    assert!(landing.body.contains("/api/v1/host"));

    // HTTPS: the certificate the API presents is the one whose fingerprint the console shows
    // (and the boot log), so an administrator can check it before trusting it.
    let fingerprint = landing.certificate_sha256.clone().expect("served over TLS");
    let logged =
        format!("ember: HTTPS certificate in use: CN=ember (self-signed), SHA-256 fingerprint {fingerprint}");
    assert!(q.text().contains(&logged), "the boot log names the certificate");
    let (first, second) = fingerprint.split_at(48);
    q.wait_for_screen(first.trim_end_matches(':'), HTTP_TIMEOUT);
    q.wait_for_screen(second, HTTP_TIMEOUT);
    // Port 80 only redirects there, and serves nothing in clear text, credentials or not.
    let plain = exchange_plain(
        loopback(http_port),
        &request_bytes("GET", "/api/v1/host", Some(ROOT), None),
        HTTP_TIMEOUT,
    )
    .unwrap();
    assert_eq!(plain.status, 301, "{plain:?}");
    assert_eq!(plain.header("Location").as_deref(), Some("https://ember/api/v1/host"), "{plain:?}");
    assert!(!plain.body.contains("cpu_model"), "{plain:?}");
    // Plain HTTP on the HTTPS port gets no answer.
    let mut raw = TcpStream::connect(api).unwrap();
    raw.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    raw.write_all(&request_bytes("GET", "/api/v1/host", Some(ROOT), None)).unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut raw, &mut got);
    assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1"), "{got:?}");

    // Authentication: none, wrong password, wrong user, then right.
    let r = request(api, "GET", "/api/v1/host", None, None);
    assert_eq!(r.status, 401);
    assert!(r.header("WWW-Authenticate").is_some_and(|v| v.starts_with("Basic")), "{r:?}");
    assert_eq!(r.json()["error"]["code"], 401);
    assert_eq!(request(api, "GET", "/api/v1/host", Some(("root", "wrong-password")), None).status, 401);
    assert_eq!(request(api, "GET", "/api/v1/host", Some(("admin", ROOT.1)), None).status, 401);
    let host = get_host(api);
    assert_eq!(host["hostname"], "ember");
    assert_eq!(host["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(host["cpus"], 2);
    assert_eq!(host["vendor"], "QEMU");
    assert!(host["product"].as_str().unwrap().contains("Q35"), "{host}");
    assert!(host["cpu_model"].as_str().unwrap().contains("EPYC"), "{host}");
    assert_eq!(host["virtualization"], "AMD SVM with nested paging, VMRUN verified", "{host}");
    let mem = host["memory_bytes"].as_u64().unwrap();
    assert!(mem > 400 << 20 && mem <= 512 << 20, "{host}");
    assert!(host["uptime_s"].as_u64().is_some());
    assert_eq!(host["nics"][0]["name"], "vmnic0");
    assert_eq!(host["nics"][0]["mac"], VMNIC0_MAC);
    assert_eq!(host["nics"][0]["link"], "up");
    assert_eq!(host["nics"][0]["driver"], "virtio-net");
    let m = &host["management"];
    assert_eq!(
        (&m["mode"], &m["address"], &m["prefix"], &m["gateway"], &m["vlan"], &m["uplink"]),
        (&"dhcp".into(), &"10.0.2.15".into(), &24.into(), &"10.0.2.2".into(), &Value::Null, &"vmnic0".into()),
        "{m}"
    );
    assert_eq!(m["dns"], serde_json::json!(["10.0.2.3"]));

    // Bad, unknown and oversized requests.
    assert_eq!(request(api, "GET", "/api/v1/nothing-here", Some(ROOT), None).status, 404);
    assert_eq!(request(api, "DELETE", "/api/v1/host", Some(ROOT), None).status, 405);
    let r = exchange(api, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n", HTTP_TIMEOUT).unwrap();
    // (inside TLS: the bytes reach the HTTP parser)
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("malformed"), "{r:?}");
    let mut big = b"GET /api/v1/host HTTP/1.1\r\nX-Padding: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 10_000));
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(exchange(api, &big, HTTP_TIMEOUT).unwrap().status, 413);
    let r = exchange(
        api,
        b"PUT /api/v1/network/management HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n",
        HTTP_TIMEOUT,
    );
    assert_eq!(r.unwrap().status, 413);
    let bad = request(api, "PUT", "/api/v1/network/management", Some(ROOT), Some(r#"{"vlan":5000}"#));
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]["message"].as_str().unwrap().starts_with("vlan:"), "{bad:?}");

    // A stalled client holds only its own connection; it gets 408 after the request deadline.
    let mut slow = tls_connect(api, HTTP_TIMEOUT).unwrap();
    slow.write_all(b"GET /api/v1/host HTTP/1.1\r\nHost: ember\r\n").unwrap();
    let started = Instant::now();
    // Meanwhile, concurrent clients are all served.
    let workers: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                (0..4)
                    .map(|_| request(api, "GET", "/api/v1/host", Some(ROOT), None).status)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for w in workers {
        assert_eq!(w.join().unwrap(), vec![200; 4]);
    }
    let r = read_response(&mut slow).expect("the stalled client gets an answer");
    assert_eq!(r.status, 408, "{r:?}");
    assert!(started.elapsed() >= Duration::from_secs(9), "408 came after {:?}", started.elapsed());

    // Change to a static address at run time; the API answers on the new address.
    let body = r#"{"mode":"static","address":"10.0.2.20","netmask":"255.255.255.0","gateway":"10.0.2.2","dns":["10.0.2.3"]}"#;
    let r = request(api, "PUT", "/api/v1/network/management", Some(ROOT), Some(body));
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["pending"]["address"], "10.0.2.20");
    q.wait_for("management network: restarting", HTTP_TIMEOUT);
    q.wait_for("static 10.0.2.20/24 gateway 10.0.2.2", HTTP_TIMEOUT);
    q.wait_for_screen("https://ember/  https://10.0.2.20/ (STATIC)", HTTP_TIMEOUT);
    let moved = loopback(static_port);
    wait_for_http(moved, HTTP_TIMEOUT);
    let m = get_host(moved)["management"].clone();
    assert_eq!((&m["mode"], &m["address"]), (&"static".into(), &"10.0.2.20".into()), "{m}");

    // Change the root password: the old one stops working, the new one works.
    let r = request(moved, "PUT", "/api/v1/account/root/password", Some(ROOT), Some(r#"{"password":"abc"}"#));
    assert_eq!(r.status, 400, "{r:?}");
    let r = request(
        moved,
        "PUT",
        "/api/v1/account/root/password",
        Some(ROOT),
        Some(r#"{"password":"n3w-secret"}"#),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(request(moved, "GET", "/api/v1/host", Some(ROOT), None).status, 401);
    assert_eq!(request(moved, "GET", "/api/v1/host", Some(("root", "n3w-secret")), None).status, 200);
}

#[test]
fn api_on_e1000e_next_to_a_virtio_nic() {
    let port = free_port();
    let nics = vec![
        NicSpec::new("e1000e", &format!("user,hostfwd=tcp:127.0.0.1:{port}-:443")),
        NicSpec::new("virtio-net-pci", "user"),
    ];
    let (mut q, _dir) = boot_with_nics("net_e1000e_user", &[], nics, None);
    q.wait_for(&format!("vmnic0: e1000e at 0000:00:03.0, MAC {VMNIC0_MAC}, link up"), BOOT_TIMEOUT);
    q.wait_for("vmnic1: virtio-net at 0000:00:04.0, MAC 52:54:00:00:00:11, link up", BOOT_TIMEOUT);
    q.wait_for("DHCP lease 10.0.2.15/24", LEASE_TIMEOUT);
    let api = loopback(port);
    wait_for_http(api, HTTP_TIMEOUT);
    assert_eq!(request(api, "GET", "/api/v1/host", None, None).status, 401);
    let host = get_host(api);
    let nics: Vec<(String, String, String)> = host["nics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().into(),
                n["driver"].as_str().unwrap().into(),
                n["link"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        nics,
        vec![
            ("vmnic0".into(), "e1000e".into(), "up".into()),
            ("vmnic1".into(), "virtio-net".into(), "up".into())
        ]
    );
    // Many requests over one e1000e: the rings wrap several times.
    for _ in 0..40 {
        assert_eq!(request(api, "GET", "/api/v1/host", Some(ROOT), None).status, 200);
    }
    // Pull the cable and plug it back in: the e1000e reports its link state.
    q.monitor("set_link net0 off");
    q.wait_for("vmnic0: link down", HTTP_TIMEOUT);
    q.monitor("set_link net0 on");
    q.wait_for("vmnic0: link up", HTTP_TIMEOUT);
    let host = get_host(api);
    assert_eq!(host["nics"][0]["link"], "up");
}

fn tap_nic() -> NicSpec {
    NicSpec::new("virtio-net-pci", "tap,ifname=tap0,script=no,downscript=no")
}

#[test]
fn dhcp_from_dnsmasq_ping_dns_and_a_server_that_goes_away() {
    let mut ns = NetNs::new("dhcp");
    ns.ip(&["addr", "add", "192.168.77.1/24", "dev", "tap0"]);
    let logs = tempfile::tempdir().unwrap();
    let range = "192.168.77.50,192.168.77.59,255.255.255.0,2m";
    let server =
        ns.start_dnsmasq("tap0", "192.168.77.1", range, &["gw.ember.test/192.168.77.1"], logs.path());
    let (mut q, _dir) =
        boot_with_nics("net_dhcp_dnsmasq", &["hostname=esx-dhcp"], vec![tap_nic()], Some(ns.name.clone()));
    let lease = q.wait_for("DHCP lease 192.168.77.", LEASE_TIMEOUT);
    let leased_at = Instant::now();
    let ip = leased_address(&lease);
    assert!(lease.contains("gateway 192.168.77.1, DNS 192.168.77.1"), "{lease}");
    q.wait_for_screen(&format!("https://esx-dhcp/  https://{ip}/ (DHCP)"), LEASE_TIMEOUT);
    assert!(ns.ping(&ip, 3), "no ping answer from {ip}");

    let api: SocketAddr = format!("{ip}:443").parse().unwrap();
    let host = ns.within(move || {
        wait_for_http(api, HTTP_TIMEOUT);
        let h = request(api, "GET", "/api/v1/host", Some(ROOT), None);
        let found = request(api, "GET", "/api/v1/network/resolve?name=gw.ember.test", Some(ROOT), None);
        let missing =
            request(api, "GET", "/api/v1/network/resolve?name=nowhere.ember.test", Some(ROOT), None);
        (h, found, missing)
    });
    let (h, found, missing) = host;
    assert_eq!(h.status, 200, "{h:?}");
    let m = &h.json()["management"];
    assert_eq!(m["address"], ip.as_str());
    assert_eq!(m["dns"], serde_json::json!(["192.168.77.1"]));
    assert_eq!(h.json()["hostname"], "esx-dhcp");
    assert_eq!(found.status, 200, "{found:?}");
    assert_eq!(found.json()["addresses"], serde_json::json!(["192.168.77.1"]));
    assert_eq!(missing.status, 502, "{missing:?}");

    // The DHCP server goes away. The lease (2 minutes) is kept through renewal (T1, 60 s) and
    // rebinding (T2, 105 s) attempts, then it expires and the loss is reported.
    ns.stop(server);
    let after_t1 = Duration::from_secs(75);
    if let Some(wait) = after_t1.checked_sub(leased_at.elapsed()) {
        std::thread::sleep(wait);
    }
    assert!(ns.ping(&ip, 3), "address dropped before the lease expired");
    q.wait_for("DHCP lease lost", Duration::from_secs(150));
    assert!(leased_at.elapsed() >= Duration::from_secs(110), "lost after {:?}", leased_at.elapsed());
    q.wait_for_screen("no address yet: vmnic0: DHCP lease lost", HTTP_TIMEOUT);
    assert!(!ns.ping(&ip, 2), "{ip} still answers after the lease expired");

    // The server comes back: a new lease is found without a reboot.
    ns.start_dnsmasq("tap0", "192.168.77.1", range, &[], logs.path());
    q.wait_for("DHCP lease 192.168.77.", LEASE_TIMEOUT);
    q.wait_for_screen("(DHCP)", HTTP_TIMEOUT);
}

#[test]
fn dhcp_lease_on_a_management_vlan() {
    let mut ns = NetNs::new("vlan");
    let logs = tempfile::tempdir().unwrap();
    // Untagged, a decoy server on another subnet; the appliance must take its lease from VLAN 100.
    ns.ip(&["addr", "add", "192.168.77.1/24", "dev", "tap0"]);
    ns.start_dnsmasq(
        "tap0",
        "192.168.77.1",
        "192.168.77.50,192.168.77.59,255.255.255.0,2m",
        &[],
        logs.path(),
    );
    let vlan_dev = ns.add_vlan(100, "192.168.100.1/24");
    ns.start_dnsmasq(
        &vlan_dev,
        "192.168.100.1",
        "192.168.100.50,192.168.100.59,255.255.255.0,2m",
        &[],
        logs.path(),
    );
    let (mut q, _dir) = boot_with_nics("net_vlan", &["vlanid=100"], vec![tap_nic()], Some(ns.name.clone()));
    q.wait_for("DHCP, VLAN 100, host name ember", BOOT_TIMEOUT);
    let lease = q.wait_for("DHCP lease 192.168.", LEASE_TIMEOUT);
    let ip = leased_address(&lease);
    assert!(ip.starts_with("192.168.100."), "lease from the wrong network: {lease}");
    assert!(ns.ping(&ip, 3), "no ping answer from {ip} on VLAN 100");
    let api: SocketAddr = format!("{ip}:443").parse().unwrap();
    let h = ns.within(move || {
        wait_for_http(api, HTTP_TIMEOUT);
        request(api, "GET", "/api/v1/host", Some(ROOT), None)
    });
    assert_eq!(h.json()["management"]["vlan"], 100);
}

#[test]
fn static_address_survives_hostile_traffic() {
    let ns = NetNs::new("hostile");
    ns.ip(&["addr", "add", "192.168.77.1/24", "dev", "tap0"]);
    let options = [
        "bootproto=static",
        "ip=192.168.77.9",
        "netmask=255.255.255.0",
        "gateway=192.168.77.1",
        "hostname=esx-static",
    ];
    let (mut q, _dir) =
        boot_with_nics("net_static_hostile", &options, vec![tap_nic()], Some(ns.name.clone()));
    q.wait_for("static 192.168.77.9/24 gateway 192.168.77.1, host name esx-static", BOOT_TIMEOUT);
    q.wait_for_screen("https://esx-static/  https://192.168.77.9/ (STATIC)", BOOT_TIMEOUT);
    assert!(ns.ping("192.168.77.9", 3));
    let api: SocketAddr = "192.168.77.9:443".parse().unwrap();
    let ok = |ns: &NetNs| {
        ns.within(move || {
            wait_for_http(api, HTTP_TIMEOUT);
            request(api, "GET", "/api/v1/host", Some(ROOT), None).status
        })
    };
    assert_eq!(ok(&ns), 200);

    let tool = workspace().join("tests/tools/hostile_frames.py");
    let tool = tool.to_str().unwrap();
    let out = ns.exec(&["python3", tool, "tap0", VMNIC0_MAC, "192.168.77.9", "192.168.77", "garbage"]);
    assert!(out.contains("garbage frames"), "{out}");
    assert!(ns.ping("192.168.77.9", 3), "no ping answer after garbage frames");
    assert_eq!(ok(&ns), 200);

    // A SYN flood from 100 spoofed neighbours: half-open connections time out, the API keeps answering.
    let out =
        ns.exec(&["python3", tool, "tap0", VMNIC0_MAC, "192.168.77.9", "192.168.77", "synflood", "3000"]);
    assert!(out.contains("synflood frames"), "{out}");
    assert!(ns.ping("192.168.77.9", 5), "no ping answer during the SYN flood");
    assert_eq!(ok(&ns), 200);
    // Still one boot, no exception report.
    let text = q.text();
    assert_eq!(text.matches(" booted: ").count(), 1);
    assert!(!text.contains("EXCEPTION") && !text.contains("PANIC"), "the appliance reported a crash");
}

/// Polls `GET /api/v1/network/management` at `api` until its `ipv6_addresses` list `want`.
fn wait_for_ipv6_address(api: SocketAddr, want: &str) -> Value {
    let start = Instant::now();
    loop {
        let m = request(api, "GET", "/api/v1/network/management", Some(ROOT), None).json();
        let listed = m["ipv6_addresses"].as_array().is_some_and(|l| l.iter().any(|a| a == want));
        if listed || start.elapsed() > LEASE_TIMEOUT {
            assert!(listed, "{want} never listed: {m}");
            return m;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn ipv6_slaac_from_router_advertisements_then_static() {
    let mut ns = NetNs::new("ipv6");
    ns.ip(&["addr", "add", "192.168.78.1/24", "dev", "tap0"]);
    ns.ip(&["addr", "add", "2001:db8:78::1/64", "dev", "tap0", "nodad"]);
    let logs = tempfile::tempdir().unwrap();
    ns.start_router_advertisements("tap0", "2001:db8:78::", logs.path());
    let (mut q, _dir) = boot_with_nics(
        "net_ipv6",
        &["bootproto=static", "ip=192.168.78.20/24"],
        vec![tap_nic()],
        Some(ns.name.clone()),
    );
    q.wait_for_screen("https://ember/  https://192.168.78.20/ (STATIC)", BOOT_TIMEOUT);
    let api: SocketAddr = "192.168.78.20:443".parse().unwrap();

    // Automatic: the link-local address and one from the router's prefix (EUI-64 of the MAC).
    let slaac = "2001:db8:78:0:5054:ff:fe00:10";
    let (put, m) = ns.within(move || {
        wait_for_http(api, HTTP_TIMEOUT);
        let body = r#"{"ipv6":{"mode":"auto"}}"#;
        let put = request(api, "PUT", "/api/v1/network/management", Some(ROOT), Some(body));
        (put, wait_for_ipv6_address(api, &format!("{slaac}/64")))
    });
    assert_eq!(put.status, 202, "{put:?}");
    assert_eq!(m["ipv6"], serde_json::json!({"mode": "auto"}), "{m}");
    assert!(m["ipv6_addresses"].as_array().unwrap().iter().any(|a| a == "fe80::5054:ff:fe00:10/64"), "{m}");
    q.wait_for_screen(&format!("https://[{slaac}]/ (AUTOCONF)"), HTTP_TIMEOUT);
    // Reached over IPv6: ping (global and link-local) and the API.
    assert!(ns.ping(slaac, 3), "no ping answer from {slaac}");
    assert!(ns.ping("fe80::5054:ff:fe00:10%tap0", 3), "no ping answer from the link-local address");
    let over_v6: SocketAddr = format!("[{slaac}]:443").parse().unwrap();
    let host = ns.within(move || request(over_v6, "GET", "/api/v1/host", Some(ROOT), None));
    assert_eq!(host.status, 200, "{host:?}");

    // Static: the fixed address replaces the SLAAC one and answers; the setting is stored.
    let fixed: SocketAddr = "[2001:db8:78::20]:443".parse().unwrap();
    let (put, m, host) = ns.within(move || {
        let body =
            r#"{"ipv6":{"mode":"static","address":"2001:db8:78::20","prefix":64,"gateway":"fe80::1"}}"#;
        let put = request(api, "PUT", "/api/v1/network/management", Some(ROOT), Some(body));
        let m = wait_for_ipv6_address(api, "2001:db8:78::20/64");
        wait_for_http(fixed, HTTP_TIMEOUT);
        (put, m, request(fixed, "GET", "/api/v1/config", Some(ROOT), None))
    });
    assert_eq!(put.status, 202, "{put:?}");
    assert_eq!(
        m["ipv6_addresses"],
        serde_json::json!(["fe80::5054:ff:fe00:10/64", "2001:db8:78::20/64"]),
        "{m}"
    );
    assert_eq!(host.status, 200, "{host:?}");
    assert_eq!(host.json()["network"]["ipv6"]["address"], "2001:db8:78::20", "{host:?}");
    q.wait_for_screen("https://[2001:db8:78::20]/ (STATIC)", HTTP_TIMEOUT);
}
