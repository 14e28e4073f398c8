//! The DCUI idle screen: what a person sees on the monitor and serial console of an idle host.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// How the management network is reachable, as the idle screen shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagementAddress {
    /// No management network exists (no supported NIC).
    None,
    /// The management interface exists but has no address; the text says why
    /// (for example "vmnic0: waiting for DHCP lease").
    Unavailable(String),
    /// Reachable at `hostname` / `ipv4`, configured by DHCP or statically.
    Ipv4 { hostname: String, ipv4: String, dhcp: bool },
}

/// Facts about the host shown on the idle screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    pub version: String,
    pub build: String,
    pub vendor: Option<String>,
    pub product: Option<String>,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_bytes: u64,
    pub management: ManagementAddress,
    /// The management interface's routable IPv6 address, if it has one, and whether it is static.
    pub ipv6: Option<(String, bool)>,
    /// The SHA-256 fingerprint of the management API's HTTPS certificate (`AB:CD:...`), which a
    /// client compares before trusting a self-signed certificate.
    pub certificate_sha256: Option<String>,
    /// Something the operator must know, shown under the management URL (for example why the first
    /// boot's kickstart was not applied).
    pub notice: Option<String>,
}

/// Splits `text` into lines of at most `width` characters, breaking at spaces where it can.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split(' ') {
        let mut word: &str = word;
        loop {
            let need = if cur.is_empty() {
                word.chars().count()
            } else {
                cur.chars().count() + 1 + word.chars().count()
            };
            if need <= width {
                if !cur.is_empty() {
                    cur.push(' ');
                }
                cur.push_str(word);
                break;
            }
            if !cur.is_empty() {
                lines.push(core::mem::take(&mut cur));
                continue;
            }
            // A word longer than a line is cut.
            let cut = word.char_indices().nth(width).map_or(word.len(), |(i, _)| i);
            lines.push(String::from(&word[..cut]));
            word = &word[cut..];
            if word.is_empty() {
                break;
            }
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Which band of the screen a line belongs to (the framebuffer draws them in two colours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band {
    Top,
    Bottom,
    KeyBar,
}

/// One line of the idle screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub band: Band,
    pub text: String,
}

/// Formats a memory size the way the idle screen shows it ("32 GiB", "0.5 GiB").
pub fn memory_gib(bytes: u64) -> String {
    let tenths = (bytes * 10 + (1 << 29)) >> 30; // rounded to 0.1 GiB
    if tenths.is_multiple_of(10) {
        format!("{} GiB", tenths / 10)
    } else {
        format!("{}.{} GiB", tenths / 10, tenths % 10)
    }
}

/// The idle screen for a `width`-column console, top to bottom.
pub fn idle_screen(id: &HostIdentity, width: usize) -> Vec<Line> {
    let top = |t: String| Line { band: Band::Top, text: t };
    let bottom = |t: String| Line { band: Band::Bottom, text: t };
    let mut lines = Vec::new();
    lines.push(top(String::new()));
    lines.push(top(format!("Ember {} (build {})", id.version, id.build)));
    lines.push(top(String::new()));
    let machine = match (&id.vendor, &id.product) {
        (Some(v), Some(p)) => format!("{v} {p}"),
        (Some(v), None) => v.clone(),
        (None, Some(p)) => p.clone(),
        (None, None) => String::from("Unknown system"),
    };
    lines.push(top(machine));
    lines.push(top(String::new()));
    lines.push(top(format!("{} x {}", id.cpus, id.cpu_model)));
    lines.push(top(format!("{} Memory", memory_gib(id.memory_bytes))));
    lines.push(top(String::new()));
    lines.push(bottom(String::new()));
    lines.push(bottom(String::from("To manage this host, go to:")));
    match &id.management {
        ManagementAddress::None => lines.push(bottom(String::from("no management network"))),
        ManagementAddress::Unavailable(why) => lines.push(bottom(format!("no address yet: {why}"))),
        ManagementAddress::Ipv4 { hostname, ipv4, dhcp } => lines.push(bottom(format!(
            "https://{hostname}/  https://{ipv4}/ ({})",
            if *dhcp { "DHCP" } else { "STATIC" }
        ))),
    }
    if let Some((address, fixed)) = &id.ipv6 {
        lines.push(bottom(format!("https://[{address}]/ ({})", if *fixed { "STATIC" } else { "AUTOCONF" })));
    }
    if let Some(f) = &id.certificate_sha256 {
        lines.push(bottom(String::from("HTTPS certificate SHA-256 fingerprint:")));
        // 95 characters: two lines of 16 bytes each on an 80-column screen.
        let (first, second) = f.split_at(f.len().min(48));
        lines.push(bottom(String::from(first.trim_end_matches(':'))));
        if !second.is_empty() {
            lines.push(bottom(String::from(second)));
        }
    }
    lines.push(bottom(String::new()));
    if let Some(notice) = &id.notice {
        for l in wrap(notice, width.saturating_sub(4)) {
            lines.push(bottom(l));
        }
        lines.push(bottom(String::new()));
    }
    let left = "<F2> Customize System/View Logs";
    let right = "<F12> Shut Down/Restart";
    let gap = width.saturating_sub(left.len() + right.len()).max(2);
    lines.push(Line { band: Band::KeyBar, text: format!("{left}{}{right}", " ".repeat(gap)) });
    lines
}

/// A line placed on a `cols` x `rows` screen (0-based row and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positioned {
    pub row: usize,
    pub col: usize,
    pub band: Band,
    pub text: String,
}

/// Lays the idle screen out on a `cols` x `rows` screen: the top band is rows `0..split`, the bottom
/// band `split..rows`, the key bar is the last row. Lines that do not fit are dropped, never drawn
/// outside the screen. Returns `split` and the lines.
pub fn layout(id: &HostIdentity, cols: usize, rows: usize) -> (usize, Vec<Positioned>) {
    let split = rows / 2;
    let (mut top, mut bottom) = (1, split + 1);
    let mut out = Vec::new();
    for l in idle_screen(id, cols) {
        let (row, col) = match l.band {
            Band::Top => {
                top += 1;
                (top - 1, 2)
            }
            Band::Bottom => {
                bottom += 1;
                (bottom - 1, 2)
            }
            Band::KeyBar => (rows.saturating_sub(1), 0),
        };
        let fits = match l.band {
            Band::Top => row < split,
            Band::Bottom => row < rows.saturating_sub(1),
            Band::KeyBar => rows > 0,
        };
        if fits {
            let text: String = l.text.chars().take(cols.saturating_sub(col)).collect();
            out.push(Positioned { row, col, band: l.band, text });
        }
    }
    (split, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> HostIdentity {
        HostIdentity {
            version: "0.1.0".into(),
            build: "abc".into(),
            vendor: Some("QEMU".into()),
            product: Some("Standard PC (Q35 + ICH9, 2009)".into()),
            cpus: 2,
            cpu_model: "AMD EPYC Processor".into(),
            memory_bytes: 512 << 20,
            management: ManagementAddress::None,
            ipv6: None,
            certificate_sha256: None,
            notice: None,
        }
    }

    #[test]
    fn notices_are_wrapped_to_the_screen() {
        let mut i = id();
        i.notice = Some("first boot: kickstart ks.cfg on the boot media: error parsing the installation script: ks.cfg:line 3: unknown command `frobnicate`; nothing applied".into());
        let lines = idle_screen(&i, 40);
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        let start = texts.iter().position(|t| t.starts_with("first boot:")).unwrap();
        assert!(texts[start..].iter().take_while(|t| !t.is_empty()).all(|t| t.len() <= 36), "{texts:?}");
        let joined =
            texts[start..].iter().take_while(|t| !t.is_empty()).cloned().collect::<Vec<_>>().join(" ");
        assert_eq!(joined, i.notice.as_deref().unwrap());
        assert_eq!(wrap("abcdefgh ij", 3), ["abc", "def", "gh", "ij"]);
        assert_eq!(wrap("", 10), Vec::<String>::new());
    }

    #[test]
    fn shows_what_reference_md_lists() {
        let text: Vec<String> = idle_screen(&id(), 80).into_iter().map(|l| l.text).collect();
        assert!(text.contains(&"Ember 0.1.0 (build abc)".to_string()));
        assert!(text.contains(&"QEMU Standard PC (Q35 + ICH9, 2009)".to_string()));
        assert!(text.contains(&"2 x AMD EPYC Processor".to_string()));
        assert!(text.contains(&"0.5 GiB Memory".to_string()));
        assert!(text.contains(&"To manage this host, go to:".to_string()));
        assert!(text.contains(&"no management network".to_string()));
        let keys = text.last().unwrap();
        assert_eq!(keys.len(), 80);
        assert!(
            keys.starts_with("<F2> Customize System/View Logs") && keys.ends_with("<F12> Shut Down/Restart")
        );
    }

    #[test]
    fn management_url() {
        let mut i = id();
        i.management =
            ManagementAddress::Ipv4 { hostname: "esx1".into(), ipv4: "10.0.0.5".into(), dhcp: true };
        let text: Vec<String> = idle_screen(&i, 80).into_iter().map(|l| l.text).collect();
        assert!(text.contains(&"https://esx1/  https://10.0.0.5/ (DHCP)".to_string()));
        i.management =
            ManagementAddress::Ipv4 { hostname: "esx1".into(), ipv4: "10.0.0.5".into(), dhcp: false };
        let text: Vec<String> = idle_screen(&i, 80).into_iter().map(|l| l.text).collect();
        assert!(text.contains(&"https://esx1/  https://10.0.0.5/ (STATIC)".to_string()));
        i.management = ManagementAddress::Unavailable("vmnic0: DHCP lease lost".into());
        let text: Vec<String> = idle_screen(&i, 80).into_iter().map(|l| l.text).collect();
        assert!(text.contains(&"no address yet: vmnic0: DHCP lease lost".to_string()));
        i.ipv6 = Some(("2001:db8::20".into(), true));
        let text: Vec<String> = idle_screen(&i, 80).into_iter().map(|l| l.text).collect();
        assert!(text.contains(&"https://[2001:db8::20]/ (STATIC)".to_string()), "{text:?}");
        i.ipv6 = Some(("fec0::5054:ff:fe00:10".into(), false));
        let text: Vec<String> = idle_screen(&i, 80).into_iter().map(|l| l.text).collect();
        assert!(text.contains(&"https://[fec0::5054:ff:fe00:10]/ (AUTOCONF)".to_string()), "{text:?}");
        let f: Vec<String> = (0..32).map(|b| format!("{b:02X}")).collect();
        i.certificate_sha256 = Some(f.join(":"));
        let text: Vec<String> = idle_screen(&i, 80).into_iter().map(|l| l.text).collect();
        let at = text.iter().position(|t| t == "HTTPS certificate SHA-256 fingerprint:").expect("shown");
        assert_eq!(text[at + 1], f[..16].join(":"));
        assert_eq!(text[at + 2], f[16..].join(":"));
    }

    #[test]
    fn layout_on_80x24_and_tiny_screens() {
        let (split, lines) = layout(&id(), 80, 24);
        assert_eq!(split, 12);
        let at = |t: &str| lines.iter().find(|l| l.text.starts_with(t)).map(|l| (l.row, l.col));
        assert_eq!(at("Ember 0.1.0"), Some((2, 2)));
        assert_eq!(at("To manage"), Some((14, 2)));
        assert_eq!(at("<F2>"), Some((23, 0)));
        for l in &lines {
            assert!(l.row < 24 && l.col + l.text.len() <= 80, "{l:?}");
            match l.band {
                Band::Top => assert!(l.row < split),
                _ => assert!(l.row >= split),
            }
        }
        // A 20x6 screen: nothing is placed outside it.
        let (split, lines) = layout(&id(), 20, 6);
        assert!(lines
            .iter()
            .all(|l| l.row < 6 && l.col + l.text.len() <= 20 && (l.band != Band::Top || l.row < split)));
        assert!(layout(&id(), 0, 0).1.is_empty());
    }

    #[test]
    fn memory_formatting() {
        assert_eq!(memory_gib(32 << 30), "32 GiB");
        assert_eq!(memory_gib(512 << 20), "0.5 GiB");
        assert_eq!(memory_gib((4 << 30) - (100 << 20)), "3.9 GiB");
        assert_eq!(memory_gib(0), "0 GiB");
    }
}
