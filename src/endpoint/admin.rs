//! The endpoint's administration routes (with control on): what `offline`, `online`,
//! `replace`, `clear`, `spare add|remove` and `snapshot create` do with `--url`, in the
//! process serving the pool (a recovery point taken on an event: `POST /snapshot?name=N`).
//! Rebuilds they start run in that process's background driver.
//!
//! Owns: the routes' parameters (percent-decoded query values), how a device path given over
//! HTTP is opened (in the serving process, created at the pool's device size like the
//! command does), and the mapping of library errors to status codes. Must not touch: pool
//! internals (the public [`PoolRef`] surface only), the HTTP wire format.

use super::{Request, Response};
use crate::device::{canonical_path, open_device_for, Access, CreatedFiles};
use crate::error::Error;
use crate::pool::{ClearedState, PoolRef};
use std::path::{Path, PathBuf};

/// The administration routes, for the error text listing the routes.
pub(super) const ROUTES: &str =
    "POST /offline?device=NAME, POST /fault?device=NAME, POST /online?device=NAME[&path=PATH][&force], \
POST /replace?old=NAME&new=PATH[&force], POST /clear[?device=NAME][&path=PATH], \
POST /spare/add?device=PATH[&force], POST /spare/remove?spare=NAME, POST /snapshot?name=NAME, \
POST /snapshot/delete?name=NAME";

/// Whether `path` is one of the administration routes.
pub(super) fn is_admin_route(path: &str) -> bool {
    matches!(
        path,
        "/offline"
            | "/fault"
            | "/online"
            | "/replace"
            | "/clear"
            | "/spare/add"
            | "/spare/remove"
            | "/snapshot"
            | "/snapshot/delete"
    )
}

/// Answer one administration request (control is on).
pub(super) fn answer(pool: &PoolRef, request: &Request<'_>) -> Response {
    let outcome = match request.path {
        "/offline" => required(request, "device").and_then(|device| {
            pool.offline(&device).map_err(refused)?;
            Ok(format!("{device}: offline\n"))
        }),
        "/fault" => required(request, "device").and_then(|device| {
            pool.fault_member(&device).map_err(refused)?;
            Ok(format!("{device}: faulted\n"))
        }),
        "/online" => online(pool, request),
        "/replace" => replace(pool, request),
        "/clear" => clear(pool, request),
        "/spare/add" => spare_add(pool, request),
        "/spare/remove" => required(request, "spare").and_then(|spare| {
            let recorded = spare_named(pool, &spare).unwrap_or(spare.clone());
            pool.remove_spare(&recorded).map_err(refused)?;
            Ok(format!(
                "{spare}: removed from the spares (its label is left)\n"
            ))
        }),
        "/snapshot" => required(request, "name").and_then(|name| {
            let point = pool.create_recovery_point(&name).map_err(refused)?;
            Ok(format!(
                "recovery point {} taken at {} (sequence {})\n",
                point.name,
                crate::types::utc_time(point.created),
                point.sequence
            ))
        }),
        "/snapshot/delete" => required(request, "name").and_then(|name| {
            pool.request_delete(&name).map_err(refused)?;
            Ok(format!(
                "recovery point {name} deleted: its space comes back in the background \
                 (`status` shows the reclaim)\n"
            ))
        }),
        _ => Err(Response::text(404, "not found\n")),
    };
    match outcome {
        Ok(done) => Response::text(200, format!("{done}{}", pool.status())),
        Err(response) => response,
    }
}

fn online(pool: &PoolRef, request: &Request<'_>) -> Result<String, Response> {
    let device = required(request, "device")?;
    let status = pool.status();
    let member = status
        .devices
        .iter()
        .find(|d| {
            d.replacing.is_none()
                && (d.path == device
                    || d.uuid == device
                    || d.index.is_some_and(|i| i.to_string() == device)
                    || canonical_path(Path::new(&d.path)) == canonical_path(Path::new(&device)))
        })
        .ok_or_else(|| Response::text(404, format!("no data member {device:?} in this pool\n")))?;
    if member.state != "FAULTED" && member.state != "OFFLINE" {
        return Err(Response::text(409, format!("{device} is already online\n")));
    }
    let path = param(request, "path").map_or_else(|| PathBuf::from(&member.path), PathBuf::from);
    refuse_in_use(pool, &path)?;
    let handle = open_device_for(&path, Access::ReadWrite).map_err(refused)?;
    pool.online(&device, handle, flag(request, "force"))
        .map_err(refused)?;
    Ok(format!(
        "{device}: back from {}; resyncing in the background\n",
        path.display()
    ))
}

fn replace(pool: &PoolRef, request: &Request<'_>) -> Result<String, Response> {
    let old = required(request, "old")?;
    let new = PathBuf::from(required(request, "new")?);
    if let Some(spare) = spare_named(pool, &new.display().to_string()) {
        pool.replace_with_spare(&old, &spare).map_err(refused)?;
    } else {
        refuse_in_use(pool, &new)?;
        let mut files = CreatedFiles::new();
        let device = files
            .open_device(&new, Some(pool.device_bytes()))
            .map_err(refused)?;
        pool.replace(&old, device, flag(request, "force"))
            .map_err(refused)?;
        files.keep();
    }
    Ok(format!(
        "{old}: being replaced by {}; rebuilding in the background\n",
        new.display()
    ))
}

fn clear(pool: &PoolRef, request: &Request<'_>) -> Result<String, Response> {
    let device = param(request, "device");
    let path = param(request, "path").map(PathBuf::from);
    let mut said = String::new();
    for cleared in pool.clear(device.as_deref()).map_err(refused)? {
        match cleared.state {
            ClearedState::Online => {
                said.push_str(&format!("{}: errors cleared; ONLINE\n", cleared.path))
            }
            ClearedState::StillOffline => said.push_str(&format!(
                "{}: offline by administrator; left offline (bring it back with `online`)\n",
                cleared.path
            )),
            ClearedState::NeedsDevice { reason } => {
                let at = path.clone().unwrap_or_else(|| PathBuf::from(&cleared.path));
                let handle = open_device_for(&at, Access::ReadWrite).map_err(refused)?;
                pool.clear_with(&cleared.index.to_string(), handle)
                    .map_err(refused)?;
                said.push_str(&format!(
                    "{}: was faulted ({reason}); resyncing it from redundancy in the background\n",
                    at.display()
                ));
            }
        }
    }
    Ok(said)
}

fn spare_add(pool: &PoolRef, request: &Request<'_>) -> Result<String, Response> {
    let device = PathBuf::from(required(request, "device")?);
    refuse_in_use(pool, &device)?;
    let mut files = CreatedFiles::new();
    let handle = files
        .open_device(&device, Some(pool.device_bytes()))
        .map_err(refused)?;
    let domain = param(request, "domain").filter(|d| !d.is_empty());
    pool.add_spare(handle, flag(request, "force"), domain.as_deref())
        .map_err(refused)?;
    files.keep();
    Ok(format!("{}: added as a spare\n", device.display()))
}

/// The recorded path of the spare `name` names (its path, any path to the same file, or its
/// UUID), if it is a spare of the pool.
fn spare_named(pool: &PoolRef, name: &str) -> Option<String> {
    let target = canonical_path(Path::new(name));
    pool.status()
        .spares
        .into_iter()
        .find(|s| s.uuid == name || s.path == name || canonical_path(Path::new(&s.path)) == target)
        .map(|s| s.uuid)
}

/// Refuse a device the pool holds already (a member in service, a replacement, an available
/// spare) before opening it (the open would only say "in use").
fn refuse_in_use(pool: &PoolRef, path: &Path) -> Result<(), Response> {
    let target = canonical_path(path);
    let status = pool.status();
    let held = status
        .devices
        .iter()
        .filter(|d| d.state != "FAULTED" && d.state != "OFFLINE")
        .chain(status.spares.iter().filter(|s| s.state == "AVAIL"))
        .any(|d| canonical_path(Path::new(&d.path)) == target);
    if held {
        return Err(refused(Error::AlreadyMember {
            device: path.display().to_string(),
            role: "a member or spare in use".into(),
        }));
    }
    Ok(())
}

/// A library error as an answer: 404 for a name that is not in the pool, 400 for a device
/// that cannot be opened, 409 for everything the pool refused in its state.
fn refused(err: Error) -> Response {
    let status = match err {
        Error::NotInPool { .. } => 404,
        Error::Open { .. } | Error::InvalidConfig(_) => 400,
        _ => 409,
    };
    Response::text(status, format!("{err}\n"))
}

/// A query value, percent-decoded; `None` if absent.
fn param(request: &Request<'_>, name: &str) -> Option<String> {
    request.param(name).map(percent_decode)
}

/// A query value that must be there and not empty.
fn required(request: &Request<'_>, name: &str) -> Result<String, Response> {
    match param(request, name) {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(Response::text(
            400,
            format!("{} needs ?{name}=...; routes: {ROUTES}\n", request.path),
        )),
    }
}

fn flag(request: &Request<'_>, name: &str) -> bool {
    request
        .param(name)
        .is_some_and(|value| value != "false" && value != "0")
}

/// `%XX` escapes decoded (and `+` as a space); bytes that do not form UTF-8 are replaced.
#[must_use]
pub fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `value` with every byte but the unreserved ones (`A-Z a-z 0-9 - _ . ~ /`) as `%XX`: what
/// [`percent_decode`] takes back.
#[must_use]
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_round_trips() {
        for value in ["/tmp/a b/c+d%e", "é/ü", "plain", "", "100%"] {
            assert_eq!(percent_decode(&percent_encode(value)), value);
        }
        assert_eq!(percent_decode("a+b%2Fc%zz%4"), "a b/c%zz%4");
    }
}
