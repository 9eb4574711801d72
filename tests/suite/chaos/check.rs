//! The checker: reads the receiver's history (each request's start and end) and the dead
//! letters, and says what broke.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::support::receiver::{Received, seq_of};

/// An event the ingress accepted (answered 202).
#[derive(Debug, Clone)]
pub struct Accepted {
    pub key: String,
    pub seq: u64,
    pub id: String,
}

#[derive(Debug, Default)]
pub struct Verdict {
    /// Broken guarantees, each said in a line.
    pub problems: Vec<String>,
    pub delivered: usize,
    pub dead_lettered: usize,
    /// Requests of events already answered 2xx before (at-least-once's repeats: at a crash,
    /// a handover or a broker restart, what was in flight is sent again).
    pub repeats: usize,
    pub requests: usize,
}

/// Checks the history: every accepted event delivered or dead-lettered (G1, G2); per key,
/// each event's first request (whatever came of it) in publish order, so an event sent
/// before an earlier one was done is caught even when both fail then (G3); never two
/// requests of one key on the wire at once (G3).
pub fn check(accepted: &[Accepted], received: &[Received], dead: &HashSet<String>) -> Verdict {
    let mut verdict = Verdict {
        requests: received.len(),
        ..Verdict::default()
    };
    let mut by_arrival: Vec<&Received> = received.iter().collect();
    by_arrival.sort_by_key(|r| r.at);
    let mut delivered: HashSet<&str> = HashSet::new();
    for r in &by_arrival {
        let id = r.header("webhook-id");
        if delivered.contains(id) {
            verdict.repeats += 1;
        }
        if r.ok() {
            delivered.insert(id);
        }
    }
    verdict.delivered = delivered.len();
    verdict.dead_lettered = accepted.iter().filter(|a| dead.contains(&a.id)).count();
    let lost: Vec<&Accepted> = accepted
        .iter()
        .filter(|a| !delivered.contains(a.id.as_str()) && !dead.contains(&a.id))
        .collect();
    if !lost.is_empty() {
        verdict.problems.push(format!(
            "{} accepted events neither delivered nor dead-lettered, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        ));
    }
    verdict.problems.extend(out_of_order(accepted, &by_arrival));
    verdict.problems.extend(overlaps(&by_arrival));
    verdict
}

/// Per key, the first request of each accepted event, in the order the events were
/// published. (A redriven event's first request is its first attempt, long before.)
fn out_of_order(accepted: &[Accepted], by_arrival: &[&Received]) -> Vec<String> {
    let in_order: HashSet<&str> = accepted.iter().map(|a| a.id.as_str()).collect();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut last_of_key: HashMap<String, u64> = HashMap::new();
    let mut problems = Vec::new();
    for r in by_arrival {
        let id = r.header("webhook-id");
        if !in_order.contains(id) || !seen.insert(id) {
            continue;
        }
        let (key, seq) = seq_of(r);
        if let Some(before) = last_of_key.insert(key.clone(), seq)
            && before > seq
        {
            problems.push(format!("{key}: seq {seq} first sent after seq {before}"));
        }
    }
    problems
}

/// Two requests of one key on the wire at once. An abandoned request's end is when the
/// receiver saw its connection close, a little after hookbridge closed it: on a busy
/// machine a retry sent at once may start within that.
fn overlaps(by_arrival: &[&Received]) -> Vec<String> {
    const SEEN_CLOSING: Duration = Duration::from_millis(100);
    let mut last_end: HashMap<String, (&Received, u64)> = HashMap::new();
    let mut problems = Vec::new();
    for r in by_arrival {
        let (key, seq) = seq_of(r);
        if let Some((earlier, earlier_seq)) = last_end.get(&key) {
            let margin = if earlier.abandoned {
                SEEN_CLOSING
            } else {
                Duration::ZERO
            };
            if r.at + margin < earlier.finished {
                problems.push(format!(
                    "{key}: seq {seq} started {:?} before seq {earlier_seq} ended ({})",
                    earlier.finished - r.at,
                    if earlier.abandoned {
                        "abandoned"
                    } else {
                        "answered"
                    }
                ));
            }
        }
        if last_end
            .get(&key)
            .is_none_or(|(earlier, _)| r.finished > earlier.finished)
        {
            last_end.insert(key, (r, seq));
        }
    }
    problems
}
