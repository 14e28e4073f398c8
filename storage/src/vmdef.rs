//! VM definitions: the JSON file that describes one virtual machine (issue 4's format).
//!
//! ```json
//! {"name": "web-1", "vcpus": 2, "memory_mib": 512, "kernel": "vmlinuz", "initrd": "initrd.img",
//!  "cmdline": "console=ttyS0", "disks": [{"file": "root.img", "readonly": false}],
//!  "autostart": true, "console_port": 9001}
//! ```
//! Paths are relative to the definition's own directory and may not leave it, or (for a VM on a
//! datastore) name a file on a datastore in ESXi's notation, `[datastore1] dir/file` ([`DsPath`]). `initrd`,
//! `cmdline`, `disks`, `autostart` (false) and `console_port` (none: the serial console is only in
//! the API) may be left out. Decoding is strict: unknown fields, wrong types and values out of range
//! are errors naming the file and the field (`web-1.json: disks[0].file: ...`); JSON syntax errors
//! give the line and column.

use crate::datastore::{check_label, check_name};
use crate::hostconfig::validate_vm_name;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde_json::{Map, Value};

/// The VMs a first boot adds to the inventory, on the boot media's ESP (written by
/// `ember-image build --vm`, which puts the VMs on the image's datastore): one datastore path of a
/// VM definition per line; empty lines and lines starting with `#` are skipped.
pub const FIRST_BOOT_VMS_FILE: &str = "/EFI/ember/register.cfg";
/// Most entries in [`FIRST_BOOT_VMS_FILE`].
pub const MAX_FIRST_BOOT_VMS: usize = 256;

/// Parses [`FIRST_BOOT_VMS_FILE`]'s text (`file` names it in errors): the datastore paths, checked.
pub fn parse_first_boot_vms(file: &str, bytes: &[u8]) -> Result<Vec<DsPath>, String> {
    let text = core::str::from_utf8(bytes).map_err(|e| format!("{file}: not UTF-8 text ({e})"))?;
    let mut out: Vec<DsPath> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let p = DsPath::parse(line).map_err(|e| format!("{file}: line {}: {e}", n + 1))?;
        if out.contains(&p) {
            return Err(format!("{file}: line {}: {p} is listed twice", n + 1));
        }
        if out.len() == MAX_FIRST_BOOT_VMS {
            return Err(format!("{file}: line {}: more than {MAX_FIRST_BOOT_VMS} VMs", n + 1));
        }
        out.push(p);
    }
    Ok(out)
}

/// The first four bytes of a qcow2 image (QEMU's format). Ember's virtual disks are raw: the host
/// tool converts qcow2, and the API refuses to attach it.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u32 = 64;
/// Guest RAM limits in MiB (up to 3 GiB of it below the MMIO window, the rest from 4 GiB; the
/// host's free memory is the real limit, checked when the VM starts).
pub const MIN_MEMORY_MIB: u32 = 16;
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
/// Most virtual disks.
pub const MAX_DISKS: usize = 8;
/// Most virtual NICs (ESXi allows 10; Ember's virtio-mmio slots are shared with the disks).
pub const MAX_NICS: usize = 4;
/// Longest port group name, bytes.
pub const MAX_PORTGROUP_NAME: usize = 80;
/// The first three bytes of the MACs Ember makes for NICs without one: a locally administered
/// unicast prefix (bit 1 of the first byte set, bit 0 clear), "EM".
pub const GENERATED_MAC_PREFIX: [u8; 3] = [0x02, 0x45, 0x4d];
/// Longest kernel command line (the boot protocol's usual `cmdline_size` is 2047).
pub const MAX_CMDLINE: usize = 2047;
const MAX_PATH: usize = 255;

/// One virtual disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDisk {
    /// Backing file, relative to the definition.
    pub file: String,
    pub readonly: bool,
}

/// One virtual NIC: a virtio-net device on a port group of the host's virtual switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNic {
    pub portgroup: String,
    /// Its address; `None`: Ember's own ([`VmDefinition::nic_mac`]).
    pub mac: Option<[u8; 6]>,
    /// Whether its link is up when the VM starts (ESXi's "Connect at power on").
    pub connected: bool,
}

/// A VM definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDefinition {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: String,
    pub initrd: Option<String>,
    pub cmdline: String,
    pub disks: Vec<VmDisk>,
    pub nics: Vec<VmNic>,
    pub autostart: bool,
    /// TCP port serving the VM's serial console as a raw stream.
    pub console_port: Option<u16>,
}

/// A rejected definition: the file, the field (or `(document)`), what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDefError {
    pub file: String,
    pub field: String,
    pub problem: String,
}

impl core::fmt::Display for VmDefError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.field, self.problem)
    }
}

/// Longest datastore path (`[datastore] dir/file`), in bytes.
pub const MAX_DS_PATH: usize = 1024;

/// A file on a datastore, written `[datastore1] dir/file` as ESXi does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DsPath {
    pub datastore: String,
    /// `/`-separated names below the datastore's root (no leading `/`, no `.` or `..`).
    pub path: String,
}

impl DsPath {
    /// Parses `[datastore] path`; the error says what is wrong.
    pub fn parse(s: &str) -> Result<DsPath, String> {
        if s.len() > MAX_DS_PATH {
            return Err(format!("a datastore path has at most {MAX_DS_PATH} bytes"));
        }
        let Some((datastore, path)) = s.strip_prefix('[').and_then(|r| r.split_once("] ")) else {
            return Err(String::from(
                "expected `[datastore] path/to/file` (for example `[datastore1] vm1/vm1.img`)",
            ));
        };
        check_label(datastore)?;
        Self::check_path(path)?;
        Ok(DsPath { datastore: datastore.to_string(), path: path.to_string() })
    }

    fn check_path(path: &str) -> Result<(), String> {
        if path.is_empty() || path.starts_with('/') {
            return Err(String::from("the path after the datastore's name is empty or starts with `/`"));
        }
        path.split('/').try_for_each(|n| check_name(n).map_err(|e| format!("`{path}`: {e}")))
    }

    /// The directory holding it (the datastore's root for a file there: path "").
    pub fn parent(&self) -> DsPath {
        let dir = self.path.rsplit_once('/').map_or("", |(d, _)| d);
        DsPath { datastore: self.datastore.clone(), path: dir.to_string() }
    }

    /// The file `rel` names relative to this directory (a `[datastore] path` stands for itself).
    pub fn resolve(&self, rel: &str) -> Result<DsPath, String> {
        if rel.starts_with('[') {
            return DsPath::parse(rel);
        }
        check_relative_path(rel)?;
        let path = if self.path.is_empty() { rel.to_string() } else { format!("{}/{rel}", self.path) };
        Ok(DsPath { datastore: self.datastore.clone(), path })
    }
}

impl core::fmt::Display for DsPath {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "[{}] {}", self.datastore, self.path)
    }
}

/// Checks a file a definition refers to: a path relative to it ([`check_relative_path`]) or a
/// datastore path ([`DsPath`]).
pub fn check_file_ref(path: &str) -> Result<(), String> {
    if path.starts_with('[') {
        DsPath::parse(path).map(|_| ())
    } else {
        check_relative_path(path)
    }
}

/// Checks a path relative to the definition: `/`-separated printable ASCII, no leading `/`, no
/// empty, `.` or `..` components.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_PATH {
        return Err(format!("expected a path of 1 to {MAX_PATH} characters"));
    }
    if path.starts_with('/') {
        return Err(format!("`{path}` is absolute; paths are relative to the definition's directory"));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return Err(String::from("the path must be printable ASCII without spaces or `\\`"));
    }
    if path.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        return Err(format!("`{path}` has an empty, `.` or `..` component (it may not leave its directory)"));
    }
    Ok(())
}

impl VmDefinition {
    /// Decodes and validates the definition in `file` (its name is used in errors).
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Self, VmDefError> {
        let err = |field: &str, problem: String| VmDefError {
            file: file.to_string(),
            field: field.to_string(),
            problem,
        };
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            err("(document)", format!("not valid JSON at line {} column {}: {e}", e.line(), e.column()))
        })?;
        let Value::Object(obj) = value else {
            return Err(err("(document)", String::from("expected a JSON object")));
        };
        Self::from_object(&obj).map_err(|(field, problem)| err(&field, problem))
    }

    fn from_object(obj: &Map<String, Value>) -> Result<Self, (String, String)> {
        let e = |field: &str, problem: &str| (field.to_string(), problem.to_string());
        for key in obj.keys() {
            if ![
                "name",
                "vcpus",
                "memory_mib",
                "kernel",
                "initrd",
                "cmdline",
                "disks",
                "nics",
                "autostart",
                "console_port",
            ]
            .contains(&key.as_str())
            {
                let shown: String = key.chars().take(40).collect();
                return Err(e(&shown, "unknown field (expected name, vcpus, memory_mib, kernel, initrd, cmdline, disks, nics, autostart, console_port)"));
            }
        }
        let string = |field: &str| -> Result<Option<&str>, (String, String)> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(e(field, "expected a string")),
            }
        };
        let number = |field: &str, min: u32, max: u32| -> Result<u32, (String, String)> {
            let v = obj.get(field).ok_or_else(|| e(field, "missing (a number)"))?;
            v.as_u64()
                .filter(|n| (min as u64..=max as u64).contains(n))
                .map(|n| n as u32)
                .ok_or_else(|| (field.to_string(), format!("expected a whole number from {min} to {max}")))
        };
        let path = |field: &str, p: &str| check_file_ref(p).map_err(|w| (field.to_string(), w));

        let name = string("name")?.ok_or_else(|| e("name", "missing (a string)"))?;
        validate_vm_name("name", name).map_err(|c| (c.field, c.problem))?;
        let vcpus = number("vcpus", 1, MAX_VCPUS)?;
        let memory_mib = number("memory_mib", MIN_MEMORY_MIB, MAX_MEMORY_MIB)?;
        let kernel = string("kernel")?.ok_or_else(|| e("kernel", "missing (a path)"))?;
        path("kernel", kernel)?;
        let initrd = string("initrd")?;
        if let Some(p) = initrd {
            path("initrd", p)?;
        }
        let cmdline = string("cmdline")?.unwrap_or("");
        if cmdline.len() > MAX_CMDLINE || cmdline.contains('\0') {
            return Err((String::from("cmdline"), format!("at most {MAX_CMDLINE} bytes, no NUL")));
        }
        let mut disks = Vec::new();
        match obj.get("disks") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                if list.len() > MAX_DISKS {
                    return Err(e("disks", &format!("at most {MAX_DISKS} disks")));
                }
                for (i, d) in list.iter().enumerate() {
                    let at = |f: &str| format!("disks[{i}].{f}");
                    let d = d
                        .as_object()
                        .ok_or_else(|| (format!("disks[{i}]"), String::from("expected an object")))?;
                    if let Some(k) = d.keys().find(|k| *k != "file" && *k != "readonly") {
                        let shown: String = k.chars().take(40).collect();
                        return Err((at(&shown), String::from("unknown field (expected file, readonly)")));
                    }
                    let file = d
                        .get("file")
                        .and_then(Value::as_str)
                        .ok_or_else(|| (at("file"), String::from("missing (a path)")))?;
                    check_file_ref(file).map_err(|w| (at("file"), w))?;
                    let readonly = match d.get("readonly") {
                        None => false,
                        Some(v) => v
                            .as_bool()
                            .ok_or_else(|| (at("readonly"), String::from("expected true or false")))?,
                    };
                    if disks.iter().any(|x: &VmDisk| x.file == file) {
                        return Err((at("file"), format!("`{file}` is attached twice")));
                    }
                    disks.push(VmDisk { file: file.to_string(), readonly });
                }
            }
            Some(_) => return Err(e("disks", "expected a list of {\"file\", \"readonly\"} objects")),
        }
        let nics = match obj.get("nics") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => parse_nics(v)?,
        };
        let autostart = match obj.get("autostart") {
            None | Some(Value::Null) => false,
            Some(v) => v.as_bool().ok_or_else(|| e("autostart", "expected true or false"))?,
        };
        let console_port = match obj.get("console_port") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|p| (1024..=65535).contains(p))
                    .map(|p| p as u16)
                    .ok_or_else(|| e("console_port", "expected a TCP port from 1024 to 65535, or null"))?,
            ),
        };
        Ok(VmDefinition {
            name: name.to_string(),
            vcpus,
            memory_mib,
            kernel: kernel.to_string(),
            initrd: initrd.map(String::from),
            cmdline: cmdline.to_string(),
            disks,
            nics,
            autostart,
            console_port,
        })
    }

    /// The definition as stored (what [`VmDefinition::parse`] reads back).
    pub fn to_json(&self) -> Value {
        let disks: Vec<Value> =
            self.disks.iter().map(|d| serde_json::json!({"file": d.file, "readonly": d.readonly})).collect();
        let nics: Vec<Value> = self
            .nics
            .iter()
            .map(|n| {
                serde_json::json!({
                    "portgroup": n.portgroup,
                    "mac": n.mac.map(|m| mac_text(&m)),
                    "connected": n.connected,
                })
            })
            .collect();
        serde_json::json!({
            "name": self.name,
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "kernel": self.kernel,
            "initrd": self.initrd,
            "cmdline": self.cmdline,
            "disks": disks,
            "nics": nics,
            "autostart": self.autostart,
            "console_port": self.console_port,
        })
    }

    /// NIC `i`'s address: the one given, or one Ember makes from the VM's name and the NIC's
    /// place - [`GENERATED_MAC_PREFIX`] and 24 bits of an FNV-1a hash, the same at every start
    /// (the host refuses to start a VM whose address another running NIC has).
    pub fn nic_mac(&self, i: usize) -> Option<[u8; 6]> {
        let nic = self.nics.get(i)?;
        if let Some(m) = nic.mac {
            return Some(m);
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.name.bytes().chain([0u8, i as u8]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let [a, b, c, ..] = (h ^ (h >> 32)).to_le_bytes();
        let [p0, p1, p2] = GENERATED_MAC_PREFIX;
        Some([p0, p1, p2, a, b, c])
    }

    /// Every file the definition refers to (kernel, initrd, disks), relative to it.
    pub fn files(&self) -> Vec<&str> {
        let mut f = alloc::vec![self.kernel.as_str()];
        f.extend(self.initrd.as_deref());
        f.extend(self.disks.iter().map(|d| d.file.as_str()));
        f
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

/// A unicast MAC address written `aa:bb:cc:dd:ee:ff` (or with `-`), not all zeros.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let mut m = [0u8; 6];
    let well_formed = parts.len() == 6
        && parts
            .iter()
            .zip(m.iter_mut())
            .all(|(p, b)| p.len() == 2 && u8::from_str_radix(p, 16).map(|v| *b = v).is_ok());
    if !well_formed {
        return Err(format!(
            "`{}` is not a MAC address (expected six hex pairs, 00:50:56:01:02:03)",
            s.chars().take(40).collect::<String>()
        ));
    }
    if m[0] & 1 != 0 {
        return Err(format!("{s} is a multicast address; a NIC needs a unicast one"));
    }
    if m == [0; 6] {
        return Err(String::from("00:00:00:00:00:00 is not a NIC's address"));
    }
    Ok(m)
}

/// Checks a port group name: 1 to [`MAX_PORTGROUP_NAME`] bytes, no control characters.
pub fn check_portgroup_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_PORTGROUP_NAME {
        return Err(format!("a port group name has 1 to {MAX_PORTGROUP_NAME} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(String::from("a port group name has no control characters"));
    }
    Ok(())
}

fn parse_nics(v: &Value) -> Result<Vec<VmNic>, (String, String)> {
    let list = v.as_array().ok_or_else(|| {
        (
            String::from("nics"),
            String::from("expected a list of {\"portgroup\", \"mac\", \"connected\"} objects"),
        )
    })?;
    if list.len() > MAX_NICS {
        return Err((String::from("nics"), format!("at most {MAX_NICS} NICs")));
    }
    let mut nics: Vec<VmNic> = Vec::new();
    for (i, n) in list.iter().enumerate() {
        let at = |f: &str| format!("nics[{i}].{f}");
        let n = n.as_object().ok_or_else(|| (format!("nics[{i}]"), String::from("expected an object")))?;
        if let Some(k) = n.keys().find(|k| !["portgroup", "mac", "connected"].contains(&k.as_str())) {
            let shown: String = k.chars().take(40).collect();
            return Err((at(&shown), String::from("unknown field (expected portgroup, mac, connected)")));
        }
        let portgroup = n.get("portgroup").and_then(Value::as_str).ok_or_else(|| {
            (at("portgroup"), String::from("missing (a port group name, such as \"VM Network\")"))
        })?;
        check_portgroup_name(portgroup).map_err(|w| (at("portgroup"), w))?;
        let mac = match n.get("mac") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) => Some(parse_mac(m).map_err(|w| (at("mac"), w))?),
            Some(_) => return Err((at("mac"), String::from("expected a MAC address string, or null"))),
        };
        if let Some(m) = mac {
            if nics.iter().any(|x| x.mac == Some(m)) {
                return Err((at("mac"), format!("{} is used by another NIC of this VM", mac_text(&m))));
            }
        }
        let connected = match n.get("connected") {
            None | Some(Value::Null) => true,
            Some(v) => {
                v.as_bool().ok_or_else(|| (at("connected"), String::from("expected true or false")))?
            }
        };
        nics.push(VmNic { portgroup: portgroup.to_string(), mac, connected });
    }
    Ok(nics)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"name": "web-1", "vcpus": 2, "memory_mib": 512, "kernel": "boot/vmlinuz",
        "initrd": "boot/initrd.img", "cmdline": "console=ttyS0 panic=-1",
        "disks": [{"file": "root.img"}, {"file": "data/seed.img", "readonly": true}],
        "autostart": true, "console_port": 9001}"#;

    #[test]
    fn the_first_boot_vm_list_is_checked_line_by_line() {
        let l = parse_first_boot_vms(
            "register.cfg",
            b"# made by ember-image\n\n[datastore1] a/a.json\r\n  [ds2] b c/b c.json\n",
        )
        .unwrap();
        assert_eq!(
            l.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            ["[datastore1] a/a.json", "[ds2] b c/b c.json"]
        );
        let e = parse_first_boot_vms("register.cfg", b"[d] a/a.json\nweb/web.json\n").unwrap_err();
        assert!(e.starts_with("register.cfg: line 2: expected `[datastore] path"), "{e}");
        let e = parse_first_boot_vms("register.cfg", b"[d] a/../x.json").unwrap_err();
        assert!(e.starts_with("register.cfg: line 1: "), "{e}");
        let e = parse_first_boot_vms("register.cfg", b"[d] a\n[d] a").unwrap_err();
        assert_eq!(e, "register.cfg: line 2: [d] a is listed twice");
        assert!(parse_first_boot_vms("register.cfg", b"\xff").unwrap_err().contains("not UTF-8"));
        let many: String = (0..=MAX_FIRST_BOOT_VMS).map(|i| format!("[d] v{i}/v{i}.json\n")).collect();
        assert!(parse_first_boot_vms("r", many.as_bytes()).unwrap_err().contains("more than 256"));
    }

    #[test]
    fn a_full_definition() {
        let d = VmDefinition::parse("web-1.json", GOOD.as_bytes()).unwrap();
        assert_eq!((d.name.as_str(), d.vcpus, d.memory_mib), ("web-1", 2, 512));
        assert_eq!(d.disks[1], VmDisk { file: "data/seed.img".into(), readonly: true });
        assert!(!d.disks[0].readonly && d.autostart);
        assert_eq!(d.console_port, Some(9001));
        assert_eq!(d.files(), ["boot/vmlinuz", "boot/initrd.img", "root.img", "data/seed.img"]);
        // The smallest one.
        let m =
            VmDefinition::parse("m.json", br#"{"name":"m","vcpus":1,"memory_mib":64,"kernel":"k"}"#).unwrap();
        assert_eq!(
            (m.initrd, m.cmdline.as_str(), m.disks.len(), m.autostart, m.console_port),
            (None, "", 0, false, None)
        );
    }

    #[test]
    fn nics_are_parsed_checked_and_get_stable_addresses() {
        let doc =
            |nics: &str| format!(r#"{{"name":"n1","vcpus":1,"memory_mib":64,"kernel":"k","nics":{nics}}}"#);
        let d = VmDefinition::parse(
            "n1.json",
            doc(r#"[{"portgroup":"VM Network"},{"portgroup":"DMZ","mac":"00:50:56:AA:bb:01","connected":false}]"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(d.nics[0], VmNic { portgroup: "VM Network".into(), mac: None, connected: true });
        assert_eq!(d.nics[1].mac, Some([0, 0x50, 0x56, 0xaa, 0xbb, 1]));
        assert!(!d.nics[1].connected);
        // Made addresses: the prefix, the same each time, different per NIC and per VM.
        let m0 = d.nic_mac(0).unwrap();
        assert_eq!(&m0[..3], &GENERATED_MAC_PREFIX);
        assert_eq!(d.nic_mac(0), Some(m0));
        assert_eq!(d.nic_mac(1), Some([0, 0x50, 0x56, 0xaa, 0xbb, 1]));
        assert_eq!(d.nic_mac(2), None);
        let mut other = d.clone();
        other.name = "n2".into();
        assert_ne!(other.nic_mac(0), Some(m0));
        other.nics.push(VmNic { portgroup: "VM Network".into(), mac: None, connected: true });
        assert_ne!(other.nic_mac(2), other.nic_mac(0));
        // Round trip.
        assert_eq!(VmDefinition::parse("n1.json", d.to_json().to_string().as_bytes()).unwrap(), d);
        let bad: &[(&str, &str)] = &[
            (r#"[{"portgroup":""}]"#, "nics[0].portgroup"),
            (r#"[{}]"#, "nics[0].portgroup"),
            (r#"[{"portgroup":"a\u0007"}]"#, "nics[0].portgroup"),
            (r#"[{"portgroup":"a","mac":"01:00:5e:00:00:01"}]"#, "nics[0].mac"),
            (r#"[{"portgroup":"a","mac":"00:00:00:00:00:00"}]"#, "nics[0].mac"),
            (r#"[{"portgroup":"a","mac":"00:50:56:0g:00:01"}]"#, "nics[0].mac"),
            (r#"[{"portgroup":"a","mac":"00:50:56:00:00"}]"#, "nics[0].mac"),
            (r#"[{"portgroup":"a","mac":5}]"#, "nics[0].mac"),
            (
                r#"[{"portgroup":"a","mac":"00:50:56:00:00:01"},{"portgroup":"b","mac":"00-50-56-00-00-01"}]"#,
                "nics[1].mac",
            ),
            (r#"[{"portgroup":"a","connected":"yes"}]"#, "nics[0].connected"),
            (r#"[{"portgroup":"a","vlan":3}]"#, "nics[0].vlan"),
            (
                r#"[{"portgroup":"a"},{"portgroup":"a"},{"portgroup":"a"},{"portgroup":"a"},{"portgroup":"a"}]"#,
                "nics",
            ),
            (r#"{"portgroup":"a"}"#, "nics"),
        ];
        for (nics, field) in bad {
            let e = VmDefinition::parse("n1.json", doc(nics).as_bytes()).unwrap_err();
            assert_eq!(e.field, *field, "{nics}: {e}");
        }
        let e = parse_mac("aa:bb").unwrap_err();
        assert!(e.contains("not a MAC address"), "{e}");
    }

    #[test]
    fn each_bad_field_is_named_with_the_file() {
        let cases: &[(&str, &str, &str)] = &[
            ("vcpus", "0", "vcpus"),
            ("vcpus", "65", "vcpus"),
            ("vcpus", "\"2\"", "vcpus"),
            ("memory_mib", "8", "memory_mib"),
            ("memory_mib", "1048577", "memory_mib"),
            ("name", "\"has space\"", "name"),
            ("kernel", "\"/abs/vmlinuz\"", "kernel"),
            ("kernel", "\"../escape\"", "kernel"),
            ("kernel", "7", "kernel"),
            ("initrd", "\"a//b\"", "initrd"),
            ("cmdline", "\"a\\u0000b\"", "cmdline"),
            ("disks", "[{\"file\":\"x\"},{\"file\":\"x\"}]", "disks[1].file"),
            ("disks", "[{\"file\":\"x\",\"ro\":true}]", "disks[0].ro"),
            ("disks", "[{\"readonly\":true}]", "disks[0].file"),
            ("disks", "[{\"file\":\"x\",\"readonly\":1}]", "disks[0].readonly"),
            ("disks", "[7]", "disks[0]"),
            ("disks", "\"root.img\"", "disks"),
            ("autostart", "\"yes\"", "autostart"),
            ("console_port", "80", "console_port"),
            ("colour", "\"red\"", "colour"),
        ];
        for (field, value, named) in cases {
            let mut v: Value = serde_json::from_str(GOOD).unwrap();
            v[*field] = serde_json::from_str(value).unwrap();
            let e = VmDefinition::parse("web-1.json", v.to_string().as_bytes()).unwrap_err();
            assert_eq!((e.file.as_str(), e.field.as_str()), ("web-1.json", *named), "{field}={value}: {e}");
        }
        let mut v: Value = serde_json::from_str(GOOD).unwrap();
        v.as_object_mut().unwrap().remove("kernel");
        assert_eq!(VmDefinition::parse("f", v.to_string().as_bytes()).unwrap_err().field, "kernel");
        let e = VmDefinition::parse("f.json", b"{\n  \"name\": \"x\",\n  oops\n}").unwrap_err();
        assert!(e.to_string().starts_with("f.json: (document): not valid JSON at line 3 column"), "{e}");
        assert!(VmDefinition::parse("f", b"[]").unwrap_err().problem.contains("object"));
        let long = format!(
            r#"{{"name":"x","vcpus":1,"memory_mib":64,"kernel":"k","cmdline":"{}"}}"#,
            "a".repeat(2048)
        );
        assert_eq!(VmDefinition::parse("f", long.as_bytes()).unwrap_err().field, "cmdline");
    }

    #[test]
    fn datastore_paths() {
        let p = DsPath::parse("[datastore1 (2)] web/boot/vmlinuz").unwrap();
        assert_eq!((p.datastore.as_str(), p.path.as_str()), ("datastore1 (2)", "web/boot/vmlinuz"));
        assert_eq!(p.to_string(), "[datastore1 (2)] web/boot/vmlinuz");
        assert_eq!(p.parent().to_string(), "[datastore1 (2)] web/boot");
        assert_eq!(p.parent().parent().parent().path, "");
        let dir = DsPath::parse("[ds] vm1/vm1.json").unwrap().parent();
        assert_eq!(dir.resolve("vm1.img").unwrap().to_string(), "[ds] vm1/vm1.img");
        assert_eq!(dir.resolve("[other] iso/k").unwrap().to_string(), "[other] iso/k");
        assert!(dir.resolve("../x").is_err());
        let root = DsPath { datastore: "ds".into(), path: String::new() };
        assert_eq!(root.resolve("a").unwrap().path, "a");
        for bad in [
            "ds] x",
            "[ds]x",
            "[ds] ",
            "[ds] /abs",
            "[ds] a/../b",
            "[ds] a//b",
            "[] x",
            "[a/b] x",
            "[ds] a\0b",
        ] {
            let bad = bad.replace("\\0", "\0");
            assert!(DsPath::parse(&bad).is_err(), "{bad}");
        }
        assert!(DsPath::parse(&format!("[ds] {}", "a/".repeat(600))).is_err());
        // Names are UTF-8 with spaces.
        assert!(DsPath::parse("[ds] Windows Server/Bücher.img").is_ok());
    }

    #[test]
    fn a_definition_with_datastore_paths_round_trips() {
        let text = r#"{"name":"web","vcpus":1,"memory_mib":64,"kernel":"[iso store] boot/vmlinuz",
            "disks":[{"file":"web.img"},{"file":"[ds2] shared/data.img","readonly":true}]}"#;
        let d = VmDefinition::parse("web.json", text.as_bytes()).unwrap();
        assert_eq!(d.kernel, "[iso store] boot/vmlinuz");
        let again = VmDefinition::parse("web.json", d.to_json().to_string().as_bytes()).unwrap();
        assert_eq!(again, d);
        let bad = text.replace("[iso store] boot", "[iso store]boot");
        assert_eq!(VmDefinition::parse("web.json", bad.as_bytes()).unwrap_err().field, "kernel");
    }

    #[test]
    fn truncations_never_panic() {
        for n in 0..GOOD.len() {
            let _ = VmDefinition::parse("f", &GOOD.as_bytes()[..n]);
        }
    }
}
