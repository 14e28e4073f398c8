//! A FAT32 volume writer for the ESP (Microsoft "FAT: General Overview of On-Disk Format" 1.03;
//! UEFI 2.10 13.3 requires FAT32 for system partitions on fixed media).
//!
//! It formats a partition and writes a fixed set of files in one pass: boot sector and backup (sector 6),
//! FSInfo and backup (sector 7), two FATs, directories and file data in contiguous clusters.
//! Names must be 8.3; lower-case names are kept with the Windows NT case flags (byte 12 of the entry),
//! which Linux, mtools and UEFI firmware honour, so no long-name entries are written.
//! Timestamps are the DOS epoch, so the same files give the same bytes.

use crate::block::{BlockDevice, IoError};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

const SECTOR: usize = 512;
const RESERVED_SECTORS: u32 = 32;
const NUM_FATS: u32 = 2;
const ROOT_CLUSTER: u32 = 2;
/// FAT32 needs at least this many clusters (fewer would make readers treat the volume as FAT16).
pub const MIN_CLUSTERS: u32 = 65525;
/// DOS date 1980-01-01.
const DOS_DATE: u16 = (1 << 5) | 1;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_VOLUME_ID: u8 = 0x08;
const END_OF_CHAIN: u32 = 0x0fff_ffff;

/// A file to place on the volume; `path` uses `/` separators, e.g. `EFI/BOOT/BOOTX64.EFI`.
pub struct FatFile<'a> {
    pub path: &'a str,
    pub data: &'a [u8],
}

/// Why a volume could not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FatError {
    /// Too few sectors for a FAT32 volume with 512-byte clusters.
    TooSmall { sectors: u64 },
    /// Device block size is not 512.
    BlockSize(u32),
    /// A path component is not a valid 8.3 name.
    BadName(String),
    /// A path is used both as a file and as a directory, or given twice.
    Conflict(String),
    /// The files do not fit.
    Full,
    /// The device failed.
    Io(IoError),
}

impl fmt::Display for FatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FatError::TooSmall { sectors } => write!(
                f,
                "{sectors} sectors are too few for FAT32 (at least {MIN_CLUSTERS} clusters are needed)"
            ),
            FatError::BlockSize(b) => write!(f, "FAT32 writer needs 512-byte blocks, not {b}"),
            FatError::BadName(n) => write!(f, "{n:?} is not an 8.3 file name"),
            FatError::Conflict(p) => write!(f, "path {p:?} is given twice or is both a file and a directory"),
            FatError::Full => write!(f, "the files do not fit on the volume"),
            FatError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<IoError> for FatError {
    fn from(e: IoError) -> Self {
        FatError::Io(e)
    }
}

/// An 8.3 short name in directory-entry form plus its NT case flags.
fn short_name(name: &str) -> Result<([u8; 11], u8), FatError> {
    let bad = || FatError::BadName(String::from(name));
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) => (b, e),
        None => (name, ""),
    };
    if base.is_empty() || base.len() > 8 || ext.len() > 3 {
        return Err(bad());
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || "!#$%&'()-@^_`{}~".contains(c);
    if !base.chars().chain(ext.chars()).all(valid) {
        return Err(bad());
    }
    let case = |part: &str, flag: u8| -> Result<u8, FatError> {
        let lower = part.chars().any(|c| c.is_ascii_lowercase());
        let upper = part.chars().any(|c| c.is_ascii_uppercase());
        match (lower, upper) {
            (true, true) => Err(bad()), // mixed case needs a long name
            (true, false) => Ok(flag),
            _ => Ok(0),
        }
    };
    let flags = case(base, 0x08)? | case(ext, 0x10)?;
    let mut out = [b' '; 11];
    for (i, c) in base.bytes().enumerate() {
        out[i] = c.to_ascii_uppercase();
    }
    for (i, c) in ext.bytes().enumerate() {
        out[8 + i] = c.to_ascii_uppercase();
    }
    Ok((out, flags))
}

struct Node<'a> {
    name: [u8; 11],
    case_flags: u8,
    /// `None` for a directory.
    data: Option<&'a [u8]>,
    children: Vec<usize>,
    parent: usize,
    first_cluster: u32,
    clusters: u32,
}

fn dir_entry(name: &[u8; 11], attr: u8, case_flags: u8, cluster: u32, size: u32) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[12] = case_flags;
    e[16..18].copy_from_slice(&DOS_DATE.to_le_bytes()); // creation date
    e[18..20].copy_from_slice(&DOS_DATE.to_le_bytes()); // last access date
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[24..26].copy_from_slice(&DOS_DATE.to_le_bytes()); // write date
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// Geometry of a volume of `sectors` sectors: (FAT size in sectors, number of data clusters).
pub fn geometry(sectors: u64) -> Result<(u32, u32), FatError> {
    let too_small = FatError::TooSmall { sectors };
    let sectors = u32::try_from(sectors).map_err(|_| FatError::Full)?;
    let avail = sectors.checked_sub(RESERVED_SECTORS).ok_or(too_small.clone())?;
    // Each data sector needs 4 bytes in each FAT: solve for the FAT size, rounding up.
    let mut fat = 1u32;
    loop {
        let data = avail.checked_sub(NUM_FATS * fat).ok_or(too_small.clone())?;
        if (data as u64 + 2) * 4 <= fat as u64 * SECTOR as u64 {
            if data < MIN_CLUSTERS {
                return Err(too_small);
            }
            return Ok((fat, data));
        }
        fat += 1;
    }
}

/// Formats `[first_lba, first_lba + sectors)` of `dev` as FAT32 holding `files`.
pub fn write_volume<D: BlockDevice>(
    dev: &mut D,
    first_lba: u64,
    sectors: u64,
    label: &[u8; 11],
    volume_id: u32,
    files: &[FatFile<'_>],
) -> Result<(), FatError> {
    if dev.block_size() as usize != SECTOR {
        return Err(FatError::BlockSize(dev.block_size()));
    }
    let (fat_sectors, data_clusters) = geometry(sectors)?;

    // Build the directory tree.
    let mut nodes: Vec<Node<'_>> = vec![Node {
        name: [b' '; 11],
        case_flags: 0,
        data: None,
        children: Vec::new(),
        parent: 0,
        first_cluster: 0,
        clusters: 0,
    }];
    for f in files {
        let parts: Vec<&str> = f.path.split('/').filter(|p| !p.is_empty()).collect();
        let mut dir = 0usize;
        for (i, part) in parts.iter().enumerate() {
            let (name, case_flags) = short_name(part)?;
            let last = i + 1 == parts.len();
            let existing = nodes[dir].children.iter().copied().find(|c| nodes[*c].name == name);
            match existing {
                Some(c) if !last && nodes[c].data.is_none() => dir = c,
                Some(_) => return Err(FatError::Conflict(String::from(f.path))),
                None => {
                    let idx = nodes.len();
                    nodes.push(Node {
                        name,
                        case_flags,
                        data: if last { Some(f.data) } else { None },
                        children: Vec::new(),
                        parent: dir,
                        first_cluster: 0,
                        clusters: 0,
                    });
                    nodes[dir].children.push(idx);
                    dir = idx;
                }
            }
        }
    }

    // Assign clusters in order: the root first (cluster 2), then every other node.
    let per_cluster = SECTOR as u64;
    let mut next = ROOT_CLUSTER;
    for (i, n) in nodes.iter_mut().enumerate() {
        let bytes = match n.data {
            Some(d) => d.len() as u64,
            // '.' and '..' (not in the root), the volume label (root only), the children, an end marker.
            None => 32 * (n.children.len() as u64 + 2 + 1),
        };
        n.clusters = u32::try_from(bytes.div_ceil(per_cluster)).map_err(|_| FatError::Full)?;
        if i == 0 {
            n.clusters = n.clusters.max(1);
        }
        if n.clusters > 0 {
            n.first_cluster = next;
            next = next.checked_add(n.clusters).ok_or(FatError::Full)?;
        }
    }
    let used = next - ROOT_CLUSTER;
    if used > data_clusters {
        return Err(FatError::Full);
    }

    let write = |dev: &mut D, sector: u64, buf: &[u8]| dev.write_blocks(first_lba + sector, buf);
    let data_start = RESERVED_SECTORS as u64 + NUM_FATS as u64 * fat_sectors as u64;
    let cluster_sector = |c: u32| data_start + (c - ROOT_CLUSTER) as u64;

    // Boot sector (BPB), FSInfo, and their backups.
    let mut boot = [0u8; SECTOR];
    boot[..3].copy_from_slice(&[0xeb, 0x58, 0x90]);
    boot[3..11].copy_from_slice(b"EMBER   ");
    boot[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    boot[13] = 1; // sectors per cluster
    boot[14..16].copy_from_slice(&(RESERVED_SECTORS as u16).to_le_bytes());
    boot[16] = NUM_FATS as u8;
    boot[21] = 0xf8; // fixed media
    boot[24..26].copy_from_slice(&32u16.to_le_bytes()); // sectors per track (nominal)
    boot[26..28].copy_from_slice(&64u16.to_le_bytes()); // heads (nominal)
    boot[28..32].copy_from_slice(&(first_lba as u32).to_le_bytes()); // hidden sectors
    boot[32..36].copy_from_slice(&(sectors as u32).to_le_bytes());
    boot[36..40].copy_from_slice(&fat_sectors.to_le_bytes());
    boot[44..48].copy_from_slice(&ROOT_CLUSTER.to_le_bytes());
    boot[48..50].copy_from_slice(&1u16.to_le_bytes()); // FSInfo sector
    boot[50..52].copy_from_slice(&6u16.to_le_bytes()); // backup boot sector
    boot[64] = 0x80; // drive number
    boot[66] = 0x29; // extended boot signature
    boot[67..71].copy_from_slice(&volume_id.to_le_bytes());
    boot[71..82].copy_from_slice(label);
    boot[82..90].copy_from_slice(b"FAT32   ");
    boot[510] = 0x55;
    boot[511] = 0xaa;
    let mut fsinfo = [0u8; SECTOR];
    fsinfo[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    fsinfo[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    fsinfo[488..492].copy_from_slice(&(data_clusters - used).to_le_bytes());
    fsinfo[492..496].copy_from_slice(&next.to_le_bytes());
    fsinfo[508..512].copy_from_slice(&0xaa55_0000u32.to_le_bytes());
    let mut reserved = vec![0u8; RESERVED_SECTORS as usize * SECTOR];
    for base in [0usize, 6] {
        reserved[base * SECTOR..(base + 1) * SECTOR].copy_from_slice(&boot);
        reserved[(base + 1) * SECTOR..(base + 2) * SECTOR].copy_from_slice(&fsinfo);
        // Sector 2 of each boot record carries only the 0x55AA signature.
        reserved[(base + 2) * SECTOR + 510] = 0x55;
        reserved[(base + 2) * SECTOR + 511] = 0xaa;
    }
    write(dev, 0, &reserved)?;

    // The FAT: media entry, end-of-chain marker, then one chain per node.
    let mut fat = vec![0u8; fat_sectors as usize * SECTOR];
    let mut set = |c: u32, v: u32| fat[c as usize * 4..c as usize * 4 + 4].copy_from_slice(&v.to_le_bytes());
    set(0, 0x0fff_fff8);
    set(1, END_OF_CHAIN);
    for n in &nodes {
        for k in 0..n.clusters {
            let c = n.first_cluster + k;
            set(c, if k + 1 == n.clusters { END_OF_CHAIN } else { c + 1 });
        }
    }
    for copy in 0..NUM_FATS as u64 {
        write(dev, RESERVED_SECTORS as u64 + copy * fat_sectors as u64, &fat)?;
    }

    // Directories and file data.
    for (i, n) in nodes.iter().enumerate() {
        if n.clusters == 0 {
            continue;
        }
        let mut buf = vec![0u8; n.clusters as usize * SECTOR];
        match n.data {
            Some(d) => buf[..d.len()].copy_from_slice(d),
            None => {
                let mut entries: Vec<[u8; 32]> = Vec::new();
                if i == 0 {
                    entries.push(dir_entry(label, ATTR_VOLUME_ID, 0, 0, 0));
                } else {
                    let parent = &nodes[n.parent];
                    // '..' of a directory in the root points at cluster 0 (the spec's rule).
                    let up = if n.parent == 0 { 0 } else { parent.first_cluster };
                    entries.push(dir_entry(b".          ", ATTR_DIRECTORY, 0, n.first_cluster, 0));
                    entries.push(dir_entry(b"..         ", ATTR_DIRECTORY, 0, up, 0));
                }
                for c in &n.children {
                    let ch = &nodes[*c];
                    entries.push(match ch.data {
                        Some(d) => {
                            dir_entry(&ch.name, ATTR_ARCHIVE, ch.case_flags, ch.first_cluster, d.len() as u32)
                        }
                        None => dir_entry(&ch.name, ATTR_DIRECTORY, ch.case_flags, ch.first_cluster, 0),
                    });
                }
                for (k, e) in entries.iter().enumerate() {
                    buf[k * 32..k * 32 + 32].copy_from_slice(e);
                }
            }
        }
        write(dev, cluster_sector(n.first_cluster), &buf)?;
    }
    dev.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDisk;

    fn sample() -> MemDisk {
        let mut d = MemDisk::new(512, 73728 + 100);
        let big: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        write_volume(
            &mut d,
            100,
            73728,
            b"EMBER BOOT ",
            0x1234_5678,
            &[
                FatFile { path: "EFI/BOOT/BOOTX64.EFI", data: &big },
                FatFile { path: "EFI/ember/boot.cfg", data: b"title=Ember\n" },
                FatFile { path: "empty.txt", data: b"" },
            ],
        )
        .unwrap();
        d
    }

    #[test]
    fn geometry_meets_fat32_minimum() {
        let (fat, clusters) = geometry(73728).unwrap();
        assert!(clusters >= MIN_CLUSTERS);
        assert!((clusters as u64 + 2) * 4 <= fat as u64 * 512);
        assert!((clusters as u64 + 2) * 4 > (fat as u64 - 1) * 512, "FAT not larger than needed");
        assert_eq!(geometry(40000), Err(FatError::TooSmall { sectors: 40000 }));
    }

    #[test]
    fn names() {
        assert_eq!(short_name("BOOTX64.EFI").unwrap(), (*b"BOOTX64 EFI", 0));
        assert_eq!(short_name("ember").unwrap(), (*b"EMBER      ", 0x08));
        assert_eq!(short_name("boot.cfg").unwrap(), (*b"BOOT    CFG", 0x18));
        for bad in ["toolongname.txt", "a.long", "Mixed", "sp ace", "", ".x", "a+b"] {
            assert!(short_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn boot_sector_fields() {
        let d = sample();
        let b = &d.bytes()[100 * 512..101 * 512];
        assert_eq!(&b[82..90], b"FAT32   ");
        assert_eq!(u16::from_le_bytes([b[11], b[12]]), 512);
        assert_eq!(u32::from_le_bytes(b[44..48].try_into().unwrap()), 2);
        assert_eq!(
            u32::from_le_bytes(b[28..32].try_into().unwrap()),
            100,
            "hidden sectors = partition start"
        );
        assert_eq!(&b[510..], &[0x55, 0xaa]);
        let backup = &d.bytes()[106 * 512..107 * 512];
        assert_eq!(b, backup);
    }

    /// Reads the volume back by walking it the way any FAT reader does.
    #[test]
    fn tree_reads_back() {
        let d = sample();
        let v = &d.bytes()[100 * 512..];
        let fat_sz = u32::from_le_bytes(v[36..40].try_into().unwrap()) as usize;
        let data = (32 + 2 * fat_sz) * 512;
        let fat = |c: u32| u32::from_le_bytes(v[32 * 512 + c as usize * 4..][..4].try_into().unwrap());
        let cluster = |c: u32| &v[data + (c as usize - 2) * 512..][..512];
        let find = |dir: u32, name: &[u8; 11]| -> (u32, u32, u8, u8) {
            let mut c = dir;
            loop {
                for e in cluster(c).chunks(32) {
                    if &e[..11] == name {
                        let cl = u16::from_le_bytes([e[26], e[27]]) as u32
                            | (u16::from_le_bytes([e[20], e[21]]) as u32) << 16;
                        return (cl, u32::from_le_bytes(e[28..32].try_into().unwrap()), e[11], e[12]);
                    }
                }
                c = fat(c);
                assert!(c < 0x0fff_fff8, "{name:?} not found");
            }
        };
        let (efi, _, attr, _) = find(2, b"EFI        ");
        assert_eq!(attr, ATTR_DIRECTORY);
        assert_eq!(find(efi, b"..         ").0, 0, "'..' of a root child is cluster 0");
        assert_eq!(find(efi, b".          ").0, efi);
        let (ember, _, _, case) = find(efi, b"EMBER      ");
        assert_eq!(case, 0x08);
        let (cfg, size, _, case) = find(ember, b"BOOT    CFG");
        assert_eq!((size, case), (12, 0x18));
        assert_eq!(&cluster(cfg)[..12], b"title=Ember\n");
        let (boot, _, _, _) = find(efi, b"BOOT       ");
        let (loader, size, _, _) = find(boot, b"BOOTX64 EFI");
        assert_eq!(size, 5000);
        // Follow the chain and compare the contents.
        let mut got = Vec::new();
        let mut c = loader;
        while c < 0x0fff_fff8 {
            got.extend_from_slice(cluster(c));
            c = fat(c);
        }
        let want: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        assert_eq!(&got[..5000], &want[..]);
        assert_eq!(got.len(), 5000usize.div_ceil(512) * 512);
        let (empty, size, _, _) = find(2, b"EMPTY   TXT");
        assert_eq!((empty, size), (0, 0));
        assert_eq!(&cluster(2)[..11], b"EMBER BOOT ", "volume label first in the root");
    }

    #[test]
    fn conflicts_and_bad_input() {
        let mut d = MemDisk::new(512, 80000);
        let e = write_volume(
            &mut d,
            0,
            80000,
            b"X          ",
            1,
            &[FatFile { path: "a/b", data: b"1" }, FatFile { path: "a", data: b"2" }],
        );
        assert_eq!(e, Err(FatError::Conflict("a".into())));
        let e = write_volume(&mut d, 0, 80000, b"X          ", 1, &[FatFile { path: "Bad Name", data: b"" }]);
        assert_eq!(e, Err(FatError::BadName("Bad Name".into())));
        let big = vec![1u8; 80000 * 512];
        let e = write_volume(&mut d, 0, 80000, b"X          ", 1, &[FatFile { path: "big", data: &big }]);
        assert_eq!(e, Err(FatError::Full));
        let mut d4k = MemDisk::new(4096, 100);
        assert_eq!(write_volume(&mut d4k, 0, 80000, b"X          ", 1, &[]), Err(FatError::BlockSize(4096)));
    }
}
