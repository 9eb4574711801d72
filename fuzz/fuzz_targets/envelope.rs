//! A record read from a topic, as the delivery engine meets it: whatever its key and value,
//! a record that says it holds an envelope decodes or is refused without a panic, whole and
//! by its head alone, and the two agree on what they share.
//!
//! Input: one byte, the key's length; the key; the rest is the record's value.
#![no_main]

use hookbridge::broker::{ConsumedRecord, RecordHeader};
use hookbridge::envelope::{Envelope, HEADER_CONTENT_TYPE, RECORD_CONTENT_TYPE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&key_len, rest)) = data.split_first() else {
        return;
    };
    let (key, value) = rest.split_at(usize::from(key_len).min(rest.len()));
    let record = ConsumedRecord {
        topic: "fuzzed".into(),
        partition: 0,
        offset: 0,
        timestamp_ms: 0,
        key: Some(key.to_vec().into()),
        headers: vec![RecordHeader {
            name: HEADER_CONTENT_TYPE.into(),
            value: RECORD_CONTENT_TYPE.as_bytes().to_vec().into(),
        }],
        value: value.to_vec().into(),
    };
    let whole = Envelope::from_record(&record).expect("says it is an envelope");
    let head = Envelope::head_from_record(&record).expect("says it is an envelope");
    if let (Ok(whole), Ok(head)) = (whole, head) {
        assert_eq!(
            head.id,
            whole.id.as_bytes(),
            "the head reads the id the envelope does"
        );
        assert_eq!(head.body, whole.body, "and the body");
    }
});
