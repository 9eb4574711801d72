//! The open connections of one subscription, all to its one endpoint.
//!
//! Why not hyper-util's pooled client: it keys its pool by scheme and authority, hashing
//! the key for every request, boxes each request's future and keeps an extensions map per
//! request (BENCHMARKS.md). A subscription only ever talks to one endpoint, so its pool is
//! a stack: the connection used last is used next (warm, and the others may time out
//! unused). One idle longer than [`IDLE_TIMEOUT`] is not used again: closed when the pool
//! is next used. (A NAT or load balancer on the way may have forgotten it without a word;
//! a request sent on it would fail after it was written, when it cannot be sent again.)

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::connect::Sender;

/// How long a connection may sit unused before it is closed, as hyper-util's pool did.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub struct Pool {
    /// Oldest at the front; taken from and given back at the back.
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

impl Pool {
    pub fn new(max_idle: usize) -> Pool {
        Pool {
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    #[cfg(test)]
    pub fn with_idle_timeout(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle_timeout,
            ..Pool::new(max_idle)
        }
    }

    /// The connection given back last that is still open and not idle for too long, if
    /// any.
    pub fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some(Idle { sender, since }) = idle.pop_back() {
            if since.elapsed() > self.idle_timeout {
                // The newest is too old: so are all the others.
                idle.clear();
                return None;
            }
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps `sender` for the next request, unless as many are kept already. Connections
    /// idle for too long are closed on the way.
    pub fn give_back(&self, sender: Sender) {
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
        while idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) > self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle && !sender.is_closed() {
            idle.push_back(Idle { sender, since: now });
        }
    }
}
