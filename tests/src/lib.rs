//! The whole-system test harness: builds images with `ember-image`, boots them in QEMU (q35, TCG,
//! `-cpu EPYC`, OVMF pflash) from a USB stick on xHCI, NVMe or virtio, reads the serial console with
//! time-outs, sends keys, and collects the exit status (`isa-debug-exit`).
//!
//! Inputs come from the environment that `scripts/test` sets: `EMBER_EFI` (the appliance binary) and
//! `EMBER_IMAGE_TOOL` (the `ember-image` binary). Serial logs are kept under
//! `target/systest-logs/` for people to read after a run.

#![forbid(unsafe_code)]

pub mod net;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous time-out for anything that waits on the emulator (TCG is slow; CI has 2 cores).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn env_path(var: &str, default: &str) -> PathBuf {
    // Relative paths are relative to the workspace root (tests run in their crate's directory).
    workspace().join(std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(default)))
}

/// The appliance binary under test.
pub fn efi_path() -> PathBuf {
    let p = env_path("EMBER_EFI", "target/x86_64-unknown-uefi/release/ember.efi");
    assert!(p.exists(), "{} is missing: run scripts/test (it builds the appliance first)", p.display());
    p
}

/// The `ember-image` binary under test.
pub fn image_tool() -> PathBuf {
    let p = env_path("EMBER_IMAGE_TOOL", "target/release/ember-image");
    assert!(p.exists(), "{} is missing: run scripts/test (it builds ember-image first)", p.display());
    p
}

/// Runs `ember-image` with `args`; returns (success, stdout, stderr).
pub fn run_tool(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(image_tool()).args(args).stdin(Stdio::null()).output().expect("run ember-image");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Builds an image in `dir` with the given boot options.
pub fn build_image(dir: &Path, boot_options: &[&str]) -> PathBuf {
    build_image_with(dir, boot_options, &[])
}

/// [`build_image`] with more `ember-image build` arguments (e.g. `--ks-ca FILE`).
pub fn build_image_with(dir: &Path, boot_options: &[&str], more: &[&str]) -> PathBuf {
    let out = dir.join("ember.img");
    let efi = efi_path();
    let mut args = vec!["build", "--out", out.to_str().unwrap(), "--efi", efi.to_str().unwrap()];
    for o in boot_options {
        args.push("--boot-option");
        args.push(o);
    }
    args.extend_from_slice(more);
    let (ok, stdout, stderr) = run_tool(&args);
    assert!(ok, "ember-image build failed:\n{stdout}\n{stderr}");
    out
}

/// How the image is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    /// A USB stick on an xHCI controller (how users boot Ember).
    Usb,
    /// An NVMe namespace.
    Nvme,
    /// A virtio-blk disk.
    Virtio,
    /// A SATA disk on the q35 machine's built-in AHCI controller.
    Ahci,
    /// A disk on a virtio-scsi controller (the firmware boots from it; Ember has no driver for it).
    VirtioScsi,
}

/// One QEMU run.
pub struct QemuConfig {
    pub name: String,
    pub image: PathBuf,
    pub disk: Disk,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Extra arguments (for example `-no-reboot`).
    pub extra: Vec<String>,
    /// Which serial port the test reads: 1 = COM1, 2 = COM2.
    pub console_port: u8,
    /// The `-machine` value.
    pub machine: String,
    /// The `-cpu` value (`EPYC`: SVM with nested paging under TCG).
    pub cpu: String,
    /// NICs, in PCI order (they become vmnic0, vmnic1, ...).
    pub nics: Vec<NicSpec>,
    /// Run QEMU inside this network namespace (for tap devices created there).
    pub netns: Option<String>,
    /// More `-drive` options for the boot disk, each with its leading comma (for example
    /// `,throttling.bps-write=1024` for a slow medium).
    pub drive_options: String,
}

/// One emulated NIC: the QEMU device model and its `-netdev` backend (without `id=`).
#[derive(Debug, Clone)]
pub struct NicSpec {
    /// `virtio-net-pci` or `e1000e`.
    pub model: String,
    /// For example `user,hostfwd=tcp:127.0.0.1:8080-:80` or `tap,ifname=tap0,script=no,downscript=no`.
    pub netdev: String,
}

impl NicSpec {
    pub fn new(model: &str, netdev: &str) -> Self {
        NicSpec { model: model.into(), netdev: netdev.into() }
    }
}

impl QemuConfig {
    pub fn new(name: &str, image: &Path) -> Self {
        QemuConfig {
            name: name.to_string(),
            image: image.to_path_buf(),
            disk: Disk::Usb,
            cpus: 2,
            memory_mib: 512,
            extra: Vec::new(),
            console_port: 1,
            machine: "q35".into(),
            cpu: "EPYC".into(),
            nics: Vec::new(),
            netns: None,
            drive_options: String::new(),
        }
    }
}

/// A running QEMU with its serial console captured.
pub struct Qemu {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<Vec<u8>>>,
    /// Offset in `output` where the next `wait_for` starts searching.
    mark: usize,
    log: PathBuf,
    monitor: PathBuf,
    name: String,
    _dir: tempfile::TempDir,
    exit: Option<std::process::ExitStatus>,
}

fn ovmf(file: &str) -> PathBuf {
    for dir in ["/usr/share/OVMF", "/usr/share/ovmf"] {
        let p = Path::new(dir).join(file);
        if p.exists() {
            return p;
        }
    }
    panic!("OVMF firmware {file} not found: run scripts/setup");
}

impl Qemu {
    /// Starts QEMU.
    pub fn start(cfg: &QemuConfig) -> Qemu {
        let dir = tempfile::tempdir().unwrap();
        let vars = dir.path().join("OVMF_VARS.fd");
        std::fs::copy(ovmf("OVMF_VARS_4M.fd"), &vars).unwrap();
        let img = cfg.image.to_str().unwrap();
        let mut args: Vec<String> = vec![
            "-machine".into(),
            cfg.machine.clone(),
            "-accel".into(),
            "tcg".into(),
            "-cpu".into(),
            cfg.cpu.clone(),
            "-smp".into(),
            cfg.cpus.to_string(),
            "-m".into(),
            format!("{}M", cfg.memory_mib),
            "-drive".into(),
            format!("if=pflash,format=raw,readonly=on,file={}", ovmf("OVMF_CODE_4M.fd").display()),
            "-drive".into(),
            format!("if=pflash,format=raw,file={}", vars.display()),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            format!("unix:{},server=on,wait=off", dir.path().join("monitor.sock").display()),
            "-nic".into(),
            "none".into(),
            "-device".into(),
            "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
        ];
        if cfg.console_port == 2 {
            args.extend(["-serial".into(), "null".into(), "-serial".into(), "stdio".into()]);
        } else {
            args.extend(["-serial".into(), "stdio".into()]);
        }
        // With NICs present the firmware would try network boot first: boot the disk first.
        let boot = if cfg.nics.is_empty() { "" } else { ",bootindex=0" };
        match cfg.disk {
            Disk::Usb => args.extend([
                "-device".into(),
                "qemu-xhci,id=xhci".into(),
                "-drive".into(),
                format!("if=none,id=stick,format=raw,file={img}{}", cfg.drive_options),
                "-device".into(),
                format!("usb-storage,bus=xhci.0,drive=stick{boot}"),
            ]),
            Disk::Nvme => args.extend([
                "-drive".into(),
                format!("if=none,id=nvm,format=raw,file={img}{}", cfg.drive_options),
                "-device".into(),
                format!("nvme,serial=ember0,drive=nvm{boot}"),
            ]),
            Disk::Virtio => args.extend([
                "-drive".into(),
                format!("if=none,id=vd,format=raw,file={img}{}", cfg.drive_options),
                "-device".into(),
                format!("virtio-blk-pci,drive=vd{boot}"),
            ]),
            Disk::Ahci => args.extend([
                "-drive".into(),
                format!("if=none,id=sata,format=raw,file={img}{}", cfg.drive_options),
                "-device".into(),
                format!("ide-hd,drive=sata,bus=ide.0{boot}"),
            ]),
            Disk::VirtioScsi => args.extend([
                "-device".into(),
                "virtio-scsi-pci,id=scsi".into(),
                "-drive".into(),
                format!("if=none,id=sd,format=raw,file={img}{}", cfg.drive_options),
                "-device".into(),
                format!("scsi-hd,drive=sd,bus=scsi.0{boot}"),
            ]),
        }
        for (i, n) in cfg.nics.iter().enumerate() {
            // Distinct, predictable MACs: 52:54:00:00:00:1N.
            args.extend([
                "-netdev".into(),
                format!("{},id=net{i}", n.netdev),
                "-device".into(),
                format!("{},netdev=net{i},mac=52:54:00:00:00:{:02x},romfile=", n.model, 0x10 + i),
            ]);
        }
        args.extend(cfg.extra.iter().cloned());

        let logs = workspace().join("target/systest-logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log = logs.join(format!("{}.log", cfg.name));
        let mut command = match &cfg.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "qemu-system-x86_64"]);
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        let mut child = command
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // QEMU's own complaints (an abort, a refused option) next to the serial log.
            .stderr(std::fs::File::create(logs.join(format!("{}.stderr", cfg.name))).unwrap())
            .spawn()
            .expect("start qemu-system-x86_64 (run scripts/setup)");
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().unwrap();
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let stdin = child.stdin.take();
        let monitor = dir.path().join("monitor.sock");
        Qemu { child, stdin, output, mark: 0, log, monitor, name: cfg.name.clone(), _dir: dir, exit: None }
    }

    /// Everything the serial console printed so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn save_log(&self) {
        let _ = std::fs::write(&self.log, &*self.output.lock().unwrap());
    }

    fn fail(&mut self, why: &str) -> ! {
        self.save_log();
        let text = self.text();
        let tail: String = text.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
        panic!("{why}\n--- serial console (last 3000 chars; full log {}) ---\n{tail}", self.log.display());
    }

    /// Printed when a test fails with this QEMU still owned (an API call refused, an assertion on a
    /// VM): whether QEMU is still running, its own complaints, and the end of the serial console
    /// without the DCUI's screen drawing, so that a failure seen only in CI's output can be read.
    fn report_on_failure(&mut self) {
        let status = match self.exit.or_else(|| self.child.try_wait().ok().flatten()) {
            Some(s) => format!("QEMU had exited: {s}"),
            None => "QEMU was still running".to_string(),
        };
        let stderr_path = self.log.with_extension("stderr");
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let complaints: Vec<&str> =
            stderr.lines().filter(|l| !l.contains("TCG doesn't support requested feature")).collect();
        let lines: Vec<String> = self
            .text()
            .split(['\r', '\n'])
            .map(strip_ansi)
            // A log line printed right after a DCUI redraw shares its "line" with the screen.
            .filter_map(|l| match l.find("ember: ") {
                Some(at) => Some(l[at..].to_string()),
                None => (l.contains("***") || l.contains("PANIC")).then_some(l),
            })
            .collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        eprintln!(
            "--- {} ({status}); QEMU stderr without TCG feature warnings ---\n{}\n--- appliance log lines (last 40; full serial log {}) ---\n{tail}",
            self.name,
            complaints.join("\n"),
            self.log.display()
        );
    }

    /// Waits until `needle` appears after the previous match; returns the line containing it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        let mut crash_seen: Option<Instant> = None;
        let mut partial_since: Option<Instant> = None;
        loop {
            {
                let out = self.output.lock().unwrap();
                let hay = String::from_utf8_lossy(&out[self.mark.min(out.len())..]).into_owned();
                if let Some(pos) = hay.find(needle) {
                    let line_start = hay[..pos].rfind('\n').map(|i| i + 1).unwrap_or(0);
                    let end = hay[pos..].find(['\r', '\n']).map(|i| pos + i);
                    // The rest of the line may still be on its way: give it a moment (a prompt
                    // that never ends its line is returned as it is after that).
                    let waited = *partial_since.get_or_insert_with(Instant::now);
                    if end.is_none() && waited.elapsed() < Duration::from_secs(2) {
                        drop(out);
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    let line_end = end.unwrap_or(hay.len());
                    let line = hay[line_start..line_end].to_string();
                    self.mark += hay[..line_end].len();
                    drop(out);
                    self.save_log();
                    return line;
                }
                // A crashed appliance never prints what is waited for: say so soon, not at the
                // time-out - once its report has had time to end (a test may wait for the report's
                // own last lines).
                let crashed = hay.contains("*** PANIC on CPU") || hay.contains("*** CPU EXCEPTION");
                if crashed && !needle.starts_with("***") {
                    let since = *crash_seen.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(5) {
                        drop(out);
                        self.fail(&format!("the appliance crashed while {needle:?} was awaited"));
                    }
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                std::thread::sleep(Duration::from_millis(200)); // let the reader drain
                let out = self.output.lock().unwrap();
                if String::from_utf8_lossy(&out[self.mark.min(out.len())..]).contains(needle) {
                    continue;
                }
                drop(out);
                self.fail(&format!("QEMU exited ({status}) before {needle:?} appeared"));
            }
            if start.elapsed() > timeout {
                self.fail(&format!("timed out after {timeout:?} waiting for {needle:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types bytes on the serial console.
    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for QEMU to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(s) = self.exit.or_else(|| self.child.try_wait().ok().flatten()) {
                self.exit = Some(s);
                std::thread::sleep(Duration::from_millis(200));
                self.save_log();
                return s.code().unwrap_or(-1);
            }
            if start.elapsed() > timeout {
                self.fail(&format!("QEMU did not exit within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends one command to the QEMU human monitor and returns what it printed.
    pub fn monitor(&mut self, command: &str) -> String {
        self.monitor_commands(&[command], Duration::ZERO)
    }

    /// Sends commands to the QEMU human monitor over one connection, `gap` apart; returns what it
    /// printed.
    pub fn monitor_commands(&mut self, commands: &[&str], gap: Duration) -> String {
        use std::os::unix::net::UnixStream;
        let mut s = UnixStream::connect(&self.monitor).expect("connect to the QEMU monitor");
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        for c in commands {
            s.write_all(format!("{c}\n").as_bytes()).unwrap();
            std::thread::sleep(gap);
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let start = Instant::now();
        // The monitor greets with a prompt, echoes each command, runs it and prints a new prompt.
        while start.elapsed() < Duration::from_secs(30) {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) if String::from_utf8_lossy(&out).matches("(qemu)").count() > commands.len() => break,
                Err(_) => {}
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Presses keys on the machine's keyboard (the USB keyboard when there is one, else PS/2) with
    /// the monitor's `sendkey`, one after the other: QEMU key names such as `f2`, `shift-a`,
    /// `altgr-q`, `ret`. Each key is held 100 ms; they are sent 200 ms apart because QEMU drops
    /// input events beyond a short queue. Returns once they have been typed.
    pub fn sendkeys(&mut self, keys: &[&str]) {
        let commands: Vec<String> = keys.iter().map(|k| format!("sendkey {k}")).collect();
        let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
        self.monitor_commands(&commands, Duration::from_millis(200));
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Takes a screendump of the framebuffer and reads it back as text, cell by cell, with the
    /// appliance's 8x16 font. The screen is kept for people to look at as
    /// `target/systest-logs/<name>-<tag>.png` (QEMU writes the PNG; the text is read from a PPM dump
    /// taken just before, which is then removed).
    pub fn framebuffer_text(&mut self, tag: &str) -> String {
        let path = self.log.with_file_name(format!("{}-{tag}.ppm", self.name));
        let png = path.with_extension("png");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&png);
        self.monitor(&format!("screendump {}", path.display()));
        let start = Instant::now();
        while !path.exists() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let ppm = std::fs::read(&path).expect("screendump file");
        let img = Ppm::parse(&ppm).expect("screendump is a binary PPM");
        self.monitor(&format!("screendump {} -f png", png.display()));
        if png.exists() {
            let _ = std::fs::remove_file(&path);
        }
        // The console scales its 8x16 font by a whole factor; read with the factor that recognises the
        // most characters.
        (1..=4)
            .map(|s| img.text(s))
            .max_by_key(|t| t.chars().filter(|c| c.is_ascii_graphic() && *c != '?').count())
            .unwrap()
    }

    /// The serial console as a terminal of `rows` x `cols` would show it now.
    pub fn screen(&self, rows: u16, cols: u16) -> String {
        let mut p = vt100::Parser::new(rows, cols, 0);
        p.process(&self.output.lock().unwrap());
        p.screen().contents()
    }

    /// Waits until the 80x24 serial screen shows `needle`; returns the screen.
    pub fn wait_for_screen(&mut self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen(24, 80);
            if screen.contains(needle) {
                return screen;
            }
            if start.elapsed() > timeout {
                self.fail(&format!(
                    "the serial screen did not show {needle:?} within {timeout:?}:\n{screen}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.save_log();
        if std::thread::panicking() {
            self.report_on_failure();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses "Ember <v> booted: <N> CPUs, <M> MiB memory" into (N, M).
pub fn parse_boot_line(line: &str) -> Option<(u32, u64)> {
    let rest = &line[line.find("booted: ")? + 8..];
    let (cpus, rest) = rest.split_once(" CPUs, ")?;
    let (mib, tail) = rest.split_once(" MiB memory")?;
    if !tail.trim().is_empty() {
        return None;
    }
    Some((cpus.trim().parse().ok()?, mib.trim().parse().ok()?))
}

/// A binary (P6) PPM image, as QEMU's `screendump` writes it.
pub struct Ppm {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Ppm {
    /// Parses "P6 <w> <h> 255\n" followed by RGB bytes.
    pub fn parse(b: &[u8]) -> Option<Ppm> {
        let mut fields = Vec::new();
        let mut pos = 0;
        while fields.len() < 4 {
            while b.get(pos)?.is_ascii_whitespace() {
                pos += 1;
            }
            let start = pos;
            while !b.get(pos)?.is_ascii_whitespace() {
                pos += 1;
            }
            fields.push(std::str::from_utf8(&b[start..pos]).ok()?.to_string());
        }
        pos += 1;
        if fields[0] != "P6" || fields[3] != "255" {
            return None;
        }
        let (width, height) = (fields[1].parse().ok()?, fields[2].parse().ok()?);
        let rgb = b.get(pos..pos + width * height * 3)?.to_vec();
        Some(Ppm { width, height, rgb })
    }

    fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// Reads the text cells (8x16 pixels times `scale`): in each cell the two main colours are the
    /// background and the glyph, matched against the font (each font row drawn twice). Unmatched cells
    /// read as '?'.
    pub fn text(&self, scale: usize) -> String {
        let font = &font8x8::legacy::BASIC_LEGACY;
        let (cw, ch) = (8 * scale, 16 * scale);
        let mut out = String::new();
        for row in 0..self.height / ch {
            let mut line = String::new();
            for col in 0..self.width / cw {
                let mut counts: Vec<([u8; 3], usize)> = Vec::new();
                for y in 0..ch {
                    for x in 0..cw {
                        let p = self.pixel(col * cw + x, row * ch + y);
                        match counts.iter_mut().find(|(c, _)| *c == p) {
                            Some((_, n)) => *n += 1,
                            None => counts.push((p, 1)),
                        }
                    }
                }
                counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
                // Either of the two main colours may be the background (some glyphs, such as 'M', cover
                // more than half of their cell), so try both.
                let ch = counts
                    .iter()
                    .take(2)
                    .find_map(|(bg, _)| {
                        let bits: Vec<u8> = (0..8)
                            .map(|gy| {
                                (0..8).fold(0u8, |acc, gx| {
                                    let p = self.pixel(col * cw + gx * scale, row * ch + gy * 2 * scale);
                                    acc | (((p != *bg) as u8) << gx)
                                })
                            })
                            .collect();
                        (0x20u8..0x7f).find(|c| font[*c as usize].iter().zip(&bits).all(|(a, b)| a == b))
                    })
                    .map(|c| c as char)
                    .unwrap_or('?');
                line.push(ch);
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `line` without ANSI escape sequences (the DCUI's cursor moves and colours).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, ended by a letter.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn boot_line_parser() {
        assert_eq!(super::parse_boot_line("Ember 0.1.0 booted: 4 CPUs, 1017 MiB memory"), Some((4, 1017)));
        assert_eq!(super::parse_boot_line("Ember 0.1.0 booted: 4 CPUs, 1017 MiB memory!"), None);
        assert_eq!(super::parse_boot_line("booted: x CPUs, 1 MiB memory"), None);
    }

    #[test]
    fn ansi_sequences_are_stripped() {
        assert_eq!(super::strip_ansi("\x1b[0;30;47mEmber\x1b[24;1Hember: up"), "Emberember: up");
        assert_eq!(super::strip_ansi("plain"), "plain");
    }
}
