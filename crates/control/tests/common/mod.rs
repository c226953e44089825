//! What the loader's test files share: a config text loaded under one file name, and its
//! errors and warnings as `ballast check` prints them (`file:line:col: path: message`).
#![allow(dead_code, reason = "each test file uses some of them")]

use ballast_control::config::{load_str, ConfigError, LoadError};

/// The file name every test text is loaded as; the printed places start with it.
pub const FILE: &str = "test.yaml";

/// The errors of a config that must not load.
pub fn errors(text: &str) -> Vec<ConfigError> {
    match load_str(text, FILE) {
        Err(LoadError::Invalid(errors)) => errors,
        Err(other) => panic!("unexpected error kind: {other}"),
        Ok(loaded) => panic!("config should be invalid but loaded: {loaded:?}"),
    }
}

/// The same errors, each as `ballast check` prints it.
pub fn error_lines(text: &str) -> Vec<String> {
    errors(text).iter().map(ToString::to_string).collect()
}

/// Asserts that loading `text` fails with exactly these errors, in order: each one's place as
/// `ballast check` prints it (`line:col: path`) and a part of its message.
pub fn assert_errors(text: &str, expected: &[(&str, &str)]) {
    let shown = error_lines(text);
    assert_eq!(shown.len(), expected.len(), "{shown:#?}");
    for (line, (place, part)) in shown.iter().zip(expected) {
        assert!(
            line.starts_with(&format!("{FILE}:{place}: ")) && line.contains(part),
            "wanted {place} containing {part:?}; got:\n{shown:#?}"
        );
    }
}

/// The warnings of a config that loads, as `ballast check` prints them.
pub fn warnings_of(text: &str) -> Vec<String> {
    let loaded = load_str(text, FILE).unwrap_or_else(|e| panic!("{e}"));
    loaded.warnings.iter().map(ToString::to_string).collect()
}
