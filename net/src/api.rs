//! The management API (JSON over HTTP/1.1): routing, authentication and the resource handlers.
//!
//! Everything here works on [`ApiState`], a plain value the management service keeps current, so the
//! whole API is tested on the host without a network. Resources:
//! - `GET /` - a small landing page naming the host (no authentication, no details).
//! - `GET /api/v1/host` - identity, hardware, uptime, NICs and the management interface.
//! - `GET|PUT /api/v1/network/management` - the management network settings and state; a PUT changes
//!   the given fields and restarts the management interface after the response is sent.
//! - `GET /api/v1/network/resolve?name=<host>` - resolves a name with the configured DNS servers.
//! - `GET /api/v1/network/switches` - the virtual switches: MTU, uplinks, port groups, and every
//!   port (uplinks, vmk0, VM NICs) with its link and counters (at most a second old).
//! - `PUT /api/v1/account/root/password` - `{"password": "..."}`.
//! - `GET|PUT /api/v1/config` - the whole host configuration (the hash scheme, never the hash) and
//!   where it is stored; a PUT changes the given fields.
//! - `/api/v1/vms...` - the VMs and their lifecycle and consoles (`crate::vms`).
//! - `/api/v1/disks`, `/api/v1/datastores...` - the host's disks and datastores (`crate::datastores`;
//!   these are kept on the disks themselves, not in the configuration store).
//!
//! Every `/api/` resource needs HTTP Basic authentication as `root`. Every change is saved to the
//! configuration store and flushed *before* it is acknowledged; when the write fails the answer is
//! `503` and nothing changes. Without a store (no supported driver for the boot media) changes apply
//! until the next reboot, and the answers say `"persistent": false`.

use crate::auth::{self, AuthResult, PasswordHash};
use crate::config::{self, Ipv4Mode, ManagementConfig};
use crate::host::{CommitError, HostState, Persistence, Ticket};
use crate::http::{Request, Response};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::{Ipv4Addr, Ipv6Addr};
use ember_hw::nic::{mac_string, ManagedNic};
use ember_storage::hostconfig::HostConfig;
use serde_json::{json, Map, Value};

/// Facts about the host that do not change while it runs.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub version: String,
    pub build: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_bytes: u64,
    pub vendor: String,
    pub product: String,
    pub serial: String,
    /// Hardware virtualization as checked at boot (for example "SVM with nested paging, VMRUN
    /// verified"), or why there is none.
    pub virtualization: String,
}

/// One NIC as reported by the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicInfo {
    pub name: String,
    pub mac: [u8; 6],
    pub link: bool,
    pub driver: &'static str,
}

impl NicInfo {
    /// The NIC as the API reports it (link state as last seen: down until checked).
    pub fn of(n: &ManagedNic) -> NicInfo {
        NicInfo { name: n.name.clone(), mac: n.nic.mac(), link: false, driver: n.driver }
    }
}

/// Where the management interface stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterfaceState {
    /// The uplink NIC named in the configuration does not exist.
    NoUplink,
    /// DHCP: no lease yet.
    WaitingForLease,
    /// An address is configured (lease or static).
    Configured,
    /// DHCP: the lease expired without renewal; the address was removed.
    LeaseLost,
}

impl InterfaceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InterfaceState::NoUplink => "no uplink",
            InterfaceState::WaitingForLease => "waiting for DHCP lease",
            InterfaceState::Configured => "configured",
            InterfaceState::LeaseLost => "DHCP lease lost",
        }
    }
}

/// The live state of the management interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceStatus {
    pub state: InterfaceState,
    pub address: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// The interface's IPv6 addresses now (link-local, static, from router advertisements).
    pub ipv6: Vec<(Ipv6Addr, u8)>,
}

impl Default for InterfaceStatus {
    fn default() -> Self {
        InterfaceStatus {
            state: InterfaceState::WaitingForLease,
            address: None,
            gateway: None,
            dns: Vec::new(),
            ipv6: Vec::new(),
        }
    }
}

/// What the handler wants done.
pub enum Reply {
    Now(Response),
    /// Resolve this name, then answer (the service owns the DNS socket).
    Resolve(String),
    /// A change is being saved ([`HostState::begin_commit`]): once it has ended, the answer is
    /// what this makes of its outcome.
    Saving(Ticket, AfterSave),
    /// A file download: these headers, then the file's bytes, read as the client takes them.
    Download(Response, Box<crate::datastores::Download>),
}

/// Makes the answer to a change from how its save ended.
pub type AfterSave = Box<dyn FnOnce(&HostState, Result<(), CommitError>) -> Response>;

impl core::fmt::Debug for Reply {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Reply::Now(r) => f.debug_tuple("Now").field(r).finish(),
            Reply::Resolve(n) => f.debug_tuple("Resolve").field(n).finish(),
            Reply::Saving(t, _) => f.debug_tuple("Saving").field(t).finish(),
            Reply::Download(r, d) => f.debug_tuple("Download").field(r).field(d).finish(),
        }
    }
}

/// Whether answering `req` may change the configuration: such a request waits while another
/// change is being saved, so that it is checked against, and builds on, the configuration that
/// change leaves.
pub fn may_change_config(req: &Request) -> bool {
    !matches!(req.method.as_str(), "GET" | "HEAD")
        && req.path.starts_with("/api/")
        && !req.path.starts_with("/api/v1/vms")
        && !req.path.starts_with("/api/v1/datastores")
}

/// Starts saving `new`; the answer follows from `then` once the save has ended.
fn save(
    host: &mut HostState,
    new: HostConfig,
    then: impl FnOnce(&HostState, Result<(), CommitError>) -> Response + 'static,
) -> Reply {
    match host.begin_commit(new, None) {
        Ok(ticket) => Reply::Saving(ticket, Box::new(then)),
        Err(e) => Reply::Now(failed(&e)),
    }
}

/// What the management API keeps of its own: the host's facts and NICs as the API reports them,
/// the management interface's live state, and a network change waiting for its response to go
/// out. The host's configuration, store, accounts and VMs are the appliance's ([`HostState`]),
/// borrowed for each request.
pub struct ApiState {
    pub facts: HostFacts,
    pub nics: Vec<NicInfo>,
    pub status: InterfaceStatus,
    /// A validated configuration waiting to be applied once the response is out.
    pub pending: Option<ManagementConfig>,
    /// Start of uptime.
    pub boot_ms: u64,
    /// The virtual switches as `GET /api/v1/network/switches` shows them (refreshed by the
    /// management service every second, from `crate::hostnet::HostNetwork::to_json`).
    pub switches: Value,
}

fn ip_json(a: Option<Ipv4Addr>) -> Value {
    a.map_or(Value::Null, |a| Value::String(a.to_string()))
}

impl ApiState {
    pub fn new(facts: HostFacts) -> Self {
        ApiState {
            facts,
            nics: Vec::new(),
            status: InterfaceStatus::default(),
            pending: None,
            boot_ms: 0,
            switches: json!({"switches": []}),
        }
    }
}

/// The `management` object: configuration and live state.
pub fn management_json(state: &ApiState, host: &HostState) -> Value {
    let net = &host.config.network;
    let mode = match net.ipv4 {
        Ipv4Mode::Dhcp => "dhcp",
        Ipv4Mode::Static { .. } => "static",
    };
    let status = &state.status;
    json!({
        "uplink": net.uplink,
        "mode": mode,
        "state": status.state.as_str(),
        "address": ip_json(status.address.map(|a| a.0)),
        "prefix": status.address.map(|a| a.1),
        "gateway": ip_json(status.gateway),
        "dns": status.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        "vlan": net.vlan,
        "hostname": net.hostname,
        "ipv6": net.ipv6.to_json(),
        "ipv6_addresses": status.ipv6.iter().map(|(a, p)| format!("{a}/{p}")).collect::<Vec<_>>(),
    })
}

/// The `GET /api/v1/host` document.
pub fn host_json(state: &ApiState, host: &HostState, now_ms: u64) -> Value {
    let f = &state.facts;
    json!({
        "hostname": host.config.network.hostname,
        "version": f.version,
        "build": f.build,
        "uptime_s": now_ms.saturating_sub(state.boot_ms) / 1000,
        "cpus": f.cpus,
        "cpu_model": f.cpu_model,
        "memory_bytes": f.memory_bytes,
        "vendor": f.vendor,
        "product": f.product,
        "serial": f.serial,
        "virtualization": f.virtualization,
        "nics": state.nics.iter().map(|n| json!({
            "name": n.name,
            "mac": mac_string(&n.mac),
            "link": if n.link { "up" } else { "down" },
            "driver": n.driver,
        })).collect::<Vec<_>>(),
        "management": management_json(state, host),
        "certificate_sha256": host.https.as_ref().map(|h| h.info.fingerprint()),
    })
}

fn ok_json(v: Value) -> Reply {
    Reply::Now(Response::json(200, v.to_string()))
}

fn method_not_allowed(allow: &str) -> Reply {
    let mut r = Response::error(405, "method not allowed on this resource");
    r.headers.push(format!("Allow: {allow}"));
    Reply::Now(r)
}

/// Checks the request's HTTP Basic credentials; the answer to give when they do not pass.
pub(crate) fn authenticate(host: &mut HostState, req: &Request, now_ms: u64) -> Result<(), Response> {
    match host.root.check(req.authorization.as_deref(), req.peer, now_ms) {
        AuthResult::Allowed => Ok(()),
        AuthResult::Denied => {
            let mut r = Response::error(401, "authentication required: HTTP Basic as root");
            r.headers.push(String::from("WWW-Authenticate: Basic realm=\"Ember\", charset=\"UTF-8\""));
            Err(r)
        }
        AuthResult::Busy => {
            let mut r = Response::error(429, "too many password checks; try again in a second");
            r.headers.push(String::from("Retry-After: 1"));
            Err(r)
        }
    }
}

/// Handles one request.
pub fn handle(state: &mut ApiState, host: &mut HostState, req: &Request, now_ms: u64) -> Reply {
    if req.path == "/" {
        return match req.method.as_str() {
            "GET" | "HEAD" => Reply::Now(Response {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: landing_page(&host.config.network.hostname).into_bytes(),
                headers: Vec::new(),
            }),
            _ => method_not_allowed("GET, HEAD"),
        };
    }
    if !req.path.starts_with("/api/") {
        return Reply::Now(Response::error(404, &format!("no such resource: {}", printable(&req.path))));
    }
    if let Err(r) = authenticate(host, req, now_ms) {
        return Reply::Now(r);
    }
    // A browser cannot send a cross-site request with this content type without asking the
    // server first (CORS preflight, which this server never grants): a page on another site
    // cannot make a browser that remembers the root credentials change anything.
    // (Uploads, `PUT` with application/octet-stream, never reach here: the server streams them
    // through `crate::datastores::begin_upload`. A `PUT` is never a cross-site simple request.)
    let mutating = !matches!(req.method.as_str(), "GET" | "HEAD");
    let json =
        req.content_type.as_deref().is_some_and(|c| c.to_ascii_lowercase().starts_with("application/json"));
    if mutating && !json {
        return Reply::Now(Response::error(
            415,
            "changes need Content-Type: application/json (also for requests without a body)",
        ));
    }
    if let Some(r) = crate::vms::handle_inventory(host, req, now_ms) {
        return Reply::Now(r);
    }
    if let Some(r) = crate::vms::handle(&mut *host.vms, &mut host.disks, &req.method, &req.path, now_ms) {
        return Reply::Now(r);
    }
    let now_unix = crate::datastores::unix_now(host);
    if let Some(r) = crate::datastores::handle(&mut host.disks, req, now_unix) {
        return r;
    }
    match (req.path.as_str(), req.method.as_str()) {
        ("/api/v1/host", "GET") => ok_json(host_json(state, host, now_ms)),
        ("/api/v1/host", _) => method_not_allowed("GET"),
        ("/api/v1/host/shutdown" | "/api/v1/host/reboot", "POST") => {
            let what = if req.path.ends_with("shutdown") {
                crate::host::HostPower::Shutdown
            } else {
                crate::host::HostPower::Reboot
            };
            host.power_request = Some(what);
            let running =
                host.vms.list(now_ms).iter().filter(|v| v.run.state != crate::vms::VmState::Stopped).count();
            Reply::Now(Response::json(
                202,
                json!({ "action": if what == crate::host::HostPower::Shutdown { "shutdown" } else { "reboot" },
                        "running_vms": running,
                        "message": "running VMs are shut down first (ACPI power button, powered off after 120 s)" })
                .to_string(),
            ))
        }
        ("/api/v1/host/shutdown" | "/api/v1/host/reboot", _) => method_not_allowed("POST"),
        ("/api/v1/host/certificate", "GET") => ok_json(host.certificate_json()),
        ("/api/v1/host/certificate", "PUT") => put_certificate(host, req),
        ("/api/v1/host/certificate", "DELETE") => new_self_signed(host),
        ("/api/v1/host/certificate", _) => method_not_allowed("GET, PUT, DELETE"),
        ("/api/v1/network/management", "GET") => ok_json(management_json(state, host)),
        ("/api/v1/network/management", "PUT") => put_management(state, host, req),
        ("/api/v1/network/management", _) => method_not_allowed("GET, PUT"),
        ("/api/v1/network/switches", "GET") => ok_json(state.switches.clone()),
        ("/api/v1/network/switches", _) => method_not_allowed("GET"),
        ("/api/v1/network/resolve", "GET") => resolve(req),
        ("/api/v1/network/resolve", _) => method_not_allowed("GET"),
        ("/api/v1/account/root/password", "PUT") => put_password(host, req),
        ("/api/v1/account/root/password", _) => method_not_allowed("PUT"),
        ("/api/v1/config", "GET") => ok_json(host.config_json()),
        ("/api/v1/config", "PUT") => put_config(state, host, req),
        ("/api/v1/config", _) => method_not_allowed("GET, PUT"),
        (p, _) => Reply::Now(Response::error(404, &format!("no such resource: {}", printable(p)))),
    }
}

/// Paths are echoed in error messages; keep them short and printable.
fn printable(s: &str) -> String {
    s.chars().take(100).map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect()
}

fn landing_page(hostname: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><title>Ember {hostname}</title></head><body><h1>Ember host {hostname}</h1>\
         <p>Management API: <a href=\"/api/v1/host\">/api/v1/host</a> (HTTP Basic, user root).</p></body></html>\n"
    )
}

pub(crate) fn bad_request(field: &str, problem: &str) -> Reply {
    Reply::Now(Response::error(400, &format!("{field}: {problem}")))
}

pub(crate) fn json_body(req: &Request) -> Result<Map<String, Value>, Reply> {
    if let Some(ct) = &req.content_type {
        if !ct.to_ascii_lowercase().starts_with("application/json") {
            return Err(Reply::Now(Response::error(415, "expected Content-Type: application/json")));
        }
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad_request("body", "expected a JSON object")),
        Err(e) => Err(bad_request("body", &format!("not valid JSON: {e}"))),
    }
}

fn put_management(state: &mut ApiState, host: &mut HostState, req: &Request) -> Reply {
    let body = match json_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut cfg = host.config.network.clone();
    if let Err(e) = cfg.merge_json(&body, "") {
        return bad_request(&e.field, &e.problem);
    }
    if let Err(r) = check_uplink(state, &cfg, "uplink") {
        return r;
    }
    let mut out = management_json(state, host);
    let mut new = host.config.clone();
    new.network = cfg.clone();
    // The management network restarts with the new settings once they are in force
    // (`ManagementNetwork::poll`), after this answer has gone out.
    save(host, new, move |host, saved| match saved {
        Ok(()) => {
            out["pending"] = cfg.to_json();
            out["persistent"] = Value::Bool(matches!(host.store, Persistence::Store(_)));
            Response::json(202, out.to_string())
        }
        Err(e) => failed(&e),
    })
}

/// The management network's uplink must be a NIC this host has.
fn check_uplink(state: &ApiState, cfg: &ManagementConfig, field: &str) -> Result<(), Reply> {
    if state.nics.iter().any(|n| n.name == cfg.uplink) {
        return Ok(());
    }
    let present: Vec<&str> = state.nics.iter().map(|n| n.name.as_str()).collect();
    Err(bad_request(field, &format!("no NIC named {} (present: {})", cfg.uplink, present.join(", "))))
}

fn failed(e: &CommitError) -> Response {
    match e {
        CommitError::Store(_) | CommitError::Busy => Response::error(503, &e.to_string()),
        CommitError::Hash(h) => Response::error(400, &format!("root_password_hash: {h}")),
        CommitError::Tls(e) => Response::error(400, e),
    }
}

fn put_config(state: &mut ApiState, host: &mut HostState, req: &Request) -> Reply {
    let mut body = match json_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    // What GET shows about the password and the store is not part of the configuration; sending it
    // back unchanged is allowed, so a GET-modify-PUT round trip works.
    if let Some(v) = body.remove("root_password") {
        if v != json!({ "scheme": host.root.hash().scheme() }) {
            return bad_request(
                "root_password",
                "read-only (change the password with PUT /api/v1/account/root/password, or set root_password_hash)",
            );
        }
    }
    if let Some(v) = body.remove("store") {
        if v != host.store_json() {
            return bad_request("store", "read-only");
        }
    }
    let mut new = host.config.clone();
    if let Err(e) = new.merge(&body) {
        return bad_request(&e.field, &e.problem);
    }
    if let Err(r) = check_uplink(state, &new.network, "network.uplink") {
        return r;
    }
    let network_changed = new.network != host.config.network;
    save(host, new, move |host, saved| match saved {
        Ok(()) => {
            let mut out = host.config_json();
            out["restarting_management_network"] = Value::Bool(network_changed);
            Response::json(200, out.to_string())
        }
        Err(e) => failed(&e),
    })
}

/// `PUT /api/v1/host/certificate {"certificate": PEM chain, "key": PEM key}`: a CA-signed
/// certificate for the API, checked, stored, and used for every new connection.
fn put_certificate(host: &mut HostState, req: &Request) -> Reply {
    let body = match json_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(k) = body.keys().find(|k| !["certificate", "key"].contains(&k.as_str())) {
        return bad_request(&printable(k), "unknown field (expected certificate, key)");
    }
    let text = |name: &'static str| body.get(name).and_then(Value::as_str).ok_or(name);
    let (chain, key) = match (text("certificate"), text("key")) {
        (Ok(c), Ok(k)) => (c, k),
        (Err(f), _) | (_, Err(f)) => return bad_request(f, "expected PEM text (a string)"),
    };
    let identity = match crate::tls::server::check_install(chain, key, host.unix_now()) {
        Ok(i) => i,
        Err(e) => return Reply::Now(Response::error(400, &e)),
    };
    let mut new = host.config.clone();
    new.tls = Some(identity.stored.clone());
    save(host, new, |host, saved| match saved {
        Ok(()) => Response::json(200, host.certificate_json().to_string()),
        Err(e) => failed(&e),
    })
}

/// `DELETE /api/v1/host/certificate`: back to a new self-signed certificate.
fn new_self_signed(host: &mut HostState) -> Reply {
    let mut new = host.config.clone();
    new.tls = None;
    save(host, new, |host, saved| match saved {
        Ok(()) if host.config.tls.is_some() => Response::json(200, host.certificate_json().to_string()),
        Ok(()) => Response::error(503, "no new certificate could be made"),
        Err(e) => failed(&e),
    })
}

fn resolve(req: &Request) -> Reply {
    let name = req.query.as_deref().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("name="));
    let Some(name) = name else { return bad_request("name", "give the name to resolve as ?name=<host>") };
    if let Err(e) = config::validate_hostname("name", name) {
        return bad_request(&e.field, &e.problem);
    }
    Reply::Resolve(name.to_string())
}

fn put_password(host: &mut HostState, req: &Request) -> Reply {
    let body = match json_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(k) = body.keys().find(|k| k.as_str() != "password") {
        return bad_request(&printable(k), "unknown field (expected password)");
    }
    let Some(pw) = body.get("password").and_then(|v| v.as_str()) else {
        return bad_request("password", "expected a string");
    };
    if let Err(e) = auth::check_password_rules(pw) {
        return bad_request("password", &e.to_string().replace("password: ", ""));
    }
    let salt = host.next_salt();
    let mut new = host.config.clone();
    new.root_password_hash = PasswordHash::new(pw, salt, auth::DEFAULT_ITERATIONS).encode();
    save(host, new, |host, saved| match saved {
        Ok(()) => Response::json(
            200,
            json!({
                "status": "password changed",
                "persistent": matches!(host.store, Persistence::Store(_)),
            })
            .to_string(),
        ),
        Err(e) => failed(&e),
    })
}

/// The answer to a finished name resolution.
pub fn resolved(name: &str, result: Result<Vec<Ipv4Addr>, &str>) -> Response {
    match result {
        Ok(addrs) => Response::json(
            200,
            json!({ "name": name, "addresses": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>() })
                .to_string(),
        ),
        Err(why) => Response::error(502, &format!("could not resolve {name}: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::StoredHash;
    use crate::auth::{PasswordHash, MIN_ITERATIONS};
    use crate::host::Persistence;
    use crate::http::{parse_request, Parsed};
    use base64::Engine;
    use ember_storage::persist::HostStore;

    fn facts() -> HostFacts {
        HostFacts {
            version: "0.1.0".into(),
            build: "abc".into(),
            cpus: 2,
            cpu_model: "Test CPU".into(),
            memory_bytes: 1 << 30,
            vendor: "QEMU".into(),
            product: "Standard PC".into(),
            serial: "S1".into(),
            virtualization: "AMD SVM with nested paging, VMRUN verified".into(),
        }
    }

    /// The API's state and the host's, as the management service holds them.
    struct St {
        api: ApiState,
        host: HostState,
    }

    fn state_with(store: Persistence) -> St {
        let hash = PasswordHash::new("rootpass", [3; 16], MIN_ITERATIONS).encode();
        let host = HostState::new(HostConfig::defaults(hash), store, [4; 32], 1).unwrap();
        let mut st = St { api: ApiState::new(facts()), host };
        st.api.nics = alloc::vec![NicInfo {
            name: "vmnic0".into(),
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            link: true,
            driver: "virtio-net"
        }];
        st.api.status = InterfaceStatus {
            state: InterfaceState::Configured,
            address: Some((Ipv4Addr::new(10, 0, 2, 15), 24)),
            gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            dns: alloc::vec![Ipv4Addr::new(10, 0, 2, 3)],
            ipv6: Vec::new(),
        };
        st.api.boot_ms = 1000;
        crate::tls::crypto::seed([6; 32]);
        st.host.start_https();
        st
    }

    fn state() -> St {
        state_with(Persistence::None("no store in this test".into()))
    }

    fn auth() -> String {
        format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode("root:rootpass")
        )
    }

    fn call(st: &mut St, raw: &str) -> (u16, Value) {
        let Parsed::Complete(req, _) = parse_request(raw.as_bytes()) else {
            panic!("unparsable test request")
        };
        let r = match handle(&mut st.api, &mut st.host, &req, 61_000) {
            Reply::Now(r) => r,
            Reply::Resolve(name) => return (0, Value::String(name)),
            Reply::Download(head, mut d) => {
                let mut body = Vec::new();
                while !d.done() {
                    body.extend(d.next(&mut st.host.disks).unwrap());
                }
                return (head.status, Value::String(String::from_utf8_lossy(&body).into_owned()));
            }
            Reply::Saving(ticket, then) => {
                // Nothing is in force before the save has ended.
                let before = st.host.generation;
                while st.host.saving() {
                    assert_eq!(st.host.generation, before);
                    st.host.poll_store();
                }
                then(&st.host, st.host.outcome(ticket).unwrap())
            }
        };
        let v = if r.content_type == "application/json" {
            serde_json::from_slice(&r.body).unwrap()
        } else {
            Value::Null
        };
        (r.status, v)
    }

    fn put(path: &str, body: &str) -> String {
        format!(
            "PUT {path} HTTP/1.1\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            auth(),
            body.len()
        )
    }

    fn json_string(s: &str) -> String {
        Value::String(s.into()).to_string()
    }

    #[test]
    fn the_https_certificate_is_shown_replaced_by_a_ca_signed_one_and_made_anew() {
        let mut st = state();
        let get = format!("GET /api/v1/host/certificate HTTP/1.1\r\n{}\r\n", auth());
        let (s, v) = call(&mut st, &get);
        assert_eq!(s, 200);
        assert_eq!((v["self_signed"].as_bool(), v["subject"].as_str()), (Some(true), Some("CN=ember")));
        let first = v["sha256"].as_str().unwrap().to_string();
        assert_eq!(
            call(&mut st, &format!("GET /api/v1/host HTTP/1.1\r\n{}\r\n", auth())).1["certificate_sha256"],
            first.as_str()
        );
        assert!(!v.to_string().contains("PRIVATE KEY"), "the key is never shown");
        // A CA-signed certificate with its key replaces it.
        let cert = include_str!("tls/testdata/server.pem");
        let key = include_str!("tls/testdata/server.key");
        let body = format!(r#"{{"certificate":{},"key":{}}}"#, json_string(cert), json_string(key));
        let (s, v) = call(&mut st, &put("/api/v1/host/certificate", &body));
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (v["self_signed"].as_bool(), v["issuer"].as_str()),
            (Some(false), Some("CN=Ember Test CA"))
        );
        assert_eq!(st.host.https.as_ref().unwrap().info.subject, "CN=server");
        assert!(st.host.config.tls.as_ref().is_some_and(|t| t.chain_pem == cert && !t.self_signed));
        // Refusals name the problem and change nothing.
        let installed = st.host.config.clone();
        let stranger = include_str!("tls/testdata/stranger.key");
        for (body, why) in [
            (
                format!(r#"{{"certificate":{},"key":{}}}"#, json_string(cert), json_string(stranger)),
                "does not belong to the key",
            ),
            (format!(r#"{{"certificate":{}}}"#, json_string(cert)), "key: expected PEM"),
            (format!(r#"{{"certificate":"x","key":{}}}"#, json_string(key)), "certificate: expected PEM"),
            (String::from(r#"{"certificate":"x","key":"y","extra":1}"#), "extra: unknown field"),
        ] {
            let (s, v) = call(&mut st, &put("/api/v1/host/certificate", &body));
            assert_eq!(s, 400, "{body}");
            assert!(v["error"]["message"].as_str().unwrap().contains(why), "{v}");
            assert_eq!(st.host.config, installed);
        }
        // The configuration document neither shows nor takes it.
        let (_, config) = call(&mut st, &format!("GET /api/v1/config HTTP/1.1\r\n{}\r\n", auth()));
        assert!(config.get("tls").is_none() && !config.to_string().contains("PRIVATE"));
        let (s, _) = call(&mut st, &put("/api/v1/config", r#"{"tls":null}"#));
        assert_eq!(s, 400);
        // DELETE: back to a new self-signed certificate.
        let delete = format!("DELETE /api/v1/host/certificate HTTP/1.1\r\n{}Content-Type: application/json\r\nContent-Length: 0\r\n\r\n", auth());
        let (s, v) = call(&mut st, &delete);
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["self_signed"], true);
        assert_ne!(v["sha256"].as_str().unwrap(), first);
    }

    #[test]
    fn a_self_signed_certificate_follows_the_host_name_and_is_renewed_before_it_ends() {
        let mut st = state();
        let first = st.host.https.as_ref().unwrap().info.clone();
        assert_eq!(first.subject, "CN=ember");
        // Another host name: a new certificate names it.
        let (s, _) = call(&mut st, &put("/api/v1/network/management", r#"{"hostname":"esx07"}"#));
        assert_eq!(s, 202);
        let renamed = st.host.https.as_ref().unwrap().info.clone();
        assert_eq!(renamed.subject, "CN=esx07");
        assert_ne!(renamed.sha256, first.sha256);
        // Not yet due: kept. Within 30 days of its end: replaced.
        st.host.boot_unix = Some(renamed.not_before_unix as i64 + 86_400);
        st.host.now_ms = 0;
        st.host.renew_https_if_due();
        assert_eq!(st.host.https.as_ref().unwrap().info.sha256, renamed.sha256);
        st.host.boot_unix = Some(renamed.not_after_unix as i64 - 10 * 86_400);
        st.host.renew_https_if_due();
        let renewed = st.host.https.as_ref().unwrap().info.clone();
        assert_ne!(renewed.sha256, renamed.sha256);
        assert!(renewed.not_after_unix > renamed.not_after_unix);
        assert!(st.host.notes.iter().any(|n| n.contains("a new one is made")), "{:?}", st.host.notes);
    }

    #[test]
    fn host_needs_auth_and_has_the_fields() {
        let mut st = state();
        let (s, v) = call(&mut st, "GET /api/v1/host HTTP/1.1\r\n\r\n");
        assert_eq!(s, 401);
        assert_eq!(v["error"]["code"], 401);
        let (s, v) = call(&mut st, &format!("GET /api/v1/host HTTP/1.1\r\n{}\r\n", auth()));
        assert_eq!(s, 200);
        for k in [
            "hostname",
            "version",
            "uptime_s",
            "cpus",
            "cpu_model",
            "memory_bytes",
            "vendor",
            "product",
            "nics",
            "management",
        ] {
            assert!(!v[k].is_null(), "missing {k}");
        }
        assert_eq!(v["uptime_s"], 60);
        assert_eq!(v["nics"][0]["mac"], "52:54:00:12:34:56");
        assert_eq!(v["nics"][0]["link"], "up");
        assert_eq!(v["management"]["mode"], "dhcp");
        assert_eq!(v["management"]["address"], "10.0.2.15");
        assert_eq!(v["management"]["prefix"], 24);
        assert_eq!(v["management"]["vlan"], Value::Null);
    }

    #[test]
    fn not_found_and_methods() {
        let mut st = state();
        assert_eq!(call(&mut st, &format!("GET /api/v1/nope HTTP/1.1\r\n{}\r\n", auth())).0, 404);
        assert_eq!(call(&mut st, "GET /favicon.ico HTTP/1.1\r\n\r\n").0, 404);
        let delete =
            format!("DELETE /api/v1/host HTTP/1.1\r\n{}Content-Type: application/json\r\n\r\n", auth());
        assert_eq!(call(&mut st, &delete).0, 405);
        assert_eq!(call(&mut st, "GET / HTTP/1.1\r\n\r\n").0, 200);
    }

    #[test]
    fn put_management_validates_and_queues() {
        let mut st = state();
        let cases = [
            ("{", "body"),
            ("[1]", "body"),
            (r#"{"mode":"bootp"}"#, "mode"),
            (r#"{"mode":"static"}"#, "address"),
            (r#"{"mode":"static","address":"10.0.2.20"}"#, "prefix"),
            (r#"{"mode":"static","address":"10.0.2.20","prefix":24,"gateway":"10.9.9.9"}"#, "gateway"),
            (r#"{"vlan":4095}"#, "vlan"),
            (r#"{"vlan":"7"}"#, "vlan"),
            (r#"{"uplink":"vmnic7"}"#, "uplink"),
            (r#"{"dns":["1.1.1.1","x"]}"#, "dns"),
            (r#"{"hostname":"bad_name"}"#, "hostname"),
            (r#"{"colour":"red"}"#, "colour"),
        ];
        let (before, generation) = (st.host.config.clone(), st.host.generation);
        for (body, field) in cases {
            let (s, v) = call(&mut st, &put("/api/v1/network/management", body));
            assert_eq!(s, 400, "{body}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.starts_with(field), "{body}: {msg}");
            assert!(st.host.config == before && st.host.generation == generation, "{body} changed something");
        }
        let (s, v) = call(
            &mut st,
            &put(
                "/api/v1/network/management",
                r#"{"mode":"static","address":"10.0.2.20","netmask":"255.255.255.0","gateway":"10.0.2.2","vlan":12,"hostname":"esx1"}"#,
            ),
        );
        assert_eq!(s, 202, "{v}");
        assert_eq!(v["pending"]["address"], "10.0.2.20");
        // In force (the management network restarts with it; see the `mgmt` tests).
        let p = st.host.config.network.clone();
        assert_eq!(p.vlan, Some(12));
        assert_eq!(
            p.ipv4,
            Ipv4Mode::Static {
                address: Ipv4Addr::new(10, 0, 2, 20),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2))
            }
        );
    }

    #[test]
    fn wrong_content_type_is_415() {
        let mut st = state();
        let raw = format!("PUT /api/v1/network/management HTTP/1.1\r\n{}Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{{}}", auth());
        assert_eq!(call(&mut st, &raw).0, 415);
        // What a cross-site form or a no-cors fetch can send is refused, body or not: a VM start
        // without the JSON content type, a form post.
        let start = format!("POST /api/v1/vms/web/start HTTP/1.1\r\n{}\r\n", auth());
        assert_eq!(call(&mut st, &start).0, 415);
        let form = format!(
            "POST /api/v1/vms/web/stop HTTP/1.1\r\n{}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n\r\n",
            auth()
        );
        assert_eq!(call(&mut st, &form).0, 415);
    }

    #[test]
    fn password_change() {
        let mut st = state();
        assert_eq!(call(&mut st, &put("/api/v1/account/root/password", r#"{"password":"short"}"#)).0, 400);
        assert_eq!(
            call(&mut st, &put("/api/v1/account/root/password", r#"{"password":"long enough","x":1}"#)).0,
            400
        );
        assert_eq!(
            call(&mut st, &put("/api/v1/account/root/password", r#"{"password":"a-new-pass"}"#)).0,
            200
        );
        // The old credentials no longer work.
        assert_eq!(call(&mut st, &format!("GET /api/v1/host HTTP/1.1\r\n{}\r\n", auth())).0, 401);
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\n{}\r\n", auth())
    }

    /// A stored hash that would make every login run for hours is refused, and nothing changes.
    #[test]
    fn a_hash_with_billions_of_iterations_is_refused() {
        let mut st = state_with(crate::host::testing::memory_store(false));
        let huge =
            "$pbkdf2-sha256$4000000000$AAECAwQFBgcICQoLDA0ODw==$3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhs=";
        let body = format!("{{\"root_password_hash\": \"{huge}\"}}");
        let (s, v) = call(&mut st, &put("/api/v1/config", &body));
        assert_eq!(s, 400, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("root_password_hash") && msg.contains("1000000 iterations"), "{msg}");
        assert_eq!(call(&mut st, &get("/api/v1/host")).0, 200, "the old password still works");
    }

    #[test]
    fn config_is_shown_without_the_hash_and_changes_are_stored() {
        let mut st = state_with(crate::host::testing::memory_store(false));
        let (s, v) = call(&mut st, &get("/api/v1/config"));
        assert_eq!(s, 200);
        assert_eq!(v["root_password"]["scheme"], "pbkdf2-sha256");
        assert!(v.get("root_password_hash").is_none());
        assert_eq!(v["store"]["persistent"], true);
        assert_eq!(v["store"]["disk"], "vda");
        assert_eq!(
            v["store"]["sequence"],
            Value::Null,
            "nothing saved yet (the new HTTPS key waits for a change)"
        );
        assert_eq!(v["keyboard"], "US Default");

        let before_network = st.host.config.network.clone();
        let (s, v) = call(
            &mut st,
            &put("/api/v1/config", r#"{"keyboard":"German","ssh":true,"dns_search":["lab.example"]}"#),
        );
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["keyboard"], "German");
        assert_eq!(v["store"]["sequence"], 1);
        assert_eq!(v["restarting_management_network"], false);
        assert_eq!(st.host.config.network, before_network);

        // GET, change, PUT back the whole document.
        let (_, mut doc) = call(&mut st, &get("/api/v1/config"));
        doc["network"]["hostname"] = "esx9".into();
        let (s, v) = call(&mut st, &put("/api/v1/config", &doc.to_string()));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["store"]["sequence"], 2);
        assert_eq!(v["store"]["slot"], "B");
        assert_eq!(v["restarting_management_network"], true);
        assert_eq!(st.host.config.network.hostname, "esx9");

        // What was stored is what a reboot loads.
        let Persistence::Store(store) = &mut st.host.store else { unreachable!() };
        let loaded = HostStore::load(store).unwrap().config.unwrap();
        assert_eq!(loaded, st.host.config);
        assert_eq!(loaded.keyboard, "German");

        // Password changes are stored too, as a hash.
        let (s, v) = call(&mut st, &put("/api/v1/account/root/password", r#"{"password":"a-new-pass"}"#));
        assert_eq!((s, v["persistent"].clone()), (200, Value::Bool(true)));
        let Persistence::Store(store) = &mut st.host.store else { unreachable!() };
        let loaded = HostStore::load(store).unwrap().config.unwrap();
        assert!(StoredHash::decode(&loaded.root_password_hash).unwrap().verify("a-new-pass"));
        assert_eq!(loaded.tls, st.host.config.tls, "the HTTPS key went with the first change");
    }

    #[test]
    fn bad_config_fields_are_named_and_change_nothing() {
        let mut st = state_with(crate::host::testing::memory_store(false));
        let before = st.host.config.clone();
        let Persistence::Store(store) = &mut st.host.store else { unreachable!() };
        let written = store.in_use();
        for (body, field) in [
            (r#"{"keyboard":"Klingon"}"#, "keyboard"),
            (r#"{"network":{"uplink":"vmnic5"}}"#, "network.uplink"),
            (r#"{"network":{"vlan":0}}"#, "network.vlan"),
            (r#"{"root_password":{"scheme":"plain"}}"#, "root_password"),
            (r#"{"store":{"persistent":false}}"#, "store"),
            (r#"{"root_password_hash":"abc"}"#, "root_password_hash"),
            (r#"{"ssh":"on"}"#, "ssh"),
        ] {
            let (s, v) = call(&mut st, &put("/api/v1/config", body));
            assert_eq!(s, 400, "{body}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.starts_with(field), "{body}: {msg}");
            assert_eq!(st.host.config, before, "{body} changed the configuration");
        }
        let Persistence::Store(store) = &mut st.host.store else { unreachable!() };
        assert_eq!(store.in_use(), written, "nothing was written");
    }

    #[test]
    fn a_failed_write_answers_503_and_changes_nothing() {
        let mut st = state_with(crate::host::testing::memory_store(true));
        let before = st.host.config.clone();
        let (s, v) = call(&mut st, &put("/api/v1/config", r#"{"keyboard":"German"}"#));
        assert_eq!(s, 503);
        assert!(v["error"]["message"].as_str().unwrap().contains("write protected"), "{v}");
        let (s, _) = call(&mut st, &put("/api/v1/network/management", r#"{"hostname":"esx2"}"#));
        assert_eq!(s, 503);
        assert_eq!(st.host.config.network, before.network);
        assert_eq!(
            call(&mut st, &put("/api/v1/account/root/password", r#"{"password":"a-new-pass"}"#)).0,
            503
        );
        assert_eq!(st.host.config, before);
        // The old password still works.
        assert_eq!(call(&mut st, &get("/api/v1/host")).0, 200);
    }

    #[test]
    fn without_a_store_changes_say_they_are_not_persistent() {
        let mut st = state();
        let (s, v) = call(&mut st, &get("/api/v1/config"));
        assert_eq!((s, v["store"]["persistent"].clone()), (200, Value::Bool(false)));
        assert_eq!(v["store"]["reason"], "no store in this test");
        let (s, v) = call(&mut st, &put("/api/v1/network/management", r#"{"hostname":"esx2"}"#));
        assert_eq!((s, v["persistent"].clone()), (202, Value::Bool(false)));
    }

    #[test]
    fn resolve_takes_a_valid_name() {
        let mut st = state();
        let (s, v) =
            call(&mut st, &format!("GET /api/v1/network/resolve?name=gw.lab HTTP/1.1\r\n{}\r\n", auth()));
        assert_eq!((s, v), (0, Value::String("gw.lab".into())));
        assert_eq!(
            call(&mut st, &format!("GET /api/v1/network/resolve?name=a..b HTTP/1.1\r\n{}\r\n", auth())).0,
            400
        );
        assert_eq!(call(&mut st, &format!("GET /api/v1/network/resolve HTTP/1.1\r\n{}\r\n", auth())).0, 400);
        assert_eq!(resolved("x", Err("timed out")).status, 502);
    }

    #[test]
    fn disks_and_datastores_are_listed_made_renamed_and_removed() {
        use ember_storage::block::MemDisk;
        use ember_storage::disks::HostDisks;
        use ember_storage::persist::Disk;
        let mut st = state();
        let mut data = MemDisk::new(512, 96 * 2048);
        data.bytes_mut()[600] = 9;
        let disks = alloc::vec![
            Disk::new("vda".into(), "virtio-blk", alloc::boxed::Box::new(MemDisk::new(512, 96 * 2048))),
            Disk::new("vdb".into(), "virtio-blk", alloc::boxed::Box::new(data)),
        ];
        st.host.disks = HostDisks::scan(disks, None, 5, &mut Vec::new());
        let (s, v) = call(&mut st, &get("/api/v1/disks"));
        assert_eq!(s, 200);
        assert_eq!(v["disks"][0]["used_by"], "free");
        assert_eq!(v["disks"][1]["size_bytes"], 96 << 20);
        let post = |body: &str| {
            format!(
                "POST /api/v1/datastores HTTP/1.1\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                auth(),
                body.len()
            )
        };
        let (s, v) = call(&mut st, &post(r#"{"name":"datastore1","disk":"vda"}"#));
        assert_eq!(s, 201, "{v}");
        assert_eq!((v["name"].as_str(), v["disk"].as_str()), (Some("datastore1"), Some("vda")));
        let (s, v) = call(&mut st, &post(r#"{"name":"ds2","disk":"vdb"}"#));
        assert_eq!(s, 409);
        assert!(v["error"]["message"].as_str().unwrap().contains("non-zero bytes at offset 600"), "{v}");
        assert_eq!(call(&mut st, &post(r#"{"name":"ds2","disk":"nope"}"#)).0, 404);
        assert_eq!(call(&mut st, &post(r#"{"name":"ds2","disk":"vdb","overwrite":"yes"}"#)).0, 400);
        assert_eq!(call(&mut st, &post(r#"{"name":"ds2","disk":"vdb","size":1}"#)).0, 400);
        assert_eq!(call(&mut st, &post(r#"{"name":"ds2","disk":"vdb","overwrite":true}"#)).0, 201);
        let (s, v) = call(&mut st, &get("/api/v1/datastores"));
        assert_eq!(s, 200);
        assert_eq!(v["datastores"].as_array().unwrap().len(), 2);
        assert_eq!(call(&mut st, &put("/api/v1/datastores/ds2", r#"{"name":"datastore1"}"#)).0, 409);
        let (s, v) = call(&mut st, &put("/api/v1/datastores/ds2", r#"{"name":"local ssd"}"#));
        assert_eq!((s, v["name"].as_str()), (200, Some("local ssd")));
        assert_eq!(call(&mut st, &get("/api/v1/datastores/local%20ssd")).0, 200);
        let del = format!(
            "DELETE /api/v1/datastores/local%20ssd HTTP/1.1\r\n{}Content-Type: application/json\r\n\r\n",
            auth()
        );
        assert_eq!(call(&mut st, &del).0, 200);
        assert_eq!(call(&mut st, &del).0, 404);
        assert_eq!(call(&mut st, &get("/api/v1/datastores/local%20ssd")).0, 404);
        // A browser's cross-site form post cannot make one.
        let form = format!(
            "POST /api/v1/datastores HTTP/1.1\r\n{}Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{{}}",
            auth()
        );
        assert_eq!(call(&mut st, &form).0, 415);
    }
}
