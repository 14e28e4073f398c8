//! HTTPS for the management API: the host's key and certificate, and a TLS server session over a
//! polled TCP socket.
//!
//! - **The host's identity** ([`ServerIdentity`]): an ECDSA key (P-256 or P-384) and its
//!   certificate chain, kept in the configuration store. A new host makes its own: a P-256 key from
//!   the seeded random source and a self-signed certificate for its host name ([`self_signed`]),
//!   as ESXi does at first boot. An administrator replaces it with a CA-signed one
//!   ([`check_install`], `PUT /api/v1/host/certificate`); clients check the self-signed one by the
//!   SHA-256 fingerprint the DCUI and the boot log show.
//! - **The session** ([`TlsServerSession`]): `rustls`' unbuffered server (ciphertext in and out,
//!   plaintext in and out, never blocking), TLS 1.3 and TLS 1.2 with the suites of
//!   [`super::crypto`]. Session resumption is kept in a small in-memory cache.
//!
//! The certificate is built with `x509-cert` (RustCrypto's X.509 types, `no_std`): `rcgen`, the
//! usual generator, needs `std` and `ring`/`aws-lc-rs`.

use super::crypto::{self, EcdsaKey};
use super::records::{RecordError, Records};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use ember_storage::hostconfig::TlsIdentity;
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{StoresServerSessions, UnbufferedServerConnection};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::ServerConfig;
use x509_cert::der::asn1::{BitString, GeneralizedTime, Ia5String, OctetString, UtcTime};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, SubjectAltName};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

/// Most certificates in an installed chain (the server's and its intermediates).
pub const MAX_CHAIN: usize = 8;
/// Ciphertext taken from a client before its plaintext is read.
const MAX_INCOMING: usize = 24 * 1024;
/// Decrypted bytes held for the HTTP layer before more ciphertext is taken.
const MAX_PLAINTEXT: usize = 16 * 1024;
/// Sessions remembered for resumption.
const SESSION_CACHE: usize = 64;

const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ID_KP_SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
const ID_CE_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const ID_CE_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const ID_CE_SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");

/// What an administrator is shown about the host's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// SHA-256 of the server certificate (DER).
    pub sha256: [u8; 32],
    /// RFC 4514 form, for example `CN=esx01.lab`.
    pub subject: String,
    pub issuer: String,
    /// `2026-12-06T20:40:48Z`.
    pub not_before: String,
    pub not_after: String,
    /// Seconds since 1970 (for the expiry check).
    pub not_after_unix: u64,
    pub not_before_unix: u64,
    /// Certificates in the chain, the server's included.
    pub chain_len: usize,
    pub self_signed: bool,
}

impl CertificateInfo {
    /// The fingerprint as an administrator compares it: `AB:CD:...` (95 characters).
    pub fn fingerprint(&self) -> String {
        fingerprint_text(&self.sha256)
    }
}

/// `AB:CD:...` for a SHA-256 fingerprint.
pub fn fingerprint_text(sha256: &[u8; 32]) -> String {
    let parts: Vec<String> = sha256.iter().map(|b| format!("{b:02X}")).collect();
    parts.join(":")
}

/// The host's HTTPS key and certificate, ready to serve.
pub struct ServerIdentity {
    pub config: Arc<ServerConfig>,
    pub info: CertificateInfo,
    /// The stored form.
    pub stored: TlsIdentity,
}

impl core::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerIdentity").field("info", &self.info).finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// Checks a stored (or offered) key and chain and builds the server configuration: the key is
    /// ECDSA P-256/P-384, every certificate is X.509, the first certificate belongs to the key.
    pub fn load(id: &TlsIdentity) -> Result<Self, String> {
        let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
            .map_err(|e| format!("key: not a PEM private key ({e})"))?;
        let key = EcdsaKey::from_der(&key).map_err(|e| format!("key: {e}"))?;
        let mut chain = Vec::new();
        for (i, item) in CertificateDer::pem_slice_iter(id.chain_pem.as_bytes()).enumerate() {
            let cert = item.map_err(|e| format!("certificate {}: not valid PEM ({e})", i + 1))?;
            if chain.len() == MAX_CHAIN {
                return Err(format!("certificate: more than {MAX_CHAIN} certificates in the chain"));
            }
            chain.push(cert);
        }
        let Some(leaf) = chain.first() else {
            return Err(String::from("certificate: no certificate (-----BEGIN CERTIFICATE-----)"));
        };
        let mut info = describe(leaf).map_err(|e| format!("certificate 1: {e}"))?;
        if id.key_pem.contains("CERTIFICATE") || id.chain_pem.contains("PRIVATE KEY") {
            return Err(String::from("certificate and key must be given apart (a private key is in the certificate text, or a certificate in the key text)"));
        }
        info.chain_len = chain.len();
        info.self_signed = id.self_signed;
        for (i, c) in chain.iter().enumerate().skip(1) {
            Certificate::from_der(c)
                .map_err(|e| format!("certificate {}: not an X.509 certificate ({e})", i + 1))?;
        }
        let certified = CertifiedKey::new(chain, Arc::new(key));
        certified.keys_match().map_err(|_| {
            String::from(
                "certificate 1: it does not belong to the key (the first certificate must be the server's)",
            )
        })?;
        let provider = Arc::new(crypto::provider());
        let mut config = ServerConfig::builder_with_details(provider, Arc::new(Clock))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.session_storage = Arc::new(SessionCache::default());
        config.send_tls13_tickets = 1;
        config.ignore_client_order = false;
        Ok(ServerIdentity { config: Arc::new(config), info, stored: id.clone() })
    }
}

/// The server's clock (session lifetimes; it checks no client certificates): the host's wall clock,
/// or time since boot counted from 2025-01-01 when the host does not know the time.
static CLOCK: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(JAN_2025);
/// 2025-01-01, the start of a certificate made without a clock.
pub const JAN_2025: u64 = 1_735_689_600;
/// How long a self-signed certificate is valid: 825 days, the most Apple's TLS clients accept
/// (HT210176) even for a certificate the user trusts.
pub const SELF_SIGNED_DAYS: u64 = 825;
/// A self-signed certificate this close to its end is replaced by a new one.
pub const RENEW_BEFORE_DAYS: u64 = 30;

/// Sets the server's clock (seconds since 1970); the management loop calls it as time passes.
pub fn set_clock(unix_secs: u64) {
    CLOCK.store(unix_secs, core::sync::atomic::Ordering::Relaxed);
}

#[derive(Debug)]
struct Clock;

impl rustls::time_provider::TimeProvider for Clock {
    fn current_time(&self) -> Option<UnixTime> {
        let secs = CLOCK.load(core::sync::atomic::Ordering::Relaxed);
        Some(UnixTime::since_unix_epoch(core::time::Duration::from_secs(secs)))
    }
}

/// Reads what an administrator is shown about a certificate.
fn describe(der: &[u8]) -> Result<CertificateInfo, String> {
    use sha2::Digest;
    let cert = Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let tbs = &cert.tbs_certificate;
    let time = |t: &Time| (t.to_string(), t.to_unix_duration().as_secs());
    let (not_before, not_before_unix) = time(&tbs.validity.not_before);
    let (not_after, not_after_unix) = time(&tbs.validity.not_after);
    Ok(CertificateInfo {
        sha256: sha2::Sha256::digest(der).into(),
        subject: tbs.subject.to_string(),
        issuer: tbs.issuer.to_string(),
        not_before,
        not_after,
        not_after_unix,
        not_before_unix,
        chain_len: 1,
        self_signed: false,
    })
}

/// Checks a certificate and key an administrator installs: what [`ServerIdentity::load`] checks,
/// and - when the host knows the time - that the certificate is valid now.
pub fn check_install(
    chain_pem: &str,
    key_pem: &str,
    unix_now: Option<u64>,
) -> Result<ServerIdentity, String> {
    let id =
        TlsIdentity { key_pem: key_pem.to_string(), chain_pem: chain_pem.to_string(), self_signed: false };
    id.validate("").map_err(|e| format!("{}: {}", e.field.trim_start_matches('.'), e.problem))?;
    let loaded = ServerIdentity::load(&id)?;
    // Stored as what was understood (PKCS#8, the certificates alone), never as the text given.
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("key: {e}"))?;
    let key = EcdsaKey::from_der(&key).map_err(|e| format!("key: {e}"))?;
    let key_der = key.to_pkcs8_der().ok_or("key: could not be encoded")?;
    let mut chain = String::new();
    for cert in CertificateDer::pem_slice_iter(chain_pem.as_bytes()).flatten() {
        chain.push_str(&pem("CERTIFICATE", &cert));
    }
    let canonical =
        TlsIdentity { key_pem: pem("PRIVATE KEY", &key_der), chain_pem: chain, self_signed: false };
    drop(loaded);
    let identity = ServerIdentity::load(&canonical)?;
    if let Some(now) = unix_now {
        let i = &identity.info;
        if now > i.not_after_unix {
            return Err(format!(
                "certificate 1: expired on {} (the host's clock says it is later)",
                i.not_after
            ));
        }
        if now < i.not_before_unix {
            return Err(format!(
                "certificate 1: not valid before {} (the host's clock says it is earlier)",
                i.not_before
            ));
        }
    }
    Ok(identity)
}

/// Makes a new P-256 key and a self-signed certificate for `host_name`: valid from a day before
/// `unix_now` (or 2025-01-01 when the host does not know the time) for [`SELF_SIGNED_DAYS`], for
/// TLS server use, with the host name as its subject and DNS name.
pub fn self_signed(host_name: &str, unix_now: Option<u64>) -> Result<ServerIdentity, String> {
    let key = EcdsaKey::generate_p256().ok_or("no random source for a new key")?;
    let mut serial = [0u8; 16];
    if !crypto::random(&mut serial) {
        return Err(String::from("no random source for a serial number"));
    }
    // Positive and without a leading zero byte (RFC 5280 4.1.2.2).
    serial[0] = (serial[0] & 0x7f) | 0x40;
    let cert = build_certificate(&key, host_name, unix_now, &serial)?;
    let key_der = key.to_pkcs8_der().ok_or("the new key could not be encoded")?;
    let id = TlsIdentity {
        key_pem: pem("PRIVATE KEY", &key_der),
        chain_pem: pem("CERTIFICATE", &cert),
        self_signed: true,
    };
    ServerIdentity::load(&id)
}

fn e(what: &'static str) -> impl Fn(x509_cert::der::Error) -> String {
    move |err| format!("certificate: {what}: {err}")
}

fn build_certificate(
    key: &EcdsaKey,
    host_name: &str,
    unix_now: Option<u64>,
    serial: &[u8],
) -> Result<Vec<u8>, String> {
    let start = unix_now.map(|n| n.saturating_sub(86_400)).unwrap_or(JAN_2025);
    let not_before = UtcTime::from_unix_duration(core::time::Duration::from_secs(start))
        .map(Time::UtcTime)
        .or_else(|_| {
            GeneralizedTime::from_unix_duration(core::time::Duration::from_secs(start)).map(Time::GeneralTime)
        })
        .map_err(e("start time"))?;
    let end = core::time::Duration::from_secs(start.saturating_add(SELF_SIGNED_DAYS * 86_400));
    let not_after = UtcTime::from_unix_duration(end)
        .map(Time::UtcTime)
        .or_else(|_| GeneralizedTime::from_unix_duration(end).map(Time::GeneralTime))
        .map_err(e("end time"))?;
    let name: Name = format!("CN={host_name}").parse().map_err(e("subject"))?;
    let spki_der = key.spki_der().ok_or("certificate: the public key could not be encoded")?;
    let spki = SubjectPublicKeyInfoOwned::from_der(&spki_der).map_err(e("public key"))?;
    let ext = |oid, critical, value: Vec<u8>| -> Result<Extension, String> {
        Ok(Extension { extn_id: oid, critical, extn_value: OctetString::new(value).map_err(e("extension"))? })
    };
    let dns = Ia5String::new(host_name).map_err(e("host name"))?;
    let extensions = alloc::vec![
        ext(
            ID_CE_BASIC_CONSTRAINTS,
            true,
            BasicConstraints { ca: false, path_len_constraint: None }
                .to_der()
                .map_err(e("basic constraints"))?
        )?,
        ext(
            ID_CE_EXT_KEY_USAGE,
            false,
            ExtendedKeyUsage(alloc::vec![ID_KP_SERVER_AUTH]).to_der().map_err(e("extended key usage"))?
        )?,
        ext(
            ID_CE_SUBJECT_ALT_NAME,
            false,
            SubjectAltName(alloc::vec![GeneralName::DnsName(dns)]).to_der().map_err(e("subject alt name"))?
        )?,
    ];
    let algorithm = AlgorithmIdentifierOwned { oid: ECDSA_WITH_SHA256, parameters: None };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(serial).map_err(e("serial number"))?,
        signature: algorithm.clone(),
        issuer: name.clone(),
        validity: Validity { not_before, not_after },
        subject: name,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der().map_err(e("encoding"))?;
    let signature = BitString::from_bytes(&key.sign_der(&tbs_der)).map_err(e("signature"))?;
    Certificate { tbs_certificate: tbs, signature_algorithm: algorithm, signature }
        .to_der()
        .map_err(e("encoding"))
}

/// PEM text for DER bytes (64-character lines).
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(core::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// TLS sessions remembered for resumption (TLS 1.3 tickets as session IDs, TLS 1.2 session IDs);
/// the oldest is forgotten first.
#[derive(Debug, Default)]
struct SessionCache(spin::Mutex<alloc::collections::VecDeque<(Vec<u8>, Vec<u8>)>>);

impl StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut c = self.0.lock();
        c.retain(|(k, _)| *k != key);
        if c.len() >= SESSION_CACHE {
            c.pop_front();
        }
        c.push_back((key, value));
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.lock().iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut c = self.0.lock();
        let i = c.iter().position(|(k, _)| k == key)?;
        c.remove(i).map(|(_, v)| v)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// One client's TLS session: ciphertext from the socket goes in with [`Self::received`], the
/// client's requests come out of [`Self::take_plaintext`]; answers go in with [`Self::write`] and
/// the ciphertext to send comes out of [`Self::to_send`].
pub struct TlsServerSession {
    conn: UnbufferedServerConnection,
    records: Records,
}

impl TlsServerSession {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, String> {
        let conn = UnbufferedServerConnection::new(config).map_err(|e| format!("TLS: {e}"))?;
        // The plaintext is bounded by the ciphertext let in (`room`).
        Ok(TlsServerSession { conn, records: Records::new(usize::MAX) })
    }

    /// Room for ciphertext from the client (none while decrypted requests wait to be read).
    pub fn room(&self) -> usize {
        if self.records.plaintext.len() >= MAX_PLAINTEXT {
            return 0;
        }
        MAX_INCOMING.saturating_sub(self.records.incoming.len())
    }

    /// Ciphertext from the client; at most [`Self::room`] bytes are taken (returns how many).
    pub fn received(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.room());
        self.records.incoming.extend_from_slice(data.get(..n).unwrap_or_default());
        n
    }

    /// Decrypted bytes from the client, at most `max`.
    pub fn take_plaintext(&mut self, max: usize) -> Vec<u8> {
        let p = &mut self.records.plaintext;
        p.drain(..max.min(p.len())).collect()
    }

    /// Plaintext to send (encrypted once the handshake is over).
    pub fn write(&mut self, data: &[u8]) {
        self.records.pending.extend_from_slice(data);
    }

    /// Sends close_notify after what was written.
    pub fn close(&mut self) {
        self.records.close_requested = true;
    }

    /// Ciphertext from the client not yet understood (an incomplete record).
    pub fn has_input(&self) -> bool {
        !self.records.incoming.is_empty()
    }

    /// Ciphertext waiting to go to the client.
    pub fn to_send(&self) -> &[u8] {
        &self.records.outgoing
    }

    /// `n` bytes of [`Self::to_send`] went out.
    pub fn sent(&mut self, n: usize) {
        let out = &mut self.records.outgoing;
        out.drain(..n.min(out.len()));
    }

    /// Nothing written is waiting to be encrypted or sent.
    pub fn flushed(&self) -> bool {
        self.records.pending.is_empty() && self.records.outgoing.is_empty()
    }

    /// The client ended the session (close_notify).
    pub fn peer_closed(&self) -> bool {
        self.records.peer_closed
    }

    /// The handshake is over.
    pub fn established(&self) -> bool {
        self.records.established
    }

    /// Runs the TLS state machine over what has been received and written; never blocks. An
    /// error ends the session.
    pub fn process(&mut self) -> Result<(), rustls::Error> {
        self.records.process(&mut self.conn).map_err(|e| match e {
            RecordError::Tls(e) => e,
            RecordError::Unencodable => {
                rustls::Error::General(String::from("a TLS record could not be encoded"))
            }
        })
    }
}

#[cfg(test)]
mod tests;
