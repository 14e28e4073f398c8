//! `\EFI\ember\boot.cfg`: the boot configuration on the ESP, and the boot options it carries.
//!
//! The file is line oriented, in the style of the ESXi `boot.cfg` (REFERENCE.md 2 and 3):
//! ```text
//! # comment
//! title=Ember
//! kernelopt=console=com1 ks=usb:/ks.cfg
//! ```
//! `kernelopt` holds the boot options, separated by spaces, each `name=value` or a bare flag.
//!
//! Boot options understood by this build:
//! - `console=com1|com2` - the serial port for the log and the DCUI (default COM1);
//! - `ks=<source>` - kickstart location for first boot (kept as given; validated by the first-boot code);
//! - `ember.debugexit` - when the appliance stops (fatal exception or power off), it also writes its
//!   status to the QEMU `isa-debug-exit` port 0xf4, so a test run can end QEMU with a status code;
//! - `ember.selftest=<what>` - **test-only**: provoke `pagefault`, `divide`, `invalid-opcode`,
//!   `gpfault` or a `reboot` right after boot, so the whole-system tests can check the exception report and
//!   the reset path, or `vm-panic`: a panic in the hypervisor's code for the first VM with a disk
//!   (15 s after it starts, with that VM's locks held), so they can check that the host and the
//!   other VMs carry on. Never set it on a production host.
//!
//! Unknown boot options are kept as warnings (a newer image's options must not brick an older loader);
//! malformed values of known options are errors naming the option.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Where `boot.cfg` lives on the ESP.
pub const BOOT_CFG_PATH: &str = "\\EFI\\ember\\boot.cfg";

/// Longest boot.cfg accepted (bytes); anything larger is not ours.
pub const MAX_BOOT_CFG_LEN: usize = 16 * 1024;

/// The serial port the console uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsolePort {
    /// COM1, I/O port 0x3f8.
    #[default]
    Com1,
    /// COM2, I/O port 0x2f8.
    Com2,
}

impl ConsolePort {
    /// The 16550 base I/O port.
    pub fn io_base(self) -> u16 {
        match self {
            ConsolePort::Com1 => 0x3f8,
            ConsolePort::Com2 => 0x2f8,
        }
    }
}

/// A test-only action the kernel performs right after it has booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfTest {
    /// Read an unmapped address (#PF, vector 14).
    PageFault,
    /// Divide by zero (#DE, vector 0).
    Divide,
    /// Execute `ud2` (#UD, vector 6).
    InvalidOpcode,
    /// Load a bad segment selector (#GP, vector 13).
    GeneralProtection,
    /// Reset the machine through the ACPI reset register.
    Reboot,
    /// Panic on the CPU running the first VM with a disk, 15 s after it started, with its board,
    /// disk and console locks held (a fault in the hypervisor's code for one VM).
    VmPanic,
}

impl SelfTest {
    fn parse(s: &str) -> Option<SelfTest> {
        Some(match s {
            "pagefault" => SelfTest::PageFault,
            "divide" => SelfTest::Divide,
            "invalid-opcode" => SelfTest::InvalidOpcode,
            "gpfault" => SelfTest::GeneralProtection,
            "reboot" => SelfTest::Reboot,
            "vm-panic" => SelfTest::VmPanic,
            _ => return None,
        })
    }
}

/// The boot options, after validation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootOptions {
    /// Serial console port.
    pub console: ConsolePort,
    /// Kickstart source as given (`ks=`).
    pub kickstart: Option<String>,
    /// Report the final status through QEMU's isa-debug-exit port.
    pub debug_exit: bool,
    /// Test-only action after boot.
    pub selftest: Option<SelfTest>,
    /// Management network settings (`netdevice`, `bootproto`, `ip`, `netmask`, `gateway`,
    /// `nameserver`, `vlanid`, `hostname`) in the order given; validated by the network configuration.
    pub network: Vec<(String, String)>,
    /// Options this build does not know, kept to be logged.
    pub unknown: Vec<String>,
}

/// The parsed `boot.cfg`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootCfg {
    /// Boot menu title.
    pub title: Option<String>,
    /// The raw `kernelopt` line.
    pub kernelopt: String,
    /// The validated boot options from `kernelopt`.
    pub options: BootOptions,
}

/// What is wrong with a `boot.cfg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootCfgErrorKind {
    /// The file is larger than [`MAX_BOOT_CFG_LEN`].
    TooLarge(usize),
    /// The file is not UTF-8 text.
    NotText,
    /// A line has no `=`.
    MissingEquals,
    /// A key this format does not have.
    UnknownKey(String),
    /// A key given twice.
    DuplicateKey(String),
    /// A boot option with a bad value.
    BadOption { option: String, expected: &'static str },
}

/// An error in `boot.cfg`, with the 1-based line it was found on (0 = the whole file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootCfgError {
    pub line: usize,
    pub kind: BootCfgErrorKind,
}

impl fmt::Display for BootCfgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{BOOT_CFG_PATH}")?;
        if self.line > 0 {
            write!(f, ":line {}", self.line)?;
        }
        write!(f, ": ")?;
        match &self.kind {
            BootCfgErrorKind::TooLarge(n) => {
                write!(f, "file is {n} bytes, larger than the {MAX_BOOT_CFG_LEN}-byte limit")
            }
            BootCfgErrorKind::NotText => write!(f, "file is not UTF-8 text"),
            BootCfgErrorKind::MissingEquals => write!(f, "expected `key=value`"),
            BootCfgErrorKind::UnknownKey(k) => {
                write!(f, "unknown key `{k}` (expected title or kernelopt)")
            }
            BootCfgErrorKind::DuplicateKey(k) => write!(f, "key `{k}` is given more than once"),
            BootCfgErrorKind::BadOption { option, expected } => {
                write!(f, "boot option `{option}`: expected {expected}")
            }
        }
    }
}

/// Parses the contents of `boot.cfg`.
pub fn parse_boot_cfg(bytes: &[u8]) -> Result<BootCfg, BootCfgError> {
    let whole = |kind| BootCfgError { line: 0, kind };
    if bytes.len() > MAX_BOOT_CFG_LEN {
        return Err(whole(BootCfgErrorKind::TooLarge(bytes.len())));
    }
    let text = core::str::from_utf8(bytes).map_err(|_| whole(BootCfgErrorKind::NotText))?;
    let mut cfg = BootCfg::default();
    let mut seen_title = false;
    let mut seen_kernelopt = false;
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let err = |kind| BootCfgError { line: line_no, kind };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or(err(BootCfgErrorKind::MissingEquals))?;
        let key = key.trim();
        let value = value.trim();
        match key {
            "title" => {
                if core::mem::replace(&mut seen_title, true) {
                    return Err(err(BootCfgErrorKind::DuplicateKey(key.to_string())));
                }
                cfg.title = Some(value.to_string());
            }
            "kernelopt" => {
                if core::mem::replace(&mut seen_kernelopt, true) {
                    return Err(err(BootCfgErrorKind::DuplicateKey(key.to_string())));
                }
                cfg.options = parse_boot_options(value).map_err(err)?;
                cfg.kernelopt = value.to_string();
            }
            other => return Err(err(BootCfgErrorKind::UnknownKey(other.to_string()))),
        }
    }
    Ok(cfg)
}

/// Parses a `kernelopt` string into validated boot options.
pub fn parse_boot_options(s: &str) -> Result<BootOptions, BootCfgErrorKind> {
    let mut opts = BootOptions::default();
    for word in s.split_ascii_whitespace() {
        let (name, value) = match word.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (word, None),
        };
        let bad = |expected| BootCfgErrorKind::BadOption { option: name.to_string(), expected };
        match name {
            "console" => {
                opts.console = match value.map(|v| v.to_ascii_lowercase()).as_deref() {
                    Some("com1") => ConsolePort::Com1,
                    Some("com2") => ConsolePort::Com2,
                    _ => return Err(bad("com1 or com2")),
                }
            }
            "ks" => match value {
                Some(v) if !v.is_empty() => opts.kickstart = Some(v.to_string()),
                _ => return Err(bad("a kickstart location such as ks=usb:/ks.cfg")),
            },
            "ember.debugexit" => {
                opts.debug_exit = match value {
                    None | Some("1") | Some("yes") | Some("true") => true,
                    Some("0") | Some("no") | Some("false") => false,
                    _ => return Err(bad("no value, or 0/1")),
                }
            }
            "ember.selftest" => {
                opts.selftest = Some(
                    value
                        .and_then(SelfTest::parse)
                        .ok_or(bad("one of pagefault, divide, invalid-opcode, gpfault, reboot, vm-panic"))?,
                )
            }
            "netdevice" | "bootproto" | "ip" | "netmask" | "gateway" | "nameserver" | "vlanid"
            | "hostname" => match value {
                Some(v) if !v.is_empty() => opts.network.push((name.to_string(), v.to_string())),
                _ => return Err(bad("a value, as in name=value")),
            },
            _ => opts.unknown.push(word.to_string()),
        }
    }
    Ok(opts)
}

/// Renders a `boot.cfg` for the given title and boot options (what `ember-image build` writes).
pub fn render_boot_cfg(title: &str, kernelopt: &str) -> String {
    let mut s = String::new();
    s.push_str("# Ember boot configuration (\\EFI\\ember\\boot.cfg)\n");
    s.push_str("# kernelopt holds the boot options, separated by spaces.\n");
    s.push_str("title=");
    s.push_str(title);
    s.push_str("\nkernelopt=");
    s.push_str(kernelopt);
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rendered_file() {
        let text = render_boot_cfg("Ember", "console=com2 ks=usb:/ks.cfg ember.debugexit");
        let cfg = parse_boot_cfg(text.as_bytes()).unwrap();
        assert_eq!(cfg.title.as_deref(), Some("Ember"));
        assert_eq!(cfg.options.console, ConsolePort::Com2);
        assert_eq!(cfg.options.kickstart.as_deref(), Some("usb:/ks.cfg"));
        assert!(cfg.options.debug_exit);
        assert_eq!(cfg.options.selftest, None);
        assert!(cfg.options.unknown.is_empty());
    }

    #[test]
    fn network_options_are_collected_in_order() {
        let o = parse_boot_options("ip=10.0.0.5/24 vlanid=7 console=com1 hostname=h1").unwrap();
        assert_eq!(
            o.network,
            alloc::vec![
                ("ip".to_string(), "10.0.0.5/24".to_string()),
                ("vlanid".to_string(), "7".to_string()),
                ("hostname".to_string(), "h1".to_string())
            ]
        );
        assert!(o.unknown.is_empty());
        assert!(matches!(parse_boot_options("gateway="), Err(BootCfgErrorKind::BadOption { .. })));
        assert!(matches!(parse_boot_options("vlanid"), Err(BootCfgErrorKind::BadOption { .. })));
    }

    #[test]
    fn empty_file_gives_defaults() {
        let cfg = parse_boot_cfg(b"").unwrap();
        assert_eq!(cfg.options, BootOptions::default());
        assert_eq!(cfg.options.console.io_base(), 0x3f8);
    }

    #[test]
    fn comments_blank_lines_and_crlf() {
        let cfg =
            parse_boot_cfg(b"# hi\r\n\r\n  title = X \r\nkernelopt=ember.selftest=pagefault\r\n").unwrap();
        assert_eq!(cfg.title.as_deref(), Some("X"));
        assert_eq!(cfg.options.selftest, Some(SelfTest::PageFault));
    }

    #[test]
    fn errors_name_the_line_and_problem() {
        let e = parse_boot_cfg(b"title=a\nbogus line\n").unwrap_err();
        assert_eq!(e, BootCfgError { line: 2, kind: BootCfgErrorKind::MissingEquals });
        assert_eq!(e.to_string(), "\\EFI\\ember\\boot.cfg:line 2: expected `key=value`");

        let e = parse_boot_cfg(b"\nprefix=/x\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(e.kind, BootCfgErrorKind::UnknownKey("prefix".into()));

        let e = parse_boot_cfg(b"title=a\ntitle=b\n").unwrap_err();
        assert_eq!(e.kind, BootCfgErrorKind::DuplicateKey("title".into()));

        let e = parse_boot_cfg(b"kernelopt=console=com3\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert_eq!(
            e.to_string(),
            "\\EFI\\ember\\boot.cfg:line 1: boot option `console`: expected com1 or com2"
        );

        let e = parse_boot_cfg(b"kernelopt=ember.selftest=explode").unwrap_err();
        assert!(
            matches!(e.kind, BootCfgErrorKind::BadOption { ref option, .. } if option == "ember.selftest")
        );

        assert!(matches!(
            parse_boot_cfg(b"kernelopt=ks=").unwrap_err().kind,
            BootCfgErrorKind::BadOption { .. }
        ));
        assert!(matches!(
            parse_boot_cfg(b"kernelopt=ember.debugexit=maybe").unwrap_err().kind,
            BootCfgErrorKind::BadOption { .. }
        ));
    }

    #[test]
    fn non_text_and_oversized_files_are_rejected() {
        assert_eq!(parse_boot_cfg(&[0xff, 0xfe, 0x00]).unwrap_err().kind, BootCfgErrorKind::NotText);
        let big = alloc::vec![b'#'; MAX_BOOT_CFG_LEN + 1];
        assert_eq!(parse_boot_cfg(&big).unwrap_err().kind, BootCfgErrorKind::TooLarge(MAX_BOOT_CFG_LEN + 1));
    }

    #[test]
    fn unknown_options_are_kept_not_fatal() {
        let o = parse_boot_options("quiet foo=bar console=COM1").unwrap();
        assert_eq!(o.unknown, alloc::vec!["quiet".to_string(), "foo=bar".to_string()]);
        assert_eq!(o.console, ConsolePort::Com1);
    }

    #[test]
    fn every_selftest_name_parses() {
        for (name, want) in [
            ("pagefault", SelfTest::PageFault),
            ("divide", SelfTest::Divide),
            ("invalid-opcode", SelfTest::InvalidOpcode),
            ("gpfault", SelfTest::GeneralProtection),
            ("reboot", SelfTest::Reboot),
            ("vm-panic", SelfTest::VmPanic),
        ] {
            let o = parse_boot_options(&alloc::format!("ember.selftest={name}")).unwrap();
            assert_eq!(o.selftest, Some(want));
        }
    }
}
