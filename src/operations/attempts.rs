//! Searching a subscription's attempt log (`hookbridge.attempts.<name>`, see
//! `delivery::attempt_log`): `GET /v1/attempts/{sub}?key=&id=&status=&since=&until=&limit=`.
//!
//! Each partition is read from its first record at or after `since` (by the broker's time
//! index, a minute early, for replicas' clocks) to its first after `until` (a minute late),
//! the matches kept newest first, at most `limit` of them at a time. A page that had more to
//! give says where the next starts: `next`, a cursor for `before` (the oldest shown, by
//! time, partition and offset, so records of one millisecond are neither lost nor shown
//! twice).

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
    /// RFC 3339; default: an hour before `until`.
    pub since: Option<String>,
    /// RFC 3339, exclusive; default: now.
    pub until: Option<String>,
    pub limit: Option<usize>,
    /// The `next` of the previous page: only records older than it.
    pub before: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AttemptPage {
    /// Newest first.
    pub attempts: Vec<AttemptRecord>,
    /// The `before` of the next page, when there are more.
    pub next: Option<String>,
}

/// Where a record stands in the newest-first order: time, then partition and offset.
type Position = (i64, u32, u64);

fn cursor(position: Position) -> String {
    format!("{}/{}/{}", position.0, position.1, position.2)
}

fn parse_cursor(value: &str) -> Result<Position, OperationError> {
    let invalid = || {
        OperationError::Invalid(format!(
            "`before`: `{value}` is not a cursor (the `next` of a page)"
        ))
    };
    let mut parts = value.split('/');
    let mut next = || parts.next().ok_or_else(invalid);
    let at = next()?.parse().map_err(|_| invalid())?;
    let partition = next()?.parse().map_err(|_| invalid())?;
    let offset = next()?.parse().map_err(|_| invalid())?;
    Ok((at, partition, offset))
}

/// Replicas' clocks and the broker's may differ: the time index is read this much wider.
const CLOCK_SLACK_MS: i64 = 60_000;

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
    let until = query
        .until
        .as_deref()
        .map(|u| parse_time("until", u))
        .transpose()?;
    let since = match &query.since {
        Some(since) => parse_time("since", since)?,
        None => until.unwrap_or(now_ms) - DEFAULT_SPAN_MS,
    };
    let until = until.unwrap_or(i64::MAX);
    let before = query.before.as_deref().map(parse_cursor).transpose()?;
    let status = query
        .status
        .as_deref()
        .map(StatusFilter::parse)
        .transpose()?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let wanted = |r: &AttemptRecord, at: Position| {
        r.at_ms >= since
            && r.at_ms < until
            && before.is_none_or(|before| at < before)
            && query.key.as_ref().is_none_or(|k| r.key.as_ref() == Some(k))
            && query.id.as_ref().is_none_or(|id| &r.id == id)
            && status.as_ref().is_none_or(|s| s.matches(r))
    };
    let topic = sub.attempt_topic();
    let reader = &broker.reader;
    let partitions = match reader.partitions(&topic).await {
        Ok(partitions) => partitions,
        // Nothing logged yet: the topic is made with the first record's subscription.
        Err(crate::broker::BrokerError::Rejected(_)) => 0,
        Err(e) => return Err(e.into()),
    };
    // The newest `limit` matches, the oldest of them on top.
    let mut newest: BinaryHeap<Reverse<(Position, Entry)>> = BinaryHeap::new();
    let mut more = false;
    for partition in 0..partitions {
        let from = reader
            .offset_at(&topic, partition, since - CLOCK_SLACK_MS)
            .await?;
        let end = match until {
            i64::MAX => reader.bounds(&topic, partition).await?.1,
            until => {
                let at = until.saturating_add(CLOCK_SLACK_MS);
                reader.offset_at(&topic, partition, at).await?
            }
        };
        let mut from = from;
        while from < end {
            let chunk = reader.read(&topic, partition, from, end, CHUNK).await?;
            let Some(last) = chunk.last() else { break };
            from = last.offset + 1;
            for record in chunk {
                let Ok(entry) = serde_json::from_slice::<AttemptRecord>(&record.value) else {
                    continue;
                };
                let at = (entry.at_ms, partition, record.offset);
                if !wanted(&entry, at) {
                    continue;
                }
                newest.push(Reverse((at, Entry(entry))));
                if newest.len() > limit {
                    newest.pop();
                    more = true;
                }
            }
        }
    }
    let mut found: Vec<(Position, AttemptRecord)> = newest
        .into_iter()
        .map(|Reverse((at, e))| (at, e.0))
        .collect();
    found.sort_by_key(|(at, _)| Reverse(*at));
    let next = more
        .then(|| found.last().map(|(at, _)| cursor(*at)))
        .flatten();
    Ok(AttemptPage {
        attempts: found.into_iter().map(|(_, record)| record).collect(),
        next,
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
