//! The per-subscription circuit breaker: after `failures` consecutive failed attempts the
//! endpoint is left alone for `cool_down`; then one probe goes through (half-open) and its
//! result closes the breaker or opens it again. Lanes wait on an open breaker instead of
//! burning their attempts against an endpoint that is down.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everyone else waits for its verdict.
    HalfOpen,
}

pub struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cool_down: Duration,
    changed: Notify,
}

impl Breaker {
    pub fn new(threshold: u32, cool_down: Duration) -> Breaker {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold,
            cool_down,
            changed: Notify::new(),
        }
    }

    #[cfg(test)]
    pub fn state(&self) -> BreakerState {
        match *self.state.lock().expect("breaker lock") {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// Waits until an attempt may be made.
    pub async fn admit(&self) {
        loop {
            let notified = self.changed.notified();
            let wait = {
                let mut state = self.state.lock().expect("breaker lock");
                match *state {
                    State::Closed { .. } => return,
                    State::Open { until } if Instant::now() >= until => {
                        *state = State::HalfOpen;
                        tracing::info!("circuit breaker half-open: sending one probe");
                        return;
                    }
                    State::Open { until } => Some(until - Instant::now()),
                    State::HalfOpen => None,
                }
            };
            match wait {
                Some(duration) => {
                    tokio::select! {
                        _ = tokio::time::sleep(duration) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    pub fn record(&self, success: bool) {
        let mut state = self.state.lock().expect("breaker lock");
        let next = match (&*state, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            (State::Open { until }, false) => State::Open { until: *until },
            (_, false) => {
                tracing::warn!(cool_down = ?self.cool_down, "circuit breaker open: endpoint keeps failing");
                State::Open {
                    until: Instant::now() + self.cool_down,
                }
            }
        };
        let reopened_or_closed = !matches!(
            (&*state, &next),
            (State::Closed { .. }, State::Closed { .. })
        );
        *state = next;
        if reopened_or_closed {
            self.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_after_threshold_and_probes_after_cool_down() {
        let breaker = Breaker::new(3, Duration::from_millis(100));
        for _ in 0..2 {
            breaker.record(false);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.record(false);
        assert_eq!(breaker.state(), BreakerState::Open);

        let started = Instant::now();
        breaker.admit().await;
        assert!(started.elapsed() >= Duration::from_millis(90));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        breaker.record(true);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_failed_probe_opens_again() {
        let breaker = Breaker::new(1, Duration::from_millis(50));
        breaker.record(false);
        breaker.admit().await;
        breaker.record(false);
        assert_eq!(breaker.state(), BreakerState::Open);
    }
}
