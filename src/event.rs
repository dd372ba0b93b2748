//! Events: the envelope `{"id","type","data","time"}`, serialised once when an event enters
//! the outbox. The bytes built here are the bytes stored, signed and sent.

use std::time::SystemTime;

use serde_json::value::RawValue;

/// Event types edgehook itself emits; local applications may not use them.
pub const BUILT_IN_TYPES: [&str; 5] = [
    "device-provisioned",
    "device-status-changed",
    "device-decommissioned",
    "devices-inventory-changed",
    "webhook-test",
];

/// An event ready to be stored: its id, type and the exact bytes of its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The event id (UUID v4 unless the producer gave one).
    pub id: String,
    /// The event type.
    pub event_type: String,
    /// The serialised envelope.
    pub body: Vec<u8>,
    /// When it entered the outbox, in Unix milliseconds.
    pub created_ms: i64,
    /// The producer gave the id: a second event with it is a duplicate. Generated ids are
    /// random UUIDs that never meet again, so the outbox keeps no index of them.
    pub supplied: bool,
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The type does not match `^[a-z0-9][a-z0-9._-]{0,63}$`.
    #[error("event type `{0}` must match ^[a-z0-9][a-z0-9._-]{{0,63}}$")]
    BadType(String),
    /// A built-in type was used by an application.
    #[error("event type `{0}` is reserved for edgehook's own events")]
    Reserved(String),
    /// The id is empty, too long or has control characters.
    #[error("an event id is 1 to 128 printable characters")]
    BadId,
    /// The data nests arrays and objects too deeply.
    #[error("`data` may nest arrays and objects at most {MAX_DATA_DEPTH} levels deep")]
    TooDeep,
    /// `data` is JSON by the grammar but not readable by common parsers.
    #[error("`data` is not portable JSON: {0}")]
    BadData(String),
}

/// Checks an application's event type.
pub fn check_app_type(t: &str) -> Result<(), EventError> {
    let mut chars = t.chars();
    let first_ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if !first_ok || !rest_ok || t.len() > 64 {
        return Err(EventError::BadType(t.chars().take(80).collect()));
    }
    if BUILT_IN_TYPES.contains(&t) {
        return Err(EventError::Reserved(t.to_string()));
    }
    Ok(())
}

/// Checks a producer-supplied id.
pub fn check_id(id: &str) -> Result<(), EventError> {
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        return Err(EventError::BadId);
    }
    Ok(())
}

/// Checks that `data` reads as JSON everywhere. The grammar check that accepted it lets through
/// numbers out of any float's range (`1e999`) and lone surrogates (`"\ud800"`), which
/// receivers' parsers commonly refuse (nesting is bounded by `check_depth`, checked first):
/// such an event would come back only as a dead letter, so its producer is told now instead.
pub fn check_data(data: &RawValue) -> Result<(), EventError> {
    serde_json::from_str::<Portable>(data.get())
        .map(|_| ())
        .map_err(|e| EventError::BadData(e.to_string()))
}

/// Any JSON value, read through the parser's checks of numbers and strings and kept nowhere.
struct Portable;

impl<'de> serde::Deserialize<'de> for Portable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Portable)
    }
}

impl<'de> serde::de::Visitor<'de> for Portable {
    type Value = Portable;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Portable, E> {
        Ok(Portable)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Portable, E> {
        Ok(Portable)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Portable, E> {
        Ok(Portable)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Portable, E> {
        Ok(Portable)
    }

    fn visit_str<E>(self, _: &str) -> Result<Portable, E> {
        Ok(Portable)
    }

    fn visit_unit<E>(self) -> Result<Portable, E> {
        Ok(Portable)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Portable, A::Error> {
        while seq.next_element::<Portable>()?.is_some() {}
        Ok(Portable)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Portable, A::Error> {
        while map.next_entry::<Portable, Portable>()?.is_some() {}
        Ok(Portable)
    }
}

/// A new random (version 4) UUID, from the thread's random generator (ChaCha, seeded from the
/// system's), not a `getrandom` system call for each event as `Uuid::new_v4` makes.
pub fn new_id() -> String {
    let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    uuid.hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_string()
}

/// A Unix-ms time as RFC 3339 (UTC), for any time the outbox can hold: a year past 9999 (or
/// before year 0) takes ISO 8601's expanded form, `+10000-01-01T00:00:00.000Z`, where
/// `humantime` would panic.
pub fn rfc3339_ms(ms: i64) -> String {
    const DAY: i64 = 86_400_000;
    let (year, month, day) = civil_from_days(ms.div_euclid(DAY));
    let t = ms.rem_euclid(DAY);
    let year = match year {
        0..=9999 => format!("{year:04}"),
        10_000.. => format!("+{year}"),
        _ => format!("-{:04}", -year),
    };
    format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        t / 3_600_000,
        t / 60_000 % 60,
        t / 1000 % 60,
        t % 1000
    )
}

/// The proleptic Gregorian date (year, month, day) of the day `days` after 1970-01-01
/// (Howard Hinnant's `civil_from_days`); exact for every `i64` day of an `i64` of ms.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Builds an event entering the outbox now. `data` is valid JSON; insignificant white space is
/// removed so the event is one compact line, everything else is kept as given.
pub fn build(id: Option<String>, event_type: &str, data: &RawValue, now: SystemTime) -> NewEvent {
    let supplied = id.is_some();
    let id = id.unwrap_or_else(new_id);
    let time = humantime::format_rfc3339_nanos(now).to_string();
    let data = compact(data.get());
    let mut body = Vec::with_capacity(data.len() + id.len() + event_type.len() + 64);
    body.extend_from_slice(b"{\"id\":");
    serde_json::to_writer(&mut body, &id).expect("writing to a Vec cannot fail");
    body.extend_from_slice(b",\"type\":");
    serde_json::to_writer(&mut body, event_type).expect("writing to a Vec cannot fail");
    body.extend_from_slice(b",\"data\":");
    body.extend_from_slice(data.as_bytes());
    body.extend_from_slice(b",\"time\":\"");
    body.extend_from_slice(time.as_bytes());
    body.extend_from_slice(b"\"}");
    let created_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    NewEvent {
        id,
        event_type: event_type.to_string(),
        body,
        created_ms,
        supplied,
    }
}

/// Whether two envelopes built by `build` are the same event sent twice: the same id, type and
/// data (as stored: without insignificant white space, every token as given), whatever their
/// `time`, the last field.
pub fn same_event(a: &[u8], b: &[u8]) -> bool {
    // The time is a string without quotes, so the last `,"time":"` starts it.
    let without_time = |body: &[u8]| -> usize {
        memchr::memmem::rfind(body, b",\"time\":\"").unwrap_or(body.len())
    };
    a[..without_time(a)] == b[..without_time(b)]
}

/// Builds an event from a serialisable `data` (for edgehook's own events); a struct keeps its
/// fields in declaration order.
pub fn build_value(
    id: Option<String>,
    event_type: &str,
    data: &impl serde::Serialize,
    now: SystemTime,
) -> NewEvent {
    let raw = serde_json::value::to_raw_value(data).expect("event data always serialises");
    build(id, event_type, &raw, now)
}

/// Removes white space outside strings from valid JSON text.
///
/// serde_json's `RawValue` keeps text as given, and a round trip through `Value` would
/// reorder keys and round numbers; this keeps every token exactly. Text without a byte of
/// white space anywhere, as most applications send, is taken as it is after one `memchr`
/// search for it (the walk through strings and escapes cost a tenth of the socket thread's time
/// in a durable ingest run); otherwise it copies the runs between the white space it drops.
pub fn compact(json: &str) -> std::borrow::Cow<'_, str> {
    let bytes = json.as_bytes();
    // `u8::is_ascii_whitespace`'s five bytes.
    if memchr::memchr3(b' ', b'\n', b'\t', bytes).is_none()
        && memchr::memchr2(b'\r', b'\x0c', bytes).is_none()
    {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len());
    let mut kept_from = 0;
    for (i, b, in_string) in tokens(json) {
        if !in_string && b.is_ascii_whitespace() {
            // White space is ASCII, so `i` is a character boundary.
            out.push_str(&json[kept_from..i]);
            kept_from = i + 1;
        }
    }
    out.push_str(&json[kept_from..]);
    std::borrow::Cow::Owned(out)
}

/// How deeply an application's `data` may nest arrays and objects. Receivers parse the whole
/// envelope, one level deeper, and common parsers stop at 100 (Ruby) or 128 (serde_json)
/// levels; an event they cannot parse would only become a dead letter later.
pub const MAX_DATA_DEPTH: usize = 64;

/// Checks that valid JSON text nests at most `MAX_DATA_DEPTH` levels.
pub fn check_depth(json: &str) -> Result<(), EventError> {
    let mut depth = 0usize;
    for (_, b, in_string) in tokens(json) {
        match b {
            _ if in_string => {}
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DATA_DEPTH {
                    return Err(EventError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Each byte of valid JSON text with its offset and whether it belongs to a string (quotes
/// included). Bytes, not characters: everything outside strings is ASCII, and a byte of a
/// multi-byte character is never a quote or a backslash.
fn tokens(json: &str) -> impl Iterator<Item = (usize, u8, bool)> + '_ {
    let mut in_string = false;
    let mut escaped = false;
    json.bytes().enumerate().map(move |(i, b)| {
        if !in_string {
            in_string = b == b'"';
            return (i, b, in_string);
        }
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            in_string = false;
        }
        (i, b, true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_humantime_writes_them_and_past_its_range_too() {
        let mut ms = 0i64;
        while ms < 253_402_300_800_000 {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
            assert_eq!(
                rfc3339_ms(ms),
                humantime::format_rfc3339_millis(t).to_string()
            );
            ms += 997_651_234_567;
        }
        assert_eq!(rfc3339_ms(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(
            rfc3339_ms(253_402_300_800_000),
            "+10000-01-01T00:00:00.000Z"
        );
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(-62_167_219_200_001), "-0001-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(i64::MAX), "+292278994-08-17T07:12:55.807Z");
        assert_eq!(rfc3339_ms(i64::MIN), "-292275055-05-16T16:47:04.192Z");
    }

    fn raw(s: &str) -> Box<RawValue> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn data_may_nest_at_most_max_data_depth_levels_and_strings_do_not_count() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(check_depth(&nested(MAX_DATA_DEPTH)), Ok(()));
        assert_eq!(
            check_depth(&nested(MAX_DATA_DEPTH + 1)),
            Err(EventError::TooDeep)
        );
        let text = format!("{{\"s\":\"{}\\\"[\",\"t\":[1,{{}}]}}", "[{".repeat(200));
        assert_eq!(check_depth(&text), Ok(()));
        let siblings = format!("[{}]", vec![nested(MAX_DATA_DEPTH - 1); 3].join(","));
        assert_eq!(check_depth(&siblings), Ok(()));
    }

    #[test]
    fn the_envelope_has_id_type_data_time_in_that_order_and_is_compact() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::new(1663063427, 746805235);
        let e = build(
            Some("e57adf60-5d8c-4c66-802a-e0c5f643102a".into()),
            "device-status-changed",
            &raw(r#"{ "id": "769e5a83", "status" : "accepted" }"#),
            now,
        );
        assert_eq!(
            std::str::from_utf8(&e.body).unwrap(),
            r#"{"id":"e57adf60-5d8c-4c66-802a-e0c5f643102a","type":"device-status-changed","data":{"id":"769e5a83","status":"accepted"},"time":"2022-09-13T10:03:47.746805235Z"}"#
        );
        assert_eq!(e.created_ms, 1663063427746);
    }

    #[test]
    fn a_generated_id_is_a_uuid_v4() {
        let e = build(None, "x", &raw("1"), SystemTime::now());
        let id = uuid::Uuid::parse_str(&e.id).unwrap();
        assert_eq!(id.get_version_num(), 4);
    }

    #[test]
    fn compaction_keeps_strings_numbers_and_key_order_exactly() {
        let given = "{ \"b\" : \"a  \\\" b\",\n \"a\": [1.10, 2e5 , -0] }";
        assert_eq!(compact(given), "{\"b\":\"a  \\\" b\",\"a\":[1.10,2e5,-0]}");
        // Characters of several bytes, in keys and values, next to white space that goes and
        // white space that stays; an escaped backslash before a closing quote.
        let given = "{ \"clé\" :\t\"ü 日本 \\\\\" ,\r\n \"€\" : [ \"a\" , \"😀 \" ] }";
        assert_eq!(
            compact(given),
            "{\"clé\":\"ü 日本 \\\\\",\"€\":[\"a\",\"😀 \"]}"
        );
        assert_eq!(compact("[1,2]"), "[1,2]");
        // White space inside strings alone: the text as it is.
        assert_eq!(compact("{\"a\":\"x y\\n\"}"), "{\"a\":\"x y\\n\"}");
    }

    #[test]
    fn new_ids_are_distinct_version_4_uuids_in_lower_case() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            let uuid = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(uuid.get_version(), Some(uuid::Version::Random), "{id}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(*id, uuid.hyphenated().to_string(), "lower case, hyphenated");
        }
    }

    #[test]
    fn application_types_follow_the_pattern_and_keep_off_built_in_names() {
        check_app_type("sensor.temperature_1-a").unwrap();
        assert!(check_app_type("Sensor").is_err());
        assert!(check_app_type("-x").is_err());
        assert!(check_app_type(&"a".repeat(65)).is_err());
        assert!(check_app_type("").is_err());
        assert_eq!(
            check_app_type("device-provisioned"),
            Err(EventError::Reserved("device-provisioned".into()))
        );
    }
}
