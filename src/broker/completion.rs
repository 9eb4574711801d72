//! What is done in a partition beyond its commit point, in a form a broker can store (G8).
//!
//! A commit offset alone says "everything below `n` is done". Behind a key that keeps
//! failing, `n` stays at that key's first event while thousands of later events are
//! delivered; if only `n` survived a crash, all of them would be sent again. A
//! [`Completion`] adds what the engine knows above `n`: up to `known_until`, every record is
//! done except the few still `open` (queued or in flight). The open ones are bounded by the
//! partition's buffer, so the whole thing stays small however long the key fails: it is
//! stored with the commit (Kafka's commit metadata, the embedded log's cursor), and the next
//! owner skips every record it says is done.
//!
//! It also carries the partition's parked keys (G8): a key that kept failing moved to the
//! parking topic, and its later events follow it there until everything it parked is done.
//! Which keys those are must outlive the process too, or a restart would deliver a parked
//! key's new events before its parked ones.
//!
//! The encoding is a version byte and varints: the parking topics named, the parked keys,
//! the length of the known range, then alternating runs of done and open offsets. Records that do not exist (gaps after
//! compaction, transaction markers) simply count as done. When a size limit applies (Kafka
//! brokers cap commit metadata, 4 KiB by default) the known range is cut short so the
//! encoding fits: what lies past the cut is redelivered after a crash, never skipped.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The textual form starts with this, so other tools' metadata is not misread.
const TEXT_TAG: &str = "hb1:";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    /// Every record below this offset is done (the commit point).
    pub next_offset: u64,
    /// Records in `next_offset..known_until` are done unless listed in `open`; nothing is
    /// known from here on.
    pub known_until: u64,
    /// Records in the known range that are not done, ascending.
    pub open: Vec<u64>,
    /// Keys parked, with where their last parked event went.
    pub parked: Vec<ParkedKey>,
}

/// A key of the partition whose events go to the parking topic until `last` is done there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedKey {
    /// [`key_hash`] of the key: fixed size, however long keys are.
    pub key: u64,
    /// The parking topic its events went to: the subscription's may have changed since.
    /// `None` in forms written before the topic was kept (it was the subscription's then).
    pub topic: Option<Arc<str>>,
    /// The parking topic's partition (a key's events all land on one).
    pub partition: u32,
    /// The offset of the key's last event sent there.
    pub last: u64,
}

/// A 64-bit digest of a partition key (the first 8 bytes of its SHA-256): what parked keys
/// are known by. Two keys of one partition sharing it is a 1-in-2^64 chance per pair; the
/// cost would be that one is routed through the parking topic with the other.
pub fn key_hash(key: &[u8]) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key);
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

impl Completion {
    /// Only a commit point: nothing known above it.
    pub fn at(next_offset: u64) -> Completion {
        Completion {
            next_offset,
            known_until: next_offset,
            open: Vec::new(),
            parked: Vec::new(),
        }
    }

    /// Whether the record at `offset` was done.
    pub fn is_done(&self, offset: u64) -> bool {
        offset < self.next_offset
            || (offset < self.known_until && self.open.binary_search(&offset).is_err())
    }

    /// Whether anything above the commit point is known.
    pub fn knows_more(&self) -> bool {
        self.known_until > self.next_offset
    }

    /// Whether there is more to it than the commit point.
    pub fn is_bare(&self) -> bool {
        !self.knows_more() && self.parked.is_empty()
    }

    /// The varint form, at most `max_len` bytes (the known range is cut to fit; the parked
    /// keys always fit, see `MAX_PARKED`; a commit point alone encodes as nothing).
    pub fn encode(&self, max_len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        if self.is_bare() {
            return out;
        }
        put_parked(&mut out, &self.parked);
        let max_len = max_len.saturating_sub(out.len());
        // Runs of (done, open) lengths from the commit point on.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut at = self.next_offset;
        for &offset in &self.open {
            debug_assert!(offset >= at && offset < self.known_until);
            match runs.last_mut() {
                Some((_, open)) if offset == at => *open += 1,
                _ => runs.push((offset - at, 1)),
            }
            at = offset + 1;
        }
        // Cut at the first run that does not fit: everything from its open records on is
        // unknown (the done records before them are still worth keeping).
        let mut body = Vec::new();
        let mut known_until = self.known_until;
        let mut position = self.next_offset;
        for (done, open) in runs {
            let mut run = Vec::new();
            put_varint(&mut run, done);
            put_varint(&mut run, open);
            // Room for the header (at most 10 bytes) and this run.
            if 10 + body.len() + run.len() > max_len {
                known_until = position + done;
                break;
            }
            body.extend_from_slice(&run);
            position += done + open;
        }
        // The done records after the last open one need no run: the range's length covers
        // them.
        put_varint(&mut out, known_until - self.next_offset);
        if known_until == self.next_offset {
            return out;
        }
        out.extend_from_slice(&body);
        out
    }

    /// Reads the varint form stored with commit point `next_offset`; `None` if it is not
    /// one this version wrote.
    pub fn decode(next_offset: u64, bytes: &[u8]) -> Option<Completion> {
        if bytes.is_empty() {
            return Some(Completion::at(next_offset));
        }
        let mut input = bytes;
        let parked = take_parked(&mut input)?;
        let length = take_varint(&mut input)?;
        let known_until = next_offset.checked_add(length)?;
        let mut open = Vec::new();
        let mut at = next_offset;
        while !input.is_empty() {
            let done = take_varint(&mut input)?;
            let count = take_varint(&mut input)?;
            let start = at.checked_add(done)?;
            let end = start.checked_add(count)?;
            if end > known_until || count == 0 {
                return None;
            }
            // Bounded by the input: each varint is at least one byte, and a run longer than
            // the buffer it describes would have to come from a corrupt or foreign value.
            if open.len() as u64 + count > MAX_OPEN {
                return None;
            }
            open.extend(start..end);
            at = end;
        }
        Some(Completion {
            next_offset,
            known_until,
            open,
            parked,
        })
    }

    /// The textual form (for Kafka's commit metadata), at most `max_len` characters; empty
    /// when only the commit point is known.
    pub fn to_text(&self, max_len: usize) -> String {
        // Base64 makes 4 characters of every 3 bytes.
        let budget = max_len.saturating_sub(TEXT_TAG.len()) / 4 * 3;
        let bytes = self.encode(budget);
        if bytes.is_empty() {
            return String::new();
        }
        format!("{TEXT_TAG}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Reads the textual form stored with commit point `next_offset`. Metadata this version
    /// did not write (empty, another tool's, corrupt) means only the commit point is known.
    pub fn from_text(next_offset: u64, text: &str) -> Completion {
        text.strip_prefix(TEXT_TAG)
            .and_then(|encoded| URL_SAFE_NO_PAD.decode(encoded).ok())
            .and_then(|bytes| Completion::decode(next_offset, &bytes))
            .unwrap_or_else(|| Completion::at(next_offset))
    }
}

/// The first byte of the form that names each parked key's parking topic. The form before
/// it starts with the parked-key count, never above `MAX_PARKED`, so the two cannot be
/// confused.
const VERSION_2: u8 = 0x7f;

/// Writes the parked keys, naming their parking topics (version 2); none is written in the
/// earlier form, a count of 0, which reads the same.
fn put_parked(out: &mut Vec<u8>, parked: &[ParkedKey]) {
    if parked.is_empty() {
        put_varint(out, 0);
        return;
    }
    out.push(VERSION_2);
    let mut topics: Vec<&Arc<str>> = parked.iter().flat_map(|p| &p.topic).collect();
    topics.sort_unstable();
    topics.dedup();
    put_varint(out, topics.len() as u64);
    for topic in &topics {
        put_varint(out, topic.len() as u64);
        out.extend_from_slice(topic.as_bytes());
    }
    put_varint(out, parked.len() as u64);
    for key in parked {
        out.extend_from_slice(&key.key.to_be_bytes());
        let topic = key
            .topic
            .as_ref()
            .and_then(|t| topics.binary_search(&t).ok())
            .map_or(0, |i| i as u64 + 1);
        put_varint(out, topic);
        put_varint(out, u64::from(key.partition));
        put_varint(out, key.last);
    }
}

/// Reads the parked keys: the version-2 form (topics named), or the earlier one (none).
fn take_parked(input: &mut &[u8]) -> Option<Vec<ParkedKey>> {
    let topics = match input.split_first() {
        Some((&VERSION_2, rest)) => {
            *input = rest;
            Some(take_topics(input)?)
        }
        _ => None,
    };
    let count = take_varint(input)?;
    if count > MAX_PARKED as u64 {
        return None;
    }
    let mut parked = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (key, rest) = input.split_first_chunk::<8>()?;
        *input = rest;
        // 0: no topic kept; n: the n-th named.
        let topic = match &topics {
            None => None,
            Some(topics) => match take_varint(input)? {
                0 => None,
                n => Some(topics.get(usize::try_from(n - 1).ok()?)?.clone()),
            },
        };
        parked.push(ParkedKey {
            key: u64::from_be_bytes(*key),
            topic,
            partition: u32::try_from(take_varint(input)?).ok()?,
            last: take_varint(input)?,
        });
    }
    Some(parked)
}

fn take_topics(input: &mut &[u8]) -> Option<Vec<Arc<str>>> {
    let count = take_varint(input)?;
    // At most one topic per parked key: more is not a form this version wrote.
    if count > MAX_PARKED as u64 {
        return None;
    }
    (0..count)
        .map(|_| {
            let len = usize::try_from(take_varint(input)?).ok()?;
            if len > input.len() {
                return None;
            }
            let (name, rest) = input.split_at(len);
            *input = rest;
            Some(Arc::from(std::str::from_utf8(name).ok()?))
        })
        .collect()
}

/// More open records than any partition buffer holds: a value claiming so is not ours.
const MAX_OPEN: u64 = 1 << 20;
/// At most this many keys of one partition are parked at once; a key failing while this
/// many are parked keeps retrying in place (holding only its own events, as before G8).
/// Bounded so the parked keys always fit in a Kafka commit's metadata (about 20 bytes each,
/// and the names of their parking topics: one, or a former one too while its events are
/// carried over, see `delivery::parking_carry`; a Kafka topic name is at most 249 bytes).
pub const MAX_PARKED: usize = 64;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_failing_key_behind_thousands_of_done_records_encodes_in_a_few_bytes() {
        let completion = Completion {
            next_offset: 1_000,
            known_until: 3_001,
            open: vec![1_000, 1_500, 3_000],
            parked: Vec::new(),
        };
        let bytes = completion.encode(usize::MAX);
        assert!(bytes.len() <= 12, "{} bytes", bytes.len());
        assert_eq!(Completion::decode(1_000, &bytes), Some(completion.clone()));
        let text = completion.to_text(4096);
        assert!(text.starts_with("hb1:"));
        assert_eq!(Completion::from_text(1_000, &text), completion);
        for offset in [0, 999, 1_001, 1_499, 1_501, 2_999] {
            assert!(completion.is_done(offset), "{offset}");
        }
        for offset in [1_000, 1_500, 3_000, 3_001, 5_000] {
            assert!(!completion.is_done(offset), "{offset}");
        }
    }

    #[test]
    fn a_commit_point_alone_is_empty_and_foreign_metadata_means_a_commit_point() {
        assert_eq!(Completion::at(7).to_text(4096), "");
        assert_eq!(Completion::from_text(7, ""), Completion::at(7));
        assert_eq!(
            Completion::from_text(7, "written by another tool"),
            Completion::at(7)
        );
        assert_eq!(Completion::from_text(7, "hb1:!!"), Completion::at(7));
    }

    #[test]
    fn parked_keys_stored_before_their_topic_was_kept_read_back_without_one() {
        // A key parked at 1/42, written by the form that named no topic: count, key, partition,
        // last, then an empty known range.
        let mut old = vec![1];
        old.extend_from_slice(&7u64.to_be_bytes());
        old.extend_from_slice(&[1, 42, 0]);
        let read = Completion::decode(5, &old).expect("the earlier form");
        assert_eq!(
            read.parked,
            vec![ParkedKey {
                key: 7,
                topic: None,
                partition: 1,
                last: 42
            }]
        );
        let mut moved = read.clone();
        moved.parked[0].topic = Some(Arc::from("hookbridge.park.orders"));
        assert_eq!(
            Completion::decode(5, &moved.encode(usize::MAX)),
            Some(moved),
            "the topic is kept from now on"
        );
    }

    #[test]
    fn past_the_size_limit_the_known_range_is_cut_never_widened() {
        // Every other record open: the worst case for run lengths.
        let open: Vec<u64> = (0..10_000).map(|i| 100 + 2 * i).collect();
        let completion = Completion {
            next_offset: 100,
            known_until: 20_100,
            open,
            parked: vec![
                ParkedKey {
                    key: 1,
                    topic: Some(Arc::from("hookbridge.park.a-subscription-name")),
                    partition: 3,
                    last: 99
                };
                MAX_PARKED
            ],
        };
        let text = completion.to_text(4096);
        assert!(text.len() <= 4096, "{}", text.len());
        let read = Completion::from_text(100, &text);
        assert!(read.knows_more());
        assert_eq!(read.parked, completion.parked, "parked keys always fit");
        assert!(read.known_until < completion.known_until);
        for offset in 100..20_100 {
            if read.is_done(offset) {
                assert!(completion.is_done(offset), "{offset} was open");
            }
        }
    }

    proptest! {
        #[test]
        fn what_is_read_back_never_calls_an_open_record_done(
            next_offset in 0u64..1_000_000,
            steps in prop::collection::vec((0u64..300, any::<bool>()), 0..400),
            tail in 0u64..50,
            max_len in 200usize..900,
            parked in prop::collection::vec((any::<u64>(), 0usize..3, 0u32..64, any::<u64>()), 0..4),
        ) {
            let topics = [None, Some(Arc::from("park.one")), Some(Arc::from("park.two"))];
            let parked: Vec<ParkedKey> = parked
                .into_iter()
                .map(|(key, topic, partition, last)| ParkedKey { key, topic: topics[topic].clone(), partition, last })
                .collect();
            let mut open = Vec::new();
            let mut at = next_offset;
            for (gap, is_open) in steps {
                at += gap;
                if is_open {
                    open.push(at);
                }
                at += 1;
            }
            let completion = Completion { next_offset, known_until: at + tail, open, parked };
            let full = Completion::decode(next_offset, &completion.encode(usize::MAX));
            prop_assert_eq!(full.as_ref(), Some(&completion));
            let text = completion.to_text(max_len);
            prop_assert!(text.len() <= max_len);
            let cut = Completion::from_text(next_offset, &text);
            prop_assert_eq!(&cut.parked, &completion.parked);
            prop_assert!(cut.known_until <= completion.known_until);
            for offset in next_offset..completion.known_until + 1 {
                if cut.is_done(offset) {
                    prop_assert!(completion.is_done(offset), "open record {} read as done", offset);
                }
            }
        }
    }
}
