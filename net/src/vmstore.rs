//! VMs on datastores: each VM is a folder on a datastore holding its definition
//! (`[datastore1] web/web.json`, the format of `ember_storage::vmdef`, as ESXi keeps a `.vmx`)
//! and its thin virtual disks (`web.img`, `web_1.img`, ...). The host's inventory
//! (`HostConfig::vms`) lists the definitions registered with it.
//!
//! This module does the datastore side: making a VM's folder from a `POST /api/v1/vms` body
//! ([`create`]), reading a definition back ([`load`]) and the files a start needs ([`read_file`],
//! [`open_disks`]: the disks held so that nothing removes or moves them while the VM is
//! registered), and deleting a VM's files ([`delete`]).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ember_storage::datastore::{DsError, InodeKind, MAX_FILE_BYTES};
use ember_storage::disks::{DisksError, HostDisks, MountId};
use ember_storage::vmdef::{DsPath, VmDefinition, MAX_DISKS};
use serde_json::{json, Map, Value};

/// Largest definition file read back.
const MAX_DEFINITION_BYTES: usize = 64 * 1024;
/// Largest new thin disk, GiB (the datastore's file size limit).
pub const MAX_DISK_GIB: u64 = MAX_FILE_BYTES >> 30;

/// Why a VM could not be made or used; the text names the field or file at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmStoreError {
    /// The request is wrong: the field and the problem.
    Invalid { field: String, problem: String },
    /// A datastore or file named does not exist.
    NotFound(String),
    /// The name or folder is taken, or a file is in use.
    Conflict(String),
    /// The datastore refused or failed.
    Failed(String),
}

impl core::fmt::Display for VmStoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VmStoreError::Invalid { field, problem } => write!(f, "{field}: {problem}"),
            VmStoreError::NotFound(m) | VmStoreError::Conflict(m) | VmStoreError::Failed(m) => f.write_str(m),
        }
    }
}

fn invalid(field: &str, problem: impl Into<String>) -> VmStoreError {
    VmStoreError::Invalid { field: field.to_string(), problem: problem.into() }
}

fn from_disks(e: DisksError) -> VmStoreError {
    match e {
        DisksError::NoSuchDatastore(_) => VmStoreError::NotFound(e.to_string()),
        e => VmStoreError::Failed(e.to_string()),
    }
}

fn from_ds(path: &DsPath, e: DsError) -> VmStoreError {
    match e {
        DsError::NotFound(_) => VmStoreError::NotFound(format!("{path}: no such file")),
        DsError::Exists(_) | DsError::Busy { .. } => VmStoreError::Conflict(format!("{path}: {e}")),
        e => VmStoreError::Failed(format!("{path}: {e}")),
    }
}

/// A VM on a datastore: where its definition is, and the definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVm {
    pub path: DsPath,
    pub def: VmDefinition,
}

/// The definition file of VM `name` in its folder on `datastore`.
pub fn definition_path(datastore: &str, name: &str) -> DsPath {
    DsPath { datastore: datastore.to_string(), path: format!("{name}/{name}.json") }
}

/// The file name of the `i`th new disk of VM `name` (`web.img`, `web_1.img`, ...).
fn disk_name(name: &str, i: usize) -> String {
    if i == 0 {
        format!("{name}.img")
    } else {
        format!("{name}_{i}.img")
    }
}

/// Makes a VM's folder from the body of `POST /api/v1/vms`: `{"name", "vcpus", "memory_mib",
/// "kernel", "initrd", "cmdline", "autostart", "console_port", "datastore", "disks": [{"size_gib":
/// 64} | {"file": "[datastore1] dir/disk.img", "readonly": false}]}`. The folder is `name/` on
/// `datastore` (default: the kernel's datastore); a disk with `size_gib` is made there as a thin
/// file, the others must exist, as must the kernel and initrd. Everything is checked before the
/// folder is made; if making it fails part way, what was made is removed again.
pub fn create(disks: &mut HostDisks, body: &Map<String, Value>, now: u64) -> Result<StoredVm, VmStoreError> {
    let name =
        body.get("name").and_then(Value::as_str).ok_or_else(|| invalid("name", "missing (a string)"))?;
    let kernel =
        body.get("kernel").and_then(Value::as_str).ok_or_else(|| invalid("kernel", "missing (a path)"))?;
    let datastore = match body.get("datastore") {
        None | Some(Value::Null) => {
            DsPath::parse(kernel)
                .map_err(|e| invalid("kernel", format!("{e} (or give \"datastore\")")))?
                .datastore
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid("datastore", "expected a datastore name")),
    };
    // The definition as it will be stored: new disks become files in the folder.
    let mut stored = body.clone();
    stored.remove("datastore");
    let mut new_disks: Vec<(String, u64)> = Vec::new();
    if let Some(list) = body.get("disks") {
        let list = list.as_array().ok_or_else(|| invalid("disks", "expected a list"))?;
        if list.len() > MAX_DISKS {
            return Err(invalid("disks", format!("at most {MAX_DISKS} disks")));
        }
        let mut out = Vec::new();
        for (i, d) in list.iter().enumerate() {
            let Some(obj) = d.as_object() else {
                return Err(invalid(
                    &format!("disks[{i}]"),
                    "expected {\"size_gib\": n} or {\"file\": \"[datastore] path\"}",
                ));
            };
            match obj.get("size_gib") {
                None => out.push(d.clone()),
                Some(v) => {
                    if let Some(k) = obj.keys().find(|k| *k != "size_gib") {
                        let shown: String = k.chars().take(40).collect();
                        return Err(invalid(&format!("disks[{i}].{shown}"), "a new disk has only size_gib"));
                    }
                    let gib = v.as_u64().filter(|g| (1..=MAX_DISK_GIB).contains(g)).ok_or_else(|| {
                        invalid(
                            &format!("disks[{i}].size_gib"),
                            format!("expected whole GiB from 1 to {MAX_DISK_GIB}"),
                        )
                    })?;
                    let file = disk_name(name, new_disks.len());
                    out.push(json!({ "file": file }));
                    new_disks.push((file, gib << 30));
                }
            }
        }
        stored.insert(String::from("disks"), Value::Array(out));
    }
    let text = Value::Object(stored).to_string();
    let def = VmDefinition::parse("definition", text.as_bytes())
        .map_err(|e| VmStoreError::Invalid { field: e.field, problem: e.problem })?;
    ember_storage::datastore::check_label(&datastore).map_err(|e| invalid("datastore", e))?;
    let path = definition_path(&datastore, name);
    let folder = path.parent();
    // Every file it refers to exists (except the new disks).
    let refs: Vec<(String, &str)> = core::iter::once((String::from("kernel"), def.kernel.as_str()))
        .chain(def.initrd.as_deref().map(|i| (String::from("initrd"), i)))
        .chain(def.disks.iter().enumerate().map(|(i, d)| (format!("disks[{i}].file"), d.file.as_str())))
        .filter(|(_, f)| !new_disks.iter().any(|(n, _)| n == f))
        .collect();
    for (field, file) in &refs {
        let p = folder.resolve(file).map_err(|e| invalid(field, e))?;
        let found = disks.with(&p.datastore, |ds, _| ds.stat(&p.path));
        match found {
            Ok(Ok(e)) if e.kind == InodeKind::File => {}
            Ok(Ok(_)) => return Err(invalid(field, format!("{p} is a directory"))),
            Ok(Err(_)) => return Err(invalid(field, format!("{p}: no such file"))),
            Err(e) => return Err(invalid(field, e.to_string())),
        }
    }
    let made = disks
        .with(&datastore, |ds, dev| {
            if ds.stat(&folder.path).is_ok() {
                return Err(DsError::Exists(folder.path.clone()));
            }
            let r = (|| {
                ds.mkdir(&folder.path, now)?;
                for (file, size) in &new_disks {
                    let id = ds.create(&format!("{}/{file}", folder.path), now)?;
                    ds.set_len(dev, id, *size, now)?;
                }
                let id = ds.create(&path.path, now)?;
                let bytes = serde_json::to_vec_pretty(&def.to_json()).unwrap_or_default();
                ds.write(dev, id, 0, &bytes, now)?;
                ds.commit(dev)
            })();
            if r.is_err() {
                // Nothing stays of a folder made part way (what was committed is removed again).
                remove_folder(ds, &folder.path);
                let _ = ds.commit(dev);
            }
            r
        })
        .map_err(from_disks)?;
    made.map_err(|e| match e {
        DsError::Exists(_) => VmStoreError::Conflict(format!("{folder} exists already")),
        e => from_ds(&folder, e),
    })?;
    Ok(StoredVm { path, def })
}

/// Removes a folder's files and the folder, as far as they can be (files held stay).
fn remove_folder(ds: &mut ember_storage::datastore::Datastore, folder: &str) {
    if let Ok(entries) = ds.list(folder) {
        for e in entries {
            let _ = ds.remove(&format!("{folder}/{}", e.name));
        }
    }
    let _ = ds.remove(folder);
}

/// Reads a whole file of at most `max` bytes.
pub fn read_file(disks: &mut HostDisks, path: &DsPath, max: usize) -> Result<Vec<u8>, VmStoreError> {
    let r = disks.with(&path.datastore, |ds, dev| {
        let e = ds.stat(&path.path)?;
        if e.kind != InodeKind::File {
            return Err(DsError::IsADirectory(path.path.clone()));
        }
        if e.size > max as u64 {
            return Err(DsError::TooLarge(e.size));
        }
        let mut buf = alloc::vec![0u8; e.size as usize];
        ds.read(dev, e.id, 0, &mut buf)?;
        Ok(buf)
    });
    match r {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(DsError::TooLarge(n))) => {
            Err(VmStoreError::Failed(format!("{path}: {n} bytes, more than the {max} this file may have")))
        }
        Ok(Err(e)) => Err(from_ds(path, e)),
        Err(e) => Err(from_disks(e)),
    }
}

/// Reads and checks the definition at `path`.
pub fn load(disks: &mut HostDisks, path: &DsPath) -> Result<VmDefinition, VmStoreError> {
    let bytes = read_file(disks, path, MAX_DEFINITION_BYTES)?;
    VmDefinition::parse(&path.to_string(), &bytes).map_err(|e| VmStoreError::Failed(e.to_string()))
}

/// A VM's disk file, held open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenDisk {
    pub path: DsPath,
    pub mount: MountId,
    pub inode: u64,
    pub size: u64,
    pub readonly: bool,
}

/// Who holds a VM's files (`Datastore::hold`).
pub fn holder(name: &str) -> String {
    format!("VM {name}")
}

/// Holds VM `vm`'s definition and disks (so they are neither removed nor moved while it is
/// registered) and returns its disks. On failure nothing stays held.
pub fn open_disks(disks: &mut HostDisks, vm: &StoredVm) -> Result<Vec<OpenDisk>, VmStoreError> {
    let by = holder(&vm.def.name);
    let r = (|| {
        let folder = vm.path.parent();
        hold(disks, &vm.path, &by)?;
        let mut out = Vec::new();
        for (i, d) in vm.def.disks.iter().enumerate() {
            let p = folder.resolve(&d.file).map_err(|e| invalid(&format!("disks[{i}].file"), e))?;
            let (mount, inode, size) = hold(disks, &p, &by)?;
            if size == 0 || size % 512 != 0 {
                return Err(VmStoreError::Failed(format!(
                    "{p}: {size} bytes is not a whole number of 512-byte sectors"
                )));
            }
            out.push(OpenDisk { path: p, mount, inode, size, readonly: d.readonly });
        }
        Ok(out)
    })();
    if r.is_err() {
        disks.release_held(&by);
    }
    r
}

fn hold(disks: &mut HostDisks, p: &DsPath, by: &str) -> Result<(MountId, u64, u64), VmStoreError> {
    let mount = disks
        .mount_id(&p.datastore)
        .ok_or_else(|| VmStoreError::NotFound(format!("{p}: no datastore named {:?}", p.datastore)))?;
    let r = disks.with(&p.datastore, |ds, _| {
        let e = ds.stat(&p.path)?;
        if e.kind != InodeKind::File {
            return Err(DsError::IsADirectory(p.path.clone()));
        }
        ds.hold(&p.path, by)?;
        Ok((e.id, e.size))
    });
    match r {
        Ok(Ok((inode, size))) => Ok((mount, inode, size)),
        Ok(Err(e)) => Err(from_ds(p, e)),
        Err(e) => Err(from_disks(e)),
    }
}

/// Deletes VM `vm`'s definition and (`delete_disks`) the disks in its folder - disks elsewhere
/// stay -, then its folder when nothing else is in it. Its files must have been released.
pub fn delete(disks: &mut HostDisks, vm: &StoredVm, delete_disks: bool) -> Result<(), VmStoreError> {
    let folder = vm.path.parent();
    let mut files = alloc::vec![vm.path.clone()];
    if delete_disks {
        for d in &vm.def.disks {
            if let Ok(p) = folder.resolve(&d.file) {
                if !d.file.starts_with('[') {
                    files.push(p);
                }
            }
        }
    }
    for p in &files {
        let r = disks.with(&p.datastore, |ds, _| ds.remove(&p.path));
        match r {
            Ok(Ok(())) | Ok(Err(DsError::NotFound(_))) => {}
            Ok(Err(e)) => return Err(from_ds(p, e)),
            Err(e) => return Err(from_disks(e)),
        }
    }
    let r = disks.with(&folder.datastore, |ds, dev| {
        if ds.list(&folder.path).is_ok_and(|l| l.is_empty()) {
            ds.remove(&folder.path)?;
        }
        ds.commit(dev)
    });
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(from_ds(&folder, e)),
        Err(e) => Err(from_disks(e)),
    }
}
