//! The `admin:` settings that guard the admin server itself: which host names it answers to
//! and how many connections, for how long, it serves; `global.rs` resolves the address and
//! the token and hands the rest of the block here.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::common::resolve_duration;
use crate::config::diagnostic::{Checked, Diagnostics, Reported};
use crate::config::locate::{child_index, child_key};
use crate::config::model::{
    Admin, DEFAULT_ADMIN_HEADER_TIMEOUT, DEFAULT_ADMIN_IDLE_TIMEOUT, DEFAULT_ADMIN_MAX_CONNECTIONS,
};
use crate::config::raw::RawAdmin;

/// Beyond this the cap no longer protects the data plane's descriptors (the open-file limit
/// is often 1024 or 65536); an operator who needs more should front the API with a proxy.
pub const MAX_ADMIN_CONNECTIONS: u64 = 4096;

/// Completes an [`Admin`] whose `listen` and `token_file` were resolved by the caller.
pub(super) fn resolve_admin_settings(
    raw: &RawAdmin,
    listen: SocketAddr,
    token_file: Option<PathBuf>,
    diag: &mut Diagnostics<'_>,
) -> Checked<Admin> {
    let allowed_hosts = resolve_allowed_hosts(raw.allowed_hosts.as_deref(), diag);
    let max_connections = match raw.max_connections {
        None => Ok(DEFAULT_ADMIN_MAX_CONNECTIONS),
        // At most 4096: fits a usize everywhere.
        Some(n @ 1..=MAX_ADMIN_CONNECTIONS) => Ok(n as usize),
        Some(n) => {
            diag.error(
                "admin.max_connections",
                format!("must be from 1 to {MAX_ADMIN_CONNECTIONS}, got {n}"),
            );
            Err(Reported)
        }
    };
    let header_timeout = resolve_duration(
        raw.header_timeout.as_ref(),
        "admin.header_timeout",
        DEFAULT_ADMIN_HEADER_TIMEOUT,
        false,
        diag,
    );
    let idle_timeout = resolve_duration(
        raw.idle_timeout.as_ref(),
        "admin.idle_timeout",
        DEFAULT_ADMIN_IDLE_TIMEOUT,
        false,
        diag,
    );
    Ok(Admin {
        listen,
        token_file,
        allowed_hosts: allowed_hosts?,
        max_connections: max_connections?,
        header_timeout: header_timeout?,
        idle_timeout: idle_timeout?,
    })
}

/// Each entry is a bare host name, compared without case and without port: the port a client
/// used can differ from the listen port behind a port mapping and proves nothing either way.
fn resolve_allowed_hosts(
    raw: Option<&[String]>,
    diag: &mut Diagnostics<'_>,
) -> Checked<Vec<String>> {
    let mut hosts = Vec::new();
    let mut failed = false;
    for (index, entry) in raw.unwrap_or_default().iter().enumerate() {
        let path = child_index(&child_key("admin", "allowed_hosts"), index);
        match host_name(entry) {
            Ok(host) => hosts.push(host),
            Err(message) => {
                diag.error(path, format!("{entry:?}: {message}"));
                failed = true;
            }
        }
    }
    if failed {
        Err(Reported)
    } else {
        Ok(hosts)
    }
}

fn host_name(entry: &str) -> Result<String, &'static str> {
    let host = entry.trim().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err("must be a host name, e.g. ballast.internal");
    }
    if host.contains("://") || host.contains('/') {
        return Err("a host name only, without scheme or path (e.g. ballast.internal)");
    }
    if host.contains(':') {
        return Err(
            "a host name without port: the port is not compared, and IP addresses are always accepted",
        );
    }
    let valid = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !valid {
        return Err("a host name has only letters, digits, `-`, `_` and `.`");
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn host_names_are_normalised_and_checked() {
        assert_eq!(
            host_name("Ballast.Internal.").as_deref(),
            Ok("ballast.internal")
        );
        assert_eq!(host_name("ballast").as_deref(), Ok("ballast"));
        for bad in [
            "",
            " ",
            "ballast:9190",
            "http://ballast",
            "a/b",
            "[::1]",
            "a b",
            "*.x",
        ] {
            assert!(host_name(bad).is_err(), "{bad:?}");
        }
    }
}
