//! A lane delivers one event at a time and retries it in place: the next event of the lane
//! waits until this one is delivered, dead-lettered or parked (G3). This is that retry loop.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::attempt::{AttemptResult, attempt};
use super::breaker::{Admission, BreakerState};
use super::dead_letter::{self, Failure};
use super::event::Event;
use super::key_locks::{KeyLock, Ordered};
use super::limit::{Permit, Signal};
use super::parked_keys::ParkingRoom;
use super::runtime::{Settings, SubscriptionRuntime};
use super::{attempt_log, client, parking, payload};
use crate::broker::{Receipt, sleep_until};
use crate::config::OrderingMode;
use crate::expression::ExpressionError;
use crate::{metrics, tracecontext};
use prometheus_client::metrics::counter::Counter;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    DeadLettered,
    /// Sent to the parking topic, where it landed at this receipt.
    Parked(Receipt),
    /// Stopped before the event was done (shutdown, revocation): it must not be committed.
    Abandoned,
}

/// When an event may park: once it has failed for `after`, if it can take a place in its
/// partition's parked set (see `ParkingRoom`); without one it retries in place and asks
/// again at its next failure.
pub struct Parking {
    pub after: Duration,
    pub room: ParkingRoom,
}

/// Delivers `event`, retrying it in place. With `parking`, an event still failing that
/// long after its first failure is parked instead of retried further here.
///
/// One CONSUMER span per event, a child of the ingress span whose context the envelope
/// carries (or of a foreign record's `traceparent`); each attempt is a CLIENT span in it.
pub async fn deliver(
    sub: &SubscriptionRuntime,
    event: &mut Event,
    stop: &CancellationToken,
    parking: Option<Parking>,
) -> Outcome {
    let record = &event.record;
    let span = tracing::info_span!(
        "deliver",
        otel.name = %format!("process {}", record.topic),
        otel.kind = "consumer",
        messaging.operation.type = "process",
        messaging.destination.name = %record.topic,
        messaging.destination.partition.id = record.partition,
        messaging.message.id = %event.id,
        hookbridge.subscription = %sub.name,
        hookbridge.offset = record.offset,
        hookbridge.attempts = tracing::field::Empty,
    );
    if !event.traceparent.is_empty() && !span.is_disabled() {
        let _ = span.set_parent(tracecontext::from_traceparent(&event.traceparent));
    }
    deliver_in_span(sub, event, stop, parking)
        .instrument(span)
        .await
}

async fn deliver_in_span(
    sub: &SubscriptionRuntime,
    event: &mut Event,
    stop: &CancellationToken,
    parking: Option<Parking>,
) -> Outcome {
    if let Some(reason) = &event.undeliverable {
        let failure = Failure {
            attempts: 0,
            last_status: None,
            last_error: reason.clone(),
        };
        let counter = &sub.metrics.dead_letters_undeliverable;
        return dead_letter_or_abandon(sub, event, &failure, counter, stop).await;
    }
    // The key's resent and parked events, read by other partitions' workers, wait for this
    // one and it for them (see `key_locks`); under `ordering: partition`, the partition
    // number's.
    let ordered = match (sub.ordering, event.key()) {
        (OrderingMode::Key, Some(key)) => Some(Ordered::Key(key.clone())),
        (OrderingMode::Partition, _) => Some(Ordered::Partition(event.record.partition)),
        _ => None,
    };
    let _turn = match ordered {
        Some(ordered) => match turn(sub, &ordered, parking.as_ref(), stop).await {
            Turn::Ours(lock) => Some(lock),
            Turn::Park => {
                return park_or_give_back(sub, event, event.prior_attempts, stop, parking).await;
            }
            Turn::Stopped => return Outcome::Abandoned,
        },
        None => None,
    };
    // Each attempt takes the settings of the moment (a reload may change them between
    // two); the payload is built again only when they did change.
    let mut settings = sub.settings();
    let mut built = payload::of(&settings, event);
    let mut attempts = event.prior_attempts;
    let mut first_failure: Option<Instant> = None;
    loop {
        let now = sub.settings();
        if !Arc::ptr_eq(&now, &settings) {
            settings = now;
            built = payload::of(&settings, event);
        }
        let payload = match &built {
            Ok(payload) => payload,
            Err(e) => return transform_failed(sub, event, attempts, e, stop).await,
        };
        let Some((admission, permit)) = admit(sub, &settings, stop).await else {
            return Outcome::Abandoned;
        };
        attempts += 1;
        tracing::Span::current().record("hookbridge.attempts", attempts);
        let started = Instant::now();
        let result = attempt(
            sub,
            &settings,
            &event.id,
            &event.traceparent,
            payload,
            attempts,
        )
        .await;
        let took = started.elapsed();
        permit.end(signal(&result, took));
        hold_for_retry_after(sub, &settings, &result);
        // An answer refusing the event itself (`retry.dead_letter_on`) says the endpoint is
        // up: the breaker counts it as a success, which ends a run of failures.
        admission.record(!matches!(result, AttemptResult::Retry { .. }));
        let open = settings.breaker.state() != BreakerState::Closed;
        sub.metrics.breaker_open.set(i64::from(open));
        tracing::debug!(subscription = %sub.name, id = %event.id, attempts, ?result, ?took, "attempt");
        if attempt_log::wanted(settings.attempt_log, &result)
            && !attempt_log::write(sub, event, attempts, &result, took, stop).await
        {
            return Outcome::Abandoned;
        }

        let (failure, retry_after) = match result {
            AttemptResult::Delivered { .. } => {
                delivered(sub, event);
                return Outcome::Delivered;
            }
            AttemptResult::Permanent { status, error } => {
                sub.board.failed(&event.id, Some(status), &error);
                let failure = Failure {
                    attempts,
                    last_status: Some(status),
                    last_error: error,
                };
                let counter = &sub.metrics.dead_letters_failed;
                return dead_letter_or_abandon(sub, event, &failure, counter, stop).await;
            }
            AttemptResult::Retry {
                status,
                error,
                retry_after,
            } => {
                sub.board.failed(&event.id, status, &error);
                (
                    Failure {
                        attempts,
                        last_status: status,
                        last_error: error,
                    },
                    retry_after,
                )
            }
        };
        let failing_for = first_failure.get_or_insert_with(Instant::now).elapsed();
        match settings
            .retry
            .next_delay(attempts, event.received_at, retry_after)
        {
            Some(_)
                if parking
                    .as_ref()
                    .is_some_and(|p| failing_for >= p.after && p.room.take()) =>
            {
                tracing::info!(subscription = %sub.name, id = %event.id, attempts, ?failing_for, "key still failing; parking it");
                return park_or_give_back(sub, event, attempts, stop, parking).await;
            }
            Some(delay) => {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return Outcome::Abandoned,
                }
            }
            None => {
                let counter = &sub.metrics.dead_letters_exhausted;
                return dead_letter_or_abandon(sub, event, &failure, counter, stop).await;
            }
        }
    }
}

/// Waits until an attempt may start: no receiver's Retry-After hold, not paused, admitted
/// by the breaker, within the rate limit, and a place on the wire (the concurrency limit).
/// The hold is waited out first, so that neither the breaker's admission nor a rate-limit
/// token is taken long before it is used; and pause and hold are looked at again once a
/// place is had, so that neither lets a request out once it began. Waiting is not an
/// attempt and holds no place on the wire; abandoned while waiting, a breaker probe gives
/// itself back (see `Admission`). `None` when asked to stop first.
async fn admit<'a>(
    sub: &'a SubscriptionRuntime,
    settings: &'a Settings,
    stop: &CancellationToken,
) -> Option<(Admission<'a>, Permit<'a>)> {
    let admitted = async {
        loop {
            sub.in_flight.held().await;
            sub.unpaused().await;
            let admission = settings.breaker.admit().await;
            if let Some(limiter) = &settings.rate_limit {
                limiter.until_ready().await;
            }
            let permit = sub.in_flight.acquire().await;
            if !sub.is_paused() {
                return (admission, permit);
            }
            permit.end(Signal::Nothing);
        }
    };
    tokio::select! {
        admitted = admitted => Some(admitted),
        _ = stop.cancelled() => None,
    }
}

/// What an attempt's end says about the receiver's capacity (see `limit`).
fn signal(result: &AttemptResult, took: Duration) -> Signal {
    match result {
        // Refused here, before a byte was sent: nothing about the receiver.
        AttemptResult::Retry { error, .. } if error.starts_with(client::EGRESS_DENIED) => {
            Signal::Nothing
        }
        AttemptResult::Retry {
            status: Some(429 | 503) | None,
            ..
        } => Signal::Overloaded,
        AttemptResult::Delivered { .. } => Signal::Answered {
            rtt: took,
            delivered: true,
        },
        _ => Signal::Answered {
            rtt: took,
            delivered: false,
        },
    }
}

/// A 429 or 503 with `Retry-After` holds every attempt of the subscription until then
/// (at most `retry.max_backoff`), not only this event's next one: the receiver said it
/// cannot take more, and the other lanes would hit it all the same.
fn hold_for_retry_after(sub: &SubscriptionRuntime, settings: &Settings, result: &AttemptResult) {
    if let AttemptResult::Retry {
        status: Some(429 | 503),
        retry_after: Some(after),
        ..
    } = result
    {
        let after = (*after).min(settings.retry.max_backoff());
        if let Some(until) = Instant::now().checked_add(after) {
            sub.in_flight.hold(until);
        }
        tracing::info!(subscription = %sub.name, ?after, "the receiver asked for a pause (Retry-After); every attempt waits");
    }
}

/// What waiting for the key's turn came to.
enum Turn<'a> {
    Ours(KeyLock<'a>),
    /// Waited `park_after` and took a place in the parked set: the event parks.
    Park,
    Stopped,
}

/// Waits until no other event of the key is on its way (see `key_locks`). An event that
/// waited `park_after` is as stuck as one failing that long (the event holding the key is
/// failing, from the parking topic or the resend topic): with a place in the parked set
/// it parks instead, so that the key's queued events do not fill the partition's buffer.
async fn turn<'a>(
    sub: &'a SubscriptionRuntime,
    key: &Ordered,
    parking: Option<&Parking>,
    stop: &CancellationToken,
) -> Turn<'a> {
    let lock = sub.key_locks.lock(key);
    tokio::pin!(lock);
    let mut patience = parking.map(|p| Instant::now() + p.after);
    loop {
        tokio::select! {
            lock = &mut lock => return Turn::Ours(lock),
            _ = stop.cancelled() => return Turn::Stopped,
            // Without parking there is no patience: this arm never ends.
            _ = sleep_until(patience) => {
                let Some(parking) = parking else { continue };
                if parking.room.take() {
                    tracing::info!(subscription = %sub.name, "key held by its event from another topic for park_after; parking it");
                    return Turn::Park;
                }
                patience = Some(Instant::now() + parking.after);
            }
        }
    }
}

/// Parks `event` with the place it took in the parked set, which goes back if the event
/// is abandoned on its way.
async fn park_or_give_back(
    sub: &SubscriptionRuntime,
    event: &Event,
    attempts: u32,
    stop: &CancellationToken,
    parking: Option<Parking>,
) -> Outcome {
    let outcome = park(sub, event, attempts, stop).await;
    if outcome == Outcome::Abandoned
        && let Some(parking) = &parking
    {
        parking.room.give_back(1);
    }
    outcome
}

/// Sends `event` to the parking topic: its key is parked (see `parking`).
pub async fn park(
    sub: &SubscriptionRuntime,
    event: &Event,
    attempts: u32,
    stop: &CancellationToken,
) -> Outcome {
    match parking::publish(sub, event, attempts, stop).await {
        Some(receipt) => Outcome::Parked(receipt),
        None => Outcome::Abandoned,
    }
}

/// Counts a delivery and its time from the broker's timestamp.
fn delivered(sub: &SubscriptionRuntime, event: &Event) {
    sub.metrics.delivered.inc();
    let stored = UNIX_EPOCH + Duration::from_millis(event.record.timestamp_ms.max(0) as u64);
    if let Ok(age) = SystemTime::now().duration_since(stored) {
        sub.metrics.end_to_end.observe(metrics::seconds(age));
    }
}

/// `reason` counts the dead letter under its `hookbridge_dead_letters_total` reason.
/// An event the transform fails on: retrying cannot help, so it is dead-lettered saying
/// why (as one that cannot be decoded is).
async fn transform_failed(
    sub: &SubscriptionRuntime,
    event: &Event,
    attempts: u32,
    error: &ExpressionError,
    stop: &CancellationToken,
) -> Outcome {
    let failure = Failure {
        attempts,
        last_status: None,
        last_error: format!("transform.expression {error}"),
    };
    sub.board.failed(&event.id, None, &failure.last_error);
    let counter = &sub.metrics.dead_letters_undeliverable;
    dead_letter_or_abandon(sub, event, &failure, counter, stop).await
}

async fn dead_letter_or_abandon(
    sub: &SubscriptionRuntime,
    event: &Event,
    failure: &Failure,
    reason: &Counter,
    stop: &CancellationToken,
) -> Outcome {
    if dead_letter::publish(sub, event, failure, stop).await {
        reason.inc();
        Outcome::DeadLettered
    } else {
        Outcome::Abandoned
    }
}
