//! The `kind: postgres` probe: the startup handshake and authentication as `user` (password
//! from `password_file`, into `database` when given), `SELECT pg_is_in_recovery()`, the role
//! it means compared with the wanted one ([`judge_recovery`], pure), then a `Terminate`
//! message, so the server logs a clean disconnect rather than an unexpected EOF.
//!
//! The wire protocol is tokio-postgres's (MIT/Apache-2.0, the asynchronous half of the
//! `postgres` crate, the most used Rust client), built without its default features: the
//! probe connects the socket itself and hands it to `connect_raw`, so the crate needs neither
//! its own resolver nor its own connector, and `NoTls`: the check speaks plain TCP, never
//! TLS (`sslmode=disable`), which a server that requires TLS (`hostssl` only) refuses.
//!
//! File descriptors: the probe's one TCP stream, opened by the caller and moved into the
//! crate's `Connection`; it closes when the probe returns or is aborted. The password is only
//! ever written to the socket (in clear for `password`, hashed for `md5` and SCRAM): it is in
//! no error and no log line.

use tokio::net::TcpStream;
use tokio_postgres::config::SslMode;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::config::{PostgresCheck, PostgresRole};

/// What the probe asks: one row, one column, `t` (in recovery: a replica) or `f`.
pub const QUERY: &str = "SELECT pg_is_in_recovery()";

/// Why a postgres probe failed; each message says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostgresFailure {
    #[error("login failed: {0}")]
    Login(String),
    #[error("pg_is_in_recovery() failed: {0}")]
    Query(String),
    #[error("role {got}, expected {expected}")]
    WrongRole {
        got: &'static str,
        expected: &'static str,
    },
    #[error("pg_is_in_recovery() answered {0:?}, not t or f")]
    Malformed(String),
}

/// The verdict on `pg_is_in_recovery()`'s text value: `t` is a replica (a standby replaying
/// WAL), `f` a primary; `wanted` names what passes.
pub fn judge_recovery(value: Option<&str>, wanted: PostgresRole) -> Result<(), PostgresFailure> {
    let role = match value {
        Some("t") => PostgresRole::Replica,
        Some("f") => PostgresRole::Primary,
        other => {
            let shown: String = other.unwrap_or("NULL").chars().take(64).collect();
            return Err(PostgresFailure::Malformed(shown));
        }
    };
    if wanted == PostgresRole::Any || wanted == role {
        Ok(())
    } else {
        Err(PostgresFailure::WrongRole {
            got: role.as_str(),
            expected: wanted.as_str(),
        })
    }
}

/// The server's own words (`28P01 password authentication failed for user "x"`), or the
/// crate's for a connection error; neither ever holds what the probe sent.
fn describe(error: &tokio_postgres::Error) -> String {
    let text = match error.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    };
    text.chars().take(160).collect()
}

/// One probe over `stream`, already connected to the server (and past any PROXY header);
/// the caller bounds it by the check's timeout.
pub async fn probe(stream: TcpStream, check: &PostgresCheck) -> Result<(), PostgresFailure> {
    let mut config = tokio_postgres::Config::new();
    config
        .user(check.user.as_str())
        .ssl_mode(SslMode::Disable)
        .application_name("ballast-health-check");
    if let Some(password) = &check.password {
        config.password(password.expose());
    }
    if let Some(database) = &check.database {
        config.dbname(database.as_str());
    }
    let (client, connection) = config
        .connect_raw(stream, NoTls)
        .await
        .map_err(|e| PostgresFailure::Login(describe(&e)))?;
    let ask = async move {
        let reply = client.simple_query(QUERY).await;
        // Dropping the client tells the connection to send `Terminate` and close.
        drop(client);
        reply
    };
    // The connection future does the socket I/O for the client: both run together, and the
    // connection's own end (after `Terminate`) is waited for, whatever it reports.
    let (reply, _closed) = tokio::join!(ask, connection);
    let messages = reply.map_err(|e| PostgresFailure::Query(describe(&e)))?;
    let value = messages.iter().find_map(|message| match message {
        SimpleQueryMessage::Row(row) => Some(row.try_get(0).ok().flatten()),
        _ => None,
    });
    match value {
        Some(value) => judge_recovery(value, check.role),
        None => Err(PostgresFailure::Malformed("no row".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_means_replica() {
        assert_eq!(judge_recovery(Some("t"), PostgresRole::Replica), Ok(()));
        assert_eq!(judge_recovery(Some("f"), PostgresRole::Primary), Ok(()));
        assert_eq!(judge_recovery(Some("t"), PostgresRole::Any), Ok(()));
        assert_eq!(judge_recovery(Some("f"), PostgresRole::Any), Ok(()));
    }

    #[test]
    fn the_wrong_role_names_both() {
        let error = judge_recovery(Some("t"), PostgresRole::Primary).unwrap_err();
        assert_eq!(error.to_string(), "role replica, expected primary");
        let error = judge_recovery(Some("f"), PostgresRole::Replica).unwrap_err();
        assert_eq!(error.to_string(), "role primary, expected replica");
    }

    #[test]
    fn anything_but_t_or_f_is_malformed_even_for_any() {
        for value in [None, Some(""), Some("true"), Some("1")] {
            let error = judge_recovery(value, PostgresRole::Any).unwrap_err();
            assert!(matches!(error, PostgresFailure::Malformed(_)), "{error}");
        }
    }
}
