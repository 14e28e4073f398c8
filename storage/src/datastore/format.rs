//! The datastore's on-disk structures, version 1 (`docs/datastore-format.md`): the superblock, the
//! metadata node and the records carried in node chains. Everything here is pure encoding and
//! decoding; every decoder checks lengths, magic numbers and CRCs and names what is wrong.

use alloc::string::String;
use alloc::vec::Vec;

/// Bytes in a superblock slot and in a metadata node: every metadata read and write is one such unit,
/// so devices with 512- and 4096-byte sectors are both served.
pub const META: usize = 4096;
/// Identifies a superblock.
pub const SUPER_MAGIC: [u8; 8] = *b"EMBERDS1";
/// The format version this code reads and writes.
pub const VERSION: u32 = 1;
/// Identifies a metadata node.
pub const NODE_MAGIC: [u8; 4] = *b"EDSN";
/// Bytes of a node before its payload.
pub const NODE_HEADER: usize = 40;
/// Payload bytes a node carries.
pub const NODE_PAYLOAD: usize = META - NODE_HEADER;
/// "No node" in a chain link.
pub const NO_NODE: u32 = u32::MAX;
/// Longest datastore label, in bytes of UTF-8.
pub const MAX_LABEL: usize = 80;
/// Longest file or directory name, in bytes of UTF-8.
pub const MAX_NAME: usize = 255;
/// The root directory's inode number.
pub const ROOT: u64 = 1;
/// Smallest and largest file block size.
pub const MIN_BLOCK: u32 = 64 * 1024;
pub const MAX_BLOCK: u32 = 64 * 1024 * 1024;
/// The most metadata nodes (1 GiB of metadata).
pub const MAX_META_NODES: u32 = 1 << 18;
/// The most file blocks (64 TiB at 1 MiB): the allocation maps take one bit per block, twice, in
/// the appliance's memory.
pub const MAX_DATA_BLOCKS: u64 = 1 << 26;
/// The most files and directories in one datastore: the appliance keeps the whole tree in memory
/// (a few hundred bytes each, in a 16 MiB heap shared with everything else).
pub const MAX_INODES: usize = 4096;
/// Bytes of an extent record.
pub const EXTENT_LEN: usize = 20;
/// Bytes of an inode record before its name.
pub const INODE_FIXED: usize = 56;

pub(crate) const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// What a chain of nodes holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// The inode table (owner 0).
    Table = 1,
    /// One file's extent map (owner: the file's inode number).
    Extents = 2,
}

/// The superblock: the root of one committed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Commit sequence number; of the two valid slots the higher is current.
    pub seq: u64,
    pub uuid: [u8; 16],
    /// File block size in bytes (allocation unit of file data).
    pub block_size: u32,
    /// Metadata nodes in the metadata area.
    pub meta_nodes: u32,
    /// Bytes from the start of the partition to the first data block.
    pub data_start: u64,
    /// File blocks in the data area.
    pub data_blocks: u64,
    /// Bytes of the partition the datastore was made on.
    pub size_bytes: u64,
    /// First node of the inode table chain.
    pub table_node: u32,
    /// Records in the inode table.
    pub table_records: u32,
    /// Bytes of the inode table stream.
    pub table_len: u64,
    /// The next inode number to hand out.
    pub next_inode: u64,
    /// The datastore's name.
    pub label: String,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Why a superblock slot is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotProblem {
    /// All zeros: never written.
    Blank,
    /// Not a datastore superblock.
    BadMagic,
    /// The CRC does not match: a torn or damaged write.
    BadCrc,
    /// Written by a different format version.
    Version(u32),
    /// A field is out of range; the text says which.
    Field(String),
}

impl core::fmt::Display for SlotProblem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SlotProblem::Blank => f.write_str("blank"),
            SlotProblem::BadMagic => f.write_str("not a datastore superblock"),
            SlotProblem::BadCrc => f.write_str("checksum mismatch (torn or damaged write)"),
            SlotProblem::Version(v) => write!(f, "format version {v} (this build reads version {VERSION})"),
            SlotProblem::Field(s) => f.write_str(s),
        }
    }
}

impl Superblock {
    /// The slot's bytes.
    pub fn encode(&self) -> [u8; META] {
        let mut b = [0u8; META];
        b[0..8].copy_from_slice(&SUPER_MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..40].copy_from_slice(&self.uuid);
        b[40..44].copy_from_slice(&self.block_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.meta_nodes.to_le_bytes());
        b[48..56].copy_from_slice(&self.data_start.to_le_bytes());
        b[56..64].copy_from_slice(&self.data_blocks.to_le_bytes());
        b[64..72].copy_from_slice(&self.size_bytes.to_le_bytes());
        b[72..76].copy_from_slice(&self.table_node.to_le_bytes());
        b[76..80].copy_from_slice(&self.table_records.to_le_bytes());
        b[80..88].copy_from_slice(&self.table_len.to_le_bytes());
        b[88..96].copy_from_slice(&self.next_inode.to_le_bytes());
        let label = self.label.as_bytes();
        let n = label.len().min(MAX_LABEL);
        b[96] = n as u8;
        b[97..97 + n].copy_from_slice(&label[..n]);
        seal_superblock(&mut b);
        b
    }

    /// Decodes and checks one slot; `partition_bytes` is the size of the partition it was read from.
    pub fn decode(b: &[u8; META], partition_bytes: u64) -> Result<Superblock, SlotProblem> {
        if b.iter().all(|&x| x == 0) {
            return Err(SlotProblem::Blank);
        }
        if b[0..8] != SUPER_MAGIC {
            return Err(SlotProblem::BadMagic);
        }
        if CRC32C.checksum(&b[..META - 4]) != le_u32(b, META - 4) {
            return Err(SlotProblem::BadCrc);
        }
        let version = le_u32(b, 8);
        if version != VERSION {
            return Err(SlotProblem::Version(version));
        }
        if le_u32(b, 12) != 0 {
            return Err(SlotProblem::Field(alloc::format!("unknown flags {:#x}", le_u32(b, 12))));
        }
        let label_len = b[96] as usize;
        if label_len > MAX_LABEL {
            return Err(SlotProblem::Field(alloc::format!("label length {label_len} exceeds {MAX_LABEL}")));
        }
        let label = core::str::from_utf8(&b[97..97 + label_len])
            .map_err(|_| SlotProblem::Field(String::from("label is not UTF-8")))?;
        check_label(label).map_err(|m| SlotProblem::Field(alloc::format!("label: {m}")))?;
        let sb = Superblock {
            seq: le_u64(b, 16),
            uuid: b[24..40].try_into().unwrap_or([0; 16]),
            block_size: le_u32(b, 40),
            meta_nodes: le_u32(b, 44),
            data_start: le_u64(b, 48),
            data_blocks: le_u64(b, 56),
            size_bytes: le_u64(b, 64),
            table_node: le_u32(b, 72),
            table_records: le_u32(b, 76),
            table_len: le_u64(b, 80),
            next_inode: le_u64(b, 88),
            label: String::from(label),
        };
        sb.check_geometry(partition_bytes).map_err(SlotProblem::Field)?;
        Ok(sb)
    }

    /// Bytes from the start of the partition to metadata node `n`.
    pub fn node_offset(n: u32) -> u64 {
        2 * META as u64 + n as u64 * META as u64
    }

    /// Checks that the areas fit each other and the partition.
    fn check_geometry(&self, partition_bytes: u64) -> Result<(), String> {
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&bs) {
            return Err(alloc::format!("block size {bs} is not a power of two in {MIN_BLOCK}..={MAX_BLOCK}"));
        }
        if !(16..=MAX_META_NODES).contains(&self.meta_nodes) {
            return Err(alloc::format!(
                "metadata area of {} nodes is outside 16..={MAX_META_NODES}",
                self.meta_nodes
            ));
        }
        let meta_end = Self::node_offset(self.meta_nodes);
        if self.data_start != meta_end.next_multiple_of(bs as u64) {
            return Err(alloc::format!(
                "data area start {} is not the end of the metadata area ({meta_end}) rounded up to a block",
                self.data_start
            ));
        }
        if self.data_blocks > MAX_DATA_BLOCKS {
            return Err(alloc::format!(
                "{} data blocks exceed the limit of {MAX_DATA_BLOCKS}",
                self.data_blocks
            ));
        }
        let data_end = (self.data_blocks)
            .checked_mul(bs as u64)
            .and_then(|d| d.checked_add(self.data_start))
            .ok_or_else(|| String::from("data area size overflows"))?;
        if data_end > self.size_bytes {
            return Err(alloc::format!(
                "data area ends at byte {data_end}, past the datastore's size {}",
                self.size_bytes
            ));
        }
        if self.size_bytes > partition_bytes {
            return Err(alloc::format!(
                "datastore of {} bytes is larger than its partition ({partition_bytes} bytes): truncated?",
                self.size_bytes
            ));
        }
        if self.table_node != NO_NODE && self.table_node >= self.meta_nodes {
            return Err(alloc::format!("inode table node {} is outside the metadata area", self.table_node));
        }
        if self.next_inode <= ROOT {
            return Err(alloc::format!("next inode number {} is not above the root's", self.next_inode));
        }
        Ok(())
    }
}

/// The header of one metadata node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeHeader {
    pub kind: NodeKind,
    /// The commit that wrote the chain.
    pub seq: u64,
    /// 0 for the inode table, the inode number for an extent map.
    pub owner: u64,
    /// Position of the node in its chain.
    pub index: u32,
    /// Payload bytes used.
    pub len: u16,
    /// Next node of the chain.
    pub next: u32,
}

/// Encodes a node: header and payload (at most [`NODE_PAYLOAD`] bytes).
pub fn encode_node(h: &NodeHeader, payload: &[u8]) -> [u8; META] {
    let mut b = [0u8; META];
    b[0..4].copy_from_slice(&NODE_MAGIC);
    b[4] = h.kind as u8;
    b[8..16].copy_from_slice(&h.seq.to_le_bytes());
    b[16..24].copy_from_slice(&h.owner.to_le_bytes());
    b[24..28].copy_from_slice(&h.index.to_le_bytes());
    b[28..30].copy_from_slice(&(payload.len() as u16).to_le_bytes());
    b[32..36].copy_from_slice(&h.next.to_le_bytes());
    b[NODE_HEADER..NODE_HEADER + payload.len()].copy_from_slice(payload);
    seal_node(&mut b);
    b
}

/// Sets a superblock's CRC to match its contents (also how tests and the fuzz target forge fields).
pub fn seal_superblock(b: &mut [u8; META]) {
    let crc = CRC32C.checksum(&b[..META - 4]);
    b[META - 4..].copy_from_slice(&crc.to_le_bytes());
}

/// Sets a node's CRC to match its header and payload.
pub fn seal_node(b: &mut [u8; META]) {
    let crc = node_crc(b);
    b[36..40].copy_from_slice(&crc.to_le_bytes());
}

fn node_crc(b: &[u8; META]) -> u32 {
    let mut d = CRC32C.digest();
    d.update(&b[..36]);
    d.update(&b[NODE_HEADER..]);
    d.finalize()
}

/// Decodes a node and checks its magic, CRC and length; returns the header and the payload.
pub fn decode_node(b: &[u8; META]) -> Result<(NodeHeader, &[u8]), String> {
    if b[0..4] != NODE_MAGIC {
        return Err(String::from("not a metadata node (bad magic)"));
    }
    if node_crc(b) != le_u32(b, 36) {
        return Err(String::from("checksum mismatch"));
    }
    let kind = match b[4] {
        1 => NodeKind::Table,
        2 => NodeKind::Extents,
        k => return Err(alloc::format!("unknown node kind {k}")),
    };
    let len = u16::from_le_bytes([b[28], b[29]]);
    if len as usize > NODE_PAYLOAD {
        return Err(alloc::format!("payload length {len} exceeds {NODE_PAYLOAD}"));
    }
    let h = NodeHeader {
        kind,
        seq: le_u64(b, 8),
        owner: le_u64(b, 16),
        index: le_u32(b, 24),
        len,
        next: le_u32(b, 32),
    };
    Ok((h, &b[NODE_HEADER..NODE_HEADER + len as usize]))
}

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InodeKind {
    Directory = 1,
    File = 2,
}

/// One inode record of the table (the root directory is implicit and has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeRecord {
    pub id: u64,
    pub parent: u64,
    pub kind: InodeKind,
    /// Logical size in bytes (0 for directories).
    pub size: u64,
    /// Last modification, seconds since 1970.
    pub mtime: u64,
    /// Extents in the file's map (0: no map).
    pub extents: u32,
    /// First node of the extent map chain.
    pub map_node: u32,
    /// The commit that wrote the extent map chain.
    pub map_seq: u64,
    pub name: String,
}

impl InodeRecord {
    /// Appends the record's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.parent.to_le_bytes());
        out.push(self.kind as u8);
        out.push(self.name.len().min(MAX_NAME) as u8);
        out.extend_from_slice(&[0u8; 2]);
        out.extend_from_slice(&self.extents.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime.to_le_bytes());
        out.extend_from_slice(&self.map_node.to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(&self.map_seq.to_le_bytes());
        let name = self.name.as_bytes();
        out.extend_from_slice(&name[..name.len().min(MAX_NAME)]);
    }

    /// Decodes the record at the start of `b`; returns it and its length.
    pub fn decode(b: &[u8]) -> Result<(InodeRecord, usize), String> {
        let fixed = b.get(..INODE_FIXED).ok_or_else(|| String::from("record cut short"))?;
        let kind = match fixed[16] {
            1 => InodeKind::Directory,
            2 => InodeKind::File,
            k => return Err(alloc::format!("unknown inode kind {k}")),
        };
        let name_len = fixed[17] as usize;
        let name =
            b.get(INODE_FIXED..INODE_FIXED + name_len).ok_or_else(|| String::from("name cut short"))?;
        let name = core::str::from_utf8(name).map_err(|_| String::from("name is not UTF-8"))?;
        Ok((
            InodeRecord {
                id: le_u64(fixed, 0),
                parent: le_u64(fixed, 8),
                kind,
                extents: le_u32(fixed, 20),
                size: le_u64(fixed, 24),
                mtime: le_u64(fixed, 32),
                map_node: le_u32(fixed, 40),
                map_seq: le_u64(fixed, 48),
                name: String::from(name),
            },
            INODE_FIXED + name_len,
        ))
    }
}

/// A run of file blocks stored in consecutive data blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First file block (offset / block size).
    pub file_block: u64,
    /// First data block.
    pub data_block: u64,
    /// Blocks in the run (at least 1).
    pub count: u32,
}

impl Extent {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.file_block.to_le_bytes());
        out.extend_from_slice(&self.data_block.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
    }
    pub fn decode(b: &[u8]) -> Option<Extent> {
        let b = b.get(..EXTENT_LEN)?;
        Some(Extent { file_block: le_u64(b, 0), data_block: le_u64(b, 8), count: le_u32(b, 16) })
    }
}

/// Checks a file or directory name: UTF-8 (guaranteed by `&str`), 1..=255 bytes, no `/` or NUL,
/// not `.` or `..`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(String::from("empty name"));
    }
    if name.len() > MAX_NAME {
        return Err(alloc::format!("name of {} bytes is longer than {MAX_NAME}", name.len()));
    }
    if name == "." || name == ".." {
        return Err(alloc::format!("{name:?} is not allowed as a name"));
    }
    if name.contains(['/', '\0']) {
        return Err(String::from("a name may not contain '/' or NUL"));
    }
    Ok(())
}

/// Checks a datastore label: 1..=80 bytes of UTF-8 without control characters, `[` or `]` (the
/// label appears in `[label] path` notation).
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > MAX_LABEL {
        return Err(alloc::format!("a datastore name has 1 to {MAX_LABEL} bytes, not {}", label.len()));
    }
    if label.chars().any(|c| c.is_control() || c == '[' || c == ']' || c == '/') {
        return Err(String::from("a datastore name may not contain control characters, '[', ']' or '/'"));
    }
    if label.trim() != label {
        return Err(String::from("a datastore name may not start or end with spaces"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            seq: 7,
            uuid: [9; 16],
            block_size: 1 << 20,
            meta_nodes: 1024,
            data_start: 5 << 20,
            data_blocks: 56,
            size_bytes: 64 << 20,
            table_node: 3,
            table_records: 2,
            table_len: 100,
            next_inode: 5,
            label: String::from("datastore1"),
        }
    }

    #[test]
    fn superblock_round_trips_and_every_corruption_is_named() {
        let s = sb();
        let b = s.encode();
        assert_eq!(Superblock::decode(&b, 64 << 20), Ok(s.clone()));
        assert_eq!(Superblock::decode(&[0; META], 64 << 20), Err(SlotProblem::Blank));
        let mut bad = b;
        bad[100] ^= 1;
        assert_eq!(Superblock::decode(&bad, 64 << 20), Err(SlotProblem::BadCrc));
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(Superblock::decode(&bad, 64 << 20), Err(SlotProblem::BadMagic));
        // A field out of range with a valid CRC (a hostile image) is named.
        let mut t = s.clone();
        t.block_size = 3 << 20;
        assert!(
            matches!(Superblock::decode(&t.encode(), 64 << 20), Err(SlotProblem::Field(m)) if m.contains("block size"))
        );
        let mut t = s.clone();
        t.data_blocks = MAX_DATA_BLOCKS + 1;
        assert!(
            matches!(Superblock::decode(&t.encode(), 64 << 20), Err(SlotProblem::Field(m)) if m.contains("limit"))
        );
        let mut t = s.clone();
        t.data_start = 4096;
        assert!(
            matches!(Superblock::decode(&t.encode(), 64 << 20), Err(SlotProblem::Field(m)) if m.contains("data area start"))
        );
        let mut t = s.clone();
        t.label = String::from("x] /etc");
        assert!(
            matches!(Superblock::decode(&t.encode(), 64 << 20), Err(SlotProblem::Field(m)) if m.contains("label"))
        );
        let mut t = s.clone();
        t.meta_nodes = u32::MAX;
        assert!(
            matches!(Superblock::decode(&t.encode(), 64 << 20), Err(SlotProblem::Field(m)) if m.contains("metadata area"))
        );
        assert!(
            matches!(Superblock::decode(&b, 32 << 20), Err(SlotProblem::Field(m)) if m.contains("truncated"))
        );
        let mut t = s.clone();
        t.table_node = 5000;
        assert!(
            matches!(Superblock::decode(&t.encode(), 64 << 20), Err(SlotProblem::Field(m)) if m.contains("outside"))
        );
        let mut v = b;
        v[8] = 2;
        seal_superblock(&mut v);
        assert_eq!(Superblock::decode(&v, 64 << 20), Err(SlotProblem::Version(2)));
    }

    #[test]
    fn nodes_round_trip_and_damage_is_detected() {
        let h = NodeHeader { kind: NodeKind::Extents, seq: 3, owner: 9, index: 1, len: 5, next: NO_NODE };
        let b = encode_node(&h, b"hello");
        let (back, payload) = decode_node(&b).unwrap();
        assert_eq!((back, payload), (h, &b"hello"[..]));
        let mut bad = b;
        bad[NODE_HEADER + 2] ^= 0x40;
        assert_eq!(decode_node(&bad).unwrap_err(), "checksum mismatch");
        let mut bad = b;
        bad[29] = 0xff;
        assert!(decode_node(&bad).is_err());
    }

    #[test]
    fn inode_records_round_trip_and_cut_records_are_refused() {
        let r = InodeRecord {
            id: 4,
            parent: 1,
            kind: InodeKind::File,
            size: 64 << 30,
            mtime: 1_800_000_000,
            extents: 2,
            map_node: 17,
            map_seq: 0x1_0000_0005,
            name: String::from("disk é.img"),
        };
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(InodeRecord::decode(&out), Ok((r, out.len())));
        assert!(InodeRecord::decode(&out[..out.len() - 1]).is_err());
        assert!(InodeRecord::decode(&out[..20]).is_err());
    }

    #[test]
    fn names_and_labels_are_checked() {
        assert!(check_name("disk.img").is_ok());
        assert!(check_name(&"é".repeat(127)).is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"x".repeat(256)).is_err());
        assert!(check_label("datastore1").is_ok());
        for bad in ["", " x", "a]b", "a\nb", "a/b"] {
            assert!(check_label(bad).is_err(), "{bad:?}");
        }
    }
}
