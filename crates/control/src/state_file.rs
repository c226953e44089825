//! `state_file:`: what an operator changed at run time, kept across restarts (HAProxy's
//! `server-state-file`). Saved after every change made through the admin API (a backend's
//! admin state, a runtime weight, a backend added or removed) and read once at start, so a
//! backend drained before a restart is still drained after it.
//!
//! The file is JSON, written to a temporary file beside it and renamed over it, so a crash
//! mid-write leaves the previous file whole. A file that is missing is an empty state; one
//! that cannot be read or parsed is logged and ignored (a restart must not fail for it).
//!
//! File descriptors: the file, open only while it is read or written.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::membership::PoolChanges;

/// The format's version: a file of another version is ignored, not misread.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("state_file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state_file {path}: not a Ballast state file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("state_file {path}: version {found}, this Ballast reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
}

/// A backend's admin state as saved (only those not `enabled` are).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedBackend {
    pub pool: String,
    pub address: SocketAddr,
    /// `draining` or `disabled`.
    pub admin: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    pub version: u32,
    #[serde(default)]
    pub backends: Vec<SavedBackend>,
    /// Runtime changes by pool.
    #[serde(default)]
    pub changes: BTreeMap<String, PoolChanges>,
}

/// Reads the file; `Ok(None)` when there is none yet.
pub fn load(path: &Path) -> Result<Option<SavedState>, StateFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateFileError::Io {
                path: path.into(),
                source,
            })
        }
    };
    let state: SavedState =
        serde_json::from_str(&text).map_err(|source| StateFileError::Parse {
            path: path.into(),
            source,
        })?;
    if state.version != VERSION {
        return Err(StateFileError::Version {
            path: path.into(),
            found: state.version,
        });
    }
    Ok(Some(state))
}

/// Writes the file whole (temporary file, fsync, rename).
pub fn save(path: &Path, state: &SavedState) -> Result<(), StateFileError> {
    let io = |source| StateFileError::Io {
        path: path.into(),
        source,
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let text = serde_json::to_vec_pretty(state).map_err(|source| StateFileError::Parse {
        path: path.into(),
        source,
    })?;
    let mut file = std::fs::File::create(&temporary).map_err(io)?;
    file.write_all(&text).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(io)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::membership::Added;

    #[test]
    fn a_saved_state_reads_back_and_a_missing_or_foreign_file_is_told_apart() {
        let dir = std::env::temp_dir().join(format!("ballast-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let _ = std::fs::remove_file(&path);
        assert_eq!(load(&path).unwrap(), None);
        let mut changes = PoolChanges::default();
        changes.weights.insert("127.0.0.2:80".parse().unwrap(), 7);
        changes.added.insert(
            "127.0.0.9:80".parse().unwrap(),
            Added {
                weight: 2,
                backup: false,
                max_connections: None,
            },
        );
        let state = SavedState {
            version: VERSION,
            backends: vec![SavedBackend {
                pool: "p".into(),
                address: "127.0.0.2:80".parse().unwrap(),
                admin: "draining".into(),
            }],
            changes: BTreeMap::from([("p".to_string(), changes)]),
        };
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), Some(state));
        std::fs::write(&path, "{\"version\": 99}").unwrap();
        assert!(matches!(
            load(&path),
            Err(StateFileError::Version { found: 99, .. })
        ));
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(load(&path), Err(StateFileError::Parse { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
