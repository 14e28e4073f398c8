//! VM serial consoles over TCP: each VM with a `console_port` in its definition gets a listening
//! socket on the management interface. A client that connects is asked for the root password
//! first (checked as the API checks it, with the same per-source budget of slow checks; three
//! wrong answers, or [`LOGIN_TIMEOUT_MS`] without one, end the connection). Once logged in it
//! receives what the VM's console keeps (the last 64 KiB) and then its output as it comes, and
//! what it sends goes to the VM's COM1 receiver (as far as it takes it: TCP flow control holds back
//! the rest). One session per VM at a time, like a port on a serial console server: an
//! administrator who logs in while another session is open takes the console over (the other one
//! is told so and closed). A session without input for [`IDLE_TIMEOUT_MS`] is closed.
//!
//! Credentials cross the network in clear text here, as with the API's HTTP Basic authentication,
//! until the management interface speaks TLS.

use crate::auth::{AuthResult, RootAccount, MAX_PASSWORD_LEN};
use crate::vms::VmService;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

const RX_BUFFER: usize = 1024;
const TX_BUFFER: usize = 16 * 1024;
/// Time to give the password in.
pub const LOGIN_TIMEOUT_MS: u64 = 60_000;
/// A logged-in session without input for this long is closed.
pub const IDLE_TIMEOUT_MS: u64 = 30 * 60_000;
/// Wrong passwords before the connection is closed.
const LOGIN_TRIES: u8 = 3;
/// Sockets per VM at most: one session, clients logging in (one per source address), one listening.
const MAX_SOCKETS: usize = 6;
/// A connection half open (SYN received) or closing for longer than this is aborted, so a peer
/// that never answers cannot hold a socket.
const STUCK_MS: u64 = 5_000;

/// Where one connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Waiting for a client.
    Listening,
    /// Connected, asked for the password: what was typed so far of it, wrong tries, since when.
    Login { typed: Vec<u8>, tries: u8, since: u64, prompted: bool },
    /// Logged in: the console position sent up to (`None`: from the oldest kept byte), the last
    /// input, and whether an LF ending the password line (CR LF) is still to be dropped.
    Session { pos: Option<u64>, last_input: u64, skip_lf: bool },
    /// Closing (a message may still be going out), since when.
    Closing { since: u64 },
}

struct Slot {
    handle: SocketHandle,
    phase: Phase,
    /// The socket's state at the last look, and since when it is in it.
    last_state: tcp::State,
    state_since: u64,
}

/// One VM's console port.
pub struct ConsoleConn {
    pub vm: String,
    pub port: u16,
    slots: Vec<Slot>,
}

/// What a line of login input means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LoginInput {
    /// Still typing.
    More,
    /// A whole line (without its end), how many bytes of the input it took, and whether it ended
    /// with CR (an LF may follow).
    Line(String, usize, bool),
    /// Longer than any password.
    TooLong,
}

/// Takes login input: bytes up to CR or LF (a following LF or NUL after CR is dropped by the
/// next call, being an empty line); backspace/DEL remove the last byte.
fn login_input(typed: &mut Vec<u8>, data: &[u8]) -> LoginInput {
    for (i, &b) in data.iter().enumerate() {
        match b {
            b'\r' | b'\n' => {
                let line = String::from_utf8_lossy(typed).into_owned();
                typed.clear();
                return LoginInput::Line(line, i.saturating_add(1), b == b'\r');
            }
            0x08 | 0x7f => {
                typed.pop();
            }
            0 => {}
            b => {
                if typed.len() > MAX_PASSWORD_LEN {
                    return LoginInput::TooLong;
                }
                typed.push(b);
            }
        }
    }
    LoginInput::More
}

fn new_listener(sockets: &mut SocketSet<'static>, port: u16, now: u64) -> Slot {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
    );
    s.set_nagle_enabled(false);
    // A peer that stops answering is dropped (keep-alive probes without an answer time out).
    s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(20)));
    s.set_timeout(Some(smoltcp::time::Duration::from_secs(60)));
    let _ = s.listen(port);
    Slot { handle: sockets.add(s), phase: Phase::Listening, last_state: tcp::State::Listen, state_since: now }
}

/// Listening sockets for every VM that has a console port; each one is said in `log`.
pub fn open(
    sockets: &mut SocketSet<'static>,
    vms: &dyn VmService,
    log: &mut Vec<String>,
) -> Vec<ConsoleConn> {
    let conns: Vec<ConsoleConn> = vms
        .list(0)
        .into_iter()
        .filter_map(|v| v.console_port.map(|p| (v.name, p)))
        .map(|(vm, port)| ConsoleConn { vm, port, slots: vec![new_listener(sockets, port, 0)] })
        .collect();
    for c in &conns {
        log.push(format!("VM {} console on TCP port {} (root password required)", c.vm, c.port));
    }
    conns
}

fn send_text(s: &mut tcp::Socket, text: &str) {
    let _ = s.send_slice(text.as_bytes());
}

/// Moves console output to logged-in clients and their input to the VMs, and logs clients in
/// (`root` checks the password; `now` in ms). Returns whether anything moved.
pub fn serve(
    sockets: &mut SocketSet<'static>,
    conns: &mut [ConsoleConn],
    vms: &mut dyn VmService,
    root: &mut RootAccount,
    now: u64,
) -> bool {
    let mut busy = false;
    for c in conns {
        let mut took_over = None;
        let mut new_login = None;
        for (i, slot) in c.slots.iter_mut().enumerate() {
            let s = sockets.get_mut::<tcp::Socket>(slot.handle);
            let state = s.state();
            if state != slot.last_state {
                slot.last_state = state;
                slot.state_since = now;
            }
            let stuck = now.saturating_sub(slot.state_since) > STUCK_MS;
            if matches!(state, tcp::State::Closed | tcp::State::TimeWait) && slot.phase != Phase::Listening {
                if !matches!(slot.phase, Phase::Closing { .. }) {
                    slot.phase = Phase::Closing { since: now };
                }
                continue;
            }
            match &mut slot.phase {
                Phase::Listening if state == tcp::State::Established => {
                    slot.phase = Phase::Login { typed: Vec::new(), tries: 0, since: now, prompted: false };
                    new_login = Some((i, s.remote_endpoint().map(|e| e.addr)));
                    busy = true;
                }
                Phase::Listening => match state {
                    tcp::State::Listen => {}
                    tcp::State::SynReceived if !stuck => {}
                    tcp::State::Closed => {
                        let _ = s.listen(c.port);
                    }
                    // Half open for too long, or a peer that closed before it was taken: listen again.
                    _ => {
                        s.abort();
                        let _ = s.listen(c.port);
                    }
                },
                Phase::Login { typed, tries, since, prompted } => {
                    if !*prompted && s.can_send() {
                        send_text(s, &format!("Ember: serial console of VM {}\r\nroot password: ", c.vm));
                        *prompted = true;
                    }
                    if now.saturating_sub(*since) > LOGIN_TIMEOUT_MS || state == tcp::State::CloseWait {
                        send_text(s, "\r\nLogin timed out.\r\n");
                        s.close();
                        slot.phase = Phase::Closing { since: now };
                        continue;
                    }
                    let source = s.remote_endpoint().map(|e| e.addr.into());
                    let mut verdict = None;
                    let mut after_cr = false;
                    while verdict.is_none() && s.can_recv() {
                        let r = s.recv(|data| match login_input(typed, data) {
                            LoginInput::More => (data.len(), LoginInput::More),
                            LoginInput::Line(l, used, cr) => (used, LoginInput::Line(l, used, cr)),
                            LoginInput::TooLong => (data.len(), LoginInput::TooLong),
                        });
                        match r {
                            Ok(LoginInput::More) | Err(_) => break,
                            Ok(LoginInput::TooLong) => verdict = Some(AuthResult::Denied),
                            Ok(LoginInput::Line(line, ..)) if line.is_empty() => {}
                            Ok(LoginInput::Line(line, _, cr)) => {
                                verdict = Some(root.check_password(&line, source, now));
                                after_cr = cr;
                            }
                        }
                        busy = true;
                    }
                    match verdict {
                        Some(AuthResult::Allowed) => {
                            send_text(s, "\r\n");
                            slot.phase = Phase::Session { pos: None, last_input: now, skip_lf: after_cr };
                            took_over = Some(i);
                        }
                        Some(AuthResult::Denied) => {
                            *tries = tries.saturating_add(1);
                            typed.clear();
                            if *tries >= LOGIN_TRIES {
                                send_text(s, "\r\nLogin incorrect.\r\n");
                                s.close();
                                slot.phase = Phase::Closing { since: now };
                            } else {
                                send_text(s, "\r\nLogin incorrect.\r\nroot password: ");
                            }
                        }
                        // Not counted as a try: the client may ask again in a moment.
                        Some(AuthResult::Busy) => {
                            typed.clear();
                            send_text(
                                s,
                                "\r\nToo many password checks right now; try again.\r\nroot password: ",
                            );
                        }
                        None => {}
                    }
                }
                Phase::Session { pos, last_input, skip_lf } => {
                    if now.saturating_sub(*last_input) > IDLE_TIMEOUT_MS {
                        send_text(
                            s,
                            "\r\n[Ember: console session closed after 30 minutes without input]\r\n",
                        );
                        s.close();
                        slot.phase = Phase::Closing { since: now };
                        continue;
                    }
                    let mut at = pos.unwrap_or(0);
                    while s.can_send() {
                        let room = s.send_capacity().saturating_sub(s.send_queue());
                        let (bytes, _) = vms.console_since(&c.vm, at, room);
                        if bytes.is_empty() {
                            break;
                        }
                        let sent = s.send_slice(&bytes).unwrap_or(0);
                        if sent == 0 {
                            break;
                        }
                        // `console_since` clamps a position that fell behind to the oldest kept byte.
                        let (_, start) = vms.console_since(&c.vm, at, 0);
                        at = start.saturating_add(sent as u64);
                        busy = true;
                    }
                    *pos = Some(at);
                    while s.can_recv() {
                        let vm = &c.vm;
                        let skip = core::mem::take(skip_lf);
                        let taken = s.recv(|data| {
                            if skip && matches!(data.first(), Some(b'\n' | 0)) {
                                return (1, 1);
                            }
                            let n = vms.console_input(vm, data);
                            (n, n)
                        });
                        match taken {
                            Ok(n) if n > 0 => {
                                *last_input = now;
                                busy = true;
                            }
                            _ => break,
                        }
                    }
                    if s.state() == tcp::State::CloseWait {
                        s.close();
                        slot.phase = Phase::Closing { since: now };
                    }
                }
                // A peer that never finishes the close (no ACK, no FIN) does not keep the socket.
                Phase::Closing { since } => {
                    if now.saturating_sub(*since) > STUCK_MS {
                        s.abort();
                    }
                }
            }
        }
        // One client logging in per source address: a second connection replaces the first.
        if let Some((new, Some(addr))) = new_login {
            for (i, slot) in c.slots.iter_mut().enumerate() {
                if i == new || !matches!(slot.phase, Phase::Login { .. }) {
                    continue;
                }
                let s = sockets.get_mut::<tcp::Socket>(slot.handle);
                if s.remote_endpoint().map(|e| e.addr) == Some(addr) {
                    s.abort();
                    slot.phase = Phase::Closing { since: now };
                }
            }
        }
        // A new session takes the console over from the one before it.
        if let Some(new) = took_over {
            for (i, slot) in c.slots.iter_mut().enumerate() {
                if i != new && matches!(slot.phase, Phase::Session { .. }) {
                    let s = sockets.get_mut::<tcp::Socket>(slot.handle);
                    send_text(s, "\r\n[Ember: console taken over by another session]\r\n");
                    s.close();
                    slot.phase = Phase::Closing { since: now };
                }
            }
        }
        // Closed sockets go; one socket always listens while there is room.
        c.slots.retain(|slot| {
            // Closed at this call's start too: a socket aborted in this call keeps its slot until
            // the interface has sent its reset.
            let closed = |st: tcp::State| matches!(st, tcp::State::Closed | tcp::State::TimeWait);
            let done = matches!(slot.phase, Phase::Closing { .. })
                && closed(slot.last_state)
                && closed(sockets.get::<tcp::Socket>(slot.handle).state());
            if done {
                sockets.remove(slot.handle);
            }
            !done
        });
        if !c.slots.iter().any(|s| s.phase == Phase::Listening) && c.slots.len() < MAX_SOCKETS {
            c.slots.push(new_listener(sockets, c.port, now));
        }
    }
    busy
}

/// Closes the ports and frees their sockets.
pub fn close(sockets: &mut SocketSet<'static>, conns: Vec<ConsoleConn>) {
    for c in conns {
        for s in c.slots {
            sockets.remove(s.handle);
        }
    }
}

/// Resets every client connection (the ports listen again).
pub fn reset(sockets: &mut SocketSet<'static>, conns: &mut [ConsoleConn]) {
    for c in conns {
        for slot in &mut c.slots {
            let s = sockets.get_mut::<tcp::Socket>(slot.handle);
            s.abort();
            let _ = s.listen(c.port);
            slot.phase = Phase::Listening;
            slot.last_state = tcp::State::Listen;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_lines() {
        let mut typed = Vec::new();
        assert_eq!(login_input(&mut typed, b"sec"), LoginInput::More);
        assert_eq!(
            login_input(&mut typed, b"ret\x7fT\r\nrest"),
            LoginInput::Line(String::from("secreT"), 6, true)
        );
        assert!(typed.is_empty());
        assert_eq!(login_input(&mut typed, b"\n"), LoginInput::Line(String::new(), 1, false));
        assert_eq!(login_input(&mut typed, &[b'x'; 200]), LoginInput::TooLong);
    }
}
