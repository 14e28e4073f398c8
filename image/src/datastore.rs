//! `ember-image datastore ...`: Ember datastores on an image file or a block device, offline - made,
//! listed, filled, emptied and checked with the appliance's own file system code
//! (`ember_storage::datastore`), so a dead host's VMs can be copied off its disk on any Linux machine.

use crate::disk::{parse_size, FileDisk, BLOCK};
use crate::media::device_or_file_len;
use ember_storage::block::{BlockDevice, Window};
use ember_storage::datastore::{Datastore, FormatOptions, InodeKind};
use ember_storage::gpt::{self, NewPartition, Partition};
use ember_storage::layout::{ALIGN, DATASTORE_PARTITION_NAME, DATASTORE_TYPE};
use gpt_disk_types::Guid;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes moved per read or write when copying files in and out.
const CHUNK: usize = 1 << 20;
/// The smallest datastore partition `create` makes.
const MIN_DATASTORE: u64 = 16 << 20;

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub fn random_bytes() -> Result<[u8; 16], String> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(b)
}

fn open_disk(path: &Path, write: bool) -> Result<FileDisk, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let len = device_or_file_len(&file).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(FileDisk::new(file, len))
}

/// A datastore partition and its label, or why it does not mount.
type Found = (Partition, Result<String, String>);

/// The datastore partitions of a disk.
fn datastores(disk: &mut FileDisk) -> Result<Vec<Found>, String> {
    let table = gpt::read_gpt(disk).map_err(|e| format!("no usable partition table: {e}"))?;
    let mut out = Vec::new();
    for p in table.partitions.into_iter().filter(|p| p.type_guid == DATASTORE_TYPE) {
        let mut w = Window::new(disk, p.first_lba, p.blocks()).ok_or("a partition lies outside the disk")?;
        let label = Datastore::mount(&mut w).map(|d| d.label().to_string()).map_err(|e| e.to_string());
        out.push((p, label));
    }
    Ok(out)
}

/// The one datastore partition on the disk, or the one named `name`.
fn pick(disk: &mut FileDisk, path: &Path, name: Option<&str>) -> Result<Partition, String> {
    let all = datastores(disk)?;
    let labels = || {
        all.iter()
            .map(|(p, l)| match l {
                Ok(l) => format!("{l:?} (partition {})", p.index + 1),
                Err(e) => format!("partition {}: {e}", p.index + 1),
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    match name {
        Some(n) => all
            .iter()
            .find(|(_, l)| l.as_deref() == Ok(n))
            .map(|(p, _)| p.clone())
            .ok_or_else(|| format!("{}: no datastore named {n:?} (found: {})", path.display(), labels())),
        None => match all.as_slice() {
            [] => Err(format!("{}: no datastore partition on this disk", path.display())),
            [(p, _)] => Ok(p.clone()),
            _ => Err(format!(
                "{}: several datastores, choose one with --datastore (found: {})",
                path.display(),
                labels()
            )),
        },
    }
}

/// Runs `f` on the mounted datastore and commits what it changed.
fn with_datastore<T>(
    path: &Path,
    name: Option<&str>,
    write: bool,
    f: impl FnOnce(&mut Datastore, &mut dyn BlockDevice) -> Result<T, String>,
) -> Result<T, String> {
    let mut disk = open_disk(path, write)?;
    let p = pick(&mut disk, path, name)?;
    let mut w = Window::new(&mut disk, p.first_lba, p.blocks()).ok_or("a partition lies outside the disk")?;
    let mut ds = Datastore::mount(&mut w).map_err(|e| format!("{}: {e}", path.display()))?;
    let out = f(&mut ds, &mut w)?;
    if write {
        ds.commit(&mut w).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// `datastore create`: a datastore partition in the largest free space of the disk's GPT, or a new
/// GPT with one datastore partition on a blank disk (or any disk with `overwrite`).
pub fn create(
    path: &Path,
    label: &str,
    size: Option<&str>,
    block_size: &str,
    overwrite: bool,
) -> Result<String, String> {
    let block = parse_size(block_size)?;
    let block = u32::try_from(block).map_err(|_| format!("block size {block_size} is too large"))?;
    ember_storage::datastore::check_label(label).map_err(|e| format!("datastore name {label:?}: {e}"))?;
    if let Some(size) = size {
        let bytes = parse_size(size)?;
        if path.exists() {
            return Err(format!("{}: exists; --size only makes a new image file", path.display()));
        }
        let f = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        f.set_len(bytes - bytes % BLOCK as u64).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let mut disk = open_disk(path, true)?;
    let partition = match gpt::read_gpt(&mut disk) {
        Ok(table) if !overwrite => {
            if let Ok(all) = datastores(&mut disk) {
                if all.iter().any(|(_, l)| l.as_deref() == Ok(label)) {
                    return Err(format!(
                        "{}: a datastore named {label:?} is already on this disk",
                        path.display()
                    ));
                }
            }
            let largest = gpt::largest_free_range(&table, ALIGN / BLOCK as u64)
                .map_or(0, |(f, l)| (l - f + 1) * BLOCK as u64);
            if largest < MIN_DATASTORE {
                let parts: Vec<String> = table.partitions.iter().map(|p| format!("{:?}", p.name)).collect();
                return Err(format!(
                    "{}: no free space of {} MiB or more outside its partitions ({}); --overwrite replaces the partition table",
                    path.display(),
                    MIN_DATASTORE >> 20,
                    parts.join(", ")
                ));
            }
            gpt::add_partition(
                &mut disk,
                DATASTORE_TYPE,
                Guid::from_random_bytes(random_bytes()?),
                DATASTORE_PARTITION_NAME,
                ALIGN / BLOCK as u64,
                None,
            )
            .map_err(|e| e.to_string())?
        }
        _ => {
            if !overwrite {
                if let Some(at) = first_data(&mut disk)? {
                    return Err(format!(
                        "{}: holds data (no partition table, but non-zero bytes at offset {at}); --overwrite erases it",
                        path.display()
                    ));
                }
            }
            let (first, last) = gpt::usable_range(BLOCK, disk.num_blocks()).ok_or("the disk is too small")?;
            let first = first.next_multiple_of(ALIGN / BLOCK as u64);
            let new = NewPartition {
                type_guid: DATASTORE_TYPE,
                unique_guid: Guid::from_random_bytes(random_bytes()?),
                first_lba: first,
                last_lba: last,
                attributes: 0,
                name: DATASTORE_PARTITION_NAME,
            };
            gpt::write_gpt(&mut disk, Guid::from_random_bytes(random_bytes()?), &[new])
                .map_err(|e| e.to_string())?;
            gpt::read_gpt(&mut disk)
                .map_err(|e| e.to_string())?
                .partitions
                .into_iter()
                .next()
                .ok_or("the new partition table has no partition")?
        }
    };
    let mut w = Window::new(&mut disk, partition.first_lba, partition.blocks())
        .ok_or("partition outside the disk")?;
    let opts = FormatOptions { label: label.to_string(), uuid: random_bytes()?, block_size: block };
    let ds = Datastore::format(&mut w, &opts).map_err(|e| e.to_string())?;
    let u = ds.usage();
    Ok(format!(
        "created datastore {label:?} on partition {} of {} ({} MiB, {} KiB blocks)\n",
        partition.index + 1,
        path.display(),
        u.capacity >> 20,
        ds.block_size() >> 10
    ))
}

/// Offset of the first non-zero byte in the first or last MiB of the disk, if any.
fn first_data(disk: &mut FileDisk) -> Result<Option<u64>, String> {
    let blocks = disk.num_blocks();
    let n = (ALIGN / BLOCK as u64).min(blocks);
    let mut buf = vec![0u8; (n * BLOCK as u64) as usize];
    for start in [0, blocks - n] {
        disk.read_blocks(start, &mut buf).map_err(|e| e.to_string())?;
        if let Some(i) = buf.iter().position(|&b| b != 0) {
            return Ok(Some(start * BLOCK as u64 + i as u64));
        }
    }
    Ok(None)
}

/// `datastore ls`: one line per entry.
pub fn ls(path: &Path, name: Option<&str>, dir: &str) -> Result<String, String> {
    with_datastore(path, name, false, |ds, _| {
        let mut out = String::new();
        let u = ds.usage();
        out.push_str(&format!(
            "[{}] {}: capacity {} MiB, free {} MiB, provisioned {} MiB\n",
            ds.label(),
            if dir.trim_matches('/').is_empty() { "/" } else { dir },
            u.capacity >> 20,
            u.free >> 20,
            u.provisioned >> 20
        ));
        let entry = ds.stat(dir).map_err(|e| e.to_string())?;
        let entries = if entry.kind == InodeKind::File {
            vec![entry]
        } else {
            ds.list(dir).map_err(|e| e.to_string())?
        };
        for e in entries {
            let kind = if e.kind == InodeKind::Directory { "d" } else { "-" };
            out.push_str(&format!("{kind} {:>16} {:>16} {}\n", e.size, e.allocated, e.name));
        }
        Ok(out)
    })
}

/// `datastore put`: copies a local file in (all-zero chunks are left unallocated: thin); with
/// `convert`, a qcow2 image becomes the raw disk it holds.
pub fn put(
    path: &Path,
    name: Option<&str>,
    local: &Path,
    dest: &str,
    replace: bool,
    convert: bool,
) -> Result<String, String> {
    let source = Source::of(local, convert)?;
    with_datastore(path, name, true, |ds, dev| {
        let t = now();
        let id = new_file(ds, dev, dest, replace, t)?;
        source.copy_to(ds, dev, id, t).map_err(|e| format!("[{}] {dest}: {e}", ds.label()))?;
        let e = ds.stat(dest).map_err(|e| e.to_string())?;
        Ok(format!(
            "[{}] {dest}: {} bytes ({} allocated){}\n",
            ds.label(),
            e.size,
            e.allocated,
            if matches!(source, Source::Qcow2(_)) { ", converted from qcow2" } else { "" }
        ))
    })
}

/// Makes file `dest` (and its parent directories), or empties it when it exists and `replace`.
fn new_file(
    ds: &mut Datastore,
    dev: &mut dyn BlockDevice,
    dest: &str,
    replace: bool,
    t: u64,
) -> Result<u64, String> {
    if let Some(parent) = dest.trim_matches('/').rsplit_once('/').map(|(p, _)| p) {
        ds.mkdir_all(parent, t).map_err(|e| format!("[{}] {parent}: {e}", ds.label()))?;
    }
    match ds.stat(dest) {
        Ok(e) if replace && e.kind == InodeKind::File => {
            ds.set_len(dev, e.id, 0, t).map_err(|e| e.to_string())?;
            Ok(e.id)
        }
        Ok(_) => Err(format!("[{}] {dest}: exists (--replace overwrites a file)", ds.label())),
        Err(_) => ds.create(dest, t).map_err(|e| format!("[{}] {dest}: {e}", ds.label())),
    }
}

/// What a file on a datastore is made from.
pub enum Source {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// A local file, copied as it is.
    File(std::path::PathBuf),
    /// A qcow2 image, converted to the raw disk it holds.
    Qcow2(Box<crate::qcow2::Qcow2Image>),
}

impl Source {
    /// The local file at `path`; a qcow2 image is converted when `convert`.
    pub fn of(path: &Path, convert: bool) -> Result<Source, String> {
        if convert && crate::qcow2::is_qcow2(path)? {
            let img = crate::qcow2::Qcow2Image::open(path)?;
            return Ok(Source::Qcow2(Box::new(img)));
        }
        std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Source::File(path.to_path_buf()))
    }

    /// The size of the file it makes.
    pub fn len(&self) -> Result<u64, String> {
        match self {
            Source::Bytes(b) => Ok(b.len() as u64),
            Source::File(p) => {
                std::fs::metadata(p).map(|m| m.len()).map_err(|e| format!("{}: {e}", p.display()))
            }
            Source::Qcow2(img) => Ok(img.size()),
        }
    }

    /// Writes it into (empty) file `id`, thin.
    pub fn copy_to(
        &self,
        ds: &mut Datastore,
        dev: &mut dyn BlockDevice,
        id: u64,
        t: u64,
    ) -> Result<(), String> {
        let len = match self {
            Source::Bytes(b) => {
                write_thin(ds, dev, id, 0, b, t).map_err(|e| e.to_string())?;
                b.len() as u64
            }
            Source::File(p) => {
                let mut src = File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
                let mut buf = vec![0u8; CHUNK];
                let mut offset = 0u64;
                loop {
                    let n = read_full(&mut src, &mut buf).map_err(|e| format!("{}: {e}", p.display()))?;
                    if n == 0 {
                        break;
                    }
                    write_thin(ds, dev, id, offset, &buf[..n], t).map_err(|e| e.to_string())?;
                    offset += n as u64;
                }
                offset
            }
            Source::Qcow2(img) => {
                img.for_each_data(CHUNK, |at, data| {
                    write_thin(ds, dev, id, at, data, t).map_err(|e| e.to_string())
                })?;
                img.size()
            }
        };
        ds.set_len(dev, id, len, t).map_err(|e| e.to_string())
    }
}

/// Writes `data` at `offset` of file `id`, skipping the file blocks that are all zeros (they stay
/// unallocated and read as zeros: thin).
pub fn write_thin(
    ds: &mut Datastore,
    dev: &mut dyn BlockDevice,
    id: u64,
    offset: u64,
    data: &[u8],
    t: u64,
) -> Result<(), ember_storage::datastore::DsError> {
    let block = ds.block_size() as usize;
    for (i, piece) in data.chunks(block).enumerate() {
        if piece.iter().any(|&b| b != 0) {
            ds.write(dev, id, offset + (i * block) as u64, piece, t)?;
        }
    }
    Ok(())
}

fn read_full(src: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// `datastore get`: copies a file out (ranges never written become holes in the local file).
pub fn get(path: &Path, name: Option<&str>, src: &str, local: &Path) -> Result<String, String> {
    with_datastore(path, name, false, |ds, dev| {
        let e = ds.stat(src).map_err(|e| e.to_string())?;
        if e.kind != InodeKind::File {
            return Err(format!("[{}] {src}: is a directory", ds.label()));
        }
        let mut out = File::create(local).map_err(|e| format!("{}: {e}", local.display()))?;
        let mut buf = vec![0u8; CHUNK];
        let mut offset = 0u64;
        while offset < e.size {
            let n = ds.read(dev, e.id, offset, &mut buf).map_err(|e| e.to_string())?;
            if buf[..n].iter().any(|&b| b != 0) {
                use std::os::unix::fs::FileExt;
                out.write_all_at(&buf[..n], offset).map_err(|e| format!("{}: {e}", local.display()))?;
            }
            offset += n as u64;
        }
        out.set_len(e.size).map_err(|e| format!("{}: {e}", local.display()))?;
        out.flush().map_err(|e| e.to_string())?;
        Ok(format!("{}: {} bytes\n", local.display(), e.size))
    })
}

/// `datastore mkdir`.
pub fn mkdir(path: &Path, name: Option<&str>, dir: &str) -> Result<String, String> {
    with_datastore(path, name, true, |ds, _| {
        ds.mkdir_all(dir, now()).map(|_| String::new()).map_err(|e| e.to_string())
    })
}

/// `datastore rm`: a file or an empty directory.
pub fn rm(path: &Path, name: Option<&str>, target: &str) -> Result<String, String> {
    with_datastore(path, name, true, |ds, _| {
        ds.remove(target).map(|_| String::new()).map_err(|e| e.to_string())
    })
}

/// `datastore fsck`: checks every datastore on the disk (or the one named); an error when any
/// has problems.
pub fn fsck(path: &Path, name: Option<&str>) -> Result<String, String> {
    let mut disk = open_disk(path, false)?;
    let all = datastores(&mut disk)?;
    if all.is_empty() {
        return Err(format!("{}: no datastore partition on this disk", path.display()));
    }
    let mut out = String::new();
    let mut bad = 0;
    for (p, label) in all {
        if name.is_some() && label.as_deref().ok() != name {
            continue;
        }
        let mut w =
            Window::new(&mut disk, p.first_lba, p.blocks()).ok_or("a partition lies outside the disk")?;
        match Datastore::check(&mut w) {
            Ok(r) => {
                let other = match &r.other_slot {
                    Ok(seq) => format!("previous commit {seq} in the other slot"),
                    Err(why) => format!("other slot: {why}"),
                };
                out.push_str(&format!(
                    "partition {}: datastore {:?}, commit {} (slot {}; {other}), {} files, {} directories, {} of {} MiB free, {} MiB provisioned: {}\n",
                    p.index + 1,
                    r.label,
                    r.seq,
                    r.slot,
                    r.files,
                    r.directories,
                    r.usage.free >> 20,
                    r.usage.capacity >> 20,
                    r.usage.provisioned >> 20,
                    if r.problems.is_empty() { "clean".to_string() } else { format!("{} problems", r.problems.len()) }
                ));
                for problem in &r.problems {
                    out.push_str(&format!("  {problem}\n"));
                }
                bad += usize::from(!r.problems.is_empty());
            }
            Err(e) => {
                out.push_str(&format!("partition {}: {e}\n", p.index + 1));
                bad += 1;
            }
        }
    }
    if bad > 0 {
        Err(format!("{out}{}: {bad} datastore(s) with problems", path.display()))
    } else {
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_image_gets_a_datastore_and_files_go_in_and_out_thin() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("ds.img");
        let out = create(&img, "local", Some("64M"), "64K", false).unwrap();
        assert!(out.contains("\"local\""), "{out}");
        // A sparse 20 MiB disk image with a little data in the middle goes in thin and comes back equal.
        let src = dir.path().join("disk.raw");
        let mut raw = vec![0u8; 20 << 20];
        raw[9_000_000..9_000_005].copy_from_slice(b"hello");
        std::fs::write(&src, &raw).unwrap();
        let put_out = put(&img, None, &src, "vms/web/disk.raw", false, true).unwrap();
        assert!(put_out.contains("20971520 bytes (65536 allocated)"), "{put_out}");
        assert!(put(&img, None, &src, "vms/web/disk.raw", false, true).unwrap_err().contains("exists"));
        let back = dir.path().join("back.raw");
        get(&img, Some("local"), "vms/web/disk.raw", &back).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), raw);
        // The same disk as a compressed qcow2 image goes in as the raw disk it holds (thin), or
        // as it is when asked.
        let q = dir.path().join("disk.qcow2");
        let ok = std::process::Command::new("qemu-img")
            .args([
                "convert",
                "-q",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                src.to_str().unwrap(),
                q.to_str().unwrap(),
            ])
            .status()
            .expect("qemu-img (qemu-utils)");
        assert!(ok.success());
        let put_out = put(&img, None, &q, "vms/web/disk.raw", true, true).unwrap();
        assert!(put_out.ends_with("20971520 bytes (65536 allocated), converted from qcow2\n"), "{put_out}");
        get(&img, Some("local"), "vms/web/disk.raw", &back).unwrap();
        assert!(std::fs::read(&back).unwrap() == raw, "the converted disk is the raw one");
        put(&img, None, &q, "iso/disk.qcow2", false, false).unwrap();
        get(&img, None, "iso/disk.qcow2", &back).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&q).unwrap());
        rm(&img, None, "iso/disk.qcow2").unwrap();
        let listing = ls(&img, None, "vms/web").unwrap();
        assert!(listing.contains("disk.raw"), "{listing}");
        assert!(rm(&img, None, "vms/web").unwrap_err().contains("not empty"));
        rm(&img, None, "vms/web/disk.raw").unwrap();
        mkdir(&img, None, "iso/linux").unwrap();
        assert!(fsck(&img, None).unwrap().contains("clean"));
        assert!(ls(&img, Some("other"), "").unwrap_err().contains("no datastore named \"other\""));
        assert!(ls(&img, None, "../etc").is_err());
    }

    #[test]
    fn a_disk_with_data_is_refused_unless_overwritten_and_a_boot_image_keeps_its_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("data.img");
        let mut bytes = vec![0u8; 32 << 20];
        bytes[1000] = 1;
        std::fs::write(&img, &bytes).unwrap();
        let e = create(&img, "ds", None, "1M", false).unwrap_err();
        assert!(e.contains("holds data") && e.contains("offset 1000"), "{e}");
        assert_eq!(std::fs::read(&img).unwrap(), bytes, "nothing written");
        create(&img, "ds", None, "1M", true).unwrap();
        assert!(fsck(&img, None).is_ok());

        let boot = crate::media::tests::build(dir.path(), 160 << 20);
        create(&boot, "datastore1", None, "1M", false).unwrap();
        assert!(crate::media::inspect(&boot).is_ok(), "the boot layout is intact");
        let e = create(&boot, "second", None, "1M", false).unwrap_err();
        assert!(e.contains("no free space"), "{e}");
        // Damage is reported by fsck with the datastore named, and the exit status says so.
        let mut disk = open_disk(&boot, true).unwrap();
        let p = pick(&mut disk, &boot, None).unwrap();
        let mut block = vec![0u8; 512];
        // The first metadata node (the inode table) gets a flipped byte.
        let lba = p.first_lba + 16;
        disk.read_blocks(lba, &mut block).unwrap();
        block[100] ^= 0xff;
        disk.write_blocks(lba, &block).unwrap();
        let e = fsck(&boot, None).unwrap_err();
        assert!(e.contains("datastore(s) with problems"), "{e}");
    }
}
