//! Gateway API durations (GEP-2257).
//!
//! A GEP-2257 duration is text that matches `^([0-9]{1,5}(h|m|s|ms)){1,4}$` and means what
//! Go's `time.ParseDuration` makes of it: the sum of its components. So `1h30m`, `90m`,
//! `01h`, `1h1h` (two hours) and `0s` are valid; `1.5h`, `0`, `-1s`, `1d` and `1h2m3s4ms5s`
//! (five components) are not.
//!
//! Formatting is canonical: `0s` for zero, otherwise each non-zero unit once, largest first
//! (`1h30m`, `2s500ms`). Values are whole milliseconds up to 99999h59m59s999ms, the largest
//! a canonical string can express, so every value formats to a string that parses back to it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MS_PER_SECOND: u64 = 1_000;
const MS_PER_MINUTE: u64 = 60 * MS_PER_SECOND;
const MS_PER_HOUR: u64 = 60 * MS_PER_MINUTE;

/// A duration that obeys GEP-2257, in whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GatewayDuration {
    ms: u64,
}

/// Why a text is not a GEP-2257 duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a Gateway API duration: {reason} (expected 1 to 4 components of 1 to 5 digits followed by h, m, s or ms, like 1h30m or 500ms)"
)]
pub struct DurationError {
    text: String,
    reason: &'static str,
}

impl GatewayDuration {
    /// Largest value: 99999h59m59s999ms.
    pub const MAX: GatewayDuration = GatewayDuration {
        ms: 99_999 * MS_PER_HOUR + 59 * MS_PER_MINUTE + 59 * MS_PER_SECOND + 999,
    };

    /// Zero (`0s`).
    pub const ZERO: GatewayDuration = GatewayDuration { ms: 0 };

    /// From whole milliseconds; `None` above [`GatewayDuration::MAX`].
    pub const fn from_millis(ms: u64) -> Option<Self> {
        if ms > Self::MAX.ms {
            None
        } else {
            Some(Self { ms })
        }
    }

    /// Whole milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.ms
    }

    /// As a `std` duration.
    pub const fn as_std(self) -> Duration {
        Duration::from_millis(self.ms)
    }
}

impl FromStr for GatewayDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason| DurationError {
            text: crate::key::truncate_for_message(text).to_owned(),
            reason,
        };
        let bytes = text.as_bytes();
        if bytes.is_empty() {
            return Err(fail("it is empty"));
        }
        let mut pos = 0;
        let mut components = 0;
        let mut total: u64 = 0;
        while pos < bytes.len() {
            components += 1;
            if components > 4 {
                return Err(fail("it has more than 4 components"));
            }
            let digits_start = pos;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            let digits = &bytes[digits_start..pos];
            if digits.is_empty() {
                return Err(fail("a component does not start with a number"));
            }
            if digits.len() > 5 {
                return Err(fail("a component has more than 5 digits"));
            }
            // At most 5 ASCII digits: always fits.
            let value = digits
                .iter()
                .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
            let unit_ms = match (bytes.get(pos), bytes.get(pos + 1)) {
                (Some(b'm'), Some(b's')) => {
                    pos += 2;
                    1
                }
                (Some(b'h'), _) => {
                    pos += 1;
                    MS_PER_HOUR
                }
                (Some(b'm'), _) => {
                    pos += 1;
                    MS_PER_MINUTE
                }
                (Some(b's'), _) => {
                    pos += 1;
                    MS_PER_SECOND
                }
                (None, _) => return Err(fail("a number has no unit")),
                (Some(_), _) => return Err(fail("a unit is not h, m, s or ms")),
            };
            // 4 components of at most 99999h: no overflow in u64.
            total += value * unit_ms;
        }
        GatewayDuration::from_millis(total)
            .ok_or_else(|| fail("it is longer than 99999h59m59s999ms"))
    }
}

impl fmt::Display for GatewayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ms == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.ms;
        for (unit_ms, suffix) in [
            (MS_PER_HOUR, "h"),
            (MS_PER_MINUTE, "m"),
            (MS_PER_SECOND, "s"),
            (1, "ms"),
        ] {
            let n = rest / unit_ms;
            rest %= unit_ms;
            if n > 0 {
                write!(f, "{n}{suffix}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for GatewayDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GatewayDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(text: &str) -> u64 {
        text.parse::<GatewayDuration>()
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .as_millis()
    }

    #[test]
    fn valid_durations_follow_go() {
        let cases = [
            ("0s", 0),
            ("0h", 0),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("90m", 5_400_000),
            ("01h", 3_600_000),
            ("00060m", 3_600_000),
            ("1h1h", 7_200_000),
            ("1ms", 1),
            ("500ms", 500),
            ("1m1s", 61_000),
            ("1h30m30s500ms", 5_430_500),
            ("99999ms", 99_999),
            ("1s1m", 61_000),
            ("10m10ms", 600_010),
        ];
        for (text, want) in cases {
            assert_eq!(ms(text), want, "{text}");
        }
    }

    #[test]
    fn invalid_durations() {
        for text in [
            "",
            "0",
            "1",
            "1.5h",
            "-1s",
            "+1s",
            "1d",
            "1us",
            "1ns",
            "h",
            "1H",
            " 1h",
            "1h ",
            "100000s",
            "1h2m3s4ms5s",
            "1h-1m",
            "1mss",
            "1sm",
            "1h_30m",
            "١s",
        ] {
            assert!(
                text.parse::<GatewayDuration>().is_err(),
                "{text:?} should be invalid"
            );
        }
    }

    #[test]
    fn over_the_canonical_maximum_is_refused() {
        assert_eq!(ms("99999h59m59s999ms"), GatewayDuration::MAX.as_millis());
        assert!("99999h60m".parse::<GatewayDuration>().is_err());
        assert!("99999h99999h".parse::<GatewayDuration>().is_err());
    }

    #[test]
    fn canonical_formatting() {
        let cases = [
            (0, "0s"),
            (1, "1ms"),
            (1_000, "1s"),
            (61_000, "1m1s"),
            (3_600_000, "1h"),
            (5_400_000, "1h30m"),
            (5_430_500, "1h30m30s500ms"),
            (7_200_001, "2h1ms"),
        ];
        for (ms, want) in cases {
            assert_eq!(GatewayDuration::from_millis(ms).unwrap().to_string(), want);
        }
        assert_eq!(
            "90m".parse::<GatewayDuration>().unwrap().to_string(),
            "1h30m"
        );
    }

    #[test]
    fn error_says_what_is_expected() {
        let err = "1.5h".parse::<GatewayDuration>().unwrap_err().to_string();
        assert!(err.contains("\"1.5h\""), "{err}");
        assert!(err.contains("h, m, s or ms"), "{err}");
    }

    #[test]
    fn serde_uses_the_text_form() {
        let d: GatewayDuration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m\"");
        assert!(serde_json::from_str::<GatewayDuration>("\"1.5h\"").is_err());
        assert!(serde_json::from_str::<GatewayDuration>("5").is_err());
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(ms in 0..=GatewayDuration::MAX.as_millis()) {
            let d = GatewayDuration::from_millis(ms).unwrap();
            let text = d.to_string();
            prop_assert_eq!(text.parse::<GatewayDuration>().unwrap(), d);
        }

        #[test]
        fn canonical_text_matches_the_gep_grammar(ms in 0..=GatewayDuration::MAX.as_millis()) {
            let text = GatewayDuration::from_millis(ms).unwrap().to_string();
            // Re-check the grammar by hand: components of 1..=5 digits and a unit, at most 4.
            let mut components = 0;
            let mut rest = text.as_str();
            while !rest.is_empty() {
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                prop_assert!((1..=5).contains(&digits), "{}", text);
                rest = &rest[digits..];
                let unit = if rest.starts_with("ms") { 2 } else { 1 };
                prop_assert!(["h", "m", "s", "ms"].contains(&&rest[..unit]), "{}", text);
                rest = &rest[unit..];
                components += 1;
            }
            prop_assert!((1..=4).contains(&components), "{}", text);
        }

        #[test]
        fn grammar_strings_parse_to_the_sum(parts in proptest::collection::vec((0u64..=99_999, 0usize..4), 1..=4)) {
            let units = [("h", MS_PER_HOUR), ("m", MS_PER_MINUTE), ("s", MS_PER_SECOND), ("ms", 1)];
            let mut text = String::new();
            for (n, u) in &parts {
                text.push_str(&n.to_string());
                text.push_str(units[*u].0);
            }
            let sum: u64 = parts.iter().map(|(n, u)| n * units[*u].1).sum();
            let parsed = text.parse::<GatewayDuration>();
            if sum <= GatewayDuration::MAX.as_millis() {
                prop_assert_eq!(parsed.unwrap().as_millis(), sum);
            } else {
                prop_assert!(parsed.is_err());
            }
        }

        #[test]
        fn parse_never_panics(text in ".{0,40}") {
            let _ = text.parse::<GatewayDuration>();
        }
    }
}
