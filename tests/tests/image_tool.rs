//! `ember-image` as a user runs it, with independent tools (sgdisk, mtools, fsck.vfat) checking that
//! what it writes is standard GPT and FAT32.
#![forbid(unsafe_code)]

use ember_systests::*;
use std::process::Command;

fn tool_ok(cmd: &str, args: &[&str]) -> String {
    let out =
        Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e} (run scripts/setup)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd} {args:?} failed:\n{text}");
    text
}

#[test]
fn image_is_standard_gpt_and_fat32() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &["console=com1"]);
    let p = img.to_str().unwrap();
    let v = tool_ok("sgdisk", &["-v", p]);
    assert!(v.contains("No problems found"), "{v}");
    let listing = tool_ok("sgdisk", &["-p", p]);
    for want in ["EFI System", "Ember boot bank A", "Ember boot bank B", "Ember config store", "EF00"] {
        assert!(listing.contains(want), "sgdisk -p lacks {want}:\n{listing}");
    }
    let dirlist = tool_ok("mdir", &["-i", &format!("{p}@@1M"), "::/EFI/BOOT"]);
    assert!(dirlist.contains("BOOTX64  EFI"), "{dirlist}");
    let cfg = tool_ok("mtype", &["-i", &format!("{p}@@1M"), "::/EFI/ember/boot.cfg"]);
    assert!(cfg.contains("kernelopt=console=com1"), "{cfg}");
    // fsck.vfat on the ESP alone.
    let esp = dir.path().join("esp.img");
    tool_ok(
        "dd",
        &[&format!("if={p}"), &format!("of={}", esp.display()), "bs=1M", "skip=1", "count=36", "status=none"],
    );
    let fsck = tool_ok("fsck.vfat", &["-n", esp.to_str().unwrap()]);
    // fsck.vfat -n exits non-zero on any inconsistency (tool_ok checks); it ends with a file count.
    assert!(fsck.contains(" files, "), "{fsck}");
    let efi = std::fs::read(efi_path()).unwrap();
    let copied = dir.path().join("BOOTX64.EFI");
    tool_ok("mcopy", &["-i", &format!("{p}@@1M"), "::/EFI/BOOT/BOOTX64.EFI", copied.to_str().unwrap()]);
    assert_eq!(std::fs::read(copied).unwrap(), efi, "BOOTX64.EFI is the appliance binary, byte for byte");
}

#[test]
fn inspect_accepts_own_image_and_rejects_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let p = img.to_str().unwrap();
    let (ok, out, err) = run_tool(&["inspect", p]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("Ember boot media") && out.ends_with("OK\n"), "{out}");

    let short = dir.path().join("short.img");
    std::fs::copy(&img, &short).unwrap();
    std::fs::OpenOptions::new().write(true).open(&short).unwrap().set_len(50 << 20).unwrap();
    let (ok, _, err) = run_tool(&["inspect", short.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("image is truncated: the GPT expects 163840 blocks but there are only 102400"),
        "{err}"
    );

    // A foreign disk image: a GPT disk that sgdisk made with one Linux partition.
    let foreign = dir.path().join("foreign.img");
    std::fs::File::create(&foreign).unwrap().set_len(64 << 20).unwrap();
    tool_ok("sgdisk", &["-n", "1:2048:0", "-t", "1:8300", foreign.to_str().unwrap()]);
    let (ok, _, err) = run_tool(&["inspect", foreign.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("not an Ember medium: no \"EFI System\" partition"), "{err}");

    // Not a disk at all.
    let (ok, _, err) = run_tool(&["inspect", efi_path().to_str().unwrap()]);
    assert!(!ok && err.contains("no partition table"), "{err}");
}

#[test]
fn flash_refuses_what_is_not_a_block_device() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let target = dir.path().join("not-a-device");
    std::fs::write(&target, b"").unwrap();
    let (ok, _, err) = run_tool(&["flash", img.to_str().unwrap(), target.to_str().unwrap(), "--yes"]);
    assert!(!ok && err.contains("is not a block device"), "{err}");
    let (ok, _, err) = run_tool(&["flash", target.to_str().unwrap(), "/dev/null", "--yes"]);
    assert!(!ok && err.contains("not flashing"), "{err}");
}

/// Flash to a loop device (a real block device): refused without --force (loop devices are not
/// removable), refused without confirmation on a non-terminal, then written, verified and readable.
#[test]
fn flash_to_a_loop_device() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_image(dir.path(), &[]);
    let backing = dir.path().join("stick.bin");
    std::fs::File::create(&backing).unwrap().set_len(128 << 20).unwrap();
    let out = Command::new("losetup").args(["--find", "--show", backing.to_str().unwrap()]).output();
    let dev = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => {
            eprintln!("SKIPPED flash_to_a_loop_device: loop devices are not available here (needs root)");
            return;
        }
    };
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _detach = Detach(dev.clone());
    let i = img.to_str().unwrap();
    let (ok, _, err) = run_tool(&["flash", i, &dev, "--yes"]);
    assert!(!ok && err.contains("is not a removable device; pass --force"), "{err}");
    let (ok, _, err) = run_tool(&["flash", i, &dev, "--force"]);
    assert!(!ok && err.contains("refusing to write without confirmation"), "{err}");
    let (ok, out, err) = run_tool(&["flash", i, &dev, "--force", "--yes"]);
    assert!(ok, "{out}{err}");
    assert!(err.contains("verifying: 100%"), "{err}");
    assert!(out.contains("written to") && out.contains("and verified"), "{out}");
    // The device is a valid Ember medium, with the backup GPT moved to its own end.
    let (ok, out, err) = run_tool(&["inspect", &dev]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("134217728 bytes") && !out.contains("warning"), "{out}");
}

#[test]
fn ks_check_validates_like_the_appliance() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("ks.cfg");
    std::fs::write(
        dir.path().join("net.cfg"),
        "network --bootproto=static --ip=10.0.0.5 --netmask=255.255.255.0\n",
    )
    .unwrap();
    std::fs::write(
        &good,
        "vmaccepteula\nrootpw secret-pw\ninstall --firstdisk\n%include net.cfg\n%firstboot\necho hi\n",
    )
    .unwrap();
    let (ok, out, err) = run_tool(&["ks", "check", good.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("valid kickstart"), "{out}");
    assert!(out.contains("line 2: rootpw: password in clear text"), "{out}");
    assert!(out.contains("install onto the first disk"), "{out}");
    assert!(out.contains("network: vmnic0 static 10.0.0.5/24"), "{out}");
    assert!(out.contains("%firstboot (1 line, checked) from"), "{out}");

    // A script line Ember's interpreter does not take is an error with its line.
    let script = dir.path().join("script.cfg");
    std::fs::write(
        &script,
        "vmaccepteula\nrootpw secret-pw\n%firstboot\necho ok\nesxcli network ip dns server list | grep 10\n",
    )
    .unwrap();
    let (ok, out, err) = run_tool(&["ks", "check", script.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(err.contains(":line 5: %firstboot: pipes (`|`) are not supported"), "{err}");

    let bad = dir.path().join("bad.cfg");
    std::fs::write(&bad, "vmaccepteula\nrootpw secret-pw\n\nnetwork --bootproto=static --ip=10.0.0.5\n")
        .unwrap();
    let (ok, out, err) = run_tool(&["ks", "check", bad.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        err.contains(&format!(
            "error parsing the installation script: {}:line 4: network --netmask: a static ip= needs netmask=",
            bad.display()
        )),
        "{err}"
    );
    let (ok, _, err) = run_tool(&["ks", "check", dir.path().join("absent.cfg").to_str().unwrap()]);
    assert!(!ok && err.contains("absent.cfg"), "{err}");

    // `build --ks` validates and places the kickstart at the root of the ESP; mtools reads it back.
    let single = dir.path().join("single.cfg");
    let text = "vmaccepteula\nrootpw secret-pw\nnetwork --bootproto=dhcp --hostname=esx-ks\n";
    std::fs::write(&single, text).unwrap();
    let img = dir.path().join("ks.img");
    let efi = efi_path();
    let build_with_ks = |out: &std::path::Path, ks: &std::path::Path| {
        run_tool(&[
            "build",
            "--out",
            out.to_str().unwrap(),
            "--efi",
            efi.to_str().unwrap(),
            "--ks",
            ks.to_str().unwrap(),
        ])
    };
    let (ok, out, err) = build_with_ks(&img, &single);
    assert!(ok && out.contains("and ks.cfg"), "{out}{err}");
    let esp = format!("{}@@1M", img.display());
    let back = tool_ok("mtype", &["-i", &esp, "::/KS.CFG"]);
    assert_eq!(back, text);
    let (ok, out, _) = run_tool(&["inspect", img.to_str().unwrap()]);
    assert!(ok && out.contains("ks.cfg: valid kickstart"), "{out}");
    // A kickstart with an error, or one that needs %include files, is refused and no image is written.
    let bad_img = dir.path().join("bad.img");
    for ks in [&bad, &good] {
        let (ok, _, err) = build_with_ks(&bad_img, ks);
        assert!(!ok && err.contains("error parsing the installation script"), "{err}");
        assert!(!bad_img.exists());
    }
}
