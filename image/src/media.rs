//! Building and inspecting Ember boot media images, on top of the formats in `ember-storage`.

use crate::datastore::Source;
use crate::disk::{FileDisk, PartitionIo, BLOCK};
use ember_storage::block::BlockDevice;
use ember_storage::bootcfg::{self, BootCfg};
use ember_storage::config_store::ConfigStore;
use ember_storage::fat32::{self, FatFile};
use ember_storage::gpt::{self, Gpt};
use ember_storage::hostconfig::HostConfig;
use ember_storage::kickstart;
use ember_storage::layout::{self, EmberLayout, Placed};
use gpt_disk_types::Guid;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// ESP paths, with forward slashes.
pub const EFI_LOADER: &str = "EFI/BOOT/BOOTX64.EFI";
pub const BOOT_CFG: &str = "EFI/ember/boot.cfg";
/// A kickstart at the root of the ESP, used at first boot when no `ks=` is given.
pub const KS_CFG: &str = "ks.cfg";
/// CA certificates for `https://` kickstarts (ember_storage::firstboot::KS_CA_FILE without the `/`).
pub const KS_CA: &str = "EFI/ember/ks-ca.pem";
/// ESP volume label.
pub const ESP_LABEL: [u8; 11] = *b"EMBER BOOT ";

/// What to put into a new image.
pub struct BuildSpec<'a> {
    pub size: u64,
    pub efi: &'a [u8],
    pub boot_cfg: &'a str,
    /// A kickstart to place at the root of the ESP (already validated).
    pub kickstart: Option<&'a [u8]>,
    /// CA certificates (PEM, already validated) for an `https://` kickstart server.
    pub ks_ca: Option<&'a [u8]>,
    /// VMs to place on the image's datastore ([`IMAGE_DATASTORE`]), one folder each.
    pub vms: &'a [VmFiles],
}

/// The datastore `build --vm` makes in the image's space after Ember's own partitions.
pub const IMAGE_DATASTORE: &str = "datastore1";
/// The ESP file naming the VMs a first boot registers (`FIRST_BOOT_VMS_FILE` without the `/`).
pub const REGISTER_CFG: &str = "EFI/ember/register.cfg";
/// Data block size of the image's datastore (the appliance's default).
const DS_BLOCK: u64 = ember_storage::datastore::DEFAULT_BLOCK as u64;

/// A VM for the image: the files of its folder on the image's datastore (named after the VM): its
/// definition as `<name>.json`, then the files it names, at their paths relative to it (a disk
/// that is a qcow2 image becomes the raw disk it holds).
pub struct VmFiles {
    pub name: String,
    pub files: Vec<(String, Source)>,
}

impl VmFiles {
    /// The definition's datastore path, as the inventory names it.
    pub fn definition(&self) -> String {
        format!("[{IMAGE_DATASTORE}] {0}/{0}.json", self.name)
    }
}

/// Reads and validates each VM definition and the files it names (relative to the definition).
pub fn read_vms(paths: &[std::path::PathBuf]) -> Result<Vec<VmFiles>, String> {
    use ember_storage::vmdef::VmDefinition;
    let mut out: Vec<VmFiles> = Vec::new();
    for p in paths {
        let shown = p.display().to_string();
        let bytes = fs::read(p).map_err(|e| format!("{shown}: {e}"))?;
        let def = VmDefinition::parse(&shown, &bytes).map_err(|e| e.to_string())?;
        if out.iter().any(|v| v.name == def.name) {
            return Err(format!("{shown}: name: a VM named {} is already in the image", def.name));
        }
        let base = p.parent().unwrap_or(Path::new("."));
        let mut files = vec![(format!("{}.json", def.name), Source::Bytes(bytes.clone()))];
        for f in def.files() {
            if f.starts_with('[') {
                return Err(format!(
                    "{shown}: {f}: build --vm copies the files a definition names from beside it; give a path relative to the definition"
                ));
            }
            if files.iter().any(|(have, _)| have == f) {
                continue;
            }
            let is_disk = def.disks.iter().any(|d| d.file == f);
            let source = Source::of(&base.join(f), is_disk).map_err(|e| format!("{shown}: {f}: {e}"))?;
            files.push((f.to_string(), source));
        }
        out.push(VmFiles { name: def.name.clone(), files });
    }
    Ok(out)
}

/// The smallest image that holds Ember's partitions and a datastore with `vms`' files, each file
/// fully provisioned (a guest may write every block of its disk), with room for the metadata.
pub fn image_size_for(vms: &[VmFiles]) -> Result<u64, String> {
    let too_large = || String::from("the VMs' files are too large for an image");
    let mut data = 0u64;
    for (_, source) in vms.iter().flat_map(|v| &v.files) {
        let n = source.len()?.checked_next_multiple_of(DS_BLOCK).ok_or_else(too_large)?;
        data = data.checked_add(n).ok_or_else(too_large)?;
    }
    // The datastore's metadata takes 1/256 of it (at least 4 MiB), plus alignment and headroom.
    let ds = data.checked_add((data / 255).max(4 << 20) + 4 * DS_BLOCK).ok_or_else(too_large)?;
    ds.checked_add(layout::MIN_MEDIA_SIZE)
        .and_then(|n| n.checked_next_multiple_of(1 << 20))
        .ok_or_else(too_large)
}

fn random_guid() -> Result<Guid, String> {
    crate::datastore::random_bytes().map(Guid::from_random_bytes)
}

/// Checks that `bytes` is a PE32+ x86_64 EFI application (PE/COFF spec: DOS stub "MZ", "PE\0\0",
/// machine 0x8664, optional header magic 0x20b, subsystem 10).
pub fn check_efi_application(bytes: &[u8]) -> Result<(), String> {
    let u16_at = |o: usize| bytes.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| bytes.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if !bytes.starts_with(b"MZ") {
        return Err("not a PE file (no MZ header)".into());
    }
    let pe = u32_at(0x3c).ok_or("truncated DOS header")? as usize;
    if bytes.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err("not a PE file (no PE signature)".into());
    }
    match u16_at(pe + 4) {
        Some(0x8664) => {}
        Some(m) => return Err(format!("PE machine is {m:#06x}, not x86_64 (0x8664)")),
        None => return Err("truncated COFF header".into()),
    }
    let opt = pe + 24;
    if u16_at(opt) != Some(0x20b) {
        return Err("not a PE32+ image".into());
    }
    match u16_at(opt + 68) {
        Some(10) => Ok(()),
        Some(s) => Err(format!("PE subsystem is {s}, not an EFI application (10)")),
        None => Err("truncated optional header".into()),
    }
}

/// Writes a new image to `out` (through a temporary file renamed into place, so a failed build never
/// leaves a half-written image under the requested name).
pub fn build_image(out: &Path, spec: &BuildSpec<'_>) -> Result<EmberLayout, String> {
    check_efi_application(spec.efi).map_err(|e| format!("appliance binary: {e}"))?;
    bootcfg::parse_boot_cfg(spec.boot_cfg.as_bytes()).map_err(|e| format!("boot.cfg: {e}"))?;
    let blocks = spec.size / BLOCK as u64;
    let plan = layout::plan(BLOCK, blocks).map_err(|e| e.to_string())?;

    let tmp = out.with_extension("img.partial");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let result = (|| -> Result<(), String> {
        file.set_len(blocks * BLOCK as u64).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut disk = FileDisk::new(file.try_clone().map_err(|e| e.to_string())?, blocks * BLOCK as u64);
        let guids: Vec<Guid> = (0..4).map(|_| random_guid()).collect::<Result<_, _>>()?;
        let entries = layout::gpt_entries(&plan, |i| guids[i]);
        let disk_guid = random_guid()?;
        gpt::write_gpt(&mut disk, disk_guid, &entries).map_err(|e| e.to_string())?;
        let b = disk_guid.to_bytes();
        write_esp(&mut disk, &plan.esp, u32::from_le_bytes([b[0], b[1], b[2], b[3]]), spec)?;
        if !spec.vms.is_empty() {
            write_datastore(&mut disk, spec.vms)?;
        }
        disk.flush().map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => {
            fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))?;
            Ok(plan)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_esp(disk: &mut FileDisk, esp: &Placed, volume_id: u32, spec: &BuildSpec<'_>) -> Result<(), String> {
    let mut files = vec![
        FatFile { path: EFI_LOADER, data: spec.efi },
        FatFile { path: BOOT_CFG, data: spec.boot_cfg.as_bytes() },
    ];
    if let Some(ks) = spec.kickstart {
        files.push(FatFile { path: KS_CFG, data: ks });
    }
    if let Some(ca) = spec.ks_ca {
        files.push(FatFile { path: KS_CA, data: ca });
    }
    let register: String = spec.vms.iter().map(|v| format!("{}\n", v.definition())).collect();
    let register = format!("# The VMs a first boot registers (made by ember-image build --vm)\n{register}");
    if !spec.vms.is_empty() {
        files.push(FatFile { path: REGISTER_CFG, data: register.as_bytes() });
    }
    let sectors = esp.last_lba - esp.first_lba + 1;
    fat32::write_volume(disk, esp.first_lba, sectors, &ESP_LABEL, volume_id, &files)
        .map_err(|e| format!("writing the ESP: {e}"))
}

/// Makes the image's datastore in the space after Ember's partitions and copies the VMs' folders in
/// (thin: all-zero blocks stay unallocated).
fn write_datastore(disk: &mut FileDisk, vms: &[VmFiles]) -> Result<(), String> {
    use crate::datastore::{now, random_bytes};
    use ember_storage::block::Window;
    use ember_storage::datastore::{Datastore, FormatOptions};
    let needed = image_size_for(vms)?;
    let too_small = |e: String| {
        format!("the image is too small for the VMs' files ({e}); it needs at least {} MiB: leave --size out, or give more", needed >> 20)
    };
    let part = gpt::add_partition(
        disk,
        layout::DATASTORE_TYPE,
        Guid::from_random_bytes(random_bytes()?),
        layout::DATASTORE_PARTITION_NAME,
        layout::ALIGN / BLOCK as u64,
        None,
    )
    .map_err(|e| too_small(e.to_string()))?;
    let mut w = Window::new(disk, part.first_lba, part.blocks())
        .ok_or("the datastore partition lies outside the image")?;
    let opts = FormatOptions {
        label: IMAGE_DATASTORE.to_string(),
        uuid: random_bytes()?,
        block_size: DS_BLOCK as u32,
    };
    let mut ds = Datastore::format(&mut w, &opts).map_err(|e| too_small(e.to_string()))?;
    let t = now();
    for vm in vms {
        for (rel, source) in &vm.files {
            let path = format!("{}/{rel}", vm.name);
            let shown = format!("[{IMAGE_DATASTORE}] {path}");
            if let Some((parent, _)) = path.rsplit_once('/') {
                ds.mkdir_all(parent, t).map_err(|e| format!("{shown}: {e}"))?;
            }
            let id = ds.create(&path, t).map_err(|e| format!("{shown}: {e}"))?;
            if let Err(e) = source.copy_to(&mut ds, &mut w, id, t) {
                let e = format!("{shown}: {e}");
                // A full datastore means the image is too small; anything else is said as it is.
                return Err(if ds.usage().free < DS_BLOCK { too_small(e) } else { e });
            }
        }
    }
    ds.commit(&mut w).map_err(|e| format!("[{IMAGE_DATASTORE}]: {e}"))
}

/// The result of inspecting an image.
pub struct Inspection {
    pub bytes: u64,
    pub gpt: Gpt,
    pub loader_size: u64,
    pub boot_cfg: BootCfg,
    pub esp_fat: String,
    pub notes: Vec<String>,
}

fn read_esp_file(fs: &fatfs::FileSystem<PartitionIo<'_>>, path: &str) -> Result<Vec<u8>, String> {
    let mut f =
        fs.root_dir().open_file(path).map_err(|_| format!("ESP has no \\{}", path.replace('/', "\\")))?;
    let mut v = Vec::new();
    f.read_to_end(&mut v).map_err(|e| format!("ESP: reading {path}: {e}"))?;
    Ok(v)
}

fn partition_is_zero(file: &File, p: &Placed) -> Result<bool, String> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = p.byte_offset(BLOCK);
    let end = off + p.byte_len(BLOCK);
    while off < end {
        let n = ((end - off) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], off).map_err(|e| e.to_string())?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

/// Reads an image (or device) and checks everything Ember relies on.
pub fn inspect(path: &Path) -> Result<Inspection, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = device_or_file_len(&file).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes < 3 * BLOCK as u64 {
        return Err(format!("{}: {bytes} bytes is too small to be a disk image", path.display()));
    }
    let mut disk = FileDisk::new(file.try_clone().map_err(|e| e.to_string())?, bytes);
    let gpt = gpt::read_gpt(&mut disk).map_err(|e| format!("{}: {e}", path.display()))?;
    let layout = layout::identify(&gpt, BLOCK).map_err(|e| format!("{}: {e}", path.display()))?;

    let esp = layout.esp;
    let io = PartitionIo::new(&file, esp.byte_offset(BLOCK), esp.byte_len(BLOCK));
    let fs = fatfs::FileSystem::new(io, fatfs::FsOptions::new())
        .map_err(|e| format!("{}: the ESP is not a FAT file system: {e}", path.display()))?;
    let esp_fat = format!("{:?} \"{}\"", fs.fat_type(), fs.volume_label().trim_end());
    let loader = read_esp_file(&fs, EFI_LOADER)?;
    check_efi_application(&loader).map_err(|e| format!("\\EFI\\BOOT\\BOOTX64.EFI: {e}"))?;
    let cfg_bytes = read_esp_file(&fs, BOOT_CFG)?;
    let boot_cfg = bootcfg::parse_boot_cfg(&cfg_bytes).map_err(|e| e.to_string())?;

    let mut notes = Vec::new();
    if let Ok(ks) = read_esp_file(&fs, KS_CFG) {
        // A bad kickstart is reported, not a reason to refuse the medium: the appliance boots from it
        // on the built-in configuration and says what is wrong, as here.
        let verdict = String::from_utf8(ks)
            .map_err(|_| String::from("\\ks.cfg on the ESP is not UTF-8 text"))
            .and_then(|text| check_kickstart_text("\\ks.cfg", &text).map(|()| text.len()));
        notes.push(match verdict {
            Ok(len) => format!("ks.cfg: valid kickstart ({len} bytes), used at first boot"),
            Err(e) => format!("ks.cfg: INVALID, a first boot would not apply it: {e}"),
        });
    }
    if let Ok(pem) = read_esp_file(&fs, KS_CA) {
        notes.push(match check_ks_ca(&pem) {
            Ok(what) => format!("ks-ca.pem: {what}"),
            Err(e) => format!("ks-ca.pem: INVALID, an https:// kickstart would not be fetched: {e}"),
        });
    }
    if let Ok(list) = read_esp_file(&fs, REGISTER_CFG) {
        notes.push(match ember_storage::vmdef::parse_first_boot_vms("register.cfg", &list) {
            Ok(vms) => format!(
                "register.cfg: {} VM(s) registered at first boot: {}",
                vms.len(),
                vms.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
            ),
            Err(e) => format!("register.cfg: INVALID, a first boot would register no VMs: {e}"),
        });
    }
    for (p, what) in [(layout.bank_a, "boot bank A"), (layout.bank_b, "boot bank B")] {
        let zero = partition_is_zero(&file, &p)?;
        notes.push(format!(
            "{what}: {}",
            if zero {
                "empty (A/B system updates are not implemented yet)"
            } else {
                "contains data this version of ember-image does not interpret"
            }
        ));
    }
    notes.push(format!("config store: {}", describe_config_store(&file, bytes, &layout.config)?));
    Ok(Inspection { bytes, gpt, loader_size: loader.len() as u64, boot_cfg, esp_fat, notes })
}

/// Validates the CA certificates for `https://` kickstarts as the appliance will; says what they are.
pub fn check_ks_ca(pem: &[u8]) -> Result<String, String> {
    if pem.len() > ember_storage::firstboot::MAX_KS_CA_BYTES {
        return Err(format!("larger than {} bytes", ember_storage::firstboot::MAX_KS_CA_BYTES));
    }
    let trust = ember_net::tls::Trust::from_pem("ks-ca.pem", pem)?;
    Ok(format!("{}, the only CAs trusted for https:// kickstarts", trust.describe()))
}

/// Validates a kickstart meant for the image. `%include` is refused: included files would not be on the
/// boot media with it.
pub fn check_kickstart_text(name: &str, text: &str) -> Result<(), String> {
    let mut no_includes = |f: &str| -> Result<String, String> {
        Err(format!("{f} would not be on the boot media: put everything in one kickstart file"))
    };
    kickstart::parse(name, text, &mut no_includes).map(|_| ()).map_err(|e| e.to_string())
}

/// What the config store partition holds, in words.
fn describe_config_store(file: &File, bytes: u64, p: &Placed) -> Result<String, String> {
    if partition_is_zero(file, p)? {
        return Ok(String::from("empty (no configuration saved yet)"));
    }
    let mut disk = FileDisk::new(file.try_clone().map_err(|e| e.to_string())?, bytes);
    let store = ConfigStore::new(p.first_lba, p.last_lba - p.first_lba + 1).map_err(|e| e.to_string())?;
    match store.load(&mut disk).map_err(|e| e.to_string())? {
        None => Ok(String::from("no complete configuration (an interrupted first save)")),
        Some(stored) => match HostConfig::decode(&stored.payload) {
            Ok(c) => Ok(format!(
                "configuration sequence {} in slot {}, host name {}",
                stored.sequence,
                if stored.slot == 0 { "A" } else { "B" },
                c.network.hostname
            )),
            Err(e) => Err(format!("config store: the stored configuration is invalid: {e}")),
        },
    }
}

/// Length of a regular file, or size of a block device.
pub fn device_or_file_len(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut f = file;
    let end = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(end)
}

/// The `inspect` report as text.
pub fn render(path: &Path, i: &Inspection) -> String {
    let mut s = format!(
        "{}: Ember boot media, {} bytes ({} MiB), {}-byte blocks, disk GUID {}\n",
        path.display(),
        i.bytes,
        i.bytes >> 20,
        BLOCK,
        i.gpt.disk_guid
    );
    s.push_str(&format!(
        "  {:<3}{:<22}{:>12}{:>12}{:>10}\n",
        "#", "partition", "first LBA", "last LBA", "size"
    ));
    for p in &i.gpt.partitions {
        s.push_str(&format!(
            "  {:<3}{:<22}{:>12}{:>12}{:>7} MiB\n",
            p.index + 1,
            p.name,
            p.first_lba,
            p.last_lba,
            (p.blocks() * BLOCK as u64) >> 20
        ));
    }
    s.push_str(&format!(
        "ESP: {}, \\EFI\\BOOT\\BOOTX64.EFI {} bytes (x86_64 EFI application)\n",
        i.esp_fat, i.loader_size
    ));
    s.push_str(&format!(
        "boot.cfg: title {:?}, boot options {:?}\n",
        i.boot_cfg.title.as_deref().unwrap_or(""),
        i.boot_cfg.kernelopt
    ));
    for u in &i.boot_cfg.options.unknown {
        s.push_str(&format!("warning: boot option {u:?} is not known to this version\n"));
    }
    for n in &i.notes {
        s.push_str(n);
        s.push('\n');
    }
    for w in &i.gpt.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    s.push_str("OK\n");
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The smallest byte string that passes [`check_efi_application`].
    pub fn fake_efi() -> Vec<u8> {
        let mut v = vec![0u8; 512];
        v[..2].copy_from_slice(b"MZ");
        v[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        v[0x80..0x84].copy_from_slice(b"PE\0\0");
        v[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
        v[0x98..0x9a].copy_from_slice(&0x20bu16.to_le_bytes());
        v[0x98 + 68..0x98 + 70].copy_from_slice(&10u16.to_le_bytes());
        v
    }

    pub fn build(dir: &Path, size: u64) -> PathBuf {
        let out = dir.join("ember.img");
        let efi = fake_efi();
        let spec = BuildSpec {
            size,
            efi: &efi,
            boot_cfg: "title=Ember\nkernelopt=console=com1\n",
            kickstart: None,
            ks_ca: None,
            vms: &[],
        };
        build_image(&out, &spec).unwrap();
        out
    }

    #[test]
    fn inspect_reports_kickstart_and_stored_configuration() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("ks.img");
        let efi = fake_efi();
        let ks = b"vmaccepteula\nrootpw secret-pw\nnetwork --bootproto=dhcp --hostname=esx9\n";
        let spec = BuildSpec {
            size: 80 << 20,
            efi: &efi,
            boot_cfg: "title=Ember\nkernelopt=\n",
            kickstart: Some(ks),
            ks_ca: Some(include_bytes!("../../net/src/tls/testdata/ca.pem")),
            vms: &[],
        };
        let layout = build_image(&out, &spec).unwrap();
        let i = inspect(&out).unwrap();
        assert!(i.notes.iter().any(|n| n.starts_with("ks.cfg: valid kickstart")), "{:?}", i.notes);
        assert!(
            i.notes.contains(&String::from(
                "ks-ca.pem: the CA certificates in ks-ca.pem (1), the only CAs trusted for https:// kickstarts"
            )),
            "{:?}",
            i.notes
        );
        assert!(check_ks_ca(b"not pem").unwrap_err().contains("no certificate"));
        assert!(i.notes.contains(&String::from("config store: empty (no configuration saved yet)")));

        // A configuration saved into the store (as the appliance will) is reported.
        let file = OpenOptions::new().read(true).write(true).open(&out).unwrap();
        let len = file.metadata().unwrap().len();
        let mut disk = FileDisk::new(file, len);
        let c = layout.config;
        let store = ConfigStore::new(c.first_lba, c.last_lba - c.first_lba + 1).unwrap();
        let mut cfg = HostConfig::defaults(
            "$pbkdf2-sha256$100000$AAECAwQFBgcICQoLDA0ODw==$3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhs="
                .into(),
        );
        cfg.network.hostname = "esx9".into();
        store.save(&mut disk, &cfg.encode()).unwrap();
        let i = inspect(&out).unwrap();
        assert!(
            i.notes
                .contains(&String::from("config store: configuration sequence 1 in slot A, host name esx9")),
            "{:?}",
            i.notes
        );
        // Garbage in the store is an error naming the store, not a silent "empty".
        store.save(&mut disk, b"{not json").unwrap();
        let e = inspect(&out).err().unwrap();
        assert!(e.starts_with("config store: the stored configuration is invalid"), "{e}");
        // An invalid kickstart is refused before anything is written.
        assert!(check_kickstart_text("ks.cfg", "rootpw secret-pw\n")
            .unwrap_err()
            .contains("missing vmaccepteula"));
        assert!(check_kickstart_text("ks.cfg", "%include x.cfg\n")
            .unwrap_err()
            .contains("one kickstart file"));
    }

    #[test]
    fn vms_go_onto_the_images_datastore_and_are_listed_for_the_first_boot() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("web");
        fs::create_dir_all(dir.join("boot")).unwrap();
        fs::write(dir.join("boot/vmlinuz"), vec![7u8; 3 << 20]).unwrap();
        let mut disk = vec![0u8; 16 << 20];
        disk[5 << 20] = 1;
        // The disk comes as a qcow2 image (converted on the way in).
        fs::write(d.path().join("disk.raw"), &disk).unwrap();
        let ok = std::process::Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .args([d.path().join("disk.raw"), dir.join("disk.img")])
            .status()
            .expect("qemu-img (qemu-utils)");
        assert!(ok.success());
        let def = r#"{"name": "web", "vcpus": 1, "memory_mib": 64, "kernel": "boot/vmlinuz", "disks": [{"file": "disk.img"}]}"#;
        fs::write(dir.join("vm.json"), def).unwrap();
        let vms = read_vms(&[dir.join("vm.json")]).unwrap();
        assert_eq!(vms[0].definition(), "[datastore1] web/web.json");
        let size = image_size_for(&vms).unwrap();
        assert!(size >= layout::MIN_MEDIA_SIZE + (20 << 20), "{size}");
        let out = d.path().join("vm.img");
        let efi = fake_efi();
        let mut spec = BuildSpec {
            size,
            efi: &efi,
            boot_cfg: "title=Ember\nkernelopt=\n",
            kickstart: None,
            ks_ca: None,
            vms: &vms,
        };
        build_image(&out, &spec).unwrap();
        let i = inspect(&out).unwrap();
        assert!(
            i.notes.contains(
                &"register.cfg: 1 VM(s) registered at first boot: [datastore1] web/web.json".to_string()
            ),
            "{:?}",
            i.notes
        );
        assert_eq!(i.gpt.partitions.len(), 5);
        // The files are there, the disk thin (one block allocated), and the datastore checks clean.
        let ls = crate::datastore::ls(&out, None, "web").unwrap();
        assert!(ls.contains(&format!("{:>17}{:>17} disk.img", 16 << 20, 1 << 20)), "{ls}");
        assert!(crate::datastore::fsck(&out, None).unwrap().contains("clean"));
        crate::datastore::get(&out, None, "web/disk.img", &d.path().join("back")).unwrap();
        assert!(fs::read(d.path().join("back")).unwrap() == disk, "the raw disk the qcow2 image held");
        let copy = d.path().join("k");
        crate::datastore::get(&out, None, "web/boot/vmlinuz", &copy).unwrap();
        assert_eq!(fs::read(&copy).unwrap(), vec![7u8; 3 << 20]);

        // Too small an image is refused, and nothing is left under the name.
        spec.size = layout::MIN_MEDIA_SIZE + (4 << 20);
        let small = d.path().join("small.img");
        let e = build_image(&small, &spec).unwrap_err();
        assert!(e.contains("too small for the VMs' files") && e.contains("leave --size out"), "{e}");
        assert!(!small.exists());
        // A definition naming a datastore file is refused.
        fs::write(dir.join("vm.json"), def.replace("boot/vmlinuz", "[ds] boot/vmlinuz")).unwrap();
        assert!(read_vms(&[dir.join("vm.json")]).err().unwrap().contains("relative to the definition"));
    }

    #[test]
    fn build_then_inspect() {
        let d = tempfile::tempdir().unwrap();
        let img = build(d.path(), 80 << 20);
        let i = inspect(&img).unwrap();
        assert_eq!(i.bytes, 80 << 20);
        assert_eq!(i.loader_size, 512);
        assert!(i.esp_fat.starts_with("Fat32"), "{}", i.esp_fat);
        assert_eq!(i.boot_cfg.kernelopt, "console=com1");
        assert!(i.gpt.warnings.is_empty());
        assert_eq!(i.gpt.partitions[0].first_lba, 2048);
        let text = render(&img, &i);
        assert!(text.contains("Ember boot bank A") && text.contains("config store: empty"));
        assert!(text.ends_with("OK\n"));
        assert!(!d.path().join("ember.img.partial").exists());
    }

    #[test]
    fn truncated_image_is_rejected() {
        let d = tempfile::tempdir().unwrap();
        let img = build(d.path(), 80 << 20);
        std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(40 << 20).unwrap();
        let e = inspect(&img).err().unwrap();
        assert!(e.contains("image is truncated"), "{e}");
    }

    #[test]
    fn foreign_images_are_rejected() {
        let d = tempfile::tempdir().unwrap();
        let junk = d.path().join("junk.img");
        std::fs::write(&junk, vec![0x5au8; 1 << 20]).unwrap();
        assert!(inspect(&junk).err().unwrap().contains("0x55AA"));
        // A valid GPT disk that is not Ember's: only an ESP.
        let other = d.path().join("other.img");
        let f = File::create(&other).unwrap();
        f.set_len(80 << 20).unwrap();
        let mut disk = FileDisk::new(f, 80 << 20);
        let plan = layout::plan(BLOCK, (80 << 20) / 512).unwrap();
        let entries = layout::gpt_entries(&plan, |i| Guid::from_bytes([i as u8 + 1; 16]));
        gpt::write_gpt(&mut disk, Guid::from_bytes([9; 16]), &entries[..1]).unwrap();
        let e = inspect(&other).err().unwrap();
        assert!(e.contains("not an Ember medium"), "{e}");
        assert!(inspect(&d.path().join("missing.img")).err().unwrap().contains("No such file"));
    }

    #[test]
    fn corrupt_esp_and_bad_loader_are_named() {
        let d = tempfile::tempdir().unwrap();
        let img = build(d.path(), 80 << 20);
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&[0u8; 512], 2048 * 512).unwrap(); // wipe the FAT boot sector
        assert!(inspect(&img).err().unwrap().contains("not a FAT file system"));

        let mut bad = fake_efi();
        bad[0x84] = 0x4c; // i386
        let e = build_image(
            &d.path().join("x.img"),
            &BuildSpec { size: 80 << 20, efi: &bad, boot_cfg: "", kickstart: None, ks_ca: None, vms: &[] },
        )
        .err()
        .unwrap();
        assert!(e.contains("not x86_64"), "{e}");
    }

    #[test]
    fn bad_sizes_and_boot_cfg_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let efi = fake_efi();
        let e = build_image(
            &d.path().join("s.img"),
            &BuildSpec { size: 10 << 20, efi: &efi, boot_cfg: "", kickstart: None, ks_ca: None, vms: &[] },
        )
        .err()
        .unwrap();
        assert!(e.contains("too small"), "{e}");
        let e = build_image(
            &d.path().join("s.img"),
            &BuildSpec {
                size: 80 << 20,
                efi: &efi,
                boot_cfg: "kernelopt=console=com9",
                kickstart: None,
                ks_ca: None,
                vms: &[],
            },
        )
        .err()
        .unwrap();
        assert!(e.contains("boot option `console`"), "{e}");
        assert!(!d.path().join("s.img").exists());
    }
}
