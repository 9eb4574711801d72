//! The per-subscription circuit breaker: after `failures` consecutive failed attempts the
//! endpoint is left alone for `cool_down`; then one probe goes through (half-open) and its
//! result closes the breaker or opens it again. Lanes wait on an open breaker instead of
//! burning their attempts against an endpoint that is down.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

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

    pub fn state(&self) -> BreakerState {
        match *self.state.lock().expect("breaker lock") {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// Waits until an attempt may be made. The admission must be told the attempt's result;
    /// a probe dropped before that (its lane stopped while waiting for the rate limit or a
    /// slot) hands the probe to the next lane instead of leaving the breaker half-open for
    /// good.
    pub async fn admit(&self) -> Admission<'_> {
        let probe = self.wait_admitted().await;
        Admission {
            breaker: self,
            probe,
        }
    }

    /// Waits until an attempt may be made; true if it is the half-open probe.
    async fn wait_admitted(&self) -> bool {
        loop {
            let notified = self.changed.notified();
            let wait = {
                let mut state = self.state.lock().expect("breaker lock");
                match *state {
                    State::Closed { .. } => return false,
                    State::Open { until } if Instant::now() >= until => {
                        *state = State::HalfOpen;
                        tracing::info!("circuit breaker half-open: sending one probe");
                        return true;
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

    fn record(&self, success: bool) {
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

/// Leave to make one attempt; see [`Breaker::admit`].
pub struct Admission<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

impl Admission<'_> {
    /// The attempt's result.
    pub fn record(mut self, success: bool) {
        self.probe = false;
        self.breaker.record(success);
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if !self.probe {
            return;
        }
        let mut state = self.breaker.state.lock().expect("breaker lock");
        if matches!(*state, State::HalfOpen) {
            // Open with the cool-down already over: the next lane to ask probes.
            *state = State::Open {
                until: Instant::now(),
            };
            self.breaker.changed.notify_waiters();
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
        let probe = breaker.admit().await;
        assert!(started.elapsed() >= Duration::from_millis(90));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        probe.record(true);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_failed_probe_opens_again() {
        let breaker = Breaker::new(1, Duration::from_millis(50));
        breaker.record(false);
        breaker.admit().await.record(false);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn a_probe_abandoned_before_its_attempt_lets_another_lane_probe() {
        let breaker = Breaker::new(1, Duration::from_millis(20));
        breaker.record(false);
        let probe = breaker.admit().await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        // Another lane waits for the probe's verdict...
        let waiting = async {
            let next = breaker.admit().await;
            next.record(true);
        };
        // ...which never comes: the probing lane is stopped before its attempt.
        drop(probe);
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("the waiting lane gets to probe");
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
