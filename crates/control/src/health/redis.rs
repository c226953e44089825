//! The `kind: redis` probe: connect, `AUTH` when the check has a password, `ROLE`, compare the
//! role with the wanted one ([`judge_role`], pure), then `QUIT`.
//!
//! The wire protocol is the `redis` crate's (redis-rs, BSD-3-Clause, the most used Rust client;
//! built with `default-features = false` and only `tokio-comp`), not hand-written RESP. The
//! probe connects the socket itself (so that a PROXY header can come first) and hands it to
//! `MultiplexedConnection::new`; it closes with the connection when the probe returns. The
//! 0.32 line, because 1.x depends on `xxhash-rust` (BSL-1.0, not in `deny.toml`'s list).
//! No password is given to the crate's own handshake (which then sends only a `CLIENT SETINFO`
//! whose answer it ignores, even a `NOAUTH`), so that `AUTH` is this probe's own command and
//! its failure is named as such. The password is only ever written to the socket: it is in no
//! error and no log line.

use redis::aio::MultiplexedConnection;
use redis::{RedisConnectionInfo, Value};
use tokio::net::TcpStream;

use crate::config::{RedisCheck, RedisRole};

/// Why a redis probe failed; each message says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisFailure {
    #[error("connect: {0}")]
    Connect(String),
    #[error("AUTH failed: {0}")]
    Auth(String),
    #[error("ROLE failed: {0}")]
    Role(String),
    #[error("role {got}, expected {expected}")]
    WrongRole { got: String, expected: &'static str },
    #[error("ROLE reply is not a list starting with a role name: {0}")]
    Malformed(String),
}

/// The verdict on the first element of `ROLE`'s reply: `master`, `slave` (a replica) or
/// `sentinel`; `wanted` names what passes.
pub fn judge_role(reported: &str, wanted: RedisRole) -> Result<(), RedisFailure> {
    let role = match reported {
        "slave" | "replica" => "replica",
        other => other,
    };
    let pass = match wanted {
        RedisRole::Any => matches!(role, "master" | "replica"),
        RedisRole::Master => role == "master",
        RedisRole::Replica => role == "replica",
    };
    if pass {
        Ok(())
    } else {
        Err(RedisFailure::WrongRole {
            got: shown(role),
            expected: wanted.as_str(),
        })
    }
}

/// The role name in `ROLE`'s reply: the first element of the array, as text.
pub fn reported_role(reply: &Value) -> Result<String, RedisFailure> {
    let first = match reply {
        Value::Array(items) => items.first(),
        _ => None,
    };
    match first {
        Some(Value::BulkString(bytes)) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        Some(Value::SimpleString(text)) => Ok(text.clone()),
        _ => Err(RedisFailure::Malformed(shown(&format!("{reply:?}")))),
    }
}

/// At most 64 characters of `text`, for a log line.
fn shown(text: &str) -> String {
    text.chars().take(64).collect()
}

/// An error of the server or the connection, without anything the probe sent.
fn describe(error: &redis::RedisError) -> String {
    match (error.code(), error.detail()) {
        (Some(code), Some(detail)) => shown(&format!("{code} {detail}")),
        (Some(code), None) => code.to_owned(),
        _ => shown(&error.to_string()),
    }
}

/// One probe over `stream`, already connected to the server (and past any PROXY header);
/// the caller bounds it by the check's timeout.
pub async fn probe(stream: TcpStream, check: &RedisCheck) -> Result<(), RedisFailure> {
    let (connection, driver) = MultiplexedConnection::new(&RedisConnectionInfo::default(), stream)
        .await
        .map_err(|e| RedisFailure::Connect(describe(&e)))?;
    // The driver does the socket I/O for the connection: both run together, and the driver
    // ends once the connection is dropped after `QUIT`.
    let ask = async move {
        let mut connection = connection;
        let verdict = ask(&mut connection, check).await;
        drop(connection);
        verdict
    };
    let (verdict, ()) = tokio::join!(ask, driver);
    verdict
}

/// `AUTH` (with a password), `ROLE`, the verdict, then `QUIT`.
async fn ask(
    connection: &mut MultiplexedConnection,
    check: &RedisCheck,
) -> Result<(), RedisFailure> {
    if let Some(password) = &check.password {
        redis::cmd("AUTH")
            .arg(password.expose())
            .query_async::<()>(connection)
            .await
            .map_err(|e| RedisFailure::Auth(describe(&e)))?;
    }
    let reply: Value = redis::cmd("ROLE")
        .query_async(connection)
        .await
        .map_err(|e| RedisFailure::Role(describe(&e)))?;
    let verdict = reported_role(&reply).and_then(|role| judge_role(&role, check.role));
    // A clean goodbye; the verdict stands whatever the server says to it.
    let _ = redis::cmd("QUIT").query_async::<()>(connection).await;
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_passes_master_and_replica_only() {
        assert_eq!(judge_role("master", RedisRole::Any), Ok(()));
        assert_eq!(judge_role("slave", RedisRole::Any), Ok(()));
        assert!(judge_role("sentinel", RedisRole::Any).is_err());
    }

    #[test]
    fn slave_is_a_replica() {
        assert_eq!(judge_role("slave", RedisRole::Replica), Ok(()));
        assert_eq!(judge_role("master", RedisRole::Master), Ok(()));
        let error = judge_role("slave", RedisRole::Master).unwrap_err();
        assert_eq!(error.to_string(), "role replica, expected master");
        let error = judge_role("master", RedisRole::Replica).unwrap_err();
        assert_eq!(error.to_string(), "role master, expected replica");
    }

    #[test]
    fn the_role_is_the_first_element_of_the_reply() {
        let master = Value::Array(vec![
            Value::BulkString(b"master".to_vec()),
            Value::Int(0),
            Value::Array(vec![]),
        ]);
        assert_eq!(reported_role(&master).as_deref(), Ok("master"));
        let replica = Value::Array(vec![
            Value::BulkString(b"slave".to_vec()),
            Value::BulkString(b"127.0.0.1".to_vec()),
        ]);
        assert_eq!(reported_role(&replica).as_deref(), Ok("slave"));
        assert!(reported_role(&Value::Array(vec![])).is_err());
        assert!(reported_role(&Value::Int(1)).is_err());
    }
}
