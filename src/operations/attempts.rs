//! Searching a subscription's attempt log (`hookbridge.attempts.<name>`, see
//! `delivery::attempt_log`): `GET /v1/attempts/{sub}?key=&id=&status=&since=&until=&limit=`.
//!
//! Each partition is read from its first record at or after `since` (by the broker's time
//! index) to its end, the matches kept newest first, at most `limit` of them at a time. A
//! page that had more to give says where the next starts (`until` of the oldest shown).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::OperationError;
use super::selection::parse_time;
use crate::broker::Broker;
use crate::config::SubscriptionConfig;
use crate::delivery::AttemptRecord;

/// Records read per request: attempt records are small.
const CHUNK: usize = 512;
/// Without `since`, the last hour.
const DEFAULT_SPAN_MS: i64 = 3_600_000;
/// A page holds at most this many.
pub const MAX_LIMIT: usize = 1000;

/// The query, as the route's parameters give it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptQuery {
    pub key: Option<String>,
    /// The webhook id.
    pub id: Option<String>,
    /// `200`, `5xx`, `4xx`, `429`..., `error` (no answer: a timeout, a refused connection),
    /// `failed` (anything but delivered) or `delivered`.
    pub status: Option<String>,
    /// RFC 3339; default: an hour ago.
    pub since: Option<String>,
    /// RFC 3339, exclusive; default: now.
    pub until: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct AttemptPage {
    /// Newest first.
    pub attempts: Vec<AttemptRecord>,
    /// The `until` of the next page, when there are more.
    pub next_until: Option<String>,
}

/// What a status filter accepts.
enum StatusFilter {
    Exact(u16),
    Class(u16),
    NoAnswer,
    Failed,
    Delivered,
}

impl StatusFilter {
    fn parse(value: &str) -> Result<StatusFilter, OperationError> {
        let invalid = || {
            OperationError::Invalid(format!(
                "`status`: `{value}` is not a status (`503`), a class (`5xx`), `error`, `failed` or `delivered`"
            ))
        };
        Ok(match value {
            "error" => StatusFilter::NoAnswer,
            "failed" => StatusFilter::Failed,
            "delivered" => StatusFilter::Delivered,
            class if class.len() == 3 && class.ends_with("xx") => {
                let digit = class[..1].parse::<u16>().map_err(|_| invalid())?;
                StatusFilter::Class(digit)
            }
            exact => StatusFilter::Exact(exact.parse().map_err(|_| invalid())?),
        })
    }

    fn matches(&self, record: &AttemptRecord) -> bool {
        match self {
            StatusFilter::Exact(status) => record.status == Some(*status),
            StatusFilter::Class(digit) => record.status.is_some_and(|s| s / 100 == *digit),
            StatusFilter::NoAnswer => record.status.is_none(),
            StatusFilter::Failed => record.outcome != "delivered",
            StatusFilter::Delivered => record.outcome == "delivered",
        }
    }
}

/// The subscription's attempts matching `query`, newest first.
pub async fn search(
    broker: &Broker,
    sub: &SubscriptionConfig,
    query: &AttemptQuery,
) -> Result<AttemptPage, OperationError> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let since = match &query.since {
        Some(since) => parse_time("since", since)?,
        None => now_ms - DEFAULT_SPAN_MS,
    };
    let until = query
        .until
        .as_deref()
        .map(|u| parse_time("until", u))
        .transpose()?
        .unwrap_or(i64::MAX);
    let status = query
        .status
        .as_deref()
        .map(StatusFilter::parse)
        .transpose()?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let wanted = |r: &AttemptRecord| {
        r.at_ms >= since
            && r.at_ms < until
            && query.key.as_ref().is_none_or(|k| r.key.as_ref() == Some(k))
            && query.id.as_ref().is_none_or(|id| &r.id == id)
            && status.as_ref().is_none_or(|s| s.matches(r))
    };
    let topic = sub.attempt_topic();
    let reader = &broker.reader;
    // The newest `limit` matches, the oldest of them on top.
    let mut newest: BinaryHeap<Reverse<(i64, u32, u64, Entry)>> = BinaryHeap::new();
    let mut more = false;
    for partition in 0..reader.partitions(&topic).await? {
        let (_, end) = reader.bounds(&topic, partition).await?;
        let mut from = reader.offset_at(&topic, partition, since).await?;
        while from < end {
            let chunk = reader.read(&topic, partition, from, end, CHUNK).await?;
            let Some(last) = chunk.last() else { break };
            from = last.offset + 1;
            for record in chunk {
                let Ok(entry) = serde_json::from_slice::<AttemptRecord>(&record.value) else {
                    continue;
                };
                if !wanted(&entry) {
                    continue;
                }
                newest.push(Reverse((
                    entry.at_ms,
                    partition,
                    record.offset,
                    Entry(entry),
                )));
                if newest.len() > limit {
                    newest.pop();
                    more = true;
                }
            }
        }
    }
    let mut attempts: Vec<AttemptRecord> = newest.into_iter().map(|Reverse((.., e))| e.0).collect();
    attempts.sort_by_key(|a| Reverse(a.at_ms));
    let next_until = more
        .then(|| attempts.last().map(|oldest| oldest.at.clone()))
        .flatten();
    Ok(AttemptPage {
        attempts,
        next_until,
    })
}

/// A record in the heap, ordered only by the position beside it.
#[derive(Debug)]
struct Entry(AttemptRecord);

impl PartialEq for Entry {
    fn eq(&self, _: &Entry) -> bool {
        true
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, _: &Entry) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}
