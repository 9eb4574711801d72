//! A subscription's dead letters: listed page by page, shown one by one, redriven.
//!
//! A dead letter is the original record plus `hb-dlq-*` headers (see
//! `delivery::dead_letter`). A dead-letter topic may be shared by several subscriptions;
//! only the subscription's own (`hb-dlq-subscription`) are seen here.

use std::sync::Arc;

use serde::Serialize;

use super::scan::TopicScan;
use super::sender::{self, Sender, SentBefore};
use super::{Kind, Operation, OperationError, Operations, ResendRequest};
use crate::broker::Broker;
use crate::broker::ConsumedRecord;
use crate::config::SubscriptionConfig;
use crate::delivery::{Decode, Event};

/// One dead letter as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Where it sits in the dead-letter topic: `partition/offset`, the cursor of its page.
    pub position: String,
    /// The webhook id.
    pub id: String,
    pub event_type: String,
    pub key: Option<String>,
    /// Where the event was read from when it failed.
    pub topic: String,
    pub partition: Option<u32>,
    pub offset: Option<u64>,
    pub attempts: Option<u32>,
    pub last_status: Option<u16>,
    pub last_error: String,
    pub failed_at: String,
}

/// A page of dead letters and the cursor of the next one.
#[derive(Debug, Serialize)]
pub struct Page {
    pub dead_letters: Vec<DeadLetter>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next: Option<String>,
}

/// A dead letter in full: its event as the subscriber would get it.
#[derive(Debug, Serialize)]
pub struct Shown {
    #[serde(flatten)]
    pub dead_letter: DeadLetter,
    /// The event: the envelope as JSON (`payload: envelope_json`), or for a foreign record
    /// its value as text.
    pub event: serde_json::Value,
    /// The webhook's body as the sender sent it: JSON when it parses, else text, else
    /// base64.
    pub body: serde_json::Value,
    /// The `hb-dlq-*` headers and the record's others, as text.
    pub headers: Vec<(String, String)>,
}

fn text(record: &ConsumedRecord, name: &str) -> Option<String> {
    record
        .header(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn belongs_to(record: &ConsumedRecord, subscription: &str) -> bool {
    record
        .header("hb-dlq-subscription")
        .is_some_and(|s| s.as_ref() == subscription.as_bytes())
}

pub fn describe(record: &ConsumedRecord) -> DeadLetter {
    let event = Event::from_record(record.clone(), Decode::Head);
    DeadLetter {
        position: format!("{}/{}", record.partition, record.offset),
        id: text(record, "hb-dlq-id").unwrap_or_else(|| event.id.to_string()),
        event_type: event.event_type.to_string(),
        key: record
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        topic: text(record, "hb-dlq-topic").unwrap_or_default(),
        partition: text(record, "hb-dlq-partition").and_then(|v| v.parse().ok()),
        offset: text(record, "hb-dlq-offset").and_then(|v| v.parse().ok()),
        attempts: text(record, "hb-dlq-attempts").and_then(|v| v.parse().ok()),
        last_status: text(record, "hb-dlq-last-status").and_then(|v| v.parse().ok()),
        last_error: text(record, "hb-dlq-last-error").unwrap_or_default(),
        failed_at: text(record, "hb-dlq-failed-at").unwrap_or_default(),
    }
}

/// Parses a `partition/offset` cursor.
fn parse_position(position: &str) -> Result<(u32, u64), OperationError> {
    position
        .split_once('/')
        .and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)))
        .ok_or_else(|| {
            OperationError::Invalid(format!("`{position}` is not a `partition/offset` position"))
        })
}

/// Up to `limit` of the subscription's dead letters after the `after` position, in
/// partition then offset order.
pub async fn list(
    broker: &Broker,
    sub: &SubscriptionConfig,
    after: Option<&str>,
    limit: usize,
) -> Result<Page, OperationError> {
    let position = after.map(parse_position).transpose()?;
    let mut scan =
        TopicScan::after(broker.reader.clone(), &sub.dead_letter_topic(), position).await?;
    let mut dead_letters = Vec::new();
    while let Some(chunk) = scan.next().await? {
        for record in chunk.iter().filter(|r| belongs_to(r, &sub.name)) {
            if dead_letters.len() == limit {
                let next = dead_letters.last().map(|d: &DeadLetter| d.position.clone());
                return Ok(Page { dead_letters, next });
            }
            dead_letters.push(describe(record));
        }
    }
    Ok(Page {
        dead_letters,
        next: None,
    })
}

/// The dead letter of webhook id `id` (the newest, if it failed more than once), in full.
pub async fn show(
    broker: &Broker,
    sub: &SubscriptionConfig,
    id: &str,
) -> Result<Option<Shown>, OperationError> {
    let mut scan = TopicScan::new(broker.reader.clone(), &sub.dead_letter_topic()).await?;
    let mut found: Option<ConsumedRecord> = None;
    while let Some(chunk) = scan.next().await? {
        if let Some(record) = chunk.into_iter().rev().find(|r| {
            belongs_to(r, &sub.name)
                && r.header("hb-dlq-id")
                    .is_some_and(|v| v.as_ref() == id.as_bytes())
        }) {
            found = Some(record);
        }
    }
    Ok(found.map(|record| {
        let event = Event::from_record(record.clone(), Decode::Full);
        let event_json = match &event.envelope {
            Some(envelope) => crate::delivery::envelope_json(envelope),
            None => serde_json::Value::String(String::from_utf8_lossy(&record.value).into_owned()),
        };
        let body = match serde_json::from_slice::<serde_json::Value>(&event.body) {
            Ok(json) => json,
            Err(_) => match std::str::from_utf8(&event.body) {
                Ok(text) => serde_json::Value::String(text.to_string()),
                Err(_) => serde_json::Value::String(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    &event.body,
                )),
            },
        };
        Shown {
            dead_letter: describe(&record),
            event: event_json,
            body,
            headers: record
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(&h.value).into_owned(),
                    )
                })
                .collect(),
        }
    }))
}

/// Starts a redrive: the subscription's dead letters that match (`since`/`until` on the
/// time they were dead-lettered), sent to the subscription again in their order.
pub fn redrive(
    operations: &Operations,
    broker: &Broker,
    sub: &SubscriptionConfig,
    request: ResendRequest,
) -> Result<Arc<Operation>, OperationError> {
    let filter = request.filter()?;
    if request.offsets.is_some() {
        return Err(OperationError::Invalid(
            "`offsets` are for replays; a redrive selects dead letters by `since` and `until`"
                .into(),
        ));
    }
    let operation = Operation::new(
        Kind::Redrive,
        &sub.name,
        request.requested_by.as_deref().unwrap_or("unknown"),
        request.dry_run,
    );
    let (broker, sub) = (broker.clone(), sub.clone());
    Ok(operations.start(operation, move |op| async move {
        let resend_topic = sub.resend_topic();
        let sent_before = if request.force {
            SentBefore::default()
        } else {
            SentBefore::read(&broker, &resend_topic).await?
        };
        // Two passes over the dead letters there are now (one of the redrive's own, failing
        // again while it runs, is not picked up): the first counts the matches, so the
        // total is known; the second sends them. Only a chunk is held at a time, whatever
        // the topic's size.
        let dead_letters = sub.dead_letter_topic();
        let ends = TopicScan::new(broker.reader.clone(), &dead_letters)
            .await?
            .ends()
            .await?;
        let matching = |record: &ConsumedRecord| {
            if !belongs_to(record, &sub.name) || !filter.in_time(record.timestamp_ms) {
                return None;
            }
            let letter = describe(record);
            filter
                .matches(&letter.event_type, record.key.as_deref(), &letter.id)
                .then_some(letter.id)
        };
        let mut scan = TopicScan::until(broker.reader.clone(), &dead_letters, ends.clone()).await?;
        let mut matched = 0;
        while let Some(chunk) = scan.next().await? {
            if op.is_cancelled() {
                return Ok(());
            }
            op.update(|p| p.scanned += chunk.len() as u64);
            matched += chunk.iter().filter(|r| matching(r).is_some()).count() as u64;
        }
        op.update(|p| {
            p.matched = matched;
            p.total = Some(matched);
        });
        let mut sender = Sender::new(broker.clone(), request.rate);
        let mut scan = TopicScan::until(broker.reader.clone(), &dead_letters, ends).await?;
        while let Some(chunk) = scan.next().await? {
            for record in chunk {
                let Some(id) = matching(&record) else {
                    continue;
                };
                if sent_before.contains(&record) {
                    op.update(|p| p.skipped += 1);
                    continue;
                }
                if op.dry_run {
                    continue;
                }
                let copy = sender::copy(&op, &resend_topic, &record, &id);
                if !sender.send(&op, copy).await {
                    return Ok(());
                }
            }
        }
        Ok(())
    }))
}
