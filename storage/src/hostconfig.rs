//! The host configuration: everything an administrator sets, as stored in the config store
//! ([`crate::config_store`]) and shown by `GET /api/v1/config` (later work).
//!
//! Stored as a JSON object with a `format` version. Decoding is strict: unknown fields, wrong types and
//! invalid values are errors naming the field (`network.vlan: ...`), so an edit is never silently
//! ignored; a newer format is refused rather than half-understood.

use crate::kickstart::KEYBOARD_LAYOUTS;
use crate::netconfig::{validate_hostname, ConfigError, ManagementConfig};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde_json::{json, Map, Value};

/// The format version this build writes and reads.
pub const CONFIG_FORMAT: u64 = 1;
/// Most DNS search suffixes.
pub const MAX_SEARCH_SUFFIXES: usize = 6;
/// Most SHA-512 crypt rounds accepted in a root password hash.
pub const MAX_SHA512_ROUNDS: u32 = 1_000_000;
/// Most PBKDF2 iterations a stored root password hash may ask for (ten times the appliance's own,
/// 100,000): every login attempt pays for them on the management CPU.
pub const MAX_PBKDF2_ITERATIONS: u32 = 1_000_000;
/// Most VMs in the inventory.
pub const MAX_INVENTORY: usize = 1024;
/// Longest delay between two VMs' starts at boot, in seconds (an hour).
pub const MAX_AUTOSTART_DELAY_SECONDS: u32 = 3600;
/// Most VMs in the autostart list.
pub const MAX_AUTOSTART: usize = 256;
/// Longest time-out, in minutes (one day, as ESXi allows).
pub const MAX_TIMEOUT_MINUTES: u32 = 1440;
/// The DCUI idle time-out of a new host, in minutes (ESXi's default 600 s).
pub const DEFAULT_DCUI_TIMEOUT_MINUTES: u32 = 10;

/// Everything an administrator configures on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// The root password as a salted slow hash (`$pbkdf2-sha256$...` or `$6$...`), never clear text.
    pub root_password_hash: String,
    /// Management network, including the host name.
    pub network: ManagementConfig,
    /// DNS search suffixes ("Custom DNS Suffixes").
    pub dns_search: Vec<String>,
    pub ssh_enabled: bool,
    pub shell_enabled: bool,
    /// Availability time-out (ESXi's `ESXiShellTimeOut`): this long after the local shell or SSH is
    /// enabled, both are disabled again. 0: never.
    pub shell_timeout_minutes: u32,
    /// Idle time-out (ESXi's `ESXiShellInteractiveTimeOut`) for shell and SSH sessions. 0: never.
    pub shell_idle_timeout_minutes: u32,
    /// Without a key for this long the DCUI logs out. 0: never.
    pub dcui_timeout_minutes: u32,
    pub keyboard: String,
    /// VM names started at boot, in order (before the VMs whose own definition says `autostart`).
    pub autostart: Vec<String>,
    /// Seconds between one VM's start at boot and the next one's (ESXi's start delay).
    pub autostart_delay_seconds: u32,
    /// Kickstart `%firstboot` sections stored with the first configuration and not run yet: they
    /// run once, right after it is stored, and the result is stored without them. Not part of
    /// the API's configuration document (it can be neither read nor set there).
    pub firstboot: Vec<PendingScript>,
    /// The VM inventory: the definitions of the VMs on datastores registered with this host
    /// (`[datastore1] vm1/vm1.json`), in the order they were added. Stored, but not part of the
    /// API's configuration document (`/api/v1/vms` changes it).
    pub vms: Vec<String>,
    /// The management API's HTTPS key and certificate chain. `None` until the host makes its
    /// self-signed one (first boot, and after Reset System Configuration). Stored, but not part of
    /// the API's configuration document: the key is never shown, and the certificate is changed
    /// through its own endpoint.
    pub tls: Option<TlsIdentity>,
}

/// A private key and its certificate chain, PEM (the checks that need cryptography - the key is
/// ECDSA, the certificate is X.509 and matches the key - are the HTTPS server's, `ember_net::tls`).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    /// PKCS#8 or SEC1, PEM.
    pub key_pem: String,
    /// The server certificate first, then the intermediates, PEM.
    pub chain_pem: String,
    /// Made by the host itself (replaced by a new one after Reset System Configuration).
    pub self_signed: bool,
}

impl core::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the key.
        f.debug_struct("TlsIdentity")
            .field("chain_pem", &self.chain_pem)
            .field("self_signed", &self.self_signed)
            .finish_non_exhaustive()
    }
}

/// Longest stored private key, PEM.
pub const MAX_TLS_KEY_PEM: usize = 2 * 1024;
/// Longest stored certificate chain, PEM.
pub const MAX_TLS_CHAIN_PEM: usize = 10 * 1024;

impl TlsIdentity {
    /// Checks the shape of a key and chain: bounded PEM text with the expected labels.
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        let pem = |name: &str, text: &str, max: usize, labels: &[&str]| {
            let f = format!("{field}.{name}");
            if text.len() > max {
                return Err(error(&f, format!("longer than {max} bytes")));
            }
            if !text.is_ascii() || !labels.iter().any(|l| text.contains(&format!("-----BEGIN {l}-----"))) {
                return Err(error(
                    &f,
                    format!("expected PEM text (-----BEGIN {}-----)", labels.join("----- or -----BEGIN ")),
                ));
            }
            Ok(())
        };
        pem("key", &self.key_pem, MAX_TLS_KEY_PEM, &["PRIVATE KEY", "EC PRIVATE KEY"])?;
        pem("certificate", &self.chain_pem, MAX_TLS_CHAIN_PEM, &["CERTIFICATE"])
    }

    fn to_json(&self) -> Value {
        json!({ "key": self.key_pem, "certificate": self.chain_pem, "self_signed": self.self_signed })
    }

    fn from_json(v: &Value) -> Result<Self, ConfigError> {
        let o = v.as_object().ok_or_else(|| error("tls", "expected an object"))?;
        if let Some(k) = o.keys().find(|k| !["key", "certificate", "self_signed"].contains(&k.as_str())) {
            return Err(error(&format!("tls.{k}"), "unknown field (expected key, certificate, self_signed)"));
        }
        let text = |name: &str| {
            o.get(name)
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| error(&format!("tls.{name}"), "missing (a string)"))
        };
        let id = TlsIdentity {
            key_pem: text("key")?,
            chain_pem: text("certificate")?,
            self_signed: o
                .get("self_signed")
                .and_then(Value::as_bool)
                .ok_or_else(|| error("tls.self_signed", "expected true or false"))?,
        };
        id.validate("tls")?;
        Ok(id)
    }
}

/// A `%firstboot` section waiting to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingScript {
    /// Where it came from (`ks.cfg:line 12`).
    pub source: String,
    /// The line of the kickstart file its first line is.
    pub first_line: usize,
    pub body: String,
}

/// Longest `source` of a pending script.
const MAX_SOURCE_LEN: usize = 512;

fn error(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError { field: field.to_string(), problem: problem.into() }
}

/// Checks that a stored root password hash has a scheme Ember can verify and a well-formed shape:
/// SHA-512 crypt (`$6$[rounds=N$]salt$hash`, at most [`MAX_SHA512_ROUNDS`] rounds) or
/// `$pbkdf2-sha256$iterations$salt$hash` (1000 to [`MAX_PBKDF2_ITERATIONS`] iterations).
pub fn validate_password_hash(field: &str, h: &str) -> Result<(), ConfigError> {
    let fields: Vec<&str> = h.split('$').collect();
    let crypt64 = |x: &str| x.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    let b64 = |x: &str| x.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
    let ok = match fields.as_slice() {
        ["", "6", rest @ ..] => {
            let (salt, hash) = match rest {
                // Every login pays for the rounds: cap them so a stored hash cannot stall the host.
                [r, s, h]
                    if r.strip_prefix("rounds=")
                        .and_then(|n| n.parse::<u32>().ok())
                        .is_some_and(|n| (1000..=MAX_SHA512_ROUNDS).contains(&n)) =>
                {
                    (*s, *h)
                }
                [s, h] => (*s, *h),
                _ => ("", ""),
            };
            !salt.is_empty() && salt.len() <= 16 && hash.len() == 86 && crypt64(salt) && crypt64(hash)
        }
        ["", "pbkdf2-sha256", iterations, salt, hash] => {
            iterations.parse::<u32>().is_ok_and(|i| (1000..=MAX_PBKDF2_ITERATIONS).contains(&i))
                && !salt.is_empty()
                && !hash.is_empty()
                && b64(salt)
                && b64(hash)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(error(
            field,
            "expected a SHA-512 crypt hash ($6$[rounds=N$]salt$hash, 1000 to 1000000 rounds) or \
             $pbkdf2-sha256$iterations$salt$hash (1000 to 1000000 iterations)",
        ))
    }
}

fn string_list(
    field: &str,
    v: &Value,
    max: usize,
    check: impl Fn(&str, &str) -> Result<(), ConfigError>,
) -> Result<Vec<String>, ConfigError> {
    let list = v.as_array().ok_or_else(|| error(field, "expected a list of strings"))?;
    if list.len() > max {
        return Err(error(field, format!("at most {max} entries")));
    }
    let mut out = Vec::new();
    for item in list {
        let s = item.as_str().ok_or_else(|| error(field, "expected a list of strings"))?;
        check(field, s)?;
        if out.iter().any(|o: &String| o == s) {
            return Err(error(field, format!("`{s}` is listed twice")));
        }
        out.push(s.to_string());
    }
    Ok(out)
}

/// Decodes the stored pending `%firstboot` scripts (each must still read as a script).
fn decode_pending(v: &Value) -> Result<Vec<PendingScript>, ConfigError> {
    let list = v.as_array().ok_or_else(|| error("firstboot", "expected a list"))?;
    let mut out = Vec::new();
    let mut total = 0;
    for (i, item) in list.iter().enumerate() {
        let field = format!("firstboot[{i}]");
        let o = item.as_object().ok_or_else(|| error(&field, "expected an object"))?;
        if let Some(k) = o.keys().find(|k| !["source", "line", "script"].contains(&k.as_str())) {
            return Err(error(&format!("{field}.{k}"), "unknown field (expected source, line, script)"));
        }
        let source =
            o.get("source").and_then(Value::as_str).filter(|s| s.len() <= MAX_SOURCE_LEN).ok_or_else(
                || {
                    error(
                        &format!("{field}.source"),
                        format!("expected a string of at most {MAX_SOURCE_LEN} bytes"),
                    )
                },
            )?;
        let first_line = o
            .get("line")
            .and_then(Value::as_u64)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| error(&format!("{field}.line"), "expected a line number"))?;
        let body = o
            .get("script")
            .and_then(Value::as_str)
            .ok_or_else(|| error(&format!("{field}.script"), "expected a string"))?;
        total += body.len();
        if total > crate::script::MAX_SCRIPT_BYTES {
            return Err(error(
                "firstboot",
                format!("the scripts are longer than {} bytes", crate::script::MAX_SCRIPT_BYTES),
            ));
        }
        crate::script::parse(body, first_line)
            .map_err(|e| error(&format!("{field}.script"), format!("line {}: {}", e.line, e.message)))?;
        out.push(PendingScript { source: source.to_string(), first_line, body: body.to_string() });
    }
    Ok(out)
}

/// Checks a VM name: 1-80 letters, digits, `-`, `_` or `.`.
pub fn validate_vm_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 80
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(error(field, format!("`{name}` is not a VM name (1-80 letters, digits, - _ .)")))
    }
}

impl HostConfig {
    /// The built-in defaults with the given root password hash.
    pub fn defaults(root_password_hash: String) -> Self {
        HostConfig {
            root_password_hash,
            network: ManagementConfig::default(),
            dns_search: Vec::new(),
            ssh_enabled: false,
            shell_enabled: false,
            shell_timeout_minutes: 0,
            shell_idle_timeout_minutes: 0,
            dcui_timeout_minutes: DEFAULT_DCUI_TIMEOUT_MINUTES,
            keyboard: String::from("US Default"),
            autostart: Vec::new(),
            autostart_delay_seconds: 0,
            firstboot: Vec::new(),
            vms: Vec::new(),
            tls: None,
        }
    }

    /// The stored form (with the pending `%firstboot` scripts and the HTTPS key).
    pub fn to_json(&self) -> Value {
        let mut v = self.settings_json();
        if let (Value::Object(m), false) = (&mut v, self.firstboot.is_empty()) {
            let pending: Vec<Value> = self
                .firstboot
                .iter()
                .map(|p| json!({ "source": p.source, "line": p.first_line, "script": p.body }))
                .collect();
            m.insert(String::from("firstboot"), Value::Array(pending));
        }
        if let (Value::Object(m), false) = (&mut v, self.vms.is_empty()) {
            m.insert(String::from("vms"), json!(self.vms));
        }
        if let (Value::Object(m), Some(tls)) = (&mut v, &self.tls) {
            m.insert(String::from("tls"), tls.to_json());
        }
        v
    }

    /// What an administrator sets (the stored form without pending `%firstboot` scripts): the
    /// API's configuration document.
    pub fn settings_json(&self) -> Value {
        json!({
            "format": CONFIG_FORMAT,
            "root_password_hash": self.root_password_hash,
            "network": self.network.to_json(),
            "dns_search": self.dns_search,
            "ssh": self.ssh_enabled,
            "shell": self.shell_enabled,
            "shell_timeout_minutes": self.shell_timeout_minutes,
            "shell_idle_timeout_minutes": self.shell_idle_timeout_minutes,
            "dcui_timeout_minutes": self.dcui_timeout_minutes,
            "keyboard": self.keyboard,
            "autostart": self.autostart,
            "autostart_delay_seconds": self.autostart_delay_seconds,
        })
    }

    /// Serialized for the config store.
    pub fn encode(&self) -> Vec<u8> {
        self.to_json().to_string().into_bytes()
    }

    /// Decodes and validates a stored configuration.
    pub fn decode(bytes: &[u8]) -> Result<Self, ConfigError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| error("(document)", format!("not valid JSON: {e}")))?;
        let Value::Object(obj) = value else { return Err(error("(document)", "expected a JSON object")) };
        match obj.get("format").and_then(Value::as_u64) {
            Some(CONFIG_FORMAT) => {}
            Some(n) if n > CONFIG_FORMAT => {
                return Err(error(
                    "format",
                    format!("version {n} is newer than this Ember understands ({CONFIG_FORMAT})"),
                ))
            }
            _ => return Err(error("format", format!("expected the number {CONFIG_FORMAT}"))),
        }
        let hash = obj
            .get("root_password_hash")
            .and_then(Value::as_str)
            .ok_or_else(|| error("root_password_hash", "missing (a string)"))?;
        let mut cfg = HostConfig::defaults(hash.to_string());
        let mut obj = obj;
        let pending = obj.remove("firstboot");
        let tls = obj.remove("tls");
        let vms = obj.remove("vms");
        cfg.merge(&obj)?;
        if let Some(v) = vms {
            cfg.vms = string_list("vms", &v, MAX_INVENTORY, |field, p| {
                crate::vmdef::DsPath::parse(p).map(|_| ()).map_err(|e| error(field, e))
            })?;
        }
        if let Some(p) = pending {
            cfg.firstboot = decode_pending(&p)?;
        }
        if let Some(t) = tls {
            cfg.tls = Some(TlsIdentity::from_json(&t)?);
        }
        Ok(cfg)
    }

    /// Applies the fields present in `obj` (a whole document or a change), validating everything;
    /// on error `self` is unchanged.
    pub fn merge(&mut self, obj: &Map<String, Value>) -> Result<(), ConfigError> {
        let mut cfg = self.clone();
        let boolean =
            |field: &str, v: &Value| v.as_bool().ok_or_else(|| error(field, "expected true or false"));
        let minutes = |field: &str, v: &Value| {
            v.as_u64().filter(|&m| m <= MAX_TIMEOUT_MINUTES as u64).map(|m| m as u32).ok_or_else(|| {
                error(field, format!("expected whole minutes from 0 (never) to {MAX_TIMEOUT_MINUTES}"))
            })
        };
        for (key, v) in obj {
            match key.as_str() {
                "format" => {}
                "root_password_hash" => {
                    let h = v.as_str().ok_or_else(|| error("root_password_hash", "expected a string"))?;
                    validate_password_hash("root_password_hash", h)?;
                    cfg.root_password_hash = h.to_string();
                }
                "network" => {
                    let n = v.as_object().ok_or_else(|| error("network", "expected an object"))?;
                    cfg.network.merge_json(n, "network.")?;
                }
                "dns_search" => {
                    cfg.dns_search = string_list("dns_search", v, MAX_SEARCH_SUFFIXES, validate_hostname)?
                }
                "ssh" => cfg.ssh_enabled = boolean("ssh", v)?,
                "shell" => cfg.shell_enabled = boolean("shell", v)?,
                "shell_timeout_minutes" => cfg.shell_timeout_minutes = minutes(key, v)?,
                "shell_idle_timeout_minutes" => cfg.shell_idle_timeout_minutes = minutes(key, v)?,
                "dcui_timeout_minutes" => cfg.dcui_timeout_minutes = minutes(key, v)?,
                "keyboard" => {
                    let k = v.as_str().ok_or_else(|| error("keyboard", "expected a string"))?;
                    if !KEYBOARD_LAYOUTS.contains(&k) {
                        return Err(error(
                            "keyboard",
                            format!("unknown layout `{k}` (for example \"US Default\", \"German\")"),
                        ));
                    }
                    cfg.keyboard = k.to_string();
                }
                "autostart" => cfg.autostart = string_list("autostart", v, MAX_AUTOSTART, validate_vm_name)?,
                "autostart_delay_seconds" => {
                    cfg.autostart_delay_seconds = v
                        .as_u64()
                        .filter(|&s| s <= MAX_AUTOSTART_DELAY_SECONDS as u64)
                        .map(|s| s as u32)
                        .ok_or_else(|| {
                            error(
                                key,
                                format!("expected whole seconds from 0 to {MAX_AUTOSTART_DELAY_SECONDS}"),
                            )
                        })?
                }
                other => {
                    let shown: String = other.chars().take(40).collect();
                    return Err(error(&shown, "unknown field (expected format, root_password_hash, network, dns_search, ssh, shell, shell_timeout_minutes, shell_idle_timeout_minutes, dcui_timeout_minutes, keyboard, autostart, autostart_delay_seconds)"));
                }
            }
        }
        validate_password_hash("root_password_hash", &cfg.root_password_hash)?;
        *self = cfg;
        Ok(())
    }
}

/// The shell and SSH availability time-out: once either service is enabled, both are disabled again
/// after [`HostConfig::shell_timeout_minutes`]. The clock starts when a service is enabled (or at
/// boot with one enabled) and starts again whenever the time-out is changed.
#[derive(Debug, Default, Clone)]
pub struct AvailabilityTimer {
    /// The services' state and time-out last seen, and since when.
    watching: Option<((bool, u32), u64)>,
}

impl AvailabilityTimer {
    /// Looks at the configuration in force at `now_ms`; when the time-out has run out, returns the
    /// configuration to store (both services disabled). A store that fails is tried again after
    /// another full time-out.
    pub fn check(&mut self, cfg: &HostConfig, now_ms: u64) -> Option<HostConfig> {
        let state = (cfg.ssh_enabled || cfg.shell_enabled, cfg.shell_timeout_minutes);
        let since = match self.watching {
            Some((seen, since)) if seen == state => since,
            _ => {
                self.watching = Some((state, now_ms));
                now_ms
            }
        };
        let (enabled, minutes) = state;
        if !enabled || minutes == 0 || now_ms.saturating_sub(since) < minutes as u64 * 60_000 {
            return None;
        }
        self.watching = Some((state, now_ms));
        let mut off = cfg.clone();
        off.ssh_enabled = false;
        off.shell_enabled = false;
        Some(off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netconfig::Ipv4Mode;

    #[test]
    fn availability_time_out_disables_shell_and_ssh() {
        let mut t = AvailabilityTimer::default();
        let mut c = HostConfig::defaults(HASH.into());
        c.shell_timeout_minutes = 5;
        // Nothing enabled: nothing to do, however long.
        assert_eq!(t.check(&c, 0), None);
        assert_eq!(t.check(&c, 10 * 60_000), None);
        // SSH enabled at minute 10: disabled at minute 15, not before.
        c.ssh_enabled = true;
        assert_eq!(t.check(&c, 10 * 60_000), None);
        assert_eq!(t.check(&c, 15 * 60_000 - 1), None);
        let off = t.check(&c, 15 * 60_000).expect("time-out reached");
        assert!(!off.ssh_enabled && !off.shell_enabled);
        assert_eq!((off.shell_timeout_minutes, &off.network), (5, &c.network));
        // The store failed (still enabled): tried again one time-out later.
        assert_eq!(t.check(&c, 16 * 60_000), None);
        assert!(t.check(&c, 20 * 60_000).is_some());
        // Changing the time-out starts the clock again; 0 never disables.
        c.shell_timeout_minutes = 1;
        assert_eq!(t.check(&c, 21 * 60_000), None);
        assert!(t.check(&c, 22 * 60_000).is_some());
        c.shell_timeout_minutes = 0;
        assert_eq!(t.check(&c, 23 * 60_000), None);
        assert_eq!(t.check(&c, 2000 * 60_000), None);
        // Enabled at boot with a time-out: counted from the first look.
        let mut t = AvailabilityTimer::default();
        c.shell_enabled = true;
        c.ssh_enabled = false;
        c.shell_timeout_minutes = 2;
        assert_eq!(t.check(&c, 1000), None);
        assert!(t.check(&c, 1000 + 2 * 60_000).is_some());
    }

    const HASH: &str =
        "$pbkdf2-sha256$100000$AAECAwQFBgcICQoLDA0ODw==$3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhs=";

    fn sample() -> HostConfig {
        let mut c = HostConfig::defaults(HASH.into());
        c.network.hostname = "esx01".into();
        c.network.vlan = Some(10);
        c.dns_search = alloc::vec!["lab.example".into()];
        c.ssh_enabled = true;
        c.shell_timeout_minutes = 30;
        c.shell_idle_timeout_minutes = 5;
        c.dcui_timeout_minutes = 0;
        c.autostart = alloc::vec!["web-1".into(), "db_2".into()];
        c.autostart_delay_seconds = 120;
        c
    }

    #[test]
    fn the_vm_inventory_is_stored_but_not_a_setting() {
        let mut c = sample();
        c.vms = alloc::vec!["[datastore1] web/web.json".into(), "[ds 2] db/db.json".into()];
        let stored = c.encode();
        assert_eq!(HostConfig::decode(&stored).unwrap(), c);
        assert!(c.settings_json().get("vms").is_none());
        // A setting change cannot set it.
        let mut d = c.clone();
        let change: Value = serde_json::from_str(r#"{"vms": []}"#).unwrap();
        assert_eq!(d.merge(change.as_object().unwrap()).unwrap_err().field, "vms");
        for bad in [r#"["web/web.json"]"#, r#"["[ds] a", "[ds] a"]"#, r#""[ds] a""#] {
            let mut v: Value = serde_json::from_slice(&stored).unwrap();
            v["vms"] = serde_json::from_str(bad).unwrap();
            let e = HostConfig::decode(v.to_string().as_bytes()).unwrap_err();
            assert_eq!(e.field, "vms", "{bad}");
        }
    }

    #[test]
    fn round_trip() {
        let c = sample();
        assert_eq!(HostConfig::decode(&c.encode()).unwrap(), c);
        let d = HostConfig::defaults(HASH.into());
        assert_eq!(HostConfig::decode(&d.encode()).unwrap(), d);
        assert_eq!(d.network.ipv4, Ipv4Mode::Dhcp);
        // A configuration stored before the time-outs existed decodes with their defaults.
        let older = format!(r#"{{"format":1,"root_password_hash":"{HASH}","ssh":true}}"#);
        let o = HostConfig::decode(older.as_bytes()).unwrap();
        assert_eq!((o.ssh_enabled, o.shell_timeout_minutes, o.dcui_timeout_minutes), (true, 0, 10));
    }

    #[test]
    fn every_bad_field_is_named_and_changes_nothing() {
        let good = sample();
        let cases: &[(&str, &str)] = &[
            (r#"{"ssh":"yes"}"#, "ssh"),
            (r#"{"shell":1}"#, "shell"),
            (r#"{"shell_timeout_minutes":1441}"#, "shell_timeout_minutes"),
            (r#"{"shell_idle_timeout_minutes":-1}"#, "shell_idle_timeout_minutes"),
            (r#"{"dcui_timeout_minutes":"10"}"#, "dcui_timeout_minutes"),
            (r#"{"autostart_delay_seconds":3601}"#, "autostart_delay_seconds"),
            (r#"{"autostart_delay_seconds":-1}"#, "autostart_delay_seconds"),
            (r#"{"dcui_timeout_minutes":2.5}"#, "dcui_timeout_minutes"),
            (r#"{"keyboard":"Klingon"}"#, "keyboard"),
            (r#"{"dns_search":["ok.example","bad_suffix"]}"#, "dns_search"),
            (r#"{"dns_search":["a","a"]}"#, "dns_search"),
            (r#"{"autostart":["has space"]}"#, "autostart"),
            (r#"{"autostart":"vm1"}"#, "autostart"),
            (r#"{"network":{"vlan":9999}}"#, "network.vlan"),
            (r#"{"network":{"mode":"static"}}"#, "network.address"),
            (r#"{"network":[]}"#, "network"),
            (r#"{"root_password_hash":"plaintext"}"#, "root_password_hash"),
            (r#"{"root_password_hash":"$pbkdf2-sha256$10$AA==$AA=="}"#, "root_password_hash"),
            (r#"{"colour":"red"}"#, "colour"),
        ];
        for (body, field) in cases {
            let mut c = good.clone();
            let v: Value = serde_json::from_str(body).unwrap();
            let e = c.merge(v.as_object().unwrap()).unwrap_err();
            assert_eq!(e.field, *field, "{body}: {e}");
            assert_eq!(c, good, "{body} changed the configuration");
        }
    }

    #[test]
    fn the_https_identity_is_stored_never_shown_and_never_taken_from_a_change() {
        let mut c = sample();
        c.tls = Some(TlsIdentity {
            key_pem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            chain_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            self_signed: true,
        });
        assert_eq!(HostConfig::decode(&c.encode()).unwrap(), c);
        assert!(c.settings_json().get("tls").is_none(), "the key is never part of the API's document");
        assert!(!format!("{:?}", c.tls).contains("PRIVATE"), "nor of debug output");
        // A change cannot set it.
        let v: Value =
            serde_json::from_str(r#"{"tls":{"key":"x","certificate":"y","self_signed":true}}"#).unwrap();
        assert_eq!(c.clone().merge(v.as_object().unwrap()).unwrap_err().field, "tls");
        // A damaged stored identity is refused, naming the field.
        let bad = |f: &dyn Fn(&mut Value)| {
            let mut v: Value = serde_json::from_slice(&c.encode()).unwrap();
            f(&mut v);
            HostConfig::decode(v.to_string().as_bytes()).unwrap_err().field
        };
        assert_eq!(bad(&|v| v["tls"]["key"] = json!("not pem")), "tls.key");
        assert_eq!(
            bad(&|v| v["tls"]["certificate"] = json!("x".repeat(MAX_TLS_CHAIN_PEM + 1))),
            "tls.certificate"
        );
        assert_eq!(bad(&|v| v["tls"]["self_signed"] = json!("yes")), "tls.self_signed");
        assert_eq!(bad(&|v| v["tls"]["extra"] = json!(1)), "tls.extra");
        assert_eq!(bad(&|v| v["tls"] = json!([])), "tls");
    }

    #[test]
    fn pending_firstboot_scripts_are_stored_checked_and_never_taken_from_a_change() {
        let mut c = sample();
        c.firstboot = alloc::vec![PendingScript {
            source: "ks.cfg:line 9".into(),
            first_line: 10,
            body: "vim-cmd hostsvc/enable_ssh\n".into()
        }];
        assert_eq!(HostConfig::decode(&c.encode()).unwrap(), c);
        assert!(c.settings_json().get("firstboot").is_none());
        assert!(sample().to_json().get("firstboot").is_none(), "only stored while pending");
        let bad = |pending: &str| {
            let doc = format!(r#"{{"format":1,"root_password_hash":"{HASH}","firstboot":{pending}}}"#);
            HostConfig::decode(doc.as_bytes()).unwrap_err().to_string()
        };
        assert!(bad(r#"{}"#).starts_with("firstboot: expected a list"));
        assert!(bad(r#"[{"source":"x","line":1}]"#).starts_with("firstboot[0].script"));
        assert!(bad(r#"[{"source":"x","line":"1","script":""}]"#).starts_with("firstboot[0].line"));
        assert!(bad(r#"[{"source":"x","line":1,"script":"","extra":1}]"#).starts_with("firstboot[0].extra"));
        let e = bad(r#"[{"source":"x","line":7,"script":"ls | wc"}]"#);
        assert!(e.starts_with("firstboot[0].script: line 7: pipes"), "{e}");
        // A change (API PUT) cannot add scripts.
        let mut c = sample();
        let v: Value = serde_json::from_str(r#"{"firstboot":[]}"#).unwrap();
        assert_eq!(c.merge(v.as_object().unwrap()).unwrap_err().field, "firstboot");
    }

    #[test]
    fn document_level_errors() {
        let e = |b: &str| HostConfig::decode(b.as_bytes()).unwrap_err().to_string();
        assert!(e("not json").starts_with("(document): not valid JSON"));
        assert!(e("[]").contains("expected a JSON object"));
        assert!(e(r#"{"root_password_hash":"x"}"#).starts_with("format:"));
        assert!(e(r#"{"format":2}"#).contains("newer than this Ember"));
        assert!(e(r#"{"format":1}"#).starts_with("root_password_hash: missing"));
    }

    #[test]
    fn password_hash_shapes() {
        let sha512 = "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/";
        assert!(validate_password_hash("h", sha512).is_ok());
        assert!(validate_password_hash("h", &sha512.replace("$6$", "$6$rounds=5000$")).is_ok());
        assert!(validate_password_hash("h", HASH).is_ok());
        assert!(validate_password_hash("h", &sha512.replace("$6$", "$6$rounds=1000001$")).is_err());
        assert!(validate_password_hash("h", &sha512.replace("$6$", "$6$rounds=x$")).is_err());
        for bad in
            ["", "$1$abc$def", "$6$salt$short", "$6$$x", "$pbkdf2-sha256$x$a$b", "$pbkdf2-sha256$1000$a!$b"]
        {
            assert!(validate_password_hash("h", bad).is_err(), "{bad}");
        }
    }
}
