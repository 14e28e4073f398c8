//! Where a first boot's kickstart comes from (REFERENCE.md 2, the `ks=` boot option), and the order
//! of sources (PRODUCT.md 2): the `ks=` location if one is given, else `ks.cfg` at the root of the
//! boot media's ESP, else the built-in defaults.

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;

/// The kickstart at the root of the ESP, used when no `ks=` is given.
pub const ESP_KICKSTART: &str = "/ks.cfg";
/// CA certificates (PEM) an `https://` kickstart server's certificate must chain to; without this
/// file on the ESP, the Mozilla root store built into Ember is used.
pub const KS_CA_FILE: &str = "/EFI/ember/ks-ca.pem";
/// Largest CA file accepted.
pub const MAX_KS_CA_BYTES: usize = 256 * 1024;
/// Longest `ks=` path accepted.
pub const MAX_PATH_LEN: usize = 255;

/// A kickstart location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KsSource {
    /// `ks=http://host[:port]/path`: fetched through the management network.
    Http(String),
    /// `ks=https://...`: fetched through the management network over TLS 1.3, the certificate
    /// checked against [`KS_CA_FILE`] or the built-in root store.
    Https(String),
    /// `ks=usb` (`/ks.cfg`) or `ks=usb:/path`: a file on a FAT volume of a USB drive; the boot
    /// media is searched first.
    Usb(String),
    /// `ks=file://path`: a file on the boot media.
    File(String),
    /// `ks=cdrom:/path`: not supported by this build (no CD-ROM file system); refused with a message.
    Cdrom(String),
    /// No `ks=`: `ks.cfg` at the root of the boot media's ESP, when there is one.
    BootMedia,
}

impl fmt::Display for KsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KsSource::Http(u) | KsSource::Https(u) => write!(f, "{u}"),
            KsSource::Usb(p) => write!(f, "usb:{p}"),
            KsSource::File(p) => write!(f, "file://{p}"),
            KsSource::Cdrom(p) => write!(f, "cdrom:{p}"),
            KsSource::BootMedia => write!(f, "ks.cfg on the boot media"),
        }
    }
}

/// Checks a file path: absolute, `/`-separated, printable ASCII without `\`, no `.` or `..` parts.
pub fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` is not an absolute path (expected /dir/ks.cfg)"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("path longer than {MAX_PATH_LEN} characters"));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return Err(String::from("the path must be printable ASCII without spaces or `\\`"));
    }
    if path.split('/').skip(1).any(|p| p.is_empty() || p == "." || p == "..") {
        return Err(format!("`{path}` has an empty, `.` or `..` component"));
    }
    Ok(())
}

impl KsSource {
    /// Parses a `ks=` value; `None` (no option) is [`KsSource::BootMedia`].
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        let Some(v) = value else { return Ok(KsSource::BootMedia) };
        let bad = |why: String| Err(format!("boot option ks={v}: {why}"));
        let lower = v.to_ascii_lowercase();
        let web = if lower.starts_with("http://") {
            Some((7, false))
        } else if lower.starts_with("https://") {
            Some((8, true))
        } else {
            None
        };
        if let Some((scheme_len, tls)) = web {
            let rest = &v[scheme_len..];
            if rest.is_empty() || rest.starts_with('/') {
                return bad(String::from("no host in the URL"));
            }
            if !v.bytes().all(|b| b.is_ascii_graphic()) {
                return bad(String::from("the URL must be printable ASCII without spaces"));
            }
            return Ok(if tls { KsSource::Https(v.to_string()) } else { KsSource::Http(v.to_string()) });
        }
        let (kind, path) = if lower == "usb" {
            ("usb", ESP_KICKSTART)
        } else if let Some(p) = v.strip_prefix("usb:") {
            ("usb", p)
        } else if let Some(p) = v.strip_prefix("file://") {
            ("file", p)
        } else if let Some(p) = v.strip_prefix("cdrom:") {
            ("cdrom", p)
        } else {
            return bad(String::from(
                "expected http://, https://, usb, usb:/path, file://path or cdrom:/path",
            ));
        };
        // `file://path` is commonly written with the path's own slash (`file:///ks.cfg`) or without.
        let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        if let Err(why) = check_path(&path) {
            return bad(why);
        }
        Ok(match kind {
            "usb" => KsSource::Usb(path),
            "file" => KsSource::File(path),
            _ => KsSource::Cdrom(path),
        })
    }

    /// Whether the file is read from local media while the firmware's file systems are available.
    pub fn is_local(&self) -> bool {
        matches!(self, KsSource::Usb(_) | KsSource::File(_) | KsSource::BootMedia)
    }
}

/// Resolves a `%include` name against the including file's directory: absolute names stay, relative
/// names are taken from `dir` (a checked absolute directory path, `/` for the root).
pub fn include_path(dir: &str, name: &str) -> Result<String, String> {
    let name = name.strip_prefix("file://").unwrap_or(name);
    let path = if name.starts_with('/') {
        name.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    };
    check_path(&path).map(|()| path)
}

/// The directory part of a checked absolute path (`/a/b.cfg` -> `/a`, `/ks.cfg` -> `/`).
pub fn parent_dir(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_form() {
        let p = |v: &str| KsSource::parse(Some(v));
        assert_eq!(KsSource::parse(None), Ok(KsSource::BootMedia));
        assert_eq!(
            p("http://10.0.2.2:8000/ks.cfg"),
            Ok(KsSource::Http("http://10.0.2.2:8000/ks.cfg".into()))
        );
        assert_eq!(p("HTTP://host/ks"), Ok(KsSource::Http("HTTP://host/ks".into())));
        assert_eq!(p("https://host/ks.cfg"), Ok(KsSource::Https("https://host/ks.cfg".into())));
        assert_eq!(p("usb"), Ok(KsSource::Usb("/ks.cfg".into())));
        assert_eq!(p("usb:/kickstart/host1.cfg"), Ok(KsSource::Usb("/kickstart/host1.cfg".into())));
        assert_eq!(p("file:///ks.cfg"), Ok(KsSource::File("/ks.cfg".into())));
        assert_eq!(p("file://etc/ks.cfg"), Ok(KsSource::File("/etc/ks.cfg".into())));
        assert_eq!(p("cdrom:/KS.CFG"), Ok(KsSource::Cdrom("/KS.CFG".into())));
        assert!(KsSource::Usb("/a".into()).is_local() && !KsSource::Http("x".into()).is_local());
    }

    #[test]
    fn bad_sources_name_the_option_and_the_problem() {
        let e = |v: &str| KsSource::parse(Some(v)).unwrap_err();
        assert_eq!(e("ftp://x/ks"), "boot option ks=ftp://x/ks: expected http://, https://, usb, usb:/path, file://path or cdrom:/path");
        assert!(e("http://").contains("no host"));
        assert!(e("http:///ks.cfg").contains("no host"));
        assert!(e("https://").contains("no host"));
        assert!(e("https://a b/").contains("printable ASCII"));
        assert!(e("usb:/../ks.cfg").contains("`..`"));
        assert!(e("usb:/a//b").contains("empty"));
        assert!(e("file://a\\b").contains("without spaces or `\\`"));
        assert!(e(&format!("usb:/{}", "a".repeat(300))).contains("longer than"));
    }

    #[test]
    fn include_paths() {
        assert_eq!(include_path("/", "part.cfg").unwrap(), "/part.cfg");
        assert_eq!(include_path("/ks", "part.cfg").unwrap(), "/ks/part.cfg");
        assert_eq!(include_path("/ks", "/other/p.cfg").unwrap(), "/other/p.cfg");
        assert_eq!(include_path("/ks", "file:///x.cfg").unwrap(), "/x.cfg");
        assert!(include_path("/ks", "../x.cfg").is_err());
        assert_eq!(parent_dir("/ks.cfg"), "/");
        assert_eq!(parent_dir("/a/b/c.cfg"), "/a/b");
    }
}
