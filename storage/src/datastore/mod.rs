//! The datastore file system (Ember's own format, version 1, specified in `docs/datastore-format.md`):
//! a few large, thin-provisioned files - virtual disks, images, VM definitions - in directories, on
//! one partition of a local disk or LUN.
//!
//! Shape: two superblock slots, a metadata area of 4 KiB nodes and a data area of large file blocks
//! (1 MiB by default). A file's data lives in extents of consecutive blocks, allocated on first write
//! (thin: unwritten ranges read as zeros). The metadata - the inode table and one extent map per file,
//! each a chain of checksummed nodes - is copy-on-write: a commit writes the changed chains into nodes
//! the committed state does not use, flushes, then writes the superblock into the slot that does not
//! hold the current one and flushes again. A power cut at any instant therefore leaves either the
//! previous or the new committed state, both whole. File data is written in place; blocks allocated
//! since the last commit are not referenced by the committed state, and blocks freed since then are not
//! handed out again before the commit that frees them is durable, so a cut never lets a committed file
//! see another file's data.
//!
//! The device is passed into every call, never owned, so the appliance can keep it behind its own lock
//! and the host tool can use a file. Nothing here panics on what it reads: a damaged or hostile
//! datastore is an error naming the superblock slot, node or record at fault.

pub mod format;

pub use format::{check_label, check_name, Extent, InodeKind, SlotProblem, Superblock, MAX_LABEL, MAX_NAME};

use crate::block::{BlockDevice, IoError};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use format::{
    decode_node, encode_node, InodeRecord, NodeHeader, NodeKind, EXTENT_LEN, META, NODE_PAYLOAD, NO_NODE,
    ROOT,
};

/// The largest file: 64 TiB (VMFS 6 allows 62 TB).
pub const MAX_FILE_BYTES: u64 = 64 << 40;
/// Default file block size.
pub const DEFAULT_BLOCK: u32 = 1 << 20;

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DsError {
    /// The device failed.
    Io(IoError),
    /// Neither superblock slot holds a datastore; the reasons, slot by slot.
    NotADatastore { slot0: SlotProblem, slot1: SlotProblem },
    /// The committed metadata is inconsistent; the text names the node or record.
    Damaged(String),
    /// The device or partition cannot hold a datastore with these options.
    Unsupported(String),
    /// No such file or directory.
    NotFound(String),
    /// The name is taken.
    Exists(String),
    /// A path component that must be a directory is a file.
    NotADirectory(String),
    /// A file operation on a directory.
    IsADirectory(String),
    /// Removing a directory that still has entries.
    NotEmpty(String),
    /// A name or label breaks the rules; the text says which.
    BadName(String),
    /// The data area has too few free blocks.
    NoSpace { needed_bytes: u64, free_bytes: u64 },
    /// The metadata area has too few free nodes for the commit.
    MetadataFull { needed: usize, free: usize },
    /// A file would grow past [`MAX_FILE_BYTES`].
    TooLarge(u64),
    /// The datastore holds as many files and directories as it may ([`format::MAX_INODES`]).
    TooManyFiles,
    /// An earlier commit failed part way; nothing more is written until the datastore is mounted again.
    Failed(String),
    /// The file is held (a registered VM's disk or definition): it may not be removed or moved.
    Busy { path: String, by: String },
}

impl fmt::Display for DsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DsError::Io(e) => write!(f, "datastore I/O: {e}"),
            DsError::NotADatastore { slot0, slot1 } => {
                write!(f, "not a datastore (superblock 0: {slot0}; superblock 1: {slot1})")
            }
            DsError::Damaged(m) => write!(f, "datastore metadata damaged: {m}"),
            DsError::Unsupported(m) => write!(f, "{m}"),
            DsError::NotFound(p) => write!(f, "{p}: no such file or directory"),
            DsError::Exists(p) => write!(f, "{p}: already exists"),
            DsError::NotADirectory(p) => write!(f, "{p}: not a directory"),
            DsError::IsADirectory(p) => write!(f, "{p}: is a directory"),
            DsError::NotEmpty(p) => write!(f, "{p}: directory not empty"),
            DsError::BadName(m) => write!(f, "{m}"),
            DsError::NoSpace { needed_bytes, free_bytes } => {
                write!(f, "not enough free space: {needed_bytes} bytes needed, {free_bytes} free")
            }
            DsError::MetadataFull { needed, free } => {
                write!(f, "metadata area full: {needed} nodes needed, {free} free")
            }
            DsError::TooLarge(n) => write!(f, "a file of {n} bytes exceeds the {MAX_FILE_BYTES}-byte limit"),
            DsError::TooManyFiles => {
                write!(f, "the datastore holds {} files and directories, the most it may", format::MAX_INODES)
            }
            DsError::Failed(m) => {
                write!(f, "datastore is read-only after a failed write ({m}); mount it again")
            }
            DsError::Busy { path, by } => write!(f, "{path} is in use by {by}"),
        }
    }
}

impl From<IoError> for DsError {
    fn from(e: IoError) -> Self {
        DsError::Io(e)
    }
}

/// A file or directory, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Inode number: the handle for reads and writes.
    pub id: u64,
    pub name: String,
    pub kind: InodeKind,
    /// Logical size (provisioned bytes of a thin file).
    pub size: u64,
    /// Bytes of data blocks the file holds.
    pub allocated: u64,
    /// Seconds since 1970.
    pub mtime: u64,
}

/// Space accounting, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// The data area.
    pub capacity: u64,
    /// Data blocks that can be allocated now.
    pub free: u64,
    /// The sum of the files' sizes (what thin files may grow to use).
    pub provisioned: u64,
}

/// Choices made when a datastore is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatOptions {
    pub label: String,
    pub uuid: [u8; 16],
    /// File block size (power of two, 64 KiB ..= 64 MiB).
    pub block_size: u32,
}

/// A set of block numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bitmap {
    words: Vec<u64>,
    len: u64,
    ones: u64,
}

impl Bitmap {
    /// An empty set of `len` bits; refused, not aborted, when memory is short.
    fn new(len: u64) -> Result<Self, DsError> {
        let n =
            usize::try_from(len.div_ceil(64)).map_err(|_| DsError::Unsupported(format!("{len} blocks")))?;
        let mut words = Vec::new();
        words.try_reserve_exact(n).map_err(|_| {
            DsError::Unsupported(format!(
                "not enough memory for the allocation map of {len} blocks ({} KiB)",
                n / 128
            ))
        })?;
        words.resize(n, 0);
        Ok(Bitmap { words, len, ones: 0 })
    }
    /// Makes this set equal to `other` (of the same length) without allocating.
    fn copy_from(&mut self, other: &Bitmap) {
        self.words.copy_from_slice(&other.words);
        self.ones = other.ones;
    }
    /// Empties the set.
    fn reset(&mut self) {
        self.words.fill(0);
        self.ones = 0;
    }
    fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: u64) {
        if i < self.len && !self.get(i) {
            self.words[(i / 64) as usize] |= 1 << (i % 64);
            self.ones += 1;
        }
    }
    fn clear(&mut self, i: u64) {
        if self.get(i) {
            self.words[(i / 64) as usize] &= !(1 << (i % 64));
            self.ones -= 1;
        }
    }
    /// The first index at or after `from` (wrapping) that is clear here and in `other` (when given).
    fn find_free(&self, other: Option<&Bitmap>, from: u64) -> Option<u64> {
        let n = self.words.len();
        let start = (from.min(self.len.saturating_sub(1)) / 64) as usize;
        for k in 0..=n {
            let w = (start + k) % n.max(1);
            let theirs = other.map_or(Some(0), |o| o.words.get(w).copied());
            let used = self.words.get(w).copied().unwrap_or(!0) | theirs.unwrap_or(!0);
            if used != !0 {
                let bit = (!used).trailing_zeros() as u64;
                let i = w as u64 * 64 + bit;
                if i < self.len {
                    return Some(i);
                }
            }
        }
        None
    }
}

/// Where a file's committed extent map lives.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MapChain {
    first: u32,
    seq: u64,
    nodes: Vec<u32>,
}

#[derive(Debug, Clone)]
struct Inode {
    parent: u64,
    kind: InodeKind,
    name: String,
    size: u64,
    mtime: u64,
    /// file block -> (data block, count)
    extents: BTreeMap<u64, (u64, u32)>,
    /// The committed chain of the extent map, if it is unchanged since.
    map: Option<MapChain>,
}

impl Inode {
    fn allocated_blocks(&self) -> u64 {
        self.extents.values().map(|&(_, c)| c as u64).sum()
    }
    /// The data block holding file block `fb`.
    fn lookup(&self, fb: u64) -> Option<u64> {
        let (&start, &(db, count)) = self.extents.range(..=fb).next_back()?;
        (fb < start + count as u64).then(|| db + (fb - start))
    }
}

/// Problems found while loading; mount stops at the first, a check collects them all.
struct Loaded {
    sb: Superblock,
    slot: usize,
    other_slot: Result<Superblock, SlotProblem>,
    inodes: BTreeMap<u64, Inode>,
    table_nodes: Vec<u32>,
    problems: Vec<String>,
}

/// A mounted datastore.
#[derive(Debug, Clone)]
pub struct Datastore {
    /// The committed superblock.
    sb: Superblock,
    /// The slot it is in.
    slot: usize,
    label: String,
    next_inode: u64,
    inodes: BTreeMap<u64, Inode>,
    /// (parent, name) -> inode
    names: BTreeMap<(u64, String), u64>,
    table_nodes: Vec<u32>,
    /// Nodes the committed state uses.
    meta_committed: Bitmap,
    /// Data blocks the committed state references.
    data_committed: Bitmap,
    /// Data blocks the current state references.
    data_current: Bitmap,
    /// Data blocks in either set: not free for allocation.
    reserved: u64,
    /// Where the next allocation search starts.
    cursor: u64,
    dirty: bool,
    failed: Option<String>,
    /// Files that may not be removed or moved, and who holds them (in memory only).
    holds: BTreeMap<u64, String>,
}

/// A datastore check's findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub label: String,
    pub seq: u64,
    pub slot: usize,
    /// The other slot: its sequence number, or why it is not usable.
    pub other_slot: Result<u64, SlotProblem>,
    pub files: usize,
    pub directories: usize,
    pub usage: Usage,
    /// Everything found wrong (empty: clean).
    pub problems: Vec<String>,
}

fn io_check(dev: &dyn BlockDevice) -> Result<u32, DsError> {
    let bs = dev.block_size();
    if bs == 0 || !bs.is_power_of_two() || !META.is_multiple_of(bs as usize) {
        return Err(DsError::Unsupported(format!(
            "a datastore needs a block size that divides 4096; this device has {bs}-byte blocks"
        )));
    }
    Ok(bs)
}

/// Reads `buf.len()` bytes at byte offset `at`, through a bounce block where unaligned.
fn read_bytes(dev: &mut dyn BlockDevice, at: u64, buf: &mut [u8]) -> Result<(), DsError> {
    let bs = dev.block_size() as u64;
    let mut done = 0usize;
    while done < buf.len() {
        let pos = at + done as u64;
        let within = (pos % bs) as usize;
        let rest = buf.len() - done;
        if within == 0 && rest as u64 >= bs {
            let n = rest - rest % bs as usize;
            dev.read_blocks(pos / bs, &mut buf[done..done + n])?;
            done += n;
        } else {
            let mut block = vec![0u8; bs as usize];
            dev.read_blocks(pos / bs, &mut block)?;
            let n = (bs as usize - within).min(rest);
            buf[done..done + n].copy_from_slice(&block[within..within + n]);
            done += n;
        }
    }
    Ok(())
}

/// Writes `data` at byte offset `at` (`None`: zeros, `len` bytes), reading and merging partial blocks.
fn write_bytes(dev: &mut dyn BlockDevice, at: u64, data: Option<&[u8]>, len: usize) -> Result<(), DsError> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let bs = dev.block_size() as u64;
    let mut done = 0usize;
    while done < len {
        let pos = at + done as u64;
        let within = (pos % bs) as usize;
        let rest = len - done;
        if within == 0 && rest as u64 >= bs {
            let n = rest - rest % bs as usize;
            match data {
                Some(d) => {
                    dev.write_blocks(pos / bs, &d[done..done + n])?;
                    done += n;
                }
                None => {
                    let n = n.min(ZEROS.len());
                    dev.write_blocks(pos / bs, &ZEROS[..n])?;
                    done += n;
                }
            }
        } else {
            let mut block = vec![0u8; bs as usize];
            dev.read_blocks(pos / bs, &mut block)?;
            let n = (bs as usize - within).min(rest);
            match data {
                Some(d) => block[within..within + n].copy_from_slice(&d[done..done + n]),
                None => block[within..within + n].fill(0),
            }
            dev.write_blocks(pos / bs, &block)?;
            done += n;
        }
    }
    Ok(())
}

fn read_meta(dev: &mut dyn BlockDevice, at: u64) -> Result<[u8; META], DsError> {
    let mut b = [0u8; META];
    read_bytes(dev, at, &mut b)?;
    Ok(b)
}

/// Splits a path (`dir/file`, leading and trailing `/` ignored) into checked names.
fn components(path: &str) -> Result<Vec<&str>, DsError> {
    let t = path.trim_matches('/');
    if t.is_empty() {
        return Ok(Vec::new());
    }
    t.split('/')
        .map(|c| check_name(c).map(|()| c).map_err(|m| DsError::BadName(format!("path {path:?}: {m}"))))
        .collect()
}

/// A chain's bytes and the nodes that hold them.
type Chain = (Vec<u8>, Vec<u32>);

/// Reads a chain of nodes into one byte stream, checking every node against what the chain's owner
/// says it is. Returns the stream and the nodes, or what is wrong with them (inner `Err`); a read
/// that fails is an outer `Err`.
#[allow(clippy::too_many_arguments)]
fn read_chain(
    dev: &mut dyn BlockDevice,
    sb: &Superblock,
    first: u32,
    kind: NodeKind,
    owner: u64,
    seq: u64,
    seen: &mut Bitmap,
    what: &str,
) -> Result<Result<Chain, String>, DsError> {
    let mut out = Vec::new();
    let mut nodes = Vec::new();
    let mut at = first;
    while at != NO_NODE {
        if at >= sb.meta_nodes {
            return Ok(Err(format!("{what}: node {at} is outside the metadata area")));
        }
        if seen.get(at as u64) {
            return Ok(Err(format!("{what}: node {at} is used twice")));
        }
        seen.set(at as u64);
        // A read that fails is the device's problem, not damage: it propagates as `DsError::Io`.
        let raw = read_meta(dev, Superblock::node_offset(at))?;
        let (h, payload) = match decode_node(&raw) {
            Ok(x) => x,
            Err(m) => return Ok(Err(format!("{what}: node {at}: {m}"))),
        };
        let index = nodes.len() as u32;
        if h.kind != kind || h.owner != owner || h.seq != seq || h.index != index {
            return Ok(Err(format!(
                "{what}: node {at} belongs elsewhere (kind {:?}, owner {}, commit {}, position {}; expected {kind:?}, {owner}, {seq}, {index})",
                h.kind, h.owner, h.seq, h.index
            )));
        }
        out.extend_from_slice(payload);
        nodes.push(at);
        at = h.next;
    }
    Ok(Ok((out, nodes)))
}

impl Datastore {
    /// Creates an empty datastore on the whole of `dev` and commits it.
    pub fn format(dev: &mut dyn BlockDevice, opts: &FormatOptions) -> Result<Datastore, DsError> {
        let dev_block = io_check(dev)?;
        check_label(&opts.label).map_err(DsError::BadName)?;
        let bs = opts.block_size;
        if !bs.is_power_of_two() || !(format::MIN_BLOCK..=format::MAX_BLOCK).contains(&bs) {
            return Err(DsError::Unsupported(format!(
                "block size {bs}: expected a power of two from 64 KiB to 64 MiB"
            )));
        }
        let size = dev.num_blocks().saturating_mul(dev_block as u64);
        // Metadata: 1/256 of the space, at least 4 MiB, at most 1 GiB.
        let meta_bytes = (size / 256).clamp(4 << 20, 1 << 30);
        let meta_nodes = (meta_bytes / META as u64) as u32;
        let data_start = Superblock::node_offset(meta_nodes).next_multiple_of(bs as u64);
        let data_blocks = size.saturating_sub(data_start) / bs as u64;
        if data_blocks > format::MAX_DATA_BLOCKS {
            return Err(DsError::Unsupported(format!(
                "{size} bytes in {bs}-byte blocks are more than {} blocks: choose a larger block size",
                format::MAX_DATA_BLOCKS
            )));
        }
        if data_blocks < 4 {
            return Err(DsError::Unsupported(format!(
                "{size} bytes are too few for a datastore with {bs}-byte blocks (at least {} bytes)",
                data_start + 4 * bs as u64
            )));
        }
        let sb = Superblock {
            seq: 0,
            uuid: opts.uuid,
            block_size: bs,
            meta_nodes,
            data_start,
            data_blocks,
            size_bytes: size,
            table_node: NO_NODE,
            table_records: 0,
            table_len: 0,
            next_inode: ROOT + 1,
            label: opts.label.clone(),
        };
        // Both slots are written: slot 1 blank (a stale superblock of an earlier datastore there would
        // otherwise be taken for a newer state), then slot 0 with the empty datastore.
        write_bytes(dev, META as u64, Some(&[0u8; META]), META)?;
        dev.flush()?;
        let mut ds = Datastore::empty(sb, 1)?;
        ds.dirty = true;
        ds.commit(dev)?;
        Ok(ds)
    }

    fn empty(sb: Superblock, slot: usize) -> Result<Datastore, DsError> {
        Ok(Datastore {
            label: sb.label.clone(),
            next_inode: sb.next_inode,
            meta_committed: Bitmap::new(sb.meta_nodes as u64)?,
            data_committed: Bitmap::new(sb.data_blocks)?,
            data_current: Bitmap::new(sb.data_blocks)?,
            reserved: 0,
            inodes: BTreeMap::new(),
            names: BTreeMap::new(),
            table_nodes: Vec::new(),
            cursor: 0,
            dirty: false,
            failed: None,
            holds: BTreeMap::new(),
            sb,
            slot,
        })
    }

    /// Reads the superblocks and the whole metadata tree, checking everything.
    fn load(dev: &mut dyn BlockDevice, collect: bool) -> Result<Loaded, DsError> {
        io_check(dev)?;
        let bytes = dev.num_blocks().saturating_mul(dev.block_size() as u64);
        if bytes < 2 * META as u64 {
            return Err(DsError::Unsupported(format!("{bytes} bytes cannot hold a datastore")));
        }
        let s0 = Superblock::decode(&read_meta(dev, 0)?, bytes);
        let s1 = Superblock::decode(&read_meta(dev, META as u64)?, bytes);
        let (sb, slot, other) = match (s0, s1) {
            (Ok(a), Ok(b)) if b.seq > a.seq => (b, 1, Ok(a)),
            (Ok(a), other) => (a, 0, other),
            (Err(p), Ok(b)) => (b, 1, Err(p)),
            (Err(slot0), Err(slot1)) => return Err(DsError::NotADatastore { slot0, slot1 }),
        };
        let mut problems = Vec::new();
        let mut seen = Bitmap::new(sb.meta_nodes as u64)?;
        let (table, table_nodes) = match read_chain(
            dev,
            &sb,
            sb.table_node,
            NodeKind::Table,
            0,
            sb.seq,
            &mut seen,
            "inode table",
        )? {
            Ok(t) => t,
            Err(m) => return Err(DsError::Damaged(m)),
        };
        if table.len() as u64 != sb.table_len {
            return Err(DsError::Damaged(format!(
                "inode table holds {} bytes, the superblock says {}",
                table.len(),
                sb.table_len
            )));
        }
        if sb.table_records as usize > format::MAX_INODES {
            return Err(DsError::Unsupported(format!(
                "the datastore holds {} files and directories; this build handles at most {}",
                sb.table_records,
                format::MAX_INODES
            )));
        }
        let mut inodes = BTreeMap::new();
        let mut names: BTreeMap<(u64, String), u64> = BTreeMap::new();
        let mut pos = 0usize;
        let mut last_id = ROOT;
        for r in 0..sb.table_records {
            let (rec, n) = InodeRecord::decode(&table[pos..])
                .map_err(|m| DsError::Damaged(format!("inode table record {r} at byte {pos}: {m}")))?;
            pos += n;
            let mut bad = |m: String| {
                problems.push(format!("inode {} ({:?}): {m}", rec.id, rec.name));
            };
            if rec.id <= ROOT || rec.id >= sb.next_inode || rec.id <= last_id {
                bad(format!("inode number outside 2..{} or not above the previous record's", sb.next_inode));
                continue;
            }
            last_id = rec.id;
            if inodes.contains_key(&rec.id) {
                bad(String::from("inode number used twice"));
                continue;
            }
            if let Err(m) = check_name(&rec.name) {
                bad(m);
                continue;
            }
            if names.insert((rec.parent, rec.name.clone()), rec.id).is_some() {
                bad(String::from("a second entry of that name in its directory"));
                continue;
            }
            if rec.kind == InodeKind::Directory && (rec.size != 0 || rec.extents != 0) {
                bad(String::from("a directory with a size or extents"));
                continue;
            }
            if rec.size > MAX_FILE_BYTES {
                bad(format!("size {} exceeds the limit", rec.size));
                continue;
            }
            inodes.insert(
                rec.id,
                (
                    Inode {
                        parent: rec.parent,
                        kind: rec.kind,
                        name: rec.name.clone(),
                        size: rec.size,
                        mtime: rec.mtime,
                        extents: BTreeMap::new(),
                        map: None,
                    },
                    rec,
                ),
            );
            if !collect && !problems.is_empty() {
                break;
            }
        }
        if pos != table.len() && problems.is_empty() {
            problems.push(format!(
                "inode table has {} bytes after its {} records",
                table.len() - pos,
                sb.table_records
            ));
        }
        // Every parent is the root or an existing directory, and every chain of parents reaches the
        // root (no loops).
        for (&id, (node, _)) in &inodes {
            let parent = node.parent;
            match inodes.get(&parent) {
                _ if parent == ROOT => {}
                Some((p, _)) if p.kind == InodeKind::Directory => {}
                Some(_) => problems.push(format!("inode {id}: parent {parent} is not a directory")),
                None => problems.push(format!("inode {id}: parent {parent} does not exist")),
            }
        }
        // Loops: walk up from each inode not yet known to reach the root; every inode on a walk that
        // reaches the root (or a known-good inode) is known good, so each inode is walked once.
        // (An inode whose walk ends in a loop is marked too, so a loop is reported once.)
        let mut known: BTreeMap<u64, ()> = BTreeMap::new();
        for &id in inodes.keys() {
            let mut path: Vec<u64> = Vec::new();
            let mut on_path: BTreeMap<u64, ()> = BTreeMap::new();
            let mut at = id;
            while let Some((node, _)) = inodes.get(&at) {
                if known.contains_key(&at) {
                    break;
                }
                if on_path.insert(at, ()).is_some() {
                    problems.push(format!("inode {id}: its chain of parent directories loops"));
                    break;
                }
                path.push(at);
                at = node.parent;
            }
            for p in path {
                known.insert(p, ());
            }
        }
        // Extent maps.
        let bs = sb.block_size as u64;
        let mut data = Bitmap::new(sb.data_blocks)?;
        let mut out = BTreeMap::new();
        for (id, (mut node, rec)) in inodes {
            if !collect && !problems.is_empty() {
                break;
            }
            if rec.extents > 0 {
                let what = format!("extent map of inode {id} ({:?})", rec.name);
                match read_chain(
                    dev,
                    &sb,
                    rec.map_node,
                    NodeKind::Extents,
                    id,
                    rec.map_seq,
                    &mut seen,
                    &what,
                )? {
                    Err(m) => problems.push(m),
                    Ok((bytes, nodes)) => {
                        if bytes.len() != rec.extents as usize * EXTENT_LEN {
                            problems.push(format!(
                                "{what}: {} bytes for {} extents",
                                bytes.len(),
                                rec.extents
                            ));
                        } else {
                            let blocks_in_size = rec.size.div_ceil(bs);
                            let mut end = 0u64;
                            for (k, chunk) in bytes.chunks(EXTENT_LEN).enumerate() {
                                let Some(e) = Extent::decode(chunk) else { break };
                                let fend = e.file_block.checked_add(e.count as u64);
                                let dend = e.data_block.checked_add(e.count as u64);
                                let ok = e.count > 0
                                    && e.file_block >= end
                                    && fend.is_some_and(|f| f <= blocks_in_size)
                                    && dend.is_some_and(|d| d <= sb.data_blocks);
                                if !ok {
                                    problems.push(format!(
                                        "{what}: extent {k} (file block {}, data block {}, {} blocks) is out of order or outside the file or the data area",
                                        e.file_block, e.data_block, e.count
                                    ));
                                    break;
                                }
                                if let Some(b) =
                                    (e.data_block..e.data_block + e.count as u64).find(|&b| data.get(b))
                                {
                                    problems.push(format!(
                                        "{what}: data block {b} belongs to another extent too"
                                    ));
                                    break;
                                }
                                (e.data_block..e.data_block + e.count as u64).for_each(|b| data.set(b));
                                end = e.file_block + e.count as u64;
                                node.extents.insert(e.file_block, (e.data_block, e.count));
                            }
                            node.map = Some(MapChain { first: rec.map_node, seq: rec.map_seq, nodes });
                        }
                    }
                }
            }
            out.insert(id, node);
        }
        Ok(Loaded { sb, slot, other_slot: other, inodes: out, table_nodes, problems })
    }

    /// Mounts the datastore on `dev`: the newest valid superblock and its whole metadata tree, checked.
    pub fn mount(dev: &mut dyn BlockDevice) -> Result<Datastore, DsError> {
        let l = Datastore::load(dev, false)?;
        if let Some(p) = l.problems.first() {
            return Err(DsError::Damaged(p.clone()));
        }
        let mut ds = Datastore::empty(l.sb, l.slot)?;
        ds.table_nodes = l.table_nodes;
        ds.inodes = l.inodes;
        ds.rebuild_indexes();
        Ok(ds)
    }

    /// Checks a datastore offline (fsck): every problem found, or a clean report.
    pub fn check(dev: &mut dyn BlockDevice) -> Result<CheckReport, DsError> {
        let l = Datastore::load(dev, true)?;
        let mut ds = Datastore::empty(l.sb.clone(), l.slot)?;
        ds.inodes = l.inodes;
        ds.rebuild_indexes();
        Ok(CheckReport {
            label: l.sb.label.clone(),
            seq: l.sb.seq,
            slot: l.slot,
            other_slot: l.other_slot.map(|s| s.seq),
            files: ds.inodes.values().filter(|i| i.kind == InodeKind::File).count(),
            directories: ds.inodes.values().filter(|i| i.kind == InodeKind::Directory).count(),
            usage: ds.usage(),
            problems: l.problems,
        })
    }

    fn rebuild_indexes(&mut self) {
        self.names = self.inodes.iter().map(|(&id, n)| ((n.parent, n.name.clone()), id)).collect();
        self.data_current.reset();
        for node in self.inodes.values() {
            for (&_, &(db, c)) in &node.extents {
                (db..db + c as u64).for_each(|b| self.data_current.set(b));
            }
        }
        self.now_committed();
    }

    /// After a mount or a commit: the current state is the committed one.
    fn now_committed(&mut self) {
        self.meta_committed.reset();
        for &n in &self.table_nodes {
            self.meta_committed.set(n as u64);
        }
        for node in self.inodes.values() {
            for &n in node.map.iter().flat_map(|m| &m.nodes) {
                self.meta_committed.set(n as u64);
            }
        }
        self.data_committed.copy_from(&self.data_current);
        self.reserved = self.data_current.ones;
    }

    /// The datastore's name.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The datastore's identity, made when it was created.
    pub fn uuid(&self) -> [u8; 16] {
        self.sb.uuid
    }

    /// File block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.sb.block_size
    }

    /// The sequence number of the committed state.
    pub fn generation(&self) -> u64 {
        self.sb.seq
    }

    /// Whether changes wait for [`Datastore::commit`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Capacity, free and provisioned bytes.
    pub fn usage(&self) -> Usage {
        let bs = self.sb.block_size as u64;
        Usage {
            capacity: self.sb.data_blocks * bs,
            free: self.sb.data_blocks.saturating_sub(self.reserved) * bs,
            provisioned: self.inodes.values().fold(0u64, |sum, i| sum.saturating_add(i.size)),
        }
    }

    /// Renames the datastore (committed by the next [`Datastore::commit`]).
    pub fn set_label(&mut self, label: &str) -> Result<(), DsError> {
        self.writable()?;
        check_label(label).map_err(DsError::BadName)?;
        self.label = String::from(label);
        self.dirty = true;
        Ok(())
    }

    fn writable(&self) -> Result<(), DsError> {
        match &self.failed {
            Some(m) => Err(DsError::Failed(m.clone())),
            None => Ok(()),
        }
    }

    /// Resolves a path to its inode (`ROOT` for the empty path).
    fn resolve(&self, path: &str) -> Result<u64, DsError> {
        let mut at = ROOT;
        for c in components(path)? {
            if at != ROOT && self.inodes.get(&at).is_some_and(|n| n.kind != InodeKind::Directory) {
                return Err(DsError::NotADirectory(path.to_string()));
            }
            at = *self.names.get(&(at, c.to_string())).ok_or_else(|| DsError::NotFound(path.to_string()))?;
        }
        Ok(at)
    }

    /// The directory that holds `path` and the last name, which must be new or is returned as taken.
    fn parent_of<'p>(&self, path: &'p str) -> Result<(u64, &'p str), DsError> {
        let mut parts = components(path)?;
        let name = parts.pop().ok_or_else(|| DsError::BadName(format!("path {path:?}: names no file")))?;
        let mut at = ROOT;
        for c in parts {
            at = *self.names.get(&(at, c.to_string())).ok_or_else(|| DsError::NotFound(path.to_string()))?;
            if self.inodes.get(&at).is_some_and(|n| n.kind != InodeKind::Directory) {
                return Err(DsError::NotADirectory(path.to_string()));
            }
        }
        Ok((at, name))
    }

    fn entry(&self, id: u64) -> Option<Entry> {
        let n = self.inodes.get(&id)?;
        Some(Entry {
            id,
            name: n.name.clone(),
            kind: n.kind,
            size: n.size,
            allocated: n.allocated_blocks() * self.sb.block_size as u64,
            mtime: n.mtime,
        })
    }

    /// What `path` is (the root directory is id 1 with an empty name).
    pub fn stat(&self, path: &str) -> Result<Entry, DsError> {
        let id = self.resolve(path)?;
        if id == ROOT {
            return Ok(Entry {
                id,
                name: String::new(),
                kind: InodeKind::Directory,
                size: 0,
                allocated: 0,
                mtime: 0,
            });
        }
        self.entry(id).ok_or_else(|| DsError::NotFound(path.to_string()))
    }

    /// The entries of a directory, by name.
    pub fn list(&self, path: &str) -> Result<Vec<Entry>, DsError> {
        let id = self.resolve(path)?;
        if id != ROOT && self.inodes.get(&id).is_some_and(|n| n.kind != InodeKind::Directory) {
            return Err(DsError::NotADirectory(path.to_string()));
        }
        Ok(self
            .names
            .range((id, String::new())..)
            .take_while(|((p, _), _)| *p == id)
            .filter_map(|(_, &c)| self.entry(c))
            .collect())
    }

    fn insert(&mut self, path: &str, kind: InodeKind, now: u64) -> Result<u64, DsError> {
        self.writable()?;
        let (parent, name) = self.parent_of(path)?;
        if self.names.contains_key(&(parent, name.to_string())) {
            return Err(DsError::Exists(path.to_string()));
        }
        if self.inodes.len() >= format::MAX_INODES {
            return Err(DsError::TooManyFiles);
        }
        let id = self.next_inode;
        self.next_inode =
            id.checked_add(1).ok_or_else(|| DsError::Damaged(String::from("inode numbers are exhausted")))?;
        self.inodes.insert(
            id,
            Inode {
                parent,
                kind,
                name: name.to_string(),
                size: 0,
                mtime: now,
                extents: BTreeMap::new(),
                map: None,
            },
        );
        self.names.insert((parent, name.to_string()), id);
        self.dirty = true;
        Ok(id)
    }

    /// Makes a directory.
    pub fn mkdir(&mut self, path: &str, now: u64) -> Result<u64, DsError> {
        self.insert(path, InodeKind::Directory, now)
    }

    /// Makes every missing directory of `path` (like `mkdir -p`); returns the last one.
    pub fn mkdir_all(&mut self, path: &str, now: u64) -> Result<u64, DsError> {
        self.writable()?;
        let mut id = ROOT;
        for c in components(path)? {
            id = match self.names.get(&(id, c.to_string())) {
                Some(&child) if self.inodes.get(&child).is_some_and(|n| n.kind == InodeKind::Directory) => {
                    child
                }
                Some(_) => return Err(DsError::NotADirectory(path.to_string())),
                None => {
                    if self.inodes.len() >= format::MAX_INODES {
                        return Err(DsError::TooManyFiles);
                    }
                    let child = self.next_inode;
                    self.next_inode = child
                        .checked_add(1)
                        .ok_or_else(|| DsError::Damaged(String::from("inode numbers are exhausted")))?;
                    let node = Inode {
                        parent: id,
                        kind: InodeKind::Directory,
                        name: c.to_string(),
                        size: 0,
                        mtime: now,
                        extents: BTreeMap::new(),
                        map: None,
                    };
                    self.inodes.insert(child, node);
                    self.names.insert((id, c.to_string()), child);
                    self.dirty = true;
                    child
                }
            };
        }
        Ok(id)
    }

    /// Makes an empty file; grow it with [`Datastore::set_len`] (thin) or by writing.
    pub fn create(&mut self, path: &str, now: u64) -> Result<u64, DsError> {
        self.insert(path, InodeKind::File, now)
    }

    /// Holds the file at `path` for `by` (a VM using it): until [`Datastore::release_held`], removing or
    /// moving it is refused ([`DsError::Busy`]). Returns its inode number.
    pub fn hold(&mut self, path: &str, by: &str) -> Result<u64, DsError> {
        let id = self.resolve(path)?;
        if let Some(other) = self.holds.get(&id).filter(|o| o.as_str() != by) {
            return Err(DsError::Busy { path: path.to_string(), by: other.clone() });
        }
        self.holds.insert(id, by.to_string());
        Ok(id)
    }

    /// Forgets every change since the last commit: the committed state is read again from `dev`
    /// (the files held stay held).
    pub fn reload(&mut self, dev: &mut dyn BlockDevice) -> Result<(), DsError> {
        let mut fresh = Datastore::mount(dev)?;
        let holds = core::mem::take(&mut self.holds);
        fresh.holds = holds.into_iter().filter(|(id, _)| fresh.inodes.contains_key(id)).collect();
        *self = fresh;
        Ok(())
    }

    /// Lets go of every file `by` holds.
    pub fn release_held(&mut self, by: &str) {
        self.holds.retain(|_, b| b != by);
    }

    /// Who holds the file at `path`, if anyone.
    pub fn holder(&self, path: &str) -> Option<&str> {
        self.resolve(path).ok().and_then(|id| self.holds.get(&id)).map(String::as_str)
    }

    /// Who holds files here (each once).
    pub fn holders(&self) -> Vec<String> {
        let mut v: Vec<String> = self.holds.values().cloned().collect();
        v.sort();
        v.dedup();
        v
    }

    fn not_held(&self, id: u64, path: &str) -> Result<(), DsError> {
        match self.holds.get(&id) {
            Some(by) => Err(DsError::Busy { path: path.to_string(), by: by.clone() }),
            None => Ok(()),
        }
    }

    /// Removes a file (its blocks become free after the next commit) or an empty directory.
    pub fn remove(&mut self, path: &str) -> Result<(), DsError> {
        self.writable()?;
        let id = self.resolve(path)?;
        self.not_held(id, path)?;
        if id == ROOT {
            return Err(DsError::BadName(String::from("the root directory cannot be removed")));
        }
        if self.names.range((id, String::new())..).next().is_some_and(|((p, _), _)| *p == id) {
            return Err(DsError::NotEmpty(path.to_string()));
        }
        let Some(node) = self.inodes.remove(&id) else { return Err(DsError::NotFound(path.to_string())) };
        self.names.remove(&(node.parent, node.name.clone()));
        for (&_, &(db, c)) in &node.extents {
            (db..db + c as u64).for_each(|b| self.release(b));
        }
        self.dirty = true;
        Ok(())
    }

    /// Moves or renames a file or directory; the target must not exist.
    pub fn rename(&mut self, from: &str, to: &str, now: u64) -> Result<(), DsError> {
        self.writable()?;
        let id = self.resolve(from)?;
        if id == ROOT {
            return Err(DsError::BadName(String::from("the root directory cannot be moved")));
        }
        self.not_held(id, from)?;
        let (parent, name) = self.parent_of(to)?;
        if self.names.contains_key(&(parent, name.to_string())) {
            return Err(DsError::Exists(to.to_string()));
        }
        // A directory may not move into itself or below itself.
        let mut at = parent;
        while at != ROOT {
            if at == id {
                return Err(DsError::BadName(format!("{to:?} is inside {from:?}")));
            }
            at = self.inodes.get(&at).map_or(ROOT, |n| n.parent);
        }
        let Some(node) = self.inodes.get_mut(&id) else { return Err(DsError::NotFound(from.to_string())) };
        let old = (node.parent, core::mem::replace(&mut node.name, name.to_string()));
        node.parent = parent;
        node.mtime = now;
        self.names.remove(&old);
        self.names.insert((parent, name.to_string()), id);
        self.dirty = true;
        Ok(())
    }

    fn file(&self, id: u64) -> Result<&Inode, DsError> {
        match self.inodes.get(&id) {
            Some(n) if n.kind == InodeKind::File => Ok(n),
            Some(_) => Err(DsError::IsADirectory(format!("inode {id}"))),
            None => Err(DsError::NotFound(format!("inode {id}"))),
        }
    }

    /// Reads from a file at `offset`; returns the bytes read (fewer at the end of the file). Ranges
    /// never written read as zeros.
    pub fn read(
        &self,
        dev: &mut dyn BlockDevice,
        id: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, DsError> {
        let node = self.file(id)?;
        let n = node.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let bs = self.sb.block_size as u64;
        let mut done = 0usize;
        while done < n {
            let pos = offset + done as u64;
            let within = pos % bs;
            let len = ((bs - within) as usize).min(n - done);
            let part = &mut buf[done..done + len];
            match node.lookup(pos / bs) {
                Some(db) => read_bytes(dev, self.sb.data_start + db * bs + within, part)?,
                None => part.fill(0),
            }
            done += len;
        }
        Ok(n)
    }

    /// Writes `data` into a file at `offset`, growing it if the write ends past its size. Blocks not
    /// yet allocated are allocated (the rest of such a block is zeroed on the device); the write is
    /// refused before anything is written when the free space cannot hold them. A block joins the
    /// file only once its contents are on the device, and the size grows with each piece written, so
    /// a write that fails part way leaves the file consistent (with the pieces before the failure).
    pub fn write(
        &mut self,
        dev: &mut dyn BlockDevice,
        id: u64,
        offset: u64,
        data: &[u8],
        now: u64,
    ) -> Result<(), DsError> {
        self.writable()?;
        let node = self.file(id)?;
        if data.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(data.len() as u64).filter(|&e| e <= MAX_FILE_BYTES);
        let Some(end) = end else { return Err(DsError::TooLarge(offset.saturating_add(data.len() as u64))) };
        let bs = self.sb.block_size as u64;
        let needed = (offset / bs..end.div_ceil(bs)).filter(|&fb| node.lookup(fb).is_none()).count() as u64;
        let free = self.sb.data_blocks.saturating_sub(self.reserved);
        if needed > free {
            return Err(DsError::NoSpace { needed_bytes: needed * bs, free_bytes: free * bs });
        }
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let fb = pos / bs;
            let within = pos % bs;
            let len = ((bs - within) as usize).min(data.len() - done);
            let piece = &data[done..done + len];
            match self.file(id)?.lookup(fb) {
                Some(db) => write_bytes(dev, self.sb.data_start + db * bs + within, Some(piece), len)?,
                None => {
                    let db = self.pick_block(id, fb)?;
                    let base = self.sb.data_start + db * bs;
                    // Zero what this write does not cover, so the block reads as zeros there.
                    if within > 0 {
                        write_bytes(dev, base, None, within as usize)?;
                    }
                    write_bytes(dev, base + within, Some(piece), len)?;
                    let tail = within + len as u64;
                    if tail < bs {
                        write_bytes(dev, base + tail, None, (bs - tail) as usize)?;
                    }
                    self.map_block(id, fb, db)?;
                }
            }
            done += len;
            let node = self.inodes.get_mut(&id).ok_or_else(|| DsError::NotFound(format!("inode {id}")))?;
            node.size = node.size.max(pos + len as u64);
            node.mtime = now;
            self.dirty = true;
        }
        Ok(())
    }

    /// A free data block for file block `fb` of `id` (the one after the previous block when free).
    fn pick_block(&self, id: u64, fb: u64) -> Result<u64, DsError> {
        let prev = fb.checked_sub(1).and_then(|p| self.inodes.get(&id).and_then(|n| n.lookup(p)));
        let wanted = prev.map(|p| p + 1).filter(|&d| d < self.sb.data_blocks);
        match wanted.filter(|&d| !self.data_current.get(d) && !self.data_committed.get(d)) {
            Some(d) => Ok(d),
            None => self
                .data_current
                .find_free(Some(&self.data_committed), self.cursor)
                .ok_or(DsError::NoSpace { needed_bytes: self.sb.block_size as u64, free_bytes: 0 }),
        }
    }

    /// Makes data block `db` (free, its contents written) file block `fb` of `id`.
    fn map_block(&mut self, id: u64, fb: u64, db: u64) -> Result<(), DsError> {
        let node = self.inodes.get_mut(&id).ok_or_else(|| DsError::NotFound(format!("inode {id}")))?;
        self.data_current.set(db);
        self.reserved += 1;
        self.cursor = db + 1;
        // Merge with the extent before and after where both file and data blocks are contiguous.
        let mut start = fb;
        let mut count = 1u32;
        let mut first_db = db;
        if let Some((&s, &(d, c))) = node.extents.range(..fb).next_back() {
            if s + c as u64 == fb && d + c as u64 == db && c < u32::MAX {
                node.extents.remove(&s);
                start = s;
                first_db = d;
                count = c + 1;
            }
        }
        if let Some(&(d, c)) = node.extents.get(&(fb + 1)) {
            if db + 1 == d && (count as u64 + c as u64) <= u32::MAX as u64 {
                node.extents.remove(&(fb + 1));
                count += c;
            }
        }
        node.extents.insert(start, (first_db, count));
        node.map = None;
        Ok(())
    }

    /// Returns data block `b` to the free pool (after the next commit, when the committed state
    /// still references it).
    fn release(&mut self, b: u64) {
        if self.data_current.get(b) {
            self.data_current.clear(b);
            if !self.data_committed.get(b) {
                self.reserved -= 1;
            }
        }
    }

    /// Sets a file's size. Growing allocates nothing (thin); shrinking frees the blocks past the new
    /// end (after the next commit) and zeroes the rest of the last block on the device.
    pub fn set_len(
        &mut self,
        dev: &mut dyn BlockDevice,
        id: u64,
        size: u64,
        now: u64,
    ) -> Result<(), DsError> {
        self.writable()?;
        if size > MAX_FILE_BYTES {
            return Err(DsError::TooLarge(size));
        }
        if let Some(by) = self.holds.get(&id) {
            return Err(DsError::Busy { path: format!("inode {id}"), by: by.clone() });
        }
        let bs = self.sb.block_size as u64;
        let old = self.file(id)?.size;
        if size < old {
            let keep = size.div_ceil(bs);
            if !size.is_multiple_of(bs) {
                if let Some(db) = self.file(id)?.lookup(size / bs) {
                    let within = size % bs;
                    write_bytes(dev, self.sb.data_start + db * bs + within, None, (bs - within) as usize)?;
                }
            }
            let node = self.inodes.get_mut(&id).ok_or_else(|| DsError::NotFound(format!("inode {id}")))?;
            let cut: Vec<(u64, (u64, u32))> = node
                .extents
                .range(..)
                .map(|(&s, &v)| (s, v))
                .filter(|&(s, (_, c))| s + c as u64 > keep)
                .collect();
            let mut freed = Vec::new();
            for (s, (db, c)) in cut {
                node.extents.remove(&s);
                let kept = keep.saturating_sub(s).min(c as u64);
                if kept > 0 {
                    node.extents.insert(s, (db, kept as u32));
                }
                freed.push(db + kept..db + c as u64);
                node.map = None;
            }
            freed.into_iter().flatten().for_each(|b| self.release(b));
        }
        let node = self.inodes.get_mut(&id).ok_or_else(|| DsError::NotFound(format!("inode {id}")))?;
        node.size = size;
        node.mtime = now;
        self.dirty = true;
        Ok(())
    }

    /// Makes every change since the last commit durable, atomically: changed extent maps and the inode
    /// table go into free metadata nodes, then (after a flush) the superblock into the other slot,
    /// then a flush. A failure leaves the committed state as it was on the device and this handle
    /// read-only ([`DsError::Failed`]) until the datastore is mounted again.
    pub fn commit(&mut self, dev: &mut dyn BlockDevice) -> Result<(), DsError> {
        self.writable()?;
        if !self.dirty {
            return Ok(());
        }
        let Some(seq) = self.sb.seq.checked_add(1) else {
            return Err(DsError::Damaged(String::from("the commit sequence number is exhausted")));
        };
        // Serialise first, so a full metadata area is found before anything is written.
        let mut streams: Vec<(NodeKind, u64, Vec<u8>)> = Vec::new();
        for (&id, node) in &self.inodes {
            if node.map.is_none() && !node.extents.is_empty() {
                let mut bytes = Vec::with_capacity(node.extents.len() * EXTENT_LEN);
                for (&fb, &(db, c)) in &node.extents {
                    Extent { file_block: fb, data_block: db, count: c }.encode(&mut bytes);
                }
                streams.push((NodeKind::Extents, id, bytes));
            }
        }
        let mut table = Vec::new();
        let mut records = 0u32;
        let needed: usize =
            streams.iter().map(|(_, _, b)| b.len().div_ceil(NODE_PAYLOAD).max(1)).sum::<usize>()
                + self.table_len_estimate().div_ceil(NODE_PAYLOAD).max(1);
        let free = self.sb.meta_nodes as usize - self.meta_committed.ones as usize;
        if needed > free {
            return Err(DsError::MetadataFull { needed, free });
        }
        let mut taken = self.meta_committed.clone();
        let mut cursor = 0u64;
        let mut chains: BTreeMap<u64, MapChain> = BTreeMap::new();
        let result = (|| -> Result<(Vec<u32>, Superblock), DsError> {
            for (kind, owner, bytes) in &streams {
                let nodes = self.write_chain(dev, &mut taken, &mut cursor, *kind, *owner, seq, bytes)?;
                chains.insert(*owner, MapChain { first: nodes[0], seq, nodes });
            }
            for (&id, node) in &self.inodes {
                let map = chains.get(&id).or(node.map.as_ref());
                InodeRecord {
                    id,
                    parent: node.parent,
                    kind: node.kind,
                    size: node.size,
                    mtime: node.mtime,
                    extents: node.extents.len() as u32,
                    map_node: map.map_or(NO_NODE, |m| m.first),
                    map_seq: map.map_or(0, |m| m.seq),
                    name: node.name.clone(),
                }
                .encode(&mut table);
                records += 1;
            }
            let table_nodes =
                self.write_chain(dev, &mut taken, &mut cursor, NodeKind::Table, 0, seq, &table)?;
            dev.flush()?;
            let sb = Superblock {
                seq,
                table_node: table_nodes[0],
                table_records: records,
                table_len: table.len() as u64,
                next_inode: self.next_inode,
                label: self.label.clone(),
                ..self.sb.clone()
            };
            let slot = 1 - self.slot;
            write_bytes(dev, (slot * META) as u64, Some(&sb.encode()), META)?;
            dev.flush()?;
            Ok((table_nodes, sb))
        })();
        match result {
            Ok((table_nodes, sb)) => {
                self.slot = 1 - self.slot;
                self.sb = sb;
                self.table_nodes = table_nodes;
                for (id, chain) in chains {
                    if let Some(n) = self.inodes.get_mut(&id) {
                        n.map = Some(chain);
                    }
                }
                self.now_committed();
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                self.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn table_len_estimate(&self) -> usize {
        self.inodes.values().map(|n| format::INODE_FIXED + n.name.len()).sum::<usize>()
    }

    /// Writes `bytes` as a chain into nodes free in `taken`; returns the nodes (at least one).
    #[allow(clippy::too_many_arguments)]
    fn write_chain(
        &self,
        dev: &mut dyn BlockDevice,
        taken: &mut Bitmap,
        cursor: &mut u64,
        kind: NodeKind,
        owner: u64,
        seq: u64,
        bytes: &[u8],
    ) -> Result<Vec<u32>, DsError> {
        let count = bytes.len().div_ceil(NODE_PAYLOAD).max(1);
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            let n = taken.find_free(None, *cursor).ok_or(DsError::MetadataFull { needed: count, free: 0 })?;
            taken.set(n);
            *cursor = n + 1;
            nodes.push(n as u32);
        }
        for (i, &n) in nodes.iter().enumerate() {
            let payload =
                bytes.get(i * NODE_PAYLOAD..((i + 1) * NODE_PAYLOAD).min(bytes.len())).unwrap_or(&[]);
            let h = NodeHeader {
                kind,
                seq,
                owner,
                index: i as u32,
                len: payload.len() as u16,
                next: nodes.get(i + 1).copied().unwrap_or(NO_NODE),
            };
            write_bytes(dev, Superblock::node_offset(n), Some(&encode_node(&h, payload)), META)?;
        }
        Ok(nodes)
    }
}

#[cfg(test)]
mod tests;
