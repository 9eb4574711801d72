//! Human-readable durations (`500ms`, `30s`, `10m`, `24h`, `7d`) and sizes (`512KiB`,
//! `1MiB`, `1GB`), as the configuration contract writes them.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// A duration read from the config. Plain numbers are rejected on purpose: `timeout: 10`
/// is ambiguous, `timeout: 10s` is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

/// A byte size read from the config; a plain number means bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// The longest duration a config may hold. Longer ones are surely mistakes, and would
/// overflow the clock arithmetic that deadlines are made of.
pub const MAX_DURATION: Duration = Duration::from_secs(365_000 * 86_400);

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| {
            format!("`{text}` has no unit; write e.g. `500ms`, `30s`, `10m`, `24h`, `7d`")
        })?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write e.g. `500ms`, `30s`, `10m`"))?;
    let seconds_per_unit = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => {
            return Err(format!(
                "`{text}`: unknown duration unit `{unit}` (use ms, s, m, h or d)"
            ));
        }
    };
    match Duration::try_from_secs_f64(value * seconds_per_unit) {
        Ok(duration) if duration <= MAX_DURATION => Ok(duration),
        _ => Err(format!("`{text}` is too long (at most 365000d)")),
    }
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write e.g. `512KiB`, `1MiB`, `1GB`"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{text}`: unknown size unit `{other}` (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large"))
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A bare number is read so the error can say what is missing: the unit.
        let text = number_or_string(deserializer)?;
        parse_duration(&text)
            .map(ConfigDuration)
            .map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = number_or_string(deserializer)?;
        parse_size(&text).map(ByteSize).map_err(de::Error::custom)
    }
}

/// Written back as the file would say it: `10m`, `1500ms`.
impl serde::Serialize for ConfigDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ms = self.0.as_millis();
        let text = match ms {
            0 => "0s".to_string(),
            ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
            ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
            ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
            ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
            ms => format!("{ms}ms"),
        };
        serializer.serialize_str(&text)
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: u64 = 1 << 20;
        const KIB: u64 = 1 << 10;
        match self.0 {
            n if n >= MIB && n % MIB == 0 => write!(f, "{}MiB", n / MIB),
            n if n >= KIB && n % KIB == 0 => write!(f, "{}KiB", n / KIB),
            n => write!(f, "{n}B"),
        }
    }
}

/// Reads a scalar as text whether YAML typed it as a number or a string. Environment
/// substitution always yields strings, so `partitions: ${PARTITIONS:-8}` must still work.
fn number_or_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Number(u64),
        Text(String),
    }
    Ok(match Scalar::deserialize(deserializer)? {
        Scalar::Number(n) => n.to_string(),
        Scalar::Text(s) => s,
    })
}

/// `deserialize_with` helper for numeric fields: accepts `8` and `"8"` alike.
pub fn number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Int(i64),
        Float(f64),
        Text(String),
    }
    let text = match Scalar::deserialize(deserializer)? {
        Scalar::Int(n) => n.to_string(),
        Scalar::Float(n) => n.to_string(),
        Scalar::Text(s) => s,
    };
    text.trim()
        .parse()
        .map_err(|e| de::Error::custom(format!("`{text}` is not a valid number: {e}")))
}

/// `deserialize_with` helper for boolean fields: accepts `true` and `"true"` alike.
pub fn boolean<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Bool(bool),
        Text(String),
    }
    match Scalar::deserialize(deserializer)? {
        Scalar::Bool(b) => Ok(b),
        Scalar::Text(s) => match s.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(de::Error::custom(format!("`{other}` is not true or false"))),
        },
    }
}

/// An HTTP status or a class of them, as written in a config: `422` or `"4xx"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Code(u16),
    /// Every status whose first digit is this one.
    Class(u8),
}

impl StatusMatch {
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Code(code) => code == status,
            StatusMatch::Class(class) => status / 100 == u16::from(class),
        }
    }
}

impl fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusMatch::Code(code) => write!(f, "{code}"),
            StatusMatch::Class(class) => write!(f, "{class}xx"),
        }
    }
}

impl std::str::FromStr for StatusMatch {
    type Err = String;

    /// A status of 300 to 599, or a class `3xx`, `4xx`, `5xx`: the answers that are not
    /// deliveries.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let wrong =
            || format!("`{text}` is not an HTTP status of 300 to 599 nor a class such as `4xx`");
        if let Some(class) = text.strip_suffix("xx").or_else(|| text.strip_suffix("XX")) {
            return match class.parse::<u8>() {
                Ok(class @ 3..=5) => Ok(StatusMatch::Class(class)),
                _ => Err(wrong()),
            };
        }
        match text.parse::<u16>() {
            Ok(code @ 300..=599) => Ok(StatusMatch::Code(code)),
            _ => Err(wrong()),
        }
    }
}

impl<'de> Deserialize<'de> for StatusMatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = number_or_string(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl serde::Serialize for StatusMatch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            StatusMatch::Code(code) => serializer.serialize_u16(*code),
            StatusMatch::Class(_) => serializer.serialize_str(&self.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(
            parse_duration("10y")
                .unwrap_err()
                .contains("unknown duration unit")
        );
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("1XB").unwrap_err().contains("unknown size unit"));
        assert!(
            parse_size("99999999999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any text is a duration or an error naming it, never a panic.
        #[test]
        fn any_duration_text(text in prop_oneof![
            "\\PC{0,30}",
            "[0-9.]{0,40}(ms|s|m|h|d)?",
        ]) {
            if let Ok(duration) = parse_duration(&text) {
                prop_assert!(duration <= MAX_DURATION);
            }
        }

        #[test]
        fn any_size_text(text in prop_oneof![
            "\\PC{0,30}",
            "[0-9]{0,30}(B|KB|MB|GB|KiB|MiB|GiB)?",
        ]) {
            let _ = parse_size(&text);
        }
    }
}
