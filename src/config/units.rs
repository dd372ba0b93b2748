//! Durations (`500ms`, `10s`, `5m`, `1h`, `7d`) and sizes (`256MiB`, `65536`) as they are
//! written in the config file.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
