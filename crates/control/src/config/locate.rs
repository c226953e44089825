//! Maps a config path such as `listeners[1].pool` to where it is written in the YAML text.
//!
//! Values are checked after deserializing, when their node is gone: so the loader walks the
//! text once more with yaml-rust2's event parser, which marks every event with its position,
//! and remembers where each path starts. A path names mapping keys joined by `.` and sequence items as `[index]`; the root
//! is the empty path.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

/// A place in the source text; both numbers start at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Position {
    fn from(mark: Marker) -> Self {
        // yaml-rust2 counts lines from 1 but columns from 0.
        Position {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }
}

/// Positions of every path in one YAML document.
#[derive(Debug, Default, Clone)]
pub struct Locator {
    positions: HashMap<String, Position>,
}

impl Locator {
    /// Indexes `text`. Never fails: on a syntax error it keeps what it saw before it, so paths
    /// after the error fall back to their parents.
    pub fn new(text: &str) -> Locator {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        // Driving the parser event by event (rather than `Parser::load`) lets us stop cleanly
        // after the first document, which is the only one the loader accepts.
        while let Ok((event, mark)) = parser.next_token() {
            match event {
                Event::StreamEnd | Event::DocumentEnd => break,
                event => walker.on_event(event, mark),
            }
        }
        Locator {
            positions: walker.positions,
        }
    }

    /// Where `path` itself is written: a key's position for mapping entries, the item's start
    /// for sequence items.
    pub fn exact(&self, path: &str) -> Option<Position> {
        self.positions.get(path).copied()
    }

    /// Where `path` is written or, when it is not (a required key that is absent, a value that
    /// came from a merge or an alias), where its nearest written ancestor is.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(position) = self.exact(path) {
                return Some(position);
            }
            path = parent(path)?;
        }
    }
}

/// Position of `path` in `text`, falling back to its nearest existing parent.
pub fn locate(text: &str, path: &str) -> Option<Position> {
    Locator::new(text).find(path)
}

/// `a.b[2]` → `a.b` → `a` → `` → none.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    match path.rfind(['.', '[']) {
        Some(cut) => Some(&path[..cut]),
        None => Some(""),
    }
}

/// Joins a path and a key the way error messages spell paths.
pub fn child_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Joins a path and a sequence index.
pub fn child_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

enum Frame {
    Mapping {
        path: String,
        /// `None` while waiting for a key; `Some(child path)` while waiting for its value.
        /// `Some(None)` means the key was not a plain scalar and the value cannot be named.
        value_path: Option<Option<String>>,
    },
    Sequence {
        path: String,
        next_index: usize,
    },
    /// A complex mapping key (or a value under one): swallowed, with its nesting depth.
    Skip {
        depth: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    positions: HashMap<String, Position>,
    /// Set once the root node has been seen.
    root_done: bool,
}

enum Role {
    /// The node is a mapping key; `Some` when it is a plain scalar we can name.
    Key,
    /// The node is a value or item living at this path (`None`: not nameable).
    Node(Option<String>),
}

impl Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let starts_collection = matches!(event, Event::MappingStart(..) | Event::SequenceStart(..));
        let ends_collection = matches!(event, Event::MappingEnd | Event::SequenceEnd);
        let is_node = starts_collection || matches!(event, Event::Scalar(..) | Event::Alias(..));

        if let Some(Frame::Skip { depth }) = self.stack.last_mut() {
            if starts_collection {
                *depth += 1;
            } else if ends_collection {
                *depth -= 1;
                if *depth == 0 {
                    self.stack.pop();
                }
            }
            return;
        }

        // A mapping waiting for a key (or a sequence) needs no update when a child ends: the
        // value's path was taken from the mapping as soon as the value started.
        if ends_collection {
            self.stack.pop();
            return;
        }
        if !is_node {
            return;
        }

        let role = match self.stack.last_mut() {
            None if self.root_done => return,
            None => {
                self.root_done = true;
                Role::Node(Some(String::new()))
            }
            Some(Frame::Mapping { value_path, .. }) if value_path.is_none() => Role::Key,
            Some(Frame::Mapping { value_path, .. }) => Role::Node(value_path.take().flatten()),
            Some(Frame::Sequence { path, next_index }) => {
                let item = child_index(path, *next_index);
                *next_index += 1;
                self.positions.entry(item.clone()).or_insert(mark.into());
                Role::Node(Some(item))
            }
            Some(Frame::Skip { .. }) => return,
        };

        match role {
            Role::Key => {
                let key_path = match &event {
                    Event::Scalar(key, ..) => self.stack.last().and_then(|frame| match frame {
                        Frame::Mapping { path, .. } => Some(child_key(path, key)),
                        _ => None,
                    }),
                    _ => None,
                };
                // A key written twice keeps its first place; the parser reports the second.
                if let Some(key_path) = &key_path {
                    self.positions
                        .entry(key_path.clone())
                        .or_insert(mark.into());
                }
                if let Some(Frame::Mapping { value_path, .. }) = self.stack.last_mut() {
                    *value_path = Some(key_path);
                }
                if starts_collection {
                    self.stack.push(Frame::Skip { depth: 1 });
                }
            }
            Role::Node(path) => {
                // The root has no position of its own: an absent top-level key is better
                // reported without a line than at line 1.
                if let Some(path) = path.as_ref().filter(|p| !p.is_empty()) {
                    self.positions.entry(path.clone()).or_insert(mark.into());
                }
                match (event, path) {
                    (Event::MappingStart(..), Some(path)) => self.stack.push(Frame::Mapping {
                        path,
                        value_path: None,
                    }),
                    (Event::SequenceStart(..), Some(path)) => self.stack.push(Frame::Sequence {
                        path,
                        next_index: 0,
                    }),
                    (Event::MappingStart(..) | Event::SequenceStart(..), None) => {
                        self.stack.push(Frame::Skip { depth: 1 })
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TEXT: &str = "\
workers: auto
listeners:
  - name: a
    listen: 0.0.0.0:80
    pool: web
  - name: b
    listen: [\"0.0.0.0:81\", \"[::]:81\"]
    pool: pgg
    timeouts: { connect: 2s }
pools:
  - name: web
    backends:
      - { address: 10.0.0.1:80 }
      - address: 10.0.0.2:80
        weight: 3
      -   address: 10.0.0.3:80
";

    fn line(path: &str) -> Option<usize> {
        locate(TEXT, path).map(|p| p.line)
    }

    #[test]
    fn finds_keys_and_items() {
        assert_eq!(line("workers"), Some(1));
        assert_eq!(line("listeners"), Some(2));
        assert_eq!(line("listeners[0]"), Some(3));
        assert_eq!(line("listeners[0].pool"), Some(5));
        assert_eq!(line("listeners[1].pool"), Some(8));
        assert_eq!(line("listeners[1].listen"), Some(7));
        assert_eq!(line("listeners[1].listen[1]"), Some(7));
        assert_eq!(line("listeners[1].timeouts.connect"), Some(9));
        assert_eq!(line("pools[0].backends[0].address"), Some(13));
        assert_eq!(line("pools[0].backends[1]"), Some(14));
        assert_eq!(line("pools[0].backends[1].weight"), Some(15));
        assert_eq!(line("pools[0].backends[2].address"), Some(16));
    }

    #[test]
    fn columns_point_at_the_key() {
        let at = locate(TEXT, "listeners[1].pool").unwrap();
        assert_eq!(at, Position { line: 8, column: 5 });
        let at = locate(TEXT, "listeners[1].listen[1]").unwrap();
        assert_eq!(at.column, 28);
    }

    #[test]
    fn missing_paths_fall_back_to_parents() {
        assert_eq!(line("listeners[0].timeouts.idle"), Some(3));
        assert_eq!(line("listeners[1].timeouts.idle"), Some(9));
        assert_eq!(line("pools[0].backends[7].weight"), Some(12));
        assert_eq!(line("admin.listen"), None);
        assert_eq!(line(""), None);
    }

    #[test]
    fn complex_keys_do_not_confuse_later_keys() {
        let text = "? [a, b]\n: { x: 1 }\nafter: 2\n";
        assert_eq!(locate(text, "after").map(|p| p.line), Some(3));
    }

    #[test]
    fn keeps_positions_before_a_syntax_error() {
        let text = "workers: 1\nlisteners:\n  - name: a\n   bad: [\n";
        let locator = Locator::new(text);
        assert_eq!(locator.find("workers").map(|p| p.line), Some(1));
    }

    #[test]
    fn stops_after_the_first_document() {
        let text = "workers: 1\n---\nworkers: 2\n";
        assert_eq!(locate(text, "workers").map(|p| p.line), Some(1));
    }
}
