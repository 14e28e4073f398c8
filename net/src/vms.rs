//! The VM resources of the management API:
//! - `GET /api/v1/vms` - every VM: name, state, vCPUs, memory, uptime, why it last stopped.
//! - `GET /api/v1/vms/{name}` - one VM.
//! - `POST /api/v1/vms/{name}/start|stop|poweroff|reset` - lifecycle (`409` when the VM's state
//!   does not allow it, with the state in the message): `stop` presses the guest's ACPI power
//!   button (`202`; the host powers the VM off if it has not shut down within two minutes),
//!   `poweroff` ends it at once.
//! - `GET /api/v1/vms/{name}/console` - the last 64 KiB of its serial console, as text.
//! - `POST /api/v1/vms` - a new VM in its own folder on a datastore (`crate::vmstore::create`),
//!   added to the inventory; or `{"register": "[datastore1] web/web.json"}`: a VM folder already on
//!   a datastore added to the inventory.
//! - `DELETE /api/v1/vms/{name}?delete_disks=true|false` - a stopped VM leaves the inventory and
//!   its definition is deleted, with the disks in its folder when asked (default: kept);
//!   `POST /api/v1/vms/{name}/unregister` - it leaves the inventory, its files stay.
//!
//! The hypervisor is behind [`VmService`], which the appliance implements; tests use fakes.

use crate::host::HostState;
use crate::http::{Request, Response};
use crate::vmstore::{self, StoredVm, VmStoreError};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ember_storage::disks::HostDisks;
use ember_storage::vmdef::DsPath;
use serde_json::{json, Value};

pub use ember_vmm::runtime::{VmError, VmReport, VmState};

/// What the API shows of one VM: its definition's facts and the runtime's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSummary {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub autostart: bool,
    pub console_port: Option<u16>,
    /// Its NICs: port group, address (the one Ember made when the definition gives none), and
    /// whether it is connected at power on.
    pub nics: Vec<(String, [u8; 6], bool)>,
    /// Milliseconds since it started, while it runs.
    pub uptime_ms: Option<u64>,
    /// State, why it last stopped (or why it cannot run), exit and interrupt counts, resets, and
    /// the host memory held for it beyond its RAM (VMCB, permission maps, nested page tables,
    /// device state).
    pub run: VmReport,
}

/// A lifecycle request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAction {
    Start,
    /// Shut down: the guest's ACPI power button, and power off after a time-out.
    Stop,
    /// Power off at once.
    PowerOff,
    Reset,
}

/// The hypervisor as the API sees it.
pub trait VmService {
    fn list(&self, now_ms: u64) -> Vec<VmSummary>;
    fn console(&self, name: &str) -> Option<Vec<u8>>;
    /// `disks`: the host's datastores (a VM on one reads its kernel from there when it starts).
    fn act(
        &mut self,
        disks: &mut HostDisks,
        name: &str,
        action: VmAction,
        now_ms: u64,
    ) -> Result<(), VmError>;
    /// Adds a VM on a datastore (stored already) to the host: its files are held from now on.
    fn add(&mut self, _disks: &mut HostDisks, _vm: StoredVm) -> Result<(), VmError> {
        Err(VmError::Unavailable(String::from("this host runs no VMs")))
    }
    /// Takes a stopped VM on a datastore out of the host (its files are released); returns it.
    fn remove(&mut self, _disks: &mut HostDisks, _name: &str) -> Result<StoredVm, VmError> {
        Err(VmError::NotFound)
    }
    /// Starts no more VMs of the boot's autostart order (the host is shutting down).
    fn cancel_autostart(&mut self) {}
    /// The hypervisor's work on the management CPU, a bounded amount per call: the
    /// datastore-backed disks' requests, and guests that did not shut down in time powered off;
    /// true when disk requests were done. `now_ms`: the monotonic clock; `now`: the time of day
    /// (s since 1970).
    fn poll(&mut self, _disks: &mut HostDisks, _now_ms: u64, _now: u64) -> bool {
        false
    }
    /// Connects or disconnects NIC `index` of running VM `name` (its guest sees the link go up or
    /// down; a disconnected NIC's frames go nowhere). The definition's `connected` (at power on)
    /// is not changed.
    fn set_nic_connected(&mut self, _name: &str, _index: usize, _connected: bool) -> Result<(), VmError> {
        Err(VmError::Unavailable(String::from("this host runs no VMs")))
    }
    /// The running VMs' NICs on the host's virtual switch: plugged in when their VM starts, taken
    /// out when it stops, frames moved both ways (a bounded amount per call); true when frames
    /// moved.
    fn serve_network(&mut self, _net: &mut crate::hostnet::HostNetwork, _now_ms: u64) -> bool {
        false
    }
    /// The console's output after position `from` (bytes ever written), at most `max` bytes, and
    /// the position after it (for the TCP consoles, see `crate::mgmt`).
    fn console_since(&self, _name: &str, from: u64, _max: usize) -> (Vec<u8>, u64) {
        (Vec::new(), from)
    }
    /// Input for the VM's console (its COM1 receiver); returns how many bytes were taken.
    fn console_input(&mut self, _name: &str, _bytes: &[u8]) -> usize {
        0
    }
}

/// A host without VMs.
pub struct NoVms;

impl VmService for NoVms {
    fn list(&self, _: u64) -> Vec<VmSummary> {
        Vec::new()
    }
    fn console(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn act(&mut self, _: &mut HostDisks, _: &str, _: VmAction, _: u64) -> Result<(), VmError> {
        Err(VmError::NotFound)
    }
}

/// The order VMs start in at boot: the names of the configuration's `autostart` list first, in
/// its order (names of no VM are skipped), then the VMs whose definition says `autostart`, in
/// inventory order; `vms` are (name, its definition's `autostart`), in inventory order.
pub fn autostart_order(listed: &[String], vms: &[(String, bool)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in listed {
        if vms.iter().any(|(v, _)| v == n) && !out.contains(n) {
            out.push(n.clone());
        }
    }
    for (v, auto) in vms {
        if *auto && !out.contains(v) {
            out.push(v.clone());
        }
    }
    out
}

/// A VM as JSON.
pub fn vm_json(v: &VmSummary) -> Value {
    json!({
        "name": v.name,
        "state": v.run.state.as_str(),
        "vcpus": v.vcpus,
        "memory_mib": v.memory_mib,
        "autostart": v.autostart,
        "console_port": v.console_port,
        "nics": v.nics.iter().map(|(pg, mac, connected)| json!({
            "portgroup": pg,
            "mac": ember_storage::vmdef::mac_text(mac),
            "connected": connected,
        })).collect::<Vec<Value>>(),
        "uptime_seconds": v.uptime_ms.map(|m| m / 1000),
        "exit_reason": v.run.exit_reason,
        "exits": v.run.exits,
        "exit_counts": v.run.exit_counts.iter().map(|(k, n)| (String::from(*k), Value::from(*n))).collect::<serde_json::Map<String, Value>>(),
        "interrupts": v.run.interrupts,
        "resets": v.run.resets,
        "overhead_bytes": v.run.overhead_bytes,
    })
}

fn not_found(name: &str) -> Response {
    let shown: String = name.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
    Response::error(404, &format!("no VM named {shown}"))
}

fn not_allowed(allow: &str) -> Response {
    let mut r = Response::error(405, "method not allowed on this resource");
    r.headers.push(format!("Allow: {allow}"));
    r
}

/// Answers a request for `path` (below `/api/v1/vms`), or `None` if it is not a VM resource.
pub fn handle(
    vms: &mut dyn VmService,
    disks: &mut HostDisks,
    method: &str,
    path: &str,
    now_ms: u64,
) -> Option<Response> {
    let rest = path.strip_prefix("/api/v1/vms")?;
    if rest.is_empty() || rest == "/" {
        if method != "GET" {
            return Some(not_allowed("GET"));
        }
        let list: Vec<Value> = vms.list(now_ms).iter().map(vm_json).collect();
        return Some(Response::json(200, json!({ "vms": list }).to_string()));
    }
    let rest = rest.strip_prefix('/')?;
    let (name, sub) = match rest.split_once('/') {
        Some((n, s)) => (n, Some(s)),
        None => (rest, None),
    };
    let found = vms.list(now_ms).into_iter().find(|v| v.name == name);
    let Some(vm) = found else { return Some(not_found(name)) };
    let action = match sub {
        None => {
            return Some(if method == "GET" {
                Response::json(200, vm_json(&vm).to_string())
            } else {
                not_allowed("GET")
            })
        }
        Some("console") => {
            if method != "GET" {
                return Some(not_allowed("GET"));
            }
            let bytes = vms.console(name).unwrap_or_default();
            return Some(Response {
                status: 200,
                content_type: "text/plain; charset=utf-8",
                body: bytes,
                headers: Vec::new(),
            });
        }
        Some(nic) if nic.starts_with("nics/") => return Some(nic_link(vms, &vm, method, nic, now_ms)),
        Some("start") => VmAction::Start,
        Some("stop") => VmAction::Stop,
        Some("poweroff") => VmAction::PowerOff,
        Some("reset") => VmAction::Reset,
        Some(_) => {
            return Some(Response::error(
                404,
                "no such VM resource (console, start, stop, poweroff, reset, unregister, nics/{n}/connect, nics/{n}/disconnect)",
            ))
        }
    };
    if method != "POST" {
        return Some(not_allowed("POST"));
    }
    Some(match vms.act(disks, name, action, now_ms) {
        Ok(()) => {
            let now = vms.list(now_ms).into_iter().find(|v| v.name == name).unwrap_or(vm);
            // A shutdown is under way when the answer goes out.
            Response::json(if action == VmAction::Stop { 202 } else { 200 }, vm_json(&now).to_string())
        }
        Err(VmError::NotFound) => not_found(name),
        Err(VmError::Conflict(why)) => Response::error(409, &why),
        Err(VmError::Unavailable(why)) => Response::error(503, &why),
    })
}

/// `POST /api/v1/vms/{name}/nics/{n}/connect` or `.../disconnect`: the NIC's link while the VM
/// runs.
fn nic_link(vms: &mut dyn VmService, vm: &VmSummary, method: &str, sub: &str, now_ms: u64) -> Response {
    let parts: Vec<&str> = sub.split('/').collect();
    let (index, connected) = match parts.as_slice() {
        ["nics", n, "connect"] => (n.parse::<usize>().ok(), true),
        ["nics", n, "disconnect"] => (n.parse::<usize>().ok(), false),
        _ => return Response::error(404, "no such NIC resource (nics/{n}/connect, nics/{n}/disconnect)"),
    };
    if method != "POST" {
        return not_allowed("POST");
    }
    let Some(index) = index.filter(|&i| i < vm.nics.len()) else {
        return Response::error(404, &format!("VM {} has {} NICs (numbered from 0)", vm.name, vm.nics.len()));
    };
    match vms.set_nic_connected(&vm.name, index, connected) {
        Ok(()) => {
            let now = vms.list(now_ms).into_iter().find(|v| v.name == vm.name).unwrap_or_else(|| vm.clone());
            Response::json(200, vm_json(&now).to_string())
        }
        Err(e) => vm_refused(&vm.name, e),
    }
}

/// Answers the requests that change the inventory (`POST /api/v1/vms`, `DELETE
/// /api/v1/vms/{name}`, `POST /api/v1/vms/{name}/unregister`), or `None` for other requests.
pub fn handle_inventory(host: &mut HostState, req: &Request, now_ms: u64) -> Option<Response> {
    let path = req.path.strip_prefix("/api/v1/vms")?;
    let now = crate::datastores::unix_now(host);
    let r = inventory_change(host, req, path, now, now_ms)?;
    if r.status < 300 {
        host.vms_changed = true;
    }
    Some(r)
}

fn inventory_change(
    host: &mut HostState,
    req: &Request,
    path: &str,
    now: u64,
    now_ms: u64,
) -> Option<Response> {
    match (req.method.as_str(), path) {
        ("POST", "" | "/") => Some(create(host, req, now, now_ms)),
        ("DELETE", p) => {
            let name = p.strip_prefix('/').filter(|n| !n.is_empty() && !n.contains('/'))?;
            let delete_disks = match req.query.as_deref() {
                None | Some("delete_disks=false") => false,
                Some("delete_disks=true") => true,
                Some(_) => {
                    return Some(Response::error(
                        400,
                        "query: expected delete_disks=true or delete_disks=false",
                    ))
                }
            };
            Some(remove(host, name, Some(delete_disks), now_ms))
        }
        ("POST", p) => {
            let name = p.strip_prefix('/')?.strip_suffix("/unregister")?;
            Some(remove(host, name, None, now_ms))
        }
        ("PUT", p) => {
            let name = p.strip_prefix('/').filter(|n| !n.is_empty() && !n.contains('/'))?;
            Some(edit(host, req, name, now, now_ms))
        }
        _ => None,
    }
}

fn store_refused(e: &VmStoreError) -> Response {
    let status = match e {
        VmStoreError::Invalid { .. } => 400,
        VmStoreError::NotFound(_) => 404,
        VmStoreError::Conflict(_) => 409,
        VmStoreError::Failed(_) => 500,
    };
    Response::error(status, &e.to_string())
}

fn vm_refused(name: &str, e: VmError) -> Response {
    match e {
        VmError::NotFound => not_found(name),
        VmError::Conflict(why) => Response::error(409, &why),
        VmError::Unavailable(why) => Response::error(503, &why),
    }
}

/// The inventory with `path` added (`Some`) or taken out, stored.
fn store_inventory(host: &mut HostState, add: Option<&DsPath>, drop: Option<&DsPath>) -> Result<(), String> {
    let mut cfg = host.config.clone();
    if let Some(p) = drop {
        let p = p.to_string();
        cfg.vms.retain(|v| *v != p);
    }
    if let Some(p) = add {
        cfg.vms.push(p.to_string());
    }
    host.commit(cfg).map_err(|e| format!("the inventory could not be stored: {e}"))
}

fn create(host: &mut HostState, req: &Request, now: u64, now_ms: u64) -> Response {
    let body = match crate::api::json_body(req) {
        Ok(b) => b,
        Err(crate::api::Reply::Now(r)) => return r,
        Err(_) => return Response::error(400, "body: expected a JSON object"),
    };
    let registering = body.get("register").map(|r| r.as_str().map(DsPath::parse));
    let created = registering.is_none();
    let vm = match registering {
        Some(Some(Ok(path))) if path.parent().path.is_empty() => {
            return Response::error(
                400,
                "register: a VM's definition is in the VM's own folder, not at the datastore's root",
            )
        }
        Some(Some(Ok(path))) if body.len() == 1 => match vmstore::load(&mut host.disks, &path) {
            Ok(def) => StoredVm { path, def },
            Err(e) => return store_refused(&e),
        },
        Some(Some(Ok(_))) => return Response::error(400, "register: give only the definition's path"),
        Some(Some(Err(e))) => return Response::error(400, &format!("register: {e}")),
        Some(None) => return Response::error(400, "register: expected \"[datastore] folder/name.json\""),
        None => {
            let name = body.get("name").and_then(Value::as_str).unwrap_or_default();
            if host.vms.list(now_ms).iter().any(|v| v.name == name) {
                return Response::error(409, &format!("a VM named {name} exists already"));
            }
            match vmstore::create(&mut host.disks, &body, now) {
                Ok(vm) => vm,
                Err(e) => return store_refused(&e),
            }
        }
    };
    let name = vm.def.name.clone();
    if host.vms.list(now_ms).iter().any(|v| v.name == name) {
        return Response::error(409, &format!("a VM named {name} exists already"));
    }
    if host.config.vms.contains(&vm.path.to_string()) {
        return Response::error(409, &format!("{} is registered already", vm.path));
    }
    let path = vm.path.clone();
    let undo = created.then(|| vm.clone());
    if let Err(e) = host.vms.add(&mut host.disks, vm) {
        if let Some(vm) = &undo {
            let _ = vmstore::delete(&mut host.disks, vm, true);
        }
        return vm_refused(&name, e);
    }
    if let Err(e) = store_inventory(host, Some(&path), None) {
        if let Ok(vm) = host.vms.remove(&mut host.disks, &name) {
            if created {
                let _ = vmstore::delete(&mut host.disks, &vm, true);
            }
        }
        return Response::error(500, &e);
    }
    match host.vms.list(now_ms).into_iter().find(|v| v.name == name) {
        Some(v) => {
            let mut j = vm_json(&v);
            j["definition"] = Value::from(path.to_string());
            Response::json(201, j.to_string())
        }
        None => Response::error(500, "the VM was added but is not listed"),
    }
}

/// Changes a stopped VM on a datastore (`crate::vmstore::edit`).
fn edit(host: &mut HostState, req: &Request, name: &str, now: u64, now_ms: u64) -> Response {
    let body = match crate::api::json_body(req) {
        Ok(b) => b,
        Err(crate::api::Reply::Now(r)) => return r,
        Err(_) => return Response::error(400, "body: expected a JSON object"),
    };
    // Taken out (its files released), changed, and put back - as it was when the change fails.
    let vm = match host.vms.remove(&mut host.disks, name) {
        Ok(vm) => vm,
        Err(e) => return vm_refused(name, e),
    };
    let (back, refused) = match vmstore::edit(&mut host.disks, &vm, &body, now) {
        Ok(new) => (new, None),
        Err(e) => (vm, Some(store_refused(&e))),
    };
    if let Err(e) = host.vms.add(&mut host.disks, back) {
        return Response::error(500, &format!("VM {name} could not be put back: {e}"));
    }
    if let Some(r) = refused {
        return r;
    }
    match host.vms.list(now_ms).into_iter().find(|v| v.name == name) {
        Some(v) => Response::json(200, vm_json(&v).to_string()),
        None => Response::error(500, "the VM was changed but is not listed"),
    }
}

/// Takes VM `name` out of the inventory; `delete`: its definition is deleted too, and its disks
/// when `Some(true)`.
fn remove(host: &mut HostState, name: &str, delete: Option<bool>, now_ms: u64) -> Response {
    let vm = match host.vms.remove(&mut host.disks, name) {
        Ok(vm) => vm,
        Err(e) => return vm_refused(name, e),
    };
    if let Err(e) = store_inventory(host, None, Some(&vm.path)) {
        // Back as it was.
        let _ = host.vms.add(&mut host.disks, vm);
        return Response::error(500, &e);
    }
    let _ = now_ms;
    if let Some(disks) = delete {
        if let Err(e) = vmstore::delete(&mut host.disks, &vm, disks) {
            return Response::error(
                500,
                &format!("VM {name} left the inventory, but deleting its files failed: {e}"),
            );
        }
    }
    Response::json(200, json!({ "removed": name, "definition": vm.path.to_string() }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    struct Fake(Vec<VmSummary>);

    impl VmService for Fake {
        fn list(&self, _: u64) -> Vec<VmSummary> {
            self.0.clone()
        }
        fn console(&self, name: &str) -> Option<Vec<u8>> {
            self.0.iter().any(|v| v.name == name).then(|| b"Linux version 6.1\n".to_vec())
        }
        fn act(&mut self, _: &mut HostDisks, name: &str, action: VmAction, _: u64) -> Result<(), VmError> {
            let v = self.0.iter_mut().find(|v| v.name == name).ok_or(VmError::NotFound)?;
            match (action, v.run.state) {
                (VmAction::Start, VmState::Stopped) => v.run.state = VmState::Running,
                (VmAction::Stop | VmAction::PowerOff, VmState::Running) => {
                    v.run.state = VmState::Stopped;
                    v.run.exit_reason = Some("stopped through the API".to_string());
                }
                (_, s) => return Err(VmError::Conflict(format!("the VM is {}", s.as_str()))),
            }
            Ok(())
        }
    }

    fn vm(name: &str) -> VmSummary {
        VmSummary {
            name: name.to_string(),
            vcpus: 2,
            memory_mib: 256,
            autostart: false,
            console_port: Some(9001),
            nics: Vec::new(),
            uptime_ms: None,
            run: VmReport { exit_counts: vec![("io", 0)], overhead_bytes: 40960, ..VmReport::default() },
        }
    }

    fn body(r: &Response) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn list_get_console_and_lifecycle() {
        let mut f = Fake(vec![vm("web"), vm("db")]);
        let r = handle(&mut f, &mut HostDisks::none(), "GET", "/api/v1/vms", 0).unwrap();
        assert_eq!(r.status, 200);
        let names: Vec<String> = body(&r)["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["web", "db"]);
        let r = handle(&mut f, &mut HostDisks::none(), "GET", "/api/v1/vms/web", 0).unwrap();
        let v = body(&r);
        assert_eq!(
            (v["state"].as_str(), v["vcpus"].as_u64(), v["console_port"].as_u64()),
            (Some("stopped"), Some(2), Some(9001))
        );
        let r = handle(&mut f, &mut HostDisks::none(), "GET", "/api/v1/vms/web/console", 0).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"Linux version 6.1\n"[..]));
        let r = handle(&mut f, &mut HostDisks::none(), "POST", "/api/v1/vms/web/start", 0).unwrap();
        assert_eq!((r.status, body(&r)["state"].as_str()), (200, Some("running")));
        let r = handle(&mut f, &mut HostDisks::none(), "POST", "/api/v1/vms/web/start", 0).unwrap();
        assert_eq!(r.status, 409, "already running");
        let r = handle(&mut f, &mut HostDisks::none(), "POST", "/api/v1/vms/web/stop", 0).unwrap();
        assert_eq!(body(&r)["exit_reason"].as_str(), Some("stopped through the API"));
    }

    #[test]
    fn the_autostart_order() {
        let vms: Vec<(String, bool)> = [("a", true), ("b", false), ("c", true), ("d", false)]
            .iter()
            .map(|(n, a)| (n.to_string(), *a))
            .collect();
        let listed: Vec<String> = ["d", "nope", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(autostart_order(&listed, &vms), ["d", "c", "a"]);
        assert_eq!(autostart_order(&[], &vms), ["a", "c"]);
    }

    #[test]
    fn unknown_vms_resources_and_methods() {
        let mut f = Fake(vec![vm("web")]);
        assert_eq!(handle(&mut f, &mut HostDisks::none(), "GET", "/api/v1/vms/nope", 0).unwrap().status, 404);
        assert_eq!(
            handle(&mut f, &mut HostDisks::none(), "POST", "/api/v1/vms/nope/start", 0).unwrap().status,
            404
        );
        assert_eq!(
            handle(&mut f, &mut HostDisks::none(), "GET", "/api/v1/vms/web/start", 0).unwrap().status,
            405
        );
        assert_eq!(
            handle(&mut f, &mut HostDisks::none(), "DELETE", "/api/v1/vms/web", 0).unwrap().status,
            405
        );
        assert_eq!(handle(&mut f, &mut HostDisks::none(), "POST", "/api/v1/vms", 0).unwrap().status, 405);
        assert_eq!(
            handle(&mut f, &mut HostDisks::none(), "GET", "/api/v1/vms/web/disks", 0).unwrap().status,
            404
        );
        assert!(handle(&mut f, &mut HostDisks::none(), "GET", "/api/v1/vmsx", 0).is_none());
        assert_eq!(
            handle(&mut NoVms, &mut HostDisks::none(), "GET", "/api/v1/vms", 0).unwrap().body,
            br#"{"vms":[]}"#
        );
    }
}
