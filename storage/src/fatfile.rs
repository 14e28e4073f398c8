//! Where a file's bytes lie on a FAT32 volume (Microsoft "FAT: General Overview of On-Disk Format"
//! 1.03): the boot sector's geometry, the directory path (8.3 short names and long names, compared
//! without regard to case), and the file's cluster chain, as runs of device bytes. Ember writes a
//! VM's virtual disk back to its image file on the ESP through these runs.
//!
//! Everything read from the volume is checked: geometry fields in range, cluster numbers inside the
//! volume, chains without loops (bounded by the cluster count) and long enough for the file's size.
//! A file is never grown, moved or re-allocated: only its existing bytes can be rewritten.

use crate::block::{BlockDevice, IoError};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

const ATTR_LONG_NAME: u8 = 0x0f;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_VOLUME_ID: u8 = 0x08;
/// Most directory entries read for one directory (a 2 MiB directory): a bound for corrupt chains.
const MAX_DIR_ENTRIES: usize = 65536;

/// A run of the file: `len` bytes at byte `offset` of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// A file's size and the device bytes holding it, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileExtents {
    pub size: u64,
    pub extents: Vec<Extent>,
}

impl FileExtents {
    /// The device runs holding file bytes `start..end` (clipped to the file), in file order.
    pub fn map(&self, start: u64, end: u64) -> Vec<Extent> {
        let end = end.min(self.size);
        let mut out = Vec::new();
        let mut file_at = 0u64;
        for e in &self.extents {
            let (a, b) = (file_at, file_at + e.len);
            let (lo, hi) = (start.max(a), end.min(b));
            if lo < hi {
                out.push(Extent { offset: e.offset + (lo - a), len: hi - lo });
            }
            file_at = b;
            if file_at >= end {
                break;
            }
        }
        out
    }
}

/// Why a file's place could not be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FatFileError {
    /// The volume is not FAT32 as this reader understands it; the text says which field.
    NotFat32(String),
    /// A path component is not in its directory.
    NotFound(String),
    /// The path names a directory where a file is wanted, or a file where a directory is.
    WrongKind(String),
    /// A directory or the file's cluster chain is damaged; the text says where.
    Corrupt(String),
    Io(IoError),
}

impl fmt::Display for FatFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FatFileError::NotFat32(w) => write!(f, "not a FAT32 volume: {w}"),
            FatFileError::NotFound(p) => write!(f, "{p} not found"),
            FatFileError::WrongKind(p) => write!(f, "{p} is not what the path says (file or directory)"),
            FatFileError::Corrupt(w) => write!(f, "damaged FAT volume: {w}"),
            FatFileError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<IoError> for FatFileError {
    fn from(e: IoError) -> Self {
        FatFileError::Io(e)
    }
}

struct Volume {
    /// Device byte offset of the volume.
    base: u64,
    sector: u64,
    cluster_bytes: u64,
    /// Device byte offsets of the first FAT and of cluster 2.
    fat: u64,
    data: u64,
    /// Highest valid cluster number.
    max_cluster: u32,
    root: u32,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u64
}

fn le32(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64
}

/// Reads `buf.len()` bytes at device byte `offset` (whole blocks are read around it).
fn read_at(dev: &mut dyn BlockDevice, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
    let bs = dev.block_size() as u64;
    if bs == 0 {
        return Err(IoError::Device(String::from("block size 0")));
    }
    let first = offset / bs;
    let end = offset + buf.len() as u64;
    let blocks = end.div_ceil(bs) - first;
    let mut tmp = vec![0u8; (blocks * bs) as usize];
    dev.read_blocks(first, &mut tmp)?;
    let skip = (offset - first * bs) as usize;
    buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
    Ok(())
}

impl Volume {
    fn open(dev: &mut dyn BlockDevice, volume_lba: u64, volume_blocks: u64) -> Result<Volume, FatFileError> {
        let bad = |w: &str| FatFileError::NotFat32(String::from(w));
        let base = volume_lba * dev.block_size() as u64;
        let mut b = [0u8; 512];
        read_at(dev, base, &mut b)?;
        if b[510] != 0x55 || b[511] != 0xaa {
            return Err(bad("no boot sector signature"));
        }
        let sector = le16(&b, 11);
        if !matches!(sector, 512 | 1024 | 2048 | 4096) {
            return Err(bad("bytes per sector"));
        }
        let spc = b[13] as u64;
        if spc == 0 || !spc.is_power_of_two() || sector * spc > 64 * 1024 {
            return Err(bad("sectors per cluster"));
        }
        let (reserved, fats) = (le16(&b, 14), b[16] as u64);
        let fat_size = le32(&b, 36);
        if reserved == 0 || fats == 0 || le16(&b, 17) != 0 || le16(&b, 22) != 0 || fat_size == 0 {
            return Err(bad("reserved sectors, FAT count or FAT size (FAT12/16?)"));
        }
        let total = if le16(&b, 19) != 0 { le16(&b, 19) } else { le32(&b, 32) };
        // Everything the volume says must lie inside its partition (writes go there).
        if total * sector > volume_blocks.saturating_mul(dev.block_size() as u64) {
            return Err(bad("the volume is larger than its partition"));
        }
        let data_start = reserved + fats * fat_size;
        let data_sectors = total.checked_sub(data_start).ok_or_else(|| bad("FATs larger than the volume"))?;
        let clusters = data_sectors / spc;
        // The FAT must have an entry for each cluster.
        if clusters == 0 || (clusters + 2) * 4 > fat_size * sector {
            return Err(bad("FAT too small for the volume"));
        }
        let root = le32(&b, 44) as u32;
        let max_cluster = (clusters + 1).min(0x0fff_fff6) as u32;
        if root < 2 || root > max_cluster {
            return Err(bad("root directory cluster"));
        }
        Ok(Volume {
            base,
            sector,
            cluster_bytes: sector * spc,
            fat: base + reserved * sector,
            data: base + data_start * sector,
            max_cluster,
            root,
        })
    }

    fn cluster_offset(&self, c: u32) -> u64 {
        self.data + (c as u64 - 2) * self.cluster_bytes
    }

    /// The cluster chain starting at `first`, at most `limit` clusters (`None`: to its end).
    fn chain(
        &self,
        dev: &mut dyn BlockDevice,
        first: u32,
        limit: Option<u64>,
        what: &str,
    ) -> Result<Vec<u32>, FatFileError> {
        let mut out = Vec::new();
        let mut c = first;
        // One FAT sector is read at a time and kept while the chain stays in it.
        let mut cached: Option<(u64, Vec<u8>)> = None;
        loop {
            if c < 2 || c > self.max_cluster {
                return Err(FatFileError::Corrupt(format!("{what}: cluster {c:#x} is outside the volume")));
            }
            out.push(c);
            if limit.is_some_and(|l| out.len() as u64 >= l) {
                return Ok(out);
            }
            if out.len() as u64 > self.max_cluster as u64 {
                return Err(FatFileError::Corrupt(format!("{what}: its cluster chain loops")));
            }
            let at = self.fat + c as u64 * 4;
            let sector_at = at - (at - self.base) % self.sector;
            if cached.as_ref().is_none_or(|(s, _)| *s != sector_at) {
                let mut buf = vec![0u8; self.sector as usize];
                read_at(dev, sector_at, &mut buf)?;
                cached = Some((sector_at, buf));
            }
            let buf = &cached.as_ref().expect("read above").1;
            let next = (le32(buf, (at - sector_at) as usize) & 0x0fff_ffff) as u32;
            if next >= 0x0fff_fff8 {
                return Ok(out);
            }
            c = next;
        }
    }

    /// The entry named `name` in the directory starting at `cluster`: (attributes, first cluster,
    /// size).
    fn lookup(
        &self,
        dev: &mut dyn BlockDevice,
        cluster: u32,
        name: &str,
        path: &str,
    ) -> Result<(u8, u32, u64), FatFileError> {
        let clusters = self.chain(dev, cluster, None, path)?;
        let mut long: Vec<u16> = Vec::new();
        let mut seen = 0usize;
        let mut buf = vec![0u8; self.cluster_bytes as usize];
        for c in clusters {
            read_at(dev, self.cluster_offset(c), &mut buf)?;
            for e in buf.chunks_exact(32) {
                seen += 1;
                if seen > MAX_DIR_ENTRIES {
                    return Err(FatFileError::Corrupt(format!("{path}: directory too large")));
                }
                match e[0] {
                    0x00 => return Err(FatFileError::NotFound(String::from(path))),
                    0xe5 => {
                        long.clear();
                        continue;
                    }
                    _ => {}
                }
                let attr = e[11];
                if attr & 0x3f == ATTR_LONG_NAME {
                    // Long-name pieces come last piece first: put each in front.
                    let mut piece: Vec<u16> = [1usize, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
                        .iter()
                        .map(|&i| u16::from_le_bytes([e[i], e[i + 1]]))
                        .take_while(|&u| u != 0 && u != 0xffff)
                        .collect();
                    if e[0] & 0x40 != 0 {
                        long.clear();
                    }
                    piece.extend_from_slice(&long);
                    long = piece;
                    continue;
                }
                let long_name = core::mem::take(&mut long);
                if attr & ATTR_VOLUME_ID != 0 {
                    continue;
                }
                let matches = short_matches(&e[..11], name)
                    || (!long_name.is_empty()
                        && char::decode_utf16(long_name.iter().copied())
                            .map(|r| r.unwrap_or('\u{fffd}'))
                            .flat_map(char::to_lowercase)
                            .eq(name.chars().flat_map(char::to_lowercase)));
                if matches {
                    let first = ((le16(e, 20) << 16) | le16(e, 26)) as u32;
                    return Ok((attr, first, le32(e, 28)));
                }
            }
        }
        Err(FatFileError::NotFound(String::from(path)))
    }
}

/// Whether short-name field `field` (11 bytes, space-padded) is `name` (8.3, any case).
fn short_matches(field: &[u8], name: &str) -> bool {
    let (base, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    if base.is_empty() || base.len() > 8 || ext.len() > 3 {
        return false;
    }
    let mut want = [b' '; 11];
    want[..base.len()].copy_from_slice(base.as_bytes());
    want[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    field.iter().zip(want.iter()).all(|(a, b)| a.eq_ignore_ascii_case(b))
}

/// Finds `path` (`/`-separated, from the root) on the FAT32 volume in blocks
/// `volume_lba..volume_lba + volume_blocks` of `dev`; returns its size and where its bytes are
/// (always inside those blocks).
pub fn locate(
    dev: &mut dyn BlockDevice,
    volume_lba: u64,
    volume_blocks: u64,
    path: &str,
) -> Result<FileExtents, FatFileError> {
    let vol = Volume::open(dev, volume_lba, volume_blocks)?;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some((file, dirs)) = parts.split_last() else {
        return Err(FatFileError::WrongKind(String::from("/")));
    };
    let mut dir = vol.root;
    let mut walked = String::new();
    for d in dirs {
        walked.push('/');
        walked.push_str(d);
        let (attr, first, _) = vol.lookup(dev, dir, d, &walked)?;
        if attr & ATTR_DIRECTORY == 0 {
            return Err(FatFileError::WrongKind(walked));
        }
        dir = first;
    }
    walked.push('/');
    walked.push_str(file);
    let (attr, first, size) = vol.lookup(dev, dir, file, &walked)?;
    if attr & ATTR_DIRECTORY != 0 {
        return Err(FatFileError::WrongKind(walked));
    }
    let mut extents: Vec<Extent> = Vec::new();
    if size > 0 {
        let need = size.div_ceil(vol.cluster_bytes);
        let chain = vol.chain(dev, first, Some(need), &walked)?;
        if (chain.len() as u64) < need {
            return Err(FatFileError::Corrupt(format!(
                "{walked}: {} clusters hold {size} bytes",
                chain.len()
            )));
        }
        let mut left = size;
        for c in chain {
            let len = left.min(vol.cluster_bytes);
            let offset = vol.cluster_offset(c);
            match extents.last_mut() {
                Some(e) if e.offset + e.len == offset => e.len += len,
                _ => extents.push(Extent { offset, len }),
            }
            left -= len;
        }
    }
    Ok(FileExtents { size, extents })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDisk;
    use crate::fat32::{write_volume, FatFile};

    const LBA: u64 = 2048;
    const SECTORS: u64 = 70_000;

    fn volume(files: &[FatFile<'_>]) -> MemDisk {
        let mut d = MemDisk::new(512, LBA + SECTORS);
        write_volume(&mut d, LBA, SECTORS, b"EMBER      ", 1, files).unwrap();
        d
    }

    fn pattern(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8).collect()
    }

    /// The file's bytes as read through its extents.
    fn read_back(d: &MemDisk, f: &FileExtents) -> Vec<u8> {
        f.extents
            .iter()
            .flat_map(|e| d.bytes()[e.offset as usize..(e.offset + e.len) as usize].to_vec())
            .collect()
    }

    #[test]
    fn files_are_found_by_path_in_any_case_and_their_bytes_mapped() {
        let disk = pattern(300_000, 7);
        let cfg = b"{\"name\": \"web\"}".to_vec();
        let mut d = volume(&[
            FatFile { path: "EFI/BOOT/BOOTX64.EFI", data: &pattern(5000, 1) },
            FatFile { path: "ember/vms/web/vm.cfg", data: &cfg },
            FatFile { path: "ember/vms/web/disk.img", data: &disk },
        ]);
        let f = locate(&mut d, LBA, SECTORS, "ember/vms/web/disk.img").unwrap();
        assert_eq!(f.size, 300_000);
        assert_eq!(read_back(&d, &f), disk);
        let g = locate(&mut d, LBA, SECTORS, "/EMBER/VMS/WEB/DISK.IMG").unwrap();
        assert_eq!(f, g);
        // A range inside the file maps to the same bytes.
        let m = f.map(4096, 12_288 + 100);
        let bytes: Vec<u8> = m
            .iter()
            .flat_map(|e| d.bytes()[e.offset as usize..(e.offset + e.len) as usize].to_vec())
            .collect();
        assert_eq!(bytes, disk[4096..12_388]);
        assert!(f.map(299_000, 400_000).iter().map(|e| e.len).sum::<u64>() == 1000, "clipped to the file");
        let c = locate(&mut d, LBA, SECTORS, "ember/vms/web/vm.cfg").unwrap();
        assert_eq!(read_back(&d, &c), cfg);
        assert!(
            matches!(locate(&mut d, LBA, SECTORS, "ember/vms/web/nope.img"), Err(FatFileError::NotFound(p)) if p == "/ember/vms/web/nope.img")
        );
        assert!(matches!(locate(&mut d, LBA, SECTORS, "ember/vms/web"), Err(FatFileError::WrongKind(_))));
        assert!(matches!(
            locate(&mut d, LBA, SECTORS, "ember/vms/web/vm.cfg/x"),
            Err(FatFileError::WrongKind(_))
        ));
    }

    #[test]
    fn fragmented_files_and_long_names_written_by_mtools_style_tools() {
        // Hand-fragment the file: move its second cluster elsewhere and relink the chain, and
        // add a long-name entry in front of its short entry.
        let data = pattern(2048, 3);
        let mut d = volume(&[FatFile { path: "a/disk.img", data: &data }]);
        let f = locate(&mut d, LBA, SECTORS, "a/disk.img").unwrap();
        assert_eq!(f.extents.len(), 1, "written contiguously");
        let vol = Volume::open(&mut d, LBA, SECTORS).unwrap();
        let first = ((f.extents[0].offset - vol.data) / vol.cluster_bytes) as u32 + 2;
        let spare = vol.max_cluster - 10;
        let fat_entry = |c: u32| (vol.fat + c as u64 * 4) as usize;
        let second_off = vol.cluster_offset(first + 1) as usize;
        let spare_off = vol.cluster_offset(spare) as usize;
        let bytes = d.bytes_mut();
        let moved = bytes[second_off..second_off + 512].to_vec();
        bytes[spare_off..spare_off + 512].copy_from_slice(&moved);
        bytes[fat_entry(first)..fat_entry(first) + 4].copy_from_slice(&spare.to_le_bytes());
        let next = bytes[fat_entry(first + 1)..fat_entry(first + 1) + 4].to_vec();
        bytes[fat_entry(spare)..fat_entry(spare) + 4].copy_from_slice(&next);
        let f = locate(&mut d, LBA, SECTORS, "a/disk.img").unwrap();
        assert_eq!(f.extents.len(), 3);
        assert_eq!(read_back(&d, &f), data);
        // A loop in the chain is refused, not followed for ever.
        let bytes = d.bytes_mut();
        bytes[fat_entry(spare)..fat_entry(spare) + 4].copy_from_slice(&first.to_le_bytes());
        let mut e = d.clone();
        // Make the file claim to be huge so the chain must be walked to its (looping) end.
        let vol = Volume::open(&mut e, LBA, SECTORS).unwrap();
        let (_, dir_first, _) = vol.lookup(&mut e, vol.root, "a", "/a").unwrap();
        let dir_off = vol.cluster_offset(dir_first) as usize;
        let entry = e.bytes()[dir_off..dir_off + vol.cluster_bytes as usize]
            .chunks_exact(32)
            .position(|x| &x[..11] == b"DISK    IMG")
            .unwrap();
        let size_at = dir_off + entry * 32 + 28;
        e.bytes_mut()[size_at..size_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            matches!(locate(&mut e, LBA, SECTORS, "a/disk.img"), Err(FatFileError::Corrupt(w)) if w.contains("loops"))
        );
        // A long name ("My Disk.img") before the short entry is matched too.
        let mut l = volume(&[FatFile { path: "a/mydisk~1.img", data: &data }]);
        let vol = Volume::open(&mut l, LBA, SECTORS).unwrap();
        let (_, dir_first, _) = vol.lookup(&mut l, vol.root, "a", "/a").unwrap();
        let dir_off = vol.cluster_offset(dir_first) as usize;
        let slot = l.bytes()[dir_off..dir_off + 512]
            .chunks_exact(32)
            .position(|x| &x[..11] == b"MYDISK~1IMG")
            .unwrap();
        // Shift the short entry down one slot and put the long-name entry in its place.
        let at = dir_off + slot * 32;
        let short = l.bytes()[at..at + 32].to_vec();
        l.bytes_mut()[at + 32..at + 64].copy_from_slice(&short);
        let mut lfn = [0xffu8; 32];
        lfn[0] = 0x41;
        lfn[11] = ATTR_LONG_NAME;
        lfn[12] = 0;
        lfn[26] = 0;
        lfn[27] = 0;
        let name: Vec<u16> = "My Disk.img".encode_utf16().chain([0]).collect();
        for (i, pos) in [1usize, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30].iter().enumerate() {
            if let Some(u) = name.get(i) {
                lfn[*pos..*pos + 2].copy_from_slice(&u.to_le_bytes());
            }
        }
        l.bytes_mut()[at..at + 32].copy_from_slice(&lfn);
        let f = locate(&mut l, LBA, SECTORS, "a/my disk.IMG").unwrap();
        assert_eq!(read_back(&l, &f), data);
        assert!(locate(&mut l, LBA, SECTORS, "a/mydisk~1.img").is_ok(), "the short name still works");
    }

    #[test]
    fn damaged_volumes_are_refused_with_the_field() {
        let data = pattern(4096, 9);
        let good = volume(&[FatFile { path: "x/disk.img", data: &data }]);
        let corrupt = |at: usize, bytes: &[u8]| {
            let mut d = good.clone();
            d.bytes_mut()[LBA as usize * 512 + at..LBA as usize * 512 + at + bytes.len()]
                .copy_from_slice(bytes);
            locate(&mut d, LBA, SECTORS, "x/disk.img")
        };
        assert!(matches!(corrupt(510, &[0, 0]), Err(FatFileError::NotFat32(w)) if w.contains("signature")));
        assert!(
            matches!(corrupt(11, &[0, 3]), Err(FatFileError::NotFat32(w)) if w.contains("bytes per sector"))
        );
        assert!(matches!(corrupt(13, &[3]), Err(FatFileError::NotFat32(w)) if w.contains("per cluster")));
        assert!(matches!(corrupt(36, &[1, 0, 0, 0]), Err(FatFileError::NotFat32(_))));
        assert!(
            matches!(corrupt(44, &[0xff, 0xff, 0xff, 0x0f]), Err(FatFileError::NotFat32(w)) if w.contains("root"))
        );
        // The file's first cluster points outside the volume.
        let mut d = good.clone();
        let vol = Volume::open(&mut d, LBA, SECTORS).unwrap();
        let f = locate(&mut d, LBA, SECTORS, "x/disk.img").unwrap();
        let first = ((f.extents[0].offset - vol.data) / vol.cluster_bytes) as u32 + 2;
        let at = (vol.fat + first as u64 * 4) as usize;
        d.bytes_mut()[at..at + 4].copy_from_slice(&0x0fff_fff0u32.to_le_bytes());
        assert!(
            matches!(locate(&mut d, LBA, SECTORS, "x/disk.img"), Err(FatFileError::Corrupt(w)) if w.contains("outside"))
        );
        // A chain shorter than the size says.
        d.bytes_mut()[at..at + 4].copy_from_slice(&0x0fff_ffffu32.to_le_bytes());
        assert!(
            matches!(locate(&mut d, LBA, SECTORS, "x/disk.img"), Err(FatFileError::Corrupt(w)) if w.contains("clusters hold"))
        );
        // Random boot sectors never panic.
        let mut x = 0x1234_5678u32;
        for _ in 0..40 {
            let mut d = good.clone();
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let at = LBA as usize * 512 + (x as usize % 90);
                d.bytes_mut()[at] = (x >> 24) as u8;
            }
            let _ = locate(&mut d, LBA, SECTORS, "x/disk.img");
        }
    }
}
