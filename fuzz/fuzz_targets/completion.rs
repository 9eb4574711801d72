//! What a crash leaves behind: the stored completion of a partition, as Kafka's commit
//! metadata (text) or the embedded cursor and NATS entry (bytes). Any input decodes or is
//! refused without a panic, and what decodes encodes to something that decodes the same.
#![no_main]

use hookbridge::broker::completion::Completion;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&point, bytes)) = data.split_first() else {
        return;
    };
    let next_offset = u64::from(point) * 1_000;
    if let Some(read) = Completion::decode(next_offset, bytes) {
        let again = Completion::decode(next_offset, &read.encode(usize::MAX));
        assert_eq!(
            again.as_ref(),
            Some(&read),
            "encode(decode(x)) decodes the same"
        );
        let text = read.to_text(3_072);
        assert!(text.len() <= 3_072 || !read.parked.is_empty());
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = Completion::from_text(next_offset, text);
    }
});
