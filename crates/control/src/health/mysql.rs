//! The `kind: mysql` probe: the handshake and authentication as `user` (password from
//! `password_file`), `SELECT @@global.read_only`, the role it means compared with the wanted
//! one ([`judge_read_only`], pure), then `COM_QUIT`.
//!
//! Why the whole login: a bare TCP connect that closes before the handshake ends counts as an
//! aborted connect (`Aborted_connects`) and toward `max_connect_errors`, after which the
//! server blocks the prober's host. A completed login ended by `COM_QUIT` counts as neither.
//!
//! The wire protocol is mysql_async's (MIT/Apache-2.0, the asynchronous client of the
//! blackbeam `mysql` family), built with `default-features = false` and `minimal-rust` (the
//! pure-Rust deflate backend, no zlib to build; no TLS, no derive macros): the handshake and
//! the authentication plugins (`mysql_native_password`, MySQL 8's `caching_sha2_password`)
//! are not something to write again.
//!
//! File descriptors: the crate opens the probe's one TCP stream itself (it takes an address,
//! not a stream) and closes it on `disconnect` or when the probe is aborted. The password is
//! only ever given to the crate's handshake (hashed with the server's scramble): it is in no
//! error and no log line.

use std::net::SocketAddr;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, Value};

use crate::config::{MysqlCheck, MysqlRole};

/// What the probe asks: one row, one column, 0 (writable) or 1 (read-only).
pub const QUERY: &str = "SELECT @@global.read_only";

/// Why a mysql probe failed; each message says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MysqlFailure {
    #[error("login failed: {0}")]
    Login(String),
    #[error("@@global.read_only failed: {0}")]
    Query(String),
    #[error("role {got}, expected {expected}")]
    WrongRole {
        got: &'static str,
        expected: &'static str,
    },
    #[error("@@global.read_only answered {0:?}, not 0 or 1")]
    Malformed(String),
}

/// The verdict on `@@global.read_only` as text: `0`/`OFF` is writable, `1`/`ON` read-only;
/// `wanted` names what passes.
pub fn judge_read_only(value: &str, wanted: MysqlRole) -> Result<(), MysqlFailure> {
    let role = match value.trim().to_ascii_uppercase().as_str() {
        "0" | "OFF" => MysqlRole::Writable,
        "1" | "ON" => MysqlRole::ReadOnly,
        _ => return Err(MysqlFailure::Malformed(value.chars().take(64).collect())),
    };
    if wanted == MysqlRole::Any || wanted == role {
        Ok(())
    } else {
        Err(MysqlFailure::WrongRole {
            got: role.as_str(),
            expected: wanted.as_str(),
        })
    }
}

/// A column value as the text a pure judge reads.
fn value_text(value: Option<&Value>) -> String {
    match value {
        Some(Value::Bytes(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(Value::Int(n)) => n.to_string(),
        Some(Value::UInt(n)) => n.to_string(),
        Some(Value::NULL) | None => "NULL".into(),
        Some(other) => format!("{other:?}"),
    }
}

/// The server's own words (`1045 (28000) Access denied for user ...`), or the crate's for a
/// connection error; neither holds the password.
fn describe(error: &mysql_async::Error) -> String {
    let text = match error {
        mysql_async::Error::Server(server) => {
            format!("{} ({}) {}", server.code, server.state, server.message)
        }
        other => other.to_string(),
    };
    text.chars().take(160).collect()
}

/// The client's options: no unix socket (the crate would ask `@@socket` and switch to it on
/// a local server, probing something else than the address), no statement cache, and the
/// two settings it would otherwise ask the server for after the login given up front.
fn options(addr: SocketAddr, check: &MysqlCheck) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some(check.user.as_str()))
        .pass(check.password.as_ref().map(|p| p.expose()))
        .prefer_socket(false)
        .stmt_cache_size(0)
        .max_allowed_packet(Some(1024 * 1024))
        .wait_timeout(Some(28_800))
}

/// One probe of the server at `addr`; the caller bounds it by the check's timeout.
pub async fn probe(addr: SocketAddr, check: &MysqlCheck) -> Result<(), MysqlFailure> {
    let mut conn = Conn::new(options(addr, check))
        .await
        .map_err(|e| MysqlFailure::Login(describe(&e)))?;
    let reply: Result<Option<Row>, _> = conn.query_first(QUERY).await;
    // COM_QUIT whatever the answer was: the server counts a clean disconnect.
    let _ = conn.disconnect().await;
    let row = reply.map_err(|e| MysqlFailure::Query(describe(&e)))?;
    match row {
        Some(row) => judge_read_only(&value_text(row.as_ref(0)), check.role),
        None => Err(MysqlFailure::Malformed("no row".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_writable_and_one_read_only() {
        assert_eq!(judge_read_only("0", MysqlRole::Writable), Ok(()));
        assert_eq!(judge_read_only("1", MysqlRole::ReadOnly), Ok(()));
        assert_eq!(judge_read_only("ON", MysqlRole::ReadOnly), Ok(()));
        assert_eq!(judge_read_only("off", MysqlRole::Writable), Ok(()));
        assert_eq!(judge_read_only("1", MysqlRole::Any), Ok(()));
    }

    #[test]
    fn the_wrong_role_names_both() {
        let error = judge_read_only("1", MysqlRole::Writable).unwrap_err();
        assert_eq!(error.to_string(), "role read_only, expected writable");
        let error = judge_read_only("0", MysqlRole::ReadOnly).unwrap_err();
        assert_eq!(error.to_string(), "role writable, expected read_only");
    }

    #[test]
    fn anything_else_is_malformed_even_for_any() {
        for value in ["", "NULL", "2", "yes"] {
            let error = judge_read_only(value, MysqlRole::Any).unwrap_err();
            assert!(matches!(error, MysqlFailure::Malformed(_)), "{error}");
        }
    }

    #[test]
    fn values_read_as_text() {
        assert_eq!(value_text(Some(&Value::Bytes(b"1".to_vec()))), "1");
        assert_eq!(value_text(Some(&Value::Int(0))), "0");
        assert_eq!(value_text(Some(&Value::NULL)), "NULL");
        assert_eq!(value_text(None), "NULL");
    }
}
