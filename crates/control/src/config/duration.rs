//! Durations as written in the config: `250ms`, `5s`, `1m`, `1h`, `1d`, or several of them
//! combined from the largest unit to the smallest, like `1m30s` or `1h30m`.
//!
//! Every value needs a unit: a bare `30` is rejected because nginx reads it as seconds and
//! HAProxy as milliseconds, and guessing wrong is a 1000× mistake.

use std::fmt;
use std::time::Duration;

/// Why a duration did not parse. The `Display` text is meant to follow `<path>: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration; write e.g. 5s, 250ms or 1m30s")]
    Empty,
    #[error("{0:?}: durations cannot be negative")]
    Negative(String),
    #[error("{0:?}: missing unit; write e.g. {0}s (units: ms, s, m, h, d)")]
    MissingUnit(String),
    #[error("{input:?}: unknown unit {unit:?}; use ms, s, m, h or d")]
    UnknownUnit { input: String, unit: String },
    #[error("{input:?}: expected a number before {unit:?}")]
    MissingNumber { input: String, unit: String },
    #[error("{0:?}: fractions are not supported; use a smaller unit, e.g. 1500ms instead of 1.5s")]
    Fraction(String),
    #[error(
        "{0:?}: units must go from largest to smallest, each at most once (e.g. 1h30m, 1m30s)"
    )]
    UnitOrder(String),
    #[error("{0:?}: duration is too large")]
    Overflow(String),
}

/// Units from largest to smallest, with their size in milliseconds.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a config duration. Whitespace around the value is ignored; inside it is not allowed.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative(text.to_owned()));
    }
    if text.chars().all(|c| c.is_ascii_digit()) {
        return Err(DurationError::MissingUnit(text.to_owned()));
    }

    let mut total: u64 = 0;
    // Index into UNITS of the last unit seen: the next one must come strictly after it.
    let mut last_unit: Option<usize> = None;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, after) = rest.split_at(digits_len);
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after_unit) = after.split_at(unit_len);

        if unit.is_empty() {
            // Either a bare trailing number (`1m30`) or a character that is neither digit nor
            // letter (`1.5s`, `1 s`, `+5s`).
            return Err(if after.starts_with('.') || after.starts_with(',') {
                DurationError::Fraction(text.to_owned())
            } else if after.is_empty() {
                DurationError::MissingUnit(text.to_owned())
            } else {
                DurationError::UnknownUnit {
                    input: text.to_owned(),
                    unit: after.chars().take(1).collect(),
                }
            });
        }
        let Some(unit_index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(DurationError::UnknownUnit {
                input: text.to_owned(),
                unit: unit.to_owned(),
            });
        };
        if digits.is_empty() {
            return Err(DurationError::MissingNumber {
                input: text.to_owned(),
                unit: unit.to_owned(),
            });
        }
        if last_unit.is_some_and(|last| unit_index <= last) {
            return Err(DurationError::UnitOrder(text.to_owned()));
        }
        last_unit = Some(unit_index);

        let overflow = || DurationError::Overflow(text.to_owned());
        let count: u64 = digits.parse().map_err(|_| overflow())?;
        let millis = count
            .checked_mul(UNITS[unit_index].1)
            .ok_or_else(overflow)?;
        total = total.checked_add(millis).ok_or_else(overflow)?;
        rest = after_unit;
    }
    Ok(Duration::from_millis(total))
}

/// Formats a duration the way [`parse_duration`] reads it, in whole milliseconds (anything
/// finer is truncated): `1m30s`, `250ms`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    FormatDuration(duration).to_string()
}

struct FormatDuration(Duration);

impl fmt::Display for FormatDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // u64 milliseconds last 584 million years: saturating is only for absurd inputs.
        let mut millis = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if millis == 0 {
            return f.write_str("0s");
        }
        for (name, size) in UNITS {
            let count = millis / size;
            if count > 0 {
                write!(f, "{count}{name}")?;
                millis %= size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn single_units() {
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("5s"), Ok(ms(5_000)));
        assert_eq!(parse_duration("1m"), Ok(ms(60_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("1d"), Ok(ms(86_400_000)));
        assert_eq!(parse_duration("0s"), Ok(ms(0)));
        assert_eq!(parse_duration(" 5s "), Ok(ms(5_000)));
    }

    #[test]
    fn combined_units() {
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("1d2h3m4s5ms"), Ok(ms(93_784_005)));
        assert_eq!(parse_duration("1s500ms"), Ok(ms(1_500)));
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("   "), Err(DurationError::Empty));
    }

    #[test]
    fn rejects_negative() {
        let err = parse_duration("-5s").unwrap_err();
        assert_eq!(err, DurationError::Negative("-5s".into()));
        assert!(err.to_string().contains("cannot be negative"));
    }

    #[test]
    fn rejects_missing_unit() {
        let err = parse_duration("30").unwrap_err();
        assert_eq!(err, DurationError::MissingUnit("30".into()));
        assert!(err.to_string().contains("missing unit; write e.g. 30s"));
        assert!(matches!(
            parse_duration("1m30"),
            Err(DurationError::MissingUnit(_))
        ));
    }

    #[test]
    fn rejects_unknown_unit_and_missing_number() {
        assert_eq!(
            parse_duration("5sec"),
            Err(DurationError::UnknownUnit {
                input: "5sec".into(),
                unit: "sec".into()
            })
        );
        assert!(matches!(
            parse_duration("5 s"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("s"),
            Err(DurationError::MissingNumber { .. })
        ));
        assert!(matches!(
            parse_duration("1.5s"),
            Err(DurationError::Fraction(_))
        ));
    }

    #[test]
    fn rejects_bad_order_and_repeats() {
        assert!(matches!(
            parse_duration("30s1m"),
            Err(DurationError::UnitOrder(_))
        ));
        assert!(matches!(
            parse_duration("1s1s"),
            Err(DurationError::UnitOrder(_))
        ));
    }

    #[test]
    fn rejects_overflow() {
        assert!(matches!(
            parse_duration("99999999999999999999999s"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse_duration("213503982335d"),
            Err(DurationError::Overflow(_))
        ));
        let max = format!("{}ms", u64::MAX);
        assert_eq!(parse_duration(&max), Ok(ms(u64::MAX)));
        assert!(matches!(
            parse_duration(&format!("1s{}ms", u64::MAX)),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats() {
        assert_eq!(format_duration(ms(0)), "0s");
        assert_eq!(format_duration(ms(90_000)), "1m30s");
        assert_eq!(format_duration(ms(250)), "250ms");
        assert_eq!(format_duration(ms(86_400_001)), "1d1ms");
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(millis in any::<u64>()) {
            let d = ms(millis);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn never_panics(s in ".{0,24}") {
            let _ = parse_duration(&s);
        }
    }
}
