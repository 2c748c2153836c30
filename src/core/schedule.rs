//! Rotation periods and the instants derived from them. Pure: `now` is always an argument.

use std::fmt;

use jiff::{SignedDuration, Timestamp};

/// Shortest rotation period accepted.
pub const MIN_PERIOD: Period = Period(60);
/// Longest rotation period accepted (3650 days).
pub const MAX_PERIOD: Period = Period(3650 * 86_400);

/// A rotation period, in whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Period(u64);

/// Why a period string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeriodError {
    #[error(
        "must be one or more <integer><unit> pairs with units w, d, h, m, s (e.g. 30d, 12h, 1h30m)"
    )]
    Syntax,
    #[error("is too long to represent")]
    Overflow,
    #[error("must be at least 1m")]
    TooShort,
    #[error("must be at most 3650d")]
    TooLong,
}

impl Period {
    /// Builds a period from seconds (no bounds check).
    pub const fn from_secs(secs: u64) -> Self {
        Period(secs)
    }

    /// Length in seconds.
    pub fn as_secs(self) -> u64 {
        self.0
    }

    /// Parses `<integer><unit>` pairs (`30d`, `1h30m`, `90s`) and checks the 1m..=3650d bounds.
    pub fn parse(text: &str) -> Result<Self, PeriodError> {
        let period = Self::parse_unbounded(text)?;
        if period < MIN_PERIOD {
            Err(PeriodError::TooShort)
        } else if period > MAX_PERIOD {
            Err(PeriodError::TooLong)
        } else {
            Ok(period)
        }
    }

    /// Parses the same syntax with no bounds (a duration that is not a rotation period).
    pub fn parse_unbounded(text: &str) -> Result<Self, PeriodError> {
        if text.is_empty() {
            return Err(PeriodError::Syntax);
        }
        let mut total: u64 = 0;
        let mut number: Option<u64> = None;
        for c in text.chars() {
            if let Some(digit) = c.to_digit(10) {
                let n = number.unwrap_or(0);
                number = Some(
                    n.checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(digit)))
                        .ok_or(PeriodError::Overflow)?,
                );
                continue;
            }
            let unit = match c {
                'w' => 7 * 86_400,
                'd' => 86_400,
                'h' => 3_600,
                'm' => 60,
                's' => 1,
                _ => return Err(PeriodError::Syntax),
            };
            let n = number.take().ok_or(PeriodError::Syntax)?;
            total = n
                .checked_mul(unit)
                .and_then(|secs| total.checked_add(secs))
                .ok_or(PeriodError::Overflow)?;
        }
        if number.is_some() {
            return Err(PeriodError::Syntax);
        }
        Ok(Period(total))
    }

    /// The period as a signed duration for timestamp arithmetic.
    pub fn as_duration(self) -> SignedDuration {
        // Bounded by MAX_PERIOD when parsed, far inside i64.
        SignedDuration::from_secs(i64::try_from(self.0).unwrap_or(i64::MAX))
    }
}

/// Canonical text: largest units first (`90s` prints as `1m30s`, `14d` as `2w`).
impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.0;
        for (unit, secs) in [
            ('w', 7 * 86_400),
            ('d', 86_400),
            ('h', 3_600),
            ('m', 60),
            ('s', 1),
        ] {
            if rest >= secs {
                write!(f, "{}{unit}", rest / secs)?;
                rest %= secs;
            }
        }
        Ok(())
    }
}

/// When a credential issued at `issued_at` is due for scheduled rotation.
pub fn next_rotation_at(issued_at: Timestamp, period: Period) -> Timestamp {
    issued_at
        .checked_add(period.as_duration())
        .unwrap_or(Timestamp::MAX)
}

/// Whether a scheduled rotation is due at `now`.
pub fn rotation_due(issued_at: Timestamp, period: Period, now: Timestamp) -> bool {
    now >= next_rotation_at(issued_at, period)
}

/// Whether a token with `expires_at` has expired at `now`.
pub fn expired(expires_at: Option<Timestamp>, now: Timestamp) -> bool {
    expires_at.is_some_and(|at| now >= at)
}

/// The earliest of the instants at which something will change for the token.
pub fn next_wakeup(instants: impl IntoIterator<Item = Option<Timestamp>>) -> Option<Timestamp> {
    instants.into_iter().flatten().min()
}

/// First retry delay after a failed reconcile.
pub const BACKOFF_BASE: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest retry delay.
pub const BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(300);

/// How long to wait after the `failures`-th consecutive failure (1 for the first): doubling from
/// [`BACKOFF_BASE`] up to [`BACKOFF_MAX`], then scaled by `jitter` in `[0, 1)` into the upper half of
/// that delay, so tokens that failed together do not retry together.
pub fn backoff(failures: u32, jitter: f64) -> std::time::Duration {
    let doubling = BACKOFF_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let delay = doubling.min(BACKOFF_MAX);
    delay.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A duration flag in the period syntax (`10s`, `1m30s`), for command-line parsers.
pub fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    Period::parse_unbounded(text)
        .map(|p| std::time::Duration::from_secs(p.as_secs()))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes_with_jitter_in_the_upper_half() {
        use std::time::Duration;
        assert_eq!(backoff(1, 0.999_999).as_millis(), 999);
        assert_eq!(backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(2, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(4, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(9, 0.0), Duration::from_secs(128));
        assert_eq!(backoff(10, 0.0), Duration::from_secs(150));
        assert_eq!(backoff(u32::MAX, 1.0), BACKOFF_MAX);
        for failures in 1..40 {
            assert!(backoff(failures, 0.5) <= BACKOFF_MAX);
            assert!(backoff(failures + 1, 0.0) >= backoff(failures, 0.0));
        }
    }
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_examples() {
        assert_eq!(Period::parse("30d").unwrap().as_secs(), 30 * 86_400);
        assert_eq!(Period::parse("12h").unwrap().as_secs(), 12 * 3_600);
        assert_eq!(Period::parse("1h30m").unwrap().as_secs(), 5_400);
        assert_eq!(Period::parse("90s").unwrap().as_secs(), 90);
        assert_eq!(Period::parse("2w").unwrap().as_secs(), 14 * 86_400);
    }

    #[test]
    fn enforces_bounds() {
        assert_eq!(Period::parse("59s"), Err(PeriodError::TooShort));
        assert!(Period::parse("1m").is_ok());
        assert!(Period::parse("3650d").is_ok());
        assert_eq!(Period::parse("3650d1s"), Err(PeriodError::TooLong));
        assert_eq!(Period::parse("0s"), Err(PeriodError::TooShort));
    }

    #[test]
    fn rejects_malformed_text() {
        for text in ["", "d", "30", "1.5h", "10y", "1h 30m", "-1h", "h1"] {
            assert_eq!(Period::parse(text), Err(PeriodError::Syntax), "{text:?}");
        }
        assert_eq!(
            Period::parse("99999999999999999999999d"),
            Err(PeriodError::Overflow)
        );
    }

    #[test]
    fn overdue_rotation_is_due_once_not_per_missed_period() {
        let issued = Timestamp::from_second(1_000_000).unwrap();
        let period = Period::parse("1h").unwrap();
        let now = issued + SignedDuration::from_hours(5);
        assert!(rotation_due(issued, period, now));
        // After rotating at `now`, the next one is a full period later, not one of the missed slots.
        assert!(!rotation_due(now, period, now));
        assert_eq!(
            next_rotation_at(now, period),
            now + SignedDuration::from_hours(1)
        );
    }

    #[test]
    fn rotation_is_due_exactly_at_the_instant() {
        let issued = Timestamp::from_second(1_000_000).unwrap();
        let period = Period::parse("90s").unwrap();
        let due = next_rotation_at(issued, period);
        assert!(!rotation_due(
            issued,
            period,
            due - SignedDuration::from_millis(1)
        ));
        assert!(rotation_due(issued, period, due));
    }

    #[test]
    fn expiry_is_inclusive_of_the_instant() {
        let at = Timestamp::from_second(2_000_000).unwrap();
        assert!(!expired(Some(at), at - SignedDuration::from_secs(1)));
        assert!(expired(Some(at), at));
        assert!(!expired(None, at));
    }

    #[test]
    fn next_wakeup_is_the_earliest_instant() {
        let a = Timestamp::from_second(10).unwrap();
        let b = Timestamp::from_second(20).unwrap();
        assert_eq!(next_wakeup([Some(b), None, Some(a)]), Some(a));
        assert_eq!(next_wakeup([None, None]), None);
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(secs in 60u64..=3650 * 86_400) {
            let period = Period::from_secs(secs);
            prop_assert_eq!(Period::parse(&period.to_string()), Ok(period));
        }

        #[test]
        fn any_sum_of_pairs_parses_to_its_total(parts in prop::collection::vec((0u64..10_000, 0usize..5), 1..5)) {
            let units = [('w', 604_800u64), ('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];
            let text: String = parts.iter().map(|(n, u)| format!("{n}{}", units[*u].0)).collect();
            let total: u64 = parts.iter().map(|(n, u)| n * units[*u].1).sum();
            let parsed = Period::parse(&text);
            if (60..=3650 * 86_400).contains(&total) {
                prop_assert_eq!(parsed, Ok(Period::from_secs(total)));
            } else {
                prop_assert!(parsed.is_err());
            }
        }

        #[test]
        fn text_with_a_foreign_character_is_rejected(prefix in "[0-9]{1,3}[wdhms]", bad in "[^0-9wdhms]", suffix in "[0-9]{0,3}[wdhms]?") {
            let text = format!("{prefix}{bad}{suffix}");
            prop_assert_eq!(Period::parse(&text), Err(PeriodError::Syntax));
        }
    }
}
