//! Host-side access to images and devices: a [`BlockDevice`] over a file, and a byte window over one
//! partition for the FAT library.

use ember_storage::block::{BlockDevice, IoError};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// Logical block size of images (and of the USB sticks and SD cards they are written to).
pub const BLOCK: u32 = 512;

/// A file or block device seen as 512-byte blocks.
pub struct FileDisk {
    file: File,
    blocks: u64,
}

impl FileDisk {
    /// Wraps `file`, whose length is `len` bytes (a trailing partial block is ignored).
    pub fn new(file: File, len: u64) -> Self {
        FileDisk { file, blocks: len / BLOCK as u64 }
    }
}

fn dev_err(e: io::Error) -> IoError {
    IoError::Device(e.to_string())
}

impl BlockDevice for FileDisk {
    fn block_size(&self) -> u32 {
        BLOCK
    }
    fn num_blocks(&self) -> u64 {
        self.blocks
    }
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.check_request(lba, buf.len())?;
        self.file.read_exact_at(buf, lba * BLOCK as u64).map_err(dev_err)
    }
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        self.check_request(lba, buf.len())?;
        self.file.write_all_at(buf, lba * BLOCK as u64).map_err(dev_err)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.file.sync_all().map_err(dev_err)
    }
}

/// A `Read + Write + Seek` window `[offset, offset + len)` of a file: one partition.
pub struct PartitionIo<'a> {
    file: &'a File,
    offset: u64,
    len: u64,
    pos: u64,
}

impl<'a> PartitionIo<'a> {
    pub fn new(file: &'a File, offset: u64, len: u64) -> Self {
        PartitionIo { file, offset, len, pos: 0 }
    }
}

impl Read for PartitionIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.offset + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for PartitionIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write past the end of the partition"));
        }
        let put = self.file.write_at(&buf[..n], self.offset + self.pos)?;
        self.pos += put as u64;
        Ok(put)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for PartitionIo<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "seek outside the partition")),
        }
    }
}

/// Parses a size such as `80M`, `1G`, `512K` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let mult = match t[i..].to_ascii_uppercase().as_str() {
                "K" | "KIB" => 1 << 10,
                "M" | "MIB" => 1 << 20,
                "G" | "GIB" => 1 << 30,
                _ => return Err(format!("size {s:?}: expected a number with an optional K, M or G suffix")),
            };
            (&t[..i], mult)
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?}: expected a number with an optional K, M or G suffix"))?;
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("80M"), Ok(80 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("12X").unwrap_err().contains("expected a number"));
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn partition_window_is_bounded() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(4096).unwrap();
        let mut p = PartitionIo::new(&f, 1024, 1024);
        p.write_all(&[7u8; 1024]).unwrap();
        assert!(p.write(&[1]).is_err(), "no write past the end");
        assert!(p.seek(SeekFrom::Start(1025)).is_err());
        p.seek(SeekFrom::Start(0)).unwrap();
        let mut b = vec![0u8; 2048];
        assert_eq!(p.read(&mut b).unwrap(), 1024);
        let mut all = vec![0u8; 4096];
        f.read_exact_at(&mut all, 0).unwrap();
        assert!(all[..1024].iter().all(|b| *b == 0) && all[1024..2048].iter().all(|b| *b == 7));
        assert!(all[2048..].iter().all(|b| *b == 0));
    }
}
