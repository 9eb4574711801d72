//! Which events an operation sends again: by event type (globs, as `filter.types`), key,
//! webhook id and time. Empty lists match everything.

use crate::delivery::TypeFilter;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("`{field}`: `{value}` is not an RFC 3339 time (e.g. 2026-12-01T09:30:00Z)")]
    Time { field: &'static str, value: String },
    #[error("`until` ({until}) is before `since` ({since})")]
    Backwards { since: String, until: String },
}

/// The filter as an operator writes it (the fields of the `POST` bodies).
#[derive(Debug, Clone, Default)]
pub struct FilterRequest {
    pub types: Vec<String>,
    pub keys: Vec<String>,
    pub ids: Vec<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EventFilter {
    types: Option<TypeFilter>,
    keys: Vec<String>,
    ids: Vec<String>,
    /// Milliseconds since the Unix epoch, inclusive.
    pub since_ms: Option<i64>,
    /// Milliseconds since the Unix epoch, exclusive.
    pub until_ms: Option<i64>,
}

impl EventFilter {
    pub fn new(request: &FilterRequest) -> Result<EventFilter, FilterError> {
        let since_ms = request
            .since
            .as_deref()
            .map(|v| parse_time("since", v))
            .transpose()?;
        let until_ms = request
            .until
            .as_deref()
            .map(|v| parse_time("until", v))
            .transpose()?;
        if let (Some(since), Some(until)) = (since_ms, until_ms)
            && until < since
        {
            return Err(FilterError::Backwards {
                since: request.since.clone().unwrap_or_default(),
                until: request.until.clone().unwrap_or_default(),
            });
        }
        Ok(EventFilter {
            types: (!request.types.is_empty()).then(|| TypeFilter::new(&request.types)),
            keys: request.keys.clone(),
            ids: request.ids.clone(),
            since_ms,
            until_ms,
        })
    }

    /// Whether an event with this type, key and id passes (time is checked apart: what it
    /// means differs between a dead letter and a replayed record).
    pub fn matches(&self, event_type: &str, key: Option<&[u8]>, id: &str) -> bool {
        self.types.as_ref().is_none_or(|t| t.matches(event_type))
            && (self.keys.is_empty()
                || key.is_some_and(|key| self.keys.iter().any(|k| k.as_bytes() == key)))
            && (self.ids.is_empty() || self.ids.iter().any(|i| i == id))
    }

    /// Whether an instant (milliseconds since the epoch) is in `[since, until)`.
    pub fn in_time(&self, at_ms: i64) -> bool {
        self.since_ms.is_none_or(|since| at_ms >= since)
            && self.until_ms.is_none_or(|until| at_ms < until)
    }
}

/// An RFC 3339 time as milliseconds since the Unix epoch.
pub fn parse_time(field: &'static str, value: &str) -> Result<i64, FilterError> {
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| FilterError::Time {
            field,
            value: value.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_matches_everything_and_lists_narrow() {
        let all = EventFilter::new(&FilterRequest::default()).unwrap();
        assert!(all.matches("a.b", None, "x"));
        let some = EventFilter::new(&FilterRequest {
            types: vec!["invoice.*".into()],
            keys: vec!["k1".into()],
            ..FilterRequest::default()
        })
        .unwrap();
        assert!(some.matches("invoice.paid", Some(b"k1"), "x"));
        assert!(!some.matches("invoice.paid", Some(b"k2"), "x"));
        assert!(!some.matches("invoice.paid", None, "x"));
        assert!(!some.matches("order.paid", Some(b"k1"), "x"));
    }

    #[test]
    fn times_are_rfc3339_and_ordered() {
        let f = EventFilter::new(&FilterRequest {
            since: Some("2026-12-01T00:00:00Z".into()),
            until: Some("2026-12-01T00:00:01+00:00".into()),
            ..FilterRequest::default()
        })
        .unwrap();
        let since = f.since_ms.unwrap();
        assert!(f.in_time(since) && f.in_time(since + 999) && !f.in_time(since + 1000));
        assert!(
            EventFilter::new(&FilterRequest {
                since: Some("yesterday".into()),
                ..FilterRequest::default()
            })
            .is_err()
        );
        assert!(
            EventFilter::new(&FilterRequest {
                since: Some("2026-12-02T00:00:00Z".into()),
                until: Some("2026-12-01T00:00:00Z".into()),
                ..FilterRequest::default()
            })
            .is_err()
        );
    }
}
