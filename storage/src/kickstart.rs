//! The kickstart (`ks.cfg`) dialect of REFERENCE.md 2: parsing and validation.
//!
//! One command per line, `#` comments, installation commands first, then `%pre`, `%post` and
//! `%firstboot` sections (each runs to the next section header, `%end` or the end of the file).
//! `%include <file>` splices another file in at that point (through a caller-supplied reader, at most
//! [`MAX_INCLUDE_DEPTH`] deep). Arguments are split on blanks; single or double quotes group, and are
//! removed (`--nameserver="a,b"`). Options are `--name` or `--name=value`.
//!
//! Every error names the file and line and says what was expected, and is reported as
//! `error parsing the installation script: <file>:line N: <why>`. Warnings are collected with their
//! place; `paranoid` turns the first warning into an error. This module only parses and validates;
//! applying the result (configuration, installation) is done elsewhere.

use crate::hostconfig::validate_password_hash;
use crate::netconfig::{validate_nic_name, ManagementConfig};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Deepest `%include` nesting accepted.
pub const MAX_INCLUDE_DEPTH: usize = 8;
/// Largest kickstart (all includes together) accepted.
pub const MAX_KICKSTART_BYTES: usize = 1024 * 1024;

/// Keyboard layouts accepted by `keyboard` (ESXi's names).
pub const KEYBOARD_LAYOUTS: &[&str] = &[
    "US Default",
    "Belgian",
    "Brazilian",
    "Croatian",
    "Czechoslovakian",
    "Danish",
    "Estonian",
    "Finnish",
    "French",
    "French Canadian",
    "German",
    "Greek",
    "Hungarian",
    "Icelandic",
    "Italian",
    "Japanese",
    "Latin American",
    "Latvian",
    "Lithuanian",
    "Norwegian",
    "Polish",
    "Portuguese",
    "Russian",
    "Slovenian",
    "Spanish",
    "Swedish",
    "Swiss French",
    "Swiss German",
    "Turkish",
    "Ukrainian",
    "United Kingdom",
];

/// A place in a kickstart file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:line {}", self.file, self.line)
    }
}

/// A fatal problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KsError {
    pub place: Place,
    pub message: String,
}

impl fmt::Display for KsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error parsing the installation script: {}: {}", self.place, self.message)
    }
}

/// A problem that is logged and ignored unless `paranoid` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KsWarning {
    pub place: Place,
    pub message: String,
}

impl fmt::Display for KsWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warning: {}: {}", self.place, self.message)
    }
}

/// The root password as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootPw {
    /// Clear text (hashed when applied).
    Plain(String),
    /// A crypt-style hash (`--iscrypted`): `$6$...` (SHA-512 crypt) or `$pbkdf2-sha256$...`.
    Crypted(String),
}

/// Which disk a command targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSelector {
    /// `--disk=<dev>` / `--ondisk=<dev>`.
    Named(String),
    /// `--firstdisk[=filter,...]`: local, then remote, then usb, optionally filtered by names.
    First(Vec<String>),
}

/// `install`, `upgrade` or `installorupgrade`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallKind {
    Install,
    Upgrade,
    InstallOrUpgrade,
}

/// What happens to an existing datastore on the install disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmfsPolicy {
    Overwrite,
    Preserve,
}

/// The install command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    pub kind: InstallKind,
    pub disk: DiskSelector,
    pub ignore_ssd: bool,
    pub vmfs: Option<VmfsPolicy>,
    pub no_vmfs_on_disk: bool,
}

/// `clearpart` drive selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClearDrives {
    List(Vec<String>),
    All,
    AllExcept(Vec<String>),
    First(Vec<String>),
}

/// The clearpart command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearPart {
    pub drives: ClearDrives,
    pub overwrite_vmfs: bool,
}

/// A `part` command: a datastore on a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub datastore: String,
    pub disk: DiskSelector,
    pub place: Place,
}

/// Section kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    Pre,
    Post,
    FirstBoot,
}

impl SectionKind {
    /// The section header: `%pre`, `%post` or `%firstboot`.
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Pre => "%pre",
            SectionKind::Post => "%post",
            SectionKind::FirstBoot => "%firstboot",
        }
    }
}

/// A script section, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub kind: SectionKind,
    /// `busybox` (the default) or `python`.
    pub interpreter: String,
    pub timeout_s: Option<u32>,
    pub ignore_failure: bool,
    pub body: String,
    /// The body, checked by Ember's script interpreter ([`crate::script`]).
    pub script: crate::script::Script,
    pub place: Place,
}

/// The NIC `network --device=` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicRef {
    Name(String),
    Mac([u8; 6]),
}

/// A parsed, validated kickstart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kickstart {
    pub rootpw: RootPw,
    pub install: Option<Install>,
    pub clearpart: Option<ClearPart>,
    pub parts: Vec<Part>,
    /// Management network settings (`network`); `None` keeps the defaults.
    pub network: Option<ManagementConfig>,
    /// `network --device=`, when it names a MAC address (resolved to a vmnic when applied).
    pub network_device: Option<NicRef>,
    pub keyboard: Option<String>,
    pub serialnum: Option<String>,
    /// `reboot`, with `--noeject`.
    pub reboot: Option<bool>,
    pub paranoid: bool,
    pub dryrun: bool,
    pub sections: Vec<Section>,
    pub warnings: Vec<KsWarning>,
}

/// Splits a line into words: blanks separate, quotes group and are removed.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(core::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if let Some(q) = quote {
        return Err(format!("unterminated {q} quote"));
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Options of one command: `--name` or `--name=value`, each at most once.
struct Options {
    list: Vec<(String, Option<String>)>,
}

impl Options {
    fn parse(cmd: &str, words: &[String], known: &[&str]) -> Result<(Options, Vec<String>), String> {
        let mut list: Vec<(String, Option<String>)> = Vec::new();
        let mut args = Vec::new();
        for w in words {
            if let Some(opt) = w.strip_prefix("--") {
                let (name, value) = match opt.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (opt, None),
                };
                if !known.contains(&name) {
                    return Err(format!(
                        "{cmd}: unknown option --{name} (expected {})",
                        known.iter().map(|k| format!("--{k}")).collect::<Vec<_>>().join(", ")
                    ));
                }
                if list.iter().any(|(n, _)| n == name) {
                    return Err(format!("{cmd}: option --{name} given twice"));
                }
                list.push((name.to_string(), value));
            } else {
                args.push(w.clone());
            }
        }
        Ok((Options { list }, args))
    }

    fn flag(&self, cmd: &str, name: &str) -> Result<bool, String> {
        match self.list.iter().find(|(n, _)| n == name) {
            None => Ok(false),
            Some((_, None)) => Ok(true),
            Some((_, Some(_))) => Err(format!("{cmd}: --{name} takes no value")),
        }
    }

    fn value(&self, cmd: &str, name: &str) -> Result<Option<String>, String> {
        match self.list.iter().find(|(n, _)| n == name) {
            None => Ok(None),
            Some((_, Some(v))) if !v.is_empty() => Ok(Some(v.clone())),
            Some(_) => Err(format!("{cmd}: --{name} needs a value, as in --{name}=<value>")),
        }
    }

    /// `--name` alone or `--name=a,b`.
    fn optional_list(&self, name: &str) -> Option<Vec<String>> {
        self.list.iter().find(|(n, _)| n == name).map(|(_, v)| match v {
            Some(v) => v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            None => Vec::new(),
        })
    }

    fn bool01(&self, cmd: &str, name: &str) -> Result<Option<bool>, String> {
        match self.value(cmd, name)?.as_deref() {
            None => Ok(None),
            Some("0") | Some("false") => Ok(Some(false)),
            Some("1") | Some("true") => Ok(Some(true)),
            Some(v) => Err(format!("{cmd}: --{name}={v}: expected 0 or 1")),
        }
    }
}

fn no_args(cmd: &str, args: &[String]) -> Result<(), String> {
    match args.first() {
        None => Ok(()),
        Some(a) => Err(format!("{cmd}: unexpected argument `{a}`")),
    }
}

fn disk_selector(cmd: &str, o: &Options, named: &str, first: &str) -> Result<DiskSelector, String> {
    match (o.value(cmd, named)?, o.optional_list(first)) {
        (Some(d), None) => Ok(DiskSelector::Named(d)),
        (None, Some(f)) => Ok(DiskSelector::First(f)),
        (Some(_), Some(_)) => Err(format!("{cmd}: give either --{named}= or --{first}, not both")),
        (None, None) => Err(format!("{cmd}: needs --{named}=<device> or --{first}[=filter,...]")),
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

struct Parser<'r> {
    reader: &'r mut dyn FnMut(&str) -> Result<String, String>,
    total_bytes: usize,
    accepted: bool,
    rootpw: Option<(RootPw, Place)>,
    install: Option<(Install, Place)>,
    clearpart: Option<(ClearPart, Place)>,
    parts: Vec<Part>,
    network: Option<(ManagementConfig, Option<NicRef>)>,
    keyboard: Option<String>,
    serialnum: Option<String>,
    reboot: Option<bool>,
    paranoid: bool,
    dryrun: bool,
    sections: Vec<Section>,
    warnings: Vec<KsWarning>,
    seen: Vec<&'static str>,
}

impl Parser<'_> {
    fn once(&mut self, cmd: &'static str) -> Result<(), String> {
        if self.seen.contains(&cmd) {
            return Err(format!("{cmd} is given more than once"));
        }
        self.seen.push(cmd);
        Ok(())
    }

    fn warn(&mut self, place: &Place, message: String) {
        self.warnings.push(KsWarning { place: place.clone(), message });
    }

    fn file(&mut self, name: &str, text: &str, depth: usize) -> Result<(), KsError> {
        self.total_bytes = self.total_bytes.saturating_add(text.len());
        if self.total_bytes > MAX_KICKSTART_BYTES {
            return Err(KsError {
                place: Place { file: name.to_string(), line: 0 },
                message: format!(
                    "the kickstart (with its includes) is larger than {MAX_KICKSTART_BYTES} bytes"
                ),
            });
        }
        let mut section: Option<Section> = None;
        for (idx, raw) in text.lines().enumerate() {
            let place = Place { file: name.to_string(), line: idx + 1 };
            let fail = |message: String| KsError { place: place.clone(), message };
            let trimmed = raw.trim();
            let header = trimmed.starts_with('%');
            if let Some(s) = section.as_mut() {
                if !header {
                    s.body.push_str(raw);
                    s.body.push('\n');
                    continue;
                }
            }
            if let Some(s) = section.take() {
                self.finish_section(s)?;
            }
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let words = split_words(trimmed).map_err(fail)?;
            let (cmd, rest) = words.split_first().expect("a non-empty line has a word");
            match cmd.as_str() {
                "%end" => {
                    no_args("%end", rest).map_err(fail)?;
                }
                "%include" => {
                    if !self.sections.is_empty() {
                        return Err(fail(String::from(
                            "%include must come before the %pre/%post/%firstboot sections",
                        )));
                    }
                    let [target] = rest else {
                        return Err(fail(String::from("%include needs exactly one file name")));
                    };
                    if depth >= MAX_INCLUDE_DEPTH {
                        return Err(fail(format!("%include nested deeper than {MAX_INCLUDE_DEPTH} files")));
                    }
                    let included =
                        (self.reader)(target).map_err(|why| fail(format!("%include {target}: {why}")))?;
                    self.file(target, &included, depth + 1)?;
                }
                "%pre" | "%post" | "%firstboot" => {
                    let kind = match cmd.as_str() {
                        "%pre" => SectionKind::Pre,
                        "%post" => SectionKind::Post,
                        _ => SectionKind::FirstBoot,
                    };
                    let known: &[&str] = if kind == SectionKind::FirstBoot {
                        &["interpreter"]
                    } else {
                        &["interpreter", "timeout", "ignorefailure"]
                    };
                    let (o, args) = Options::parse(cmd, rest, known).map_err(fail)?;
                    no_args(cmd, &args).map_err(fail)?;
                    let interpreter =
                        o.value(cmd, "interpreter").map_err(fail)?.unwrap_or_else(|| "busybox".into());
                    if interpreter != "busybox" && interpreter != "python" {
                        return Err(fail(format!(
                            "{cmd}: --interpreter={interpreter}: expected busybox or python"
                        )));
                    }
                    let timeout_s = match o.value(cmd, "timeout").map_err(fail)? {
                        None => None,
                        Some(t) => Some(
                            t.parse::<u32>()
                                .map_err(|_| fail(format!("{cmd}: --timeout={t}: expected seconds")))?,
                        ),
                    };
                    let ignore_failure = match o.value(cmd, "ignorefailure").map_err(fail)?.as_deref() {
                        None | Some("false") => false,
                        Some("true") => true,
                        Some(v) => {
                            return Err(fail(format!("{cmd}: --ignorefailure={v}: expected true or false")))
                        }
                    };
                    section = Some(Section {
                        kind,
                        interpreter,
                        timeout_s,
                        ignore_failure,
                        body: String::new(),
                        script: crate::script::Script::default(),
                        place: place.clone(),
                    });
                }
                c if c.starts_with('%') => {
                    return Err(fail(format!(
                        "unknown section {c} (expected %include, %pre, %post, %firstboot)"
                    )))
                }
                _ => {
                    if !self.sections.is_empty() {
                        return Err(fail(format!(
                            "command `{cmd}` after a script section: commands come first, then %pre/%post/%firstboot"
                        )));
                    }
                    self.command(cmd, rest, &place).map_err(fail)?;
                }
            }
        }
        if let Some(s) = section.take() {
            self.finish_section(s)?;
        }
        Ok(())
    }

    /// Checks a section's script (it runs later, all or nothing, so it is read now) and keeps it.
    fn finish_section(&mut self, mut s: Section) -> Result<(), KsError> {
        let name = s.kind.name();
        if s.interpreter == "python" {
            return Err(KsError {
                place: s.place.clone(),
                message: format!(
                    "{name} --interpreter=python: Ember has no Python; write the section for the default interpreter (busybox: esxcli and vim-cmd configuration commands)"
                ),
            });
        }
        s.script = crate::script::parse(&s.body, s.place.line + 1).map_err(|e| KsError {
            place: Place { file: s.place.file.clone(), line: e.line },
            message: format!("{name}: {}", e.message),
        })?;
        if s.kind == SectionKind::FirstBoot {
            let total: usize = self
                .sections
                .iter()
                .filter(|x| x.kind == SectionKind::FirstBoot)
                .map(|x| x.body.len())
                .sum::<usize>()
                + s.body.len();
            if total > crate::script::MAX_SCRIPT_BYTES {
                return Err(KsError {
                    place: s.place.clone(),
                    message: format!(
                        "the %firstboot sections together are longer than {} bytes (they are stored until they have run)",
                        crate::script::MAX_SCRIPT_BYTES
                    ),
                });
            }
        }
        self.sections.push(s);
        Ok(())
    }

    fn command(&mut self, cmd: &str, rest: &[String], place: &Place) -> Result<(), String> {
        match cmd {
            "vmaccepteula" | "accepteula" => {
                self.once("accepteula")?;
                no_args(cmd, rest)?;
                self.accepted = true;
            }
            "rootpw" => {
                self.once("rootpw")?;
                let (o, args) = Options::parse(cmd, rest, &["iscrypted"])?;
                let [pw] = args.as_slice() else {
                    return Err(String::from(
                        "rootpw needs exactly one password (quote it if it has blanks)",
                    ));
                };
                let pw = if o.flag(cmd, "iscrypted")? {
                    validate_password_hash("rootpw --iscrypted", pw).map_err(|e| e.to_string())?;
                    RootPw::Crypted(pw.clone())
                } else {
                    if pw.len() < 7 || pw.len() > 128 || !pw.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                        return Err(String::from(
                            "rootpw: the password must be 7 to 128 printable ASCII characters",
                        ));
                    }
                    self.warn(place, String::from("rootpw: password in clear text; consider --iscrypted"));
                    RootPw::Plain(pw.clone())
                };
                self.rootpw = Some((pw, place.clone()));
            }
            "install" | "upgrade" | "installorupgrade" => {
                self.once("install")?;
                let (o, args) = Options::parse(
                    cmd,
                    rest,
                    &[
                        "disk",
                        "drive",
                        "firstdisk",
                        "ignoressd",
                        "overwritevmfs",
                        "preservevmfs",
                        "novmfsondisk",
                        "forcemigrate",
                    ],
                )?;
                no_args(cmd, &args)?;
                let disk = match o.value(cmd, "drive")? {
                    Some(d) if o.value(cmd, "disk")?.is_none() && o.optional_list("firstdisk").is_none() => {
                        DiskSelector::Named(d)
                    }
                    Some(_) => return Err(format!("{cmd}: give one of --disk=, --drive= or --firstdisk")),
                    None => disk_selector(cmd, &o, "disk", "firstdisk")?,
                };
                let vmfs = match (o.flag(cmd, "overwritevmfs")?, o.flag(cmd, "preservevmfs")?) {
                    (true, true) => {
                        return Err(format!("{cmd}: --overwritevmfs and --preservevmfs exclude each other"))
                    }
                    (true, false) => Some(VmfsPolicy::Overwrite),
                    (false, true) => Some(VmfsPolicy::Preserve),
                    (false, false) => None,
                };
                if o.flag(cmd, "forcemigrate")? {
                    self.warn(
                        place,
                        format!("{cmd}: --forcemigrate has no meaning for Ember and is ignored"),
                    );
                }
                let kind = match cmd {
                    "install" => InstallKind::Install,
                    "upgrade" => InstallKind::Upgrade,
                    _ => InstallKind::InstallOrUpgrade,
                };
                let install = Install {
                    kind,
                    disk,
                    ignore_ssd: o.flag(cmd, "ignoressd")?,
                    vmfs,
                    no_vmfs_on_disk: o.flag(cmd, "novmfsondisk")?,
                };
                self.install = Some((install, place.clone()));
            }
            "clearpart" => {
                self.once("clearpart")?;
                let (o, args) = Options::parse(
                    cmd,
                    rest,
                    &["drives", "alldrives", "ignoredrives", "overwritevmfs", "firstdisk"],
                )?;
                no_args(cmd, &args)?;
                let list = |v: String| {
                    v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect::<Vec<_>>()
                };
                let choices = [
                    o.value(cmd, "drives")?.map(|v| ClearDrives::List(list(v))),
                    o.flag(cmd, "alldrives")?.then_some(ClearDrives::All),
                    o.value(cmd, "ignoredrives")?.map(|v| ClearDrives::AllExcept(list(v))),
                    o.optional_list("firstdisk").map(ClearDrives::First),
                ];
                let mut given = choices.into_iter().flatten();
                let drives = given
                    .next()
                    .ok_or("clearpart needs --drives=, --alldrives, --ignoredrives= or --firstdisk")?;
                if given.next().is_some() {
                    return Err(String::from(
                        "clearpart: give only one of --drives=, --alldrives, --ignoredrives=, --firstdisk",
                    ));
                }
                let overwrite_vmfs = o.flag(cmd, "overwritevmfs")?;
                self.clearpart = Some((ClearPart { drives, overwrite_vmfs }, place.clone()));
            }
            "part" | "partition" => {
                let (o, args) = Options::parse(cmd, rest, &["ondisk", "ondrive", "onfirstdisk"])?;
                let [datastore] = args.as_slice() else {
                    return Err(format!("{cmd} needs exactly one datastore name"));
                };
                if datastore.is_empty() || datastore.len() > 80 || datastore.contains('/') {
                    return Err(format!(
                        "{cmd}: `{datastore}` is not a datastore name (1-80 characters, no /)"
                    ));
                }
                let disk = match o.value(cmd, "ondrive")? {
                    Some(d) => DiskSelector::Named(d),
                    None => disk_selector(cmd, &o, "ondisk", "onfirstdisk")?,
                };
                self.parts.push(Part { datastore: datastore.clone(), disk, place: place.clone() });
            }
            "network" => {
                self.once("network")?;
                let (o, args) = Options::parse(
                    cmd,
                    rest,
                    &[
                        "bootproto",
                        "device",
                        "ip",
                        "netmask",
                        "gateway",
                        "nameserver",
                        "hostname",
                        "vlanid",
                        "addvmportgroup",
                    ],
                )?;
                no_args(cmd, &args)?;
                let bootproto = o
                    .value(cmd, "bootproto")?
                    .ok_or("network needs --bootproto=dhcp or --bootproto=static")?;
                let mut pairs = alloc::vec![(String::from("bootproto"), bootproto)];
                let mut device = None;
                if let Some(d) = o.value(cmd, "device")? {
                    if let Some(mac) = parse_mac(&d) {
                        device = Some(NicRef::Mac(mac));
                    } else {
                        validate_nic_name("--device", &d).map_err(|e| format!("network: {e}"))?;
                        device = Some(NicRef::Name(d.clone()));
                        pairs.push((String::from("netdevice"), d));
                    }
                }
                for (opt, key) in [
                    ("ip", "ip"),
                    ("netmask", "netmask"),
                    ("gateway", "gateway"),
                    ("nameserver", "nameserver"),
                    ("hostname", "hostname"),
                    ("vlanid", "vlanid"),
                ] {
                    if let Some(v) = o.value(cmd, opt)? {
                        pairs.push((String::from(key), v));
                    }
                }
                if o.bool01(cmd, "addvmportgroup")? == Some(true) {
                    self.warn(
                        place,
                        String::from("network: --addvmportgroup=1: Ember has no virtual switch yet; ignored"),
                    );
                }
                let cfg = ManagementConfig::from_boot_options(&pairs).map_err(|e| {
                    let field = match e.field.as_str() {
                        "netdevice" => "device",
                        "address" => "ip",
                        "prefix" => "netmask",
                        "dns" => "nameserver",
                        f => f,
                    };
                    format!("network --{field}: {}", e.problem)
                })?;
                self.network = Some((cfg, device));
            }
            "keyboard" => {
                self.once("keyboard")?;
                let layout = rest.join(" ");
                if !KEYBOARD_LAYOUTS.contains(&layout.as_str()) {
                    return Err(format!("keyboard: unknown layout `{layout}` (for example 'US Default', 'German', 'United Kingdom')"));
                }
                self.keyboard = Some(layout);
            }
            "serialnum" => {
                self.once("serialnum")?;
                let (o, args) = Options::parse(cmd, rest, &["esx"])?;
                no_args(cmd, &args)?;
                let key = o.value(cmd, "esx")?.ok_or("serialnum needs --esx=<key>")?;
                self.warn(place, String::from("serialnum: Ember needs no license key; kept but unused"));
                self.serialnum = Some(key);
            }
            "reboot" => {
                self.once("reboot")?;
                let (o, args) = Options::parse(cmd, rest, &["noeject"])?;
                no_args(cmd, &args)?;
                self.reboot = Some(o.flag(cmd, "noeject")?);
            }
            "paranoid" => {
                self.once("paranoid")?;
                no_args(cmd, rest)?;
                self.paranoid = true;
            }
            "dryrun" => {
                self.once("dryrun")?;
                no_args(cmd, rest)?;
                self.dryrun = true;
            }
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(format!("unknown command `{shown}`"));
            }
        }
        Ok(())
    }
}

/// Parses and validates a kickstart. `read_include` returns the text of a file named by `%include`.
pub fn parse(
    file: &str,
    text: &str,
    read_include: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Kickstart, KsError> {
    let mut p = Parser {
        reader: read_include,
        total_bytes: 0,
        accepted: false,
        rootpw: None,
        install: None,
        clearpart: None,
        parts: Vec::new(),
        network: None,
        keyboard: None,
        serialnum: None,
        reboot: None,
        paranoid: false,
        dryrun: false,
        sections: Vec::new(),
        warnings: Vec::new(),
        seen: Vec::new(),
    };
    p.file(file, text, 0)?;
    let end = Place { file: file.to_string(), line: text.lines().count().max(1) };
    if !p.accepted {
        return Err(KsError {
            place: end,
            message: String::from("missing vmaccepteula (or accepteula): the license must be accepted"),
        });
    }
    let Some((rootpw, _)) = p.rootpw else {
        return Err(KsError {
            place: end,
            message: String::from("missing rootpw: the root password is required"),
        });
    };
    if let Some((_, place)) = &p.clearpart {
        if p.install.is_none() {
            return Err(KsError {
                place: place.clone(),
                message: String::from("clearpart needs an install command"),
            });
        }
    }
    if let Some((install, _)) = &p.install {
        for part in &p.parts {
            if part.disk == install.disk {
                return Err(KsError {
                    place: part.place.clone(),
                    message: String::from("part may not target the install disk"),
                });
            }
        }
    }
    if let Some(w) = p.warnings.first() {
        if p.paranoid {
            return Err(KsError {
                place: w.place.clone(),
                message: format!("{} (paranoid: warnings are errors)", w.message),
            });
        }
    }
    let (network, network_device) = match p.network {
        Some((n, d)) => (Some(n), d.filter(|d| matches!(d, NicRef::Mac(_)))),
        None => (None, None),
    };
    Ok(Kickstart {
        rootpw,
        install: p.install.map(|(i, _)| i),
        clearpart: p.clearpart.map(|(c, _)| c),
        parts: p.parts,
        network,
        network_device,
        keyboard: p.keyboard,
        serialnum: p.serialnum,
        reboot: p.reboot,
        paranoid: p.paranoid,
        dryrun: p.dryrun,
        sections: p.sections,
        warnings: p.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netconfig::Ipv4Mode;
    use core::net::Ipv4Addr;

    const HASH6: &str =
        "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/";

    fn no_includes(name: &str) -> Result<String, String> {
        Err(alloc::format!("no file {name}"))
    }

    fn ok(text: &str) -> Kickstart {
        parse("ks.cfg", text, &mut no_includes).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> KsError {
        parse("ks.cfg", text, &mut no_includes).unwrap_err()
    }

    #[test]
    fn a_complete_kickstart() {
        let ks = ok(&alloc::format!(
            "# Ember unattended install\n\
             vmaccepteula\n\
             rootpw --iscrypted {HASH6}\n\
             install --firstdisk=local,usb --overwritevmfs\n\
             clearpart --alldrives --overwritevmfs\n\
             part datastore2 --ondisk=mpx.vmhba1:C0:T1:L0\n\
             network --bootproto=static --device=vmnic1 --ip=10.0.0.5 --netmask=255.255.255.0 --gateway=10.0.0.1 --nameserver=\"10.0.0.2,10.0.0.3\" --hostname=esx01.lab --vlanid=20\n\
             keyboard 'US Default'\n\
             reboot --noeject\n\
             dryrun\n\
             %pre --interpreter=busybox\n\
             echo pre\n\
             %post --timeout=30 --ignorefailure=true\n\
             echo post\n\
             %end\n\
             %firstboot\n\
             echo one\n\
             %firstboot --interpreter=busybox\n\
             echo two\n"
        ));
        assert_eq!(ks.rootpw, RootPw::Crypted(HASH6.into()));
        let install = ks.install.unwrap();
        assert_eq!(install.disk, DiskSelector::First(alloc::vec!["local".into(), "usb".into()]));
        assert_eq!(install.vmfs, Some(VmfsPolicy::Overwrite));
        assert_eq!(ks.clearpart.unwrap().drives, ClearDrives::All);
        assert_eq!(ks.parts[0].datastore, "datastore2");
        let net = ks.network.unwrap();
        assert_eq!(net.uplink, "vmnic1");
        assert_eq!(net.hostname, "esx01.lab");
        assert_eq!(net.vlan, Some(20));
        assert_eq!(net.dns.len(), 2);
        assert_eq!(
            net.ipv4,
            Ipv4Mode::Static {
                address: Ipv4Addr::new(10, 0, 0, 5),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 0, 1))
            }
        );
        assert_eq!(ks.keyboard.as_deref(), Some("US Default"));
        assert_eq!(ks.reboot, Some(true));
        assert!(ks.dryrun && !ks.paranoid);
        let kinds: Vec<_> = ks.sections.iter().map(|s| (s.kind, s.body.trim().to_string())).collect();
        assert_eq!(
            kinds,
            alloc::vec![
                (SectionKind::Pre, "echo pre".into()),
                (SectionKind::Post, "echo post".into()),
                (SectionKind::FirstBoot, "echo one".into()),
                (SectionKind::FirstBoot, "echo two".into()),
            ]
        );
        assert_eq!(ks.sections[1].timeout_s, Some(30));
        assert!(ks.sections[1].ignore_failure);
        assert!(ks.warnings.is_empty(), "{:?}", ks.warnings);
    }

    #[test]
    fn minimal_kickstart_and_mac_device() {
        let ks = ok("accepteula\nrootpw 'pass word'\nnetwork --bootproto=dhcp --device=52:54:00:AB:cd:01\n");
        assert_eq!(ks.rootpw, RootPw::Plain("pass word".into()));
        assert_eq!(ks.network_device, Some(NicRef::Mac([0x52, 0x54, 0, 0xab, 0xcd, 1])));
        assert_eq!(ks.network.unwrap().ipv4, Ipv4Mode::Dhcp);
        assert_eq!(ks.warnings.len(), 1);
        assert_eq!(ks.warnings[0].place.line, 2);
    }

    #[test]
    fn every_error_names_its_line() {
        let head = "vmaccepteula\nrootpw secret-pw\n";
        let cases: &[(&str, usize, &str)] = &[
            ("bogus --x\n", 3, "unknown command `bogus`"),
            ("install\n", 3, "install: needs --disk=<device> or --firstdisk"),
            ("install --disk=a --firstdisk\n", 3, "not both"),
            ("install --firstdisk --overwritevmfs --preservevmfs\n", 3, "exclude each other"),
            ("install --firstdisk --colour=red\n", 3, "unknown option --colour"),
            ("install --firstdisk --ignoressd --ignoressd\n", 3, "given twice"),
            ("install --firstdisk\ninstall --firstdisk\n", 4, "more than once"),
            ("network --bootproto=static\n", 3, "network --ip: bootproto=static needs ip="),
            ("network --bootproto=static --ip=10.0.0.5\n", 3, "network --netmask"),
            ("network --bootproto=dhcp --vlanid=4095\n", 3, "network --vlanid"),
            ("network --bootproto=dhcp --device=eth0\n", 3, "--device"),
            ("network --bootproto=bootp\n", 3, "network --bootproto"),
            ("network --ip=10.0.0.5\n", 3, "--bootproto=dhcp or --bootproto=static"),
            ("network --bootproto=dhcp --hostname=bad_name\n", 3, "network --hostname"),
            ("keyboard Klingon\n", 3, "unknown layout `Klingon`"),
            ("reboot now\n", 3, "unexpected argument `now`"),
            ("serialnum\n", 3, "serialnum needs --esx=<key>"),
            ("clearpart --alldrives --drives=a\n", 3, "only one of"),
            ("part ds1\n", 3, "part: needs --ondisk"),
            ("network --bootproto=\"dhcp\n", 3, "unterminated \" quote"),
            ("%pre --timeout=soon\n", 3, "--timeout=soon"),
            ("%post --interpreter=perl\n", 3, "expected busybox or python"),
            ("%firstboot --timeout=5\n", 3, "unknown option --timeout"),
            ("%post --interpreter=python\nprint('x')\n", 3, "Ember has no Python"),
            ("%firstboot\necho ok\necho a | wc\n", 5, "%firstboot: pipes (`|`) are not supported"),
            (
                "%pre\nesxcli system hostname set --hots=x\n",
                4,
                "%pre: esxcli system hostname set: unknown option --hots",
            ),
            ("%packages\n", 3, "unknown section %packages"),
            ("%post\necho hi\n%end\nreboot\n", 6, "after a script section"),
            ("%include missing.cfg\n", 3, "%include missing.cfg: no file missing.cfg"),
        ];
        for (tail, line, want) in cases {
            let e = err(&alloc::format!("{head}{tail}"));
            assert_eq!(e.place.line, *line, "{tail:?}: {e}");
            assert!(e.message.contains(want), "{tail:?}: {e}");
        }
        let e = err("rootpw --iscrypted $1$abc$def\nvmaccepteula\n");
        assert_eq!(e.place.line, 1);
        assert!(e
            .to_string()
            .starts_with("error parsing the installation script: ks.cfg:line 1: rootpw --iscrypted"));
        assert_eq!(err("vmaccepteula\nrootpw short\n").place.line, 2);
    }

    #[test]
    fn required_commands_and_cross_checks() {
        assert!(err("rootpw secret-pw\n").message.contains("missing vmaccepteula"));
        assert!(err("accepteula\n").message.contains("missing rootpw"));
        let e = err("accepteula\nrootpw secret-pw\nclearpart --alldrives\n");
        assert_eq!((e.place.line, e.message.as_str()), (3, "clearpart needs an install command"));
        let e = err("accepteula\nrootpw secret-pw\ninstall --disk=d1\npart ds --ondisk=d1\n");
        assert_eq!((e.place.line, e.message.as_str()), (4, "part may not target the install disk"));
    }

    #[test]
    fn paranoid_turns_the_first_warning_into_an_error() {
        let e = err("paranoid\naccepteula\nrootpw secret-pw\n");
        assert_eq!(e.place.line, 3);
        assert!(e.message.contains("clear text") && e.message.contains("paranoid"), "{e}");
        let ks = ok(&alloc::format!("paranoid\naccepteula\nrootpw --iscrypted {HASH6}\n"));
        assert!(ks.paranoid);
    }

    #[test]
    fn includes_splice_in_place_and_are_bounded() {
        let mut files = |name: &str| match name {
            "net.cfg" => Ok(String::from("network --bootproto=dhcp --hostname=inc\n%include pw.cfg\n")),
            "pw.cfg" => Ok(String::from("rootpw from-include\n")),
            "bad.cfg" => Ok(String::from("\n\nfrobnicate\n")),
            "loop.cfg" => Ok(String::from("%include loop.cfg\n")),
            other => Err(alloc::format!("no file {other}")),
        };
        let ks = parse("ks.cfg", "accepteula\n%include net.cfg\n", &mut files).unwrap();
        assert_eq!(ks.network.unwrap().hostname, "inc");
        assert_eq!(ks.rootpw, RootPw::Plain("from-include".into()));
        let e = parse("ks.cfg", "accepteula\n%include bad.cfg\n", &mut files).unwrap_err();
        assert_eq!(e.place, Place { file: "bad.cfg".into(), line: 3 });
        let e = parse("ks.cfg", "%include loop.cfg\n", &mut files).unwrap_err();
        assert!(e.message.contains("nested deeper"), "{e}");
    }

    #[test]
    fn word_splitting() {
        assert_eq!(split_words(r#"a "b c" --x="1,2" 'd'e"#).unwrap(), ["a", "b c", "--x=1,2", "de"]);
        assert_eq!(split_words(r#"x """#).unwrap(), ["x", ""]);
        assert!(split_words("a 'b").is_err());
    }

    #[test]
    fn truncations_and_corruptions_never_panic() {
        let text = alloc::format!(
            "vmaccepteula\nrootpw --iscrypted {HASH6}\ninstall --firstdisk --overwritevmfs\nnetwork --bootproto=static --ip=10.0.0.5 --netmask=255.255.255.0\n%post\necho\n"
        );
        for cut in 0..text.len() {
            if text.is_char_boundary(cut) {
                let _ = parse("ks.cfg", &text[..cut], &mut no_includes);
            }
        }
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            for b in [b'"', b'\'', b'=', b'-', b'%', b' ', b'\n', 0u8, 0xff] {
                let mut v = bytes.to_vec();
                v[i] = b;
                if let Ok(t) = core::str::from_utf8(&v) {
                    let _ = parse("ks.cfg", t, &mut no_includes);
                }
            }
        }
    }
}
