//! Loads Ballast's YAML config file in three stages:
//!
//! 1. [`raw`]: the text, parsed by [`yaml`] into nodes that each know their line and column,
//!    becomes serde structs that mirror the file key for key. Unknown keys and
//!    type errors are caught here. Each top-level key and each listener and pool is read on its
//!    own, so one broken entry does not hide the problems of the others.
//! 2. [`validate`]: checks values and cross-references (names, addresses, pool references,
//!    algorithm options, limits), collecting every error and warning with its path and line
//!    ([`locate`] finds the line, [`diagnostic`] holds what is reported).
//! 3. [`model`]: the resolved [`Config`] that the rest of Ballast uses. It is produced only
//!    when stage 1 and 2 found no error, and needs no further checking.
//!
//! `ballast check`, startup and reload all go through [`load_file`], so a config that passes
//! the check is one that runs.

pub mod diagnostic;
pub mod duration;
pub mod locate;
pub mod model;
pub mod raw;
pub mod validate;
pub mod yaml;

use std::fmt;
use std::path::Path;

pub use diagnostic::ConfigError;
pub use model::*;

use diagnostic::Diagnostics;
use locate::Locator;

/// A config that passed validation, with the warnings found on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigError>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Every error found, in file order.
    #[error("{}", ErrorLines(.0))]
    Invalid(Vec<ConfigError>),
}

/// One error per line.
struct ErrorLines<'a>(&'a [ConfigError]);

impl fmt::Display for ErrorLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Reads and loads the config file at `path`.
pub fn load_file(path: &Path) -> Result<Loaded, LoadError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        path: name.clone(),
        source,
    })?;
    let text = yaml::decode(&bytes).map_err(|error| {
        LoadError::Invalid(vec![ConfigError {
            file: name.clone(),
            line: Some(error.at.line),
            column: Some(error.at.column),
            path: error.path,
            message: error.message,
        }])
    })?;
    load_str(text, &name)
}

/// Loads a config from `text`; `file_name` only labels the errors.
pub fn load_str(text: &str, file_name: &str) -> Result<Loaded, LoadError> {
    let locator = Locator::new(text);
    let mut diag = Diagnostics::new(file_name, &locator);
    let config = raw::parse(text, &mut diag).and_then(|doc| validate::validate(&doc, &mut diag));
    diag.sort();
    match config {
        Some(config) if diag.errors.is_empty() => Ok(Loaded {
            config,
            warnings: diag.warnings,
        }),
        _ => Err(LoadError::Invalid(diag.errors)),
    }
}
