//! Durations as Graft's API writes them: `60s`, `5m`, `1h30m`, `1.5s`, `500ms`.
//!
//! The accepted syntax is a subset of Go's `time.ParseDuration` (and so of the
//! CEL `duration()` function the API server uses): one or more
//! `<number><unit>` pairs, where the number is an unsigned decimal and the unit
//! is `ms`, `s`, `m` or `h`. No sign, no spaces, no days. The schema carries
//! [`DURATION_PATTERN`], so an object that the API server accepted always
//! parses here.

use std::{fmt, time::Duration};

/// The OpenAPI `pattern` every duration field carries (RE2 syntax).
/// It has no backslash, so CEL rules can embed it in a plain string literal.
pub const DURATION_PATTERN: &str = "^([0-9]+([.][0-9]+)?(ms|s|m|h))+$";

/// Longest duration string the schema accepts (it bounds CEL evaluation cost).
pub const DURATION_MAX_LENGTH: usize = 32;

/// Why a duration string did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurationError {
    input: String,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid duration {:?}: write a number followed by a unit (ms, s, m or h), \
             optionally repeated, e.g. 60s, 5m or 1h30m",
            self.input
        )
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration written as the API accepts it (see the module docs).
///
/// ```
/// use std::time::Duration;
/// assert_eq!(graft_crds::parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(graft_crds::parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert!(graft_crds::parse_duration("60").is_err());
/// ```
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_owned(),
    };
    if input.is_empty() || input.len() > DURATION_MAX_LENGTH {
        return Err(err());
    }
    let mut rest = input;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if int_len == 0 {
            return Err(err());
        }
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, after_number) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                if frac_len == 0 {
                    return Err(err());
                }
                after_dot.split_at(frac_len)
            }
            None => ("", after_int),
        };
        let (unit_nanos, after_unit): (u128, &str) =
            if let Some(r) = after_number.strip_prefix("ms") {
                (1_000_000, r)
            } else if let Some(r) = after_number.strip_prefix('s') {
                (1_000_000_000, r)
            } else if let Some(r) = after_number.strip_prefix('m') {
                (60_000_000_000, r)
            } else if let Some(r) = after_number.strip_prefix('h') {
                (3_600_000_000_000, r)
            } else {
                return Err(err());
            };
        // Exact integer arithmetic: whole units plus the fraction, truncated to
        // nanoseconds (as Go does).
        let whole: u128 = int_part.parse().map_err(|_| err())?;
        let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(err)?;
        let mut scale = unit_nanos;
        for digit in frac_part.bytes() {
            scale /= 10;
            nanos += u128::from(digit - b'0') * scale;
        }
        let nanos = u64::try_from(nanos).map_err(|_| err())?;
        total = total
            .checked_add(Duration::from_nanos(nanos))
            .ok_or_else(err)?;
        rest = after_unit;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_schema_accepts() {
        let cases = [
            ("60s", Duration::from_secs(60)),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("1h0m0s", Duration::from_secs(3600)),
            ("500ms", Duration::from_millis(500)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.25m", Duration::from_secs(15)),
            ("2m500ms", Duration::from_millis(120_500)),
            ("0s", Duration::ZERO),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_duration(input), Ok(expected), "{input}");
        }
    }

    #[test]
    fn rejects_what_the_schema_rejects() {
        for input in [
            "", "60", "s", "-5s", "+5s", "5 s", "1d", "1.s", ".5s", "5us", "1h30", "1e3s", "inf",
            "NaNs",
        ] {
            let error = parse_duration(input).expect_err(input);
            assert!(error.to_string().contains("e.g. 60s"), "{error}");
        }
    }

    #[test]
    fn rejects_overflow_instead_of_panicking() {
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("9999999999999h").is_err());
    }
}
