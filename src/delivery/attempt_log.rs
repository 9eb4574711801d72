//! The attempt log (`attempt_log: off | failures | all`): each attempt, as one record of
//! `hookbridge.attempts.<name>` keyed by the event's key, for an operator or a receiver's
//! owner to search (`GET /v1/attempts/{sub}`, `hookbridge attempts`).
//!
//! A record is durable before the lane goes on (to the next attempt, or to its outcome), so
//! an event whose completion was committed has every record of its attempts written: a
//! crash loses none of them. Stopped before the broker took one, the lane abandons its
//! event, which is then redelivered and logged again.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::attempt::AttemptResult;
use super::event::Event;
use super::runtime::SubscriptionRuntime;
use super::side_topic;
use crate::broker::Record;
use crate::config::AttemptLogMode;
use crate::rfc3339::rfc3339;

/// One attempt, as the log holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The webhook id.
    pub id: String,
    pub key: Option<String>,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// `delivered`, `failed` (retried, parked or dead-lettered after) or `refused` (a
    /// status of `retry.dead_letter_on`).
    pub outcome: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: f64,
    /// When it ended, RFC 3339, and in milliseconds since the Unix epoch.
    pub at: String,
    pub at_ms: i64,
    /// The replica that made it: host name and process id.
    pub replica: String,
}

/// Whether `mode` logs an attempt that ended so.
pub fn wanted(mode: AttemptLogMode, result: &AttemptResult) -> bool {
    match mode {
        AttemptLogMode::Off => false,
        AttemptLogMode::Failures => !matches!(result, AttemptResult::Delivered { .. }),
        AttemptLogMode::All => true,
    }
}

/// Writes the record of attempt `attempt` of `event`; false if asked to stop before the
/// broker took it.
pub async fn write(
    sub: &SubscriptionRuntime,
    event: &Event,
    attempt: u32,
    result: &AttemptResult,
    latency: Duration,
    stop: &CancellationToken,
) -> bool {
    let now = SystemTime::now();
    let (outcome, status, error) = match result {
        AttemptResult::Delivered { status } => ("delivered", Some(*status), None),
        AttemptResult::Retry { status, error, .. } => ("failed", *status, Some(error.clone())),
        AttemptResult::Permanent { status, error } => {
            ("refused", Some(*status), Some(error.clone()))
        }
    };
    let entry = AttemptRecord {
        id: event.id.to_string(),
        key: event.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        topic: event.record.topic.to_string(),
        partition: event.record.partition,
        offset: event.record.offset,
        attempt,
        outcome: outcome.into(),
        status,
        error,
        latency_ms: latency.as_secs_f64() * 1000.0,
        at: rfc3339(now),
        at_ms: now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        replica: replica().to_string(),
    };
    let record = Record {
        topic: sub.attempt_topic.clone(),
        key: event.key().cloned(),
        headers: Vec::new(),
        value: Bytes::from(serde_json::to_vec(&entry).expect("a record serializes")),
    };
    side_topic::publish(sub, record, stop).await.is_some()
}

/// This replica's name in the log: its host name (a pod's name) and process id.
fn replica() -> &'static str {
    static REPLICA: OnceLock<String> = OnceLock::new();
    REPLICA.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".into());
        format!("{}/{}", host.trim(), std::process::id())
    })
}
