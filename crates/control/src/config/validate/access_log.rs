//! `access_log:`: the lines at connect time and while a session lasts, and where the lines
//! go (stderr, a file, or syslog over a Unix socket or UDP).

use std::path::PathBuf;
use std::time::Duration;

use super::common::{resolve_duration, unknown_value};
use crate::config::diagnostic::{Checked, Diagnostics, Reported};
use crate::config::locate::child_key;
use crate::config::model::*;
use crate::config::raw::{RawAccessLog, RawSyslog};

/// RFC 5424's facilities, by their usual names (numbers 0–11 and 16–23).
const FACILITIES: [(&str, u8); 20] = [
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
];
/// RFC 5424's bound on APP-NAME.
const MAX_TAG: usize = 48;

pub(super) fn resolve_access_log(
    raw: Option<&RawAccessLog>,
    diag: &mut Diagnostics<'_>,
) -> Checked<AccessLog> {
    let Some(raw) = raw else {
        return Ok(AccessLog::default());
    };
    let path = "access_log";
    let interval = match raw.interval.as_ref() {
        None => Ok(None),
        Some(text) => resolve_duration(
            Some(text),
            &child_key(path, "interval"),
            Duration::ZERO,
            false,
            diag,
        )
        .map(Some),
    };
    let file = match raw.file.as_deref() {
        None => Ok(None),
        Some(file) if file.starts_with('/') => Ok(Some(PathBuf::from(file))),
        Some(file) => {
            diag.error(
                child_key(path, "file"),
                format!("{file:?}: must be an absolute path"),
            );
            Err(Reported)
        }
    };
    let syslog = match raw.syslog.as_ref() {
        None => Ok(None),
        Some(syslog) => resolve_syslog(&child_key(path, "syslog"), syslog, diag).map(Some),
    };
    Ok(AccessLog {
        lines: AccessLogLines {
            at_connect: raw.at_connect.unwrap_or(false),
            interval: interval?,
        },
        output: AccessLogOutput {
            file: file?,
            syslog: syslog?,
        },
    })
}

fn resolve_syslog(path: &str, raw: &RawSyslog, diag: &mut Diagnostics<'_>) -> Checked<Syslog> {
    let address = match raw.address.as_deref() {
        None => Ok(SyslogAddress::Unix(PathBuf::from("/dev/log"))),
        Some(text) if text.starts_with('/') => Ok(SyslogAddress::Unix(PathBuf::from(text))),
        Some(text) => match text.parse() {
            Ok(addr) => Ok(SyslogAddress::Udp(addr)),
            Err(_) => {
                diag.error(
                    child_key(path, "address"),
                    format!(
                        "{text:?}: expected the path of a Unix socket (`/dev/log`) or an \
                         `IP:port` to send UDP to (`10.0.0.5:514`)"
                    ),
                );
                Err(Reported)
            }
        },
    };
    let facility = match raw.facility.as_deref() {
        None => Ok(16),
        Some(name) => match FACILITIES.iter().find(|(n, _)| *n == name) {
            Some((_, code)) => Ok(*code),
            None => {
                let names: Vec<&str> = FACILITIES.iter().map(|(n, _)| *n).collect();
                diag.error(
                    child_key(path, "facility"),
                    unknown_value("facility", name, &names),
                );
                Err(Reported)
            }
        },
    };
    let tag = match raw.tag.as_deref() {
        None => Ok("ballast".to_string()),
        Some(tag)
            if !tag.is_empty()
                && tag.len() <= MAX_TAG
                && tag.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(tag.to_string())
        }
        Some(tag) => {
            diag.error(
                child_key(path, "tag"),
                format!("{tag:?}: must be 1 to {MAX_TAG} printable ASCII characters, no spaces"),
            );
            Err(Reported)
        }
    };
    Ok(Syslog {
        address: address?,
        facility: facility?,
        tag: tag?,
    })
}
