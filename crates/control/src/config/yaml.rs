//! YAML text as a tree whose every node knows where it was written, and a serde deserializer
//! over that tree.
//!
//! Built on yaml-rust2's event parser, which marks each event with its line and column, so
//! every error (syntax, duplicate key, wrong type, unknown key) carries a position and a path
//! as data rather than inside a message to be taken apart again. Anchors and aliases are
//! resolved here, and `<<` merge keys applied, so what the deserializer sees is plain data.

use std::collections::HashSet;
use std::fmt;
use std::rc::Rc;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Unexpected, Visitor};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::locate::{child_index, child_key, Position};

/// Most nodes a document may hold once its aliases are expanded. Real configs have a few
/// thousand; the limit keeps a "billion laughs" file from exhausting memory or time.
const MAX_NODES: usize = 1_000_000;

/// The YAML merge key.
const MERGE_KEY: &str = "<<";

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: Kind,
    /// Where the node starts.
    pub at: Position,
    /// Nodes in this subtree, this one included; counts expanded aliases.
    size: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `plain` is false for quoted, block and `!!str`-tagged scalars, which are always
    /// strings; plain ones may also be null, booleans or numbers.
    Scalar {
        text: String,
        plain: bool,
    },
    Sequence(Vec<Rc<Node>>),
    Mapping(Vec<(Rc<Node>, Rc<Node>)>),
}

impl Node {
    /// The text of a scalar.
    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The value under `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Mapping(entries) => entries
                .iter()
                .find(|(k, _)| k.scalar() == Some(key))
                .map(|(_, v)| v.as_ref()),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if resolve(text) == Resolved::Null)
    }
}

/// A problem with its place: `path` as the loader spells paths, empty for the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    pub path: String,
    pub at: Position,
    pub message: String,
}

/// Parses the first document of `text`. `Ok(None)` for a document with no content. Syntax
/// errors stop the parse; duplicate keys are all reported.
pub fn parse(text: &str) -> Result<Option<Rc<Node>>, Vec<YamlError>> {
    if let Some(error) = control_character(text) {
        return Err(vec![error]);
    }
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    let mut documents = 0;
    loop {
        let (event, mark) = parser.next_token().map_err(|error| {
            // The scanner trips over an indenting tab wherever it happens to be (often the
            // line before) and in its own words; say what is wrong, on the tab's line.
            let tabs = indenting_tabs(text);
            if !tabs.is_empty() {
                return tabs;
            }
            vec![YamlError {
                path: String::new(),
                at: (*error.marker()).into(),
                message: error.info().to_owned(),
            }]
        })?;
        match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    builder.errors.push(YamlError {
                        path: String::new(),
                        at: mark.into(),
                        message: "a second YAML document (after `---`); a config file holds \
                                  exactly one"
                            .to_owned(),
                    });
                    break;
                }
            }
            event => builder.on_event(event, mark)?,
        }
    }
    if builder.errors.is_empty() {
        Ok(builder.root)
    } else {
        Err(builder.errors)
    }
}

/// `bytes` as text, or where it stops being UTF-8: a binary file, or UTF-16 as some Windows
/// editors save, would otherwise get a YAML message about a character it never meant.
pub fn decode(bytes: &[u8]) -> Result<&str, YamlError> {
    std::str::from_utf8(bytes).map_err(|error| {
        let valid = bytes.get(..error.valid_up_to()).unwrap_or_default();
        // The prefix is valid UTF-8 by definition; lossy only to avoid an unwrap.
        let at = position_after(&String::from_utf8_lossy(valid));
        let byte = bytes.get(error.valid_up_to()).copied().unwrap_or_default();
        YamlError {
            path: String::new(),
            at,
            message: format!(
                "not YAML text: byte 0x{byte:02x} is not UTF-8 (a binary file, or text in \
                 another encoding?)"
            ),
        }
    })
}

/// The first character YAML does not allow in a document (C0 and C1 controls other than
/// tab, line breaks and NEL; DEL): the mark of a binary file.
fn control_character(text: &str) -> Option<YamlError> {
    let (index, c) = text
        .char_indices()
        .find(|&(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{85}'))?;
    Some(YamlError {
        path: String::new(),
        at: position_after(text.get(..index).unwrap_or_default()),
        message: format!(
            "not YAML text: control character 0x{:02x} (a binary file?)",
            u32::from(c)
        ),
    })
}

/// Where the character after `prefix` is.
fn position_after(prefix: &str) -> Position {
    let line = prefix.matches('\n').count() + 1;
    let last_line = prefix.rsplit('\n').next().unwrap_or_default();
    Position {
        line,
        column: last_line.chars().count() + 1,
    }
}

/// Every line indented with a tab, at the tab.
fn indenting_tabs(text: &str) -> Vec<YamlError> {
    text.lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
            let tab = line.get(..indent)?.find('\t')?;
            Some(YamlError {
                path: String::new(),
                at: Position {
                    line: index + 1,
                    column: tab + 1,
                },
                message: "tab character used for indentation; YAML indents with spaces".to_owned(),
            })
        })
        .collect()
}

enum Frame {
    Sequence {
        path: String,
        at: Position,
        anchor: usize,
        items: Vec<Rc<Node>>,
    },
    Mapping {
        path: String,
        at: Position,
        anchor: usize,
        entries: Vec<(Rc<Node>, Rc<Node>)>,
        key: Option<Rc<Node>>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: std::collections::HashMap<usize, Rc<Node>>,
    root: Option<Rc<Node>>,
    nodes: usize,
    errors: Vec<YamlError>,
}

impl Builder {
    fn on_event(&mut self, event: Event, mark: Marker) -> Result<(), Vec<YamlError>> {
        let at = Position::from(mark);
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let plain = style == TScalarStyle::Plain && !is_str_tag(tag.as_ref());
                let node = Node {
                    kind: Kind::Scalar { text, plain },
                    at,
                    size: 1,
                };
                self.complete(node, anchor)?;
            }
            Event::Alias(anchor) => {
                let Some(node) = self.anchors.get(&anchor).cloned() else {
                    return Err(self.fail(at, "alias to an anchor that is not defined"));
                };
                self.add(node)?;
            }
            Event::SequenceStart(anchor, _) => {
                let path = self.next_path();
                self.stack.push(Frame::Sequence {
                    path,
                    at,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                let path = self.next_path();
                self.stack.push(Frame::Mapping {
                    path,
                    at,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Sequence {
                        at, anchor, items, ..
                    }) => (sized(Kind::Sequence(items), at), anchor),
                    Some(Frame::Mapping {
                        path,
                        at,
                        anchor,
                        entries,
                        ..
                    }) => {
                        let entries = merge(entries, &path, &mut self.errors);
                        (sized(Kind::Mapping(entries), at), anchor)
                    }
                    None => return Ok(()),
                };
                self.complete(node, anchor)?;
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
            Event::DocumentStart | Event::DocumentEnd => {}
        }
        Ok(())
    }

    fn fail(&self, at: Position, message: &str) -> Vec<YamlError> {
        let mut errors = self.errors.clone();
        errors.push(YamlError {
            path: String::new(),
            at,
            message: message.to_owned(),
        });
        errors
    }

    /// The path the next node will have.
    fn next_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Sequence { path, items, .. }) => child_index(path, items.len()),
            Some(Frame::Mapping { path, key, .. }) => match key.as_deref() {
                Some(key) => child_key(path, key.scalar().unwrap_or("?")),
                // A collection used as a key: it has no path of its own.
                None => child_key(path, "?"),
            },
        }
    }

    fn complete(&mut self, node: Node, anchor: usize) -> Result<(), Vec<YamlError>> {
        let node = Rc::new(node);
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        self.add(node)
    }

    fn add(&mut self, node: Rc<Node>) -> Result<(), Vec<YamlError>> {
        self.nodes = self.nodes.saturating_add(node.size);
        if self.nodes > MAX_NODES {
            return Err(self.fail(
                node.at,
                &format!(
                    "the document holds more than {MAX_NODES} values once its aliases are expanded"
                ),
            ));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Sequence { items, .. }) => items.push(node),
            Some(Frame::Mapping {
                path, entries, key, ..
            }) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    let name = k.scalar().filter(|name| *name != MERGE_KEY);
                    let first = name.and_then(|name| {
                        entries
                            .iter()
                            .find(|(other, _)| other.scalar() == Some(name))
                    });
                    match (name, first) {
                        (Some(name), Some((first, _))) => self.errors.push(YamlError {
                            path: child_key(path, name),
                            at: k.at,
                            message: format!(
                                "duplicate key {name:?} (first written at line {})",
                                first.at.line
                            ),
                        }),
                        _ => entries.push((k, node)),
                    }
                }
            },
        }
        Ok(())
    }
}

fn sized(kind: Kind, at: Position) -> Node {
    let children = match &kind {
        Kind::Scalar { .. } => 0,
        Kind::Sequence(items) => items.iter().map(|n| n.size).fold(0, usize::saturating_add),
        Kind::Mapping(entries) => entries
            .iter()
            .map(|(k, v)| k.size.saturating_add(v.size))
            .fold(0, usize::saturating_add),
    };
    Node {
        kind,
        at,
        size: children.saturating_add(1),
    }
}

fn is_str_tag(tag: Option<&Tag>) -> bool {
    tag.is_some_and(|tag| tag.handle == "tag:yaml.org,2002:" && tag.suffix == "str")
        || tag.is_some_and(|tag| tag.handle == "!!" && tag.suffix == "str")
}

/// Applies `<<` keys: the entries of the merged mapping(s) that the mapping does not set
/// itself, the first merged mapping winning, as YAML's merge key type defines it.
fn merge(
    entries: Vec<(Rc<Node>, Rc<Node>)>,
    path: &str,
    errors: &mut Vec<YamlError>,
) -> Vec<(Rc<Node>, Rc<Node>)> {
    let (merges, mut out): (Vec<_>, Vec<_>) = entries.into_iter().partition(
        |(k, _)| matches!(&k.kind, Kind::Scalar { text, plain: true } if text == MERGE_KEY),
    );
    for (key, value) in merges {
        let sources: Vec<&Node> = match &value.kind {
            Kind::Mapping(_) => vec![value.as_ref()],
            Kind::Sequence(items) if items.iter().all(|i| matches!(i.kind, Kind::Mapping(_))) => {
                items.iter().map(Rc::as_ref).collect()
            }
            _ => {
                errors.push(YamlError {
                    path: child_key(path, MERGE_KEY),
                    at: key.at,
                    message: "`<<` merges a mapping (`<<: *defaults`) or a list of mappings"
                        .to_owned(),
                });
                continue;
            }
        };
        for source in sources {
            let Kind::Mapping(source) = &source.kind else {
                continue;
            };
            for (k, v) in source {
                let present = out.iter().any(|(existing, _)| {
                    existing.scalar().is_some() && existing.scalar() == k.scalar()
                });
                if !present {
                    out.push((k.clone(), v.clone()));
                }
            }
        }
    }
    out
}

/// What a plain scalar means under YAML 1.2's core schema.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Resolved {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text,
}

fn resolve(text: &str) -> Resolved {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    let radix = |prefix: &str, radix: u32| {
        text.strip_prefix(prefix)
            .filter(|digits| !digits.is_empty())
            .and_then(|digits| u64::from_str_radix(digits, radix).ok())
    };
    if let Some(n) = radix("0x", 16).or_else(|| radix("0o", 8)) {
        return Resolved::Unsigned(n);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.trim_start_matches('+').parse::<u64>() {
            return Resolved::Unsigned(n);
        }
        if let Ok(n) = text.parse::<i64>() {
            return Resolved::Signed(n);
        }
        return Resolved::Text;
    }
    let float_chars = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if float_chars && digits.bytes().any(|b| b.is_ascii_digit()) {
        if let Ok(f) = text.parse::<f64>() {
            return Resolved::Float(f);
        }
    }
    Resolved::Text
}

/// A deserialization error, placed at the innermost node it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeError {
    pub message: String,
    pub place: Option<(String, Position)>,
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        DeError {
            message: message.to_string(),
            place: None,
        }
    }
}

impl DeError {
    fn placed(mut self, path: &str, at: Position) -> Self {
        if self.place.is_none() {
            self.place = Some((path.to_owned(), at));
        }
        self
    }
}

/// Deserializes `node`, found at `path`. Nodes whose paths are in `skip` read as absent.
pub fn from_node<T: DeserializeOwned>(
    node: &Node,
    path: &str,
    skip: &HashSet<String>,
) -> Result<T, DeError> {
    T::deserialize(NodeDeserializer {
        node,
        path: path.to_owned(),
        skip,
    })
}

/// The whole of `text` as one `T`: for tests and tools that need no per-item reporting.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, DeError> {
    let root = parse(text).map_err(|errors| {
        let first = errors.into_iter().next();
        DeError {
            message: first
                .as_ref()
                .map_or_else(String::new, |e| e.message.clone()),
            place: first.map(|e| (e.path, e.at)),
        }
    })?;
    let empty = Node {
        kind: Kind::Scalar {
            text: String::new(),
            plain: true,
        },
        at: Position { line: 1, column: 1 },
        size: 1,
    };
    from_node(root.as_deref().unwrap_or(&empty), "", &HashSet::new())
}

struct NodeDeserializer<'a> {
    node: &'a Node,
    path: String,
    skip: &'a HashSet<String>,
}

impl<'a> NodeDeserializer<'a> {
    fn child(&self, node: &'a Node, path: String) -> Self {
        NodeDeserializer {
            node,
            path,
            skip: self.skip,
        }
    }

    fn place(&self, error: DeError) -> DeError {
        error.placed(&self.path, self.node.at)
    }
}

impl<'de> de::Deserializer<'de> for NodeDeserializer<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.kind {
            Kind::Scalar { text, plain: false } => visitor.visit_str(text),
            Kind::Scalar { text, plain: true } => match resolve(text) {
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::Unsigned(n) => visitor.visit_u64(n),
                Resolved::Signed(n) => visitor.visit_i64(n),
                Resolved::Float(f) => visitor.visit_f64(f),
                Resolved::Text => visitor.visit_str(text),
            },
            Kind::Sequence(items) => visitor.visit_seq(SeqAccess {
                items: items.iter().enumerate(),
                parent: &self,
            }),
            Kind::Mapping(entries) => visitor.visit_map(MapAccess {
                entries: entries.iter(),
                value: None,
                parent: &self,
            }),
        };
        result.map_err(|e| self.place(e))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // A plain `80` or `true` is still text where text is wanted (`listen: 80`).
        let result = match &self.node.kind {
            Kind::Scalar { .. } if self.node.is_null() => {
                Err(de::Error::invalid_type(Unexpected::Other("null"), &visitor))
            }
            Kind::Scalar { text, .. } => visitor.visit_str(text),
            _ => return self.deserialize_any(visitor),
        };
        result.map_err(|e| self.place(e))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            visitor.visit_none().map_err(|e| self.place(e))
        } else {
            let at = (self.path.clone(), self.node.at);
            visitor.visit_some(self).map_err(|e| e.placed(&at.0, at.1))
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let result = match &self.node.kind {
            Kind::Scalar { text, .. } => visitor.visit_enum(
                IntoDeserializer::<DeError>::into_deserializer(text.as_str()),
            ),
            _ => Err(de::Error::invalid_type(Unexpected::Map, &visitor)),
        };
        result.map_err(|e| self.place(e))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct
    }
}

struct SeqAccess<'p, 'a, I> {
    items: I,
    parent: &'p NodeDeserializer<'a>,
}

impl<'de, 'a, I> de::SeqAccess<'de> for SeqAccess<'_, 'a, I>
where
    I: Iterator<Item = (usize, &'a Rc<Node>)>,
{
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        for (index, item) in self.items.by_ref() {
            let path = child_index(&self.parent.path, index);
            if self.parent.skip.contains(&path) {
                continue;
            }
            return seed.deserialize(self.parent.child(item, path)).map(Some);
        }
        Ok(None)
    }
}

struct MapAccess<'p, 'a, I> {
    entries: I,
    /// The value of the key just read, with its path.
    value: Option<(&'a Node, String)>,
    parent: &'p NodeDeserializer<'a>,
}

impl<'de, 'a, I> de::MapAccess<'de> for MapAccess<'_, 'a, I>
where
    I: Iterator<Item = &'a (Rc<Node>, Rc<Node>)>,
{
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        for (key, value) in self.entries.by_ref() {
            let path = child_key(&self.parent.path, key.scalar().unwrap_or("?"));
            if self.parent.skip.contains(&path) {
                continue;
            }
            // The key's errors (an unknown field) are placed at the entry's path.
            let key = seed.deserialize(self.parent.child(key, path.clone()))?;
            self.value = Some((value, path));
            return Ok(Some(key));
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some((node, path)) => seed.deserialize(self.parent.child(node, path)),
            None => Err(de::Error::custom("a value was asked for before its key")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Item {
        name: Option<String>,
        count: Option<u32>,
        on: Option<bool>,
        tags: Option<Vec<String>>,
    }

    fn at(line: usize, column: usize) -> Position {
        Position { line, column }
    }

    #[test]
    fn scalars_resolve_as_yaml_1_2_core() {
        assert_eq!(resolve("~"), Resolved::Null);
        assert_eq!(resolve(""), Resolved::Null);
        assert_eq!(resolve("True"), Resolved::Bool(true));
        assert_eq!(resolve("yes"), Resolved::Text);
        assert_eq!(resolve("42"), Resolved::Unsigned(42));
        assert_eq!(resolve("+42"), Resolved::Unsigned(42));
        assert_eq!(resolve("-3"), Resolved::Signed(-3));
        assert_eq!(resolve("0x1f"), Resolved::Unsigned(31));
        assert_eq!(resolve("0o17"), Resolved::Unsigned(15));
        assert_eq!(resolve("1.5"), Resolved::Float(1.5));
        assert_eq!(resolve("1e3"), Resolved::Float(1000.0));
        assert_eq!(resolve("10.0.0.1:80"), Resolved::Text);
        assert_eq!(resolve("30s"), Resolved::Text);
        assert_eq!(resolve("inf"), Resolved::Text);
        assert_eq!(resolve("99999999999999999999999"), Resolved::Text);
    }

    #[test]
    fn reads_values_where_they_are_wanted() {
        let item: Item = from_str("name: 80\ncount: 3\non: true\ntags: [a, \"b\", 1]\n").unwrap();
        assert_eq!(
            item,
            Item {
                name: Some("80".into()),
                count: Some(3),
                on: Some(true),
                tags: Some(vec!["a".into(), "b".into(), "1".into()]),
            }
        );
        let item: Item = from_str("name:\ncount: ~\n").unwrap();
        assert_eq!(item.name, None);
        assert_eq!(item.count, None);
    }

    #[test]
    fn errors_carry_path_and_position() {
        let error = from_str::<Item>("name: a\ncount: lots\n").unwrap_err();
        assert_eq!(error.place, Some(("count".into(), at(2, 8))));
        assert_eq!(error.message, "invalid type: string \"lots\", expected u32");

        let error = from_str::<Item>("name: a\ncuont: 1\n").unwrap_err();
        assert_eq!(error.place, Some(("cuont".into(), at(2, 1))));
        assert!(
            error.message.starts_with("unknown field `cuont`"),
            "{error}"
        );

        let error = from_str::<Item>("tags: [a, [b]]\n").unwrap_err();
        assert_eq!(error.place, Some(("tags[1]".into(), at(1, 11))));

        let error = from_str::<Item>("count: \"3\"\n").unwrap_err();
        assert_eq!(error.place, Some(("count".into(), at(1, 8))));
    }

    #[test]
    fn skipped_paths_read_as_absent() {
        let root = parse("name: a\ncount: lots\ntags: [x, [y]]\n")
            .unwrap()
            .unwrap();
        let skip: HashSet<String> = ["count".to_owned(), "tags[1]".to_owned()].into();
        let item: Item = from_node(&root, "", &skip).unwrap();
        assert_eq!(item.count, None);
        assert_eq!(item.tags, Some(vec!["x".into()]));
    }

    #[test]
    fn syntax_errors_have_a_place() {
        let errors = parse("a: [\n").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].at.line, 2);
    }

    #[test]
    fn duplicate_keys_are_reported_at_the_second() {
        let errors = parse("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n").unwrap_err();
        let found: Vec<(&str, Position)> = errors.iter().map(|e| (e.path.as_str(), e.at)).collect();
        assert_eq!(found, [("b.c", at(4, 3)), ("a", at(5, 1))]);
        assert!(errors[0].message.contains("first written at line 3"));
    }

    #[test]
    fn aliases_and_merge_keys() {
        let root = parse("base: &b { x: 1, y: 2 }\nother:\n  <<: *b\n  y: 3\n")
            .unwrap()
            .unwrap();
        let other = root.get("other").unwrap();
        assert_eq!(other.get("x").and_then(Node::scalar), Some("1"));
        assert_eq!(other.get("y").and_then(Node::scalar), Some("3"));
        assert!(other.get("<<").is_none());
        let errors = parse("a:\n  <<: 5\n").unwrap_err();
        assert_eq!(errors[0].path, "a.<<");
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let errors = parse(&text).unwrap_err();
        assert!(errors[0].message.contains("aliases"), "{:?}", errors[0]);
    }

    #[test]
    fn text_that_is_not_yaml() {
        let error = decode(b"a: 1\nb: caf\xe9\n").unwrap_err();
        assert_eq!(error.at, at(2, 7));
        assert!(error.message.contains("0xe9"), "{error}");
        assert_eq!(decode(b"a: 1").unwrap(), "a: 1");
        let errors = parse("a: 1\nb: \u{0}\n").unwrap_err();
        assert_eq!(errors[0].at, at(2, 4));
        assert!(parse("a: \u{85}x\tb\r\n").is_ok());
    }

    #[test]
    fn tabs_in_the_indentation_are_named() {
        let errors = parse("a:\n\tb: 1\n  \tc: 2\n").unwrap_err();
        let places: Vec<Position> = errors.iter().map(|e| e.at).collect();
        assert_eq!(places, [at(2, 1), at(3, 3)]);
        assert!(errors[0].message.contains("tab"));
        // A tab that breaks nothing is not an error.
        assert!(parse("a: |\n  x\ty\n").is_ok());
    }

    #[test]
    fn only_one_document() {
        let errors = parse("a: 1\n---\na: 2\n").unwrap_err();
        assert_eq!(errors[0].at.line, 2);
        assert_eq!(parse("# nothing\n").unwrap(), None);
    }
}
