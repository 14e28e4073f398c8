//! The disk and datastore resources of the management API:
//! - `GET /api/v1/disks` - every disk: name, driver, model, serial, size, block size, what uses it.
//! - `GET /api/v1/datastores` - every datastore: name, disk, UUID, capacity, free and provisioned bytes.
//! - `GET /api/v1/datastores/{name}` - one datastore.
//! - `POST /api/v1/datastores` `{"name", "disk", "overwrite"}` - makes a datastore on a whole disk; a
//!   disk holding anything is refused (`409`, saying what is on it) unless `overwrite` is true.
//! - `PUT /api/v1/datastores/{name}` `{"name"}` - renames it.
//! - `DELETE /api/v1/datastores/{name}` - removes it (its partition and superblocks).
//! - `GET /api/v1/datastores/{name}/files/{path}` - a directory's entries as JSON, or a file's bytes
//!   (streamed as the client reads them: [`Download`]).
//! - `PUT /api/v1/datastores/{name}/files/{path}` with `Content-Type: application/octet-stream` - an
//!   upload, streamed to the datastore as it arrives ([`Upload`]): into a hidden file beside the
//!   target, which replaces the target in one commit when the last byte is written, so a failed or
//!   cut-off upload leaves the old file; parent directories are made; the answer carries the SHA-256
//!   of what was stored.
//! - `POST /api/v1/datastores/{name}/files/{path}` `{"type": "directory"}` - makes a directory (and
//!   its parents).
//! - `DELETE /api/v1/datastores/{name}/files/{path}` - a file or an empty directory.
//!
//! Names in paths are percent-decoded (`datastore1%20(2)`). The host's disks are behind
//! [`HostDisks`] (`ember_storage::disks`), which keeps every rule; this module maps requests and
//! errors to HTTP.

use crate::api::{authenticate, bad_request, json_body, Reply};
use crate::host::HostState;
use crate::http::{Request, Response};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use ember_storage::datastore::{DsError, InodeKind};
use ember_storage::disks::{DatastoreReport, DiskReport, DisksError, HostDisks, MountId, UPLOAD_PREFIX};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Bytes an upload collects before writing them (all-zero pieces are not written: thin).
const UPLOAD_PIECE: usize = 32 * 1024;
/// Bytes a download reads per refill of the connection's output.
pub const DOWNLOAD_PIECE: usize = 32 * 1024;

fn disk_json(d: &DiskReport) -> Value {
    json!({
        "name": d.name,
        "driver": d.driver,
        "model": d.model,
        "serial": d.serial,
        "size_bytes": d.size_bytes,
        "block_size": d.block_size,
        "used_by": d.used_by.to_string(),
    })
}

fn datastore_json(d: &DatastoreReport) -> Value {
    json!({
        "name": d.name,
        "disk": d.disk,
        "uuid": d.uuid,
        "capacity_bytes": d.capacity_bytes,
        "free_bytes": d.free_bytes,
        "provisioned_bytes": d.provisioned_bytes,
        "block_size": d.block_size,
    })
}

fn not_allowed(allow: &str) -> Reply {
    let mut r = Response::error(405, "method not allowed on this resource");
    r.headers.push(format!("Allow: {allow}"));
    Reply::Now(r)
}

fn refused(e: &DisksError) -> Reply {
    let status = match e {
        DisksError::NoSuchDisk(_) | DisksError::NoSuchDatastore(_) => 404,
        DisksError::NameTaken(_) | DisksError::DiskInUse { .. } | DisksError::Busy { .. } => 409,
        DisksError::BadName(_) | DisksError::Unsuitable { .. } => 400,
        DisksError::Failed(_) => 500,
    };
    Reply::Now(Response::error(status, &e.to_string()))
}

/// `%XX` sequences decoded; `None` for a bad escape or text that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(core::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Answers a request below `/api/v1/disks` or `/api/v1/datastores`, or `None` for other paths;
/// `now` is the time of day (seconds since 1970).
pub fn handle(disks: &mut HostDisks, req: &Request, now: u64) -> Option<Reply> {
    let method = req.method.as_str();
    if req.path == "/api/v1/disks" {
        if method != "GET" {
            return Some(not_allowed("GET"));
        }
        let list: Vec<Value> = disks.disks().iter().map(disk_json).collect();
        return Some(Reply::Now(Response::json(200, json!({ "disks": list }).to_string())));
    }
    let rest = req.path.strip_prefix("/api/v1/datastores")?;
    if rest.is_empty() || rest == "/" {
        return Some(match method {
            "GET" => {
                let list: Vec<Value> = disks.datastores().iter().map(datastore_json).collect();
                Reply::Now(Response::json(200, json!({ "datastores": list }).to_string()))
            }
            "POST" => create(disks, req),
            _ => not_allowed("GET, POST"),
        });
    }
    let raw = rest.strip_prefix('/')?;
    if let Some((raw_name, sub)) = raw.split_once('/') {
        let file = match sub {
            "files" => Some(""),
            _ => sub.strip_prefix("files/"),
        };
        let (Some(name), Some(path)) = (percent_decode(raw_name), file.and_then(percent_decode)) else {
            return Some(Reply::Now(Response::error(404, "no such resource below a datastore")));
        };
        if let Err(r) = not_hidden(&path) {
            return Some(Reply::Now(r));
        }
        return Some(files(disks, req, &name, &path, now));
    }
    let Some(name) = percent_decode(raw) else {
        return Some(bad_request("path", "bad percent-encoding in the datastore name"));
    };
    Some(match method {
        "GET" => match disks.datastore(&name) {
            Some(d) => Reply::Now(Response::json(200, datastore_json(&d).to_string())),
            None => refused(&DisksError::NoSuchDatastore(name)),
        },
        "PUT" => rename(disks, &name, req),
        "DELETE" => match disks.remove(&name, None) {
            Ok(()) => Reply::Now(Response::json(200, json!({ "removed": name }).to_string())),
            Err(e) => refused(&e),
        },
        _ => not_allowed("GET, PUT, DELETE"),
    })
}

fn create(disks: &mut HostDisks, req: &Request) -> Reply {
    let body = match json_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(k) = body.keys().find(|k| !matches!(k.as_str(), "name" | "disk" | "overwrite")) {
        return bad_request(k, "unknown field (expected name, disk, overwrite)");
    }
    let Some(name) = body.get("name").and_then(Value::as_str) else {
        return bad_request("name", "expected a string");
    };
    let Some(disk) = body.get("disk").and_then(Value::as_str) else {
        return bad_request("disk", "expected a string (a disk name from GET /api/v1/disks)");
    };
    let overwrite = match body.get("overwrite") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return bad_request("overwrite", "expected true or false"),
    };
    match disks.create(name, disk, overwrite) {
        Ok(d) => Reply::Now(Response::json(201, datastore_json(&d).to_string())),
        Err(e) => refused(&e),
    }
}

fn rename(disks: &mut HostDisks, name: &str, req: &Request) -> Reply {
    let body = match json_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(k) = body.keys().find(|k| k.as_str() != "name") {
        return bad_request(k, "unknown field (expected name)");
    }
    let Some(new) = body.get("name").and_then(Value::as_str) else {
        return bad_request("name", "expected a string");
    };
    match disks.rename(name, new) {
        Ok(d) => Reply::Now(Response::json(200, datastore_json(&d).to_string())),
        Err(e) => refused(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("datastore1%20(2)").as_deref(), Some("datastore1 (2)"));
        assert_eq!(percent_decode("%C3%BC").as_deref(), Some("ü"));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }
}

/// The time of day, seconds since 1970 (0 when the firmware gave no clock).
pub fn unix_now(host: &HostState) -> u64 {
    host.unix_now().unwrap_or(0)
}

/// How a file system error is answered.
fn fs_refused(datastore: &str, path: &str, e: &DsError) -> Response {
    let status = match e {
        DsError::NotFound(_) => 404,
        DsError::Exists(_)
        | DsError::NotADirectory(_)
        | DsError::IsADirectory(_)
        | DsError::NotEmpty(_)
        | DsError::Busy { .. } => 409,
        DsError::BadName(_) | DsError::Unsupported(_) => 400,
        DsError::NoSpace { .. } | DsError::MetadataFull { .. } | DsError::TooManyFiles => 507,
        DsError::TooLarge(_) => 413,
        DsError::Failed(_) => 503,
        DsError::Io(_) | DsError::Damaged(_) | DsError::NotADatastore { .. } => 500,
    };
    Response::error(status, &format!("[{datastore}] {path}: {e}"))
}

fn kind_name(k: InodeKind) -> &'static str {
    match k {
        InodeKind::Directory => "directory",
        InodeKind::File => "file",
    }
}

/// The `files` resources of one datastore (everything but uploads, which the server streams);
/// `now` is the time of day (seconds since 1970) for modification times.
fn files(disks: &mut HostDisks, req: &Request, name: &str, path: &str, now: u64) -> Reply {
    let done = |r: Result<Result<Response, DsError>, DisksError>| match r {
        Ok(Ok(resp)) => Reply::Now(resp),
        Ok(Err(e)) => Reply::Now(fs_refused(name, path, &e)),
        Err(e) => refused(&e),
    };
    match req.method.as_str() {
        "GET" => {
            let mount = disks.mount_id(name).unwrap_or(0);
            let r = disks.with(name, |ds, _| {
                let e = ds.stat(path)?;
                if e.kind == InodeKind::File {
                    return Ok(Err(Download {
                        datastore: name.to_string(),
                        mount,
                        id: e.id,
                        offset: 0,
                        size: e.size,
                    }));
                }
                // Written entry by entry (no JSON tree of the whole directory in memory).
                let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
                let mut out = format!("{{\"datastore\":{},\"path\":{},\"entries\":[", quoted(name), quoted(path));
                let mut first = true;
                for e in ds.list(path)?.iter().filter(|e| !e.name.starts_with(UPLOAD_PREFIX)) {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    out.push_str(&format!(
                        "{{\"name\":{},\"type\":\"{}\",\"size_bytes\":{},\"allocated_bytes\":{},\"modified\":{}}}",
                        quoted(&e.name),
                        kind_name(e.kind),
                        e.size,
                        e.allocated,
                        e.mtime
                    ));
                }
                out.push_str("]}");
                Ok(Ok(out))
            });
            match r {
                Ok(Ok(Ok(listing))) => Reply::Now(Response::json(200, listing)),
                Ok(Ok(Err(d))) => {
                    let head = Response {
                        status: 200,
                        content_type: "application/octet-stream",
                        body: Vec::new(),
                        headers: Vec::new(),
                    };
                    Reply::Download(head, Box::new(d))
                }
                Ok(Err(e)) => Reply::Now(fs_refused(name, path, &e)),
                Err(e) => refused(&e),
            }
        }
        "DELETE" => done(disks.with(name, |ds, dev| {
            ds.remove(path)?;
            ds.commit(dev)?;
            Ok(Response::json(200, json!({ "removed": path }).to_string()))
        })),
        "POST" => {
            let body = match json_body(req) {
                Ok(b) => b,
                Err(r) => return r,
            };
            if body.len() != 1 || body.get("type").and_then(Value::as_str) != Some("directory") {
                return bad_request("body", "expected {\"type\": \"directory\"}");
            }
            done(disks.with(name, |ds, dev| {
                ds.mkdir_all(path, now)?;
                ds.commit(dev)?;
                Ok(Response::json(
                    201,
                    json!({ "datastore": name, "path": path, "type": "directory" }).to_string(),
                ))
            }))
        }
        "PUT" => Reply::Now(Response::error(415, "an upload needs Content-Type: application/octet-stream")),
        _ => not_allowed("GET, PUT, POST, DELETE"),
    }
}

/// Refuses a path with a component in Ember's hidden upload namespace.
fn not_hidden(path: &str) -> Result<(), Response> {
    if path.split('/').any(|c| c.starts_with(UPLOAD_PREFIX)) {
        return Err(Response::error(400, "path: names starting with .ember-upload- are Ember's own"));
    }
    Ok(())
}

/// Whether a request is an upload, whose body the server streams to [`begin_upload`].
pub fn is_upload(method: &str, path: &str, content_type: Option<&str>) -> bool {
    method == "PUT"
        && path.starts_with("/api/v1/datastores/")
        && path.contains("/files/")
        && content_type.is_some_and(|c| c.to_ascii_lowercase().starts_with("application/octet-stream"))
}

/// A file being sent to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    datastore: String,
    /// The datastore's mount: a rename or a new datastore of the same name never changes what is sent.
    mount: MountId,
    id: u64,
    offset: u64,
    /// The length promised in the answer's head.
    pub size: u64,
}

impl Download {
    /// The next piece of the file (empty when all was sent), or why the rest cannot be sent (the
    /// file went away or shrank: the connection must end, as its length was promised).
    pub fn next(&mut self, disks: &mut HostDisks) -> Result<Vec<u8>, String> {
        let want = (self.size - self.offset).min(DOWNLOAD_PIECE as u64) as usize;
        if want == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; want];
        let (id, offset) = (self.id, self.offset);
        let got = disks
            .with_mount(self.mount, |ds, dev| ds.read(dev, id, offset, &mut buf))
            .ok_or_else(|| format!("datastore {:?} was removed", self.datastore))?
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if got < want {
            return Err(String::from("the file shrank while it was being sent"));
        }
        self.offset += got as u64;
        Ok(buf)
    }

    /// Whether every byte was handed out.
    pub fn done(&self) -> bool {
        self.offset >= self.size
    }
}

/// An upload in progress.
pub struct Upload {
    datastore: String,
    /// The datastore's mount (as [`Download::mount`]).
    mount: MountId,
    path: String,
    temp: String,
    id: u64,
    offset: u64,
    remaining: u64,
    piece: Vec<u8>,
    sha: Sha256,
    now: u64,
}

impl core::fmt::Debug for Upload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Upload([{}] {} at {}, {} to go)", self.datastore, self.path, self.offset, self.remaining)
    }
}

/// Starts an upload of `len` bytes (the request's head is all that was read): checks the
/// credentials, the datastore, the path and the free space, and makes the hidden file it goes
/// into. An error is the answer to send (the connection then ends: its body was not read).
pub fn begin_upload(host: &mut HostState, req: &Request, len: u64, now_ms: u64) -> Result<Upload, Response> {
    authenticate(host, req, now_ms)?;
    let now = unix_now(host);
    let raw = req.path.strip_prefix("/api/v1/datastores/").unwrap_or("");
    let parsed = raw.split_once("/files/").map(|(n, p)| (percent_decode(n), percent_decode(p)));
    let Some((Some(name), Some(path))) = parsed else {
        return Err(Response::error(400, "path: expected /api/v1/datastores/{name}/files/{path}"));
    };
    let path = String::from(path.trim_matches('/'));
    let (dir, file) = match path.rsplit_once('/') {
        Some((d, f)) => (String::from(d), String::from(f)),
        None => (String::new(), path.clone()),
    };
    not_hidden(&path)?;
    let Some(mount) = host.disks.mount_id(&name) else {
        return Err(Response::error(404, &format!("no datastore named {name:?}")));
    };
    let started = host.disks.with(&name, |ds, dev| {
        if let Ok(e) = ds.stat(&path) {
            if e.kind == InodeKind::Directory {
                return Err(DsError::IsADirectory(path.clone()));
            }
        }
        ember_storage::datastore::check_name(&file).map_err(DsError::BadName)?;
        let free = ds.usage().free;
        if len > free {
            return Err(DsError::NoSpace { needed_bytes: len, free_bytes: free });
        }
        ds.mkdir_all(&dir, now)?;
        let mut n = 0u32;
        let temp = loop {
            let t = format!("{dir}/{UPLOAD_PREFIX}{:x}-{n}", now_ms);
            if ds.stat(&t).is_err() {
                break t;
            }
            n += 1;
        };
        let id = ds.create(&temp, now)?;
        let _ = dev;
        Ok((temp, id))
    });
    match started {
        Ok(Ok((temp, id))) => Ok(Upload {
            datastore: name,
            mount,
            path,
            temp,
            id,
            offset: 0,
            remaining: len,
            piece: Vec::new(),
            sha: Sha256::new(),
            now,
        }),
        Ok(Err(e)) => Err(fs_refused(&name, &path, &e)),
        Err(e) => Err(match refused(&e) {
            Reply::Now(r) => r,
            _ => Response::error(500, "unexpected answer"),
        }),
    }
}

impl Upload {
    /// Takes body bytes from the start of `bytes`; returns how many it took. An error is the answer
    /// to send (the upload is over and was removed).
    pub fn feed(&mut self, disks: &mut HostDisks, bytes: &[u8]) -> Result<usize, Response> {
        let mut used = 0;
        while used < bytes.len() && self.remaining > 0 {
            let room = UPLOAD_PIECE - self.piece.len();
            let n = room.min(bytes.len() - used).min(self.remaining.min(usize::MAX as u64) as usize);
            self.piece.extend_from_slice(&bytes[used..used + n]);
            self.sha.update(&bytes[used..used + n]);
            used += n;
            self.remaining -= n as u64;
            if self.piece.len() == UPLOAD_PIECE || self.remaining == 0 {
                self.write_piece(disks)?;
            }
        }
        Ok(used)
    }

    /// Whether the whole body has arrived.
    pub fn done(&self) -> bool {
        self.remaining == 0
    }

    fn write_piece(&mut self, disks: &mut HostDisks) -> Result<(), Response> {
        let (id, offset, now) = (self.id, self.offset, self.now);
        let piece = core::mem::take(&mut self.piece);
        let r = if piece.iter().all(|&b| b == 0) {
            Some(Ok(Ok(())))
        } else {
            disks.with_mount(self.mount, |ds, dev| ds.write(dev, id, offset, &piece, now))
        };
        self.offset += piece.len() as u64;
        self.piece = piece;
        self.piece.clear();
        match r {
            Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(fs_refused(&self.datastore, &self.path, &e)),
            Some(Err(e)) => Err(Response::error(500, &e.to_string())),
            None => Err(removed(&self.datastore)),
        }
    }

    /// The upload is complete: the hidden file takes the target's place and everything is
    /// committed; the answer carries the size and SHA-256 of what was stored. When it cannot take
    /// the target's place, it is removed and the answer says why.
    pub fn finish(self, disks: &mut HostDisks) -> Response {
        let (id, offset, now) = (self.id, self.offset, self.now);
        let (path, temp) = (self.path.clone(), self.temp.clone());
        let r = disks.with_mount(self.mount, |ds, dev| {
            ds.set_len(dev, id, offset, now)?;
            match ds.stat(&path) {
                // Only a file is replaced (the target may have changed while the upload ran).
                Ok(e) if e.kind == InodeKind::Directory => return Err(DsError::IsADirectory(path.clone())),
                Ok(_) => ds.remove(&path)?,
                Err(_) => {}
            }
            ds.rename(&temp, &path, now)?;
            ds.commit(dev)
        });
        let hex: String = self.sha.clone().finalize().iter().map(|b| format!("{b:02x}")).collect();
        let refusal =
            match r {
                Some(Ok(Ok(()))) => return Response::json(
                    201,
                    json!({ "datastore": self.datastore, "path": path, "size_bytes": offset, "sha256": hex })
                        .to_string(),
                ),
                Some(Ok(Err(e))) => fs_refused(&self.datastore, &path, &e),
                Some(Err(e)) => Response::error(500, &e.to_string()),
                None => removed(&self.datastore),
            };
        self.abort(disks);
        refusal
    }

    /// The upload ended early (or could not take the target's place): its hidden file is removed.
    pub fn abort(self, disks: &mut HostDisks) {
        let _ = disks.with_mount(self.mount, |ds, dev| {
            ds.remove(&self.temp)?;
            ds.commit(dev)
        });
    }
}

fn removed(datastore: &str) -> Response {
    Response::error(404, &format!("datastore {datastore:?} was removed during the transfer"))
}
