//! The seeded fault schedule: what the receiver answers each key, and what happens to the
//! replicas, the broker, the config and the operator's verbs, when. One seed, one schedule.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// How the receiver answers one key's requests for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 at once.
    Fine,
    /// 500: the endpoint failing for this key (retried, parks after `park_after`).
    ServerError,
    /// 400: the event refused (dead-lettered at once).
    Refused,
    /// 429 with `Retry-After: 1`.
    TooMany,
    /// 200 after 300 ms.
    Slow,
    /// 200 after 1.5 s, past the subscription's 1 s `timeout`: a failed attempt.
    PastTimeout,
}

/// One step of the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The receiver answers `key` so for `for_`.
    Answer {
        key: usize,
        answer: Answer,
        for_: Duration,
    },
    /// `kill -9` of replica `replica` (of those running, by index), started again after
    /// `down`.
    Kill { replica: usize, down: Duration },
    /// SIGTERM of a replica, started again after `down`.
    Terminate { replica: usize, down: Duration },
    /// One more replica joins (up to the backend's most).
    Join,
    /// The broker is killed and started again (NATS and Kafka).
    BrokerRestart,
    /// Every replica's broker connection moves no byte for `for_`, as in a network
    /// partition (NATS and Kafka, through a proxy).
    Stall { for_: Duration },
    /// The config file changes.
    Reload(Reload),
    /// Every replica pauses delivery for `for_`.
    Pause { for_: Duration },
    /// The dead letters are redriven while traffic flows.
    Redrive,
    /// The last `span` of events is replayed to the subscription while traffic flows.
    Replay { span: Duration },
}

/// What a reload changes: `max_in_flight`, the longest backoff, the URL (its query, taken
/// in place), the ordering (`key` or `partition`) and the parking topic (either makes the
/// subscription rejoin its group), and whether a second subscription on the same topic
/// runs (added or removed beside the checked one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    pub max_in_flight: u32,
    pub max_backoff_ms: u64,
    pub url_version: u32,
    pub ordering_by_key: bool,
    pub parking_version: u32,
    pub second: bool,
}

impl Reload {
    /// The config a run starts with.
    pub fn first() -> Reload {
        Reload {
            max_in_flight: 8,
            max_backoff_ms: 500,
            url_version: 0,
            ordering_by_key: true,
            parking_version: 0,
            second: false,
        }
    }
}

/// The schedule of a run: `(at, action)` in time order.
pub fn schedule(
    seed: u64,
    duration: Duration,
    keys: usize,
    replicas: bool,
    broker_faults: bool,
) -> Vec<(Duration, Action)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut at = Duration::from_secs(2);
    let mut steps = Vec::new();
    // Faults stop a few seconds before the end, so that the last ones have played out.
    while at + Duration::from_secs(5) < duration {
        let action = match rng.random_range(0..112u32) {
            0..40 => Action::Answer {
                key: rng.random_range(0..keys),
                answer: match rng.random_range(0..5u32) {
                    0 => Answer::ServerError,
                    1 => Answer::Refused,
                    2 => Answer::TooMany,
                    3 => Answer::Slow,
                    _ => Answer::PastTimeout,
                },
                for_: Duration::from_millis(rng.random_range(500..4_000)),
            },
            40..50 => Action::Kill {
                replica: rng.random_range(0..4),
                down: Duration::from_millis(rng.random_range(200..3_000)),
            },
            50..58 => Action::Terminate {
                replica: rng.random_range(0..4),
                down: Duration::from_millis(rng.random_range(200..3_000)),
            },
            58..64 if replicas => Action::Join,
            64..68 if broker_faults => Action::BrokerRestart,
            68..80 => Action::Reload(Reload {
                max_in_flight: rng.random_range(1..16),
                max_backoff_ms: rng.random_range(100..1_000),
                url_version: rng.random_range(0..3),
                ordering_by_key: rng.random_bool(0.7),
                parking_version: rng.random_range(0..2),
                second: rng.random_bool(0.5),
            }),
            80..90 => Action::Pause {
                for_: Duration::from_millis(rng.random_range(200..2_000)),
            },
            90..100 => Action::Redrive,
            100..106 => Action::Replay {
                span: Duration::from_secs(rng.random_range(2..20)),
            },
            106..112 if broker_faults => Action::Stall {
                for_: Duration::from_millis(rng.random_range(500..6_000)),
            },
            _ => continue,
        };
        steps.push((at, action));
        at += Duration::from_millis(rng.random_range(500..2_500));
    }
    steps
}
