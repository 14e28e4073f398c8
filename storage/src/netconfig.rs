//! Management network settings: the model and its validation, shared by the appliance's network stack
//! (`ember-net` re-exports it as `ember_net::config`), the stored host configuration and kickstart
//! files; plus the boot-option syntax (ESXi-style `netdevice= bootproto= ip= netmask= gateway=
//! nameserver= vlanid= hostname=`). Every error names the option or field and what was expected.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::{Ipv4Addr, Ipv6Addr};
use serde_json::{json, Map, Value};

/// The most DNS servers the interface keeps (smoltcp's DHCP client reports at most three).
pub const MAX_DNS_SERVERS: usize = 3;
/// Longest host name accepted (RFC 1123 label rules, one label up to 63, whole name up to 253).
pub const MAX_HOSTNAME_LEN: usize = 253;

/// How the management interface gets its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Mode {
    /// DHCPv4 (RFC 2131) with renewal and rebinding.
    Dhcp,
    /// A fixed address.
    Static { address: Ipv4Addr, prefix: u8, gateway: Option<Ipv4Addr> },
}

/// How the management interface takes part in IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Mode {
    /// No IPv6 addresses (the default).
    Disabled,
    /// A link-local address (fe80::/64 with the EUI-64 interface identifier) plus addresses and
    /// the default router from router advertisements (SLAAC, RFC 4862). No DHCPv6.
    Auto,
    /// The link-local address plus one fixed address; the default gateway may be link-local.
    Static { address: Ipv6Addr, prefix: u8, gateway: Option<Ipv6Addr> },
}

/// The management network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementConfig {
    /// Uplink NIC name (`vmnic0`, `vmnic1`, ...).
    pub uplink: String,
    pub ipv4: Ipv4Mode,
    /// DNS servers given by the administrator; when empty in DHCP mode, the lease's servers are used.
    pub dns: Vec<Ipv4Addr>,
    pub hostname: String,
    /// 802.1Q VLAN id (1-4094) for management traffic, or untagged.
    pub vlan: Option<u16>,
    pub ipv6: Ipv6Mode,
}

impl Default for ManagementConfig {
    /// The built-in default: DHCP on the first NIC, untagged, host name `ember`.
    fn default() -> Self {
        ManagementConfig {
            uplink: String::from("vmnic0"),
            ipv4: Ipv4Mode::Dhcp,
            dns: Vec::new(),
            hostname: String::from("ember"),
            vlan: None,
            ipv6: Ipv6Mode::Disabled,
        }
    }
}

/// A rejected setting: which option or field, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The boot option or JSON field at fault.
    pub field: String,
    /// What is wrong, in words a person can act on.
    pub problem: String,
}

impl ConfigError {
    fn new(field: &str, problem: impl Into<String>) -> Self {
        ConfigError { field: field.to_string(), problem: problem.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Parses a dotted-quad IPv4 address.
pub fn parse_ipv4(field: &str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    s.parse::<Ipv4Addr>()
        .map_err(|_| ConfigError::new(field, format!("`{s}` is not an IPv4 address (expected a.b.c.d)")))
}

/// Converts a contiguous netmask (255.255.255.0) to a prefix length.
pub fn netmask_to_prefix(field: &str, mask: Ipv4Addr) -> Result<u8, ConfigError> {
    let m = u32::from(mask);
    let prefix = m.leading_ones();
    if m.checked_shl(prefix).unwrap_or(0) != 0 {
        return Err(ConfigError::new(field, format!("{mask} is not a contiguous netmask")));
    }
    Ok(prefix as u8)
}

/// Checks a host name against RFC 1123: labels of letters, digits and inner hyphens, 1-63 characters each.
pub fn validate_hostname(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > MAX_HOSTNAME_LEN {
        return Err(ConfigError::new(field, format!("must be 1 to {MAX_HOSTNAME_LEN} characters")));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(ConfigError::new(
                field,
                format!(
                    "`{name}` is not a valid host name (labels of letters, digits and inner hyphens, 1-63 each)"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a NIC name of the form `vmnicN`.
pub fn validate_nic_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = name
        .strip_prefix("vmnic")
        .is_some_and(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(field, format!("`{name}` is not a NIC name (expected vmnic0, vmnic1, ...)")))
    }
}

/// Checks a VLAN id (IEEE 802.1Q: 1-4094; 0 and 4095 are reserved).
pub fn validate_vlan(field: &str, id: u32) -> Result<u16, ConfigError> {
    if (1..=4094).contains(&id) {
        Ok(id as u16)
    } else {
        Err(ConfigError::new(field, format!("{id} is not a VLAN id (expected 1-4094)")))
    }
}

/// Parses an IPv6 address (RFC 4291 text forms).
pub fn parse_ipv6(field: &str, s: &str) -> Result<Ipv6Addr, ConfigError> {
    s.parse::<Ipv6Addr>().map_err(|_| ConfigError::new(field, format!("`{s}` is not an IPv6 address")))
}

/// Parses `address/prefix` (the prefix defaults to 64 when left out).
pub fn parse_ipv6_cidr(field: &str, s: &str) -> Result<(Ipv6Addr, u8), ConfigError> {
    let (a, p) = s.split_once('/').unwrap_or((s, "64"));
    let prefix = match p.parse::<u8>() {
        Ok(p) if (1..=128).contains(&p) => p,
        _ => {
            return Err(ConfigError::new(
                field,
                format!("`/{p}` is not a prefix length (expected /1 to /128)"),
            ))
        }
    };
    Ok((parse_ipv6(field, a)?, prefix))
}

/// True for an IPv6 address a host may use as a peer: not unspecified, loopback or multicast.
pub fn is_unicast_v6(a: Ipv6Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast())
}

/// True for fe80::/10.
pub fn is_link_local_v6(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

impl Ipv6Mode {
    /// Checks a static address (global or unique local, not link-local: that one is automatic)
    /// and its gateway (on-link in its prefix, or link-local).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let Ipv6Mode::Static { address, prefix, gateway } = *self else { return Ok(()) };
        if !(1..=128).contains(&prefix) {
            return Err(ConfigError::new("ipv6.prefix", format!("{prefix} is not a prefix length (1-128)")));
        }
        if !is_unicast_v6(address) || is_link_local_v6(address) || address.to_ipv4_mapped().is_some() {
            return Err(ConfigError::new(
                "ipv6.address",
                format!(
                    "{address} is not a global or unique local unicast address (link-local is automatic)"
                ),
            ));
        }
        if let Some(gw) = gateway {
            let mask = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
            let on_link = u128::from(gw) & mask == u128::from(address) & mask;
            if !is_unicast_v6(gw) || !(on_link || is_link_local_v6(gw)) {
                return Err(ConfigError::new(
                    "ipv6.gateway",
                    format!("{gw} is neither in {address}/{prefix} nor a link-local router address"),
                ));
            }
            if gw == address {
                return Err(ConfigError::new("ipv6.gateway", "must differ from the interface address"));
            }
        }
        Ok(())
    }

    /// The JSON form: `mode` ("disabled", "auto", "static"), `address`, `prefix`, `gateway`.
    pub fn to_json(&self) -> Value {
        match *self {
            Ipv6Mode::Disabled => json!({ "mode": "disabled" }),
            Ipv6Mode::Auto => json!({ "mode": "auto" }),
            Ipv6Mode::Static { address, prefix, gateway } => json!({
                "mode": "static",
                "address": address.to_string(),
                "prefix": prefix,
                "gateway": gateway.map(|g| g.to_string()),
            }),
        }
    }

    /// Applies the fields present in `obj`; errors are named `{path}ipv6.<field>`.
    fn merge_json(&self, obj: &Map<String, Value>, path: &str) -> Result<Ipv6Mode, ConfigError> {
        let err = |name: &str, problem: &str| ConfigError {
            field: format!("{path}ipv6.{name}"),
            problem: problem.to_string(),
        };
        let (mut mode, mut address, mut prefix, mut gateway) = match *self {
            Ipv6Mode::Disabled => ("disabled", None, None, None),
            Ipv6Mode::Auto => ("auto", None, None, None),
            Ipv6Mode::Static { address, prefix, gateway } => ("static", Some(address), Some(prefix), gateway),
        };
        let ip = |name: &str, v: &Value| -> Result<Option<Ipv6Addr>, ConfigError> {
            match v {
                Value::Null => Ok(None),
                Value::String(s) => parse_ipv6(&format!("{path}ipv6.{name}"), s).map(Some),
                _ => Err(err(name, "expected an IPv6 address string or null")),
            }
        };
        for (key, v) in obj {
            match key.as_str() {
                "mode" => {
                    mode = match v.as_str() {
                        Some("disabled") => "disabled",
                        Some("auto") => "auto",
                        Some("static") => "static",
                        _ => return Err(err("mode", "expected \"disabled\", \"auto\" or \"static\"")),
                    }
                }
                "address" => address = ip("address", v)?,
                "prefix" => match v {
                    Value::Null => prefix = None,
                    _ => match v.as_u64() {
                        Some(p) if (1..=128).contains(&p) => prefix = Some(p as u8),
                        _ => return Err(err("prefix", "expected a prefix length from 1 to 128")),
                    },
                },
                "gateway" => gateway = ip("gateway", v)?,
                other => {
                    let shown: String = other.chars().take(40).collect();
                    return Err(err(&shown, "unknown field (expected mode, address, prefix, gateway)"));
                }
            }
        }
        let out = match mode {
            "disabled" => Ipv6Mode::Disabled,
            "auto" => Ipv6Mode::Auto,
            _ => Ipv6Mode::Static {
                address: address.ok_or_else(|| err("address", "static mode needs an address"))?,
                prefix: prefix.unwrap_or(64),
                gateway,
            },
        };
        out.validate()
            .map_err(|e| ConfigError { field: format!("{path}{}", e.field), problem: e.problem })?;
        Ok(out)
    }
}

impl ManagementConfig {
    /// Checks the whole configuration for consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.ipv6.validate()?;
        validate_nic_name("uplink", &self.uplink)?;
        validate_hostname("hostname", &self.hostname)?;
        if let Some(v) = self.vlan {
            validate_vlan("vlan", v as u32)?;
        }
        if self.dns.len() > MAX_DNS_SERVERS {
            return Err(ConfigError::new("dns", format!("at most {MAX_DNS_SERVERS} servers")));
        }
        for d in &self.dns {
            if !is_unicast(*d) {
                return Err(ConfigError::new("dns", format!("{d} is not a unicast address")));
            }
        }
        if let Ipv4Mode::Static { address, prefix, gateway } = self.ipv4 {
            if !(1..=32).contains(&prefix) {
                return Err(ConfigError::new("prefix", format!("{prefix} is not a prefix length (1-32)")));
            }
            if !is_unicast(address) {
                return Err(ConfigError::new("address", format!("{address} is not a unicast host address")));
            }
            let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
            let host = u32::from(address) & !mask;
            if prefix <= 30 && (host == 0 || host == !mask) {
                return Err(ConfigError::new(
                    "address",
                    format!("{address}/{prefix} is the network or broadcast address of its subnet"),
                ));
            }
            if let Some(gw) = gateway {
                if !is_unicast(gw) {
                    return Err(ConfigError::new("gateway", format!("{gw} is not a unicast address")));
                }
                if u32::from(gw) & mask != u32::from(address) & mask {
                    return Err(ConfigError::new(
                        "gateway",
                        format!("{gw} is not in the interface's subnet {address}/{prefix}"),
                    ));
                }
                if gw == address {
                    return Err(ConfigError::new("gateway", "must differ from the interface address"));
                }
            }
        }
        Ok(())
    }

    /// Builds the configuration from boot options (key, value) pairs, starting from the defaults.
    /// Keys: `netdevice`, `bootproto` (dhcp|static), `ip`, `netmask`, `gateway`, `nameserver`
    /// (comma-separated), `vlanid`, `hostname`.
    pub fn from_boot_options(pairs: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut cfg = ManagementConfig::default();
        let mut proto: Option<bool> = None; // Some(true) = static
        let mut ip = None;
        let mut prefix = None;
        let mut gateway = None;
        for (key, value) in pairs {
            let k = key.as_str();
            match k {
                "netdevice" => {
                    validate_nic_name(k, value)?;
                    cfg.uplink = value.clone();
                }
                "bootproto" => {
                    proto = Some(match value.as_str() {
                        "dhcp" => false,
                        "static" => true,
                        _ => return Err(ConfigError::new(k, format!("`{value}`: expected dhcp or static"))),
                    })
                }
                "ip" => {
                    // Accept a.b.c.d or a.b.c.d/prefix.
                    match value.split_once('/') {
                        Some((a, p)) => {
                            ip = Some(parse_ipv4(k, a)?);
                            prefix = Some(parse_prefix(k, p)?);
                        }
                        None => ip = Some(parse_ipv4(k, value)?),
                    }
                }
                "netmask" => prefix = Some(netmask_to_prefix(k, parse_ipv4(k, value)?)?),
                "gateway" => gateway = Some(parse_ipv4(k, value)?),
                "nameserver" => {
                    cfg.dns = value.split(',').map(|s| parse_ipv4(k, s.trim())).collect::<Result<_, _>>()?
                }
                "vlanid" => {
                    let id: u32 = value.parse().map_err(|_| {
                        ConfigError::new(k, format!("`{value}` is not a number (expected 1-4094)"))
                    })?;
                    cfg.vlan = Some(validate_vlan(k, id)?);
                }
                "hostname" => {
                    validate_hostname(k, value)?;
                    cfg.hostname = value.clone();
                }
                _ => return Err(ConfigError::new(k, "not a network boot option")),
            }
        }
        let is_static = proto.unwrap_or(ip.is_some());
        if is_static {
            let address = ip.ok_or_else(|| ConfigError::new("ip", "bootproto=static needs ip="))?;
            let prefix = prefix.ok_or_else(|| {
                ConfigError::new("netmask", "a static ip= needs netmask= (or ip=a.b.c.d/len)")
            })?;
            cfg.ipv4 = Ipv4Mode::Static { address, prefix, gateway };
        } else if ip.is_some() || gateway.is_some() || prefix.is_some() {
            return Err(ConfigError::new("bootproto", "ip=, netmask= and gateway= need bootproto=static"));
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

fn parse_prefix(field: &str, s: &str) -> Result<u8, ConfigError> {
    match s.parse::<u8>() {
        Ok(p) if (1..=32).contains(&p) => Ok(p),
        _ => Err(ConfigError::new(field, format!("`/{s}` is not a prefix length (expected /1 to /32)"))),
    }
}

/// True for addresses a host may use as its own or as a peer: not 0.0.0.0/8, multicast, broadcast
/// or loopback.
pub fn is_unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified()
        || a.octets()[0] == 0
        || a.is_multicast()
        || a.is_broadcast()
        || a.is_loopback()
        || a.octets()[0] >= 240)
}

/// The JSON form (management API and stored configuration): `uplink`, `mode` ("dhcp"/"static"),
/// `address`, `prefix` (or `netmask` on input), `gateway`, `dns`, `vlan` (number or null), `hostname`,
/// `ipv6` (an object, see [`Ipv6Mode::to_json`]).
impl ManagementConfig {
    /// This configuration as a JSON object.
    pub fn to_json(&self) -> Value {
        let (mode, address, prefix, gateway) = match self.ipv4 {
            Ipv4Mode::Dhcp => ("dhcp", None, None, None),
            Ipv4Mode::Static { address, prefix, gateway } => ("static", Some(address), Some(prefix), gateway),
        };
        let ip = |a: Option<Ipv4Addr>| a.map_or(Value::Null, |a| Value::String(a.to_string()));
        json!({
            "uplink": self.uplink,
            "mode": mode,
            "address": ip(address),
            "prefix": prefix,
            "gateway": ip(gateway),
            "dns": self.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "vlan": self.vlan,
            "hostname": self.hostname,
            "ipv6": self.ipv6.to_json(),
        })
    }

    /// Applies the fields present in `obj` on top of this configuration and validates the result.
    /// Field names in errors are prefixed with `path` (for example `network.`). On error `self` is
    /// unchanged.
    pub fn merge_json(&mut self, obj: &Map<String, Value>, path: &str) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{path}{name}");
        let err =
            |name: &str, problem: &str| ConfigError { field: field(name), problem: problem.to_string() };
        let ip = |name: &str, v: &Value| -> Result<Option<Ipv4Addr>, ConfigError> {
            match v {
                Value::Null => Ok(None),
                Value::String(s) => parse_ipv4(&field(name), s).map(Some),
                _ => Err(err(name, "expected an IPv4 address string or null")),
            }
        };
        let mut cfg = self.clone();
        let (mut is_static, mut address, mut prefix, mut gateway) = match cfg.ipv4 {
            Ipv4Mode::Dhcp => (false, None, None, None),
            Ipv4Mode::Static { address, prefix, gateway } => (true, Some(address), Some(prefix), gateway),
        };
        for (key, v) in obj {
            match key.as_str() {
                "uplink" => {
                    let s =
                        v.as_str().ok_or_else(|| err("uplink", "expected a NIC name such as \"vmnic0\""))?;
                    validate_nic_name(&field("uplink"), s)?;
                    cfg.uplink = s.to_string();
                }
                "mode" => match v.as_str() {
                    Some("dhcp") => is_static = false,
                    Some("static") => is_static = true,
                    _ => return Err(err("mode", "expected \"dhcp\" or \"static\"")),
                },
                "address" => address = ip("address", v)?,
                "prefix" => match v {
                    Value::Null => prefix = None,
                    _ => match v.as_u64() {
                        Some(p) if (1..=32).contains(&p) => prefix = Some(p as u8),
                        _ => return Err(err("prefix", "expected a prefix length from 1 to 32")),
                    },
                },
                "netmask" => {
                    let s = v
                        .as_str()
                        .ok_or_else(|| err("netmask", "expected a netmask such as \"255.255.255.0\""))?;
                    prefix = Some(netmask_to_prefix(&field("netmask"), parse_ipv4(&field("netmask"), s)?)?);
                }
                "gateway" => gateway = ip("gateway", v)?,
                "dns" => {
                    let list =
                        v.as_array().ok_or_else(|| err("dns", "expected a list of IPv4 address strings"))?;
                    let mut dns = Vec::new();
                    for d in list {
                        dns.push(ip("dns", d)?.ok_or_else(|| err("dns", "null is not an address"))?);
                    }
                    cfg.dns = dns;
                }
                "vlan" => {
                    cfg.vlan = match v {
                        Value::Null => None,
                        Value::Number(n) => Some(validate_vlan(
                            &field("vlan"),
                            n.as_u64().map_or(u32::MAX, |id| id.min(u32::MAX as u64) as u32),
                        )?),
                        _ => return Err(err("vlan", "expected a VLAN id from 1 to 4094, or null")),
                    }
                }
                "hostname" => {
                    cfg.hostname = v.as_str().ok_or_else(|| err("hostname", "expected a string"))?.to_string()
                }
                "ipv6" => {
                    let o = v.as_object().ok_or_else(|| err("ipv6", "expected an object"))?;
                    cfg.ipv6 = cfg.ipv6.merge_json(o, path)?;
                }
                other => {
                    let shown: String = other.chars().take(40).collect();
                    return Err(err(
                        &shown,
                        "unknown field (expected uplink, mode, address, prefix, netmask, gateway, dns, vlan, hostname, ipv6)",
                    ));
                }
            }
        }
        cfg.ipv4 = if is_static {
            Ipv4Mode::Static {
                address: address.ok_or_else(|| err("address", "static mode needs an address"))?,
                prefix: prefix.ok_or_else(|| err("prefix", "static mode needs a prefix or netmask"))?,
                gateway,
            }
        } else {
            Ipv4Mode::Dhcp
        };
        cfg.validate()
            .map_err(|e| ConfigError { field: format!("{path}{}", e.field), problem: e.problem })?;
        *self = cfg;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn ipv6_json_round_trip_and_errors() {
        let mut c = ManagementConfig::default();
        assert_eq!(c.to_json()["ipv6"], json!({"mode": "disabled"}));
        let obj = |s: &str| serde_json::from_str::<Value>(s).unwrap().as_object().unwrap().clone();
        c.merge_json(&obj(r#"{"ipv6":{"mode":"auto"}}"#), "").unwrap();
        assert_eq!(c.ipv6, Ipv6Mode::Auto);
        c.merge_json(&obj(r#"{"ipv6":{"mode":"static","address":"2001:db8::10","gateway":"fe80::1"}}"#), "")
            .unwrap();
        let want = Ipv6Mode::Static {
            address: "2001:db8::10".parse().unwrap(),
            prefix: 64,
            gateway: Some("fe80::1".parse().unwrap()),
        };
        assert_eq!(c.ipv6, want);
        let mut back = ManagementConfig::default();
        back.merge_json(c.to_json().as_object().unwrap(), "").unwrap();
        assert_eq!(back, c);
        let good = c.clone();
        for (body, field) in [
            (r#"{"ipv6":{"mode":"slaac"}}"#, "network.ipv6.mode"),
            (r#"{"ipv6":{"mode":"static","address":null}}"#, "network.ipv6.address"),
            (r#"{"ipv6":{"address":"2001:db8::zz"}}"#, "network.ipv6.address"),
            (r#"{"ipv6":{"address":"fe80::5"}}"#, "network.ipv6.address"),
            (r#"{"ipv6":{"address":"ff02::1"}}"#, "network.ipv6.address"),
            (r#"{"ipv6":{"prefix":129}}"#, "network.ipv6.prefix"),
            (r#"{"ipv6":{"gateway":"2001:db9::1"}}"#, "network.ipv6.gateway"),
            (r#"{"ipv6":{"gateway":"2001:db8::10"}}"#, "network.ipv6.gateway"),
            (r#"{"ipv6":{"colour":1}}"#, "network.ipv6.colour"),
            (r#"{"ipv6":"auto"}"#, "network.ipv6"),
        ] {
            let mut t = good.clone();
            let e = t.merge_json(&obj(body), "network.").unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
            assert_eq!(t, good);
        }
        assert_eq!(parse_ipv6_cidr("f", "2001:db8::1/48").unwrap().1, 48);
        assert!(parse_ipv6_cidr("f", "2001:db8::1/0").is_err());
        assert!(parse_ipv6_cidr("f", "2001:db8::1/x").is_err());
    }

    #[test]
    fn defaults_are_dhcp_on_vmnic0() {
        let c = ManagementConfig::from_boot_options(&[]).unwrap();
        assert_eq!(c, ManagementConfig::default());
        assert_eq!(c.ipv4, Ipv4Mode::Dhcp);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn static_from_boot_options() {
        let c = ManagementConfig::from_boot_options(&pairs(&[
            ("bootproto", "static"),
            ("ip", "10.0.2.20"),
            ("netmask", "255.255.255.0"),
            ("gateway", "10.0.2.2"),
            ("nameserver", "10.0.2.3,1.1.1.1"),
            ("vlanid", "100"),
            ("hostname", "esx-01.lab"),
            ("netdevice", "vmnic1"),
        ]))
        .unwrap();
        assert_eq!(
            c.ipv4,
            Ipv4Mode::Static {
                address: Ipv4Addr::new(10, 0, 2, 20),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2))
            }
        );
        assert_eq!(c.dns.len(), 2);
        assert_eq!(c.vlan, Some(100));
        assert_eq!(c.uplink, "vmnic1");
        assert_eq!(c.hostname, "esx-01.lab");
        // ip= alone with a prefix implies static.
        let c = ManagementConfig::from_boot_options(&pairs(&[("ip", "192.168.1.5/16")])).unwrap();
        assert!(matches!(c.ipv4, Ipv4Mode::Static { prefix: 16, gateway: None, .. }));
    }

    #[test]
    fn each_bad_option_is_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("ip", "10.0.2")], "ip"),
            (&[("ip", "10.0.2.5/33")], "ip"),
            (&[("ip", "10.0.2.5"), ("netmask", "255.0.255.0")], "netmask"),
            (&[("ip", "10.0.2.5")], "netmask"),
            (&[("bootproto", "static")], "ip"),
            (&[("bootproto", "bootp")], "bootproto"),
            (&[("gateway", "10.0.2.2")], "bootproto"),
            (&[("ip", "10.0.2.5/24"), ("gateway", "10.0.3.1")], "gateway"),
            (&[("ip", "10.0.2.0/24")], "address"),
            (&[("ip", "10.0.2.255/24")], "address"),
            (&[("ip", "224.0.0.1/24")], "address"),
            (&[("vlanid", "0")], "vlanid"),
            (&[("vlanid", "4095")], "vlanid"),
            (&[("vlanid", "ten")], "vlanid"),
            (&[("hostname", "-bad")], "hostname"),
            (&[("hostname", "a..b")], "hostname"),
            (&[("hostname", "under_score")], "hostname"),
            (&[("netdevice", "eth0")], "netdevice"),
            (&[("nameserver", "1.1.1.1,x")], "nameserver"),
            (&[("nameserver", "1.1.1.1,1.0.0.1,8.8.8.8,9.9.9.9")], "dns"),
        ];
        for (p, field) in cases {
            let e = ManagementConfig::from_boot_options(&pairs(p)).unwrap_err();
            assert_eq!(e.field, *field, "{p:?}: {e}");
            assert!(!e.problem.is_empty());
        }
    }

    #[test]
    fn json_round_trip_and_named_errors() {
        let c = ManagementConfig::from_boot_options(&pairs(&[
            ("ip", "10.1.2.3/16"),
            ("gateway", "10.1.0.1"),
            ("vlanid", "9"),
        ]))
        .unwrap();
        let mut back = ManagementConfig::default();
        back.merge_json(c.to_json().as_object().unwrap(), "").unwrap();
        assert_eq!(back, c);
        for (body, field) in [
            (r#"{"address":null}"#, "network.address"),
            (r#"{"vlan":0}"#, "network.vlan"),
            (r#"{"vlan":-1}"#, "network.vlan"),
            (r#"{"dns":[null]}"#, "network.dns"),
            (r#"{"netmask":"255.0.255.0","mode":"static","address":"10.0.0.1"}"#, "network.netmask"),
            (r#"{"prefix":40}"#, "network.prefix"),
            (r#"{"uplink":"eth0"}"#, "network.uplink"),
            (r#"{"color":"red"}"#, "network.color"),
            (r#"{"mode":"static","address":"10.0.0.1","prefix":24,"gateway":"10.0.1.1"}"#, "network.gateway"),
        ] {
            let mut c2 = c.clone();
            let v: Value = serde_json::from_str(body).unwrap();
            let e = c2.merge_json(v.as_object().unwrap(), "network.").unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
            assert_eq!(c2, c, "{body} changed the configuration");
        }
    }

    #[test]
    fn netmask_conversion() {
        assert_eq!(netmask_to_prefix("m", Ipv4Addr::new(255, 255, 255, 0)).unwrap(), 24);
        assert_eq!(netmask_to_prefix("m", Ipv4Addr::new(255, 255, 255, 255)).unwrap(), 32);
        assert_eq!(netmask_to_prefix("m", Ipv4Addr::new(255, 255, 240, 0)).unwrap(), 20);
        assert!(netmask_to_prefix("m", Ipv4Addr::new(255, 255, 0, 255)).is_err());
    }
}
