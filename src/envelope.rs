//! The envelope (ARCHITECTURE.md §2): generated types, ids, and how an envelope sits in a broker
//! record.

use bytes::Bytes;
use bytestring::ByteString;
use prost::Message;
use uuid::Uuid;

use crate::broker::{ConsumedRecord, Record, RecordHeader};

/// Types generated from `proto/hookbridge/v1/envelope.proto`.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/hookbridge.v1.rs"));
}

pub use v1::{Envelope, Header};

/// The `content-type` record header that marks a record as a hookbridge envelope. Records
/// without it are foreign: produced by some other service.
pub const RECORD_CONTENT_TYPE: &str = "application/x-protobuf; proto=hookbridge.v1.Envelope";
pub const HEADER_CONTENT_TYPE: &str = "content-type";
pub const HEADER_ID: &str = "hb-id";
pub const HEADER_TYPE: &str = "hb-type";
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// A record's own identity for broker-side de-duplication (NATS `Nats-Msg-Id`), where it
/// is not the envelope id: a dead letter is one record per subscription and envelope.
pub const HEADER_RECORD_ID: &str = "hb-record-id";

/// Namespace of the UUIDv5 ids derived from a sender's delivery id.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_2c3e_8a4b_4c5d_9e0f_1a2b_3c4d_5e6f);

/// The envelope id: derived from route and idempotency key when the sender gave one, so a
/// retried delivery keeps its id (G5); otherwise a fresh, time-ordered UUIDv7.
pub fn envelope_id(route: &str, idempotency_key: Option<&str>) -> Uuid {
    match idempotency_key {
        Some(key) => {
            // The separator keeps ("a", "b:c") and ("a:b", "c") apart.
            let name = [route.as_bytes(), b"\0", key.as_bytes()].concat();
            Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, &name)
        }
        None => Uuid::now_v7(),
    }
}

impl Envelope {
    /// The broker record for this envelope on `topic`.
    pub fn to_record(&self, topic: &str) -> Record {
        let mut headers = vec![
            RecordHeader {
                name: ByteString::from_static(HEADER_CONTENT_TYPE),
                value: Bytes::from_static(RECORD_CONTENT_TYPE.as_bytes()),
            },
            RecordHeader {
                name: ByteString::from_static(HEADER_ID),
                value: Bytes::from(self.id.clone()),
            },
        ];
        if !self.r#type.is_empty() {
            headers.push(RecordHeader {
                name: ByteString::from_static(HEADER_TYPE),
                value: Bytes::from(self.r#type.clone()),
            });
        }
        if !self.traceparent.is_empty() {
            headers.push(RecordHeader {
                name: ByteString::from_static(HEADER_TRACEPARENT),
                value: Bytes::from(self.traceparent.clone()),
            });
        }
        Record {
            topic: topic.to_string(),
            key: (!self.key.is_empty()).then(|| Bytes::from(self.key.clone())),
            headers,
            value: Bytes::from(self.encode_to_vec()),
        }
    }

    /// Decodes the envelope of a record hookbridge published; `None` for a foreign record.
    pub fn from_record(record: &ConsumedRecord) -> Option<Result<Envelope, prost::DecodeError>> {
        is_envelope(record).then(|| Envelope::decode(record.value.clone()))
    }

    /// The head of a hookbridge record's envelope, or `None` for a foreign record.
    pub fn head_from_record(
        record: &ConsumedRecord,
    ) -> Option<Result<EnvelopeHead, prost::DecodeError>> {
        is_envelope(record).then(|| EnvelopeHead::decode(record.value.clone()))
    }

    /// The first value of a header kept in the envelope, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }
}

/// Whether the record says it holds a hookbridge envelope (its `content-type` header).
pub fn is_envelope(record: &ConsumedRecord) -> bool {
    record
        .header(HEADER_CONTENT_TYPE)
        .is_some_and(|ct| ct.as_ref() == RECORD_CONTENT_TYPE.as_bytes())
}

/// The fields of an [`Envelope`] a delivery needs, decoded without the rest: the original
/// request's headers and attributes (most of an envelope's allocations) are skipped as
/// unknown fields. Delivery decodes this per record and the whole envelope only for the
/// payload modes that send it. Tags are those of `envelope.proto`; the test below keeps
/// them in step.
///
/// The text fields are read as bytes (the wire format of `string` and `bytes` is the same):
/// decoded from a record's shared buffer they are slices of it, not copies, and become
/// header values without another copy. [`crate::broker::text`] checks them for UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EnvelopeHead {
    #[prost(bytes = "bytes", tag = "1")]
    pub id: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub source: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub r#type: Bytes,
    #[prost(message, optional, tag = "4")]
    pub received_at: Option<prost_types::Timestamp>,
    #[prost(bytes = "bytes", tag = "10")]
    pub content_type: Bytes,
    #[prost(bytes = "bytes", tag = "11")]
    pub body: Bytes,
    #[prost(bytes = "bytes", tag = "13")]
    pub traceparent: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_reads_the_same_fields_as_the_envelope() {
        let envelope = Envelope {
            id: "id-1".into(),
            source: "github".into(),
            r#type: "push".into(),
            received_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            key: "k".into(),
            headers: vec![Header {
                name: "x-a".into(),
                value: "1".into(),
                raw_value: Bytes::new(),
            }],
            content_type: "application/json".into(),
            body: Bytes::from_static(b"{}"),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: "a=b".into(),
            attributes: [("x".to_string(), "y".to_string())].into(),
            ..Envelope::default()
        };
        let head = EnvelopeHead::decode(Bytes::from(envelope.encode_to_vec())).unwrap();
        let text = |field: &Bytes| crate::broker::text(field.clone());
        assert_eq!(text(&head.id), envelope.id);
        assert_eq!(text(&head.source), envelope.source);
        assert_eq!(text(&head.r#type), envelope.r#type);
        assert_eq!(head.received_at, envelope.received_at);
        assert_eq!(text(&head.content_type), envelope.content_type);
        assert_eq!(head.body, envelope.body);
        assert_eq!(text(&head.traceparent), envelope.traceparent);
    }

    #[test]
    fn ids_from_the_same_delivery_are_equal() {
        assert_eq!(
            envelope_id("github", Some("d1")),
            envelope_id("github", Some("d1"))
        );
        assert_ne!(
            envelope_id("github", Some("d1")),
            envelope_id("stripe", Some("d1"))
        );
        assert_ne!(envelope_id("a", Some("b.c")), envelope_id("a.b", Some("c")));
        assert_eq!(envelope_id("github", None).get_version_num(), 7);
    }
}
