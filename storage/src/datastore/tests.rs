use super::*;
use crate::block::MemDisk;
use alloc::collections::BTreeMap;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

fn opts(label: &str) -> FormatOptions {
    FormatOptions { label: label.into(), uuid: [7; 16], block_size: 64 * 1024 }
}

fn fresh(bytes: u64, block: u32) -> (MemDisk, Datastore) {
    let mut d = MemDisk::new(block, bytes / block as u64);
    let ds = Datastore::format(&mut d, &opts("datastore1")).unwrap();
    (d, ds)
}

/// A file's contents as its size and its non-zero blocks (reading only allocated blocks, so a
/// 64 GiB thin file costs what it holds).
type Contents = (u64, BTreeMap<u64, Vec<u8>>);

fn contents(ds: &Datastore, dev: &mut dyn BlockDevice, id: u64) -> Contents {
    let bs = ds.block_size() as u64;
    let node = &ds.inodes[&id];
    let mut out = BTreeMap::new();
    let blocks: Vec<u64> = node.extents.iter().flat_map(|(&fb, &(_, c))| fb..fb + c as u64).collect();
    for fb in blocks {
        let mut buf = vec![0u8; bs as usize];
        let n = ds.read(dev, id, fb * bs, &mut buf).unwrap();
        buf.truncate(n);
        if buf.iter().any(|&b| b != 0) {
            out.insert(fb, buf);
        }
    }
    (node.size, out)
}

/// The model's bytes in the same form.
fn model_contents(bytes: &[u8], bs: u64) -> Contents {
    let blocks = bytes
        .chunks(bs as usize)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&b| b != 0))
        .map(|(i, c)| (i as u64, c.to_vec()))
        .collect();
    (bytes.len() as u64, blocks)
}

/// Every path with its kind and contents, walked from the root, and the label.
fn snapshot(ds: &Datastore, dev: &mut dyn BlockDevice) -> BTreeMap<String, (InodeKind, Contents)> {
    fn walk(
        ds: &Datastore,
        dev: &mut dyn BlockDevice,
        dir: &str,
        out: &mut BTreeMap<String, (InodeKind, Contents)>,
    ) {
        for e in ds.list(dir).unwrap() {
            let path = if dir.is_empty() { e.name.clone() } else { format!("{dir}/{}", e.name) };
            match e.kind {
                InodeKind::Directory => {
                    out.insert(path.clone(), (e.kind, (0, BTreeMap::new())));
                    walk(ds, dev, &path, out);
                }
                InodeKind::File => {
                    out.insert(path, (e.kind, contents(ds, dev, e.id)));
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    let label = BTreeMap::from([(0, ds.label().as_bytes().to_vec())]);
    out.insert(String::from("[label]"), (InodeKind::Directory, (0, label)));
    walk(ds, dev, "", &mut out);
    out
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn a_new_datastore_mounts_empty_with_its_name_and_space() {
    let (mut d, ds) = fresh(64 * MIB, 512);
    assert_eq!(ds.label(), "datastore1");
    let u = ds.usage();
    assert_eq!(u.provisioned, 0);
    assert_eq!(u.free, u.capacity);
    assert!(u.capacity >= 55 * MIB && u.capacity <= 60 * MIB, "{u:?}");
    let m = Datastore::mount(&mut d).unwrap();
    assert_eq!(m.label(), "datastore1");
    assert_eq!(m.usage(), u);
    assert!(m.list("").unwrap().is_empty());
    let r = Datastore::check(&mut d).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.other_slot, Err(SlotProblem::Blank));
}

#[test]
fn format_refuses_what_cannot_work() {
    let mut tiny = MemDisk::new(512, 8192); // 4 MiB: all metadata
    assert!(
        matches!(Datastore::format(&mut tiny, &opts("x")), Err(DsError::Unsupported(m)) if m.contains("too few"))
    );
    let mut d = MemDisk::new(512, 16384);
    assert!(matches!(Datastore::format(&mut d, &opts("a]b")), Err(DsError::BadName(_))));
    let bad = FormatOptions { block_size: 100_000, ..opts("x") };
    assert!(
        matches!(Datastore::format(&mut d, &bad), Err(DsError::Unsupported(m)) if m.contains("power of two"))
    );
    let mut odd = MemDisk::new(520, 16384);
    assert!(
        matches!(Datastore::format(&mut odd, &opts("x")), Err(DsError::Unsupported(m)) if m.contains("520"))
    );
    assert!(matches!(Datastore::mount(&mut d), Err(DsError::NotADatastore { .. })), "nothing was written");
}

#[test]
fn files_are_thin_sparse_and_read_back_at_any_offset() {
    for block in [512, 4096] {
        let (mut d, mut ds) = fresh(32 * MIB, block);
        let id = ds.create("disk.img", 100).unwrap();
        ds.set_len(&mut d, id, 64 << 30, 101).unwrap();
        assert_eq!(ds.usage().provisioned, 64 << 30, "a 64 GiB thin disk");
        assert_eq!(ds.stat("disk.img").unwrap().allocated, 0);
        // Writes at unaligned offsets across file block boundaries, one far out.
        let a = pattern(1, 100_000);
        ds.write(&mut d, id, 65_000, &a, 102).unwrap();
        let far = (40u64 << 30) + 3;
        ds.write(&mut d, id, far, b"far away", 103).unwrap();
        assert_eq!(ds.stat("disk.img").unwrap().allocated, 4 * 64 * KIB, "three blocks + one");
        ds.commit(&mut d).unwrap();
        let m = Datastore::mount(&mut d).unwrap();
        let mut back = vec![0xEEu8; 100_010];
        m.read(&mut d, id, 64_995, &mut back).unwrap();
        assert!(back[..5].iter().all(|&b| b == 0), "before the write: zeros");
        assert_eq!(&back[5..100_005], &a[..]);
        assert!(back[100_005..].iter().all(|&b| b == 0), "after it, in an allocated block: zeros");
        let mut f = [0u8; 10];
        m.read(&mut d, id, far - 1, &mut f).unwrap();
        assert_eq!(&f, b"\0far away\0");
        let mut unwritten = vec![1u8; 3000];
        m.read(&mut d, id, 20 << 30, &mut unwritten).unwrap();
        assert!(unwritten.iter().all(|&b| b == 0));
        // Reads stop at the end of the file.
        let mut tail = [0u8; 16];
        assert_eq!(m.read(&mut d, id, (64 << 30) - 4, &mut tail).unwrap(), 4);
        assert_eq!(m.read(&mut d, id, 64 << 30, &mut tail).unwrap(), 0);
        assert_eq!(m.stat("disk.img").unwrap().mtime, 103);
    }
}

#[test]
fn sequential_writes_make_one_extent_and_overwrites_stay_in_place() {
    let (mut d, mut ds) = fresh(32 * MIB, 512);
    let id = ds.create("image.iso", 1).unwrap();
    let data = pattern(3, 1_000_000);
    for (i, chunk) in data.chunks(65_536).enumerate() {
        ds.write(&mut d, id, i as u64 * 65_536, chunk, 2).unwrap();
    }
    assert_eq!(ds.inodes[&id].extents.len(), 1, "{:?}", ds.inodes[&id].extents);
    ds.commit(&mut d).unwrap();
    let free = ds.usage().free;
    ds.write(&mut d, id, 500_000, b"overwritten", 3).unwrap();
    assert_eq!(ds.usage().free, free, "an overwrite allocates nothing");
    ds.commit(&mut d).unwrap();
    let m = Datastore::mount(&mut d).unwrap();
    let mut back = vec![0u8; data.len()];
    m.read(&mut d, id, 0, &mut back).unwrap();
    let mut want = data.clone();
    want[500_000..500_011].copy_from_slice(b"overwritten");
    assert_eq!(back, want);
}

#[test]
fn directories_names_and_paths() {
    let (mut d, mut ds) = fresh(16 * MIB, 512);
    ds.mkdir_all("vms/web01", 5).unwrap();
    let f = ds.create("vms/web01/web01.json", 6).unwrap();
    ds.write(&mut d, f, 0, b"{}", 6).unwrap();
    let long = "ü".repeat(127);
    ds.create(&format!("vms/{long}"), 7).unwrap();
    assert_eq!(ds.create("vms/web01/web01.json", 8), Err(DsError::Exists("vms/web01/web01.json".into())));
    assert_eq!(ds.mkdir("nope/x", 8), Err(DsError::NotFound("nope/x".into())));
    assert_eq!(
        ds.create("vms/web01/web01.json/x", 8),
        Err(DsError::NotADirectory("vms/web01/web01.json/x".into()))
    );
    for escape in ["../etc/passwd", "vms/../../x", "vms/./x", "a\0b"] {
        assert!(matches!(ds.create(escape, 8), Err(DsError::BadName(_))), "{escape}");
        assert!(matches!(ds.stat(escape), Err(DsError::BadName(_))), "{escape}");
    }
    assert!(matches!(ds.create(&"x".repeat(256), 8), Err(DsError::BadName(_))));
    assert_eq!(ds.remove("vms/web01"), Err(DsError::NotEmpty("vms/web01".into())));
    ds.rename("vms/web01", "web01-moved", 9).unwrap();
    assert!(matches!(ds.rename("web01-moved", "web01-moved/inside", 9), Err(DsError::BadName(_))));
    assert_eq!(ds.rename("web01-moved", "vms", 9), Err(DsError::Exists("vms".into())));
    ds.commit(&mut d).unwrap();
    let m = Datastore::mount(&mut d).unwrap();
    let names: Vec<String> = m.list("").unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["vms", "web01-moved"]);
    assert_eq!(m.list("vms").unwrap()[0].name, long);
    assert_eq!(m.stat("/web01-moved/web01.json/").unwrap().size, 2);
    assert_eq!(
        m.list("web01-moved/web01.json"),
        Err(DsError::NotADirectory("web01-moved/web01.json".into()))
    );
    let mut m = m;
    m.remove("web01-moved/web01.json").unwrap();
    m.remove("web01-moved").unwrap();
    assert!(matches!(m.remove(""), Err(DsError::BadName(_))));
    m.set_label("local-nvme").unwrap();
    m.commit(&mut d).unwrap();
    let m = Datastore::mount(&mut d).unwrap();
    assert_eq!(m.label(), "local-nvme");
    assert_eq!(m.list("").unwrap().len(), 1);
}

#[test]
fn changes_are_durable_only_after_commit() {
    let (mut d, mut ds) = fresh(16 * MIB, 512);
    let id = ds.create("a", 1).unwrap();
    ds.write(&mut d, id, 0, b"first", 1).unwrap();
    ds.commit(&mut d).unwrap();
    let flushes = d.flushes;
    ds.create("b", 2).unwrap();
    ds.write(&mut d, id, 100_000, b"more", 2).unwrap();
    assert!(ds.is_dirty());
    let m = Datastore::mount(&mut d).unwrap();
    assert_eq!(m.list("").unwrap().len(), 1, "the uncommitted file is not there");
    assert_eq!(m.stat("a").unwrap().size, 5);
    ds.commit(&mut d).unwrap();
    assert_eq!(d.flushes, flushes + 2, "nodes, then the superblock, each flushed");
    assert_eq!(Datastore::mount(&mut d).unwrap().list("").unwrap().len(), 2);
    ds.commit(&mut d).unwrap();
    assert_eq!(d.flushes, flushes + 2, "nothing to commit writes nothing");
}

#[test]
fn freed_blocks_are_not_reused_before_the_commit_that_frees_them() {
    let (mut d, mut ds) = fresh(16 * MIB, 512);
    let a = ds.create("a", 1).unwrap();
    ds.write(&mut d, a, 0, &pattern(9, 200_000), 1).unwrap();
    ds.commit(&mut d).unwrap();
    let a_blocks: Vec<u64> =
        ds.inodes[&a].extents.iter().flat_map(|(_, &(db, c))| db..db + c as u64).collect();
    let before = ds.usage().free;
    ds.remove("a").unwrap();
    assert_eq!(ds.usage().free, before, "freed only by the commit");
    let b = ds.create("b", 2).unwrap();
    ds.write(&mut d, b, 0, &pattern(1, 200_000), 2).unwrap();
    let b_blocks: Vec<u64> =
        ds.inodes[&b].extents.iter().flat_map(|(_, &(db, c))| db..db + c as u64).collect();
    assert!(b_blocks.iter().all(|x| !a_blocks.contains(x)), "{a_blocks:?} {b_blocks:?}");
    // The committed state (a present, b absent) is intact on the device.
    let m = Datastore::mount(&mut d).unwrap();
    let mut buf = vec![0u8; 200_000];
    m.read(&mut d, a, 0, &mut buf).unwrap();
    assert_eq!(buf, pattern(9, 200_000));
    ds.commit(&mut d).unwrap();
    assert_eq!(ds.usage().free, before, "a's four blocks freed, b's four taken");
}

#[test]
fn shrinking_frees_blocks_and_regrowing_reads_zeros() {
    let (mut d, mut ds) = fresh(16 * MIB, 512);
    let id = ds.create("f", 1).unwrap();
    ds.write(&mut d, id, 0, &[0xAB; 300_000], 1).unwrap();
    ds.commit(&mut d).unwrap();
    let free = ds.usage().free;
    ds.set_len(&mut d, id, 70_000, 2).unwrap();
    ds.commit(&mut d).unwrap();
    assert_eq!(ds.usage().free, free + 3 * 64 * KIB);
    ds.set_len(&mut d, id, 300_000, 3).unwrap();
    let mut buf = vec![1u8; 300_000];
    ds.read(&mut d, id, 0, &mut buf).unwrap();
    assert!(buf[..70_000].iter().all(|&b| b == 0xAB));
    assert!(buf[70_000..].iter().all(|&b| b == 0), "no old data comes back");
}

#[test]
fn a_full_datastore_refuses_before_writing() {
    let (mut d, mut ds) = fresh(8 * MIB, 512);
    let cap = ds.usage().capacity;
    let id = ds.create("big", 1).unwrap();
    let writes = d.writes;
    let e = ds.write(&mut d, id, 0, &vec![1u8; cap as usize + 1], 1).unwrap_err();
    assert_eq!(e, DsError::NoSpace { needed_bytes: cap + 64 * KIB, free_bytes: cap });
    assert_eq!(d.writes, writes, "nothing written");
    ds.write(&mut d, id, 0, &vec![1u8; cap as usize], 1).unwrap();
    assert_eq!(ds.usage().free, 0);
    ds.commit(&mut d).unwrap();
    assert!(matches!(ds.write(&mut d, id, MAX_FILE_BYTES, b"x", 1), Err(DsError::TooLarge(_))));
}

#[test]
fn many_files_with_many_extents_span_several_nodes() {
    let (mut d, mut ds) = fresh(64 * MIB, 4096);
    // Every other block of one file: 300 extents, more than one node holds.
    let id = ds.create("fragmented", 1).unwrap();
    for i in 0..300u64 {
        ds.write(&mut d, id, i * 2 * 64 * KIB, &[i as u8; 10], 1).unwrap();
        let other = ds.create(&format!("f{i:03}-{}", "n".repeat(200)), 1).unwrap();
        ds.write(&mut d, other, 0, &[1], 1).unwrap();
    }
    ds.commit(&mut d).unwrap();
    assert!(ds.inodes[&id].extents.len() >= 300);
    assert!(ds.inodes[&id].map.as_ref().unwrap().nodes.len() >= 2);
    assert!(ds.table_nodes.len() >= 10);
    let before = snapshot(&ds, &mut d);
    let m = Datastore::mount(&mut d).unwrap();
    assert_eq!(snapshot(&m, &mut d), before);
    assert!(Datastore::check(&mut d).unwrap().problems.is_empty());
}

#[test]
fn a_failed_commit_leaves_the_old_state_and_the_handle_read_only() {
    let (mut d, mut ds) = fresh(16 * MIB, 512);
    ds.create("kept", 1).unwrap();
    ds.commit(&mut d).unwrap();
    ds.create("lost", 2).unwrap();
    d.write_protected = true;
    assert!(matches!(ds.commit(&mut d), Err(DsError::Io(_))));
    assert!(matches!(ds.create("x", 3), Err(DsError::Failed(_))));
    d.write_protected = false;
    let m = Datastore::mount(&mut d).unwrap();
    assert_eq!(m.list("").unwrap().iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["kept"]);
}

/// A disk with a volatile write cache: writes since the last flush are held; a power cut (at the
/// `cut_at`-th block write or flush) lands an arbitrary subset of them (chosen by `seed`) and tears
/// the write in flight.
struct Volatile {
    durable: MemDisk,
    cache: Vec<(u64, Vec<u8>)>,
    writes: usize,
    cut_at: usize,
    seed: u64,
    dead: bool,
}

impl Volatile {
    fn next(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }
}

impl BlockDevice for Volatile {
    fn block_size(&self) -> u32 {
        self.durable.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.durable.num_blocks()
    }
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.durable.read_blocks(lba, buf)?;
        let bs = self.block_size() as usize;
        for (at, data) in &self.cache {
            if *at >= lba && *at < lba + (buf.len() / bs) as u64 {
                let o = (*at - lba) as usize * bs;
                buf[o..o + bs].copy_from_slice(data);
            }
        }
        Ok(())
    }
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        self.check_request(lba, buf.len())?;
        let bs = self.block_size() as usize;
        for (i, block) in buf.chunks(bs).enumerate() {
            if self.event()? {
                // The write in flight is torn: some of its bytes land.
                let mut torn = vec![0u8; bs];
                let at = lba + i as u64;
                self.durable.read_blocks(at, &mut torn).unwrap();
                let n = (self.next() % bs as u64) as usize;
                torn[..n].copy_from_slice(&block[..n]);
                self.durable.write_blocks(at, &torn).unwrap();
                return Err(IoError::Device("power lost".into()));
            }
            self.cache.push((lba + i as u64, block.to_vec()));
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), IoError> {
        if self.event()? {
            return Err(IoError::Device("power lost".into()));
        }
        for (at, data) in core::mem::take(&mut self.cache) {
            self.durable.write_blocks(at, &data).unwrap();
        }
        Ok(())
    }
}

impl Volatile {
    /// Counts a block write or a flush; at the cut, lands a random subset of the cached writes and
    /// returns true.
    fn event(&mut self) -> Result<bool, IoError> {
        if self.dead {
            return Err(IoError::Device("power lost".into()));
        }
        if self.writes != self.cut_at {
            self.writes += 1;
            return Ok(false);
        }
        self.dead = true;
        for (at, data) in core::mem::take(&mut self.cache) {
            if self.next().is_multiple_of(2) {
                self.durable.write_blocks(at, &data).unwrap();
            }
        }
        Ok(true)
    }
}

/// Metadata changes of every kind, each step ending in a commit. Data goes only into new blocks, so
/// the state before a step is untouched by it and each cut must show one of the two states exactly.
fn step(ds: &mut Datastore, dev: &mut dyn BlockDevice, n: usize) -> Result<(), DsError> {
    match n {
        0 => {
            ds.mkdir_all("vms/a", 1)?;
            let id = ds.create("vms/a/a.json", 1)?;
            ds.write(dev, id, 0, b"{\"name\": \"a\"}", 1)?;
        }
        1 => {
            let id = ds.create("vms/a/disk.img", 2)?;
            ds.set_len(dev, id, 8 << 30, 2)?;
            ds.write(dev, id, 1 << 30, &pattern(5, 70_000), 2)?;
        }
        2 => {
            let id = ds.stat("vms/a/disk.img")?.id;
            ds.write(dev, id, 3 << 30, &pattern(6, 1000), 3)?;
            ds.create("upload.iso", 3)?;
        }
        3 => {
            ds.rename("vms/a", "vms/b", 4)?;
            ds.set_label("renamed")?;
        }
        4 => {
            ds.remove("upload.iso")?;
            let id = ds.stat("vms/b/disk.img")?.id;
            ds.set_len(dev, id, 1 << 30, 5)?;
        }
        _ => {
            ds.remove("vms/b/disk.img")?;
            let id = ds.create("vms/b/new.img", 6)?;
            ds.write(dev, id, 0, &pattern(7, 150_000), 6)?;
        }
    }
    ds.commit(dev)
}

const STEPS: usize = 6;

#[test]
fn a_power_cut_at_any_write_leaves_the_old_or_the_new_state() {
    for block in [4096u32, 512] {
        // States after each step, and the number of block writes and flushes each step makes.
        let mut clean = Volatile {
            durable: MemDisk::new(block, 6 * MIB / block as u64),
            cache: Vec::new(),
            writes: 0,
            cut_at: usize::MAX,
            seed: 1,
            dead: false,
        };
        let mut ds = Datastore::format(&mut clean, &opts("ds")).unwrap();
        let mut states = vec![snapshot(&ds, &mut clean)];
        let mut images = vec![clean.durable.clone()];
        let mut writes = Vec::new();
        for n in 0..STEPS {
            let w = clean.writes;
            step(&mut ds, &mut clean, n).unwrap();
            writes.push(clean.writes - w);
            states.push(snapshot(&ds, &mut clean));
            images.push(clean.durable.clone());
        }
        let mut cuts = 0;
        for n in 0..STEPS {
            let stride = if block == 512 { 3 } else { 1 };
            for cut in (0..writes[n]).step_by(stride) {
                let mut dev = Volatile {
                    durable: images[n].clone(),
                    cache: Vec::new(),
                    writes: 0,
                    cut_at: cut,
                    seed: (cut as u64 + 1) * 0x9E37_79B9,
                    dead: false,
                };
                let mut ds = Datastore::mount(&mut dev).unwrap();
                assert!(step(&mut ds, &mut dev, n).is_err(), "step {n} cut {cut}");
                let mut after = dev.durable;
                let m = Datastore::mount(&mut after)
                    .unwrap_or_else(|e| panic!("block {block} step {n} cut {cut}: {e}"));
                let got = snapshot(&m, &mut after);
                assert!(
                    got == states[n] || got == states[n + 1],
                    "block {block} step {n} cut {cut}: {got:?}"
                );
                let r = Datastore::check(&mut after).unwrap();
                assert!(r.problems.is_empty(), "step {n} cut {cut}: {:?}", r.problems);
                // The survivor takes changes again.
                let mut m = m;
                m.create("after-the-cut", 9).unwrap();
                m.commit(&mut after).unwrap();
                cuts += 1;
            }
        }
        assert!(cuts > 100, "{cuts} cuts");
    }
}

/// Random operations against a model of the files' contents, with commits and remounts.
#[test]
fn random_operations_match_a_model() {
    let (mut d, mut ds) = fresh(24 * MIB, 512);
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..3000 {
        let name = format!("f{}", rnd(6));
        match rnd(10) {
            0..=3 => {
                let id = match ds.stat(&name) {
                    Ok(e) => e.id,
                    Err(_) => ds.create(&name, 1).unwrap(),
                };
                let off = rnd(600_000);
                let len = rnd(150_000) as usize;
                let data = pattern(round as u8, len);
                match ds.write(&mut d, id, off, &data, 1) {
                    Ok(()) => {
                        let f = model.entry(name).or_default();
                        let end = off as usize + len;
                        if f.len() < end {
                            f.resize(end, 0);
                        }
                        f[off as usize..end].copy_from_slice(&data);
                    }
                    Err(DsError::NoSpace { .. }) => {
                        model.entry(name).or_default();
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            4 => {
                if let Ok(e) = ds.stat(&name) {
                    let len = rnd(700_000);
                    ds.set_len(&mut d, e.id, len, 1).unwrap();
                    model.get_mut(&name).unwrap().resize(len as usize, 0);
                }
            }
            5 => {
                if ds.remove(&name).is_ok() {
                    model.remove(&name);
                }
            }
            6 | 7 => ds.commit(&mut d).unwrap(),
            8 => {
                ds.commit(&mut d).unwrap();
                ds = Datastore::mount(&mut d).unwrap();
            }
            _ => {
                let to = format!("f{}", rnd(6));
                if ds.rename(&name, &to, 1).is_ok() {
                    let v = model.remove(&name).unwrap();
                    model.insert(to, v);
                }
            }
        }
        if round % 97 == 0 {
            let snap = snapshot(&ds, &mut d);
            let files: BTreeMap<String, Contents> =
                snap.into_iter().filter(|(k, _)| k != "[label]").map(|(k, (_, v))| (k, v)).collect();
            let want: BTreeMap<String, Contents> =
                model.iter().map(|(k, v)| (k.clone(), model_contents(v, 64 * KIB))).collect();
            assert_eq!(files, want, "round {round}");
            let used: u64 = ds.inodes.values().map(|n| n.allocated_blocks()).sum();
            assert_eq!(used, ds.data_current.ones, "round {round}: allocation bitmap and extents agree");
        }
    }
    ds.commit(&mut d).unwrap();
    assert!(Datastore::check(&mut d).unwrap().problems.is_empty());
}

fn meta_of(d: &MemDisk, node: u32) -> std::ops::Range<usize> {
    let at = Superblock::node_offset(node) as usize;
    let _ = d;
    at..at + META
}

/// Rewrites node `n` of `d` with `f` applied to its header and payload (a valid CRC: a hostile image).
fn forge(d: &mut MemDisk, n: u32, f: impl FnOnce(&mut NodeHeader, &mut Vec<u8>)) {
    let r = meta_of(d, n);
    let raw: [u8; META] = d.bytes()[r.clone()].try_into().unwrap();
    let (mut h, payload) = decode_node(&raw).unwrap();
    let mut p = payload.to_vec();
    f(&mut h, &mut p);
    d.bytes_mut()[r].copy_from_slice(&encode_node(&h, &p));
}

fn forge_sb(d: &mut MemDisk, slot: usize, f: impl FnOnce(&mut Superblock)) {
    let bytes = d.num_blocks() * d.block_size() as u64;
    let raw: [u8; META] = d.bytes()[slot * META..(slot + 1) * META].try_into().unwrap();
    let mut sb = Superblock::decode(&raw, bytes).unwrap();
    f(&mut sb);
    d.bytes_mut()[slot * META..(slot + 1) * META].copy_from_slice(&sb.encode());
}

#[test]
fn hostile_metadata_is_refused_with_the_place_named() {
    let (mut d, mut ds) = fresh(16 * MIB, 512);
    ds.mkdir("dir", 1).unwrap();
    let a = ds.create("dir/a", 1).unwrap();
    ds.write(&mut d, a, 0, &[1; 200_000], 1).unwrap();
    let b = ds.create("b", 1).unwrap();
    ds.write(&mut d, b, 0, &[2; 10], 1).unwrap();
    ds.commit(&mut d).unwrap();
    let slot = ds.slot;
    let table = ds.table_nodes[0];
    let a_map = ds.inodes[&a].map.as_ref().unwrap().first;
    let b_map = ds.inodes[&b].map.as_ref().unwrap().first;
    let base = d.clone();
    let damaged = |d: &mut MemDisk| match Datastore::mount(d) {
        Err(DsError::Damaged(m)) => m,
        other => panic!("{other:?}"),
    };

    // An extent map overlapping another file's blocks.
    let mut d1 = base.clone();
    let a_first = ds.inodes[&a].extents[&0].0;
    forge(&mut d1, b_map, |_, p| p[8..16].copy_from_slice(&a_first.to_le_bytes()));
    assert!(damaged(&mut d1).contains("belongs to another extent too"));
    // An extent past the end of the data area.
    let mut d1 = base.clone();
    forge(&mut d1, a_map, |_, p| p[8..16].copy_from_slice(&u64::MAX.to_le_bytes()));
    assert!(damaged(&mut d1).contains("outside the file or the data area"));
    // A chain that points back into itself.
    let mut d1 = base.clone();
    forge(&mut d1, table, |h, _| h.next = table);
    assert!(damaged(&mut d1).contains("used twice"));
    // A node from another chain.
    let mut d1 = base.clone();
    forge(&mut d1, a_map, |h, _| h.owner = 99);
    assert!(damaged(&mut d1).contains("belongs elsewhere"));
    // A record whose parent is a file, and one with a bad name.
    let mut d1 = base.clone();
    forge(&mut d1, table, |_, p| {
        // Records are in inode order: dir (2), a (3), b (4); make a's parent b.
        let at = 56 + "dir".len();
        p[at + 8..at + 16].copy_from_slice(&4u64.to_le_bytes());
    });
    assert!(damaged(&mut d1).contains("not a directory"));
    let mut d1 = base.clone();
    forge(&mut d1, table, |_, p| p[56] = b'/');
    assert!(damaged(&mut d1).contains("'/'"));
    // A directory loop: dir's parent is dir.
    let mut d1 = base.clone();
    forge(&mut d1, table, |_, p| p[8..16].copy_from_slice(&2u64.to_le_bytes()));
    assert!(damaged(&mut d1).contains("loops"));
    // The superblock's table length disagrees.
    let mut d1 = base.clone();
    forge_sb(&mut d1, slot, |s| s.table_len += 1);
    assert!(damaged(&mut d1).contains("superblock says"));
    // A check collects every problem instead of stopping at the first.
    let mut d1 = base.clone();
    forge(&mut d1, a_map, |h, _| h.owner = 99);
    forge(&mut d1, b_map, |_, p| p[8..16].copy_from_slice(&u64::MAX.to_le_bytes()));
    let r = Datastore::check(&mut d1).unwrap();
    assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
    // A torn newest superblock: the previous state is used.
    let mut d1 = base.clone();
    d1.bytes_mut()[slot * META + 100] ^= 1;
    let m = Datastore::mount(&mut d1).unwrap();
    assert_eq!(m.generation(), ds.generation() - 1);
}

#[test]
fn random_damage_never_panics() {
    let (mut d, mut ds) = fresh(8 * MIB, 512);
    ds.mkdir("d", 1).unwrap();
    for i in 0..20 {
        let id = ds.create(&format!("d/f{i}"), 1).unwrap();
        ds.write(&mut d, id, i * 100_000, &[i as u8; 5000], 1).unwrap();
    }
    ds.commit(&mut d).unwrap();
    let used: Vec<u32> = ds
        .table_nodes
        .iter()
        .copied()
        .chain(ds.inodes.values().flat_map(|n| n.map.iter().flat_map(|m| m.nodes.clone())))
        .collect();
    let mut seed = 99u64;
    for round in 0..3000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut d1 = d.clone();
        let node = used[(seed % used.len() as u64) as usize];
        // Forge a field of a node with a valid CRC, or flip raw bits anywhere in the metadata.
        if round % 2 == 0 {
            let at = (seed >> 16) as usize % 200;
            let v = (seed >> 32) as u8;
            forge(&mut d1, node, |h, p| {
                if at < p.len() {
                    p[at] = v;
                } else {
                    h.next = v as u32;
                }
            });
        } else {
            let at = (seed >> 20) as usize % (Superblock::node_offset(ds.sb.meta_nodes) as usize);
            d1.bytes_mut()[at] ^= 1 << ((seed >> 8) % 8);
        }
        if let Ok(mut m) = Datastore::mount(&mut d1) {
            // Read a little of every file (a forged size may be huge).
            let mut dirs = vec![String::new()];
            while let Some(dir) = dirs.pop() {
                for e in m.list(&dir).unwrap() {
                    let path = format!("{dir}/{}", e.name);
                    match e.kind {
                        InodeKind::Directory => dirs.push(path),
                        InodeKind::File => {
                            let mut buf = [0u8; 8192];
                            let _ = m.read(&mut d1, e.id, e.size.saturating_sub(5000), &mut buf);
                        }
                    }
                }
            }
            let _ = m.create("x", 1).and_then(|_| m.commit(&mut d1));
        }
        let _ = Datastore::check(&mut d1);
    }
}

#[test]
fn a_write_that_fails_part_way_leaves_a_consistent_file_and_no_old_data() {
    let (mut d, mut ds) = fresh(8 * MIB, 512);
    let cap = ds.usage().capacity as usize;
    let secret = ds.create("secret", 1).unwrap();
    ds.write(&mut d, secret, 0, &vec![0x5a; cap], 1).unwrap();
    ds.commit(&mut d).unwrap();
    ds.remove("secret").unwrap();
    ds.commit(&mut d).unwrap();
    let victim = ds.create("victim", 2).unwrap();
    ds.set_len(&mut d, victim, 64 * KIB, 2).unwrap();
    d.write_protected = true;
    assert!(ds.write(&mut d, victim, 0, &[1; 10], 3).is_err());
    d.write_protected = false;
    let mut buf = vec![0xEEu8; 64 * KIB as usize];
    ds.read(&mut d, victim, 0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "the block that was not written is not part of the file");
    assert_eq!(ds.stat("victim").unwrap().allocated, 0);
    ds.mkdir("x", 4).unwrap();
    ds.commit(&mut d).unwrap();
    let m = Datastore::mount(&mut d).unwrap();
    m.read(&mut d, victim, 0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    // A write into an empty file that fails leaves it empty and the datastore mountable.
    let mut m = m;
    let e = m.create("empty", 5).unwrap();
    m.commit(&mut d).unwrap();
    d.write_protected = true;
    assert!(m.write(&mut d, e, 0, &[7; 100], 6).is_err());
    d.write_protected = false;
    m.mkdir("y", 7).unwrap();
    m.commit(&mut d).unwrap();
    assert_eq!(Datastore::mount(&mut d).unwrap().stat("empty").unwrap().size, 0);
    // An empty write changes nothing.
    m.write(&mut d, e, 1 << 40, &[], 8).unwrap();
    assert_eq!(m.stat("empty").unwrap().size, 0);
}

#[test]
fn deep_directories_mount_and_a_forged_loop_is_reported_once() {
    let (mut d, mut ds) = fresh(16 * MIB, 512);
    let deep: Vec<String> = (0..3000).map(|i| format!("d{i}")).collect();
    ds.mkdir_all(&deep.join("/"), 1).unwrap();
    ds.commit(&mut d).unwrap();
    let m = Datastore::mount(&mut d).unwrap();
    assert_eq!(m.stat(&deep.join("/")).unwrap().kind, InodeKind::Directory);
    // d0's parent becomes d2999: a loop of 3000 directories.
    let table = ds.table_nodes[0];
    let last = ds.stat(&deep.join("/")).unwrap().id;
    forge(&mut d, table, |_, p| p[8..16].copy_from_slice(&last.to_le_bytes()));
    let r = Datastore::check(&mut d).unwrap();
    assert_eq!(
        r.problems.iter().filter(|p| p.contains("loops")).count(),
        1,
        "{:?}",
        &r.problems[..3.min(r.problems.len())]
    );
}

#[test]
fn exhausted_inode_numbers_and_huge_sizes_are_errors_not_overflows() {
    let (mut d, mut ds) = fresh(16 * MIB, 512);
    ds.create("a", 1).unwrap();
    ds.commit(&mut d).unwrap();
    let slot = ds.slot;
    forge_sb(&mut d, slot, |s| s.next_inode = u64::MAX);
    let mut m = Datastore::mount(&mut d).unwrap();
    assert!(matches!(m.create("c", 2), Err(DsError::Damaged(_))));
    assert!(matches!(m.mkdir_all("e/f", 2), Err(DsError::Damaged(_))));
    // At most MAX_INODES files and directories (the tree is kept in memory); 4,096 files of the
    // largest size are provisioned without overflow.
    let (mut d, mut ds) = fresh(16 * MIB, 512);
    ds.mkdir("d", 1).unwrap();
    for i in 1..format::MAX_INODES {
        let id = ds.create(&format!("d/f{i}"), 1).unwrap();
        ds.set_len(&mut d, id, MAX_FILE_BYTES, 1).unwrap();
    }
    assert_eq!(ds.usage().provisioned, (format::MAX_INODES as u64 - 1) * MAX_FILE_BYTES);
    assert_eq!(ds.create("one-more", 2), Err(DsError::TooManyFiles));
    assert_eq!(ds.mkdir_all("x/y", 2), Err(DsError::TooManyFiles));
    ds.commit(&mut d).unwrap();
    assert_eq!(Datastore::mount(&mut d).unwrap().list("d").unwrap().len(), format::MAX_INODES - 1);
}

/// A disk whose reads fail from a chosen number of reads on.
struct FailingReads {
    inner: MemDisk,
    reads_left: usize,
}

impl BlockDevice for FailingReads {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        if self.reads_left == 0 {
            return Err(IoError::Device(String::from("command timed out")));
        }
        self.reads_left -= 1;
        self.inner.read_blocks(lba, buf)
    }
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        self.inner.write_blocks(lba, buf)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.inner.flush()
    }
}

#[test]
fn a_read_that_fails_while_mounting_is_a_device_error_not_damage() {
    let (mut d, mut ds) = fresh(64 * MIB, 512);
    let id = ds.create("f", 1).unwrap();
    ds.write(&mut d, id, 0, b"data", 2).unwrap();
    ds.commit(&mut d).unwrap();
    // Every number of successful reads before the failure: the mount either works (it needed no
    // more) or says the device failed; it never calls the metadata damaged.
    let mut worked = false;
    for n in 0..64 {
        let mut f = FailingReads { inner: d.clone(), reads_left: n };
        match Datastore::mount(&mut f) {
            Ok(_) => worked = true,
            Err(DsError::Io(IoError::Device(m))) => assert_eq!(m, "command timed out"),
            Err(e) => panic!("after {n} reads: {e}"),
        }
    }
    assert!(worked, "enough reads mount it");
}

#[test]
fn a_held_file_is_neither_removed_nor_moved_until_released() {
    let (mut d, mut ds) = fresh(64 << 20, 512);
    ds.mkdir("vm", 1).unwrap();
    ds.create("vm/vm.img", 1).unwrap();
    let id = ds.hold("vm/vm.img", "VM vm").unwrap();
    assert_eq!(ds.hold("vm/vm.img", "VM vm").unwrap(), id, "again by the same holder");
    assert!(matches!(ds.hold("vm/vm.img", "VM other"), Err(DsError::Busy { .. })));
    let e = ds.remove("vm/vm.img").unwrap_err();
    assert_eq!(e.to_string(), "vm/vm.img is in use by VM vm");
    assert!(matches!(ds.rename("vm/vm.img", "x.img", 2), Err(DsError::Busy { .. })));
    assert!(matches!(ds.remove("vm"), Err(DsError::NotEmpty(_))));
    assert_eq!(ds.holders(), ["VM vm"]);
    ds.release_held("VM vm");
    assert!(ds.holders().is_empty());
    ds.remove("vm/vm.img").unwrap();
    ds.commit(&mut d).unwrap();
}

#[test]
fn reload_forgets_uncommitted_changes_and_keeps_holds() {
    let (mut d, mut ds) = fresh(64 << 20, 512);
    ds.create("kept", 1).unwrap();
    ds.commit(&mut d).unwrap();
    ds.hold("kept", "VM a").unwrap();
    ds.create("dropped", 2).unwrap();
    ds.reload(&mut d).unwrap();
    assert!(ds.stat("dropped").is_err());
    assert!(matches!(ds.remove("kept"), Err(DsError::Busy { .. })));
}
