//! Durations (`500ms`, `10s`, `5m`, `1h`, `7d`) and sizes (`256MiB`, `65536`) as they are
//! written in the config file, and the arithmetic on durations that can neither panic nor
//! wrap (`later`, `millis`).

use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, de};

/// A duration written as text in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(Span).map_err(de::Error::custom)
    }
}

/// Parses `500ms`, `10s`, `5m`, `1h`, `7d` (and combinations such as `1h 30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.chars().all(|c| c.is_ascii_digit()) && !text.is_empty() {
        return Err(format!(
            "invalid duration `{text}`: add a unit, for example `{text}s`"
        ));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!("invalid duration `{text}` ({e}); write it like `500ms`, `10s`, `5m`, `1h` or `7d`")
    })
}

/// A size in bytes, written as a number or as text like `64KiB` or `256MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Size(n)),
            Raw::Text(t) => parse_size(&t).map(Size).map_err(de::Error::custom),
        }
    }
}

/// Parses `65536`, `64KiB`, `256MiB`, `1GiB`, `10MB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| {
            format!("invalid size `{text}`; write it like `64KiB`, `256MiB` or a number of bytes")
        })
}

/// What a deadline too far to compute is taken as: about thirty years on.
const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `from + d`, or about thirty years after `from` where the sum would overflow: a configured
/// duration makes a deadline, never a panic, whatever its range allows.
pub fn later(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .or_else(|| from.checked_add(FAR))
        .unwrap_or(from)
}

/// `later` on tokio's clock.
pub fn later_tokio(from: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    tokio::time::Instant::from_std(later(from.into_std(), d))
}

/// `d` in whole milliseconds, `u64::MAX` for a longer one.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `d` in whole milliseconds, `i64::MAX` for a longer one (292 million years).
pub fn millis_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_and_milliseconds_of_any_duration_neither_panic_nor_wrap() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert!(later(now, Duration::MAX) >= now + Duration::from_secs(86_400 * 365));
        let t = tokio::time::Instant::now();
        assert!(later_tokio(t, Duration::MAX) > t);
        assert_eq!(millis(Duration::from_secs(2)), 2000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis_i64(Duration::MAX), i64::MAX);
        assert_eq!(millis_i64(Duration::from_secs(u64::MAX / 1000)), i64::MAX);
    }

    #[test]
    fn durations_in_every_unit_the_spec_names_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
    }

    #[test]
    fn a_duration_without_unit_or_with_garbage_is_refused() {
        assert!(parse_duration("10").unwrap_err().contains("add a unit"));
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_parse_with_binary_units_and_as_plain_numbers() {
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("256MiB").unwrap(), 256 * 1024 * 1024);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("lots").is_err());
    }
}
