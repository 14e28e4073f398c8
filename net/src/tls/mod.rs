//! TLS for the management network: the HTTPS server of the management API ([`server`]), and HTTPS
//! for a first boot's kickstart (`ks=https://`, PRODUCT.md 2): a TLS 1.3 (and 1.2) client over the
//! management network's polled TCP sockets (this module).
//!
//! The protocol is `rustls` (its unbuffered, caller-driven API fits the polled socket model: bytes
//! in, bytes out, no blocking I/O), with the cryptography of [`crypto`]. The server certificate is
//! checked the way browsers and `curl` check it (`rustls-webpki`): a chain to a trusted CA, every
//! certificate valid at the host's clock, CA constraints on every issuer, the `serverAuth` purpose,
//! and the URL's host name or IP address among the certificate's subject alternative names.
//!
//! What is trusted ([`Trust`]): the CA certificates the administrator put on the boot media
//! (`/EFI/ember/ks-ca.pem`, `ember-image build --ks-ca FILE`), which then are the only ones trusted,
//! as with `curl --cacert`; without that file the Mozilla root store built into Ember
//! (`webpki-roots`).
//!
//! Limits: TLS 1.3, or TLS 1.2 with ECDHE and AES-GCM; ECDHE on P-256 only; no client certificates,
//! no revocation checks.

pub mod crypto;
mod records;
pub mod server;

use crate::fetch::FetchError;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName, UnixTime};
use records::{RecordError, Records};
use rustls::client::UnbufferedClientConnection;
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

/// Most CA certificates accepted in a `ks-ca.pem`.
pub const MAX_CAS: usize = 64;
/// Ciphertext buffered from the server before the session takes more (one TLS record and a half).
const MAX_INCOMING: usize = 24 * 1024;

/// The CA certificates a kickstart server's certificate must chain to.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The Mozilla root store built into Ember.
    BuiltIn,
    /// CA certificates from a PEM file (`source` names it).
    Bundle { source: String, certs: Vec<CertificateDer<'static>> },
}

impl Trust {
    /// Reads a PEM bundle of CA certificates; every one must be usable as a trust anchor.
    pub fn from_pem(source: &str, pem: &[u8]) -> Result<Self, String> {
        let mut certs = Vec::new();
        for (i, item) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let n = i + 1;
            let cert = item.map_err(|e| format!("{source}: certificate {n}: not valid PEM ({e})"))?;
            webpki::anchor_from_trusted_cert(&cert)
                .map_err(|e| format!("{source}: certificate {n}: not a usable CA certificate ({e})"))?;
            if certs.len() == MAX_CAS {
                return Err(format!("{source}: more than {MAX_CAS} certificates"));
            }
            certs.push(cert);
        }
        if certs.is_empty() {
            return Err(format!("{source}: no certificate (-----BEGIN CERTIFICATE-----) in the file"));
        }
        Ok(Trust::Bundle { source: source.to_string(), certs })
    }

    /// What is trusted, for messages.
    pub fn describe(&self) -> String {
        match self {
            Trust::BuiltIn => {
                format!("the built-in Mozilla root store ({} CAs)", webpki_roots::TLS_SERVER_ROOTS.len())
            }
            Trust::Bundle { source, certs } => format!("the CA certificates in {source} ({})", certs.len()),
        }
    }

    fn root_store(&self) -> RootCertStore {
        match self {
            Trust::BuiltIn => RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
            Trust::Bundle { certs, .. } => {
                let mut store = RootCertStore::empty();
                // Each was checked by `from_pem`.
                let (_added, _skipped) = store.add_parsable_certificates(certs.iter().cloned());
                store
            }
        }
    }
}

/// The clock certificates are checked against: the host's wall clock when the attempt started.
#[derive(Debug)]
struct Clock(UnixTime);

impl rustls::time_provider::TimeProvider for Clock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.0)
    }
}

/// The client configuration for one attempt: TLS 1.3 preferred, TLS 1.2 accepted, `trust`,
/// certificates checked at `unix_now`.
pub fn client_config(trust: &Trust, unix_now: u64) -> Result<Arc<ClientConfig>, String> {
    let time = Clock(UnixTime::since_unix_epoch(core::time::Duration::from_secs(unix_now)));
    let config = ClientConfig::builder_with_details(Arc::new(crypto::provider()), Arc::new(time))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(trust.root_store())
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One HTTPS exchange: the request goes out once the handshake is done; the decrypted answer
/// collects in [`TlsSession::plaintext`].
pub struct TlsSession {
    conn: UnbufferedClientConnection,
    records: Records,
    host: String,
    trust: String,
}

impl TlsSession {
    /// Starts a handshake with `host` (a DNS name or an IP address; SNI is sent for names).
    /// At most `limit` bytes of answer are kept.
    pub fn new(
        config: Arc<ClientConfig>,
        trust: &Trust,
        host: &str,
        request: Vec<u8>,
        limit: usize,
    ) -> Result<Self, FetchError> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| FetchError::Final(format!("`{host}` is not a valid TLS server name")))?;
        let conn = UnbufferedClientConnection::new(config, name)
            .map_err(|e| FetchError::Final(format!("TLS: {e}")))?;
        let mut records = Records::new(limit);
        records.pending = request;
        Ok(TlsSession { conn, records, host: host.to_string(), trust: trust.describe() })
    }

    /// Room for ciphertext from the server.
    pub fn room(&self) -> usize {
        MAX_INCOMING.saturating_sub(self.records.incoming.len())
    }

    /// Ciphertext from the server (at most [`Self::room`] bytes are taken; returns how many).
    pub fn received(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.room());
        self.records.incoming.extend_from_slice(data.get(..n).unwrap_or_default());
        n
    }

    /// Ciphertext waiting to go to the server.
    pub fn to_send(&self) -> &[u8] {
        &self.records.outgoing
    }

    /// `n` bytes of [`Self::to_send`] went out.
    pub fn sent(&mut self, n: usize) {
        let out = &mut self.records.outgoing;
        out.drain(..n.min(out.len()));
    }

    /// The answer decrypted so far.
    pub fn plaintext(&self) -> &[u8] {
        &self.records.plaintext
    }

    /// The server ended the TLS session cleanly.
    pub fn closed(&self) -> bool {
        self.records.peer_closed
    }

    /// Whether the handshake is over (and the request encrypted).
    pub fn handshake_done(&self) -> bool {
        self.records.established
    }

    /// More plaintext for the server, encrypted at the next [`Self::process`] (a further request
    /// on a kept-alive connection).
    pub fn write(&mut self, data: &[u8]) {
        self.records.pending.extend_from_slice(data);
    }

    /// Takes the answer decrypted so far.
    pub fn take_plaintext(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.records.plaintext)
    }

    /// Runs the TLS state machine over what has been received; never blocks.
    pub fn process(&mut self) -> Result<(), FetchError> {
        self.records.process(&mut self.conn).map_err(|e| match e {
            RecordError::Tls(e) => failure(&e, &self.host, &self.trust),
            RecordError::Unencodable => FetchError::Final(String::from("TLS: a record could not be encoded")),
        })
    }
}

/// What a TLS failure means for the download, in words an administrator can act on. Certificate
/// and protocol problems are final (another attempt would meet the same certificate).
pub fn failure(e: &rustls::Error, host: &str, trust: &str) -> FetchError {
    use rustls::Error as E;
    let why = match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                format!("the certificate of {host} is not issued by a CA in {trust}")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("the certificate presented is not valid for {host}")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
                "the certificate of {host} has expired (checked at the host's clock; is the firmware clock right?)"
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
                "the certificate of {host} is not valid yet (checked at the host's clock; is the firmware clock right?)"
            ),
            CertificateError::BadSignature => {
                format!("a signature of {host} (in its certificate chain or its handshake) is invalid")
            }
            other => format!("the certificate of {host} was refused: {other:?}"),
        },
        E::AlertReceived(AlertDescription::ProtocolVersion) | E::PeerIncompatible(_) => {
            format!("{host} and Ember have no TLS version, cipher suite or key exchange in common ({e}); Ember speaks TLS 1.3 and TLS 1.2 with ECDHE P-256 and AES-GCM")
        }
        E::AlertReceived(a) => format!("{host} ended the TLS handshake with the alert {a:?}"),
        other => format!("TLS with {host} failed: {other}"),
    };
    FetchError::Final(why)
}

#[cfg(test)]
mod tests;
