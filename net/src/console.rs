//! VM serial consoles over TCP: each VM with a `console_port` in its definition gets a listening
//! socket on the management interface; a client that connects receives what the VM's console keeps
//! (the last 64 KiB) and then its output as it comes, and what the client sends goes to the VM's
//! COM1 receiver (as far as it takes it: TCP flow control holds back the rest). One client per VM
//! at a time, like a port on a serial console server; when it disconnects the port listens again.

use crate::vms::VmService;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

const RX_BUFFER: usize = 1024;
const TX_BUFFER: usize = 16 * 1024;

/// One VM's console port.
pub struct ConsoleConn {
    pub vm: String,
    pub port: u16,
    handle: SocketHandle,
    /// Console position sent up to; `None` while no client is connected.
    pos: Option<u64>,
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
        .map(|(vm, port)| {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
                tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
            );
            s.set_nagle_enabled(false);
            let _ = s.listen(port);
            ConsoleConn { vm, port, handle: sockets.add(s), pos: None }
        })
        .collect();
    for c in &conns {
        log.push(alloc::format!("VM {} console on TCP port {}", c.vm, c.port));
    }
    conns
}

/// Moves console output to connected clients and their input to the VMs; returns whether
/// anything moved.
pub fn serve(sockets: &mut SocketSet<'static>, conns: &mut [ConsoleConn], vms: &mut dyn VmService) -> bool {
    let mut busy = false;
    for c in conns {
        let s = sockets.get_mut::<tcp::Socket>(c.handle);
        match s.state() {
            tcp::State::Established | tcp::State::CloseWait => {
                let mut pos = c.pos.unwrap_or(0);
                while s.can_send() {
                    let room = s.send_capacity() - s.send_queue();
                    let (bytes, _) = vms.console_since(&c.vm, pos, room);
                    if bytes.is_empty() {
                        break;
                    }
                    let sent = s.send_slice(&bytes).unwrap_or(0);
                    if sent == 0 {
                        break;
                    }
                    // `console_since` clamps a position that fell behind to the oldest kept byte.
                    let (_, start) = vms.console_since(&c.vm, pos, 0);
                    pos = start + sent as u64;
                    busy = true;
                }
                c.pos = Some(pos);
                while s.can_recv() {
                    let vm = &c.vm;
                    let taken = s.recv(|data| {
                        let n = vms.console_input(vm, data);
                        (n, n)
                    });
                    match taken {
                        Ok(n) if n > 0 => busy = true,
                        _ => break,
                    }
                }
                if s.state() == tcp::State::CloseWait {
                    s.close();
                }
            }
            tcp::State::Closed => {
                c.pos = None;
                let _ = s.listen(c.port);
            }
            _ => {}
        }
    }
    busy
}

/// Closes the ports and frees their sockets.
pub fn close(sockets: &mut SocketSet<'static>, conns: Vec<ConsoleConn>) {
    for c in conns {
        sockets.remove(c.handle);
    }
}

/// Resets every client connection (the ports listen again).
pub fn reset(sockets: &mut SocketSet<'static>, conns: &mut [ConsoleConn]) {
    for c in conns {
        sockets.get_mut::<tcp::Socket>(c.handle).abort();
        c.pos = None;
    }
}
