//! The TLS client against an in-process rustls server (same provider),
//! with the certificates in `testdata/` (made by `testdata/make.sh`).

use super::*;
use alloc::vec;
use pki_types::PrivateKeyDer;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::ServerConfig;

const CA: &[u8] = include_bytes!("testdata/ca.pem");
const OTHER_CA: &[u8] = include_bytes!("testdata/other-ca.pem");
const SERVER: (&[u8], &[u8]) = (include_bytes!("testdata/server.pem"), include_bytes!("testdata/server.key"));
const STRANGER: (&[u8], &[u8]) =
    (include_bytes!("testdata/stranger.pem"), include_bytes!("testdata/stranger.key"));
const FORGED: (&[u8], &[u8]) = (include_bytes!("testdata/forged.pem"), include_bytes!("testdata/forged.key"));

/// 2027-06-01, inside every test certificate's validity.
const NOW: u64 = 1_811_808_000;
const REQUEST: &[u8] = b"GET /ks.cfg HTTP/1.1\r\nHost: 10.0.2.2\r\n\r\n";
const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nvmaccepteula";

/// The test server: answers one request with `answer`, then closes.
struct Server {
    conn: UnbufferedServerConnection,
    incoming: Vec<u8>,
    out: Vec<u8>,
    request: Vec<u8>,
    answer: Vec<u8>,
    answered: bool,
}

impl Server {
    fn new(identity: (&[u8], &[u8]), answer: &[u8]) -> Self {
        Self::with_versions(identity, answer, &[&rustls::version::TLS13])
    }

    fn with_versions(
        identity: (&[u8], &[u8]),
        answer: &[u8],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Self {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(identity.0).map(|c| c.unwrap()).collect();
        let key = PrivateKeyDer::from_pem_slice(identity.1).unwrap();
        let provider = crypto::provider();
        let config = ServerConfig::builder_with_details(Arc::new(provider), Arc::new(Clock(unix(NOW))))
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Server {
            conn: UnbufferedServerConnection::new(Arc::new(config)).unwrap(),
            incoming: Vec::new(),
            out: Vec::new(),
            request: Vec::new(),
            answer: answer.to_vec(),
            answered: false,
        }
    }

    /// Runs the server until it needs more input; `false` once it has failed (the client refused).
    fn step(&mut self) -> bool {
        for _ in 0..64 {
            let UnbufferedStatus { mut discard, state } = self.conn.process_tls_records(&mut self.incoming);
            let Ok(state) = state else { return false };
            let mut wait = false;
            match state {
                ConnectionState::EncodeTlsData(mut e) => {
                    let mut buf = vec![0; 16 * 1024];
                    let n = e.encode(&mut buf).unwrap();
                    self.out.extend_from_slice(&buf[..n]);
                }
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec.unwrap();
                        discard += rec.discard;
                        self.request.extend_from_slice(rec.payload);
                    }
                }
                ConnectionState::WriteTraffic(mut w) => {
                    if self.request.ends_with(b"\r\n\r\n") && !self.answered {
                        let mut buf = vec![0; 16 * 1024];
                        let n = w.encrypt(&self.answer, &mut buf).unwrap();
                        let m = w.queue_close_notify(&mut buf[n..]).unwrap();
                        self.out.extend_from_slice(&buf[..n + m]);
                        self.answered = true;
                    }
                    wait = true;
                }
                _ => wait = true,
            }
            self.incoming.drain(..discard);
            if wait {
                break;
            }
        }
        true
    }
}

fn unix(secs: u64) -> UnixTime {
    UnixTime::since_unix_epoch(core::time::Duration::from_secs(secs))
}

/// One exchange between the client and `server`; `tamper` may change the server's bytes in flight.
fn exchange_with(
    trust: &Trust,
    host: &str,
    now: u64,
    mut server: Server,
    tamper: &mut dyn FnMut(&mut Vec<u8>),
) -> Result<Vec<u8>, FetchError> {
    crypto::seed([7; 32]);
    let config = client_config(trust, now).unwrap();
    let mut client = TlsSession::new(config, trust, host, REQUEST.to_vec(), 64 * 1024)?;
    for _ in 0..100 {
        client.process()?;
        server.incoming.extend_from_slice(client.to_send());
        let n = client.to_send().len();
        client.sent(n);
        server.step();
        let mut back = core::mem::take(&mut server.out);
        tamper(&mut back);
        let mut rest = &back[..];
        while !rest.is_empty() {
            let n = client.received(rest);
            rest = &rest[n..];
            client.process()?;
        }
        if client.closed() {
            assert_eq!(server.request, REQUEST);
            return Ok(client.plaintext().to_vec());
        }
    }
    panic!("no result after 100 rounds");
}

fn exchange(trust: &Trust, host: &str, now: u64, identity: (&[u8], &[u8])) -> Result<Vec<u8>, FetchError> {
    exchange_with(trust, host, now, Server::new(identity, ANSWER), &mut |_| {})
}

fn ca() -> Trust {
    Trust::from_pem("ks-ca.pem", CA).unwrap()
}

fn refused(r: Result<Vec<u8>, FetchError>) -> String {
    match r {
        Err(FetchError::Final(why)) => why,
        other => panic!("expected a final failure, got {other:?}"),
    }
}

#[test]
fn a_trusted_server_answers_by_address_and_by_name() {
    assert_eq!(exchange(&ca(), "10.0.2.2", NOW, SERVER).unwrap(), ANSWER);
    assert_eq!(exchange(&ca(), "ks.example.test", NOW, SERVER).unwrap(), ANSWER);
}

#[test]
fn a_tls_1_2_only_server_is_served_too() {
    let server = Server::with_versions(SERVER, ANSWER, &[&rustls::version::TLS12]);
    assert_eq!(exchange_with(&ca(), "10.0.2.2", NOW, server, &mut |_| {}).unwrap(), ANSWER);
    // The checks are the same.
    let server = Server::with_versions(STRANGER, ANSWER, &[&rustls::version::TLS12]);
    assert!(
        refused(exchange_with(&ca(), "10.0.2.2", NOW, server, &mut |_| {})).contains("not issued by a CA")
    );
    let mut first = true;
    let server = Server::with_versions(SERVER, ANSWER, &[&rustls::version::TLS12]);
    let r = exchange_with(&ca(), "10.0.2.2", NOW, server, &mut |b| {
        if first && b.len() > 200 {
            let i = b.len() - 20;
            b[i] ^= 1;
            first = false;
        }
    });
    // TLS 1.2 sends the server's signed key share in clear: the flipped bit breaks its signature.
    assert_eq!(refused(r), "a signature of 10.0.2.2 (in its certificate chain or its handshake) is invalid");
}

#[test]
fn certificates_are_checked() {
    let e = refused(exchange(&ca(), "10.0.2.2", NOW, STRANGER));
    assert_eq!(
        e,
        "the certificate of 10.0.2.2 is not issued by a CA in the CA certificates in ks-ca.pem (1)"
    );
    let e = refused(exchange(&ca(), "10.0.2.3", NOW, SERVER));
    assert_eq!(e, "the certificate presented is not valid for 10.0.2.3");
    let e = refused(exchange(&ca(), "other.example.test", NOW, SERVER));
    assert_eq!(e, "the certificate presented is not valid for other.example.test");
    // 2200 and 2000: outside the certificates' validity.
    let e = refused(exchange(&ca(), "10.0.2.2", 7_258_118_400, SERVER));
    assert!(e.starts_with("the certificate of 10.0.2.2 has expired"), "{e}");
    let e = refused(exchange(&ca(), "10.0.2.2", 946_684_800, SERVER));
    assert!(e.starts_with("the certificate of 10.0.2.2 is not valid yet"), "{e}");
    // Issued by a server certificate, which is no CA.
    let e = refused(exchange(&ca(), "10.0.2.2", NOW, FORGED));
    assert_eq!(
        e,
        "the certificate of 10.0.2.2 is not issued by a CA in the CA certificates in ks-ca.pem (1)"
    );
    // The built-in store does not know the test CA; another CA file does not either.
    let e = refused(exchange(&Trust::BuiltIn, "10.0.2.2", NOW, SERVER));
    assert!(e.contains("not issued by a CA in the built-in Mozilla root store"), "{e}");
    let other = Trust::from_pem("other.pem", OTHER_CA).unwrap();
    assert!(refused(exchange(&other, "10.0.2.2", NOW, SERVER)).contains("not issued by a CA"));
}

#[test]
fn tampered_records_end_the_session() {
    // Flip a bit in every byte range past the ServerHello: the encrypted handshake breaks.
    let mut first = true;
    let r = exchange_with(&ca(), "10.0.2.2", NOW, Server::new(SERVER, ANSWER), &mut |b| {
        if first && b.len() > 200 {
            let i = b.len() - 20;
            b[i] ^= 1;
            first = false;
        }
    });
    let e = refused(r);
    assert!(e.starts_with("TLS with 10.0.2.2 failed"), "{e}");
}

#[test]
fn ca_files_are_validated() {
    assert_eq!(ca().describe(), "the CA certificates in ks-ca.pem (1)");
    let both = [CA, OTHER_CA].concat();
    assert_eq!(Trust::from_pem("b.pem", &both).unwrap().describe(), "the CA certificates in b.pem (2)");
    assert_eq!(
        Trust::from_pem("x.pem", b"").unwrap_err(),
        "x.pem: no certificate (-----BEGIN CERTIFICATE-----) in the file"
    );
    assert_eq!(
        Trust::from_pem("k.pem", SERVER.1).unwrap_err(),
        "k.pem: no certificate (-----BEGIN CERTIFICATE-----) in the file"
    );
    let broken = b"-----BEGIN CERTIFICATE-----\nMIIB!!!\n-----END CERTIFICATE-----\n";
    assert!(Trust::from_pem("b.pem", broken).unwrap_err().starts_with("b.pem: certificate 1: not valid PEM"));
    let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let e = Trust::from_pem("g.pem", garbage).unwrap_err();
    assert!(e.starts_with("g.pem: certificate 1: not a usable CA certificate"), "{e}");
    assert!(Trust::BuiltIn.describe().starts_with("the built-in Mozilla root store ("));
}

/// Chains signed with ECDSA P-384/SHA-384, RSA PKCS#1 v1.5 and RSA-PSS verify with Ember's
/// algorithms (webpki path building over them).
#[test]
fn every_signature_algorithm_verifies_a_chain() {
    for (ca, leaf) in [
        (&include_bytes!("testdata/p384-ca.pem")[..], &include_bytes!("testdata/p384-server.pem")[..]),
        (include_bytes!("testdata/rsa-ca.pem"), include_bytes!("testdata/rsa-server.pem")),
        (include_bytes!("testdata/rsa-ca.pem"), include_bytes!("testdata/rsa-pss-server.pem")),
    ] {
        let anchor_der = CertificateDer::from_pem_slice(ca).unwrap();
        let leaf = CertificateDer::from_pem_slice(leaf).unwrap();
        let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
        let verify = |ca: &CertificateDer<'_>| {
            let anchors = [webpki::anchor_from_trusted_cert(ca).unwrap()];
            ee.verify_for_usage(
                crypto::algorithms().all,
                &anchors,
                &[],
                unix(NOW),
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map(|_| ())
        };
        verify(&anchor_der).unwrap();
        // Another CA's key does not verify it.
        assert!(verify(&CertificateDer::from_pem_slice(OTHER_CA).unwrap()).is_err());
    }
}
