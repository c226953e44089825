//! The top-level settings that are not listeners or pools: `admin` (and its address against
//! the listeners'), and `workers`.

use std::net::SocketAddr;

use super::address::{overlaps, parse_address};
use super::common::parsed_items;
use super::listener::listen_path;
use super::MAX_WORKERS;
use crate::config::diagnostic::{Checked, Diagnostics, Reported};
use crate::config::locate::child_index;
use crate::config::model::*;
use crate::config::raw::{Document, RawAdmin, RawWorkers};

pub(super) fn resolve_workers(
    raw: Option<&RawWorkers>,
    diag: &mut Diagnostics<'_>,
) -> Checked<Workers> {
    match raw {
        None => Ok(Workers::Auto),
        Some(RawWorkers::Name(name)) if name == "auto" => Ok(Workers::Auto),
        Some(RawWorkers::Count(n)) if (1..=MAX_WORKERS).contains(n) => {
            usize::try_from(*n).map(Workers::Count).map_err(|_| {
                diag.error("workers", "does not fit this platform");
                Reported
            })
        }
        Some(RawWorkers::Count(n)) => {
            diag.error(
                "workers",
                format!("must be `auto` or a number from 1 to {MAX_WORKERS}, got {n}"),
            );
            Err(Reported)
        }
        Some(RawWorkers::Name(name)) => {
            diag.error(
                "workers",
                format!("must be `auto` or a number from 1 to {MAX_WORKERS}, got {name:?}"),
            );
            Err(Reported)
        }
    }
}

pub(super) fn resolve_admin(
    raw: Option<&RawAdmin>,
    diag: &mut Diagnostics<'_>,
) -> Checked<Option<Admin>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let listen = match raw.listen.as_deref() {
        None => Ok(DEFAULT_ADMIN_LISTEN),
        Some(text) => parse_address(text).map_err(|message| {
            diag.error("admin.listen", message);
            Reported
        }),
    };
    let token_file = match raw.token_file.as_deref() {
        None => Ok(None),
        Some(path) if path.trim().is_empty() => {
            diag.error(
                "admin.token_file",
                "must not be empty; leave `token_file` out for no token",
            );
            Err(Reported)
        }
        Some(path) => Ok(Some(std::path::PathBuf::from(path))),
    };
    let listen = listen?;
    let token_file = token_file?;
    if token_file.is_none() && !listen.ip().is_loopback() {
        diag.warning(
            "admin.listen",
            format!(
                "{listen} is reachable from other hosts and there is no `token_file`: anyone \
                 who reaches it can drain backends and reload the configuration"
            ),
        );
    }
    super::admin::resolve_admin_settings(raw, listen, token_file, diag).map(Some)
}

/// The admin server binds its own socket, without SO_REUSEPORT: it cannot share a listener's.
pub(super) fn check_admin_conflicts(doc: &Document, admin: SocketAddr, diag: &mut Diagnostics<'_>) {
    if admin.port() == 0 {
        return;
    }
    for (index, listener) in parsed_items(&doc.listeners) {
        let Some(listen) = &listener.listen else {
            continue;
        };
        for (item, text) in listen.entries() {
            match parse_address(text) {
                Ok(address) if overlaps(address, admin) => {
                    let at = listen_path(&child_index("listeners", index), item);
                    diag.error(
                        "admin.listen",
                        format!("{admin} is also the address of {at}"),
                    );
                    return;
                }
                _ => {}
            }
        }
    }
}
