//! Disks and datastores the way an administrator meets them: a host with a blank NVMe disk and a
//! virtio disk that holds data lists both through the API, makes a datastore on the blank one (and is
//! refused on the other until told to overwrite it), finds the datastore again at the next boot, and
//! the datastore checks clean offline with `ember-image datastore fsck` on the disk image QEMU used.
//! A file is uploaded (streamed), listed, downloaded, copied out offline and deleted. A second
//! datastore goes into the free space of the boot media (never overwritten), beside the
//! configuration store, which keeps working.
#![forbid(unsafe_code)]

use ember_systests::net::*;
use ember_systests::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const INITIAL: (&str, &str) = ("root", "ember-initial");
const HTTP_TIMEOUT: Duration = Duration::from_secs(180);

fn boot(name: &str, img: &Path, ssd: &Path, data: &Path, port: u16) -> Qemu {
    let mut cfg = QemuConfig::new(name, img);
    cfg.disk = Disk::Virtio;
    cfg.nics = vec![NicSpec::new("virtio-net-pci", &format!("user,hostfwd=tcp:127.0.0.1:{port}-:443"))];
    cfg.extra = vec![
        "-drive".into(),
        format!("if=none,id=ssd,format=raw,file={}", ssd.display()),
        "-device".into(),
        "nvme,serial=EMB-SSD-1,drive=ssd".into(),
        "-drive".into(),
        format!("if=none,id=old,format=raw,file={}", data.display()),
        "-device".into(),
        "virtio-blk-pci,drive=old".into(),
    ];
    Qemu::start(&cfg)
}

fn base64_auth((user, password): (&str, &str)) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn disks(addr: SocketAddr) -> Vec<Value> {
    let r = request(addr, "GET", "/api/v1/disks", Some(INITIAL), None);
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["disks"].as_array().unwrap().clone()
}

#[test]
fn a_datastore_is_made_on_a_blank_disk_found_again_after_reboot_and_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    // A boot media with 330 MiB of free space after Ember's partitions.
    let img = build_image_with(dir.path(), &[], &["--size", "400M"]);
    let ssd = dir.path().join("ssd.img");
    std::fs::File::create(&ssd).unwrap().set_len(256 << 20).unwrap();
    let data = dir.path().join("old.img");
    let mut old = vec![0u8; 128 << 20];
    old[..16].copy_from_slice(b"some old file sy");
    std::fs::write(&data, &old).unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let mut q = boot("datastores_first", &img, &ssd, &data, port);
    q.wait_for("first boot: configuration stored", BOOT_TIMEOUT);
    wait_for_http(addr, HTTP_TIMEOUT);
    let list = disks(addr);
    let by_driver =
        |d: &str| list.iter().find(|v| v["driver"] == d && v["used_by"] != "boot media").unwrap().clone();
    let boot_media = list.iter().find(|v| v["used_by"] == "boot media").expect("the boot media is listed");
    assert_eq!(boot_media["driver"], "virtio-blk");
    let nvme = by_driver("nvme");
    assert_eq!(
        (nvme["used_by"].as_str(), nvme["serial"].as_str()),
        (Some("free"), Some("EMB-SSD-1")),
        "{nvme}"
    );
    assert_eq!(nvme["size_bytes"], 256u64 << 20);
    assert!(!nvme["model"].as_str().unwrap().is_empty(), "{nvme}");
    let other = by_driver("virtio-blk");
    assert!(other["used_by"].as_str().unwrap().starts_with("data"), "{other}");
    let (nvme_name, other_name) = (nvme["name"].as_str().unwrap(), other["name"].as_str().unwrap());

    // The disk with data is refused, with what is on it, and left alone.
    let body = format!(r#"{{"name":"old","disk":"{other_name}"}}"#);
    let r = request(addr, "POST", "/api/v1/datastores", Some(INITIAL), Some(&body));
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.body.contains("non-zero bytes at offset 0") && r.body.contains("overwrite"), "{r:?}");
    let body = format!(r#"{{"name":"datastore1","disk":"{nvme_name}"}}"#);
    let r = request(addr, "POST", "/api/v1/datastores", Some(INITIAL), Some(&body));
    assert_eq!(r.status, 201, "{r:?}");
    let made = r.json();
    assert_eq!(made["disk"], nvme_name);
    assert!(made["capacity_bytes"].as_u64().unwrap() > 200 << 20, "{made}");
    let r = request(
        addr,
        "PUT",
        "/api/v1/datastores/datastore1",
        Some(INITIAL),
        Some(r#"{"name":"local nvme"}"#),
    );
    assert_eq!(r.status, 200, "{r:?}");
    // The boot media is never overwritten; a datastore goes into its free space.
    let boot_name = boot_media["name"].as_str().unwrap();
    let body = format!(r#"{{"name":"boot ds","disk":"{boot_name}","overwrite":true}}"#);
    let r = request(addr, "POST", "/api/v1/datastores", Some(INITIAL), Some(&body));
    assert!(r.status >= 400 && r.body.contains("never overwritten"), "{r:?}");
    let body = format!(r#"{{"name":"boot ds","disk":"{boot_name}"}}"#);
    let r = request(addr, "POST", "/api/v1/datastores", Some(INITIAL), Some(&body));
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r.json()["capacity_bytes"].as_u64().unwrap() > 300 << 20, "{r:?}");
    let boot_now = disks(addr).into_iter().find(|d| d["name"] == boot_name).unwrap();
    assert_eq!(boot_now["used_by"], "boot media and datastore \"boot ds\"");
    // The configuration store beside it still stores changes.
    let r = request(addr, "PUT", "/api/v1/config", Some(INITIAL), Some(r#"{"dns_search":["boot.example"]}"#));
    assert_eq!(r.status, 200, "{r:?}");
    let sequence = r.json()["store"]["sequence"].as_u64().unwrap();

    // A 3 MB image uploaded (streamed; its second MiB zeros, which stays unallocated), listed,
    // downloaded back.
    let mut file: Vec<u8> = (0..3_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    file[1 << 20..2 << 20].fill(0);
    let token = base64_auth(INITIAL);
    let mut raw = format!(
        "PUT /api/v1/datastores/local%20nvme/files/iso/test%20image.bin HTTP/1.1\r\nHost: ember\r\nConnection: close\r\n\
         Authorization: Basic {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        file.len()
    )
    .into_bytes();
    raw.extend_from_slice(&file);
    let r = exchange(addr, &raw, Duration::from_secs(120)).unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let want = sha256_hex(&file);
    assert_eq!(r.json()["sha256"], want.as_str());
    let r = request(addr, "GET", "/api/v1/datastores/local%20nvme/files/iso", Some(INITIAL), None);
    assert_eq!(r.status, 200, "{r:?}");
    let entry = r.json()["entries"][0].clone();
    assert_eq!(
        (entry["name"].as_str(), entry["size_bytes"].as_u64()),
        (Some("test image.bin"), Some(3_000_000))
    );
    assert_eq!(entry["allocated_bytes"], 2u64 << 20, "the zero MiB is not stored: {entry}");
    let r = request(
        addr,
        "GET",
        "/api/v1/datastores/local%20nvme/files/iso/test%20image.bin",
        Some(INITIAL),
        None,
    );
    assert_eq!(r.status, 200);
    assert!(r.body.as_bytes() == &file[..], "the download is what was uploaded");
    let r = request(addr, "GET", "/api/v1/datastores/local%20nvme/files/../x", Some(INITIAL), None);
    assert_eq!(r.status, 400, "{r:?}");
    drop(q);
    assert_eq!(&std::fs::read(&data).unwrap()[..16], b"some old file sy", "the refused disk is untouched");

    // Offline, on any Linux machine: the datastore checks clean.
    let (ok, out, err) = run_tool(&["datastore", "fsck", ssd.to_str().unwrap()]);
    assert!(ok && out.contains("\"local nvme\"") && out.contains("clean"), "{out}{err}");
    let (ok, out, err) = run_tool(&["datastore", "fsck", img.to_str().unwrap()]);
    assert!(ok && out.contains("partition 5: datastore \"boot ds\"") && out.contains("clean"), "{out}{err}");
    let (ok, out, err) = run_tool(&["inspect", img.to_str().unwrap()]);
    assert!(ok && out.contains(&format!("config store: configuration sequence {sequence} ")), "{out}{err}");
    let copy = dir.path().join("copy.bin");
    let (ok, out, err) =
        run_tool(&["datastore", "get", ssd.to_str().unwrap(), "iso/test image.bin", copy.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(std::fs::read(&copy).unwrap() == file, "the offline copy is what was uploaded");

    let mut q = boot("datastores_reboot", &img, &ssd, &data, port);
    q.wait_for(&format!("datastore \"boot ds\" on {boot_name} partition 5"), BOOT_TIMEOUT);
    q.wait_for(&format!("datastore \"local nvme\" on {nvme_name} partition 1"), BOOT_TIMEOUT);
    wait_for_http(addr, HTTP_TIMEOUT);
    let r = request(addr, "GET", "/api/v1/datastores", Some(INITIAL), None);
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["datastores"][1]["name"], "local nvme", "{v}");
    assert_eq!(v["datastores"][1]["uuid"], made["uuid"], "the same datastore");
    let nvme = disks(addr).into_iter().find(|d| d["name"] == nvme_name).unwrap();
    assert_eq!(nvme["used_by"], "datastore \"local nvme\"");
    let r = request(addr, "GET", "/api/v1/datastores/local%20nvme/files/iso", Some(INITIAL), None);
    assert_eq!(r.json()["entries"][0]["name"], "test image.bin", "the upload survived the reboot");
    let r = request(
        addr,
        "DELETE",
        "/api/v1/datastores/local%20nvme/files/iso/test%20image.bin",
        Some(INITIAL),
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    for name in ["local%20nvme", "boot%20ds"] {
        let r = request(addr, "DELETE", &format!("/api/v1/datastores/{name}"), Some(INITIAL), None);
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = request(addr, "GET", "/api/v1/datastores", Some(INITIAL), None);
    assert_eq!(r.json()["datastores"].as_array().unwrap().len(), 0);
    drop(q);
    // The boot media is as it was built, its configuration kept.
    let (ok, out, err) = run_tool(&["inspect", img.to_str().unwrap()]);
    assert!(
        ok && !out.contains("Ember datastore") && out.contains(&format!("sequence {sequence} ")),
        "{out}{err}"
    );
}

/// Uploads `data` to `path` on datastore `ds` (URL-encoded by the caller).
fn upload(addr: SocketAddr, ds: &str, path: &str, data: &[u8]) -> std::io::Result<HttpResponse> {
    let mut raw = format!(
        "PUT /api/v1/datastores/{ds}/files/{path} HTTP/1.1\r\nHost: ember\r\nConnection: close\r\n\
         Authorization: Basic {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        base64_auth(INITIAL),
        data.len()
    )
    .into_bytes();
    raw.extend_from_slice(data);
    exchange(addr, &raw, Duration::from_secs(60))
}

/// QEMU is killed at random moments while a client uploads, makes directories and deletes: after
/// every cut the datastore checks clean offline, every upload and delete that was acknowledged is
/// there (byte for byte) or gone, and a file whose delete was cut short is either gone or whole.
#[test]
fn power_cuts_during_uploads_and_changes_leave_a_clean_datastore_with_everything_acknowledged() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    const CUTS: u64 = 30;
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let ssd = dir.path().join("ssd.img");
    // 2 GiB (sparse): every file takes at least one 1 MiB block, and 30 cuts make hundreds.
    std::fs::File::create(&ssd).unwrap().set_len(2 << 30).unwrap();
    let spare = dir.path().join("spare.img");
    std::fs::File::create(&spare).unwrap().set_len(64 << 20).unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ssd_path = ssd.to_str().unwrap().to_string();
    // Path -> contents of every acknowledged upload not acknowledged as deleted since.
    let acked: Arc<Mutex<BTreeMap<String, Vec<u8>>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let deleted: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    // A file whose delete was sent but not answered: either state is right after the cut.
    type InFlight = Arc<Mutex<Option<(String, Vec<u8>)>>>;
    let deleting: InFlight = Arc::new(Mutex::new(None));
    let mut seed = 0x5eed_u64;
    for cut in 0..CUTS {
        let mut q = boot(&format!("datastores_cut_{cut}"), &img, &ssd, &spare, port);
        if cut == 0 {
            q.wait_for("first boot: configuration stored", BOOT_TIMEOUT);
            wait_for_http(addr, HTTP_TIMEOUT);
            let nvme = disks(addr).into_iter().find(|d| d["driver"] == "nvme").unwrap();
            let body = format!(r#"{{"name":"cuts","disk":"{}"}}"#, nvme["name"].as_str().unwrap());
            let r = request(addr, "POST", "/api/v1/datastores", Some(INITIAL), Some(&body));
            assert_eq!(r.status, 201, "{r:?}");
        } else {
            q.wait_for("datastore \"cuts\" on", BOOT_TIMEOUT);
            wait_for_http(addr, HTTP_TIMEOUT);
        }
        // The client: uploads of different sizes, directories, deletes of earlier files.
        let stop = Arc::new(AtomicBool::new(false));
        let (acked2, deleted2, stop2, deleting2) =
            (acked.clone(), deleted.clone(), stop.clone(), deleting.clone());
        let client = std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                i += 1;
                let path = format!("c{cut}/f{i}.bin");
                let len = 20_000 + ((cut * 7 + i * 13) % 40) as usize * 9_000;
                let data: Vec<u8> = (0..len).map(|k| (k as u64 * 31 + cut * 7 + i) as u8).collect();
                match i % 4 {
                    0 => {
                        let victim = acked2.lock().unwrap().pop_first();
                        if let Some((v, data)) = victim {
                            *deleting2.lock().unwrap() = Some((v.clone(), data));
                            let url = format!("/api/v1/datastores/cuts/files/{v}");
                            match exchange(
                                addr,
                                &request_bytes("DELETE", &url, Some(INITIAL), None),
                                Duration::from_secs(30),
                            ) {
                                Ok(r) if r.status == 200 => {
                                    *deleting2.lock().unwrap() = None;
                                    deleted2.lock().unwrap().push(v);
                                }
                                Ok(r) => panic!("DELETE {v}: {r:?}"),
                                Err(_) => break,
                            }
                        }
                    }
                    1 => {
                        let url = format!("/api/v1/datastores/cuts/files/c{cut}/d{i}");
                        let body = r#"{"type":"directory"}"#;
                        if exchange(
                            addr,
                            &request_bytes("POST", &url, Some(INITIAL), Some(body)),
                            Duration::from_secs(30),
                        )
                        .is_err()
                        {
                            break;
                        }
                    }
                    _ => match upload(addr, "cuts", &path, &data) {
                        Ok(r) if r.status == 201 => {
                            acked2.lock().unwrap().insert(path, data);
                        }
                        Ok(r) => panic!("upload {path}: {r:?}"),
                        Err(_) => break,
                    },
                }
            }
        });
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(300 + (seed >> 33) % 2500));
        drop(q); // power cut
        stop.store(true, Ordering::SeqCst);
        client.join().expect("the client saw an answer it should not have");
        let (ok, out, err) = run_tool(&["datastore", "fsck", &ssd_path]);
        assert!(ok && out.contains("clean"), "cut {cut}: {out}{err}");
        for (path, data) in acked.lock().unwrap().iter() {
            let copy = dir.path().join("copy.bin");
            let (ok, out, err) = run_tool(&["datastore", "get", &ssd_path, path, copy.to_str().unwrap()]);
            assert!(ok, "cut {cut}: acknowledged {path} is missing: {out}{err}");
            assert!(std::fs::read(&copy).unwrap() == *data, "cut {cut}: {path} differs");
        }
        if let Some((path, data)) = deleting.lock().unwrap().take() {
            let copy = dir.path().join("copy.bin");
            let (ok, _, _) = run_tool(&["datastore", "get", &ssd_path, &path, copy.to_str().unwrap()]);
            if ok {
                assert!(
                    std::fs::read(&copy).unwrap() == data,
                    "cut {cut}: {path} (delete cut short) differs"
                );
                acked.lock().unwrap().insert(path, data);
            } else {
                deleted.lock().unwrap().push(path);
            }
        }
        for path in deleted.lock().unwrap().iter() {
            let (ok, _, _) = run_tool(&["datastore", "ls", &ssd_path, path]);
            assert!(!ok, "cut {cut}: {path} was deleted, and is back");
        }
    }
    assert!(
        acked.lock().unwrap().len() + deleted.lock().unwrap().len() >= CUTS as usize,
        "the client got work done"
    );
}

/// The test guest's kernel and initrd (`scripts/guest-fixtures`).
fn guest_files() -> (std::path::PathBuf, std::path::PathBuf) {
    let guest = workspace().join("target/guest");
    let (kernel, initrd) = (guest.join("vmlinuz"), guest.join("initramfs.gz"));
    assert!(kernel.exists() && initrd.exists(), "guest fixtures missing: run scripts/guest-fixtures");
    (kernel, initrd)
}

/// Makes datastore `name` on the host's NVMe disk and uploads the test guest's kernel and initrd
/// to `boot/vmlinuz` and `boot/initrd.gz` on it.
fn datastore_with_guest(addr: SocketAddr, name: &str) {
    let nvme = disks(addr).into_iter().find(|d| d["driver"] == "nvme").unwrap();
    let body = format!(r#"{{"name":"{name}","disk":"{}"}}"#, nvme["name"].as_str().unwrap());
    let r = request(addr, "POST", "/api/v1/datastores", Some(INITIAL), Some(&body));
    assert_eq!(r.status, 201, "{r:?}");
    let (kernel, initrd) = guest_files();
    for (file, path) in [(&kernel, "boot/vmlinuz"), (&initrd, "boot/initrd.gz")] {
        let r = upload(addr, name, path, &std::fs::read(file).unwrap()).unwrap();
        assert_eq!(r.status, 201, "{r:?}");
    }
}

/// A VM made at run time, as an ESXi administrator makes one: a datastore on the NVMe disk, the
/// test guest's kernel and initrd uploaded, `POST /api/v1/vms` with a 64 GiB thin disk; the guest
/// writes its disk, syncs, reboots and reads the write back; the disk uses a few MiB of the
/// datastore. What cannot be done is refused with a reason (a second VM of the same name, removing
/// the datastore or the disk of a registered VM, a path leaving the datastore, a size out of range).
/// After a power cut the datastore checks clean offline, and the host boots with the VM in its
/// inventory and the guest's synced write on its disk; deleting the VM with its disks frees the
/// datastore.
#[test]
fn a_vm_made_through_the_api_runs_from_a_datastore_and_survives_a_power_cut() {
    guest_files();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let ssd = dir.path().join("ssd.img");
    std::fs::File::create(&ssd).unwrap().set_len(1 << 30).unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let boot_host = |name: &str| {
        let mut cfg = QemuConfig::new(name, &img);
        cfg.disk = Disk::Virtio;
        cfg.memory_mib = 1024;
        cfg.nics = vec![NicSpec::new("virtio-net-pci", &format!("user,hostfwd=tcp:127.0.0.1:{port}-:443"))];
        cfg.extra = vec![
            "-drive".into(),
            format!("if=none,id=ssd,format=raw,file={}", ssd.display()),
            "-device".into(),
            "nvme,serial=EMB-SSD-2,drive=ssd".into(),
        ];
        Qemu::start(&cfg)
    };
    let vm_state = |name: &str| {
        let r = request(addr, "GET", &format!("/api/v1/vms/{name}"), Some(INITIAL), None);
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    };
    let wait_console = |q: &Qemu, want: &str| {
        let start = std::time::Instant::now();
        loop {
            let r = request(addr, "GET", "/api/v1/vms/thin/console", Some(INITIAL), None);
            if r.body.contains(want) {
                return r.body;
            }
            let state = vm_state("thin");
            assert!(
                start.elapsed() < Duration::from_secs(600) && state["state"] != "failed",
                "{want:?} not on the console; VM {state}\nconsole:\n{}\nhost log:\n{}",
                r.body,
                q.text()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    };

    let mut q = boot_host("vm_datastore_first");
    q.wait_for("first boot: configuration stored", BOOT_TIMEOUT);
    wait_for_http(addr, HTTP_TIMEOUT);
    datastore_with_guest(addr, "datastore1");
    let def = serde_json::json!({
        "name": "thin", "vcpus": 1, "memory_mib": 160,
        "kernel": "[datastore1] boot/vmlinuz", "initrd": "[datastore1] boot/initrd.gz",
        "cmdline": "console=ttyS0 ember.action=write", "disks": [{"size_gib": 64}],
    });
    // Refusals first: nothing is made by them.
    for (change, status, says) in [
        (serde_json::json!({"kernel": "[datastore1] ../etc/vmlinuz"}), 400, "kernel"),
        (
            serde_json::json!({"kernel": "[datastore1] boot/nope"}),
            400,
            "kernel: [datastore1] boot/nope: no such file",
        ),
        (serde_json::json!({"kernel": "[elsewhere] boot/vmlinuz"}), 400, "elsewhere"),
        (serde_json::json!({"disks": [{"size_gib": 0}]}), 400, "disks[0].size_gib"),
        (serde_json::json!({"name": "has space"}), 400, "name"),
    ] {
        let mut bad = def.clone();
        for (k, v) in change.as_object().unwrap() {
            bad[k] = v.clone();
        }
        let r = request(addr, "POST", "/api/v1/vms", Some(INITIAL), Some(&bad.to_string()));
        assert!(r.status == status && r.body.contains(says), "{bad}: {r:?}");
    }
    let r = request(addr, "POST", "/api/v1/vms", Some(INITIAL), Some(&def.to_string()));
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["definition"], "[datastore1] thin/thin.json");
    let r = request(addr, "POST", "/api/v1/vms", Some(INITIAL), Some(&def.to_string()));
    assert_eq!(r.status, 409, "the same name again: {r:?}");
    let r = request(addr, "GET", "/api/v1/datastores/datastore1/files/thin", Some(INITIAL), None);
    let entries = r.json()["entries"].as_array().unwrap().clone();
    let disk = entries.iter().find(|e| e["name"] == "thin.img").expect("the disk is in the VM's folder");
    assert_eq!((disk["size_bytes"].as_u64(), disk["allocated_bytes"].as_u64()), (Some(64 << 30), Some(0)));
    let r = request(addr, "DELETE", "/api/v1/datastores/datastore1/files/thin/thin.img", Some(INITIAL), None);
    assert!(r.status == 409 && r.body.contains("in use by VM thin"), "{r:?}");
    let r = request(addr, "DELETE", "/api/v1/datastores/datastore1", Some(INITIAL), None);
    assert!(r.status == 409 && r.body.contains("VM thin"), "{r:?}");

    // The guest writes its disk, syncs and reboots; after the reboot it reads the write back.
    let r = request(addr, "POST", "/api/v1/vms/thin/start", Some(INITIAL), Some("{}"));
    assert_eq!(r.status, 200, "{r:?}");
    let console = wait_console(&q, "EMBER-GUEST: after reboot vda says EMBER-WRITTEN");
    let written =
        console.lines().find_map(|l| l.split("after reboot vda says ").nth(1)).unwrap().trim().to_string();
    let r = request(addr, "GET", "/api/v1/datastores/datastore1/files/thin", Some(INITIAL), None);
    let entries = r.json()["entries"].as_array().unwrap().clone();
    let used = entries.iter().find(|e| e["name"] == "thin.img").unwrap()["allocated_bytes"].as_u64().unwrap();
    assert!(used > 0 && used <= 16 << 20, "a thin disk: {used} bytes of 64 GiB used");
    drop(q); // power cut

    let (ok, out, err) = run_tool(&["datastore", "fsck", ssd.to_str().unwrap()]);
    assert!(ok && out.contains("clean"), "{out}{err}");
    let mut q = boot_host("vm_datastore_again");
    q.wait_for("ember: VM thin: registered ([datastore1] thin/thin.json)", BOOT_TIMEOUT);
    wait_for_http(addr, HTTP_TIMEOUT);
    assert_eq!(vm_state("thin")["state"], "stopped");
    let r = request(addr, "POST", "/api/v1/vms/thin/start", Some(INITIAL), Some("{}"));
    assert_eq!(r.status, 200, "{r:?}");
    let r = request(addr, "PUT", "/api/v1/vms/thin", Some(INITIAL), Some(r#"{"memory_mib": 192}"#));
    assert!(r.status == 409 && r.body.contains("stop it first"), "a running VM is not edited: {r:?}");
    let console = wait_console(&q, "EMBER-GUEST: after reboot vda says");
    assert!(
        console.contains(&format!("after reboot vda says {written}")),
        "the synced write ({written:?}) survived:\n{console}"
    );
    let start = std::time::Instant::now();
    while vm_state("thin")["state"] != "stopped" {
        assert!(start.elapsed() < Duration::from_secs(120), "the guest powers itself off");
        std::thread::sleep(Duration::from_secs(1));
    }
    // Edited while stopped: its disk grown; more RAM than the host has is refused at start.
    let change = r#"{"memory_mib": 3072, "disks": [{"file": "thin.img", "size_gib": 80}]}"#;
    let r = request(addr, "PUT", "/api/v1/vms/thin", Some(INITIAL), Some(change));
    assert_eq!((r.status, r.json()["memory_mib"].as_u64()), (200, Some(3072)), "{r:?}");
    let r = request(addr, "GET", "/api/v1/datastores/datastore1/files/thin", Some(INITIAL), None);
    let entries = r.json()["entries"].as_array().unwrap().clone();
    let disk = entries.iter().find(|e| e["name"] == "thin.img").unwrap();
    assert_eq!(disk["size_bytes"].as_u64(), Some(80 << 30), "grown: {disk}");
    let r = request(addr, "POST", "/api/v1/vms/thin/start", Some(INITIAL), Some("{}"));
    assert!(r.status == 503 && r.body.contains("not enough free host memory"), "{r:?}");
    assert_eq!(vm_state("thin")["state"], "stopped");
    let r = request(addr, "DELETE", "/api/v1/vms/thin?delete_disks=true", Some(INITIAL), None);
    assert_eq!(r.status, 200, "{r:?}");
    let r = request(addr, "GET", "/api/v1/datastores/datastore1/files/thin", Some(INITIAL), None);
    assert_eq!(r.status, 404, "the VM's folder is gone: {r:?}");
    let r = request(addr, "GET", "/api/v1/vms/thin", Some(INITIAL), None);
    assert_eq!(r.status, 404, "{r:?}");
    let r = request(addr, "DELETE", "/api/v1/datastores/datastore1", Some(INITIAL), None);
    assert_eq!(r.status, 200, "no VM uses it now: {r:?}");
}

/// Power cuts while a guest writes its thin disk on a datastore: the guest writes numbered records
/// 64 KiB apart (a new datastore block every 16), each flushed before it says "synced N", and QEMU is
/// killed at a random moment. After every cut the datastore checks clean offline, and at the next
/// boot (the VM starts by itself: autostart) the guest finds every record it had seen synced.
#[test]
fn power_cuts_while_a_guest_writes_lose_nothing_it_flushed() {
    const CUTS: u64 = 6;
    guest_files();
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let ssd = dir.path().join("ssd.img");
    std::fs::File::create(&ssd).unwrap().set_len(1 << 30).unwrap();
    let spare = dir.path().join("spare.img");
    std::fs::File::create(&spare).unwrap().set_len(64 << 20).unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let console = || request(addr, "GET", "/api/v1/vms/rec/console", Some(INITIAL), None).body;
    let numbers = |c: &str, what: &str| -> Vec<i64> {
        c.lines()
            .filter_map(|l| l.split(what).nth(1))
            .filter_map(|r| r.split_whitespace().next()?.parse().ok())
            .collect()
    };
    let mut synced = -1i64;
    let mut seed = 0xc0ffee_u64;
    for cut in 0..CUTS {
        let mut q = boot(&format!("datastores_vm_cut_{cut}"), &img, &ssd, &spare, port);
        if cut == 0 {
            q.wait_for("first boot: configuration stored", BOOT_TIMEOUT);
            wait_for_http(addr, HTTP_TIMEOUT);
            datastore_with_guest(addr, "cuts");
            let def = serde_json::json!({
                "name": "rec", "vcpus": 1, "memory_mib": 128, "autostart": true,
                "kernel": "[cuts] boot/vmlinuz", "initrd": "[cuts] boot/initrd.gz",
                "cmdline": "console=ttyS0 ember.action=records", "disks": [{"size_gib": 4}],
            });
            let r = request(addr, "POST", "/api/v1/vms", Some(INITIAL), Some(&def.to_string()));
            assert_eq!(r.status, 201, "{r:?}");
            let r = request(addr, "POST", "/api/v1/vms/rec/start", Some(INITIAL), Some("{}"));
            assert_eq!(r.status, 200, "{r:?}");
        } else {
            q.wait_for("ember: VM rec: started (autostart)", BOOT_TIMEOUT);
            wait_for_http(addr, HTTP_TIMEOUT);
        }
        // The guest counts what survived, then writes on.
        let start = std::time::Instant::now();
        let found = loop {
            let c = console();
            if let Some(&n) = numbers(&c, "EMBER-GUEST: found ").first() {
                break n;
            }
            assert!(start.elapsed() < Duration::from_secs(600), "cut {cut}: no count:\n{c}\n{}", q.text());
            std::thread::sleep(Duration::from_secs(1));
        };
        assert!(found > synced, "cut {cut}: the guest had {} records synced, {found} survived", synced + 1);
        // A few more records, then the cut at a random moment.
        loop {
            let c = console();
            if numbers(&c, "EMBER-GUEST: synced ").iter().any(|&n| n >= found + 3) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(600), "cut {cut}: no progress:\n{c}");
            std::thread::sleep(Duration::from_millis(500));
        }
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis((seed >> 33) % 2000));
        synced = numbers(&console(), "EMBER-GUEST: synced ").into_iter().max().unwrap_or(synced);
        drop(q); // power cut
        let (ok, out, err) = run_tool(&["datastore", "fsck", ssd.to_str().unwrap()]);
        assert!(ok && out.contains("clean"), "cut {cut}: {out}{err}");
    }
    assert!(synced >= 3 * CUTS as i64, "the guest got work done: {synced}");
}
