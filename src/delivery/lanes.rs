//! A partition's lanes: which events wait behind which, and the events on their way.
//!
//! Lanes by `ordering`: `key` gives each partition key its own lane (records without a key
//! are unordered), `partition` one lane for the whole partition, `none` a lane per record.
//! A lane has at most one event on its way; the others wait in its queue, in partition
//! order, and the next starts only when the one before is done (G3).
//!
//! The events on their way are futures the partition's worker polls itself (no task
//! spawned, joined and reported through a channel per event). They all watch one stop
//! token, cancelled when the worker lets the partition go.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;

use super::event::Event;
use super::lane::Outcome;
use crate::config::OrderingMode;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LaneKey {
    Key(Bytes),
    Partition,
    Record(u64),
}

impl LaneKey {
    /// The lane `event` belongs in under `ordering`.
    pub fn of(ordering: OrderingMode, event: &Event) -> LaneKey {
        match (ordering, event.key()) {
            (OrderingMode::Key, Some(key)) => LaneKey::Key(key.clone()),
            (OrderingMode::Partition, _) => LaneKey::Partition,
            _ => LaneKey::Record(event.record.offset),
        }
    }
}

/// An event that finished its way through its lane: the lane, the record's offset, how it
/// ended.
pub type Finished = (LaneKey, u64, Outcome);

/// An event on its way through its lane, with the bytes its record holds.
type Running = Pin<Box<dyn Future<Output = (Finished, usize)> + Send>>;

pub struct Lanes {
    /// Lanes with an event on its way, each with the events waiting behind it.
    queued: HashMap<LaneKey, VecDeque<Event>>,
    /// Events of draining parked keys, waiting for the key's parked events to be done.
    draining: HashMap<Bytes, VecDeque<Event>>,
    running: FuturesUnordered<Running>,
    /// Records held: on their way, queued or draining (at most the partition's buffer).
    held: usize,
    /// The bytes those records hold.
    held_bytes: usize,
    stop: CancellationToken,
}

impl Lanes {
    pub fn new() -> Lanes {
        Lanes {
            queued: HashMap::new(),
            draining: HashMap::new(),
            running: FuturesUnordered::new(),
            held: 0,
            held_bytes: 0,
            stop: CancellationToken::new(),
        }
    }

    pub fn held(&self) -> usize {
        self.held
    }

    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// What an event on its way watches to know it must stop.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Whether the key's lane has an event on its way.
    pub fn is_busy(&self, key: &Bytes) -> bool {
        self.queued.contains_key(&LaneKey::Key(key.clone()))
    }

    /// Takes `event` into `lane`: queued behind the event on its way, or handed back to be
    /// started when the lane was idle.
    pub fn admit(&mut self, lane: &LaneKey, event: Event) -> Option<Event> {
        self.hold(&event);
        match self.queued.get_mut(lane) {
            Some(queue) => {
                queue.push_back(event);
                None
            }
            None => {
                self.queued.insert(lane.clone(), VecDeque::new());
                Some(event)
            }
        }
    }

    /// Holds a draining key's event until its parked events are done (see `parking`).
    pub fn wait_for_drain(&mut self, key: Bytes, event: Event) {
        self.hold(&event);
        self.draining.entry(key).or_default().push_back(event);
    }

    /// The events that waited for `key` to drain, to go on through its lane now: the first
    /// to start, the rest queued behind it.
    pub fn end_drain(&mut self, key: Bytes) -> Option<(LaneKey, Event)> {
        let mut waiting = self.draining.remove(&key)?;
        let first = waiting.pop_front()?;
        let lane = LaneKey::Key(key);
        self.queued.insert(lane.clone(), waiting);
        Some((lane, first))
    }

    fn hold(&mut self, event: &Event) {
        self.held += 1;
        self.held_bytes += event.record.size();
    }

    /// Puts an event on its way; `bytes` is what its record holds, given back when it
    /// finishes.
    pub fn run(&mut self, bytes: usize, event: impl Future<Output = Finished> + Send + 'static) {
        self.running
            .push(Box::pin(async move { (event.await, bytes) }));
    }

    /// The next event that finished its way; never resolves while none is on its way.
    pub async fn finished(&mut self) -> Finished {
        if self.running.is_empty() {
            return std::future::pending().await;
        }
        let (finished, bytes) = self.running.next().await.expect("not empty");
        self.held -= 1;
        self.held_bytes -= bytes;
        finished
    }

    /// The lane's next event, now that the one before it is done; the lane is idle again
    /// when there is none.
    pub fn next_in(&mut self, lane: &LaneKey) -> Option<Event> {
        let queue = self
            .queued
            .get_mut(lane)
            .expect("a finished event's lane exists");
        let next = queue.pop_front();
        if next.is_none() {
            self.queued.remove(lane);
        }
        next
    }

    /// Stops every event on its way at its next wait: attempts on the wire finish, backoffs
    /// and waits for admission are abandoned. Queued events are never started.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// How many events are on their way.
    pub fn on_their_way(&self) -> usize {
        self.running.len()
    }
}
