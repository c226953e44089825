//! Helpers every part of validation uses: durations, enumerated values, limits, references
//! to pools, and "did you mean" suggestions.

use std::time::Duration;

use crate::config::diagnostic::{Checked, Diagnostics, Reported};
use crate::config::duration::parse_duration;
use crate::config::raw::{Item, RawDuration};

pub(super) fn parsed_items<T>(items: &Option<Vec<Item<T>>>) -> impl Iterator<Item = (usize, &T)> {
    items
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(index, item)| item.parsed().map(|parsed| (index, parsed)))
}

pub(super) fn resolve_duration(
    raw: Option<&RawDuration>,
    path: &str,
    default: Duration,
    zero_allowed: bool,
    diag: &mut Diagnostics<'_>,
) -> Checked<Duration> {
    let Some(RawDuration(text)) = raw else {
        return Ok(default);
    };
    match parse_duration(text) {
        Ok(duration) if duration.is_zero() && !zero_allowed => {
            diag.error(path, format!("{text:?}: must be greater than zero"));
            Err(Reported)
        }
        Ok(duration) => Ok(duration),
        Err(error) => {
            diag.error(path, error.to_string());
            Err(Reported)
        }
    }
}

/// An enumerated value: absent means the first choice; an unknown one is reported with the
/// closest valid spelling.
pub(super) fn resolve_choice<T: Copy>(
    raw: Option<&str>,
    path: &str,
    what: &str,
    choices: &[(&str, T)],
    diag: &mut Diagnostics<'_>,
) -> Checked<T> {
    let found = match raw {
        None => choices.first(),
        Some(text) => choices.iter().find(|(name, _)| *name == text),
    };
    if let Some((_, value)) = found {
        return Ok(*value);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    diag.error(path, unknown_value(what, raw.unwrap_or_default(), &names));
    Err(Reported)
}

/// A connection limit: absent means unlimited, and 0 would refuse everything.
pub(super) fn resolve_limit(
    raw: Option<u64>,
    path: &str,
    diag: &mut Diagnostics<'_>,
) -> Checked<Option<u64>> {
    match raw {
        Some(0) => {
            diag.error(
                path,
                "must be at least 1; leave `max_connections` out for no limit",
            );
            Err(Reported)
        }
        other => Ok(other),
    }
}

pub(super) struct KnownPools {
    pub(super) names: Vec<String>,
    /// `pools:` itself did not parse: every reference would look unknown.
    pub(super) section_broken: bool,
    pub(super) section_present: bool,
}

pub(super) fn check_pool_reference(
    path: &str,
    name: &str,
    pools: &KnownPools,
    diag: &mut Diagnostics<'_>,
) -> Checked<String> {
    if pools.names.iter().any(|known| known == name) {
        return Ok(name.to_owned());
    }
    if !pools.section_broken {
        let mut message = format!("no pool named {name:?}");
        if let Some(suggestion) = did_you_mean(name, pools.names.iter().map(String::as_str)) {
            message.push_str(&format!("; did you mean {suggestion:?}?"));
        } else if !pools.section_present {
            message.push_str(" (there is no `pools:` section)");
        }
        diag.error(path, message);
    }
    Err(Reported)
}

/// `unknown <what> "x" (did you mean "y"?); expected one of: a, b, c`.
pub(super) fn unknown_value(what: &str, value: &str, valid: &[&str]) -> String {
    let mut message = format!("unknown {what} {value:?}");
    if let Some(suggestion) = did_you_mean(value, valid.iter().copied()) {
        message.push_str(&format!(" (did you mean {suggestion:?}?)"));
    }
    message.push_str(&format!("; expected one of: {}", valid.join(", ")));
    message
}

/// The candidate closest to `word`, if it is close enough to be a typo of it.
fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    const MAX_DISTANCE: usize = 2;
    let word_len = word.chars().count();
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(word, candidate), candidate))
        // A distance as long as the words themselves is a different word, not a typo.
        .filter(|(distance, candidate)| {
            *distance <= MAX_DISTANCE && *distance < word_len.max(candidate.chars().count())
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, ignoring ASCII case.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("pg", "pgg"), 1);
        assert_eq!(edit_distance("maglv", "maglev"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("Round_Robin", "round_robin"), 0);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("pgg", ["pg", "web"]), Some("pg"));
        assert_eq!(did_you_mean("wbe", ["pg", "web"]), Some("web"));
        assert_eq!(did_you_mean("x", ["pg", "web"]), None);
        assert_eq!(did_you_mean("zz", ["pg"]), None);
        assert_eq!(did_you_mean("anything", std::iter::empty()), None);
    }
}
