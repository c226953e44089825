//! The loader's keys for long TCP sessions (issue 19): `pools[].queue`, keepalive, session
//! lifetime and the access log. Each resolves to its model with its defaults, and each bad
//! value is reported at its place.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ballast_control::config::{load_str, LoadError, QueueSettings};

const FILE: &str = "test.yaml";

fn errors(text: &str) -> Vec<String> {
    match load_str(text, FILE) {
        Err(LoadError::Invalid(errors)) => errors.iter().map(ToString::to_string).collect(),
        Err(other) => panic!("unexpected error kind: {other}"),
        Ok(loaded) => panic!("config should be invalid but loaded: {loaded:?}"),
    }
}

fn assert_errors(text: &str, expected: &[(&str, &str)]) {
    let shown = errors(text);
    assert_eq!(shown.len(), expected.len(), "{shown:#?}");
    for (line, (place, part)) in shown.iter().zip(expected) {
        assert!(
            line.starts_with(&format!("{FILE}:{place}: ")) && line.contains(part),
            "wanted {place} containing {part:?}; got:\n{shown:#?}"
        );
    }
}

fn warnings_of(text: &str) -> Vec<String> {
    let loaded = load_str(text, FILE).unwrap_or_else(|e| panic!("{e}"));
    loaded.warnings.iter().map(ToString::to_string).collect()
}

/// A pool `p` whose one backend takes 2 sessions, with `queue: <queue>` on line 4.
fn with_queue(queue: &str) -> String {
    format!(
        "listeners: [{{ name: l, listen: \"127.0.0.1:1001\", pool: p }}]\npools:\n  - name: p\n    queue: {queue}\n    retries: 0\n    backends: [{{ address: \"10.0.0.1:6379\", max_connections: 2 }}]\n"
    )
}

#[test]
fn a_queue_resolves_with_its_defaults_and_its_keys() {
    let queue = |text: &str| load_str(text, FILE).unwrap().config.pools[0].queue;
    assert_eq!(
        queue(&with_queue("{}")),
        Some(QueueSettings {
            max: 1000,
            timeout: Duration::from_secs(5)
        })
    );
    assert_eq!(
        queue(&with_queue("{ max: 20, timeout: 250ms }")),
        Some(QueueSettings {
            max: 20,
            timeout: Duration::from_millis(250)
        })
    );
    let none = with_queue("{}").replace("    queue: {}\n", "");
    assert_eq!(queue(&none), None);
}

#[test]
fn bad_queue_values_are_reported_at_their_place() {
    assert_errors(
        &with_queue("{ max: 0, timeout: 0s }"),
        &[
            ("4:14: pools[0].queue.max", "at least 1"),
            ("4:22: pools[0].queue.timeout", "greater than zero"),
        ],
    );
    assert_errors(
        &with_queue("{ max: 2000000 }"),
        &[("4:14: pools[0].queue.max", "at most 1000000")],
    );
    assert_errors(
        &with_queue("{ length: 3 }"),
        &[("4:14: pools[0].queue.length", "unknown field `length`")],
    );
}

#[test]
fn a_queue_without_any_max_connections_warns() {
    let text = with_queue("{ max: 10 }").replace(", max_connections: 2", "");
    let warnings = warnings_of(&text);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("pools[0].queue") && w.contains("has no effect")),
        "{warnings:#?}"
    );
    assert_eq!(
        warnings_of(&with_queue("{ max: 10 }")),
        Vec::<String>::new()
    );
}
