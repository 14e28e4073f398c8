//! `ember-image flash`: writing an image to a USB stick or SD card, with the checks that keep an
//! administrator from overwriting the wrong disk.
//!
//! Facts about the target come from sysfs and procfs (their roots are parameters so the checks are
//! tested against fake trees): whole disk or partition, removable, size, model, mounted partitions,
//! swap, and whether it holds the running system's root file system (through device-mapper/LVM too).

use crate::disk::{FileDisk, BLOCK};
use ember_storage::block::BlockDevice;
use ember_storage::gpt::{self, NewPartition};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What the checks need to know about a target device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceFacts {
    pub name: String,
    pub is_partition: bool,
    pub removable: bool,
    pub size: u64,
    pub model: Option<String>,
    /// Mount points (or swap) using the device or one of its partitions.
    pub in_use: Vec<String>,
    /// The device holds the running system's root file system.
    pub holds_root: bool,
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// The sysfs directory of device `maj:min`, resolved.
fn sys_dir(sysfs: &Path, dev: &str) -> Option<PathBuf> {
    fs::canonicalize(sysfs.join("dev/block").join(dev)).ok()
}

/// "maj:min" of the device itself and of each partition below it.
fn dev_numbers_of(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = read_trim(&dir.join("dev")).into_iter().collect();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().join("partition").exists() {
                out.extend(read_trim(&e.path().join("dev")));
            }
        }
    }
    out
}

/// The whole disks under device `maj:min`: its parent disk if it is a partition, and for stacked
/// devices (device-mapper, md) the disks under its `slaves`.
fn underlying_disks(sysfs: &Path, dev: &str, depth: u32) -> Vec<String> {
    let Some(dir) = sys_dir(sysfs, dev) else { return Vec::new() };
    let disk_dir =
        if dir.join("partition").exists() { dir.parent().map(Path::to_path_buf) } else { Some(dir) };
    let Some(disk_dir) = disk_dir else { return Vec::new() };
    let mut out = Vec::new();
    let slaves: Vec<PathBuf> = fs::read_dir(disk_dir.join("slaves"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if slaves.is_empty() || depth > 8 {
        if let Some(n) = disk_dir.file_name() {
            out.push(n.to_string_lossy().into_owned());
        }
    } else {
        for s in slaves {
            if let Some(d) = read_trim(&s.join("dev")) {
                out.extend(underlying_disks(sysfs, &d, depth + 1));
            }
        }
    }
    out
}

/// Gathers the facts for the block device with number `maj:min`.
pub fn probe(dev: &str, sysfs: &Path, procfs: &Path) -> Result<DeviceFacts, String> {
    let dir = sys_dir(sysfs, dev).ok_or_else(|| format!("block device {dev} is not in sysfs"))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let is_partition = dir.join("partition").exists();
    let size = read_trim(&dir.join("size")).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) * 512;
    let removable = read_trim(&dir.join("removable")).as_deref() == Some("1");
    let model = read_trim(&dir.join("device/model")).filter(|m| !m.is_empty());

    let ours = dev_numbers_of(&dir);
    let mut in_use = Vec::new();
    let mut root_dev = None;
    if let Ok(mi) = fs::read_to_string(procfs.join("self/mountinfo")) {
        for line in mi.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 {
                continue;
            }
            if ours.iter().any(|d| d == f[2]) {
                in_use.push(f[4].to_string());
            }
            if f[4] == "/" {
                root_dev = Some(f[2].to_string());
            }
        }
    }
    if let Ok(swaps) = fs::read_to_string(procfs.join("swaps")) {
        for line in swaps.lines().skip(1) {
            if let Some(src) = line.split_whitespace().next() {
                let base = src.rsplit('/').next().unwrap_or(src);
                if base == name || (base.starts_with(&name) && dir.join(base).join("partition").exists()) {
                    in_use.push(format!("swap {src}"));
                }
            }
        }
    }
    let holds_root = root_dev.is_some_and(|r| underlying_disks(sysfs, &r, 0).contains(&name));
    Ok(DeviceFacts { name, is_partition, removable, size, model, in_use, holds_root })
}

/// Decides whether writing an image of `image_len` bytes to the device is allowed.
pub fn check(f: &DeviceFacts, image_len: u64, force: bool) -> Result<(), String> {
    if f.holds_root {
        return Err(format!("/dev/{} holds the running system's root file system; refusing", f.name));
    }
    if f.is_partition {
        return Err(format!("/dev/{} is a partition; give the whole device (for example /dev/sdX)", f.name));
    }
    if !f.in_use.is_empty() {
        return Err(format!("/dev/{} is in use ({}); unmount it first", f.name, f.in_use.join(", ")));
    }
    if f.size < image_len {
        return Err(format!("/dev/{} holds {} bytes; the image needs {image_len} bytes", f.name, f.size));
    }
    if !f.removable && !force {
        return Err(format!(
            "/dev/{} is not a removable device; pass --force if you really mean to overwrite it",
            f.name
        ));
    }
    Ok(())
}

/// Copies `image` onto `dev`, syncs, drops the cached pages and reads everything back to compare.
/// `progress(done, total)` is called as the write advances.
pub fn write_and_verify(
    image: &File,
    image_len: u64,
    dev: &File,
    mut progress: impl FnMut(&str, u64, u64),
) -> Result<(), String> {
    const CHUNK: usize = 4 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut back = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < image_len {
        let n = ((image_len - off) as usize).min(CHUNK);
        image
            .read_exact_at(&mut buf[..n], off)
            .map_err(|e| format!("reading the image at byte {off}: {e}"))?;
        dev.write_all_at(&buf[..n], off).map_err(|e| format!("writing the device at byte {off}: {e}"))?;
        off += n as u64;
        progress("writing", off, image_len);
    }
    dev.sync_all().map_err(|e| format!("flushing the device: {e}"))?;
    drop_cache(dev);
    off = 0;
    while off < image_len {
        let n = ((image_len - off) as usize).min(CHUNK);
        image
            .read_exact_at(&mut buf[..n], off)
            .map_err(|e| format!("reading the image at byte {off}: {e}"))?;
        dev.read_exact_at(&mut back[..n], off)
            .map_err(|e| format!("reading back the device at byte {off}: {e}"))?;
        if let Some(i) = buf[..n].iter().zip(&back[..n]).position(|(a, b)| a != b) {
            return Err(format!(
                "verification failed: the device differs from the image at byte {}",
                off + i as u64
            ));
        }
        off += n as u64;
        progress("verifying", off, image_len);
    }
    Ok(())
}

/// Asks the kernel to drop cached pages of `f`, so the verification reads the medium. A failure only
/// means the read-back may come from the page cache.
fn drop_cache(f: &File) {
    let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed);
}

/// Rewrites the partition table of a device that is larger than the image so the backup GPT sits at
/// the device's last block (UEFI 2.10 5.3.2), keeping the disk GUID and every partition.
pub fn relocate_backup_gpt(dev: &File, dev_len: u64) -> Result<(), String> {
    let mut disk = FileDisk::new(dev.try_clone().map_err(|e| e.to_string())?, dev_len);
    if disk.num_blocks() * BLOCK as u64 != dev_len {
        return Err("device size is not a whole number of 512-byte blocks".into());
    }
    let g = gpt::read_gpt(&mut disk).map_err(|e| format!("partition table after writing: {e}"))?;
    let names: Vec<String> = g.partitions.iter().map(|p| p.name.clone()).collect();
    let parts: Vec<NewPartition<'_>> = g
        .partitions
        .iter()
        .zip(&names)
        .map(|(p, n)| NewPartition {
            type_guid: p.type_guid,
            unique_guid: p.unique_guid,
            first_lba: p.first_lba,
            last_lba: p.last_lba,
            attributes: p.attributes,
            name: n,
        })
        .collect();
    gpt::write_gpt(&mut disk, g.disk_guid, &parts)
        .map_err(|e| format!("rewriting the partition table: {e}"))?;
    let again = gpt::read_gpt(&mut disk).map_err(|e| format!("partition table after relocation: {e}"))?;
    if !again.warnings.is_empty() {
        return Err(format!("partition table after relocation: {}", again.warnings.join("; ")));
    }
    Ok(())
}

/// Asks on the terminal; returns true only for "yes".
pub fn confirm(question: &str) -> Result<bool, String> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err("refusing to write without confirmation: run on a terminal or pass --yes".into());
    }
    eprint!("{question} Type 'yes' to continue: ");
    let mut answer = String::new();
    std::io::stdin().take(64).read_to_string(&mut answer).ok();
    Ok(answer.lines().next().map(str::trim) == Some("yes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake /sys and /proc: sda (system disk with root on sda2), sdb (USB stick, removable), sdc
    /// (non-removable, one mounted partition), dm-0 (root via LVM on sdd).
    fn fake_tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        let blk = sys.join("devices/block");
        let disk = |name: &str, dev: &str, removable: bool, sectors: u64, parts: &[(&str, &str)]| {
            let d = blk.join(name);
            fs::create_dir_all(d.join("device")).unwrap();
            fs::write(d.join("dev"), dev).unwrap();
            fs::write(d.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
            fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
            fs::write(d.join("device/model"), format!("Model {name}\n")).unwrap();
            fs::create_dir_all(sys.join("dev/block")).unwrap();
            symlink(&d, sys.join("dev/block").join(dev)).unwrap();
            for (p, pdev) in parts {
                let pd = d.join(p);
                fs::create_dir_all(&pd).unwrap();
                fs::write(pd.join("dev"), pdev).unwrap();
                fs::write(pd.join("partition"), "1").unwrap();
                fs::write(pd.join("size"), "1000").unwrap();
                symlink(&pd, sys.join("dev/block").join(pdev)).unwrap();
            }
            d
        };
        disk("sda", "8:0", false, 1 << 30, &[("sda1", "8:1"), ("sda2", "8:2")]);
        disk("sdb", "8:16", true, 16 << 21, &[("sdb1", "8:17")]);
        disk("sdc", "8:32", false, 16 << 21, &[("sdc1", "8:33")]);
        disk("sdd", "8:48", false, 16 << 21, &[("sdd1", "8:49")]);
        let dm = disk("dm-0", "253:0", false, 1 << 20, &[]);
        fs::create_dir_all(dm.join("slaves")).unwrap();
        symlink(blk.join("sdd/sdd1"), dm.join("slaves/sdd1")).unwrap();
        let proc_ = t.path().join("proc/self");
        fs::create_dir_all(&proc_).unwrap();
        fs::write(
            proc_.join("mountinfo"),
            "22 1 8:2 / / rw - ext4 /dev/sda2 rw\n23 22 8:33 / /mnt/data rw - ext4 /dev/sdc1 rw\n",
        )
        .unwrap();
        fs::write(
            t.path().join("proc/swaps"),
            "Filename Type Size Used Priority\n/dev/sda1 partition 1 0 -2\n",
        )
        .unwrap();
        t
    }

    fn facts(t: &tempfile::TempDir, dev: &str) -> DeviceFacts {
        probe(dev, &t.path().join("sys"), &t.path().join("proc")).unwrap()
    }

    #[test]
    fn usb_stick_is_accepted() {
        let t = fake_tree();
        let f = facts(&t, "8:16");
        assert_eq!(f.name, "sdb");
        assert!(f.removable && !f.is_partition && !f.holds_root && f.in_use.is_empty());
        assert_eq!(f.size, 16 << 30);
        assert_eq!(f.model.as_deref(), Some("Model sdb"));
        assert_eq!(check(&f, 80 << 20, false), Ok(()));
    }

    #[test]
    fn system_disk_is_refused_even_with_force() {
        let t = fake_tree();
        let f = facts(&t, "8:0");
        assert!(f.holds_root);
        assert!(check(&f, 1, true).unwrap_err().contains("running system's root file system"));
    }

    #[test]
    fn root_on_lvm_is_traced_to_its_disk() {
        let t = fake_tree();
        fs::write(t.path().join("proc/self/mountinfo"), "22 1 253:0 / / rw - ext4 /dev/dm-0 rw\n").unwrap();
        assert!(facts(&t, "8:48").holds_root);
        assert!(!facts(&t, "8:16").holds_root);
    }

    #[test]
    fn mounted_partitions_and_non_removable() {
        let t = fake_tree();
        let f = facts(&t, "8:32");
        assert_eq!(f.in_use, vec!["/mnt/data".to_string()]);
        assert!(check(&f, 1, true).unwrap_err().contains("in use (/mnt/data)"));
        fs::write(t.path().join("proc/self/mountinfo"), "22 1 8:2 / / rw - ext4 /dev/sda2 rw\n").unwrap();
        let f = facts(&t, "8:32");
        assert!(check(&f, 1, false).unwrap_err().contains("not a removable device"));
        assert_eq!(check(&f, 1, true), Ok(()));
    }

    #[test]
    fn partitions_swap_and_small_devices() {
        let t = fake_tree();
        assert!(check(&facts(&t, "8:17"), 1, true).unwrap_err().contains("is a partition"));
        let sda = facts(&t, "8:0");
        assert!(sda.in_use.iter().any(|u| u == "swap /dev/sda1"));
        let f = facts(&t, "8:16");
        assert!(check(&f, 32 << 30, false).unwrap_err().contains("the image needs"));
        assert!(probe("9:9", &t.path().join("sys"), &t.path().join("proc")).is_err());
    }

    #[test]
    fn write_verify_and_relocate_on_a_larger_target() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("e.img");
        let efi = crate::media::tests::fake_efi();
        crate::media::build_image(
            &img,
            &crate::media::BuildSpec {
                size: 80 << 20,
                efi: &efi,
                boot_cfg: "kernelopt=\n",
                kickstart: None,
                ks_ca: None,
                vms: &[],
            },
        )
        .unwrap();
        let image = File::open(&img).unwrap();
        let target_path = dir.path().join("stick");
        let target = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&target_path)
            .unwrap();
        target.set_len(128 << 20).unwrap();
        let mut calls = 0;
        write_and_verify(&image, 80 << 20, &target, |_, done, total| {
            calls += 1;
            assert!(done <= total);
        })
        .unwrap();
        assert!(calls >= 40);
        relocate_backup_gpt(&target, 128 << 20).unwrap();
        let inspected = crate::media::inspect(&target_path).unwrap();
        assert!(inspected.gpt.warnings.is_empty(), "{:?}", inspected.gpt.warnings);
        assert_eq!(inspected.bytes, 128 << 20);
    }
}
