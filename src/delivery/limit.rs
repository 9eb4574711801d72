//! How many requests a subscription has on the wire at once (`concurrency`,
//! `max_in_flight`), and the hold a receiver's `Retry-After` puts on all of them.
//!
//! `fixed`: always `max_in_flight`. `adaptive` (the default) finds the receiver's capacity
//! between 1 and `max_in_flight`, from what its answers say:
//! - **Slow start**: from a small limit, doubled each round trip that fills it without a
//!   sign of overload, as TCP opens its window, so a large capacity is found in a few
//!   round trips.
//! - **Overload** (429, 503, a timeout, a refused connection): at once, the limit falls to
//!   one below the requests that were on the wire when the refusal came back, if that is
//!   lower (a burst of refusals brings it to the receiver's capacity within a round trip).
//!   Once a round trip, when more than [`OVERLOAD_SHARE`] of its answers were overload,
//!   probing stops for [`PROBE_AFTER`], and if nothing had lowered the limit yet (timeouts
//!   at full load), it falls by a tenth. A stray timeout among many answers changes little:
//!   probing goes on (its event is retried).
//! - **Latency**: a receiver that queues instead of refusing answers slower as it is given
//!   more. The limit falls in proportion when the recent round-trip time (a moving average
//!   of deliveries', each sample at most twice the average, so one slow answer moves it
//!   little) passes [`TOLERANCE`] times the baseline (the least a slower average was
//!   lately, so noise does not lower it) and [`NOISE`] above it, while at least half the
//!   limit is on the wire. At a limit of 1 nothing queues behind hookbridge's own requests:
//!   the receiver is that slow, and its latency becomes the baseline. A latency decrease
//!   does not hold probing back, so the limit settles where the two balance.
//! - **Probing**: otherwise, each round trip that fills the limit raises it by a tenth (at
//!   least one), but not for [`PROBE_AFTER`] after a decrease for overload, so a receiver
//!   at its capacity sees one refusal per probe, not one per round trip.
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
/// Weight of each round trip in the steady latency, the baseline's source.
const STEADY_WEIGHT: f64 = 0.05;
/// Deliveries seen before a baseline is taken.
const BASELINE_SAMPLES: u32 = 20;
/// More than this share of a round trip's answers being overload lowers the limit.
const OVERLOAD_SHARE: f64 = 0.01;
/// The shortest round trip over which overload is judged (before any latency is known).
const MIN_WINDOW: Duration = Duration::from_millis(100);

/// What an ended request says about the receiver's capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// Answered in time, whatever the status (a 500 says nothing of load), and how long it
    /// took; only a delivery's round trip is a latency sample (a fast 401 is no baseline).
    Answered { rtt: Duration, delivered: bool },
    /// 429, 503, a timeout or a refused connection.
    Overloaded,
    /// Says nothing (abandoned on the way, refused by the egress guard).
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
    /// A slower moving average of the same, whose least is the baseline: noise moves it
    /// little, so a receiver of uneven latency is not read as queueing.
    steady: Option<Duration>,
    /// Deliveries' round trips seen, to take a baseline only once there are enough.
    samples: u32,
    /// Answers since the limit last grew; a round trip's worth is `limit` of them.
    answered: usize,
    /// Whether the limit was reached since it last grew: growing an unused limit says
    /// nothing of the receiver.
    filled: bool,
    last_decrease: Option<Instant>,
    /// The last decrease for overload, after which probing waits [`PROBE_AFTER`].
    last_overload: Option<Instant>,
    hold_until: Option<Instant>,
    /// The answers of the round trip under way, to judge overload by.
    window: Window,
}

/// One round trip's answers.
struct Window {
    started: Instant,
    answers: u32,
    overloads: u32,
    /// Whether an overload lowered the limit to what was on the wire already.
    lowered: bool,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            started: now,
            answers: 0,
            overloads: 0,
            lowered: false,
        }
    }
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
                steady: None,
                samples: 0,
                answered: 0,
                filled: false,
                last_decrease: None,
                last_overload: None,
                hold_until: None,
                window: Window::new(Instant::now()),
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

    /// Waits while a receiver's `Retry-After` holds every attempt.
    pub async fn held(&self) {
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
        if state.mode == ConcurrencyMode::Fixed || signal == Signal::Nothing {
            return;
        }
        let now = Instant::now();
        state.window.answers += 1;
        match signal {
            Signal::Nothing => {}
            Signal::Overloaded => {
                state.window.overloads += 1;
                // At once: the receiver refused with this many on the wire, so no more go
                // (a refused request comes back fast, and its place would go straight to
                // another that is refused too).
                let seen = on_the_wire as f64 - 1.0;
                if seen < state.limit {
                    state.window.lowered = true;
                    self.set(&mut state, seen, Reason::Overload);
                }
            }
            Signal::Answered { rtt, delivered } => {
                self.answered(&mut state, rtt, delivered, on_the_wire, now)
            }
        }
        let length = state.recent.unwrap_or(MIN_WINDOW).max(MIN_WINDOW);
        if now.duration_since(state.window.started) >= length {
            self.judge_overload(&mut state, now);
        }
    }

    /// At the end of a round trip: lowers the limit if enough of its answers were overload.
    fn judge_overload(&self, state: &mut State, now: Instant) {
        let window = std::mem::replace(&mut state.window, Window::new(now));
        if window.overloads == 0
            || f64::from(window.overloads) / f64::from(window.answers) <= OVERLOAD_SHARE
        {
            return;
        }
        state.slow_start = false;
        state.last_decrease = Some(now);
        state.last_overload = Some(now);
        state.answered = 0;
        state.filled = false;
        if !window.lowered {
            // Overload with no fewer on the wire than the limit (timeouts at full load):
            // down a tenth.
            let limit = state.limit * 0.9;
            self.set(state, limit, Reason::Overload);
        }
    }

    fn answered(
        &self,
        state: &mut State,
        rtt: Duration,
        delivered: bool,
        on_the_wire: usize,
        now: Instant,
    ) {
        if delivered {
            state.observe(rtt, now);
        }
        if let (Some(baseline), Some(recent)) = (state.baseline(), state.recent) {
            let queueing = recent.as_secs_f64() > baseline.as_secs_f64() * TOLERANCE
                && recent > baseline + NOISE;
            // Latency says something of hookbridge's load only while the limit is used.
            let loaded = on_the_wire as f64 >= state.limit * 0.5;
            if queueing && state.limit <= 1.0 {
                // Nothing of hookbridge's queues at 1: the receiver is this slow.
                state.window_min = state.steady.max(Some(recent));
                state.previous_min = state.window_min;
            } else if queueing && loaded {
                state.slow_start = false;
                let decreased_within_rtt = state
                    .last_decrease
                    .is_some_and(|at| now.duration_since(at) < recent);
                if !decreased_within_rtt {
                    let scaled =
                        state.limit * baseline.as_secs_f64() * TOLERANCE / recent.as_secs_f64();
                    state.last_decrease = Some(now);
                    state.answered = 0;
                    state.filled = false;
                    self.set(state, scaled.max(state.limit * 0.5), Reason::Latency);
                }
                return;
            }
        }
        state.answered += 1;
        if state.answered < state.granted || !state.filled {
            return;
        }
        let probing_paused = state
            .last_overload
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

    /// Takes a delivery's round trip into the recent latency (at most twice it, so one
    /// slow answer moves it little) and the steady one, whose least, once there are enough
    /// samples, is the baseline.
    fn observe(&mut self, rtt: Duration, now: Instant) {
        if now.duration_since(self.window_start) >= BASELINE_WINDOW {
            self.previous_min = self.window_min.take();
            self.window_start = now;
        }
        let average = |current: Option<Duration>, weight: f64| match current {
            None => rtt,
            Some(current) => {
                let sample = rtt.min(current * 2);
                current.mul_f64(1.0 - weight) + sample.mul_f64(weight)
            }
        };
        self.recent = Some(average(self.recent, RECENT_WEIGHT));
        let steady = average(self.steady, STEADY_WEIGHT);
        self.steady = Some(steady);
        self.samples = self.samples.saturating_add(1);
        if self.samples >= BASELINE_SAMPLES {
            self.window_min = Some(self.window_min.map_or(steady, |m| m.min(steady)));
        }
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

    /// A delivery answered in 10 ms.
    const DELIVERED: Signal = Signal::Answered {
        rtt: Duration::from_millis(10),
        delivered: true,
    };

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
            round(&limiter, limit, DELIVERED).await;
        }
        assert_eq!(limiter.status().limit, 100);
    }

    #[tokio::test]
    async fn refusals_bring_the_limit_to_what_was_on_the_wire() {
        let limiter = limiter(64);
        // Slow start up to 64, then 64 on the wire of which all past 20 are refused.
        for _ in 0..4 {
            let limit = limiter.status().limit;
            round(&limiter, limit, DELIVERED).await;
        }
        let mut permits = Vec::new();
        for _ in 0..64 {
            permits.push(limiter.acquire().await);
        }
        while permits.len() > 20 {
            permits.pop().unwrap().end(Signal::Overloaded);
        }
        // Judged at the round trip's end, which the next answer marks: the last refusal
        // came back with 21 on the wire.
        std::thread::sleep(MIN_WINDOW);
        permits.pop().unwrap().end(DELIVERED);
        assert_eq!(limiter.status().limit, 20);
        assert_eq!(limiter.status().reason, Reason::Overload);
        for permit in permits {
            permit.end(DELIVERED);
        }
        assert_eq!(limiter.in_flight(), 0);
        assert_eq!(limiter.permits.available_permits(), 20);
    }

    #[tokio::test]
    async fn a_stray_timeout_among_many_answers_changes_nothing() {
        let limiter = limiter(256);
        for _ in 0..3 {
            let limit = limiter.status().limit;
            round(&limiter, limit, DELIVERED).await;
        }
        let before = limiter.status().limit;
        // One timeout among a round trip's 64 answers.
        let mut permits = Vec::new();
        for _ in 0..before {
            permits.push(limiter.acquire().await);
        }
        permits.pop().unwrap().end(Signal::Overloaded);
        for permit in permits {
            permit.end(DELIVERED);
        }
        std::thread::sleep(MIN_WINDOW);
        round(&limiter, 1, DELIVERED).await;
        assert!(limiter.status().limit >= before, "{:?}", limiter.status());
    }

    #[tokio::test]
    async fn a_receiver_of_uneven_latency_is_not_taken_for_a_queue() {
        let limiter = limiter(64);
        // 35 ms at best, 55 ms typical, now and then 500 ms: no queue behind hookbridge.
        for i in 0..400u64 {
            let rtt = match i % 10 {
                0 => 35,
                9 => 500,
                _ => 55,
            };
            let signal = Signal::Answered {
                rtt: Duration::from_millis(rtt),
                delivered: true,
            };
            round(&limiter, 1, signal).await;
        }
        assert!(limiter.status().limit >= 8, "{:?}", limiter.status());
        // A fast refusal is no latency sample.
        let refused = Signal::Answered {
            rtt: Duration::from_millis(1),
            delivered: false,
        };
        round(&limiter, 1, refused).await;
        assert!(
            limiter.status().baseline_ms.unwrap() > 30.0,
            "{:?}",
            limiter.status()
        );
    }

    #[tokio::test]
    async fn rising_latency_lowers_the_limit() {
        let limiter = limiter(64);
        let answer = |ms| Signal::Answered {
            rtt: Duration::from_millis(ms),
            delivered: true,
        };
        for _ in 0..4 {
            let limit = limiter.status().limit;
            round(&limiter, limit, answer(50)).await;
        }
        let before = limiter.status().limit;
        for _ in 0..3 {
            let limit = limiter.status().limit;
            round(&limiter, limit, answer(150)).await;
        }
        assert!(limiter.status().limit < before, "{:?}", limiter.status());
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
