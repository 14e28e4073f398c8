//! The VMs on the boot media, read in the UEFI phase: every directory under `\ember\vms\` holds
//! one VM - its definition `vm.json` (`ember_storage::vmdef`) and the files it names (placed there
//! by `ember-image build --vm`). Kernel and initrd are read into `LOADER_DATA` pages, which stay
//! reserved for the life of the host (the kernel phase never hands them out), so a VM can be
//! started and restarted from them without reading the media again.
//!
//! A VM whose definition or files cannot be used is still listed, with the reason, so the API and
//! the log can say what is wrong with it.

use super::files::{self, ReadError};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ember_storage::vmdef::{VmDefinition, VMS_DIR, VM_DEFINITION_FILE};
use uefi::boot::{self, AllocateType, MemoryType};
use uefi::proto::media::file::{Directory, File, FileInfo};
use uefi::proto::media::fs::SimpleFileSystem;

/// Largest kernel image, initrd and disk image read for a VM.
const MAX_KERNEL: u64 = 64 << 20;
const MAX_INITRD: u64 = 512 << 20;
const MAX_DISK: u64 = 1 << 30;
/// Largest definition file.
const MAX_DEFINITION: usize = 64 << 10;
/// Most VM directories read.
const MAX_VMS: usize = 256;

/// A VM found on the boot media.
pub struct VmImage {
    /// Its directory on the ESP (`ember/vms/<dir>`).
    pub dir: String,
    /// The definition with its kernel and initrd in memory, or why the VM cannot run.
    pub loaded: Result<LoadedVm, String>,
}

/// A usable VM: its definition and its boot files (in pages reserved for the life of the host).
pub struct LoadedVm {
    pub definition: VmDefinition,
    pub kernel: &'static [u8],
    pub initrd: Option<&'static [u8]>,
    /// The disk images, in the definition's order (guest writes land here and are written back to
    /// the files on the boot media by `vmhost::DiskWriter`).
    pub disks: Vec<&'static mut [u8]>,
}

#[repr(C, align(8))]
struct InfoBuffer([u8; 1024]);

/// Reads the whole file at `path` (at most `max` bytes) into freshly allocated `LOADER_DATA` pages.
fn read_into_pages(fs: &mut SimpleFileSystem, path: &str, max: u64) -> Result<&'static mut [u8], String> {
    let mut file = files::open_regular(fs, path).map_err(|e| match e {
        ReadError::NotFound => format!("{path}: file not found"),
        ReadError::Other(why) => why,
    })?;
    let mut info = InfoBuffer([0; 1024]);
    let size = file
        .get_info::<FileInfo>(&mut info.0)
        .map_err(|_| format!("{path}: cannot read its size"))?
        .file_size();
    if size > max {
        return Err(format!("{path} is {size} bytes; at most {max} are read"));
    }
    if size == 0 {
        return Err(format!("{path} is empty"));
    }
    let pages = size.div_ceil(4096) as usize;
    let mem = boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, pages)
        .map_err(|_| format!("{path}: no memory for {size} bytes"))?;
    // SAFETY: `pages` pages were just allocated for this file alone; they are LOADER_DATA, so they
    // stay reserved (never freed, never handed out by the kernel's frame allocator) for the life
    // of the host, and nothing else refers to them. The slice covers `size` <= pages * 4096 bytes.
    let buf: &'static mut [u8] = unsafe { core::slice::from_raw_parts_mut(mem.as_ptr(), size as usize) };
    let mut done = 0;
    while done < buf.len() {
        let n = file.read(&mut buf[done..]).map_err(|_| format!("{path}: read error"))?;
        if n == 0 {
            return Err(format!("{path}: ended after {done} of {size} bytes"));
        }
        done += n;
    }
    Ok(buf)
}

/// The names of the subdirectories of `\ember\vms`, sorted.
fn vm_directories(fs: &mut SimpleFileSystem) -> Vec<String> {
    let Some(mut dir): Option<Directory> = files::open(fs, VMS_DIR).ok().and_then(|h| h.into_directory())
    else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let mut buf = InfoBuffer([0; 1024]);
    while let Ok(Some(entry)) = dir.read_entry(&mut buf.0) {
        if entry.is_directory() {
            let n = entry.file_name().to_string();
            if n != "." && n != ".." && names.len() < MAX_VMS {
                names.push(n);
            }
        }
    }
    names.sort();
    names
}

fn load_one(fs: &mut SimpleFileSystem, dir: &str) -> Result<LoadedVm, String> {
    let def_path = format!("{dir}/{VM_DEFINITION_FILE}");
    let bytes = files::read_file(fs, &def_path, MAX_DEFINITION).map_err(|e| match e {
        ReadError::NotFound => format!("{def_path}: file not found"),
        ReadError::Other(why) => why,
    })?;
    let definition = VmDefinition::parse(&def_path, &bytes).map_err(|e| e.to_string())?;
    let kernel = read_into_pages(fs, &format!("{dir}/{}", definition.kernel), MAX_KERNEL)?;
    let initrd = match &definition.initrd {
        Some(i) => Some(&*read_into_pages(fs, &format!("{dir}/{i}"), MAX_INITRD)?),
        None => None,
    };
    let mut disks = Vec::new();
    for d in &definition.disks {
        let path = format!("{dir}/{}", d.file);
        let image = read_into_pages(fs, &path, MAX_DISK)?;
        if !image.len().is_multiple_of(512) {
            return Err(format!("{path} is {} bytes, not a whole number of 512-byte sectors", image.len()));
        }
        disks.push(image);
    }
    Ok(LoadedVm { definition, kernel, initrd, disks })
}

/// Every VM on the boot volume `fs`.
pub fn read_vms(fs: &mut SimpleFileSystem) -> Vec<VmImage> {
    vm_directories(fs)
        .into_iter()
        .map(|d| {
            let dir = format!("{VMS_DIR}/{d}");
            let loaded = load_one(fs, &dir);
            VmImage { dir, loaded }
        })
        .collect()
}
