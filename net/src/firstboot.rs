//! Turning a validated kickstart into the host configuration a first boot stores (PRODUCT.md 2).
//!
//! All or nothing: the result is a complete [`HostConfig`] or an error naming the kickstart line and
//! what is wrong; nothing is half applied. What this version cannot carry out is said plainly in the
//! notes (and, under `paranoid`, refuses the kickstart): `install`/`upgrade`/`clearpart`/`part`
//! (unattended installation is separate work), and `%pre`/`%post`/`%firstboot` scripts (Ember has no
//! script interpreter yet). `dryrun` parses and checks only.

use crate::api::NicInfo;
use crate::auth::{PasswordHash, DEFAULT_ITERATIONS};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ember_storage::hostconfig::HostConfig;
use ember_storage::kickstart::{Kickstart, NicRef, RootPw, SectionKind};

/// A kickstart turned into a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub config: HostConfig,
    /// What the console should say about the kickstart (warnings, parts not carried out).
    pub notes: Vec<String>,
}

/// What was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// The kickstart cannot be applied; the text names the line.
    Invalid(String),
    /// `dryrun`: checked and valid, deliberately not applied.
    DryRun,
}

impl core::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ApplyError::Invalid(why) => write!(f, "{why}"),
            ApplyError::DryRun => write!(f, "the kickstart says dryrun: checked and valid, nothing applied"),
        }
    }
}

/// Hashes a clear-text root password for storage: PBKDF2 with the default iterations and `salt`.
pub fn hash_password(password: &str, salt: [u8; 16]) -> String {
    PasswordHash::new(password, salt, DEFAULT_ITERATIONS).encode()
}

/// Builds the configuration `ks` asks for on top of `base` (the built-in configuration). `nics` are
/// this host's NICs (for `network --device=<MAC>`); `hash` turns a clear-text `rootpw` into the
/// stored hash (normally [`hash_password`] with a fresh salt).
pub fn config_from_kickstart(
    ks: &Kickstart,
    base: &HostConfig,
    nics: &[NicInfo],
    hash: &mut dyn FnMut(&str) -> String,
) -> Result<Applied, ApplyError> {
    let mut notes: Vec<String> = ks.warnings.iter().map(|w| w.to_string()).collect();
    let mut unsupported = Vec::new();
    if let Some(i) = &ks.install {
        unsupported.push(format!("{:?} onto a disk is not carried out by this version (unattended installation is not built yet)", i.kind).to_lowercase());
    }
    if ks.clearpart.is_some() {
        unsupported.push(String::from("clearpart is not carried out by this version"));
    }
    for p in &ks.parts {
        unsupported.push(format!("{}: part {} is not carried out by this version", p.place, p.datastore));
    }
    for s in &ks.sections {
        let name = match s.kind {
            SectionKind::Pre => "%pre",
            SectionKind::Post => "%post",
            SectionKind::FirstBoot => "%firstboot",
        };
        unsupported.push(format!("{}: {name} section not run: Ember has no script interpreter yet", s.place));
    }
    if ks.paranoid {
        if let Some(first) = notes.first().or(unsupported.first()) {
            return Err(ApplyError::Invalid(format!("paranoid: {first}")));
        }
    }
    notes.extend(unsupported);

    let mut config = base.clone();
    config.root_password_hash = match &ks.rootpw {
        // The parser has checked the password rules.
        RootPw::Plain(pw) => hash(pw),
        RootPw::Crypted(h) => h.clone(),
    };
    if let Some(network) = &ks.network {
        let mut network = network.clone();
        if let Some(NicRef::Mac(mac)) = &ks.network_device {
            let nic = nics.iter().find(|n| n.mac == *mac).ok_or_else(|| {
                ApplyError::Invalid(format!(
                    "network --device={}: no NIC has this MAC address",
                    crate::api::mac_string(mac)
                ))
            })?;
            network.uplink = nic.name.clone();
        } else if !nics.iter().any(|n| n.name == network.uplink) {
            let present: Vec<&str> = nics.iter().map(|n| n.name.as_str()).collect();
            return Err(ApplyError::Invalid(format!(
                "network --device={}: no such NIC (present: {})",
                network.uplink,
                if present.is_empty() { String::from("none") } else { present.join(", ") }
            )));
        }
        config.network = network;
    }
    if let Some(k) = &ks.keyboard {
        config.keyboard = k.clone();
    }
    if ks.serialnum.is_some() {
        notes.push(String::from("serialnum: Ember needs no license key; ignored"));
    }
    if ks.dryrun {
        return Err(ApplyError::DryRun);
    }
    // The stored form is validated once more as a whole, as a stored configuration is at boot.
    HostConfig::decode(&config.encode())
        .map_err(|e| ApplyError::Invalid(format!("resulting configuration: {e}")))?;
    Ok(Applied { config, notes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::StoredHash;
    use ember_storage::kickstart::parse;
    use ember_storage::netconfig::Ipv4Mode;

    fn ks(text: &str) -> Kickstart {
        parse("ks.cfg", text, &mut |n: &str| Err(format!("no {n}"))).unwrap()
    }

    fn nics() -> Vec<NicInfo> {
        alloc::vec![
            NicInfo {
                name: "vmnic0".into(),
                mac: [0x52, 0x54, 0, 0, 0, 0x10],
                link: true,
                driver: "virtio-net"
            },
            NicInfo { name: "vmnic1".into(), mac: [0x52, 0x54, 0, 0, 0, 0x11], link: true, driver: "e1000e" },
        ]
    }

    fn base() -> HostConfig {
        HostConfig::defaults(PasswordHash::new("ember-initial", [1; 16], 1000).encode())
    }

    fn apply(text: &str) -> Result<Applied, ApplyError> {
        config_from_kickstart(&ks(text), &base(), &nics(), &mut |pw| hash_password(pw, [5; 16]))
    }

    #[test]
    fn a_complete_kickstart_becomes_the_configuration() {
        let a = apply(
            "vmaccepteula\nrootpw s3cret-pass\nnetwork --bootproto=static --device=52:54:00:00:00:11 --ip=10.0.2.30 --netmask=255.255.255.0 --gateway=10.0.2.2 --nameserver=10.0.2.3 --hostname=esx-ks --vlanid=5\nkeyboard German\n",
        )
        .unwrap();
        let c = &a.config;
        assert!(StoredHash::decode(&c.root_password_hash).unwrap().verify("s3cret-pass"));
        assert_eq!(c.network.uplink, "vmnic1");
        assert_eq!(c.network.hostname, "esx-ks");
        assert_eq!(c.network.vlan, Some(5));
        assert!(matches!(c.network.ipv4, Ipv4Mode::Static { prefix: 24, .. }));
        assert_eq!(c.keyboard, "German");
        assert_eq!(a.notes, ["warning: ks.cfg:line 2: rootpw: password in clear text; consider --iscrypted"]);
    }

    #[test]
    fn crypted_password_and_defaults_elsewhere() {
        let h = "$6$saltsalt$hRM5XZ86KXEw9UOmjigeVqFgULtFB2sgpC9lXQDfMib3Zgw7mEiUvBJI2EplzfAqxL5Vvwp2scFtv/uamSo5z0";
        let a = apply(&format!("accepteula\nrootpw --iscrypted {h}\n")).unwrap();
        assert_eq!(a.config.root_password_hash, h);
        assert_eq!(a.config.network, base().network);
        assert_eq!(a.config.keyboard, "US Default");
    }

    #[test]
    fn what_cannot_be_applied_is_an_error_naming_it() {
        let e = |t: &str| apply(t).unwrap_err().to_string();
        assert_eq!(
            e("vmaccepteula\nrootpw long-enough\nnetwork --bootproto=dhcp --device=52:54:00:00:00:99\n"),
            "network --device=52:54:00:00:00:99: no NIC has this MAC address"
        );
        assert_eq!(
            e("vmaccepteula\nrootpw long-enough\nnetwork --bootproto=dhcp --device=vmnic4\n"),
            "network --device=vmnic4: no such NIC (present: vmnic0, vmnic1)"
        );
        assert_eq!(apply("vmaccepteula\nrootpw long-enough\ndryrun\n").unwrap_err(), ApplyError::DryRun);
    }

    #[test]
    fn what_is_not_carried_out_is_said_and_paranoid_refuses_it() {
        let h = "$6$saltsalt$hRM5XZ86KXEw9UOmjigeVqFgULtFB2sgpC9lXQDfMib3Zgw7mEiUvBJI2EplzfAqxL5Vvwp2scFtv/uamSo5z0";
        let text =
            format!("vmaccepteula\nrootpw --iscrypted {h}\ninstall --firstdisk\n%firstboot\necho hi\n");
        let a = apply(&text).unwrap();
        assert!(a.notes.iter().any(|n| n.contains("not carried out")), "{:?}", a.notes);
        assert!(
            a.notes.iter().any(|n| n.contains("ks.cfg:line 4: %firstboot section not run")),
            "{:?}",
            a.notes
        );
        let e = apply(&format!("paranoid\n{text}")).unwrap_err().to_string();
        assert!(e.starts_with("paranoid: install onto a disk is not carried out"), "{e}");
    }
}
