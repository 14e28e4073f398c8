//! Network helpers for whole-system tests: an HTTP/1.1 client over HTTPS (the management API) and
//! over plain TCP (port 80's redirects), free loopback ports, network
//! namespaces with a tap device for the appliance, a real DHCP/DNS server (dnsmasq) inside them, ping,
//! and raw frames sent from inside a namespace.
//!
//! Namespaces are named after the test and the process id so parallel tests and left-overs of an
//! earlier crashed run never collide; they are deleted (with everything in them) on drop.

use base64::Engine;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// The head (status line and header lines).
    pub head: String,
    pub body: String,
    /// Over HTTPS: the SHA-256 fingerprint of the server's certificate (`AB:CD:...`).
    pub certificate_sha256: Option<String>,
}

impl HttpResponse {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Reads one response from `s` (framed by Content-Length, or by EOF).
pub fn read_response(s: &mut impl Read) -> std::io::Result<HttpResponse> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if let Some(len) = len {
                if got.len() >= end + 4 + len {
                    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                    let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).into_owned();
                    return Ok(HttpResponse { status, head, body, certificate_sha256: None });
                }
            }
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed after {} bytes: {:?}", got.len(), String::from_utf8_lossy(&got)),
            ));
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// Builds a request.
pub fn request_bytes(method: &str, path: &str, auth: Option<(&str, &str)>, body: Option<&str>) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: ember\r\nConnection: close\r\n");
    if let Some((u, p)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        r.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    if let Some(b) = body {
        r.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()));
    } else if method != "GET" && method != "HEAD" {
        // Changes need the JSON content type even without a body (no cross-site requests).
        r.push_str("Content-Type: application/json\r\nContent-Length: 0\r\n\r\n");
    } else {
        r.push_str("\r\n");
    }
    r.into_bytes()
}

/// Sends raw bytes on a new plain TCP connection and reads one response (port 80).
pub fn exchange_plain(addr: SocketAddr, raw: &[u8], timeout: Duration) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(raw)?;
    read_response(&mut s)
}

/// Sends raw bytes on a new HTTPS connection and reads one response. Any certificate is accepted
/// (a test cannot know a new host's self-signed one beforehand); its fingerprint is in the answer
/// for the test to compare with what the host shows.
pub fn exchange(addr: SocketAddr, raw: &[u8], timeout: Duration) -> std::io::Result<HttpResponse> {
    let mut tls = tls_connect(addr, timeout)?;
    tls.write_all(raw)?;
    let mut r = read_response(&mut tls)?;
    r.certificate_sha256 = tls.certificate_sha256();
    Ok(r)
}

/// An HTTPS connection to the appliance (see [`exchange`] for what is checked).
pub struct TlsStream {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    seen: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl TlsStream {
    /// The fingerprint of the certificate the server presented (after the handshake).
    pub fn certificate_sha256(&self) -> Option<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// Opens an HTTPS connection (the handshake happens with the first write or read).
pub fn tls_connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let verifier = std::sync::Arc::new(AnyCertificate { seen: seen.clone() });
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(ring()))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), name).map_err(std::io::Error::other)?;
    Ok(TlsStream { stream: rustls::StreamOwned::new(conn, tcp), seen })
}

/// rustls' ring provider: it builds with a C compiler alone (aws-lc-rs, the default, is larger to
/// build); ring's lack of post-quantum key exchange does not matter to these tests.
#[allow(deprecated)]
fn ring() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Accepts every server certificate whose signatures check out, and remembers its fingerprint.
#[derive(Debug)]
struct AnyCertificate {
    seen: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(fingerprint(end_entity));
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = ring().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = ring().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        ring().signature_verification_algorithms.supported_schemes()
    }
}

/// `AB:CD:...`: the SHA-256 of a certificate, as Ember shows it.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// One request on a new connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&str>,
) -> HttpResponse {
    exchange(addr, &request_bytes(method, path, auth, body), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// Retries `GET path` until the appliance answers (the port forward accepts before the guest listens).
pub fn wait_for_http(addr: SocketAddr, timeout: Duration) -> HttpResponse {
    let start = Instant::now();
    loop {
        match exchange(addr, &request_bytes("GET", "/", None, None), Duration::from_secs(10)) {
            Ok(r) => return r,
            Err(e) if start.elapsed() > timeout => {
                panic!("no HTTP answer from {addr} within {timeout:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn run(cmd: &[&str]) -> (bool, String) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn must(cmd: &[&str]) -> String {
    let (ok, text) = run(cmd);
    assert!(ok, "{cmd:?} failed: {text}");
    text
}

/// A network namespace with a tap device `tap0` (the appliance's cable) and loopback up.
pub struct NetNs {
    pub name: String,
    children: Vec<Child>,
}

impl NetNs {
    /// Creates `ember-<tag>-<pid>` with `tap0` up.
    pub fn new(tag: &str) -> NetNs {
        let name = format!("ember-{tag}-{}", std::process::id());
        let _ = run(&["ip", "netns", "del", &name]);
        must(&["ip", "netns", "add", &name]);
        let ns = NetNs { name, children: Vec::new() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.exec(&["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ns.ip(&["link", "set", "tap0", "up"]);
        ns
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut cmd = vec!["ip", "-n", &self.name];
        cmd.extend_from_slice(args);
        must(&cmd)
    }

    /// Runs a command inside the namespace; panics on failure.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut cmd = vec!["ip", "netns", "exec", &self.name];
        cmd.extend_from_slice(args);
        must(&cmd)
    }

    /// Runs a command inside the namespace; returns success and output.
    pub fn try_exec(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = vec!["ip", "netns", "exec", &self.name];
        cmd.extend_from_slice(args);
        run(&cmd)
    }

    /// Adds a VLAN sub-interface of `tap0` for VLAN `id`, with address `cidr`, and brings it up.
    ///
    /// The test machines' kernels have no 8021q module (`ip link add ... type vlan` fails with
    /// "Unknown device type"), so the sub-interface is a tap device `vlan<id>` fed by a small relay
    /// (`tests/tools/vlan_relay.py`) that strips and adds the tag - what the kernel's VLAN device does.
    pub fn add_vlan(&mut self, id: u16, cidr: &str) -> String {
        let dev = format!("vlan{id}");
        let relay = crate::workspace().join("tests/tools/vlan_relay.py");
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "python3",
                relay.to_str().unwrap(),
                "tap0",
                &id.to_string(),
                &dev,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut ready = [0u8; 6];
        child.stdout.take().unwrap().read_exact(&mut ready).expect("the VLAN relay did not start");
        assert_eq!(&ready, b"ready\n");
        self.children.push(child);
        self.ip(&["addr", "add", cidr, "dev", &dev]);
        self.ip(&["link", "set", &dev, "up"]);
        dev
    }

    /// Starts dnsmasq on `dev` handing out `range` (`first,last,netmask,lease`) with this host as
    /// router and DNS server; `names` are extra `name/address` DNS records. Returns its index for
    /// [`NetNs::stop`].
    pub fn start_dnsmasq(
        &mut self,
        dev: &str,
        server: &str,
        range: &str,
        names: &[&str],
        dir: &std::path::Path,
    ) -> usize {
        let lease = dir.join(format!("{dev}.leases"));
        let log = std::fs::File::create(dir.join(format!("dnsmasq-{dev}.log"))).unwrap();
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.name.clone(),
            "dnsmasq".into(),
            "--keep-in-foreground".into(),
            "--log-dhcp".into(),
            "--log-facility=-".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--user=root".into(),
            "--bind-interfaces".into(),
            format!("--interface={dev}"),
            "--except-interface=lo".into(),
            format!("--dhcp-range={range}"),
            format!("--dhcp-option=option:router,{server}"),
            format!("--dhcp-option=option:dns-server,{server}"),
            format!("--dhcp-leasefile={}", lease.display()),
            "--pid-file=".into(),
        ];
        for n in names {
            args.push(format!("--address=/{n}"));
        }
        self.spawn_logged(&args, log)
    }

    /// Starts `ip <args>` (a server run with `netns exec`) with its output in `log`; returns its
    /// index for [`NetNs::stop`].
    fn spawn_logged(&mut self, args: &[String], log: std::fs::File) -> usize {
        let child = Command::new("ip")
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dnsmasq (run scripts/setup)");
        self.children.push(child);
        self.children.len() - 1
    }

    /// Starts dnsmasq sending IPv6 router advertisements on `dev` for the /64 prefix of the address
    /// `dev` has in it (`prefix` such as `2001:db8:1::`; addresses by SLAAC, no DHCPv6). Returns its
    /// index for [`NetNs::stop`].
    pub fn start_router_advertisements(&mut self, dev: &str, prefix: &str, dir: &std::path::Path) -> usize {
        let log = std::fs::File::create(dir.join(format!("dnsmasq-ra-{dev}.log"))).unwrap();
        let args = [
            "netns",
            "exec",
            &self.name,
            "dnsmasq",
            "--keep-in-foreground",
            "--log-facility=-",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--port=0",
            "--bind-interfaces",
            &format!("--interface={dev}"),
            "--except-interface=lo",
            "--enable-ra",
            &format!("--dhcp-range={prefix},ra-only,64"),
            "--pid-file=",
        ]
        .map(String::from);
        self.spawn_logged(&args, log)
    }

    /// Stops a server started in this namespace.
    pub fn stop(&mut self, index: usize) {
        let c = &mut self.children[index];
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Pings `addr` from inside the namespace: true if any of `count` echo requests was answered.
    pub fn ping(&self, addr: &str, count: u32) -> bool {
        self.try_exec(&["ping", "-c", &count.to_string(), "-W", "3", "-i", "0.5", addr]).0
    }

    /// Runs `f` on a thread that has entered this namespace (for TCP connections from the test).
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap()
    }

    /// Sends raw Ethernet frames out of `dev` (hex strings) from inside the namespace.
    pub fn send_frames(&self, dev: &str, frames_hex: &[String]) {
        let script = format!(
            "import socket,sys\ns=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\ns.bind(('{dev}',0))\n\
             for line in sys.stdin:\n    line=line.strip()\n    if line:\n        s.send(bytes.fromhex(line))\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "python3", "-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .expect("python3");
        {
            let stdin = child.stdin.as_mut().unwrap();
            for f in frames_hex {
                writeln!(stdin, "{f}").unwrap();
            }
        }
        assert!(child.wait().unwrap().success(), "sending raw frames failed");
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// A plain HTTP server on a loopback port (reached from QEMU user networking as 10.0.2.2) that gives
/// scripted answers: the n-th request gets the n-th `(status, body)`, later ones the last. It records
/// every request line and stops when dropped.
pub struct ScriptedHttp {
    pub port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ScriptedHttp {
    pub fn start(answers: Vec<(u16, String)>) -> ScriptedHttp {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen, halt) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let n = {
                    let mut r = seen.lock().unwrap();
                    r.push(text);
                    r.len()
                };
                let (status, body) = &answers[(n - 1).min(answers.len() - 1)];
                let reason = match status {
                    200 => "OK",
                    404 => "Not Found",
                    500 => "Internal Server Error",
                    503 => "Service Unavailable",
                    _ => "Status",
                };
                let _ = s.write_all(
                    format!(
                        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        ScriptedHttp { port, requests, stop }
    }

    /// The requests received so far (heads only).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for ScriptedHttp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An HTTPS server on a loopback port (Python's `ssl` and `http.server`, OpenSSL underneath: a
/// TLS implementation independent of Ember's) answering every GET with `body`. The requested
/// paths are recorded.
pub struct HttpsServer {
    pub port: u16,
    child: Child,
    paths: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

const HTTPS_SERVER: &str = r#"
import http.server, ssl, sys
cert, key, body, version = sys.argv[1], sys.argv[2], sys.argv[3].encode(), sys.argv[4]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("GET " + self.path, flush=True)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
if version == "1.2":
    context.maximum_version = ssl.TLSVersion.TLSv1_2
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

impl HttpsServer {
    /// Serves `body` with the certificate and key in `cert` and `key` (PEM files), over TLS 1.3.
    pub fn start(cert: &std::path::Path, key: &std::path::Path, body: &str) -> HttpsServer {
        Self::start_with(cert, key, body, false)
    }

    /// [`HttpsServer::start`], at most TLS 1.2 when `tls12_only`.
    pub fn start_with(
        cert: &std::path::Path,
        key: &std::path::Path,
        body: &str,
        tls12_only: bool,
    ) -> HttpsServer {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .args(["-c", HTTPS_SERVER])
            .arg(cert)
            .arg(key)
            .arg(body)
            .arg(if tls12_only { "1.2" } else { "1.3" })
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the HTTPS test server");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = lines
            .next()
            .and_then(|l| l.ok())
            .and_then(|l| l.trim().parse::<u16>().ok())
            .expect("the HTTPS test server says its port");
        let paths = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = paths.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                seen.lock().unwrap().push(line);
            }
        });
        HttpsServer { port, child, paths }
    }

    /// The requests answered so far (`GET <path>`).
    pub fn requests(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
