//! What a lane delivers: one broker record, understood. Hookbridge envelopes are decoded;
//! foreign records (produced by any other service) are delivered as they are.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use bytestring::ByteString;
use prost::Message;

use crate::broker::ConsumedRecord;
use crate::broker::text;
use crate::envelope::{self, Envelope};
use crate::expression::Variables;

pub struct Event {
    /// The record as read, kept for the dead-letter topic (value and headers unchanged).
    pub record: ConsumedRecord,
    /// `webhook-id`: the envelope id, or for a foreign record an id derived from where it
    /// sits, so a redelivery after a crash carries the same id (G5).
    ///
    /// Text fields are shared bytes: for an envelope, slices of the record's buffer, which
    /// become header values without a copy.
    pub id: ByteString,
    pub event_type: ByteString,
    /// The route name, or the topic for a foreign record.
    pub source: ByteString,
    pub received_at: SystemTime,
    pub content_type: ByteString,
    pub body: Bytes,
    pub traceparent: ByteString,
    /// The whole envelope, decoded only when the subscription asked for [`Decode::Full`].
    /// Boxed: an `Envelope` is hundreds of bytes, and events are moved through queues.
    pub envelope: Option<Box<Envelope>>,
    /// Set when the record claims to be an envelope but does not decode: it cannot be
    /// delivered and goes straight to the dead-letter topic.
    pub undeliverable: Option<String>,
    /// Attempts made before the event was parked (see `parking`).
    pub prior_attempts: u32,
}

/// Namespace of ids derived for foreign records.
const FOREIGN_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x3b8e_51c0_7a4d_4f2e_8c19_a6d2_e0f4_b735);

/// How much of an envelope a subscription's payload needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    /// The head only: id, type, source, time, content type, body, traceparent.
    Head,
    /// The whole envelope too: `envelope_json` payloads and `forward_headers` need it.
    Full,
}

impl Event {
    pub fn from_record(record: ConsumedRecord, decode: Decode) -> Event {
        let text_header = |name: &str| {
            record
                .header(name)
                .map(|v| text(v.clone()))
                .unwrap_or_default()
        };
        let decoded = Envelope::head_from_record(&record).map(|head| {
            let head = head?;
            let envelope = match decode {
                Decode::Head => None,
                Decode::Full => Some(Box::new(Envelope::decode(record.value.clone())?)),
            };
            Ok::<_, prost::DecodeError>((head, envelope))
        });
        match decoded {
            Some(Ok((head, envelope))) => Event {
                // Checked: the envelope is input, and a time past the clock's range must
                // not bring the partition down.
                received_at: head
                    .received_at
                    .and_then(|t| {
                        let since_epoch = Duration::from_secs(t.seconds.max(0) as u64)
                            .checked_add(Duration::from_nanos(t.nanos.max(0) as u64))?;
                        UNIX_EPOCH.checked_add(since_epoch)
                    })
                    .unwrap_or_else(|| record_time(&record)),
                id: text(head.id),
                event_type: text(head.r#type),
                source: text(head.source),
                content_type: text(head.content_type),
                body: head.body,
                traceparent: text(head.traceparent),
                envelope,
                undeliverable: None,
                prior_attempts: 0,
                record,
            },
            decoded => {
                let name = format!("{}/{}/{}", record.topic, record.partition, record.offset);
                let content_type = match text_header("content-type") {
                    ct if ct.is_empty() => ByteString::from_static("application/octet-stream"),
                    ct => ct,
                };
                Event {
                    id: uuid::Uuid::new_v5(&FOREIGN_NAMESPACE, name.as_bytes())
                        .to_string()
                        .into(),
                    event_type: text_header(envelope::HEADER_TYPE),
                    source: ByteString::from(&*record.topic),
                    received_at: record_time(&record),
                    content_type,
                    body: record.value.clone(),
                    traceparent: text_header(envelope::HEADER_TRACEPARENT),
                    envelope: None,
                    undeliverable: decoded
                        .map(|e| format!("the envelope does not decode: {}", e.unwrap_err())),
                    prior_attempts: 0,
                    record,
                }
            }
        }
    }

    /// Decodes the whole envelope when `decode` asks for it and only the head was decoded:
    /// settings reloaded while the event waited (payload, forward_headers, a transform
    /// reading headers) can ask for more than those it was read with.
    pub fn decode_for(&mut self, decode: Decode) {
        if decode != Decode::Full || self.envelope.is_some() || self.undeliverable.is_some() {
            return;
        }
        if let Some(Ok(envelope)) =
            envelope::is_envelope(&self.record).then(|| Envelope::decode(self.record.value.clone()))
        {
            self.envelope = Some(Box::new(envelope));
        }
    }

    /// The key lanes order by.
    pub fn key(&self) -> Option<&Bytes> {
        self.record.key.as_ref()
    }

    /// The event as a filter or transform expression sees it. Headers are the original
    /// request's (a whole envelope's) or, for a foreign record, the record's own.
    pub fn variables(&self) -> Variables<'_> {
        let headers = match &self.envelope {
            Some(envelope) => envelope
                .headers
                .iter()
                .map(|h| (h.name.as_str(), h.value.as_str()))
                .collect(),
            None => self
                .record
                .headers
                .iter()
                .filter_map(|h| Some((h.name.as_ref(), std::str::from_utf8(&h.value).ok()?)))
                .collect(),
        };
        Variables {
            r#type: &self.event_type,
            key: self.key().and_then(|k| std::str::from_utf8(k).ok()),
            source: &self.source,
            id: &self.id,
            time: crate::rfc3339::rfc3339(self.received_at),
            headers,
            body: &self.body,
        }
    }
}

pub(super) fn record_time(record: &ConsumedRecord) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(record.timestamp_ms.max(0) as u64))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod properties {
    use std::sync::Arc;

    use bytes::Bytes;
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::broker::RecordHeader;
    use crate::envelope::{HEADER_CONTENT_TYPE, RECORD_CONTENT_TYPE};

    fn record(value: Vec<u8>, envelope: bool, timestamp_ms: i64) -> ConsumedRecord {
        ConsumedRecord {
            topic: Arc::from("t"),
            partition: 0,
            offset: 7,
            timestamp_ms,
            key: None,
            headers: envelope
                .then(|| RecordHeader {
                    name: HEADER_CONTENT_TYPE.into(),
                    value: Bytes::from_static(RECORD_CONTENT_TYPE.as_bytes()),
                })
                .into_iter()
                .collect(),
            value: Bytes::from(value),
        }
    }

    proptest! {
        /// Any bytes under the envelope's content type, or as a foreign record, make an
        /// event (perhaps an undeliverable one), never a panic.
        #[test]
        fn any_record_value_makes_an_event(
            value in proptest::collection::vec(any::<u8>(), 0..512),
            envelope in any::<bool>(),
            timestamp_ms in any::<i64>(),
            full in any::<bool>(),
        ) {
            let decode = if full { Decode::Full } else { Decode::Head };
            let _ = Event::from_record(record(value, envelope, timestamp_ms), decode);
        }

        /// Envelopes with any times, ids and types, however out of range.
        #[test]
        fn any_envelope_makes_an_event(
            seconds in any::<i64>(),
            nanos in any::<i32>(),
            id in ".{0,40}",
            kind in ".{0,40}",
        ) {
            let envelope = crate::envelope::Envelope {
                id,
                r#type: kind,
                received_at: Some(prost_types::Timestamp { seconds, nanos }),
                ..Default::default()
            };
            let event = Event::from_record(
                record(envelope.encode_to_vec(), true, 0),
                Decode::Full,
            );
            prop_assert!(event.undeliverable.is_none());
        }
    }
}
