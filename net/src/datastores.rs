//! The disk and datastore resources of the management API:
//! - `GET /api/v1/disks` - every disk: name, driver, model, serial, size, block size, what uses it.
//! - `GET /api/v1/datastores` - every datastore: name, disk, UUID, capacity, free and provisioned bytes.
//! - `GET /api/v1/datastores/{name}` - one datastore.
//! - `POST /api/v1/datastores` `{"name", "disk", "overwrite"}` - makes a datastore on a whole disk; a
//!   disk holding anything is refused (`409`, saying what is on it) unless `overwrite` is true.
//! - `PUT /api/v1/datastores/{name}` `{"name"}` - renames it.
//! - `DELETE /api/v1/datastores/{name}` - removes it (its partition and superblocks).
//!
//! Names in paths are percent-decoded (`datastore1%20(2)`). The host's disks are behind
//! [`HostDisks`] (`ember_storage::disks`), which keeps every rule; this module maps requests and
//! errors to HTTP.

use crate::api::{bad_request, json_body, Reply};
use crate::http::{Request, Response};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ember_storage::disks::{DatastoreReport, DiskReport, DisksError, HostDisks};
use serde_json::{json, Value};

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
            let hex = core::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Answers a request below `/api/v1/disks` or `/api/v1/datastores`, or `None` for other paths.
pub fn handle(disks: &mut HostDisks, req: &Request) -> Option<Reply> {
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
    if raw.contains('/') {
        return Some(Reply::Now(Response::error(404, "no such resource below a datastore")));
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
