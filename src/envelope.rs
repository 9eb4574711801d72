//! The envelope (DESIGN.md §2): generated types, ids, and how an envelope sits in a broker
//! record.

use bytes::Bytes;
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
                name: HEADER_CONTENT_TYPE.into(),
                value: Bytes::from_static(RECORD_CONTENT_TYPE.as_bytes()),
            },
            RecordHeader {
                name: HEADER_ID.into(),
                value: Bytes::from(self.id.clone()),
            },
        ];
        if !self.r#type.is_empty() {
            headers.push(RecordHeader {
                name: HEADER_TYPE.into(),
                value: Bytes::from(self.r#type.clone()),
            });
        }
        if !self.traceparent.is_empty() {
            headers.push(RecordHeader {
                name: HEADER_TRACEPARENT.into(),
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
        let content_type = record.header(HEADER_CONTENT_TYPE)?;
        (content_type.as_ref() == RECORD_CONTENT_TYPE.as_bytes())
            .then(|| Envelope::decode(record.value.clone()))
    }

    /// The first value of a header kept in the envelope, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
