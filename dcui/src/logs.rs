//! The logs View System Logs offers (REFERENCE.md 1: the host log, the kernel log, the config/change
//! log, the management agent log). Ember keeps one in-memory console log; each view is that log
//! filtered by what a line is about, told from the subsystem that wrote it (the words after `ember: `).

/// One of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// Every message.
    Host,
    /// Firmware, hardware, drivers and the kernel itself.
    Kernel,
    /// Configuration changes and their sources: DCUI changes and logins, the config store, first boot
    /// and kickstarts, time-outs acting on settings.
    Config,
    /// The management network and the API service.
    Agent,
}

impl LogKind {
    pub const ALL: [LogKind; 4] = [LogKind::Host, LogKind::Kernel, LogKind::Config, LogKind::Agent];

    pub fn title(self) -> &'static str {
        match self {
            LogKind::Host => "Host log (all messages)",
            LogKind::Kernel => "Kernel log (firmware, hardware, drivers)",
            LogKind::Config => "Configuration log (changes, logins, first boot)",
            LogKind::Agent => "Management agent log (network, API)",
        }
    }

    /// Whether `line` belongs in this log.
    pub fn includes(self, line: &str) -> bool {
        self == LogKind::Host || classify(line) == self
    }
}

/// Subsystem prefixes (after `ember: `, an optional `WARNING: ` or `ERROR: `) of configuration lines.
const CONFIG: &[&str] = &[
    "DCUI",
    "configuration",
    "config",
    "first boot",
    "kickstart",
    "boot media",
    "stored",
    "local keyboards",
    "local shell and SSH",
    "availability time-out",
    "initial password",
];

/// ... and of the management agent's.
const AGENT: &[&str] = &["management", "DHCP", "API", "HTTP", "vmnic", "Test Management Network"];

/// The log a line is about (never [`LogKind::Host`]: that one holds them all).
pub fn classify(line: &str) -> LogKind {
    let text = line.trim_start().strip_prefix("ember: ").unwrap_or(line);
    let text = text.strip_prefix("WARNING: ").or_else(|| text.strip_prefix("ERROR: ")).unwrap_or(text);
    if CONFIG.iter().any(|p| text.starts_with(p)) {
        LogKind::Config
    } else if AGENT.iter().any(|p| text.starts_with(p)) {
        LogKind::Agent
    } else {
        LogKind::Kernel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_go_to_their_logs() {
        let cases = [
            ("ember: pci 0000:00:1f.2 8086:2922 SATA controller (01.06.01)", LogKind::Kernel),
            ("ember: TSC 2599 MHz, LAPIC timer 999 MHz", LogKind::Kernel),
            ("ember: WARNING: xHCI at 0000:00:02.0 not usable: reset", LogKind::Kernel),
            ("Ember 0.1.0 booted: 2 CPUs, 511 MiB memory", LogKind::Kernel),
            ("ember: DCUI: root password changed", LogKind::Config),
            ("ember: ERROR: DCUI: keyboard layout German: the store failed", LogKind::Config),
            ("ember: configuration loaded from usb0 (slot 1, sequence 4)", LogKind::Config),
            ("ember: first boot: kickstart ks.cfg on the boot media applied", LogKind::Config),
            ("ember: boot media is usb0: configuration store in its config partition", LogKind::Config),
            ("ember: local shell and SSH disabled: availability time-out (5 min)", LogKind::Config),
            ("ember: management network: vmnic0 (virtio-net, MAC 52:54:00:00:00:10), DHCP", LogKind::Agent),
            ("ember: DHCP lease 10.0.2.15/24 from 10.0.2.2", LogKind::Agent),
            ("ember: management agents restarted: 1 API connections dropped", LogKind::Agent),
            ("ember: vmnic0: link down", LogKind::Agent),
        ];
        for (line, kind) in cases {
            assert_eq!(classify(line), kind, "{line}");
            assert!(kind.includes(line) && LogKind::Host.includes(line));
            for other in LogKind::ALL.iter().filter(|k| **k != kind && **k != LogKind::Host) {
                assert!(!other.includes(line), "{line} also in {other:?}");
            }
        }
    }
}
