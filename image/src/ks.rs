//! `ember-image ks check FILE`: the appliance's kickstart validation, run on the host.

use ember_storage::kickstart::{
    self, ClearDrives, DiskSelector, InstallKind, Kickstart, RootPw, SectionKind,
};
use ember_storage::netconfig::Ipv4Mode;
use std::fmt::Write as _;
use std::path::Path;

/// Reads and validates a kickstart; `%include` names are read relative to its directory.
pub fn check(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut read_include = |name: &str| -> Result<String, String> {
        let path = dir.join(name.trim_start_matches("file://"));
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let name = file.display().to_string();
    let ks = kickstart::parse(&name, &text, &mut read_include).map_err(|e| e.to_string())?;
    Ok(summary(&name, &ks))
}

fn disk(d: &DiskSelector) -> String {
    match d {
        DiskSelector::Named(n) => format!("disk {n}"),
        DiskSelector::First(f) if f.is_empty() => String::from("the first disk"),
        DiskSelector::First(f) => format!("the first disk among {}", f.join(", ")),
    }
}

/// A human summary of what the kickstart will do.
pub fn summary(name: &str, ks: &Kickstart) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{name}: valid kickstart");
    for w in &ks.warnings {
        let _ = writeln!(s, "  {w}");
    }
    let _ = writeln!(
        s,
        "  root password: {}",
        match &ks.rootpw {
            RootPw::Plain(_) => "given in clear text",
            RootPw::Crypted(_) => "given as a hash",
        }
    );
    if let Some(i) = &ks.install {
        let kind = match i.kind {
            InstallKind::Install => "install",
            InstallKind::Upgrade => "upgrade",
            InstallKind::InstallOrUpgrade => "install or upgrade",
        };
        let _ = writeln!(s, "  {kind} onto {}", disk(&i.disk));
    }
    if let Some(c) = &ks.clearpart {
        let drives = match &c.drives {
            ClearDrives::All => String::from("all drives"),
            ClearDrives::List(l) => l.join(", "),
            ClearDrives::AllExcept(l) => format!("all drives except {}", l.join(", ")),
            ClearDrives::First(_) => String::from("the first disk"),
        };
        let _ = writeln!(s, "  clear partitions on {drives}");
    }
    for p in &ks.parts {
        let _ = writeln!(s, "  datastore {} on {}", p.datastore, disk(&p.disk));
    }
    if let Some(n) = &ks.network {
        let mode = match n.ipv4 {
            Ipv4Mode::Dhcp => String::from("DHCP"),
            Ipv4Mode::Static { address, prefix, gateway } => format!(
                "static {address}/{prefix}{}",
                gateway.map(|g| format!(" gateway {g}")).unwrap_or_default()
            ),
        };
        let vlan = n.vlan.map(|v| format!(", VLAN {v}")).unwrap_or_default();
        let _ = writeln!(s, "  network: {} {mode}{vlan}, host name {}", n.uplink, n.hostname);
    }
    if let Some(k) = &ks.keyboard {
        let _ = writeln!(s, "  keyboard: {k}");
    }
    for sec in &ks.sections {
        let kind = sec.kind.name();
        let lines = sec.body.lines().count();
        let plural = if lines == 1 { "" } else { "s" };
        let when = match sec.kind {
            SectionKind::Pre => "runs before the kickstart's commands are applied",
            SectionKind::Post => "runs after the kickstart's commands are applied",
            SectionKind::FirstBoot => "runs once, after the configuration is stored",
        };
        let _ = writeln!(s, "  {kind} ({lines} line{plural}, checked) from {}: {when}", sec.place);
    }
    if ks.dryrun {
        let _ = writeln!(s, "  dryrun: nothing will be changed");
    }
    s
}
