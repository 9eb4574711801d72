//! The reader of one leased partition: pulls bounded batches from the partition's durable
//! consumer and hands the messages to the engine's stream, remembering each one's reply
//! subject until the engine has finished it and it is acked.
//!
//! All pulls share one inbox subscription, kept for the reader's life, and at most one pull
//! is open at a time: `PULL_BATCH` messages, expiring after `pull_expires`. A pull is over
//! when its messages came, when the server says it expired (408), or when its expiry has
//! passed here; then the next one is sent. Because the inbox outlives every pull, a message
//! the server sends for a pull already given up here still arrives, in stream order, and a
//! missing expiry notice costs nothing. (async-nats's continuous `messages()` stream lost
//! count of its open requests under load and left a partition with none open; its `batch()`
//! waits five seconds past the expiry when the notice does not come, and drops a message
//! sent late into a subscription that is gone: see BENCHMARKS.md.)
//!
//! Fencing: a pull is opened only if it will have expired before the tenure runs out, so a
//! replica that could not renew its lease receives nothing after another may own the
//! partition. A revoked tenure (or a closed stream) ends the reader once its last pull has
//! expired and a round trip to the server has brought in whatever it sent before.
//!
//! A new owner first gets what the previous owner left unacked (see `consumer`). Those
//! messages, at or below the consumer's delivered sequence when the reader started, are
//! handed to the engine even if one comes back late, after newer ones: delivering out of
//! order is bad, dropping is worse.

use crate::broker::read_ahead;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::{StatusCode, Subject};
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;

use super::names::KEY_HEADER;
use crate::broker::{ConsumedRecord, RecordHeader, Tenure, sleep_until};
use crate::envelope;

/// A partition of a topic: the topic and the partition's index.
pub type Unit = (Arc<str>, u32);

/// Reply subjects of delivered, unacked messages, per partition, by stream sequence.
pub type Unacked = Arc<Mutex<HashMap<Unit, BTreeMap<u64, Subject>>>>;

/// Messages one pull request asks for.
const PULL_BATCH: usize = 256;
/// How long past a pull's expiry the reader waits for the server's notice before it sends
/// the next pull, and, when stopping, before it lets the inbox go.
const EXPIRY_SLACK: Duration = Duration::from_millis(50);
const STOP_SLACK: Duration = Duration::from_millis(250);

pub struct Reader {
    pub client: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    pub consumer: PullConsumer,
    pub unit: Unit,
    pub records: read_ahead::RecordSender<ConsumedRecord>,
    pub pending: Unacked,
    pub tenure: watch::Receiver<Tenure>,
    pub pull_expires: Duration,
    /// The consumer's last delivered sequence when the reader started: what is at or below
    /// it was the previous owner's.
    pub resume_floor: u64,
    /// How many messages the previous owner left unacked.
    pub unacked: usize,
    /// The consumer's ack wait: how long the server waits before it redelivers them.
    pub ack_wait: Duration,
}

/// The pull currently open, if any.
struct Pull {
    /// Messages it may still bring.
    left: usize,
    /// When the server has surely expired it.
    expired_by: Instant,
}

impl Reader {
    pub async fn run(mut self) {
        let (topic, partition) = (self.unit.0.clone(), self.unit.1);
        if self.unacked > 0 {
            // The previous owner's unacked messages come back once their ack wait has run
            // out; pulling after that makes them come first.
            let wait = self.ack_wait + self.ack_wait / 4;
            tracing::info!(%topic, partition, ?wait, unacked = self.unacked, "waiting for the previous owner's unacked messages to come back");
            tokio::time::sleep(wait).await;
        }
        let inbox = Subject::from(self.client.new_inbox());
        let mut messages = loop {
            match self.client.subscribe(inbox.clone()).await {
                Ok(messages) => break messages,
                Err(e) => {
                    tracing::warn!(%topic, partition, error = %e, "cannot subscribe to a pull inbox");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let mut seen = Seen {
            highest: 0,
            previous_owner: HashSet::new(),
            recovery: (self.unacked > 0).then(|| Recovery {
                expected: self.unacked,
                recovered: 0,
                // Past it, go on without the rest (some may have been acked after all).
                deadline: Instant::now() + self.ack_wait * 2,
                held: BTreeMap::new(),
            }),
        };
        let mut open: Option<Pull> = None;
        loop {
            if open.is_none() {
                match self.may_pull() {
                    May::Stop => break,
                    May::Wait => {
                        let _ =
                            tokio::time::timeout(Duration::from_millis(50), self.tenure.changed())
                                .await;
                        continue;
                    }
                    May::Go => {}
                }
                let request = BatchConfig {
                    batch: PULL_BATCH,
                    expires: Some(self.pull_expires),
                    ..Default::default()
                };
                let sent_at = Instant::now();
                if let Err(e) = self.consumer.request_batch(request, inbox.clone()).await {
                    tracing::warn!(%topic, partition, error = %e, "JetStream pull request failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                open = Some(Pull {
                    left: PULL_BATCH,
                    expired_by: sent_at + self.pull_expires + EXPIRY_SLACK,
                });
            }
            let expired_by = open.as_ref().map(|p| p.expired_by);
            let recovery_deadline = seen.recovery.as_ref().map(|r| r.deadline);
            tokio::select! {
                _ = sleep_until(recovery_deadline) => {
                    self.end_recovery(&mut seen).await;
                    continue;
                }
                message = messages.next() => {
                    let Some(message) = message else { return };
                    match message.status {
                        None | Some(StatusCode::OK) => {
                            if let Some(pull) = &mut open {
                                pull.left = pull.left.saturating_sub(1);
                                if pull.left == 0 {
                                    open = None;
                                }
                            }
                            self.take(message, &mut seen).await;
                        }
                        Some(StatusCode::IDLE_HEARTBEAT) => {}
                        // Expired (408), or ended by the server (409: e.g. the consumer
                        // was changed): send the next pull.
                        Some(status) => {
                            if status != StatusCode::TIMEOUT {
                                tracing::debug!(%topic, partition, %status, description = ?message.description, "pull ended by the server");
                            }
                            open = None;
                        }
                    }
                }
                _ = sleep_until(expired_by) => open = None,
            }
        }
        // Stopping: the last pull has expired by now or soon; a round trip brings in what the
        // server sent before it, so nothing is left in an inbox nobody reads.
        if let Some(pull) = open {
            tokio::time::sleep_until((pull.expired_by + STOP_SLACK).into()).await;
        }
        let _ = self.client.flush().await;
        while let Some(Some(message)) = messages.next().now_or_never() {
            if message.status.is_none() || message.status == Some(StatusCode::OK) {
                self.take(message, &mut seen).await;
            }
        }
        self.end_recovery(&mut seen).await;
    }

    /// Whether a pull may be opened now: only while the tenure surely outlasts it.
    fn may_pull(&self) -> May {
        if self.records.is_closed() {
            return May::Stop;
        }
        match *self.tenure.borrow() {
            Tenure::Revoked { .. } | Tenure::Lost => May::Stop,
            Tenure::Held { until: None } => May::Go,
            Tenure::Held { until: Some(until) } => {
                if Instant::now() + self.pull_expires + EXPIRY_SLACK * 2 < until {
                    May::Go
                } else {
                    May::Wait
                }
            }
        }
    }

    /// Takes a message from the inbox: a repeat of one taken already (the server
    /// redelivered it after a late progress ack) refreshes or repeats its ack; a new one is
    /// remembered as pending (so it gets progress acks) and, while the previous owner's
    /// messages are being recovered, held back; otherwise it goes to the engine.
    async fn take(&self, message: async_nats::Message, seen: &mut Seen) {
        let message = Message {
            message,
            context: self.jetstream.clone(),
        };
        let Ok(info) = message.info() else { return };
        let (sequence, published) = (info.stream_sequence, info.published);
        let Some(reply) = message.reply.clone() else {
            return;
        };
        let previous_owners = sequence <= self.resume_floor;
        // Taken before and not yet acked: the server sent it again; only its reply subject
        // is new. Otherwise remember it, unless it was acked already.
        let repeat = {
            let mut pending = self.pending.lock().expect("pending lock");
            match pending.get_mut(&self.unit) {
                // Let go already: nothing more goes to the engine.
                None => Repeat::Pending,
                Some(messages) => {
                    if let Some(stored) = messages.get_mut(&sequence) {
                        *stored = reply.clone();
                        Repeat::Pending
                    } else {
                        let first_time = if previous_owners {
                            seen.previous_owner.insert(sequence)
                        } else {
                            sequence > seen.highest
                        };
                        if first_time {
                            messages.insert(sequence, reply.clone());
                            Repeat::No
                        } else {
                            Repeat::Acked
                        }
                    }
                }
            }
        };
        match repeat {
            Repeat::Pending => return,
            // Done and acked, but the ack was lost.
            Repeat::Acked => {
                self.ack_again(reply).await;
                return;
            }
            Repeat::No => {}
        }
        let taken = Taken {
            message,
            sequence,
            timestamp_ms: (published.unix_timestamp_nanos() / 1_000_000) as i64,
        };
        if let Some(recovery) = &mut seen.recovery {
            // Kept in sequence order until every message the previous owner left has come
            // back (the server's redelivery order is not sequence order).
            recovery.held.insert(sequence, taken);
            if previous_owners {
                recovery.recovered += 1;
            }
            if recovery.recovered >= recovery.expected {
                self.end_recovery(seen).await;
            }
            return;
        }
        if previous_owners && sequence < seen.highest {
            tracing::warn!(topic = %self.unit.0, partition = self.unit.1, sequence, "a message left unacked by the previous owner came back late, after newer ones");
        }
        self.hand_over(taken, seen).await;
    }

    /// Hands what recovery held back to the engine, in sequence order.
    async fn end_recovery(&self, seen: &mut Seen) {
        let Some(recovery) = seen.recovery.take() else {
            return;
        };
        tracing::info!(topic = %self.unit.0, partition = self.unit.1, recovered = recovery.recovered, expected = recovery.expected, "the previous owner's unacked messages are back");
        for (_, taken) in recovery.held {
            self.hand_over(taken, seen).await;
        }
    }

    /// Sends a taken message to the engine as a record.
    async fn hand_over(&self, taken: Taken, seen: &mut Seen) {
        let Taken {
            message,
            sequence,
            timestamp_ms,
        } = taken;
        seen.highest = seen.highest.max(sequence);
        let record = to_record(
            self.unit.0.clone(),
            self.unit.1,
            &message,
            sequence,
            timestamp_ms,
        );
        // A stream dropped by its worker takes nothing more: the message stays unacked and
        // goes to the next owner.
        let _ = self.records.send(record).await;
    }
}

/// Header names hookbridge's own records carry, lowercased: shared instead of lowercased
/// into a new string per record.
const KNOWN_NAMES: [&str; 6] = [
    envelope::HEADER_CONTENT_TYPE,
    envelope::HEADER_ID,
    envelope::HEADER_TYPE,
    envelope::HEADER_TRACEPARENT,
    "nats-msg-id",
    "hb-key",
];

/// A header name as a record carries it: lowercased.
fn record_header_name(name: &str) -> ByteString {
    match KNOWN_NAMES
        .iter()
        .find(|known| known.eq_ignore_ascii_case(name))
    {
        Some(known) => ByteString::from_static(known),
        // One allocation: `to_string` would format, then copy again.
        None => name.to_ascii_lowercase().into(),
    }
}

/// A JetStream message of `topic`'s `partition` as a record: the key from its `Hb-Key`
/// header, the header names lowercased.
pub(super) fn to_record(
    topic: std::sync::Arc<str>,
    partition: u32,
    message: &async_nats::Message,
    sequence: u64,
    timestamp_ms: i64,
) -> ConsumedRecord {
    let headers: Vec<RecordHeader> = message
        .headers
        .iter()
        .flat_map(|headers| headers.iter())
        .flat_map(|(name, values)| {
            let name = record_header_name(name.as_ref());
            values.iter().map(move |v| RecordHeader {
                name: name.clone(),
                value: Bytes::copy_from_slice(v.as_str().as_bytes()),
            })
        })
        .collect();
    // The key is the `hb-key` header's value, shared rather than copied again.
    let key = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(KEY_HEADER))
        .map(|h| h.value.clone());
    ConsumedRecord {
        topic,
        partition,
        offset: sequence,
        timestamp_ms,
        key,
        headers,
        value: message.payload.clone(),
    }
}

enum May {
    Go,
    /// Not now: the tenure is about to run out unless it is renewed.
    Wait,
    Stop,
}

/// What the reader has handed to the engine.
struct Seen {
    /// The highest sequence handed over.
    highest: u64,
    /// The previous owner's messages taken so far.
    previous_owner: HashSet<u64>,
    /// While the previous owner's messages are coming back.
    recovery: Option<Recovery>,
}

struct Recovery {
    /// How many the previous owner left unacked.
    expected: usize,
    recovered: usize,
    /// Given up waiting for the rest then.
    deadline: Instant,
    /// Everything taken meanwhile, by sequence.
    held: BTreeMap<u64, Taken>,
}

/// A message taken from the inbox, with what was read from its reply subject.
struct Taken {
    message: Message,
    sequence: u64,
    timestamp_ms: i64,
}

/// Whether a message was taken before.
enum Repeat {
    No,
    /// Taken and not yet acked (or the partition was let go).
    Pending,
    /// Taken, finished and acked.
    Acked,
}

impl Reader {
    async fn ack_again(&self, reply: Subject) {
        let _ = self
            .client
            .publish(reply, Bytes::from_static(b"+ACK"))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names are lowercased, hookbridge's own shared and others copied; the key is the
    /// `Hb-Key` header's value.
    #[test]
    fn a_message_becomes_a_record() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        headers.insert("Nats-Msg-Id", "id-1");
        headers.insert(KEY_HEADER, "k1");
        headers.append("X-Custom", "a");
        headers.append("X-Custom", "b");
        let message = async_nats::Message {
            subject: "t.0".into(),
            reply: None,
            payload: Bytes::from_static(b"{}"),
            headers: Some(headers),
            status: None,
            description: None,
            length: 0,
        };
        let record = to_record("t".into(), 0, &message, 7, 1_000);
        let mut seen: Vec<(String, String)> = record
            .headers
            .iter()
            .map(|h| (h.name.to_string(), String::from_utf8_lossy(&h.value).into()))
            .collect();
        seen.sort();
        let expected = [
            ("content-type", "application/json"),
            ("hb-key", "k1"),
            ("nats-msg-id", "id-1"),
            ("x-custom", "a"),
            ("x-custom", "b"),
        ];
        assert_eq!(
            seen,
            expected
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .to_vec()
        );
        assert_eq!(record.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!((record.offset, record.timestamp_ms), (7, 1_000));
        assert_eq!(
            record.header("Content-Type").unwrap().as_ref(),
            b"application/json"
        );
    }
}
