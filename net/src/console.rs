//! VM serial consoles over TLS: each VM with a `console_port` in its definition gets a listening
//! socket on the management interface, which speaks TLS with the host's HTTPS certificate (connect
//! with `openssl s_client -connect host:port` or `socat - OPENSSL:host:port`). A client that
//! connects is asked for the root password
//! first (checked as the API checks it, with the same per-source budget of slow checks; three
//! wrong answers, or [`LOGIN_TIMEOUT_MS`] without one, end the connection). Once logged in it
//! receives what the VM's console keeps (the last 64 KiB) and then its output as it comes, and
//! what it sends goes to the VM's COM1 receiver (as far as it takes it: TCP flow control holds back
//! the rest). One session per VM at a time, like a port on a serial console server: an
//! administrator who logs in while another session is open takes the console over (the other one
//! is told so and closed). A session without input for [`IDLE_TIMEOUT_MS`] is closed.
//!
//! Everything, the password first, crosses the network inside TLS; bytes that are not TLS end the
//! connection.

use crate::auth::{AuthResult, RootAccount, MAX_PASSWORD_LEN};
use crate::tls::server::TlsServerSession;
use crate::vms::VmService;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
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
/// Decrypted input held for the VM (or the login) before more is read.
const MAX_INPUT: usize = 1024;
/// TLS record overhead kept free in the socket's send buffer.
const RECORD_OVERHEAD: usize = 64;

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
    /// The connection's TLS session (from when it is established).
    tls: Option<Box<TlsServerSession>>,
    /// Decrypted input not yet taken.
    input: Vec<u8>,
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
    Slot {
        handle: sockets.add(s),
        phase: Phase::Listening,
        tls: None,
        input: Vec::new(),
        last_state: tcp::State::Listen,
        state_since: now,
    }
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
        log.push(format!("VM {} console on TCP port {} (TLS, root password required)", c.vm, c.port));
    }
    conns
}

/// Text for the client (encrypted and sent by [`flush`]).
fn send_text(tls: &mut Option<Box<TlsServerSession>>, text: &str) {
    if let Some(t) = tls {
        t.write(text.as_bytes());
    }
}

/// Moves ciphertext from the socket into the session and the client's plaintext into `input`
/// (bounded). False when the client broke TLS (the connection is to be aborted).
fn take_input(s: &mut tcp::Socket, tls: &mut TlsServerSession, input: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 1024];
    while s.can_recv() && tls.room() > 0 && input.len() < MAX_INPUT {
        let n = tls.room().min(buf.len());
        match s.recv_slice(&mut buf[..n]) {
            Ok(0) | Err(_) => break,
            Ok(got) => {
                tls.received(buf.get(..got).unwrap_or_default());
                if tls.process().is_err() {
                    return false;
                }
                input.extend(tls.take_plaintext(MAX_INPUT.saturating_sub(input.len())));
            }
        }
    }
    if tls.process().is_err() {
        return false;
    }
    input.extend(tls.take_plaintext(MAX_INPUT.saturating_sub(input.len())));
    true
}

/// Encrypts what was written and sends what the socket takes. False on a TLS failure.
fn flush(s: &mut tcp::Socket, tls: &mut TlsServerSession) -> bool {
    if tls.process().is_err() {
        return false;
    }
    if !tls.to_send().is_empty() && s.can_send() {
        if let Ok(n) = s.send_slice(tls.to_send()) {
            tls.sent(n);
        }
    }
    true
}

/// Moves console output to logged-in clients and their input to the VMs, and logs clients in
/// (`root` checks the password; `now` in ms). Returns whether anything moved.
pub fn serve(
    sockets: &mut SocketSet<'static>,
    conns: &mut [ConsoleConn],
    vms: &mut dyn VmService,
    root: &mut RootAccount,
    tls: Option<&Arc<rustls::ServerConfig>>,
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
            if let Some(t) = slot.tls.as_deref_mut() {
                if !take_input(s, t, &mut slot.input) {
                    // Not TLS, or a client that broke the protocol.
                    s.abort();
                    slot.phase = Phase::Closing { since: now };
                    continue;
                }
            }
            let out = &mut slot.tls;
            let input = &mut slot.input;
            match &mut slot.phase {
                Phase::Listening if state == tcp::State::Established => {
                    // No certificate (no random source at boot): nothing can be served.
                    let Some(Ok(session)) = tls.map(|c| TlsServerSession::new(c.clone())) else {
                        s.abort();
                        slot.phase = Phase::Closing { since: now };
                        continue;
                    };
                    *out = Some(Box::new(session));
                    input.clear();
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
                    if !*prompted {
                        send_text(out, &format!("Ember: serial console of VM {}\r\nroot password: ", c.vm));
                        *prompted = true;
                    }
                    let peer_done =
                        state == tcp::State::CloseWait || out.as_deref().is_some_and(|t| t.peer_closed());
                    if now.saturating_sub(*since) > LOGIN_TIMEOUT_MS || peer_done {
                        send_text(out, "\r\nLogin timed out.\r\n");
                        end(s, out);
                        slot.phase = Phase::Closing { since: now };
                        continue;
                    }
                    let source = s.remote_endpoint().map(|e| e.addr.into());
                    let mut verdict = None;
                    let mut after_cr = false;
                    while verdict.is_none() && !input.is_empty() {
                        match login_input(typed, input) {
                            LoginInput::More => input.clear(),
                            LoginInput::TooLong => {
                                input.clear();
                                verdict = Some(AuthResult::Denied);
                            }
                            LoginInput::Line(line, used, cr) => {
                                input.drain(..used.min(input.len()));
                                if !line.is_empty() {
                                    verdict = Some(root.check_password(&line, source, now));
                                    after_cr = cr;
                                }
                            }
                        }
                        busy = true;
                    }
                    match verdict {
                        Some(AuthResult::Allowed) => {
                            send_text(out, "\r\n");
                            slot.phase = Phase::Session { pos: None, last_input: now, skip_lf: after_cr };
                            took_over = Some(i);
                        }
                        Some(AuthResult::Denied) => {
                            *tries = tries.saturating_add(1);
                            typed.clear();
                            if *tries >= LOGIN_TRIES {
                                send_text(out, "\r\nLogin incorrect.\r\n");
                                end(s, out);
                                slot.phase = Phase::Closing { since: now };
                            } else {
                                send_text(out, "\r\nLogin incorrect.\r\nroot password: ");
                            }
                        }
                        // Not counted as a try: the client may ask again in a moment.
                        Some(AuthResult::Busy) => {
                            typed.clear();
                            send_text(
                                out,
                                "\r\nToo many password checks right now; try again.\r\nroot password: ",
                            );
                        }
                        None => {}
                    }
                }
                Phase::Session { pos, last_input, skip_lf } => {
                    if now.saturating_sub(*last_input) > IDLE_TIMEOUT_MS {
                        send_text(
                            out,
                            "\r\n[Ember: console session closed after 30 minutes without input]\r\n",
                        );
                        end(s, out);
                        slot.phase = Phase::Closing { since: now };
                        continue;
                    }
                    let Some(t) = out.as_deref_mut() else { continue };
                    // Console output: as much as the socket can take once the session's earlier
                    // records are out (the VM's output is never held in the session).
                    let mut at = pos.unwrap_or(0);
                    if t.established() && t.flushed() {
                        let room =
                            s.send_capacity().saturating_sub(s.send_queue()).saturating_sub(RECORD_OVERHEAD);
                        // The position after what was taken (a position that fell behind is
                        // clamped to the oldest kept byte).
                        let (bytes, after) = vms.console_since(&c.vm, at, room);
                        if !bytes.is_empty() {
                            t.write(&bytes);
                            at = after;
                            busy = true;
                        }
                    }
                    *pos = Some(at);
                    if core::mem::take(skip_lf) && matches!(input.first(), Some(b'\n' | 0)) {
                        input.remove(0);
                    }
                    if !input.is_empty() {
                        let n = vms.console_input(&c.vm, input);
                        if n > 0 {
                            input.drain(..n.min(input.len()));
                            *last_input = now;
                            busy = true;
                        }
                    }
                    if s.state() == tcp::State::CloseWait || t.peer_closed() {
                        end(s, out);
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
            if let Some(t) = slot.tls.as_deref_mut() {
                if !flush(s, t) {
                    s.abort();
                    slot.phase = Phase::Closing { since: now };
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
                    send_text(&mut slot.tls, "\r\n[Ember: console taken over by another session]\r\n");
                    end(s, &mut slot.tls);
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

/// Ends a connection: what was written goes out, then close_notify, then the TCP close (the
/// socket sends its queue before its FIN).
fn end(s: &mut tcp::Socket, tls: &mut Option<Box<TlsServerSession>>) {
    if let Some(t) = tls.as_deref_mut() {
        t.close();
        let _ = flush(s, t);
    }
    *tls = None;
    s.close();
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
            slot.tls = None;
            slot.input.clear();
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
