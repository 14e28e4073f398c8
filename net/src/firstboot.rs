//! Turning a validated kickstart into the host configuration a first boot stores (PRODUCT.md 2).
//!
//! All or nothing: the result is a complete [`HostConfig`] or an error naming the kickstart line and
//! what is wrong; nothing is half applied. What this version cannot carry out is said plainly in the
//! notes (and, under `paranoid`, refuses the kickstart): `install`/`upgrade`/`clearpart`/`part`
//! (unattended installation is separate work). `dryrun` parses and checks only.
//!
//! Scripts ([`ember_storage::script`]): `%pre` sections run on the built-in configuration before
//! the kickstart's commands are applied, `%post` sections on the result; a section that ends with a
//! non-zero exit status fails the kickstart (nothing applied) unless it says
//! `--ignorefailure=true`. `%firstboot` sections are kept in the configuration to run once it is
//! stored (see [`ember_storage::script::run_firstboot`]). `--timeout` is accepted and has nothing to
//! limit: scripts are configuration commands that never wait.

use crate::api::NicInfo;
use crate::auth::{PasswordHash, DEFAULT_ITERATIONS};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ember_storage::hostconfig::{HostConfig, PendingScript};
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

/// Runs the `kind` sections in file order on `config`.
fn run_sections(
    ks: &Kickstart,
    kind: SectionKind,
    config: &mut HostConfig,
    notes: &mut Vec<String>,
) -> Result<(), ApplyError> {
    for s in ks.sections.iter().filter(|s| s.kind == kind) {
        let name = s.kind.name();
        let outcome = s.script.run(config);
        notes.extend(outcome.output.iter().map(|line| format!("{name} {}: {line}", s.place)));
        if outcome.status != 0 {
            let why = format!(
                "{name} {} ended with exit status {}{}",
                s.place,
                outcome.status,
                outcome.output.last().map(|l| format!(" ({l})")).unwrap_or_default()
            );
            if !s.ignore_failure {
                return Err(ApplyError::Invalid(why));
            }
            notes.push(format!("{why}; ignored (--ignorefailure=true)"));
        }
    }
    Ok(())
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
    if ks.paranoid {
        if let Some(first) = notes.first().or(unsupported.first()) {
            return Err(ApplyError::Invalid(format!("paranoid: {first}")));
        }
    }
    notes.extend(unsupported);

    let mut config = base.clone();
    // The root password first: scripts cannot set it, and every change they make is validated as a
    // whole configuration, password hash included.
    config.root_password_hash = match &ks.rootpw {
        // The parser has checked the password rules.
        RootPw::Plain(pw) => hash(pw),
        RootPw::Crypted(h) => h.clone(),
    };
    run_sections(ks, SectionKind::Pre, &mut config, &mut notes)?;
    if let Some(network) = &ks.network {
        let mut network = network.clone();
        if let Some(NicRef::Mac(mac)) = &ks.network_device {
            let nic = nics.iter().find(|n| n.mac == *mac).ok_or_else(|| {
                ApplyError::Invalid(format!(
                    "network --device={}: no NIC has this MAC address",
                    ember_hw::nic::mac_string(mac)
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
    run_sections(ks, SectionKind::Post, &mut config, &mut notes)?;
    config.firstboot = ks
        .sections
        .iter()
        .filter(|s| s.kind == SectionKind::FirstBoot && !s.script.is_empty())
        .map(|s| PendingScript {
            source: s.place.to_string(),
            first_line: s.place.line + 1,
            body: s.body.clone(),
        })
        .collect();
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
        // As the first boot builds it: the kickstart supplies the password.
        HostConfig::defaults(String::new())
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
    fn scripts_run_in_their_order_around_the_commands() {
        let h = "$6$saltsalt$hRM5XZ86KXEw9UOmjigeVqFgULtFB2sgpC9lXQDfMib3Zgw7mEiUvBJI2EplzfAqxL5Vvwp2scFtv/uamSo5z0";
        // %pre sets a host name the kickstart's network command replaces; %post adds to it.
        let text = format!(
            "vmaccepteula\nrootpw --iscrypted {h}\nnetwork --bootproto=dhcp --hostname=esx5\n\
             %pre\nesxcli system hostname set --host=pre-name\nvim-cmd hostsvc/enable_ssh\n\
             %post\nesxcli system hostname set --domain=lab.example\necho \"post ran\"\n\
             %firstboot\nesxcli network ip dns search add -d lab.example\n"
        );
        let a = apply(&text).unwrap();
        assert_eq!(a.config.network.hostname, "esx5.lab.example");
        assert!(a.config.ssh_enabled);
        assert!(a.config.dns_search.is_empty(), "%firstboot has not run yet");
        assert_eq!(a.notes, ["%post ks.cfg:line 7: line 9: post ran"]);
        assert_eq!(
            a.config.firstboot,
            [PendingScript {
                source: "ks.cfg:line 10".into(),
                first_line: 11,
                body: "esxcli network ip dns search add -d lab.example\n".into()
            }]
        );
        let mut stored = HostConfig::decode(&a.config.encode()).unwrap();
        let log = ember_storage::script::run_firstboot(&mut stored);
        assert_eq!(stored.dns_search, ["lab.example"]);
        assert!(stored.firstboot.is_empty());
        assert_eq!(log, ["%firstboot ks.cfg:line 10: exit status 0 (1 command run)"]);

        // A failing %post fails the kickstart, unless it ignores failures.
        let failing = format!("vmaccepteula\nrootpw --iscrypted {h}\n%post\nesxcli network ip route ipv4 add -g 10.0.0.1 -n default\n");
        let e = apply(&failing).unwrap_err().to_string();
        assert!(e.starts_with("%post ks.cfg:line 3 ended with exit status 1 (line 4: esxcli network ip route ipv4 add: the management network uses DHCP"), "{e}");
        let ignored = failing.replace("%post", "%post --ignorefailure=true");
        let a = apply(&ignored).unwrap();
        assert!(a.notes.last().unwrap().ends_with("; ignored (--ignorefailure=true)"), "{:?}", a.notes);
        let e =
            apply(&format!("vmaccepteula\nrootpw --iscrypted {h}\n%pre\nexit 4\n")).unwrap_err().to_string();
        assert_eq!(e, "%pre ks.cfg:line 3 ended with exit status 4");
    }

    #[test]
    fn what_is_not_carried_out_is_said_and_paranoid_refuses_it() {
        let h = "$6$saltsalt$hRM5XZ86KXEw9UOmjigeVqFgULtFB2sgpC9lXQDfMib3Zgw7mEiUvBJI2EplzfAqxL5Vvwp2scFtv/uamSo5z0";
        let text =
            format!("vmaccepteula\nrootpw --iscrypted {h}\ninstall --firstdisk\n%firstboot\necho hi\n");
        let a = apply(&text).unwrap();
        assert!(a.notes.iter().any(|n| n.contains("not carried out")), "{:?}", a.notes);
        assert_eq!(a.config.firstboot.len(), 1);
        let e = apply(&format!("paranoid\n{text}")).unwrap_err().to_string();
        assert!(e.starts_with("paranoid: install onto a disk is not carried out"), "{e}");
    }
}
