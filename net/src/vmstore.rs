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
use ember_storage::vmdef::{DsPath, VmDefinition, MAX_DISKS, QCOW2_MAGIC};
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

/// Every NIC's port group exists on this host (for VMs).
fn check_portgroups(def: &VmDefinition) -> Result<(), VmStoreError> {
    for (i, n) in def.nics.iter().enumerate() {
        crate::hostnet::vm_portgroup(&n.portgroup)
            .map_err(|e| invalid(&format!("nics[{i}].portgroup"), e))?;
    }
    Ok(())
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
    check_portgroups(&def)?;
    ember_storage::datastore::check_label(&datastore).map_err(|e| invalid("datastore", e))?;
    let path = definition_path(&datastore, name);
    let folder = path.parent();
    check_files(disks, &folder, &def, &new_disks, &[], &[])?;
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

/// Changes a stopped VM's definition from the body of `PUT /api/v1/vms/{name}`: any of `vcpus`,
/// `memory_mib`, `kernel`, `initrd`, `cmdline`, `autostart`, `console_port`, and `disks`, the new
/// list of disks: `{"size_gib": n}` a new thin disk in the VM's folder, `{"file": ...}` a disk kept
/// or attached, with `"size_gib"` to grow it (a disk is never shrunk); a disk left out is detached
/// (its file stays). The new definition replaces the old one in one datastore commit; on any
/// error nothing changes.
pub fn edit(
    disks: &mut HostDisks,
    vm: &StoredVm,
    body: &Map<String, Value>,
    now: u64,
) -> Result<StoredVm, VmStoreError> {
    const EDITABLE: [&str; 9] =
        ["vcpus", "memory_mib", "kernel", "initrd", "cmdline", "autostart", "console_port", "disks", "nics"];
    if let Some(k) = body.keys().find(|k| !EDITABLE.contains(&k.as_str())) {
        let shown: String = k.chars().take(40).collect();
        let problem = if k == "name" {
            String::from("a VM's name cannot change")
        } else {
            format!("cannot be changed (expected {})", EDITABLE.join(", "))
        };
        return Err(invalid(&shown, problem));
    }
    if vm.def.kernel.is_empty() {
        // An inventory entry whose definition could not be read (see `VmService::remove`).
        return Err(VmStoreError::Conflict(format!(
            "{}: the definition cannot be read; unregister the VM and register it again once it is fixed",
            vm.path
        )));
    }
    let folder = vm.path.parent();
    let Value::Object(mut merged) = vm.def.to_json() else {
        return Err(VmStoreError::Failed(String::from("the stored definition is not an object")));
    };
    // (file name in the folder, size) of new disks, (path, size) of disks to grow.
    let mut new_disks: Vec<(String, u64)> = Vec::new();
    let mut grow: Vec<(DsPath, u64, String)> = Vec::new();
    for (k, v) in body {
        if k != "disks" {
            merged.insert(k.clone(), v.clone());
            continue;
        }
        let list = v.as_array().ok_or_else(|| invalid("disks", "expected a list"))?;
        if list.len() > MAX_DISKS {
            return Err(invalid("disks", format!("at most {MAX_DISKS} disks")));
        }
        let mut out = Vec::new();
        for (i, d) in list.iter().enumerate() {
            let at = |f: &str| format!("disks[{i}].{f}");
            let obj = d.as_object().ok_or_else(|| invalid(&format!("disks[{i}]"), "expected an object"))?;
            let size = match obj.get("size_gib") {
                None => None,
                Some(g) => Some(
                    g.as_u64().filter(|g| (1..=MAX_DISK_GIB).contains(g)).ok_or_else(|| {
                        invalid(&at("size_gib"), format!("expected whole GiB from 1 to {MAX_DISK_GIB}"))
                    })? << 30,
                ),
            };
            let mut entry = obj.clone();
            entry.remove("size_gib");
            match (obj.get("file").and_then(Value::as_str), size) {
                (None, None) => {
                    return Err(invalid(&at("file"), "missing (a path, or size_gib for a new disk)"))
                }
                (None, Some(bytes)) => {
                    if obj.len() != 1 {
                        return Err(invalid(&format!("disks[{i}]"), "a new disk has only size_gib"));
                    }
                    let mut taken = |n: &String| {
                        vm.def.disks.iter().any(|d| &d.file == n)
                            || new_disks.iter().any(|(f, _)| f == n)
                            || disks
                                .with(&folder.datastore, |ds, _| ds.stat(&format!("{}/{n}", folder.path)))
                                .is_ok_and(|r| r.is_ok())
                    };
                    let Some(file) = (0..64).map(|k| disk_name(&vm.def.name, k)).find(|n| !taken(n)) else {
                        return Err(invalid(
                            &format!("disks[{i}]"),
                            "no free disk file name in the VM's folder",
                        ));
                    };
                    entry.insert(String::from("file"), Value::from(file.clone()));
                    new_disks.push((file, bytes));
                }
                (Some(file), Some(bytes)) => {
                    if file.starts_with('[') {
                        return Err(invalid(
                            &at("size_gib"),
                            "only disks in the VM's own folder can be grown",
                        ));
                    }
                    let p = folder.resolve(file).map_err(|e| invalid(&at("file"), e))?;
                    grow.push((p, bytes, at("size_gib")));
                }
                (Some(_), None) => {}
            }
            out.push(Value::Object(entry));
        }
        merged.insert(String::from("disks"), Value::Array(out));
    }
    let text = Value::Object(merged).to_string();
    let def = VmDefinition::parse("definition", text.as_bytes())
        .map_err(|e| VmStoreError::Invalid { field: e.field, problem: e.problem })?;
    check_portgroups(&def)?;
    let attached: Vec<&str> = vm.def.disks.iter().map(|d| d.file.as_str()).collect();
    check_files(disks, &folder, &def, &new_disks, &grow, &attached)?;
    let temp = format!("{}.new", vm.path.path);
    let r = disks
        .with(&folder.datastore, |ds, dev| {
            // What was written before (other VMs' disks) is committed first: undoing a failed
            // change below must not undo it.
            ds.commit(dev)?;
            let r = (|| {
                for (file, size) in &new_disks {
                    let id = ds.create(&format!("{}/{file}", folder.path), now)?;
                    ds.set_len(dev, id, *size, now)?;
                }
                for (p, size, _) in &grow {
                    let e = ds.stat(&p.path)?;
                    ds.set_len(dev, e.id, *size, now)?;
                }
                if ds.stat(&temp).is_ok() {
                    ds.remove(&temp)?;
                }
                let id = ds.create(&temp, now)?;
                let bytes = serde_json::to_vec_pretty(&def.to_json()).unwrap_or_default();
                ds.write(dev, id, 0, &bytes, now)?;
                ds.remove(&vm.path.path)?;
                ds.rename(&temp, &vm.path.path, now)?;
                ds.commit(dev)
            })();
            if r.is_err() {
                // Back to the committed state: nothing of the change stays.
                ds.reload(dev)?;
            }
            r
        })
        .map_err(from_disks)?;
    r.map_err(|e| from_ds(&vm.path, e))?;
    Ok(StoredVm { path: vm.path.clone(), def })
}

/// Checks the files definition `def` (in `folder`) refers to: each exists and is a file, except
/// the new disks; a disk is a whole number of 512-byte sectors and no other VM holds it; a disk
/// being attached (not in `attached`, the VM's disks so far) is not a qcow2 image (a guest may
/// well write a qcow2 header onto a disk it has); a disk in `grow` is not shrunk.
fn check_files(
    disks: &mut HostDisks,
    folder: &DsPath,
    def: &VmDefinition,
    new_disks: &[(String, u64)],
    grow: &[(DsPath, u64, String)],
    attached: &[&str],
) -> Result<(), VmStoreError> {
    let refs = core::iter::once((String::from("kernel"), def.kernel.as_str(), false))
        .chain(def.initrd.as_deref().map(|i| (String::from("initrd"), i, false)))
        .chain(def.disks.iter().enumerate().map(|(i, d)| (format!("disks[{i}].file"), d.file.as_str(), true)))
        .filter(|(_, f, _)| !new_disks.iter().any(|(n, _)| n == f));
    for (field, file, is_disk) in refs {
        let p = folder.resolve(file).map_err(|e| invalid(&field, e))?;
        let attaching = is_disk && !attached.contains(&file);
        let found = disks.with(&p.datastore, |ds, dev| {
            let e = ds.stat(&p.path)?;
            let mut head = [0u8; 4];
            if attaching && e.kind == InodeKind::File {
                ds.read(dev, e.id, 0, &mut head)?;
            }
            Ok((e, ds.holder(&p.path).map(String::from), head))
        });
        let (size, holder) = match found {
            Ok(Ok((_, _, head))) if attaching && head == QCOW2_MAGIC => {
                return Err(invalid(
                    &field,
                    format!("{p} is a qcow2 image; Ember's virtual disks are raw files: copy it in with `ember-image datastore put`, which converts qcow2, or convert it first (qemu-img convert -O raw)"),
                ))
            }
            Ok(Ok((e, h, _))) if e.kind == InodeKind::File => (e.size, h),
            Ok(Ok(_)) => return Err(invalid(&field, format!("{p} is a directory"))),
            Ok(Err(DsError::NotFound(_))) => return Err(invalid(&field, format!("{p}: no such file"))),
            Ok(Err(e)) => return Err(from_ds(&p, e)),
            Err(e) => return Err(invalid(&field, e.to_string())),
        };
        if let Some((_, bytes, at)) = grow.iter().find(|(g, _, _)| *g == p) {
            if *bytes < size {
                return Err(invalid(at, format!("{p} has {size} bytes; a disk is grown, never shrunk")));
            }
        } else if is_disk && (size == 0 || size % 512 != 0) {
            return Err(invalid(
                &field,
                format!("{p} has {size} bytes, not a whole number of 512-byte sectors"),
            ));
        }
        if let (true, Some(h)) = (is_disk, holder) {
            return Err(VmStoreError::Conflict(format!("{field}: {p} is in use by {h}")));
        }
    }
    Ok(())
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

/// Reads a whole file of at most `max` bytes (into the heap).
pub fn read_file(disks: &mut HostDisks, path: &DsPath, max: usize) -> Result<Vec<u8>, VmStoreError> {
    read_file_into(disks, path, max, |n| Some(alloc::vec![0u8; n]))
}

/// Reads a whole file of at most `max` bytes into the buffer `alloc` gives for its size (`None`:
/// no memory for it).
pub fn read_file_into<B: core::ops::DerefMut<Target = [u8]>>(
    disks: &mut HostDisks,
    path: &DsPath,
    max: usize,
    alloc: impl FnOnce(usize) -> Option<B>,
) -> Result<B, VmStoreError> {
    let r = disks.with(&path.datastore, |ds, dev| {
        let e = ds.stat(&path.path)?;
        if e.kind != InodeKind::File {
            return Err(DsError::IsADirectory(path.path.clone()));
        }
        if e.size > max as u64 {
            return Err(DsError::TooLarge(e.size));
        }
        let Some(mut buf) = alloc(e.size as usize) else {
            return Err(DsError::NoSpace { needed_bytes: e.size, free_bytes: 0 });
        };
        ds.read(dev, e.id, 0, &mut buf)?;
        Ok(buf)
    });
    match r {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(DsError::TooLarge(n))) => {
            Err(VmStoreError::Failed(format!("{path}: {n} bytes, more than the {max} this file may have")))
        }
        Ok(Err(DsError::NoSpace { needed_bytes, .. })) => Err(VmStoreError::Failed(format!(
            "{path}: not enough free host memory to read its {needed_bytes} bytes"
        ))),
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
/// stay -, then its folder when nothing else is in it, in one commit (what could be removed is
/// committed even when something could not). Its files must have been released.
pub fn delete(disks: &mut HostDisks, vm: &StoredVm, delete_disks: bool) -> Result<(), VmStoreError> {
    let folder = vm.path.parent();
    let mut files = alloc::vec![vm.path.path.clone()];
    if delete_disks {
        for d in &vm.def.disks {
            if let (false, Ok(p)) = (d.file.starts_with('['), folder.resolve(&d.file)) {
                files.push(p.path);
            }
        }
    }
    let r = disks.with(&folder.datastore, |ds, dev| {
        let mut first = None;
        for f in &files {
            match ds.remove(f) {
                Ok(()) | Err(DsError::NotFound(_)) => {}
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        if !folder.path.is_empty() && ds.list(&folder.path).is_ok_and(|l| l.is_empty()) {
            if let Err(e) = ds.remove(&folder.path) {
                first.get_or_insert(e);
            }
        }
        ds.commit(dev)?;
        first.map_or(Ok(()), Err)
    });
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(from_ds(&folder, e)),
        Err(e) => Err(from_disks(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_storage::block::MemDisk;
    use ember_storage::persist::Disk;

    /// A host with datastore "ds1" (64 MiB) holding boot/vmlinuz and boot/initrd.
    fn host() -> HostDisks {
        let disks = alloc::vec![Disk::new(
            "vda".into(),
            "virtio-blk",
            alloc::boxed::Box::new(MemDisk::new(512, 64 * 2048))
        )];
        let mut h = HostDisks::scan(disks, None, 5, &mut Vec::new());
        h.create("ds1", "vda", false).unwrap();
        h.with("ds1", |ds, dev| {
            ds.mkdir("boot", 1)?;
            for f in ["boot/vmlinuz", "boot/initrd"] {
                let id = ds.create(f, 1)?;
                ds.write(dev, id, 0, b"bytes", 1)?;
            }
            let id = ds.create("cloud.qcow2", 1)?;
            ds.write(dev, id, 0, &[b'Q', b'F', b'I', 0xfb, 0, 0, 0, 3], 1)?;
            ds.set_len(dev, id, 1 << 20, 1)?;
            ds.commit(dev)
        })
        .unwrap()
        .unwrap();
        h
    }

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn base() -> Value {
        json!({"name": "web", "vcpus": 1, "memory_mib": 64, "kernel": "[ds1] boot/vmlinuz",
               "initrd": "[ds1] boot/initrd", "disks": [{"size_gib": 64}, {"size_gib": 1}]})
    }

    fn entry(h: &mut HostDisks, path: &str) -> Option<ember_storage::datastore::Entry> {
        h.with("ds1", |ds, _| ds.stat(path)).unwrap().ok()
    }

    #[test]
    fn a_vm_folder_is_made_with_thin_disks_and_read_back() {
        let mut h = host();
        let vm = create(&mut h, &body(base()), 7).unwrap();
        assert_eq!(vm.path.to_string(), "[ds1] web/web.json");
        assert_eq!(
            vm.def.disks.iter().map(|d| d.file.as_str()).collect::<Vec<_>>(),
            ["web.img", "web_1.img"]
        );
        let d = entry(&mut h, "web/web.img").unwrap();
        assert_eq!((d.size, d.allocated), (64 << 30, 0), "thin");
        assert_eq!(load(&mut h, &vm.path).unwrap(), vm.def);
        // Survives a remount (committed).
        let again = h.with("ds1", |ds, dev| ds.reload(dev)).unwrap();
        assert!(again.is_ok() && entry(&mut h, "web/web_1.img").is_some());
        assert!(
            matches!(create(&mut h, &body(base()), 8), Err(VmStoreError::Conflict(_))),
            "the folder exists"
        );
        let open = open_disks(&mut h, &vm).unwrap();
        assert_eq!((open.len(), open[0].size, open[1].size), (2, 64 << 30, 1 << 30));
        let e = h.with("ds1", |ds, _| ds.remove("web/web.img")).unwrap().unwrap_err();
        assert_eq!(e.to_string(), "web/web.img is in use by VM web");
        h.release_held(&holder("web"));
        delete(&mut h, &vm, true).unwrap();
        assert!(entry(&mut h, "web").is_none(), "the folder is gone with its disks");
    }

    #[test]
    fn bad_requests_name_the_field_and_make_nothing() {
        let mut h = host();
        let cases: &[(Value, &str)] = &[
            (json!({"kernel": "[ds1] boot/none"}), "kernel"),
            (json!({"kernel": "[ds1] ../boot/vmlinuz"}), "kernel"),
            (json!({"kernel": "boot/vmlinuz"}), "kernel"),
            (json!({"initrd": "[ds1] boot"}), "initrd"),
            (json!({"disks": [{"size_gib": 0}]}), "disks[0].size_gib"),
            (json!({"disks": [{"size_gib": 1, "readonly": true}]}), "disks[0].readonly"),
            (json!({"disks": [{"file": "[ds1] nope.img"}]}), "disks[0].file"),
            (json!({"disks": [{"file": "[ds1] cloud.qcow2"}]}), "disks[0].file"),
            (json!({"disks": [7]}), "disks[0]"),
            (json!({"memory_mib": 1}), "memory_mib"),
            (json!({"name": "a b"}), "name"),
            (json!({"datastore": "[x]"}), "datastore"),
            (json!({"colour": "red"}), "colour"),
        ];
        for (change, field) in cases {
            let mut b = base();
            for (k, v) in change.as_object().unwrap() {
                b[k] = v.clone();
            }
            match create(&mut h, &body(b.clone()), 1) {
                Err(VmStoreError::Invalid { field: f, .. }) => assert_eq!(f, *field, "{b}"),
                other => panic!("{b}: {other:?}"),
            }
        }
        let mut b = base();
        b["datastore"] = json!("nope");
        assert!(matches!(create(&mut h, &body(b), 1), Err(VmStoreError::NotFound(_))));
        assert_eq!(
            h.with("ds1", |ds, _| ds.list("")).unwrap().unwrap().len(),
            2,
            "only boot/ and cloud.qcow2 are there"
        );
    }

    #[test]
    fn a_stopped_vm_is_edited_grown_and_given_disks() {
        let mut h = host();
        let vm = create(&mut h, &body(base()), 7).unwrap();
        let change = json!({"memory_mib": 128, "cmdline": "quiet",
            "disks": [{"file": "web.img", "size_gib": 100}, {"size_gib": 2}]});
        let new = edit(&mut h, &vm, &body(change), 8).unwrap();
        assert_eq!((new.def.memory_mib, new.def.cmdline.as_str()), (128, "quiet"));
        assert_eq!(
            new.def.disks.iter().map(|d| d.file.as_str()).collect::<Vec<_>>(),
            ["web.img", "web_2.img"]
        );
        assert_eq!(entry(&mut h, "web/web.img").unwrap().size, 100 << 30, "grown");
        assert_eq!(entry(&mut h, "web/web_1.img").unwrap().size, 1 << 30, "detached, kept");
        assert_eq!(entry(&mut h, "web/web_2.img").unwrap().size, 2 << 30, "a new name");
        assert_eq!(load(&mut h, &vm.path).unwrap(), new.def);
        // A guest that writes a qcow2 header onto its own disk does not block edits; attaching a
        // qcow2 file is refused.
        h.with("ds1", |ds, dev| {
            let id = ds.stat("web/web.img")?.id;
            ds.write(dev, id, 0, &QCOW2_MAGIC, 8)?;
            ds.commit(dev)
        })
        .unwrap()
        .unwrap();
        let new = edit(&mut h, &new, &body(json!({"memory_mib": 96})), 8).unwrap();
        let e = edit(
            &mut h,
            &new,
            &body(json!({"disks": [{"file": "web.img"}, {"file": "[ds1] cloud.qcow2"}]})),
            8,
        );
        assert!(
            matches!(e, Err(VmStoreError::Invalid { ref field, .. }) if field == "disks[1].file"),
            "{e:?}"
        );
        // Refusals change nothing.
        for (change, field) in [
            (json!({"name": "other"}), "name"),
            (json!({"disks": [{"file": "web.img", "size_gib": 1}]}), "disks[0].size_gib"),
            (json!({"vcpus": 0}), "vcpus"),
            (json!({"kernel": "[ds1] boot/none"}), "kernel"),
        ] {
            match edit(&mut h, &new, &body(change.clone()), 9) {
                Err(VmStoreError::Invalid { field: f, .. }) => assert_eq!(f, field, "{change}"),
                other => panic!("{change}: {other:?}"),
            }
        }
        assert_eq!(load(&mut h, &vm.path).unwrap(), new.def);
        assert!(entry(&mut h, "web/web.json.new").is_none());
    }

    /// What the review found: a failed edit keeps another VM's uncommitted writes; another VM's
    /// files are neither grown nor attached; a file that is no whole number of sectors is no disk.
    #[test]
    fn an_edit_never_touches_another_vms_files_or_writes() {
        let mut h = host();
        let a = create(&mut h, &body(base()), 7).unwrap();
        let mut b = base();
        b["name"] = json!("db");
        let b = create(&mut h, &body(b), 7).unwrap();
        let open_b = open_disks(&mut h, &b).unwrap();
        // VM db's guest writes (served, not committed yet).
        h.with("ds1", |ds, dev| ds.write(dev, open_b[0].inode, 5 << 20, b"synced?", 9)).unwrap().unwrap();
        // An edit of web that fails late (its temp name is a directory).
        h.with("ds1", |ds, _| ds.mkdir_all("web/web.json.new/x", 9)).unwrap().unwrap();
        let e = edit(&mut h, &a, &body(json!({"memory_mib": 96})), 10).unwrap_err();
        assert!(matches!(e, VmStoreError::Conflict(_) | VmStoreError::Failed(_)), "{e:?}");
        let mut got = [0u8; 7];
        h.with("ds1", |ds, dev| ds.read(dev, open_b[0].inode, 5 << 20, &mut got)).unwrap().unwrap();
        assert_eq!(&got, b"synced?", "db's write survived web's failed edit");
        assert!(
            matches!(h.with("ds1", |ds, _| ds.remove("db/db.img")).unwrap(), Err(DsError::Busy { .. })),
            "db's holds survived too"
        );
        h.with("ds1", |ds, _| ds.remove("web/web.json.new/x").and_then(|()| ds.remove("web/web.json.new")))
            .unwrap()
            .unwrap();
        for (change, field) in [
            (json!({"disks": [{"file": "[ds1] db/db.json", "size_gib": 1}]}), "disks[0].size_gib"),
            (json!({"disks": [{"file": "[ds1] boot/vmlinuz"}]}), "disks[0].file"),
        ] {
            match edit(&mut h, &a, &body(change.clone()), 11) {
                Err(VmStoreError::Invalid { field: f, .. }) => assert_eq!(f, field, "{change}"),
                other => panic!("{change}: {other:?}"),
            }
        }
        let e = edit(&mut h, &a, &body(json!({"disks": [{"file": "[ds1] db/db.img"}]})), 11).unwrap_err();
        assert!(matches!(&e, VmStoreError::Conflict(m) if m.contains("in use by VM db")), "{e:?}");
        let mut c = base();
        c["name"] = json!("c");
        c["disks"] = json!([{"file": "[ds1] db/db.img"}]);
        assert!(matches!(create(&mut h, &body(c), 12), Err(VmStoreError::Conflict(_))));
        assert_eq!(load(&mut h, &b.path).unwrap(), b.def, "db's definition is untouched");
        // Holding files pins the datastore's name and disk.
        assert!(matches!(h.rename("ds1", "ds2"), Err(DisksError::Busy { .. })));
        assert!(matches!(h.create("new", "vda", true), Err(DisksError::Busy { .. })));
    }
}
