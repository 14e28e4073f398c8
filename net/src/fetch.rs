//! Fetching a first boot's kickstart over HTTP or HTTPS (layer 1: URL, request and response
//! formats, the retry policy; the socket work is in [`crate::mgmt`], TLS in [`crate::tls`]).
//!
//! Retry policy (REFERENCE.md 6, as Ignition does it): time-outs, refused or reset connections, DNS
//! failures and `5xx` answers are retried without limit, waiting 100 ms after the first failure and
//! doubling up to 5 s; everything else - `4xx`, redirects, a malformed or oversize answer, chunked
//! transfer coding, a certificate that is not trusted or a server without TLS 1.3 - is final. Every
//! failed attempt is logged with its reason.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ember_storage::kickstart::MAX_KICKSTART_BYTES;

/// First wait after a failed attempt.
pub const FIRST_BACKOFF_MS: u64 = 100;
/// Longest wait between attempts.
pub const MAX_BACKOFF_MS: u64 = 5_000;
/// A connection must be established this long after it was started.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// The whole answer must arrive this long after the connection was established, without a stall.
pub const RESPONSE_TIMEOUT_MS: u64 = 30_000;
/// Longest response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// An `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `https://`: the exchange runs over TLS ([`crate::tls`]).
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http[s]://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let scheme = |s: &str| url.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s));
        let (tls, rest) = if scheme("http://") {
            (false, &url[7..])
        } else if scheme("https://") {
            (true, &url[8..])
        } else {
            return Err(format!("{url}: not an http:// or https:// URL"));
        };
        let default_port = if tls { 443 } else { 80 };
        if !url.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("{url}: the URL must be printable ASCII without spaces"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(format!("{url}: credentials in the URL are not supported"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{url}: bad port `{p}`"))?;
                (h, port)
            }
            None => (authority, default_port),
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !host_ok {
            return Err(format!("{url}: `{host}` is not a host name or IPv4 address"));
        }
        let path = path.split('#').next().unwrap_or("/");
        Ok(HttpUrl { tls, host: host.to_string(), port, path: path.to_string() })
    }

    /// The request Ember sends.
    pub fn request(&self, user_agent: &str) -> Vec<u8> {
        let default_port = if self.tls { 443 } else { 80 };
        let host = if self.port == default_port {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        };
        format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.path
        )
        .into_bytes()
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Worth another attempt (time-out, refused connection, DNS failure, server error).
    Retry(String),
    /// Another attempt would get the same answer.
    Final(String),
}

impl core::fmt::Display for FetchError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FetchError::Retry(w) | FetchError::Final(w) => write!(f, "{w}"),
        }
    }
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed.
    Incomplete,
    /// The body of a `200` answer.
    Body(Vec<u8>),
    Failed(FetchError),
}

/// Interprets the bytes of an answer; `closed` says the server has closed its side.
pub fn parse_response(bytes: &[u8], closed: bool) -> Progress {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if bytes.len() > MAX_RESPONSE_HEAD => {
            return Progress::Failed(FetchError::Final(format!(
                "response head longer than {MAX_RESPONSE_HEAD} bytes"
            )))
        }
        Ok(httparse::Status::Partial) if closed => {
            return Progress::Failed(FetchError::Retry(String::from(
                "the server closed the connection before answering",
            )))
        }
        Ok(httparse::Status::Partial) => return Progress::Incomplete,
        Err(e) => return Progress::Failed(FetchError::Final(format!("malformed response: {e}"))),
    };
    let code = resp.code.unwrap_or(0);
    let reason = resp.reason.unwrap_or("");
    match code {
        200 => {}
        500..=599 => return Progress::Failed(FetchError::Retry(format!("server error {code} {reason}"))),
        300..=399 => {
            return Progress::Failed(FetchError::Final(format!(
                "HTTP {code} {reason}: redirects are not followed; give the final URL"
            )))
        }
        _ => return Progress::Failed(FetchError::Final(format!("HTTP {code} {reason}"))),
    }
    let mut length = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Progress::Failed(FetchError::Final(String::from(
                "Transfer-Encoding answers are not supported; the server must send Content-Length",
            )));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = core::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
            match n {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return Progress::Failed(FetchError::Final(String::from("bad Content-Length"))),
            }
        }
    }
    let body = &bytes[head_len..];
    let too_large = |n: usize| {
        Progress::Failed(FetchError::Final(format!(
            "the kickstart is larger than {MAX_KICKSTART_BYTES} bytes ({n} bytes)"
        )))
    };
    match length {
        Some(n) if n > MAX_KICKSTART_BYTES => too_large(n),
        Some(n) if body.len() >= n => Progress::Body(body[..n].to_vec()),
        Some(n) if closed => Progress::Failed(FetchError::Retry(format!(
            "the connection closed after {} of {n} body bytes",
            body.len()
        ))),
        Some(_) => Progress::Incomplete,
        None if body.len() > MAX_KICKSTART_BYTES => too_large(body.len()),
        None if closed => Progress::Body(body.to_vec()),
        None => Progress::Incomplete,
    }
}

/// The wait before the next attempt after `failures` failed ones (1 or more).
pub fn backoff_ms(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF_MS << doublings).min(MAX_BACKOFF_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://10.0.2.2:8000/ks/host1.cfg?x=1#frag").unwrap();
        assert_eq!(
            u,
            HttpUrl { tls: false, host: "10.0.2.2".into(), port: 8000, path: "/ks/host1.cfg?x=1".into() }
        );
        assert_eq!(HttpUrl::parse("HTTP://deploy.lab").unwrap().path, "/");
        assert_eq!(HttpUrl::parse("http://deploy.lab/ks").unwrap().port, 80);
        let s = HttpUrl::parse("HTTPS://deploy.lab/ks").unwrap();
        assert_eq!((s.tls, s.port), (true, 443));
        let req = String::from_utf8(s.request("Ember/0.1")).unwrap();
        assert!(req.starts_with("GET /ks HTTP/1.1\r\nHost: deploy.lab\r\n"), "{req}");
        let s = HttpUrl::parse("https://10.0.2.2:8443/a").unwrap();
        assert_eq!((s.tls, s.port), (true, 8443));
        for bad in [
            "ftp://x/",
            "https://",
            "https://a:0/",
            "http://",
            "http://:80/",
            "http://a:0/",
            "http://a:99999/",
            "http://u@h/",
            "http://a b/",
            "http://a_b/",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
        let req = String::from_utf8(u.request("Ember/0.1")).unwrap();
        assert!(req.starts_with("GET /ks/host1.cfg?x=1 HTTP/1.1\r\nHost: 10.0.2.2:8000\r\n"), "{req}");
        assert!(req.ends_with("Connection: close\r\n\r\n"));
    }

    #[test]
    fn answers() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(ok, false), Progress::Body(b"hello".to_vec()));
        // Every prefix of a good answer is incomplete while the connection is open.
        for n in 0..ok.len() {
            assert_eq!(parse_response(&ok[..n], false), Progress::Incomplete, "{n}");
        }
        assert_eq!(parse_response(b"HTTP/1.0 200 OK\r\n\r\nbody", true), Progress::Body(b"body".to_vec()));
        assert_eq!(parse_response(b"HTTP/1.0 200 OK\r\n\r\nbody", false), Progress::Incomplete);
        let retry =
            |b: &[u8], closed| matches!(parse_response(b, closed), Progress::Failed(FetchError::Retry(_)));
        let fin = |b: &[u8]| matches!(parse_response(b, true), Progress::Failed(FetchError::Final(_)));
        assert!(retry(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", false));
        assert!(retry(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", false));
        assert!(retry(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", true));
        assert!(retry(b"HTTP/1.1 2", true));
        assert!(fin(b"HTTP/1.1 404 Not Found\r\n\r\n"));
        assert!(fin(b"HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n"));
        assert!(fin(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(fin(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"));
        assert!(fin(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"));
        assert!(fin(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n"));
        assert!(fin(b"garbage\r\n\r\n"));
        let long = [b'a'; MAX_RESPONSE_HEAD + 1];
        assert!(matches!(parse_response(&long, false), Progress::Failed(_)));
        match parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n", true) {
            Progress::Failed(e) => assert_eq!(e.to_string(), "HTTP 404 Not Found"),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn backoff_doubles_from_100_ms_to_5_s() {
        let waits: Vec<u64> = (1..=9).map(backoff_ms).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(backoff_ms(u32::MAX), 5000);
    }
}
