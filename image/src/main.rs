//! `ember-image`: the host tool that builds, inspects and flashes Ember boot media.
//!
//! It shares every on-disk format with the appliance through the `ember-storage` crate (GPT, the
//! media layout, boot.cfg, the FAT32 writer); reading FAT volumes uses the `fatfs` crate.

#![forbid(unsafe_code)]

mod datastore;
mod disk;
mod flash;
mod ks;
mod media;
mod qcow2;

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "ember-image", version, about = "Build, inspect and flash Ember boot media")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a bootable image (GPT: ESP, boot banks A/B, config store).
    Build {
        /// Output image file.
        #[arg(long)]
        out: PathBuf,
        /// Image size, for example 80M or 1G (at least the layout's minimum). Default: 80M, or with
        /// --vm what Ember's partitions and a datastore holding the VMs' files need.
        #[arg(long)]
        size: Option<String>,
        /// The appliance binary (BOOTX64.EFI). Default: build it from this repository.
        #[arg(long)]
        efi: Option<PathBuf>,
        /// A boot option for boot.cfg's kernelopt line (repeatable), e.g. --boot-option console=com2.
        #[arg(long = "boot-option", value_name = "OPTION")]
        boot_options: Vec<String>,
        /// A kickstart file to place on the ESP as \ks.cfg (validated first; no %include).
        #[arg(long, value_name = "FILE")]
        ks: Option<PathBuf>,
        /// CA certificates (PEM) an https:// kickstart server's certificate must chain to, placed on
        /// the ESP as \EFI\ember\ks-ca.pem (then the only CAs trusted; without it, the built-in
        /// Mozilla root store is used).
        #[arg(long = "ks-ca", value_name = "FILE")]
        ks_ca: Option<PathBuf>,
        /// A VM definition (JSON) to put on the image's datastore (datastore1, made in the space
        /// after Ember's partitions) with the files it names, registered at first boot (repeatable).
        #[arg(long = "vm", value_name = "FILE")]
        vms: Vec<PathBuf>,
    },
    /// Print the layout of an image or device and check it.
    Inspect {
        /// Image file or block device.
        file: PathBuf,
    },
    /// Write an image to a USB stick or SD card, then verify it.
    Flash {
        /// Image file.
        file: PathBuf,
        /// Target block device, e.g. /dev/sdX.
        device: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Allow a non-removable device.
        #[arg(long)]
        force: bool,
    },
    /// Kickstart files.
    Ks {
        #[command(subcommand)]
        action: KsCommand,
    },
    /// Datastores on an image file or block device, offline: create, list, copy in and out, check.
    Datastore {
        #[command(subcommand)]
        action: DsCommand,
    },
}

#[derive(Subcommand)]
enum DsCommand {
    /// Make a datastore: in the largest free space of the disk's partition table (an Ember boot
    /// image's trailing space, for example), or on a blank disk with a new partition table.
    Create {
        /// Image file or block device.
        disk: PathBuf,
        /// The datastore's name.
        #[arg(long, default_value = "datastore1")]
        name: String,
        /// Make a new image file of this size (for example 4G) first.
        #[arg(long)]
        size: Option<String>,
        /// File block size (64K to 64M).
        #[arg(long, default_value = "1M")]
        block_size: String,
        /// Replace whatever partition table or data the disk holds.
        #[arg(long)]
        overwrite: bool,
    },
    /// List a directory (default: the root), with capacity, free and provisioned space.
    Ls {
        disk: PathBuf,
        #[arg(default_value = "")]
        path: String,
        /// The datastore's name, when the disk holds several.
        #[arg(long)]
        datastore: Option<String>,
    },
    /// Copy a local file in (parent directories are made; zero ranges stay unallocated). A qcow2
    /// image is converted to the raw disk it holds (Ember's virtual disks are raw).
    Put {
        disk: PathBuf,
        local: PathBuf,
        path: String,
        #[arg(long)]
        datastore: Option<String>,
        /// Overwrite an existing file.
        #[arg(long)]
        replace: bool,
        /// Copy a qcow2 image as it is instead of converting it.
        #[arg(long)]
        keep_format: bool,
    },
    /// Copy a file out.
    Get {
        disk: PathBuf,
        path: String,
        local: PathBuf,
        #[arg(long)]
        datastore: Option<String>,
    },
    /// Make a directory (and its parents).
    Mkdir {
        disk: PathBuf,
        path: String,
        #[arg(long)]
        datastore: Option<String>,
    },
    /// Remove a file or an empty directory.
    Rm {
        disk: PathBuf,
        path: String,
        #[arg(long)]
        datastore: Option<String>,
    },
    /// Check every datastore on the disk (exit status 1 when one has problems).
    Fsck {
        disk: PathBuf,
        #[arg(long)]
        datastore: Option<String>,
    },
}

#[derive(Subcommand)]
enum KsCommand {
    /// Validate a kickstart file exactly as the appliance does (errors name the file and line).
    Check {
        /// The kickstart file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build { out, size, efi, boot_options, ks, ks_ca, vms } => {
            build(&out, size.as_deref(), efi.as_deref(), &boot_options, ks.as_deref(), ks_ca.as_deref(), &vms)
        }
        Command::Inspect { file } => media::inspect(&file).map(|i| print!("{}", media::render(&file, &i))),
        Command::Flash { file, device, yes, force } => flash_cmd(&file, &device, yes, force),
        Command::Ks { action: KsCommand::Check { file } } => ks::check(&file).map(|s| print!("{s}")),
        Command::Datastore { action } => datastore_cmd(action).map(|s| print!("{s}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ember-image: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn datastore_cmd(action: DsCommand) -> Result<String, String> {
    match action {
        DsCommand::Create { disk, name, size, block_size, overwrite } => {
            datastore::create(&disk, &name, size.as_deref(), &block_size, overwrite)
        }
        DsCommand::Ls { disk, path, datastore: ds } => datastore::ls(&disk, ds.as_deref(), &path),
        DsCommand::Put { disk, local, path, datastore: ds, replace, keep_format } => {
            datastore::put(&disk, ds.as_deref(), &local, &path, replace, !keep_format)
        }
        DsCommand::Get { disk, path, local, datastore: ds } => {
            datastore::get(&disk, ds.as_deref(), &path, &local)
        }
        DsCommand::Mkdir { disk, path, datastore: ds } => datastore::mkdir(&disk, ds.as_deref(), &path),
        DsCommand::Rm { disk, path, datastore: ds } => datastore::rm(&disk, ds.as_deref(), &path),
        DsCommand::Fsck { disk, datastore: ds } => datastore::fsck(&disk, ds.as_deref()),
    }
}

/// The workspace this tool was built from, if it is still there.
fn workspace_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.to_path_buf();
    root.join("kernel/Cargo.toml").exists().then_some(root)
}

/// Builds the appliance with cargo (cargo itself decides whether anything needs rebuilding).
fn build_appliance() -> Result<PathBuf, String> {
    let root =
        workspace_root().ok_or("no --efi given and the Ember source tree is not available to build it")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("ember-image: building the appliance (cargo build -p ember-kernel --target x86_64-unknown-uefi --release)");
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-p", "ember-kernel", "--target", "x86_64-unknown-uefi", "--release"])
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err("building the appliance failed (if cargo said \"can't find crate for `core`\", the \
                    x86_64-unknown-uefi target is missing: run scripts/setup, or \
                    rustup target add x86_64-unknown-uefi)"
            .into());
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    Ok(target.join("x86_64-unknown-uefi/release/ember.efi"))
}

fn build(
    out: &Path,
    size: Option<&str>,
    efi: Option<&Path>,
    options: &[String],
    ks: Option<&Path>,
    ks_ca: Option<&Path>,
    vm_files: &[PathBuf],
) -> Result<(), String> {
    let vms = media::read_vms(vm_files)?;
    let size = match size {
        Some(s) => disk::parse_size(s)?,
        None if vms.is_empty() => 80 << 20,
        None => media::image_size_for(&vms)?.max(80 << 20),
    };
    let kickstart = match ks {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            media::check_kickstart_text(&p.display().to_string(), &text)?;
            Some(text)
        }
    };
    let ks_ca = match ks_ca {
        None => None,
        Some(p) => {
            let pem = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            media::check_ks_ca(&pem).map_err(|e| format!("{}: {e}", p.display()))?;
            Some(pem)
        }
    };
    let efi_path = match efi {
        Some(p) => p.to_path_buf(),
        None => build_appliance()?,
    };
    let efi = std::fs::read(&efi_path).map_err(|e| format!("{}: {e}", efi_path.display()))?;
    for o in options {
        if o.is_empty() || o.chars().any(char::is_whitespace) {
            return Err(format!("boot option {o:?} must be one word without spaces"));
        }
    }
    let kernelopt = options.join(" ");
    let cfg = ember_storage::bootcfg::render_boot_cfg("Ember", &kernelopt);
    let spec = media::BuildSpec {
        size,
        efi: &efi,
        boot_cfg: &cfg,
        kickstart: kickstart.as_deref().map(str::as_bytes),
        ks_ca: ks_ca.as_deref(),
        vms: &vms,
    };
    let layout = media::build_image(out, &spec)?;
    println!(
        "{}: {} bytes; ESP {} MiB with BOOTX64.EFI ({} bytes){}, boot banks A/B, config store",
        out.display(),
        size - size % disk::BLOCK as u64,
        layout.esp.byte_len(disk::BLOCK) >> 20,
        efi.len(),
        match (kickstart.is_some(), ks_ca.is_some()) {
            (true, true) => " and ks.cfg, ks-ca.pem",
            (true, false) => " and ks.cfg",
            (false, true) => " and ks-ca.pem",
            (false, false) => "",
        }
    );
    for vm in &vms {
        println!(
            "  VM {}: {} files in [{}] {}/, registered at first boot",
            vm.name,
            vm.files.len(),
            media::IMAGE_DATASTORE,
            vm.name
        );
    }
    Ok(())
}

fn flash_cmd(image_path: &Path, device: &Path, yes: bool, force: bool) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let inspection = media::inspect(image_path).map_err(|e| format!("not flashing: {e}"))?;
    let image_len = inspection.bytes;
    let meta = std::fs::metadata(device).map_err(|e| format!("{}: {e}", device.display()))?;
    if !meta.file_type().is_block_device() {
        return Err(format!("{} is not a block device", device.display()));
    }
    let rdev = meta.rdev();
    let dev = format!("{}:{}", rustix::fs::major(rdev), rustix::fs::minor(rdev));
    let facts = flash::probe(&dev, Path::new("/sys"), Path::new("/proc"))?;
    flash::check(&facts, image_len, force)?;
    let what = format!(
        "/dev/{} ({}, {} MiB{})",
        facts.name,
        facts.model.as_deref().unwrap_or("unknown model"),
        facts.size >> 20,
        if facts.removable { ", removable" } else { "" }
    );
    if !yes && !flash::confirm(&format!("All data on {what} will be lost."))? {
        return Err("cancelled".into());
    }
    let image = std::fs::File::open(image_path).map_err(|e| format!("{}: {e}", image_path.display()))?;
    let target = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|e| format!("{}: {e}", device.display()))?;
    let mut last = (String::new(), u64::MAX);
    flash::write_and_verify(&image, image_len, &target, |phase, done, total| {
        let pct = done * 100 / total.max(1);
        if last.0 != phase || last.1 != pct {
            eprint!("\r{phase}: {pct:3}% ({} of {} MiB)", done >> 20, total >> 20);
            last = (phase.to_string(), pct);
        }
    })?;
    eprintln!();
    if facts.size > image_len {
        flash::relocate_backup_gpt(&target, facts.size)?;
    }
    println!("{} written to {what} and verified", image_path.display());
    Ok(())
}
