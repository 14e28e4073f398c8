//! The HTTPS server's identity and session, against Ember's own TLS client (which checks the
//! certificate as `curl` does) and the certificates in `../testdata/`.

use super::*;
use crate::fetch::FetchError;
use crate::tls::{client_config, TlsSession, Trust};

const CA: &str = include_str!("../testdata/ca.pem");
const SERVER: (&str, &str) = (include_str!("../testdata/server.pem"), include_str!("../testdata/server.key"));
const STRANGER_KEY: &str = include_str!("../testdata/stranger.key");
/// 2027-06-01, inside every test certificate's validity.
const NOW: u64 = 1_811_808_000;

fn seeded() {
    crypto::seed([9; 32]);
}

/// A request through Ember's client to a session of `identity`; the server echoes what it got
/// (`answer` times, to test large answers) and closes.
fn talk(
    identity: &ServerIdentity,
    trust: &Trust,
    host: &str,
    request: &[u8],
    answer_len: usize,
) -> Result<Vec<u8>, FetchError> {
    seeded();
    let config = client_config(trust, NOW).unwrap();
    let mut client = TlsSession::new(config, trust, host, request.to_vec(), 1 << 20)?;
    let mut server = TlsServerSession::new(identity.config.clone()).unwrap();
    let mut got = Vec::new();
    let mut answered = false;
    for _ in 0..400 {
        client.process()?;
        let mut rest = client.to_send().to_vec();
        client.sent(rest.len());
        while !rest.is_empty() {
            let n = server.received(&rest);
            rest.drain(..n);
            server.process().map_err(|e| FetchError::Final(format!("server: {e}")))?;
        }
        server.process().map_err(|e| FetchError::Final(format!("server: {e}")))?;
        got.extend(server.take_plaintext(usize::MAX));
        if !answered && got.ends_with(b"\r\n\r\n") {
            let body: Vec<u8> = (0..answer_len).map(|i| b'a' + (i % 26) as u8).collect();
            server.write(format!("HTTP/1.1 200 OK\r\nContent-Length: {answer_len}\r\n\r\n").as_bytes());
            server.write(&body);
            server.close();
            server.process().map_err(|e| FetchError::Final(format!("server: {e}")))?;
            answered = true;
        }
        let mut back = server.to_send().to_vec();
        server.sent(back.len());
        while !back.is_empty() {
            let n = client.received(&back);
            back.drain(..n);
            client.process()?;
        }
        if client.closed() {
            assert_eq!(got, request, "the server read the request as sent");
            assert!(server.flushed());
            return Ok(client.plaintext().to_vec());
        }
    }
    panic!("no answer after 400 rounds");
}

fn installed() -> ServerIdentity {
    check_install(SERVER.0, SERVER.1, Some(NOW)).unwrap()
}

#[test]
fn a_ca_signed_certificate_serves_a_client_that_checks_it_like_curl() {
    let id = installed();
    assert!(!id.info.self_signed);
    assert_eq!(id.info.subject, "CN=server");
    assert_eq!(id.info.issuer, "CN=Ember Test CA");
    let trust = Trust::from_pem("ca.pem", CA.as_bytes()).unwrap();
    let request = b"GET /api/v1/host HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let answer = talk(&id, &trust, "127.0.0.1", request, 100).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"), "{answer:?}");
    // An answer larger than several TLS records arrives whole.
    let answer = talk(&id, &trust, "ks.example.test", request, 100_000).unwrap();
    assert_eq!(answer.len(), 100_000 + "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".len());
    // The name is checked.
    let e = talk(&id, &trust, "other.example.test", request, 1).unwrap_err();
    assert!(matches!(e, FetchError::Final(ref w) if w.contains("not valid for")), "{e:?}");
}

#[test]
fn a_self_signed_certificate_names_the_host_and_is_what_its_fingerprint_says() {
    seeded();
    let id = self_signed("esx01.lab.example", Some(NOW)).unwrap();
    let i = &id.info;
    assert!(i.self_signed);
    assert_eq!((i.subject.as_str(), i.issuer.as_str()), ("CN=esx01.lab.example", "CN=esx01.lab.example"));
    assert_eq!(i.not_before_unix, NOW - 86_400, "valid from a day before now (clock skew)");
    assert_eq!(
        i.not_after_unix,
        NOW - 86_400 + SELF_SIGNED_DAYS * 86_400,
        "825 days: what Apple clients accept"
    );
    // The fingerprint is the SHA-256 of the certificate the server presents.
    let der = CertificateDer::pem_slice_iter(id.stored.chain_pem.as_bytes()).next().unwrap().unwrap();
    use sha2::Digest;
    let digest: [u8; 32] = sha2::Sha256::digest(&der).into();
    assert_eq!(i.sha256, digest);
    assert_eq!(i.fingerprint().len(), 95);
    assert!(i.fingerprint().split(':').all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit())));
    // It is a certificate webpki accepts for the host name, signed by its own key: a client that
    // trusts it (as one does after comparing the fingerprint) completes a handshake.
    let trust = Trust::from_pem("pinned.pem", id.stored.chain_pem.as_bytes()).unwrap();
    let request = b"GET / HTTP/1.1\r\n\r\n";
    assert!(talk(&id, &trust, "esx01.lab.example", request, 5).unwrap().ends_with(b"abcde"));
    // What is stored loads back to the same identity; each new one is different.
    let again = ServerIdentity::load(&id.stored).unwrap();
    assert_eq!(again.info, id.info);
    assert_ne!(self_signed("esx01.lab.example", Some(NOW)).unwrap().info.sha256, i.sha256);
    // Without a clock: valid from 2025-01-01.
    assert_eq!(self_signed("h", None).unwrap().info.not_before, "2025-01-01T00:00:00Z");
}

#[test]
fn a_certificate_to_install_is_checked_and_every_refusal_says_why() {
    let refused = |chain: &str, key: &str, now| match check_install(chain, key, now) {
        Err(why) => why,
        Ok(_) => panic!("accepted"),
    };
    assert!(refused(SERVER.0, STRANGER_KEY, Some(NOW)).contains("does not belong to the key"));
    assert!(refused(SERVER.0, "", Some(NOW)).starts_with("key: expected PEM"));
    assert!(refused("", SERVER.1, Some(NOW)).starts_with("certificate: expected PEM"));
    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert!(refused(garbage, SERVER.1, Some(NOW)).starts_with("certificate 1: not an X.509"));
    let rsa = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
    assert!(
        refused(SERVER.0, rsa, Some(NOW)).starts_with("key: expected PEM"),
        "{}",
        refused(SERVER.0, rsa, Some(NOW))
    );
    // 2200 is after, 2000 before the test certificates' validity.
    assert!(refused(SERVER.0, SERVER.1, Some(7_258_118_400)).contains("expired on"));
    assert!(refused(SERVER.0, SERVER.1, Some(946_684_800)).contains("not valid before"));
    // Without a clock the dates cannot be checked; the rest is.
    assert!(check_install(SERVER.0, SERVER.1, None).is_ok());
    let too_long = SERVER.0.repeat(MAX_CHAIN + 1);
    assert!(refused(&too_long, SERVER.1, Some(NOW)).contains("more than"));
}

#[test]
fn garbage_from_a_client_ends_its_session_with_an_error_not_a_panic() {
    let id = installed();
    for junk in
        [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0x16, 3, 1, 0xff, 0xff, 1, 0, 0xff, 0xfb][..], &[0x17; 64][..]]
    {
        let mut s = TlsServerSession::new(id.config.clone()).unwrap();
        s.received(junk);
        assert!(s.process().is_err(), "{junk:?} accepted");
        assert!(!s.established());
    }
    // Input is bounded: a client cannot make the session hold more than its buffers.
    let mut s = TlsServerSession::new(id.config.clone()).unwrap();
    let mut taken = 0;
    for _ in 0..100 {
        taken += s.received(&[0x16; 4096]);
    }
    assert!(taken <= MAX_INCOMING);
}
