//! How many requests a subscription has on the wire at once (`concurrency`,
//! `max_in_flight`), and the hold a receiver's `Retry-After` puts on all of them.
//!
//! `fixed`: always `max_in_flight`. `adaptive` (the default) finds the receiver's capacity
//! between 1 and `max_in_flight`, from what its answers say:
//! - **Slow start**: from a small limit, doubled each round trip that fills it without a
//!   sign of overload, as TCP opens its window, so a large capacity is found in a few
//!   round trips.
//! - **Overload** (429, 503, a timeout, a refused connection): the limit falls at once to
//!   one below the requests that were on the wire when the refusal came back, the most the
//!   receiver was seen to refuse. A burst of refusals so brings it to the receiver's
//!   capacity within one round trip, and one refusal at low load does not take it lower
//!   than that load.
//! - **Latency**: a receiver that queues instead of refusing answers slower as it is given
//!   more. The limit falls in proportion when the recent round-trip time passes
//!   [`TOLERANCE`] times the baseline (the least seen lately, and more than [`NOISE`]
//!   above it, so a fast local receiver's jitter is not read as queueing).
//! - **Probing**: otherwise, each round trip that fills the limit raises it by a tenth (at
//!   least one), but not for [`PROBE_AFTER`] after a decrease, so a receiver at its
//!   capacity sees one refusal per probe, not one per round trip.
//!
//! The limit is a semaphore's permits: raising it adds permits, lowering it forgets free
//! ones and owes the rest, which requests on the wire pay back as they end. Waiters are
//! served in order.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::config::ConcurrencyMode;

/// Where slow start begins.
const INITIAL_LIMIT: f64 = 8.0;
/// Recent latency this many times the baseline is queueing at the receiver.
const TOLERANCE: f64 = 1.5;
/// Latency differences below this are noise, not queueing.
const NOISE: Duration = Duration::from_millis(5);
/// After a decrease, the limit is not raised again for this long.
const PROBE_AFTER: Duration = Duration::from_secs(1);
/// The baseline is the least round trip of the last two windows of this length, so it
/// follows a receiver that became slower for good.
const BASELINE_WINDOW: Duration = Duration::from_secs(30);
/// Weight of each round trip in the recent latency.
const RECENT_WEIGHT: f64 = 0.2;

/// What an ended request says about the receiver's capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// Answered in time, whatever the status (a 500 says nothing of load): its round trip.
    Answered(Duration),
    /// 429, 503, a timeout or a refused connection.
    Overloaded,
    /// Says nothing (abandoned on the way).
    Nothing,
}

/// Why the limit last changed, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Start,
    SlowStart,
    Probe,
    Overload,
    Latency,
    Reload,
}

/// The limit as status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LimitStatus {
    pub mode: ConcurrencyMode,
    pub limit: usize,
    pub reason: Reason,
    /// The baseline round trip, in milliseconds (none before the first answer).
    pub baseline_ms: Option<f64>,
    /// Until when a `Retry-After` holds every attempt, in milliseconds from now.
    pub held_for_ms: Option<u64>,
}

pub struct Limiter {
    permits: Semaphore,
    state: Mutex<State>,
    /// `hookbridge_delivery_concurrency_limit`.
    gauge: Gauge,
}

struct State {
    mode: ConcurrencyMode,
    max: usize,
    /// The limit; permits follow its integer part.
    limit: f64,
    /// The limit the permits stand for.
    granted: usize,
    /// Permits to forget as requests end (a decrease below the requests on the wire).
    owed: usize,
    in_flight: usize,
    slow_start: bool,
    reason: Reason,
    /// Least round trip of this window and of the one before.
    window_min: Option<Duration>,
    previous_min: Option<Duration>,
    window_start: Instant,
    recent: Option<Duration>,
    /// Answers since the limit last grew; a round trip's worth is `limit` of them.
    answered: usize,
    /// Whether the limit was reached since it last grew: growing an unused limit says
    /// nothing of the receiver.
    filled: bool,
    last_decrease: Option<Instant>,
    hold_until: Option<Instant>,
}

/// One request's place on the wire: given back by [`Permit::end`].
pub struct Permit<'a> {
    limiter: &'a Limiter,
    ended: bool,
}

impl Limiter {
    pub fn new(mode: ConcurrencyMode, max: usize, gauge: Gauge) -> Limiter {
        let limit = match mode {
            ConcurrencyMode::Fixed => max as f64,
            ConcurrencyMode::Adaptive => INITIAL_LIMIT.min(max as f64),
        };
        gauge.set(limit as i64);
        Limiter {
            gauge,
            permits: Semaphore::new(limit as usize),
            state: Mutex::new(State {
                mode,
                max,
                limit,
                granted: limit as usize,
                owed: 0,
                in_flight: 0,
                slow_start: true,
                reason: Reason::Start,
                window_min: None,
                previous_min: None,
                window_start: Instant::now(),
                recent: None,
                answered: 0,
                filled: false,
                last_decrease: None,
                hold_until: None,
            }),
        }
    }

    /// Waits for a place on the wire, and for any `Retry-After` hold to pass.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            self.held().await;
            let permit = self.permits.acquire().await.expect("never closed");
            permit.forget();
            let mut state = self.state();
            if state.hold_until.is_some_and(|until| until > Instant::now()) {
                // Held while it waited: the place goes back, the hold is waited out.
                drop(state);
                self.give_back();
                continue;
            }
            state.in_flight += 1;
            if state.in_flight >= state.granted {
                state.filled = true;
            }
            return Permit {
                limiter: self,
                ended: false,
            };
        }
    }

    /// Holds every attempt until `until` (a receiver's `Retry-After`).
    pub fn hold(&self, until: Instant) {
        let mut state = self.state();
        if state.hold_until.is_none_or(|held| held < until) {
            state.hold_until = Some(until);
        }
    }

    /// A reload's `concurrency` and `max_in_flight`.
    pub fn configure(&self, mode: ConcurrencyMode, max: usize) {
        let mut state = self.state();
        if (state.mode, state.max) == (mode, max) {
            return;
        }
        state.mode = mode;
        state.max = max;
        let limit = match mode {
            ConcurrencyMode::Fixed => max as f64,
            ConcurrencyMode::Adaptive => state.limit.min(max as f64),
        };
        self.set(&mut state, limit, Reason::Reload);
    }

    pub fn in_flight(&self) -> usize {
        self.state().in_flight
    }

    pub fn status(&self) -> LimitStatus {
        let state = self.state();
        let now = Instant::now();
        LimitStatus {
            mode: state.mode,
            limit: state.granted,
            reason: state.reason,
            baseline_ms: state.baseline().map(|b| b.as_secs_f64() * 1000.0),
            held_for_ms: state
                .hold_until
                .filter(|until| *until > now)
                .map(|until| (until - now).as_millis() as u64),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("limiter lock")
    }

    async fn held(&self) {
        loop {
            let until = self.state().hold_until;
            match until {
                Some(until) if until > Instant::now() => {
                    tokio::time::sleep_until(until.into()).await
                }
                _ => return,
            }
        }
    }

    /// A place back, or forgotten while a decrease is owed.
    fn give_back(&self) {
        let mut state = self.state();
        if state.owed > 0 {
            state.owed -= 1;
        } else {
            self.permits.add_permits(1);
        }
    }

    /// Moves the limit to `limit` (within 1 and the max) and the permits with it.
    fn set(&self, state: &mut State, limit: f64, reason: Reason) {
        let limit = limit.clamp(1.0, state.max as f64);
        state.limit = limit;
        let wanted = limit as usize;
        if wanted > state.granted {
            let more = wanted - state.granted;
            let cancelled = more.min(state.owed);
            state.owed -= cancelled;
            self.permits.add_permits(more - cancelled);
        } else if wanted < state.granted {
            let fewer = state.granted - wanted;
            let forgotten = self.permits.forget_permits(fewer);
            state.owed += fewer - forgotten;
        }
        if wanted != state.granted || reason == Reason::Reload {
            state.reason = reason;
        }
        state.granted = wanted;
        self.gauge.set(wanted as i64);
    }

    fn end(&self, signal: Signal) {
        let mut state = self.state();
        let on_the_wire = state.in_flight;
        state.in_flight -= 1;
        drop(state);
        self.give_back();
        let mut state = self.state();
        if state.mode == ConcurrencyMode::Fixed {
            return;
        }
        let now = Instant::now();
        match signal {
            Signal::Nothing => {}
            Signal::Overloaded => {
                state.slow_start = false;
                let limit = (state.limit - 1.0).min(on_the_wire as f64 - 1.0);
                if limit < state.limit {
                    state.last_decrease = Some(now);
                    state.answered = 0;
                    state.filled = false;
                    self.set(&mut state, limit, Reason::Overload);
                }
            }
            Signal::Answered(rtt) => self.answered(&mut state, rtt, now),
        }
    }

    fn answered(&self, state: &mut State, rtt: Duration, now: Instant) {
        state.observe(rtt, now);
        let (Some(baseline), Some(recent)) = (state.baseline(), state.recent) else {
            return;
        };
        let queueing =
            recent.as_secs_f64() > baseline.as_secs_f64() * TOLERANCE && recent > baseline + NOISE;
        let decreased_within_rtt = state
            .last_decrease
            .is_some_and(|at| now.duration_since(at) < recent);
        if queueing {
            state.slow_start = false;
            if !decreased_within_rtt {
                let scaled =
                    state.limit * baseline.as_secs_f64() * TOLERANCE / recent.as_secs_f64();
                state.last_decrease = Some(now);
                state.answered = 0;
                state.filled = false;
                let limit = scaled.max(state.limit * 0.5);
                self.set(state, limit, Reason::Latency);
            }
            return;
        }
        state.answered += 1;
        if state.answered < state.granted || !state.filled {
            return;
        }
        let probing_paused = state
            .last_decrease
            .is_some_and(|at| now.duration_since(at) < PROBE_AFTER);
        if probing_paused {
            return;
        }
        state.answered = 0;
        state.filled = false;
        let (limit, reason) = match state.slow_start {
            true => (state.limit * 2.0, Reason::SlowStart),
            false => (state.limit + (state.limit * 0.1).max(1.0), Reason::Probe),
        };
        self.set(state, limit, reason);
    }
}

impl State {
    fn baseline(&self) -> Option<Duration> {
        match (self.window_min, self.previous_min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn observe(&mut self, rtt: Duration, now: Instant) {
        if now.duration_since(self.window_start) >= BASELINE_WINDOW {
            self.previous_min = self.window_min.take();
            self.window_start = now;
        }
        self.window_min = Some(self.window_min.map_or(rtt, |m| m.min(rtt)));
        self.recent = Some(match self.recent {
            None => rtt,
            Some(recent) => recent.mul_f64(1.0 - RECENT_WEIGHT) + rtt.mul_f64(RECENT_WEIGHT),
        });
    }
}

impl Permit<'_> {
    /// Gives the place back, with what the request's end says about the receiver.
    pub fn end(mut self, signal: Signal) {
        self.ended = true;
        self.limiter.end(signal);
    }
}

impl Drop for Permit<'_> {
    /// Dropped without `end` (the attempt abandoned): the place goes back, saying nothing.
    fn drop(&mut self) {
        if !self.ended {
            self.limiter.end(Signal::Nothing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: usize) -> Limiter {
        Limiter::new(ConcurrencyMode::Adaptive, max, Gauge::default())
    }

    /// `n` requests on the wire at once, each ended with `signal`.
    async fn round(limiter: &Limiter, n: usize, signal: Signal) {
        let mut permits = Vec::new();
        for _ in 0..n {
            permits.push(limiter.acquire().await);
        }
        for permit in permits {
            permit.end(signal);
        }
    }

    #[tokio::test]
    async fn slow_start_doubles_until_the_max() {
        let limiter = limiter(100);
        for _ in 0..5 {
            let limit = limiter.status().limit;
            round(&limiter, limit, Signal::Answered(Duration::from_millis(10))).await;
        }
        assert_eq!(limiter.status().limit, 100);
    }

    #[tokio::test]
    async fn refusals_bring_the_limit_to_what_was_on_the_wire() {
        let limiter = limiter(64);
        // Slow start up to 64, then 64 on the wire of which all past 20 are refused.
        for _ in 0..4 {
            let limit = limiter.status().limit;
            round(&limiter, limit, Signal::Answered(Duration::from_millis(10))).await;
        }
        let mut permits = Vec::new();
        for _ in 0..64 {
            permits.push(limiter.acquire().await);
        }
        while permits.len() > 20 {
            permits.pop().unwrap().end(Signal::Overloaded);
        }
        // The last refusal came back with 21 on the wire.
        assert_eq!(limiter.status().limit, 20);
        assert_eq!(limiter.status().reason, Reason::Overload);
        for permit in permits {
            permit.end(Signal::Answered(Duration::from_millis(10)));
        }
        assert_eq!(limiter.in_flight(), 0);
        assert_eq!(limiter.permits.available_permits(), 20);
    }

    #[tokio::test]
    async fn rising_latency_lowers_the_limit() {
        let limiter = limiter(64);
        round(&limiter, 8, Signal::Answered(Duration::from_millis(50))).await;
        let before = limiter.status().limit;
        for _ in 0..20 {
            round(&limiter, 1, Signal::Answered(Duration::from_millis(150))).await;
        }
        assert!(limiter.status().limit < before, "{:?}", limiter.status());
        assert_eq!(limiter.status().reason, Reason::Latency);
    }

    #[tokio::test]
    async fn a_hold_keeps_every_request_waiting() {
        let limiter = limiter(8);
        limiter.hold(Instant::now() + Duration::from_millis(200));
        let started = Instant::now();
        let permit = limiter.acquire().await;
        assert!(started.elapsed() >= Duration::from_millis(190));
        permit.end(Signal::Nothing);
    }

    #[tokio::test]
    async fn fixed_stays_at_the_max() {
        let limiter = Limiter::new(ConcurrencyMode::Fixed, 16, Gauge::default());
        round(&limiter, 16, Signal::Overloaded).await;
        assert_eq!(limiter.status().limit, 16);
    }
}
