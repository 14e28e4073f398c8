//! Files read from firmware file systems in the UEFI phase: `boot.cfg`, and a first boot's local
//! kickstart (with its `%include` files) from the boot media or another FAT volume.
//!
//! The kickstart is read and parsed on every boot that has one, because only the kernel phase can
//! tell (from the config store) whether this is a first boot; the result is used only then.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ember_storage::firstboot::{self, KsSource};
use ember_storage::kickstart::{self, Kickstart, MAX_KICKSTART_BYTES};
use uefi::boot::{self, ScopedProtocol, SearchType};
use uefi::proto::loaded_image::LoadedImage;
use uefi::proto::media::file::{File, FileAttribute, FileHandle, FileMode, RegularFile};
use uefi::proto::media::fs::SimpleFileSystem;
use uefi::CStr16;
use uefi::Identify;

/// What the UEFI phase found for a first boot.
pub enum FirstBootKickstart {
    /// No `ks=` and no `ks.cfg` on the boot media: the built-in configuration.
    None,
    /// A network location, fetched by the kernel phase once the management network is up; for
    /// `https://`, the CA file from the boot media (`None`: there is none, the built-in store is
    /// used) or why it could not be read.
    Remote { source: KsSource, ca: Result<Option<Vec<u8>>, String> },
    /// A local kickstart: where it was read, and the parsed result or why it cannot be used.
    Local { source: String, parsed: Result<Box<Kickstart>, String> },
    /// `ks=` cannot be used; the text says why.
    Refused(String),
}

/// Why a file could not be read.
pub enum ReadError {
    NotFound,
    Other(String),
}

/// Opens the file or directory at `path` (`/`-separated, absolute) on `fs`.
pub fn open(fs: &mut SimpleFileSystem, path: &str) -> Result<FileHandle, ReadError> {
    let mut name: Vec<u16> = path.chars().map(|c| if c == '/' { '\\' as u16 } else { c as u16 }).collect();
    name.push(0);
    let name = CStr16::from_u16_with_nul(&name)
        .map_err(|_| ReadError::Other(format!("{path}: not a valid file name")))?;
    let mut root = fs.open_volume().map_err(|_| ReadError::Other(String::from("cannot open the volume")))?;
    root.open(name, FileMode::Read, FileAttribute::empty()).map_err(|_| ReadError::NotFound)
}

/// Opens the regular file at `path` on `fs`.
pub fn open_regular(fs: &mut SimpleFileSystem, path: &str) -> Result<RegularFile, ReadError> {
    open(fs, path)?.into_regular_file().ok_or(ReadError::Other(format!("{path} is a directory")))
}

/// Reads a whole file (`/`-separated absolute path) of at most `max` bytes.
pub fn read_file(fs: &mut SimpleFileSystem, path: &str, max: usize) -> Result<Vec<u8>, ReadError> {
    let mut file = open_regular(fs, path)?;
    let mut buf = alloc::vec![0u8; max + 1];
    let mut len = 0;
    while len < buf.len() {
        let n = file.read(&mut buf[len..]).map_err(|_| ReadError::Other(format!("{path}: read error")))?;
        if n == 0 {
            break;
        }
        len += n;
    }
    if len > max {
        return Err(ReadError::Other(format!("{path} is larger than {max} bytes")));
    }
    buf.truncate(len);
    Ok(buf)
}

/// The VMs a first boot registers: `FIRST_BOOT_VMS_FILE`'s datastore paths (none without the file).
pub fn first_boot_vms(fs: &mut SimpleFileSystem) -> Result<Vec<ember_storage::vmdef::DsPath>, String> {
    use ember_storage::vmdef::{parse_first_boot_vms, FIRST_BOOT_VMS_FILE};
    match read_file(fs, FIRST_BOOT_VMS_FILE, 64 << 10) {
        Ok(bytes) => parse_first_boot_vms(FIRST_BOOT_VMS_FILE.trim_start_matches('/'), &bytes),
        Err(ReadError::NotFound) => Ok(Vec::new()),
        Err(ReadError::Other(why)) => Err(why),
    }
}

fn text(path: &str, bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|_| format!("{path} is not UTF-8 text"))
}

/// Reads and parses the kickstart at `path` on `fs`; `%include` files come from the same volume,
/// relative to the including file.
fn parse_from(fs: &mut SimpleFileSystem, path: &str, display: &str) -> Result<Box<Kickstart>, String> {
    let main = read_file(fs, path, MAX_KICKSTART_BYTES).map_err(|e| match e {
        ReadError::NotFound => format!("{display}: file not found"),
        ReadError::Other(why) => format!("{display}: {why}"),
    })?;
    let main = text(path, main)?;
    let dir = String::from(firstboot::parent_dir(path));
    let mut include = |name: &str| -> Result<String, String> {
        let p = firstboot::include_path(&dir, name)?;
        match read_file(fs, &p, MAX_KICKSTART_BYTES) {
            Ok(b) => text(&p, b),
            Err(ReadError::NotFound) => Err(format!("cannot read {p}: file not found")),
            Err(ReadError::Other(why)) => Err(format!("cannot read {p}: {why}")),
        }
    };
    let name = path.trim_start_matches('/');
    kickstart::parse(name, &main, &mut include).map(Box::new).map_err(|e| e.to_string())
}

/// Finds the first boot's kickstart as `ks=` (`source`) says, reading local files from the boot
/// volume `boot_fs` (and, for `ks=usb`, other FAT volumes after it).
pub fn first_boot_kickstart(
    boot_fs: &mut SimpleFileSystem,
    source: Result<KsSource, String>,
) -> FirstBootKickstart {
    let source = match source {
        Ok(s) => s,
        Err(why) => return FirstBootKickstart::Refused(why),
    };
    match &source {
        KsSource::Http(_) => FirstBootKickstart::Remote { source, ca: Ok(None) },
        KsSource::Https(_) => {
            let ca = match read_file(boot_fs, firstboot::KS_CA_FILE, firstboot::MAX_KS_CA_BYTES) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(ReadError::NotFound) => Ok(None),
                Err(ReadError::Other(why)) => Err(why),
            };
            FirstBootKickstart::Remote { source, ca }
        }
        KsSource::Cdrom(p) => FirstBootKickstart::Refused(format!(
            "boot option ks=cdrom:{p}: CD-ROM kickstarts are not supported by this version; use usb: or file://"
        )),
        KsSource::BootMedia => match read_file(boot_fs, firstboot::ESP_KICKSTART, MAX_KICKSTART_BYTES) {
            Err(ReadError::NotFound) => FirstBootKickstart::None,
            _ => FirstBootKickstart::Local {
                source: format!("{source}"),
                parsed: parse_from(boot_fs, firstboot::ESP_KICKSTART, "ks.cfg"),
            },
        },
        KsSource::File(p) => FirstBootKickstart::Local {
            source: format!("{source}"),
            parsed: parse_from(boot_fs, p, &format!("file://{p}")),
        },
        KsSource::Usb(p) => {
            let display = format!("usb:{p}");
            if read_file(boot_fs, p, MAX_KICKSTART_BYTES).is_ok() {
                return FirstBootKickstart::Local {
                    source: format!("{display} (on the boot media)"),
                    parsed: parse_from(boot_fs, p, &display),
                };
            }
            for (i, mut fs) in other_volumes().into_iter().enumerate() {
                if read_file(&mut fs, p, MAX_KICKSTART_BYTES).is_ok() {
                    return FirstBootKickstart::Local {
                        source: format!("{display} (on FAT volume {})", i + 1),
                        parsed: parse_from(&mut fs, p, &display),
                    };
                }
            }
            FirstBootKickstart::Local {
                source: display.clone(),
                parsed: Err(format!("{display}: file not found on the boot media or any other FAT volume")),
            }
        }
    }
}

/// Every file system the firmware exposes other than the boot volume, in handle order.
fn other_volumes() -> Vec<ScopedProtocol<SimpleFileSystem>> {
    let boot_device =
        boot::open_protocol_exclusive::<LoadedImage>(boot::image_handle()).ok().and_then(|li| li.device());
    let Ok(handles) = boot::locate_handle_buffer(SearchType::ByProtocol(&SimpleFileSystem::GUID)) else {
        return Vec::new();
    };
    handles
        .iter()
        .filter(|h| Some(**h) != boot_device)
        .filter_map(|h| boot::open_protocol_exclusive::<SimpleFileSystem>(*h).ok())
        .collect()
}
