//! The problems the loader reports: [`ConfigError`] (file, line, column, path, message) and
//! [`Diagnostics`], which every stage writes to. A module of its own so that parsing and each
//! part of validation can report without depending on one another.

use std::fmt;

use super::locate::Locator;

/// One problem in a config file. Errors and warnings share this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; `None` when the problem has no place in the text (e.g. a required top-level
    /// key that is absent).
    pub line: Option<usize>,
    /// 1-based.
    pub column: Option<usize>,
    /// Like `listeners[1].pool`; empty for the document as a whole (YAML syntax errors).
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Collects errors and warnings, placing each one in the text.
pub struct Diagnostics<'a> {
    file: &'a str,
    locator: &'a Locator,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(file: &'a str, locator: &'a Locator) -> Self {
        Diagnostics {
            file,
            locator,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// An error at `path`, placed at the path or its nearest written parent.
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let error = self.make(path.into(), message.into());
        self.errors.push(error);
    }

    pub fn warning(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let warning = self.make(path.into(), message.into());
        self.warnings.push(warning);
    }

    /// An error whose position is already known (found on the YAML tree, not by path).
    pub fn error_at(
        &mut self,
        path: impl Into<String>,
        line: Option<usize>,
        column: Option<usize>,
        message: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            path: path.into(),
            message: message.into(),
        });
    }

    fn make(&self, path: String, message: String) -> ConfigError {
        let position = self.locator.find(&path);
        ConfigError {
            file: self.file.to_owned(),
            line: position.map(|p| p.line),
            column: position.map(|p| p.column),
            path,
            message,
        }
    }

    pub fn locator(&self) -> &Locator {
        self.locator
    }

    pub(super) fn has_error_at(&self, path: &str) -> bool {
        self.errors.iter().any(|e| e.path == path)
    }

    pub(super) fn line_of(&self, path: &str) -> Option<usize> {
        self.locator.find(path).map(|p| p.line)
    }

    /// Puts errors and warnings in file order (those without a line last). The sort is stable,
    /// so problems at one place keep the order they were found in.
    pub fn sort(&mut self) {
        let key = |e: &ConfigError| (e.line.is_none(), e.line, e.column);
        self.errors.sort_by_key(key);
        self.warnings.sort_by_key(key);
    }
}

/// Marks a value whose error has already been reported.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reported;

pub(super) type Checked<T> = Result<T, Reported>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        let mut error = ConfigError {
            file: "b.yaml".into(),
            line: Some(7),
            column: Some(5),
            path: "listeners[1].pool".into(),
            message: "no pool named \"pgg\"".into(),
        };
        assert_eq!(
            error.to_string(),
            "b.yaml:7:5: listeners[1].pool: no pool named \"pgg\""
        );
        error.line = None;
        error.path.clear();
        assert_eq!(error.to_string(), "b.yaml: no pool named \"pgg\"");
    }
}
