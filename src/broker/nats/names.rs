//! How hookbridge names things on NATS: streams, subjects and durable consumers derived from
//! topics and groups, and the header that carries a record's key.

/// The header that carries a record's partition key.
pub const KEY_HEADER: &str = "Hb-Key";

/// The stream of a topic. Stream names cannot hold `.`, `*`, `>` or spaces, so every
/// character but letters, digits and `-` is written as `_XX` (hex): unambiguous, since `_`
/// itself is escaped too.
pub fn stream_name(topic: &str) -> String {
    let mut name = String::with_capacity(topic.len() + 8);
    for byte in topic.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            name.push(byte as char);
        } else {
            name.push_str(&format!("_{byte:02X}"));
        }
    }
    name
}

pub fn subject(topic: &str, partition: u32) -> String {
    format!("{topic}.{partition}")
}

/// The durable consumer a group reads one partition with.
pub fn consumer_name(group: &str, topic: &str, partition: u32) -> String {
    format!("{}-{}-p{partition}", stream_name(group), stream_name(topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_valid_and_distinct() {
        assert_eq!(stream_name("webhooks.github"), "webhooks_2Egithub");
        assert_ne!(stream_name("a.b"), stream_name("a_b"));
        assert_eq!(stream_name("a_b"), "a_5Fb");
        assert!(!stream_name("x.y-z").contains(['.', '*', '>', ' ']));
    }
}
