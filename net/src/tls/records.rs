//! The byte side of a rustls unbuffered connection, shared by the kickstart client
//! ([`super::TlsSession`]) and the API's server ([`super::server::TlsServerSession`]): ciphertext
//! in and out, plaintext in and out, and one driver of rustls' state machine that never blocks.

use alloc::vec::Vec;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};

/// rustls' client and server connections, which each have their own `process_tls_records`.
pub(crate) trait Unbuffered {
    type Data;
    fn process_records<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process_records<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process_records<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

/// Plaintext per encryption call (one TLS record's worth).
const WRITE_CHUNK: usize = 16 * 1024;

/// Why [`Records::process`] stopped.
#[derive(Debug)]
pub(crate) enum RecordError {
    /// The peer broke the protocol, or a check (its certificate, for a client) failed.
    Tls(rustls::Error),
    /// A record did not fit 64 KiB (or rustls refused to encode it).
    Unencodable,
}

impl From<rustls::Error> for RecordError {
    fn from(e: rustls::Error) -> Self {
        RecordError::Tls(e)
    }
}

/// Buffers around one connection.
#[derive(Debug, Default)]
pub(crate) struct Records {
    /// Ciphertext from the peer not yet processed.
    pub incoming: Vec<u8>,
    /// Ciphertext for the peer.
    pub outgoing: Vec<u8>,
    /// Plaintext waiting for the handshake to finish.
    pub pending: Vec<u8>,
    /// Plaintext from the peer.
    pub plaintext: Vec<u8>,
    /// Plaintext beyond this is dropped (a client's bound on an answer); the server's is
    /// bounded by what it lets in.
    pub plaintext_limit: usize,
    pub established: bool,
    /// The peer sent close_notify (or the connection closed).
    pub peer_closed: bool,
    /// close_notify is to follow what was written.
    pub close_requested: bool,
    close_queued: bool,
}

impl Records {
    pub fn new(plaintext_limit: usize) -> Self {
        Records { plaintext_limit, ..Records::default() }
    }

    /// Runs the state machine over what was received and written until it needs the peer.
    pub fn process(&mut self, conn: &mut impl Unbuffered) -> Result<(), RecordError> {
        // Each pass handles one state; a handshake takes a handful. The bound only guards
        // against a state machine that stops making progress.
        for _ in 0..64 {
            let UnbufferedStatus { mut discard, state } = conn.process_records(&mut self.incoming);
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    self.incoming.clear();
                    return Err(RecordError::Tls(e));
                }
            };
            let mut wait = false;
            match state {
                ConnectionState::EncodeTlsData(mut s) => {
                    encode(&mut self.outgoing, |buf| s.encode(buf).map_err(encode_size))?
                }
                ConnectionState::TransmitTlsData(s) => s.done(),
                ConnectionState::BlockedHandshake => wait = true,
                ConnectionState::WriteTraffic(mut w) => {
                    self.established = true;
                    let data = core::mem::take(&mut self.pending);
                    for chunk in data.chunks(WRITE_CHUNK) {
                        encode(&mut self.outgoing, |buf| w.encrypt(chunk, buf).map_err(encrypt_size))?;
                    }
                    if self.close_requested && !self.close_queued {
                        encode(&mut self.outgoing, |buf| w.queue_close_notify(buf).map_err(encrypt_size))?;
                        self.close_queued = true;
                    }
                    wait = true;
                }
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(record) = r.next_record() {
                        let record = record?;
                        discard = discard.saturating_add(record.discard);
                        let room = self.plaintext_limit.saturating_sub(self.plaintext.len());
                        let take = record.payload.len().min(room);
                        self.plaintext.extend_from_slice(record.payload.get(..take).unwrap_or_default());
                    }
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.peer_closed = true;
                    wait = true;
                }
                _ => wait = true,
            }
            self.incoming.drain(..discard.min(self.incoming.len()));
            if wait {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Runs `write` with a buffer big enough for what it produces and appends the result to `out`.
fn encode(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> Result<(), RecordError> {
    let mut buf = alloc::vec![0u8; 4096];
    loop {
        match write(&mut buf) {
            Ok(n) => {
                out.extend_from_slice(buf.get(..n).unwrap_or_default());
                return Ok(());
            }
            Err(Some(required)) if required > buf.len() && required <= 64 * 1024 => buf.resize(required, 0),
            Err(_) => return Err(RecordError::Unencodable),
        }
    }
}

fn encode_size(e: EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

fn encrypt_size(e: EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}
