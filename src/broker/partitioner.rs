//! Which partition a key lands on: Kafka's murmur2, for every backend.
//!
//! Using the Java client's hash everywhere means a key lands on the same partition index
//! whether hookbridge or any other Kafka producer wrote it, and on NATS and the embedded log
//! exactly as on Kafka, so moving between backends keeps per-key order.

use std::sync::atomic::{AtomicU32, Ordering};

/// Kafka's `Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record, as Kafka's default partitioner computes it.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

/// Picks partitions: murmur2 for keyed records, round-robin for the rest (librdkafka's
/// `murmur2_random` spreads unkeyed records too).
#[derive(Debug, Default)]
pub struct Partitioner {
    next_unkeyed: AtomicU32,
}

impl Partitioner {
    pub fn partition(&self, key: Option<&[u8]>, partitions: u32) -> u32 {
        match key {
            Some(key) => partition_for_key(key, partitions),
            None => self.next_unkeyed.fetch_add(1, Ordering::Relaxed) % partitions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's own `UtilsTest.testMurmur2`.
    #[test]
    fn matches_kafka_java_client() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn unkeyed_records_rotate() {
        let p = Partitioner::default();
        let seen: Vec<u32> = (0..4).map(|_| p.partition(None, 3)).collect();
        assert_eq!(seen, [0, 1, 2, 0]);
    }
}
