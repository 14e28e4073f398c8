//! Fuzz target for the datastore file system (`storage/src/datastore/`): a valid datastore with
//! directories, thin files and fragmented extent maps is damaged by the input (bytes of the
//! superblocks and metadata nodes changed, each change optionally resealed with a valid CRC so the
//! checks behind the CRC are reached), then mounted and checked; when it mounts, the rest of the
//! input drives file operations (paths, offsets and lengths from the input, commits and remounts).
//! Any panic is a finding, and so is a datastore that mounted, was changed and committed by Ember,
//! and then fails to mount again or checks unclean: Ember's own commits must always be valid.
#![no_main]

#[path = "common/overlay.rs"]
mod overlay;

use ember_storage::block::{BlockDevice, MemDisk};
use ember_storage::datastore::format::{seal_node, seal_superblock, META};
use ember_storage::datastore::{Datastore, DsError, FormatOptions, InodeKind, Superblock};
use libfuzzer_sys::fuzz_target;
use overlay::Overlay;
use std::sync::OnceLock;

/// The undamaged datastore and the metadata nodes it uses.
fn base() -> &'static (MemDisk, Vec<u32>) {
    static BASE: OnceLock<(MemDisk, Vec<u32>)> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut d = MemDisk::new(512, 6 << 11);
        let opts = FormatOptions { label: "ds".into(), uuid: [1; 16], block_size: 64 << 10 };
        let mut ds = Datastore::format(&mut d, &opts).unwrap();
        ds.mkdir_all("vms/a", 1).unwrap();
        let f = ds.create("vms/a/disk.img", 1).unwrap();
        ds.set_len(&mut d, f, 1 << 30, 1).unwrap();
        for i in 0..12u64 {
            ds.write(&mut d, f, i * (3 << 16), &[i as u8 + 1; 100], 1).unwrap();
        }
        let g = ds.create("vms/a/a.json", 1).unwrap();
        ds.write(&mut d, g, 0, b"{\"name\": \"a\"}", 1).unwrap();
        ds.create("empty", 1).unwrap();
        ds.commit(&mut d).unwrap();
        // A second commit, so both superblock slots are valid.
        ds.mkdir("iso", 2).unwrap();
        ds.commit(&mut d).unwrap();
        // The nodes in use: every node the metadata area holds with a valid header.
        let meta_end = Superblock::node_offset(1024) as usize;
        let nodes = (0..1024u32)
            .filter(|&n| {
                let at = Superblock::node_offset(n) as usize;
                at < meta_end && d.bytes()[at..at + 4] == *b"EDSN"
            })
            .collect();
        (d, nodes)
    })
}

impl Overlay {
    fn meta(&mut self, at: u64) -> [u8; META] {
        let mut b = [0u8; META];
        self.read_blocks(at / 512, &mut b).unwrap();
        b
    }
    fn put_meta(&mut self, at: u64, b: &[u8; META]) {
        self.write_blocks(at / 512, b).unwrap();
    }
}

const NAMES: [&str; 10] =
    ["vms", "vms/a", "vms/a/disk.img", "vms/a/a.json", "empty", "iso", "x", "iso/x", "vms/b", "../x"];

fuzz_target!(|data: &[u8]| {
    let (disk, nodes) = base();
    let mut dev = Overlay::new(disk);
    let mut input = data.iter().copied();
    let mut next = move || input.next();
    // Damage: up to 8 changes, each to a superblock slot or a node in use.
    let edits = next().unwrap_or(0) % 9;
    for _ in 0..edits {
        let (Some(target), Some(hi), Some(lo), Some(value), Some(how)) =
            (next(), next(), next(), next(), next())
        else {
            return;
        };
        let targets = 2 + nodes.len();
        let at = match target as usize % targets {
            0 => 0,
            1 => META as u64,
            n => Superblock::node_offset(nodes[n - 2]),
        };
        let mut b = dev.meta(at);
        let offset = (usize::from(hi) << 8 | usize::from(lo)) % META;
        b[offset] = if how & 1 == 0 { value } else { b[offset] ^ value };
        if how & 2 != 0 {
            if at < 2 * META as u64 {
                seal_superblock(&mut b);
            } else {
                seal_node(&mut b);
            }
        }
        dev.put_meta(at, &b);
    }
    let _ = Datastore::check(&mut dev);
    let Ok(mut ds) = Datastore::mount(&mut dev) else { return };
    // Operations.
    let mut ops = 0;
    while let Some(op) = next() {
        ops += 1;
        if ops > 64 {
            break;
        }
        let name = NAMES[next().unwrap_or(0) as usize % NAMES.len()];
        let num = |a: Option<u8>, b: Option<u8>| (u64::from(a.unwrap_or(0)) << 8) | u64::from(b.unwrap_or(0));
        match op % 10 {
            0 => drop(ds.create(name, 5)),
            1 => drop(ds.mkdir_all(name, 5)),
            2 => drop(ds.remove(name)),
            3 => {
                let to = NAMES[next().unwrap_or(0) as usize % NAMES.len()];
                drop(ds.rename(name, to, 5));
            }
            4 | 5 => {
                let offset = num(next(), next()) << (next().unwrap_or(0) % 24);
                let len = num(Some(0), next()) * 97;
                if let Ok(e) = ds.stat(name) {
                    let r = ds.write(&mut dev, e.id, offset, &vec![op; len as usize], 5);
                    if e.kind == InodeKind::Directory {
                        assert!(matches!(r, Err(DsError::IsADirectory(_))));
                    }
                }
            }
            6 => {
                let offset = num(next(), next()) << (next().unwrap_or(0) % 30);
                if let Ok(e) = ds.stat(name) {
                    let mut buf = [0u8; 4096];
                    let _ = ds.read(&mut dev, e.id, offset, &mut buf);
                }
            }
            7 => {
                let size = num(next(), next()) << (next().unwrap_or(0) % 40);
                if let Ok(e) = ds.stat(name) {
                    let _ = ds.set_len(&mut dev, e.id, size, 5);
                }
            }
            8 => drop(ds.commit(&mut dev)),
            _ => {
                if ds.commit(&mut dev).is_ok() {
                    ds = Datastore::mount(&mut dev).expect("Ember's own commit mounts");
                }
            }
        }
    }
    if ds.commit(&mut dev).is_ok() && ds.generation() > 0 {
        let again = Datastore::mount(&mut dev);
        assert!(again.is_ok(), "Ember's own commit does not mount: {:?}", again.err());
        let report = Datastore::check(&mut dev).unwrap();
        assert!(report.problems.is_empty(), "Ember's own commit checks unclean: {:?}", report.problems);
    }
});
