//! One assigned partition: records fan out into lanes ([`super::lanes`]), lanes run
//! concurrently, and the commit tracker ([`super::commit`]) commits what is done.
//!
//! One task per partition, a [`Worker`] whose loop ([`Worker::deliver`]) reads as the list
//! of what can happen to it: a record arrives, an event finishes its lane, a commit, a lag
//! read or a parked-key review comes back, one of them falls due, the tenure ends. The
//! worker's own calls to the broker are futures on their way beside the lanes, one of each
//! kind at a time, so that a slow commit does not hold up deliveries.
//!
//! At most `buffer` records are held per partition (queued in lanes or on their way); when
//! the buffer is full, the worker stops pulling from the broker, which stops fetching (G7).
//! A key that keeps failing holds only its own records: the others go on through their lanes
//! and are committed past it, until its queued records fill the buffer.
//!
//! Parking: a key failing longer than `retry.park_after` moves to the parking topic with
//! its queued and later events, so the commit point moves on (see [`super::parking`]).
//! Keys parked in a former parking topic are carried over first ([`super::parking_carry`]).
//!
//! Resumption: a worker starts from what the partition's last commit said was done (see
//! [`super::commit`]), so records finished behind a failing key before a crash or a move
//! are skipped, not sent again (G8).
//!
//! Handover: when the partition is revoked, fenced or the process stops, the worker lets it
//! go through [`super::release`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::commit::{self, COMMIT_INTERVAL, CommitTracker, Committing, PendingCommit};
use super::event::Event;
use super::lane;
use super::lanes::{Finished, LaneKey, Lanes};
use super::parked_keys::{ParkedKeys, Review};
use super::release::{self, Ending, FINAL_COMMIT_FOR, Handback, Settled};
use super::runtime::SubscriptionRuntime;
use super::status::PartitionRow;
use super::{parking, parking_carry, resend};
use crate::broker::{
    BrokerError, Completion, ConsumedRecord, PartitionCalls, PartitionStream, Tenure, sleep_until,
};
use crate::config::OrderingMode;
use crate::metrics::{self, GaugeShare};

/// How often the partition's consumer lag is read for `hookbridge_consumer_lag`.
const LAG_INTERVAL: Duration = Duration::from_secs(2);
/// Bytes of records a partition's worker holds, at most, whatever their count: with large
/// records the buffer's count alone (256 of 256 KiB are 64 MiB) would not bound memory
/// (G7). A record is always taken while none is held.
const BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// How often a partition with parked keys looks whether their parked events are done.
const UNPARK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a worker waits to try carrying parked events over again after a broker error.
const CARRY_RETRY: Duration = Duration::from_secs(2);

/// A broker call (a lag read, a parked-key review) the worker has on its way while its
/// lanes go on: at most one of each kind at a time.
type Call<T> = Option<Pin<Box<dyn Future<Output = T> + Send>>>;

/// A lag read: the commit point it was read against, and the lag.
type LagRead = (Option<u64>, Result<Option<u64>, BrokerError>);

/// Waits for `call` to finish and clears it; never finishes when there is none.
async fn finished<T>(call: &mut Call<T>) -> T {
    let Some(running) = call else {
        return std::future::pending().await;
    };
    let output = running.await;
    *call = None;
    output
}

/// Which of the subscription's topics a partition belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// One of the topics the subscription names.
    Live,
    /// Its parking topic: events of parked keys, retried here (never parked again).
    Parking,
    /// Its resend topic: redriven and replayed events.
    Resend,
}

/// Delivers one assigned partition until it is revoked, fenced, ended or `stop` comes,
/// then lets it go.
pub async fn run(sub: Arc<SubscriptionRuntime>, stream: PartitionStream, stop: CancellationToken) {
    let mut worker = Worker::start(sub, stream).await;
    let ending = match worker.carry_stranded(&stop).await {
        Some(ending) => ending,
        None => worker.deliver(&stop).await,
    };
    worker.release(ending).await;
}

struct Worker {
    sub: Arc<SubscriptionRuntime>,
    stream: PartitionStream,
    calls: PartitionCalls,
    tenure: watch::Receiver<Tenure>,
    source: Source,
    /// Whether this partition's keys park (see `parking`): only with `ordering: key`, and
    /// never on the parking topic itself. Keys parked before (under another ordering)
    /// stay parked whatever the ordering now, until their parked events are done.
    parks: bool,
    tracker: CommitTracker,
    parked: ParkedKeys,
    lanes: Lanes,
    /// Paused, the worker pulls no records (lanes start no attempts either, see `lane`).
    paused: watch::Receiver<bool>,
    committing: Option<Committing>,
    reading_lag: Call<LagRead>,
    reviewing: Call<Vec<(u32, Completion)>>,
    ticks: Ticks,
    reports: Reports,
}

struct Ticks {
    commit: Interval,
    lag: Interval,
    unpark: Interval,
}

/// This worker's shares of the subscription's gauges and its row in
/// `GET /v1/subscriptions`, taken back when it ends.
struct Reports {
    /// Held, not read: dropping it gives the partition's count back.
    _owned: GaugeShare,
    parked: GaugeShare,
    lag: metrics::SubscriptionPartition,
    row: PartitionRow,
    /// Whether the broker counts completion per record (JetStream), for the row's end.
    per_record: bool,
}

impl Worker {
    async fn start(sub: Arc<SubscriptionRuntime>, stream: PartitionStream) -> Worker {
        let (topic, partition) = (stream.topic.clone(), stream.partition);
        tracing::info!(subscription = %sub.name, %topic, partition, "partition assigned");
        let source = if *topic == *sub.parking_topic {
            Source::Parking
        } else if *topic == *sub.resend_topic {
            Source::Resend
        } else {
            Source::Live
        };
        let parks = sub.ordering == OrderingMode::Key && source != Source::Parking;
        let calls = stream.calls();
        let resumed = resumed(&sub, &stream).await;
        let parked = match &resumed {
            Some(resumed) if source != Source::Parking => {
                ParkedKeys::resumed(&resumed.parked, &sub.parking_topic)
            }
            _ => ParkedKeys::new(&sub.parking_topic),
        };
        let per_record = calls.per_record();
        let reports = Reports::new(&sub, &topic, partition, per_record);
        let mut worker = Worker {
            tenure: stream.tenure(),
            paused: sub.paused.subscribe(),
            tracker: CommitTracker::new(per_record, resumed),
            parked,
            lanes: Lanes::new(),
            committing: None,
            reading_lag: None,
            reviewing: None,
            ticks: Ticks::new(),
            reports,
            source,
            parks,
            calls,
            stream,
            sub,
        };
        if !worker.parked.is_empty() {
            tracing::info!(subscription = %worker.sub.name, %topic, partition, parked = worker.parked.len(), "parked keys resumed");
            worker.parked_changed();
        }
        worker
    }

    /// Carries the keys parked in a former parking topic over to the current one (see
    /// [`super::parking_carry`]) before any record is taken; tried again until it is done,
    /// unless the tenure ends (or `stop` comes) first.
    async fn carry_stranded(&mut self, stop: &CancellationToken) -> Option<Ending> {
        for stranded in self.parked.stranded() {
            let carried = loop {
                let result = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Some(Ending::Shutdown),
                    ending = tenure_ended(&mut self.tenure) => return Some(ending),
                    result = parking_carry::carry(&self.sub, &self.calls, &stranded, stop) => result,
                };
                match result {
                    Ok(Some(carried)) => break carried,
                    Ok(None) => return Some(Ending::Shutdown),
                    Err(e) => {
                        tracing::warn!(subscription = %self.sub.name, topic = %self.stream.topic, partition = self.stream.partition, from = %stranded.topic, error = %e, "cannot carry parked events over from the former parking topic; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return Some(Ending::Shutdown),
                            ending = tenure_ended(&mut self.tenure) => return Some(ending),
                            _ = tokio::time::sleep(CARRY_RETRY) => {}
                        }
                    }
                }
            };
            let events = carried.values().flatten().count();
            tracing::info!(subscription = %self.sub.name, topic = %self.stream.topic, partition = self.stream.partition, from = %stranded.topic, from_partition = stranded.partition, keys = stranded.keys.len(), events, "parked events carried over to the new parking topic");
            for (key, last) in carried {
                self.parked.moved(key, last);
            }
            self.parked_changed();
        }
        None
    }

    /// Delivers the partition's records until the tenure ends (or the stream, or `stop`
    /// comes): the loop is the list of what can happen.
    async fn deliver(&mut self, stop: &CancellationToken) -> Ending {
        loop {
            let takes_records = self.takes_records();
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ending::Shutdown,
                ending = tenure_ended(&mut self.tenure) => return ending,
                done = self.lanes.finished() => self.on_lane_finished(done),
                Ok(()) = self.paused.changed() => {}
                record = self.stream.next(), if takes_records => match record {
                    Some(record) => self.on_record(record),
                    None => return Ending::StreamEnded,
                },
                (pending, result) = finished(&mut self.committing) => self.on_commit(pending, result),
                stored = finished(&mut self.reviewing) => self.on_review(stored),
                (committed, lag) = finished(&mut self.reading_lag) => self.on_lag(committed, lag),
                _ = self.ticks.unpark.tick(), if self.review_due() => self.start_review(),
                _ = self.ticks.commit.tick(), if self.committing.is_none() => self.start_commit(),
                _ = self.ticks.lag.tick(), if self.reading_lag.is_none() => self.start_lag_read(),
            }
        }
    }

    /// Whether the worker pulls another record: there is room in the buffer (in records and
    /// in bytes) and delivery is not paused.
    fn takes_records(&self) -> bool {
        self.lanes.held() < self.sub.buffer
            && self.lanes.held_bytes() < BUFFER_BYTES
            && !*self.paused.borrow()
    }

    /// A record arrived: skipped if done before, counted done if filtered out, otherwise
    /// into its lane (or to wait while its key drains).
    fn on_record(&mut self, record: ConsumedRecord) {
        if self.tracker.is_empty() {
            tracing::debug!(subscription = %self.sub.name, topic = %self.stream.topic, partition = self.stream.partition, offset = record.offset, "first record");
        }
        if !self.tracker.track(record.offset) {
            // Done before this worker started (G8): not sent again.
            return;
        }
        let settings = self.sub.settings();
        let mut event = Event::from_record(record, settings.decode);
        match self.source {
            Source::Parking => parking::restore(&mut event),
            Source::Resend => resend::restore(&mut event),
            Source::Live => {}
        }
        // One that cannot be decoded goes on to be dead-lettered, whatever a filter says.
        if event.undeliverable.is_none() && !settings.wants(&event, &self.sub.metrics) {
            self.tracker.done(event.record.offset);
            return;
        }
        let lane = self.lane_of(&event);
        if let LaneKey::Key(key) = &lane
            && self.parked.is_draining(key)
        {
            // Waits until the key's parked events are done (see `parking`).
            self.lanes.wait_for_drain(key.clone(), event);
            return;
        }
        if let Some(event) = self.lanes.admit(&lane, event) {
            self.start_event(lane, event);
        }
    }

    /// The event's lane by the subscription's ordering, but a key parked under `ordering:
    /// key` before the ordering changed keeps a lane of its own while it is parked: its
    /// events follow it to the parking topic, or wait while it drains, in order.
    fn lane_of(&mut self, event: &Event) -> LaneKey {
        let lane = LaneKey::of(self.sub.ordering, event);
        match event.key() {
            Some(key) if !matches!(lane, LaneKey::Key(_)) && self.parked.contains(key) => {
                LaneKey::Key(key.clone())
            }
            _ => lane,
        }
    }

    /// An event finished its lane: counted done (a parked one recorded as parked), and the
    /// lane's next event starts only now (per-key order).
    fn on_lane_finished(&mut self, finished: Finished) {
        match release::settle(&mut self.tracker, &mut self.parked, &finished) {
            Settled::Abandoned => return,
            Settled::Parked => self.reports.parked.set(self.parked.len() as i64),
            Settled::Done => {}
        }
        let lane = finished.0;
        if let Some(next) = self.lanes.next_in(&lane) {
            self.start_event(lane, next);
        }
    }

    /// Puts the lane's next event on its way: to the subscriber, or to the parking topic
    /// when its key is parked.
    fn start_event(&mut self, lane: LaneKey, mut event: Event) {
        let key = match &lane {
            LaneKey::Key(key) => Some(key),
            _ => None,
        };
        // A draining key's events wait in `Lanes`, so a parked one started here forwards.
        let forward = key.is_some_and(|key| self.parked.contains(key));
        let parking = (self.parks && key.is_some() && !forward).then(|| lane::Parking {
            after: self.sub.settings().park_after,
            room: self.parked.room(),
        });
        // A replayed copy waits for its original only where there is an order to keep.
        let original = match (self.source, &lane) {
            (Source::Resend, LaneKey::Key(_) | LaneKey::Partition) => {
                resend::Original::of(&event, &self.sub.topics)
            }
            _ => None,
        };
        let (sub, calls, stop) = (
            self.sub.clone(),
            self.calls.clone(),
            self.lanes.stop_token(),
        );
        let bytes = event.record.size();
        self.lanes.run(bytes, async move {
            if let Some(original) = original
                && !original
                    .wait_until_done(&sub, &calls, event.key(), &stop)
                    .await
            {
                return (lane, event.record.offset, lane::Outcome::Abandoned);
            }
            let outcome = if forward {
                lane::park(&sub, &event, event.prior_attempts, &stop).await
            } else {
                lane::deliver(&sub, &mut event, &stop, parking).await
            };
            (lane, event.record.offset, outcome)
        });
    }

    fn on_commit(&mut self, pending: PendingCommit, result: Result<(), BrokerError>) {
        match result {
            Ok(()) => {
                self.tracker.accepted(&pending);
                let (topic, partition) = (&self.stream.topic, self.stream.partition);
                self.sub
                    .progress
                    .accepted(topic, partition, &pending.completion);
            }
            Err(e) => {
                tracing::warn!(subscription = %self.sub.name, topic = %self.stream.topic, partition = self.stream.partition, error = %e, "commit failed; will retry")
            }
        }
    }

    fn start_commit(&mut self) {
        if let Some(pending) = self.tracker.take() {
            self.committing = Some(Box::pin(commit::send(self.calls.clone(), pending)));
        }
    }

    /// Whether the parked keys are due for a look: some are parked, none is under way.
    fn review_due(&self) -> bool {
        !self.parked.is_empty() && self.reviewing.is_none()
    }

    fn start_review(&mut self) {
        let lanes = &self.lanes;
        let partitions = self.parked.idle_partitions(|key| lanes.is_busy(key));
        self.reviewing = Some(Box::pin(read_parking_partitions(
            self.sub.clone(),
            self.calls.clone(),
            partitions,
        )));
    }

    /// What the parking partitions had done came back: keys whose parked events are done are
    /// unparked, and events that waited for their key to drain start now (directly if it
    /// was unparked, to the parking topic if it drained too long).
    fn on_review(&mut self, stored: Vec<(u32, Completion)>) {
        let review = self.review_parked(stored);
        if !review.unparked.is_empty() {
            self.parked_changed();
        }
        for key in review.unparked.into_iter().chain(review.forward_again) {
            if let Some((lane, first)) = self.lanes.end_drain(key) {
                self.start_event(lane, first);
            }
        }
    }

    /// Reviews the parked keys against what their parking partitions had done (see
    /// `ParkedKeys::review`). Whether a key is busy is asked now, not when the reads started.
    fn review_parked(&mut self, stored: Vec<(u32, Completion)>) -> Review {
        let mut review = Review::default();
        let patience = self.sub.settings().park_after;
        for (partition, done) in stored {
            let lanes = &self.lanes;
            let one = self
                .parked
                .review(partition, &done, |key| lanes.is_busy(key), patience);
            review.unparked.extend(one.unparked);
            review.forward_again.extend(one.forward_again);
        }
        if !review.unparked.is_empty() {
            tracing::info!(subscription = %self.sub.name, topic = %self.stream.topic, partition = self.stream.partition, unparked = review.unparked.len(), still_parked = self.parked.len(), "parked keys recovered; their new events go to the subscriber directly");
        }
        review
    }

    /// The parked set changed: it goes with the next commit, and into the gauge.
    fn parked_changed(&mut self) {
        self.tracker.set_parked(self.parked.snapshot());
        self.reports.parked.set(self.parked.len() as i64);
    }

    fn start_lag_read(&mut self) {
        let committed = self.tracker.commit_point();
        let calls = self.calls.clone();
        self.reading_lag = Some(Box::pin(async move {
            (committed, calls.lag(committed.unwrap_or(0)).await)
        }));
    }

    fn on_lag(&mut self, committed: Option<u64>, lag: Result<Option<u64>, BrokerError>) {
        let lag = lag.unwrap_or_else(|e| {
            tracing::debug!(subscription = %self.sub.name, topic = %self.stream.topic, partition = self.stream.partition, error = %e, "cannot read the consumer lag");
            None
        });
        let (held, parked_keys) = (self.lanes.held(), self.parked.len());
        self.reports.lag_read(committed, lag, held, parked_keys);
    }

    /// Lets the partition go (see [`super::release`]).
    async fn release(self, ending: Ending) {
        let Worker {
            sub,
            stream,
            tenure,
            lanes,
            tracker,
            parked,
            committing,
            reports,
            ..
        } = self;
        sub.progress.forget(&stream.topic, stream.partition);
        // Another replica reports this partition's lag from now on.
        metrics::metrics().consumer_lag.remove(&reports.lag);
        let handback = Handback {
            stream,
            tenure,
            lanes,
            tracker,
            parked,
            committing,
        };
        release::release(&sub, handback, ending).await;
        drop(reports);
    }
}

impl Ticks {
    fn new() -> Ticks {
        let every = |period| {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            tick
        };
        Ticks {
            commit: every(COMMIT_INTERVAL),
            lag: every(LAG_INTERVAL),
            unpark: every(UNPARK_INTERVAL),
        }
    }
}

impl Reports {
    fn new(sub: &SubscriptionRuntime, topic: &str, partition: u32, per_record: bool) -> Reports {
        let label = metrics::subscription(&sub.name);
        let share = |family: &Family<metrics::SubscriptionLabel, Gauge>| {
            GaugeShare::new(family.get_or_create(&label).clone())
        };
        let mut owned = share(&metrics::metrics().partitions_owned);
        owned.set(1);
        Reports {
            _owned: owned,
            parked: share(&metrics::metrics().parked_keys),
            lag: metrics::SubscriptionPartition {
                subscription: sub.name.clone(),
                topic: topic.to_string(),
                partition,
            },
            row: sub.board.partition(topic, partition),
            per_record,
        }
    }

    /// A lag read came back: into `hookbridge_consumer_lag` and the partition's row.
    fn lag_read(&self, committed: Option<u64>, lag: Option<u64>, held: usize, parked_keys: usize) {
        if let Some(lag) = lag {
            metrics::metrics()
                .consumer_lag
                .get_or_create(&self.lag)
                .set(lag as i64);
        }
        let per_record = self.per_record;
        self.row.update(|row| {
            row.committed = committed;
            row.lag = lag;
            // JetStream's sequences run across a stream's partitions: no end follows from a
            // count there.
            row.end = lag
                .filter(|_| !per_record)
                .map(|lag| committed.unwrap_or(0) + lag);
            row.held = held;
            row.parked_keys = parked_keys;
        });
    }
}

/// Waits until the tenure is revoked, lost, or runs out (the fence).
async fn tenure_ended(tenure: &mut watch::Receiver<Tenure>) -> Ending {
    loop {
        let fence = tenure.borrow().held_until();
        tokio::select! {
            changed = tenure.changed() => {
                if changed.is_err() {
                    return Ending::Revoked;
                }
                match *tenure.borrow_and_update() {
                    Tenure::Revoked { .. } => return Ending::Revoked,
                    Tenure::Lost => return Ending::Lost,
                    Tenure::Held { .. } => {}
                }
            }
            _ = sleep_until(fence), if fence.is_some() => return Ending::Fenced,
        }
    }
}

/// Reads what is done on the parking partitions where parked keys are idle (see
/// `ParkedKeys::review`); a partition that cannot be read in time is left for the next look.
async fn read_parking_partitions(
    sub: Arc<SubscriptionRuntime>,
    calls: PartitionCalls,
    partitions: Vec<u32>,
) -> Vec<(u32, Completion)> {
    let mut stored = Vec::with_capacity(partitions.len());
    for partition in partitions {
        if let Some(done) = sub.progress.of(&sub.parking_topic, partition) {
            stored.push((partition, done));
            continue;
        }
        let read =
            tokio::time::timeout(UNPARK_INTERVAL, calls.stored(&sub.parking_topic, partition));
        if let Ok(Ok(Some(done))) = read.await {
            stored.push((partition, done));
        }
    }
    stored
}

/// What the partition's last commit said was done, so that it is not delivered again.
/// Retried for a while; without it the partition is delivered from its commit point (which
/// is safe, only not as economical).
async fn resumed(sub: &SubscriptionRuntime, stream: &PartitionStream) -> Option<Completion> {
    let give_up = Instant::now() + FINAL_COMMIT_FOR;
    let calls = stream.calls();
    loop {
        match calls.resumed().await {
            Ok(resumed) => {
                if let Some(known) = resumed.as_ref().filter(|c| c.knows_more()) {
                    tracing::info!(subscription = %sub.name, topic = %stream.topic, partition = stream.partition, next_offset = known.next_offset, known_until = known.known_until, open = known.open.len(), "resuming: records done above the commit point are skipped");
                }
                return resumed;
            }
            Err(e) if Instant::now() >= give_up => {
                tracing::warn!(subscription = %sub.name, topic = %stream.topic, partition = stream.partition, error = %e, "cannot read what the last commit said was done; delivering from the commit point");
                return None;
            }
            Err(_) => tokio::time::sleep(COMMIT_INTERVAL).await,
        }
    }
}
