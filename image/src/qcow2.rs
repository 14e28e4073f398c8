//! qcow2 images (QEMU's format, what cloud images come as) converted to raw as they are copied onto
//! a datastore: Ember's virtual disks are raw thin files, so the host tool reads qcow2 and writes
//! only the ranges that hold data.
//!
//! Reading uses the `imago` crate: written by a maintainer of QEMU's block layer, pure Rust
//! (compressed clusters through `miniz_oxide`), synchronous with its `sync` feature (no async
//! runtime), and it checks the metadata it follows. Images with a backing file or an external data
//! file are refused (nothing is opened implicitly): flatten them first with
//! `qemu-img convert -O qcow2 in.qcow2 out.qcow2`.

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Mapping, Storage, StorageOpenOptions};
use std::io::Read;
use std::path::Path;

use ember_storage::vmdef::QCOW2_MAGIC;

/// Whether the file at `path` starts like a qcow2 image.
pub fn is_qcow2(path: &Path) -> Result<bool, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut head = [0u8; 4];
    match f.read_exact(&mut head) {
        Ok(()) => Ok(head == QCOW2_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// An open qcow2 image, read-only.
pub struct Qcow2Image {
    access: FormatAccess<ImagoFile>,
    shown: String,
}

impl Qcow2Image {
    /// Opens the image at `path` (read-only; backing and data files are refused).
    pub fn open(path: &Path) -> Result<Qcow2Image, String> {
        let shown = path.display().to_string();
        // The image file is opened here; anything it refers to (backing or data files) would be
        // opened implicitly, which the gate denies.
        let file = ImagoFile::open(StorageOpenOptions::new().filename(path).write(false))
            .map_err(|e| format!("{shown}: {e}"))?;
        let q = Qcow2::<ImagoFile>::builder(file)
            .write(false)
            .open(DenyImplicitOpenGate::default())
            .map_err(|e| {
                format!("{shown}: not a usable qcow2 image: {e} (an image with a backing file must be flattened first: qemu-img convert -O qcow2 IN OUT)")
            })?;
        let access = FormatAccess::new(q);
        // The header's size is not bounded by anything else in the file: a forged one would make
        // the copy walk for ever.
        let size = access.size();
        let max = ember_storage::datastore::MAX_FILE_BYTES;
        if size == 0 || size % 512 != 0 || size > max {
            return Err(format!(
                "{shown}: the image says its disk has {size} bytes (a disk is a whole number of 512-byte sectors, at most {max})"
            ));
        }
        Ok(Qcow2Image { access, shown })
    }

    /// The virtual disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.access.size()
    }

    /// Whether any byte of `offset..offset + len` may hold data (not unallocated or zero).
    fn holds_data(&self, offset: u64, len: u64) -> Result<bool, String> {
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let (m, n) = self
                .access
                .get_mapping(at, end - at)
                .map_err(|e| format!("{}: at byte {at}: {e}", self.shown))?;
            match m {
                Mapping::Zero { .. } => {}
                Mapping::Eof { .. } => return Ok(false),
                _ => return Ok(true),
            }
            if n == 0 {
                return Err(format!("{}: at byte {at}: the image maps no bytes", self.shown));
            }
            at += n;
        }
        Ok(false)
    }

    /// Calls `f(offset, bytes)` for every `chunk`-sized piece of the disk (at multiples of
    /// `chunk`; the last may be shorter) that may hold data; unallocated and zero pieces are
    /// skipped.
    pub fn for_each_data(
        &self,
        chunk: usize,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        let size = self.size();
        let mut buf = vec![0u8; chunk];
        let mut offset = 0u64;
        while offset < size {
            let n = (size - offset).min(chunk as u64) as usize;
            if self.holds_data(offset, n as u64)? {
                self.access.read(&mut buf[..n], offset).map_err(|e| {
                    format!("{}: reading bytes {offset}..{}: {e}", self.shown, offset + n as u64)
                })?;
                f(offset, &buf[..n])?;
            }
            offset += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img(args: &[&str]) {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img (Debian package qemu-utils; scripts/setup installs it)");
        assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Everything `for_each_data` hands out, laid into a raw image of the disk's size.
    fn flatten(q: &Qcow2Image) -> Vec<u8> {
        let mut raw = vec![0u8; q.size() as usize];
        let mut pieces = 0;
        q.for_each_data(1 << 20, |at, data| {
            raw[at as usize..at as usize + data.len()].copy_from_slice(data);
            pieces += 1;
            Ok(())
        })
        .unwrap();
        assert!(pieces <= 3, "only the pieces with data are read: {pieces}");
        raw
    }

    #[test]
    fn plain_and_compressed_qcow2_images_read_as_the_raw_disk_they_came_from() {
        let d = tempfile::tempdir().unwrap();
        let raw_path = d.path().join("disk.raw");
        let mut raw = vec![0u8; 40 << 20];
        for (i, b) in raw[3 << 20..(3 << 20) + 70_000].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        raw[(40 << 20) - 1] = 0xee;
        std::fs::write(&raw_path, &raw).unwrap();
        for (name, extra) in [("plain.qcow2", None), ("compressed.qcow2", Some("-c"))] {
            let q = d.path().join(name);
            let mut args = vec!["convert", "-q", "-f", "raw", "-O", "qcow2"];
            args.extend(extra);
            args.extend([raw_path.to_str().unwrap(), q.to_str().unwrap()]);
            qemu_img(&args);
            assert!(is_qcow2(&q).unwrap());
            let img = Qcow2Image::open(&q).unwrap();
            assert_eq!(img.size(), 40 << 20);
            assert!(flatten(&img) == raw, "{name} reads as the raw disk");
        }
        assert!(!is_qcow2(&raw_path).unwrap());
    }

    #[test]
    fn backing_files_and_damaged_images_are_refused_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "8M"]);
        let top = d.path().join("top.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            top.to_str().unwrap(),
        ]);
        let e = Qcow2Image::open(&top).err().unwrap();
        assert!(e.contains("top.qcow2: not a usable qcow2 image") && e.contains("flattened"), "{e}");

        // Forged headers (cluster size, L1 table size, L1 table offset, disk size) and a truncated
        // one: errors, no panic.
        let good = std::fs::read(&base).unwrap();
        let bad = d.path().join("bad.qcow2");
        for (at, value) in [
            (20usize, &99u32.to_be_bytes()[..]),
            (36, &u32::MAX.to_be_bytes()[..]),
            (40, &3u64.to_be_bytes()[..]),
            (24, &(1u64 << 62).to_be_bytes()[..]),
            (24, &1000u64.to_be_bytes()[..]),
        ] {
            let mut bytes = good.clone();
            bytes[at..at + value.len()].copy_from_slice(value);
            std::fs::write(&bad, &bytes).unwrap();
            let r = Qcow2Image::open(&bad).and_then(|q| q.for_each_data(1 << 20, |_, _| Ok(())));
            assert!(r.is_err(), "header field at {at} forged: {r:?}");
        }
        let bytes = good;
        std::fs::write(&bad, &bytes[..20]).unwrap();
        assert!(Qcow2Image::open(&bad).is_err());
    }
}
