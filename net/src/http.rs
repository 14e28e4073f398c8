//! HTTP/1.1 request framing and response writing (RFC 9112) for the management API.
//!
//! `httparse` parses the request head; this module adds the limits (head size, header count, body
//! size), `Content-Length` framing, keep-alive rules and the error statuses (400, 413, 501).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write as _;

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;
/// Most header fields accepted.
pub const MAX_HEADERS: usize = 32;

/// A complete, framed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<Vec<u8>>,
    pub content_type: Option<String>,
    /// The `Host` header when it is a plausible host name or address (with an optional port).
    pub host: Option<String>,
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue` (it may wait for `100 Continue` before the body).
    pub expect_continue: bool,
    /// The client's address (set by the server that took the request; the parser leaves it
    /// empty).
    pub peer: Option<core::net::IpAddr>,
}

/// A request that cannot be served, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl HttpError {
    pub fn new(status: u16, message: &str) -> Self {
        HttpError { status, message: message.to_string() }
    }
}

/// Result of looking at the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A whole request and the number of bytes it used.
    Complete(Request, usize),
    /// The request is unacceptable; answer and close.
    Error(HttpError),
    /// The head of a request whose body the server takes as it arrives (an upload): the request
    /// without its body, the bytes of the head, and the body's length.
    Streamed(Request, usize, u64),
}

/// The largest streamed body (a file upload): 64 TiB.
pub const MAX_STREAMED_BODY: u64 = 64 << 40;

/// Parses one request from the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed {
    parse_request_with(buf, |_, _, _| false)
}

/// Parses one request from the start of `buf`; a request for which `streamed(method, path,
/// content type)` is true is returned as soon as its head is complete ([`Parsed::Streamed`]), with a
/// body of any length up to [`MAX_STREAMED_BODY`].
pub fn parse_request_with(buf: &[u8], streamed: impl Fn(&str, &str, Option<&str>) -> bool) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Parsed::Error(HttpError::new(413, "request head larger than 8 KiB"));
            }
            return Parsed::Incomplete;
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Error(HttpError::new(413, "more than 32 header fields"));
        }
        Err(e) => {
            return Parsed::Error(HttpError {
                status: 400,
                message: alloc::format!("malformed request: {e}"),
            });
        }
    };
    if head_len > MAX_HEAD {
        return Parsed::Error(HttpError::new(413, "request head larger than 8 KiB"));
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Error(HttpError::new(400, "incomplete request line"));
    };
    let mut content_length: Option<u64> = None;
    let mut authorization = None;
    let mut content_type = None;
    let mut host = None;
    let mut connection_close = false;
    let mut connection_keep = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = core::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok())
            else {
                return Parsed::Error(HttpError::new(400, "Content-Length is not a number"));
            };
            if content_length.is_some_and(|c| c != n) {
                return Parsed::Error(HttpError::new(400, "conflicting Content-Length fields"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Error(HttpError::new(
                501,
                "Transfer-Encoding request bodies are not supported; send Content-Length",
            ));
        } else if h.name.eq_ignore_ascii_case("expect") {
            // RFC 9110 10.1.1: 100-continue is the only expectation there is.
            if !core::str::from_utf8(h.value).is_ok_and(|v| v.trim().eq_ignore_ascii_case("100-continue")) {
                return Parsed::Error(HttpError::new(417, "the only expectation supported is 100-continue"));
            }
            expect_continue = true;
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(h.value.to_vec());
        } else if h.name.eq_ignore_ascii_case("host") {
            // Used to build redirects: only letters, digits and the punctuation of names and
            // addresses, so nothing can be injected into a header.
            host = core::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| {
                    !v.is_empty()
                        && v.len() <= 261
                        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
                })
                .map(String::from);
        } else if h.name.eq_ignore_ascii_case("content-type") {
            content_type = core::str::from_utf8(h.value).ok().map(|s| s.trim().to_string());
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = core::str::from_utf8(h.value).unwrap_or("");
            for token in v.split(',') {
                let t = token.trim();
                if t.eq_ignore_ascii_case("close") {
                    connection_close = true;
                } else if t.eq_ignore_ascii_case("keep-alive") {
                    connection_keep = true;
                }
            }
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let keep_alive = if version == 0 { connection_keep && !connection_close } else { !connection_close };
    let mut request = Request {
        method: method.to_string(),
        path,
        query,
        authorization,
        content_type,
        host,
        body: Vec::new(),
        keep_alive,
        expect_continue,
        peer: None,
    };
    if streamed(&request.method, &request.path, request.content_type.as_deref()) {
        let Some(len) = content_length else {
            return Parsed::Error(HttpError::new(411, "an upload needs a Content-Length"));
        };
        if len > MAX_STREAMED_BODY {
            return Parsed::Error(HttpError::new(413, "upload larger than 64 TiB"));
        }
        return Parsed::Streamed(request, head_len, len);
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY as u64 {
        return Parsed::Error(HttpError::new(413, "request body larger than 16 KiB"));
    }
    let total = head_len + body_len as usize;
    if buf.len() < total {
        return Parsed::Incomplete;
    }
    request.body = buf[head_len..total].to_vec();
    Parsed::Complete(request, total)
}

/// A response ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra header lines, without CRLF.
    pub headers: Vec<String>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, body: String) -> Self {
        Response { status, content_type: "application/json", body: body.into_bytes(), headers: Vec::new() }
    }

    /// A JSON error `{"error": {"code": status, "message": ...}}`.
    pub fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": { "code": status, "message": message } });
        Response::json(status, body.to_string())
    }

    /// Serializes status line, headers and body.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = self.head(self.body.len() as u64, keep_alive);
        out.extend_from_slice(&self.body);
        out
    }

    /// Serializes the status line and headers of an answer whose `len`-byte body follows separately
    /// (a download); `body` is not sent.
    pub fn head(&self, len: u64, keep_alive: bool) -> Vec<u8> {
        let mut head = String::new();
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nServer: Ember/{}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: {}\r\n",
            self.status,
            reason(self.status),
            env!("CARGO_PKG_VERSION"),
            self.content_type,
            len,
            if keep_alive { "keep-alive" } else { "close" }
        );
        for h in &self.headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

/// The reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        301 => "Moved Permanently",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        411 => "Length Required",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_header_is_kept_only_when_it_cannot_inject_anything() {
        let host = |h: &str| complete(format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes()).0.host;
        assert_eq!(host("esx01.lab:8443").as_deref(), Some("esx01.lab:8443"));
        assert_eq!(host("[2001:db8::1]").as_deref(), Some("[2001:db8::1]"));
        assert_eq!(host("evil.example/x?"), None);
        assert_eq!(host("a b"), None);
        assert_eq!(host(&"a".repeat(300)), None);
    }

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse_request(buf) {
            Parsed::Complete(r, n) => (r, n),
            other => panic!("{other:?}"),
        }
    }

    fn error(buf: &[u8]) -> u16 {
        match parse_request(buf) {
            Parsed::Error(e) => e.status,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn simple_get_and_pipelining() {
        let two = b"GET /api/v1/host?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Basic abc\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let (r, n) = complete(two);
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/v1/host");
        assert_eq!(r.query.as_deref(), Some("x=1"));
        assert_eq!(r.authorization.as_deref(), Some(&b"Basic abc"[..]));
        assert!(r.keep_alive);
        let (r2, _) = complete(&two[n..]);
        assert_eq!(r2.path, "/");
    }

    #[test]
    fn body_framing() {
        let req = b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nhel";
        assert_eq!(parse_request(req), Parsed::Incomplete);
        let mut full = req.to_vec();
        full.extend_from_slice(b"lo");
        let (r, n) = complete(&full);
        assert_eq!(r.body, b"hello");
        assert_eq!(n, full.len());
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
    }

    #[test]
    fn a_streamed_request_is_returned_at_its_head_with_any_body_length() {
        let up = |m: &str, p: &str, ct: Option<&str>| {
            m == "PUT" && p.starts_with("/up/") && ct == Some("application/octet-stream")
        };
        let head = b"PUT /up/a HTTP/1.1\r\nContent-Type: application/octet-stream\r\nContent-Length: 3000000000\r\n\r\nabc";
        let Parsed::Streamed(r, n, len) = parse_request_with(head, up) else { panic!() };
        assert_eq!((r.path.as_str(), n, len, r.body.len()), ("/up/a", head.len() - 3, 3_000_000_000, 0));
        // Without a length, or longer than the limit: refused at the head.
        let no_len = b"PUT /up/a HTTP/1.1\r\nContent-Type: application/octet-stream\r\n\r\n";
        assert!(matches!(parse_request_with(no_len, up), Parsed::Error(e) if e.status == 411));
        let huge = b"PUT /up/a HTTP/1.1\r\nContent-Type: application/octet-stream\r\nContent-Length: 99999999999999999\r\n\r\n";
        assert!(matches!(parse_request_with(huge, up), Parsed::Error(e) if e.status == 413));
        let with_expect = b"PUT /up/a HTTP/1.1\r\nContent-Type: application/octet-stream\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        assert!(
            matches!(parse_request_with(with_expect, up), Parsed::Streamed(r, _, 3) if r.expect_continue)
        );
        let odd = b"PUT /up/a HTTP/1.1\r\nExpect: something-else\r\nContent-Length: 3\r\n\r\n";
        assert!(matches!(parse_request_with(odd, up), Parsed::Error(e) if e.status == 417));
        // The same request not streamed is held to the body limit.
        assert!(matches!(parse_request(head), Parsed::Error(e) if e.status == 413));
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").0.keep_alive);
        assert!(!complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").0.keep_alive);
    }

    #[test]
    fn bad_and_oversized_requests() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n"), Parsed::Incomplete);
        assert_eq!(error(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
        assert_eq!(error(b"\x00\x01\x02 garbage\r\n\r\n"), 400);
        assert_eq!(error(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(error(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), 400);
        assert_eq!(error(b"PUT / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n"), 413);
        assert_eq!(error(b"PUT / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n"), 413);
        assert_eq!(error(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 501);
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(core::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(error(&big), 413);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..40 {
            many.extend_from_slice(alloc::format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(error(&many), 413);
    }

    #[test]
    fn every_prefix_of_a_valid_request_is_incomplete_not_an_error() {
        let req = b"PUT /api/v1/network/management HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n{\"a\"";
        for i in 0..req.len() {
            assert_eq!(parse_request(&req[..i]), Parsed::Incomplete, "prefix {i}");
        }
    }

    #[test]
    fn response_serialization() {
        let r = Response::error(404, "no such resource: /x");
        let bytes = r.to_bytes(false);
        let text = core::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains(&alloc::format!("Content-Length: {}\r\n", r.body.len())));
        assert!(text.ends_with("{\"error\":{\"code\":404,\"message\":\"no such resource: /x\"}}"));
    }
}
