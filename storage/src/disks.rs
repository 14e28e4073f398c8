//! The host's disks and the datastores on them (layer 3 over [`BlockDevice`]): what the API's
//! `/api/v1/disks` and `/api/v1/datastores` show and change.
//!
//! At boot every disk is scanned: each GPT partition of the datastore type is mounted (whatever the
//! disk order - a datastore is known by what is on it, not where), and every disk is classified as
//! the boot media, free, holding a datastore, holding other partitions, holding data without a
//! partition table, or unreadable. Creating a datastore takes a whole disk: a disk that holds
//! anything is refused unless the caller says to overwrite it, and the refusal says what is on it.
//! The boot media is never overwritten: a datastore on it takes the largest free space of its
//! partition table (at least [`MIN_BOOT_MEDIA_DATASTORE`]), beside the partitions Ember boots from;
//! its device is shared with the configuration store ([`crate::block::SharedDevice`]).
//! A new datastore is written before the partition table that points at it, so a power cut in
//! between leaves a disk that shows as holding data, never a datastore partition that does not mount.
//!
//! Datastore names are unique on the host; when two disks carry the same name (a disk moved from
//! another host), the later one is shown as `name (2)` until it is renamed.

use crate::block::{BlockDevice, Window};
use crate::datastore::{check_label, Datastore, DsError, FormatOptions, DEFAULT_BLOCK};
use crate::gpt::{self, NewPartition};
use crate::layout::{ALIGN, DATASTORE_PARTITION_NAME, DATASTORE_TYPE};
use crate::persist::Disk;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use gpt_disk_types::Guid;

/// Files an upload writes into until it is complete (`.ember-upload-...`); what a power cut or a
/// crash leaves of them is removed when the datastore is mounted.
pub const UPLOAD_PREFIX: &str = ".ember-upload-";

/// The most directories [`sweep_uploads`] looks into (the walk is bounded whatever the datastore holds).
const SWEEP_DIRECTORIES: usize = 100_000;

/// Removes every file named `.ember-upload-*` (an upload that never finished) and commits; returns
/// how many there were.
pub fn sweep_uploads(ds: &mut Datastore, dev: &mut dyn BlockDevice) -> Result<usize, DsError> {
    let mut found = Vec::new();
    let mut dirs = vec![String::new()];
    let mut seen = 0;
    while let Some(dir) = dirs.pop() {
        seen += 1;
        if seen > SWEEP_DIRECTORIES {
            break;
        }
        for e in ds.list(&dir)? {
            let path = if dir.is_empty() { e.name.clone() } else { format!("{dir}/{}", e.name) };
            match e.kind {
                crate::datastore::InodeKind::Directory => dirs.push(path),
                crate::datastore::InodeKind::File if e.name.starts_with(UPLOAD_PREFIX) => found.push(path),
                crate::datastore::InodeKind::File => {}
            }
        }
    }
    for path in &found {
        ds.remove(path)?;
    }
    ds.commit(dev)?;
    Ok(found.len())
}

/// The smallest disk a datastore is made on.
pub const MIN_DATASTORE_DISK: u64 = 64 << 20;
/// The least free space of the boot media a datastore is made in (a small stick's few spare MiB
/// are not worth one).
pub const MIN_BOOT_MEDIA_DATASTORE: u64 = 256 << 20;

/// What a disk holds, as the API says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsedBy {
    /// Ember's boot media, and the datastores in its free space (by host name).
    BootMedia { datastores: Vec<String> },
    /// Nothing: no partition table and zeros where one would be.
    Free,
    /// Datastores (by host name), and any other partitions.
    Datastores { names: Vec<String>, other: Vec<String> },
    /// A partition table without datastores: the partitions' names.
    Partitions(Vec<String>),
    /// No partition table but data (the offset of the first non-zero byte found).
    Data { at: u64 },
    /// The disk could not be read.
    Unreadable(String),
}

impl fmt::Display for UsedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted = |v: &[String]| v.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ");
        match self {
            UsedBy::BootMedia { datastores } if datastores.is_empty() => f.write_str("boot media"),
            UsedBy::BootMedia { datastores } => write!(f, "boot media and datastore {}", quoted(datastores)),
            UsedBy::Free => f.write_str("free"),
            UsedBy::Datastores { names, other } if other.is_empty() => {
                write!(f, "datastore {}", quoted(names))
            }
            UsedBy::Datastores { names, other } => {
                write!(f, "datastore {} and partitions {}", quoted(names), quoted(other))
            }
            UsedBy::Partitions(p) if p.is_empty() => f.write_str("an empty partition table"),
            UsedBy::Partitions(p) => write!(f, "partitions {}", quoted(p)),
            UsedBy::Data { at } => write!(f, "data (no partition table; non-zero bytes at offset {at})"),
            UsedBy::Unreadable(e) => write!(f, "unreadable ({e})"),
        }
    }
}

/// One disk, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskReport {
    pub name: String,
    pub driver: String,
    pub model: String,
    pub serial: String,
    pub size_bytes: u64,
    pub block_size: u32,
    pub used_by: UsedBy,
}

/// One datastore, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatastoreReport {
    pub name: String,
    pub disk: String,
    /// The datastore's identity (made when it was created), as a GUID string.
    pub uuid: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub provisioned_bytes: u64,
    pub block_size: u32,
}

/// Why a change was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisksError {
    /// No disk of that name.
    NoSuchDisk(String),
    /// No datastore of that name.
    NoSuchDatastore(String),
    /// The name is taken by another datastore.
    NameTaken(String),
    /// The name breaks the rules.
    BadName(String),
    /// The disk holds something and overwriting was not asked for.
    DiskInUse { disk: String, used_by: UsedBy },
    /// The disk cannot hold a datastore (too small, unusual block size).
    Unsuitable { disk: String, why: String },
    /// The datastore is in use (by VMs).
    Busy { name: String, why: String },
    /// The device failed part way; the text says where.
    Failed(String),
}

impl fmt::Display for DisksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisksError::NoSuchDisk(d) => write!(f, "no disk named {d:?} (see GET /api/v1/disks)"),
            DisksError::NoSuchDatastore(d) => write!(f, "no datastore named {d:?}"),
            DisksError::NameTaken(n) => write!(f, "a datastore named {n:?} exists already"),
            DisksError::BadName(m) => write!(f, "datastore name: {m}"),
            DisksError::DiskInUse { disk, used_by } => {
                write!(f, "disk {disk} holds {used_by}; set \"overwrite\": true to erase it")
            }
            DisksError::Unsuitable { disk, why } => write!(f, "disk {disk}: {why}"),
            DisksError::Busy { name, why } => write!(f, "datastore {name:?} is in use: {why}"),
            DisksError::Failed(m) => f.write_str(m),
        }
    }
}

/// A mounted datastore.
struct Mounted {
    /// Its name on this host (the label, or `label (n)` when the label is taken).
    name: String,
    /// Never reused while the host runs: what a transfer holds on to, so a rename (or a removal and
    /// a new datastore of the same name) cannot send its bytes elsewhere.
    mount_id: MountId,
    disk: usize,
    first_lba: u64,
    blocks: u64,
    ds: Datastore,
}

/// Names one mounted datastore for as long as the host runs (see [`HostDisks::with_mount`]).
pub type MountId = u64;

/// The host's disks and the datastores mounted from them.
pub struct HostDisks {
    disks: Vec<Disk>,
    used: Vec<UsedBy>,
    /// Which of `disks` is the boot media (a handle on the device the configuration store uses).
    boot: Option<usize>,
    mounted: Vec<Mounted>,
    /// Source of partition and datastore GUIDs (mixed with a per-boot random seed).
    seed: u64,
    /// The next [`MountId`].
    next_mount: MountId,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn guid_string(b: &[u8; 16]) -> String {
    Guid::from_bytes(*b).to_string()
}

impl HostDisks {
    /// No disks (a host whose disks could not be probed, and tests).
    pub fn none() -> HostDisks {
        HostDisks {
            disks: Vec::new(),
            used: Vec::new(),
            boot: None,
            mounted: Vec::new(),
            seed: 0,
            next_mount: 1,
        }
    }

    /// Scans `disks` and `boot` (the boot media, listed first) and mounts every datastore found;
    /// `log` receives a line per datastore and per problem. `seed` is random per boot.
    pub fn scan(disks: Vec<Disk>, boot: Option<Disk>, seed: u64, log: &mut Vec<String>) -> HostDisks {
        let has_boot = boot.is_some();
        let disks: Vec<Disk> = boot.into_iter().chain(disks).collect();
        let mut h = HostDisks {
            used: vec![UsedBy::Free; disks.len()],
            disks,
            boot: has_boot.then_some(0),
            mounted: Vec::new(),
            seed,
            next_mount: 1,
        };
        for i in 0..h.disks.len() {
            h.mount_disk(i, log);
            h.used[i] = h.classify(i);
        }
        h
    }

    /// Mounts the datastore partitions of disk `i`.
    fn mount_disk(&mut self, i: usize, log: &mut Vec<String>) {
        let disk = &mut self.disks[i];
        let Ok(table) = gpt::read_gpt(disk.dev.as_mut()) else { return };
        for p in table.partitions.iter().filter(|p| p.type_guid == DATASTORE_TYPE) {
            let Some(mut w) = Window::new(disk.dev.as_mut(), p.first_lba, p.blocks()) else { continue };
            match Datastore::mount(&mut w) {
                Ok(mut ds) => {
                    match sweep_uploads(&mut ds, &mut w) {
                        Ok(0) => {}
                        Ok(n) => log.push(format!(
                            "{} partition {}: {n} unfinished upload(s) removed",
                            disk.name,
                            p.index + 1
                        )),
                        Err(e) => log.push(format!(
                            "{} partition {}: removing unfinished uploads: {e}",
                            disk.name,
                            p.index + 1
                        )),
                    }
                    let label = ds.label().to_string();
                    let mut name = label.clone();
                    let mut n = 2;
                    while self.mounted.iter().any(|m| m.name == name) {
                        name = format!("{label} ({n})");
                        n += 1;
                    }
                    let u = ds.usage();
                    log.push(format!(
                        "datastore {name:?} on {} partition {}: {} MiB, {} MiB free{}",
                        disk.name,
                        p.index + 1,
                        u.capacity >> 20,
                        u.free >> 20,
                        if name != label { " (its own name is taken on this host)" } else { "" }
                    ));
                    let mount_id = self.next_mount;
                    self.next_mount += 1;
                    self.mounted.push(Mounted {
                        name,
                        mount_id,
                        disk: i,
                        first_lba: p.first_lba,
                        blocks: p.blocks(),
                        ds,
                    });
                }
                Err(e) => {
                    log.push(format!("{} partition {}: datastore not mounted: {e}", disk.name, p.index + 1))
                }
            }
        }
    }

    /// What disk `i` holds now.
    fn classify(&mut self, i: usize) -> UsedBy {
        let mine: Vec<&Mounted> = self.mounted.iter().filter(|m| m.disk == i).collect();
        let names: Vec<String> = mine.iter().map(|m| m.name.clone()).collect();
        let starts: Vec<u64> = mine.iter().map(|m| m.first_lba).collect();
        if self.boot == Some(i) {
            return UsedBy::BootMedia { datastores: names };
        }
        let dev = self.disks[i].dev.as_mut();
        match gpt::read_gpt(dev) {
            Ok(table) => {
                let other: Vec<String> = table
                    .partitions
                    .iter()
                    .filter(|p| !starts.contains(&p.first_lba))
                    .map(|p| {
                        let name = if p.name.is_empty() {
                            format!("partition {}", p.index + 1)
                        } else {
                            p.name.clone()
                        };
                        if p.type_guid == DATASTORE_TYPE {
                            format!("{name} (does not mount)")
                        } else {
                            name
                        }
                    })
                    .collect();
                if names.is_empty() {
                    UsedBy::Partitions(other)
                } else {
                    UsedBy::Datastores { names, other }
                }
            }
            Err(_) => match first_data(dev) {
                Ok(None) => UsedBy::Free,
                Ok(Some(at)) => UsedBy::Data { at },
                Err(e) => UsedBy::Unreadable(e),
            },
        }
    }

    /// Every disk, the boot media first.
    pub fn disks(&self) -> Vec<DiskReport> {
        let mut out = Vec::new();
        for (d, used) in self.disks.iter().zip(&self.used) {
            out.push(DiskReport {
                name: d.name.clone(),
                driver: d.driver.to_string(),
                model: d.model.clone(),
                serial: d.serial.clone(),
                size_bytes: d.dev.num_blocks().saturating_mul(d.dev.block_size() as u64),
                block_size: d.dev.block_size(),
                used_by: used.clone(),
            });
        }
        out
    }

    /// Every mounted datastore, by name.
    pub fn datastores(&self) -> Vec<DatastoreReport> {
        let mut out: Vec<DatastoreReport> = self.mounted.iter().map(|m| self.report(m)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn report(&self, m: &Mounted) -> DatastoreReport {
        let u = m.ds.usage();
        DatastoreReport {
            name: m.name.clone(),
            disk: self.disks[m.disk].name.clone(),
            uuid: guid_string(&m.ds.uuid()),
            capacity_bytes: u.capacity,
            free_bytes: u.free,
            provisioned_bytes: u.provisioned,
            block_size: m.ds.block_size(),
        }
    }

    /// One datastore.
    pub fn datastore(&self, name: &str) -> Option<DatastoreReport> {
        self.mounted.iter().find(|m| m.name == name).map(|m| self.report(m))
    }

    /// Makes a datastore named `name` on the whole of disk `disk`. A disk that holds anything is
    /// refused unless `overwrite`; then its datastores are unmounted and everything on it is lost.
    /// On the boot media the datastore takes the largest free space instead, and `overwrite` is
    /// refused.
    pub fn create(&mut self, name: &str, disk: &str, overwrite: bool) -> Result<DatastoreReport, DisksError> {
        check_label(name).map_err(DisksError::BadName)?;
        if self.mounted.iter().any(|m| m.name == name) {
            return Err(DisksError::NameTaken(name.to_string()));
        }
        let Some(i) = self.disks.iter().position(|d| d.name == disk) else {
            return Err(DisksError::NoSuchDisk(disk.to_string()));
        };
        if self.boot == Some(i) {
            return self.create_on_boot_media(name, i, overwrite);
        }
        self.used[i] = self.classify(i);
        // A datastore whose files VMs hold is never overwritten.
        if let Some(m) = self.mounted.iter().find(|m| m.disk == i && !m.ds.holders().is_empty()) {
            return Err(DisksError::Busy {
                name: m.name.clone(),
                why: format!("it holds files of {}", m.ds.holders().join(", ")),
            });
        }
        if self.used[i] != UsedBy::Free && !overwrite {
            return Err(DisksError::DiskInUse { disk: disk.to_string(), used_by: self.used[i].clone() });
        }
        let dev = self.disks[i].dev.as_mut();
        let (bs, blocks) = (dev.block_size(), dev.num_blocks());
        let unsuitable = |why: String| DisksError::Unsuitable { disk: disk.to_string(), why };
        if bs != 512 && bs != 4096 {
            return Err(unsuitable(format!("{bs}-byte blocks (a datastore needs 512 or 4096)")));
        }
        if blocks.saturating_mul(bs as u64) < MIN_DATASTORE_DISK {
            return Err(unsuitable(format!("smaller than {} MiB", MIN_DATASTORE_DISK >> 20)));
        }
        let (first, last) =
            gpt::usable_range(bs, blocks).ok_or_else(|| unsuitable(String::from("too small")))?;
        let first = first.next_multiple_of(ALIGN / bs as u64);
        self.mounted.retain(|m| m.disk != i);
        self.make_datastore(name, i, (first, last), None, &[])
    }

    /// Formats a datastore named `name` on blocks `first..=last` of disk `i`, then writes the
    /// disk's partition table - the partitions `keep` and the datastore's (under `disk_guid`, or a
    /// new disk GUID) - and mounts it. The datastore is written before the table that points at
    /// it, so a power cut in between leaves no datastore partition that does not mount.
    fn make_datastore(
        &mut self,
        name: &str,
        i: usize,
        (first, last): (u64, u64),
        disk_guid: Option<Guid>,
        keep: &[NewPartition<'_>],
    ) -> Result<DatastoreReport, DisksError> {
        let mut ids = [[0u8; 16]; 3];
        for id in &mut ids {
            id[..8].copy_from_slice(&splitmix(&mut self.seed).to_le_bytes());
            id[8..].copy_from_slice(&splitmix(&mut self.seed).to_le_bytes());
        }
        let disk = &mut self.disks[i];
        let failed =
            |what: &str, e: &dyn fmt::Display| DisksError::Failed(format!("disk {}: {what}: {e}", disk.name));
        let dev = disk.dev.as_mut();
        let part_blocks = last + 1 - first;
        let mut w = Window::new(dev, first, part_blocks).ok_or_else(|| DisksError::Unsuitable {
            disk: disk.name.clone(),
            why: String::from("the space is past the end of the disk"),
        })?;
        let opts = FormatOptions { label: name.to_string(), uuid: ids[0], block_size: DEFAULT_BLOCK };
        let ds = Datastore::format(&mut w, &opts).map_err(|e| failed("making the datastore", &e))?;
        let mut parts = keep.to_vec();
        parts.push(NewPartition {
            type_guid: DATASTORE_TYPE,
            unique_guid: Guid::from_bytes(ids[1]),
            first_lba: first,
            last_lba: last,
            attributes: 0,
            name: DATASTORE_PARTITION_NAME,
        });
        gpt::write_gpt(dev, disk_guid.unwrap_or(Guid::from_bytes(ids[2])), &parts)
            .map_err(|e| failed("writing the partition table", &e))?;
        dev.flush().map_err(|e| failed("flushing", &e))?;
        let mount_id = self.next_mount;
        self.next_mount += 1;
        self.mounted.push(Mounted {
            name: name.to_string(),
            mount_id,
            disk: i,
            first_lba: first,
            blocks: part_blocks,
            ds,
        });
        self.used[i] = self.classify(i);
        Ok(self.datastore(name).unwrap_or_else(|| unreachable_report(name)))
    }

    /// A datastore in the largest free space of the boot media's partition table (disk `i`): made
    /// first, then added to the table beside the partitions Ember boots from.
    fn create_on_boot_media(
        &mut self,
        name: &str,
        i: usize,
        overwrite: bool,
    ) -> Result<DatastoreReport, DisksError> {
        let disk = self.disks[i].name.clone();
        let unsuitable = |why: String| DisksError::Unsuitable { disk: disk.clone(), why };
        if overwrite {
            return Err(unsuitable(String::from(
                "it is the boot media, which is never overwritten; a datastore goes into its free space (leave \"overwrite\" false)",
            )));
        }
        let dev = self.disks[i].dev.as_mut();
        let bs = dev.block_size();
        if bs != 512 && bs != 4096 {
            return Err(unsuitable(format!("{bs}-byte blocks (a datastore needs 512 or 4096)")));
        }
        let failed =
            |what: &str, e: &dyn fmt::Display| DisksError::Failed(format!("disk {disk}: {what}: {e}"));
        let mut table = gpt::read_gpt(dev).map_err(|e| failed("reading the partition table", &e))?;
        // A stick written with `dd` carries the image's table, whose usable range ends where the
        // image did; the table written here covers the whole device.
        if let Some((_, last)) = gpt::usable_range(bs, dev.num_blocks()) {
            table.last_usable_lba = table.last_usable_lba.max(last);
        }
        if table.partitions.len() >= gpt::ENTRY_COUNT as usize {
            return Err(unsuitable(String::from("its partition table is full")));
        }
        let Some((first, last)) = gpt::largest_free_range(&table, ALIGN / bs as u64) else {
            return Err(unsuitable(String::from("it is the boot media, and has no free space")));
        };
        let bytes = (last + 1 - first).saturating_mul(bs as u64);
        if bytes < MIN_BOOT_MEDIA_DATASTORE {
            return Err(unsuitable(format!(
                "it is the boot media, and its largest free space is {} MiB (a datastore there needs {} MiB)",
                bytes >> 20,
                MIN_BOOT_MEDIA_DATASTORE >> 20
            )));
        }
        let keep: Vec<NewPartition<'_>> = table.partitions.iter().map(gpt::Partition::to_new).collect();
        self.make_datastore(name, i, (first, last), Some(table.disk_guid), &keep)
    }

    /// Renames a datastore (its label on the disk).
    pub fn rename(&mut self, name: &str, new: &str) -> Result<DatastoreReport, DisksError> {
        check_label(new).map_err(DisksError::BadName)?;
        if name != new && self.mounted.iter().any(|m| m.name == new) {
            return Err(DisksError::NameTaken(new.to_string()));
        }
        let k = self.index(name)?;
        // The VMs refer to their files by the datastore's name.
        let holders = self.mounted[k].ds.holders();
        if name != new && !holders.is_empty() {
            return Err(DisksError::Busy {
                name: name.to_string(),
                why: format!(
                    "it holds files of {} (VMs name their files by the datastore's name)",
                    holders.join(", ")
                ),
            });
        }
        let (m, disks) = (&mut self.mounted[k], &mut self.disks);
        let mut w = Window::new(disks[m.disk].dev.as_mut(), m.first_lba, m.blocks)
            .ok_or_else(|| DisksError::Failed(String::from("the partition left the disk")))?;
        m.ds.set_label(new).map_err(|e| DisksError::BadName(e.to_string()))?;
        m.ds.commit(&mut w).map_err(|e| DisksError::Failed(format!("datastore {name:?}: {e}")))?;
        m.name = new.to_string();
        let i = m.disk;
        self.used[i] = self.classify(i);
        Ok(self.datastore(new).unwrap_or_else(|| unreachable_report(new)))
    }

    /// Removes a datastore: its partition leaves the table and its superblocks are erased. `in_use`
    /// says why it must stay (the VMs on it), if anything.
    pub fn remove(&mut self, name: &str, in_use: Option<String>) -> Result<(), DisksError> {
        let k = self.index(name)?;
        let holders = self.mounted[k].ds.holders();
        let in_use = in_use
            .or_else(|| (!holders.is_empty()).then(|| format!("it holds files of {}", holders.join(", "))));
        if let Some(why) = in_use {
            return Err(DisksError::Busy { name: name.to_string(), why });
        }
        let (disk_index, first_lba) = (self.mounted[k].disk, self.mounted[k].first_lba);
        let disk = &mut self.disks[disk_index];
        let failed =
            |what: &str, e: &dyn fmt::Display| DisksError::Failed(format!("disk {}: {what}: {e}", disk.name));
        let dev = disk.dev.as_mut();
        let table = gpt::read_gpt(dev).map_err(|e| failed("reading the partition table", &e))?;
        let keep: Vec<NewPartition<'_>> = table
            .partitions
            .iter()
            .filter(|p| p.first_lba != first_lba)
            .map(gpt::Partition::to_new)
            .collect();
        gpt::write_gpt(dev, table.disk_guid, &keep).map_err(|e| failed("writing the partition table", &e))?;
        let bs = dev.block_size() as usize;
        let zeros = vec![0u8; (8192usize).div_ceil(bs) * bs];
        dev.write_blocks(first_lba, &zeros).map_err(|e| failed("erasing the superblocks", &e))?;
        dev.flush().map_err(|e| failed("flushing", &e))?;
        // Unmounted only now: a failed write leaves it listed (and still on the disk).
        self.mounted.remove(k);
        self.used[disk_index] = self.classify(disk_index);
        Ok(())
    }

    fn index(&self, name: &str) -> Result<usize, DisksError> {
        self.mounted
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| DisksError::NoSuchDatastore(name.to_string()))
    }

    /// Runs `f` on a mounted datastore and its partition.
    pub fn with<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Datastore, &mut dyn BlockDevice) -> Result<T, DsError>,
    ) -> Result<Result<T, DsError>, DisksError> {
        let k = self.index(name)?;
        self.with_index(k, f)
    }

    /// Lets go of every file `by` holds on every datastore ([`Datastore::hold`]).
    pub fn release_held(&mut self, by: &str) {
        for m in &mut self.mounted {
            m.ds.release_held(by);
        }
    }

    /// The mount of the datastore named `name` now (see [`HostDisks::with_mount`]).
    pub fn mount_id(&self, name: &str) -> Option<MountId> {
        self.mounted.iter().find(|m| m.name == name).map(|m| m.mount_id)
    }

    /// Runs `f` on the datastore of mount `id`, whatever it is called now; `None` when it was
    /// removed since.
    pub fn with_mount<T>(
        &mut self,
        id: MountId,
        f: impl FnOnce(&mut Datastore, &mut dyn BlockDevice) -> Result<T, DsError>,
    ) -> Option<Result<Result<T, DsError>, DisksError>> {
        let k = self.mounted.iter().position(|m| m.mount_id == id)?;
        Some(self.with_index(k, f))
    }

    fn with_index<T>(
        &mut self,
        k: usize,
        f: impl FnOnce(&mut Datastore, &mut dyn BlockDevice) -> Result<T, DsError>,
    ) -> Result<Result<T, DsError>, DisksError> {
        let (m, disks) = (&mut self.mounted[k], &mut self.disks);
        let mut w = Window::new(disks[m.disk].dev.as_mut(), m.first_lba, m.blocks)
            .ok_or_else(|| DisksError::Failed(String::from("the partition left the disk")))?;
        Ok(f(&mut m.ds, &mut w))
    }
}

/// A report for a datastore that was just made or renamed (always found; this keeps the code total).
fn unreachable_report(name: &str) -> DatastoreReport {
    DatastoreReport {
        name: name.to_string(),
        disk: String::new(),
        uuid: String::new(),
        capacity_bytes: 0,
        free_bytes: 0,
        provisioned_bytes: 0,
        block_size: 0,
    }
}

/// The offset of the first non-zero byte in the first or last MiB of a disk without a partition
/// table (where partition tables, file systems and volume labels live).
fn first_data(dev: &mut dyn BlockDevice) -> Result<Option<u64>, String> {
    let bs = dev.block_size() as u64;
    let blocks = dev.num_blocks();
    if bs == 0 {
        return Err(String::from("zero block size"));
    }
    let n = (ALIGN / bs).max(1).min(blocks);
    let mut buf = vec![0u8; (n * bs) as usize];
    for start in [0, blocks - n] {
        dev.read_blocks(start, &mut buf).map_err(|e| e.to_string())?;
        if let Some(k) = buf.iter().position(|&b| b != 0) {
            return Ok(Some(start * bs + k as u64));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
