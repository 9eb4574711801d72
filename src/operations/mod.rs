//! Operations: an operator's request to send events to a subscription again, running in
//! the background and reporting its progress (`GET /v1/operations/{id}`).
//!
//! - [`dead_letters`]: listing a subscription's dead letters, and **redrive**: the matching
//!   ones sent again.
//! - [`replay`]: a subscription's topics read again from an instant (or offsets), the
//!   matching events sent again.
//!
//! Both read with the broker's [`TopicReader`] and write to the subscription's resend topic
//! (see `delivery::resend`), which only that subscription's group reads: the events reach
//! that subscription and no other, in their original per-key order (each partition is read
//! in order and written to the resend topic one record after the other, keyed as before),
//! and are delivered by the engine as durably as any webhook. The live cursor never moves.
//!
//! Each resent copy records its operation, its source (`topic/partition/offset`), who asked
//! and when. A later operation reads the resend topic first and skips sources sent again
//! already, unless forced: a redrive repeated by accident sends nothing twice.

pub mod attempts;
pub mod dlq;
pub mod replay;
mod scan;
mod selection;
mod sender;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerError;
use crate::rfc3339::rfc3339;

pub use selection::{EventFilter, FilterError, FilterRequest};

/// Finished operations are remembered, newest first, up to this many.
const KEEP_FINISHED: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("{0}")]
    Broker(#[from] BrokerError),
    #[error("{0}")]
    Filter(#[from] FilterError),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Redrive,
    Replay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Done,
    Failed,
    Cancelled,
}

/// How far an operation got.
#[derive(Debug, Clone, Serialize)]
pub struct OperationProgress {
    pub state: State,
    /// Records read so far.
    pub scanned: u64,
    /// Records to read in all, when known before (a replay on a backend with dense offsets;
    /// a redrive once its dead letters are read: then the matches to send).
    pub total: Option<u64>,
    /// Records that passed the filter.
    pub matched: u64,
    /// Matches written to the resend topic (none on a dry run).
    pub sent: u64,
    /// Matches sent again before by another operation, left out (`force` sends them).
    pub skipped: u64,
    /// Writes the broker refused (each retried until taken).
    pub errors: u64,
    pub error: Option<String>,
    pub finished_at: Option<String>,
}

/// One operation; shared by its task and the admin API.
pub struct Operation {
    pub id: String,
    pub kind: Kind,
    pub subscription: String,
    pub requested_by: String,
    pub started_at: String,
    pub dry_run: bool,
    started: Instant,
    progress: Mutex<OperationProgress>,
    cancel: CancellationToken,
}

/// An operation as `GET /v1/operations/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OperationView {
    pub id: String,
    pub kind: Kind,
    pub subscription: String,
    pub requested_by: String,
    pub started_at: String,
    pub dry_run: bool,
    pub elapsed_seconds: f64,
    /// Matches handled per second (sent, or skipped), over the whole run.
    pub rate: f64,
    #[serde(flatten)]
    pub progress: OperationProgress,
}

impl Operation {
    fn new(kind: Kind, subscription: &str, requested_by: &str, dry_run: bool) -> Operation {
        Operation {
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            subscription: subscription.to_string(),
            requested_by: requested_by.to_string(),
            started_at: rfc3339(SystemTime::now()),
            dry_run,
            started: Instant::now(),
            progress: Mutex::new(OperationProgress {
                state: State::Running,
                scanned: 0,
                total: None,
                matched: 0,
                sent: 0,
                skipped: 0,
                errors: 0,
                error: None,
                finished_at: None,
            }),
            cancel: CancellationToken::new(),
        }
    }

    pub fn view(&self) -> OperationView {
        let progress = self.progress.lock().expect("progress lock").clone();
        let elapsed = self.started.elapsed().as_secs_f64();
        let handled = (progress.sent + progress.skipped) as f64;
        OperationView {
            id: self.id.clone(),
            kind: self.kind,
            subscription: self.subscription.clone(),
            requested_by: self.requested_by.clone(),
            started_at: self.started_at.clone(),
            dry_run: self.dry_run,
            elapsed_seconds: elapsed,
            rate: if elapsed > 0.0 {
                handled / elapsed
            } else {
                0.0
            },
            progress,
        }
    }

    fn update(&self, update: impl FnOnce(&mut OperationProgress)) {
        update(&mut self.progress.lock().expect("progress lock"));
    }

    /// Asks the operation to stop after the record it is writing.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Resolves once the operation is cancelled.
    async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn finish(&self, result: Result<(), OperationError>) {
        let cancelled = self.is_cancelled();
        self.update(|p| {
            p.state = match &result {
                Ok(()) if cancelled => State::Cancelled,
                Ok(()) => State::Done,
                Err(_) => State::Failed,
            };
            if let Err(e) = &result {
                p.error = Some(e.to_string());
            }
            p.finished_at = Some(rfc3339(SystemTime::now()));
        });
        let view = self.view();
        tracing::info!(
            operation = %self.id, kind = ?self.kind, subscription = %self.subscription,
            requested_by = %self.requested_by, dry_run = self.dry_run, state = ?view.progress.state,
            scanned = view.progress.scanned, matched = view.progress.matched,
            sent = view.progress.sent, skipped = view.progress.skipped,
            error = ?view.progress.error, "operation finished"
        );
    }
}

/// What `POST /v1/dead-letters/{sub}/redrive` and `POST /v1/subscriptions/{name}/replay`
/// take: which events, how fast, and whether for real.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResendRequest {
    /// Event types (globs, as `filter.types`).
    #[serde(default)]
    pub types: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    /// Webhook ids.
    #[serde(default)]
    pub ids: Vec<String>,
    /// RFC 3339. A redrive selects dead letters by when they were dead-lettered; a replay
    /// starts reading there.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    /// A replay's start instead of `since`: topic → partition → offset. A partition left
    /// out is not replayed.
    pub offsets: Option<std::collections::BTreeMap<String, BTreeMap<u32, u64>>>,
    /// At most this many events per second written to the resend topic.
    pub rate: Option<f64>,
    /// Count what would be sent; send nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Send events an earlier operation sent again already.
    #[serde(default)]
    pub force: bool,
    /// Who asks, for the record.
    pub requested_by: Option<String>,
}

impl ResendRequest {
    /// The request's filter, its times and its rate checked.
    fn filter(&self) -> Result<EventFilter, OperationError> {
        if let Some(r) = self.rate
            && (r.is_nan() || r <= 0.0)
        {
            return Err(OperationError::Invalid("`rate` must be more than 0".into()));
        }
        Ok(EventFilter::new(&FilterRequest {
            types: self.types.clone(),
            keys: self.keys.clone(),
            ids: self.ids.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
        })?)
    }
}

/// The operations of this process, running and recently finished.
#[derive(Default)]
pub struct Operations {
    all: Mutex<BTreeMap<String, Arc<Operation>>>,
}

impl Operations {
    /// Registers an operation and runs `work` for it in the background.
    fn start<F>(
        &self,
        operation: Operation,
        work: impl FnOnce(Arc<Operation>) -> F,
    ) -> Arc<Operation>
    where
        F: std::future::Future<Output = Result<(), OperationError>> + Send + 'static,
    {
        let operation = Arc::new(operation);
        tracing::info!(
            operation = %operation.id, kind = ?operation.kind, subscription = %operation.subscription,
            requested_by = %operation.requested_by, dry_run = operation.dry_run, "operation started"
        );
        {
            let mut all = self.all.lock().expect("operations lock");
            all.insert(operation.id.clone(), operation.clone());
            // Ids are time-ordered (UUIDv7): the oldest finished ones go first.
            let finished: Vec<String> = all
                .iter()
                .filter(|(_, op)| op.view().progress.state != State::Running)
                .map(|(id, _)| id.clone())
                .collect();
            for id in finished
                .iter()
                .take(finished.len().saturating_sub(KEEP_FINISHED))
            {
                all.remove(id);
            }
        }
        let future = work(operation.clone());
        let task = operation.clone();
        tokio::spawn(async move {
            let result = future.await;
            task.finish(result);
        });
        operation
    }

    pub fn get(&self, id: &str) -> Option<Arc<Operation>> {
        self.all.lock().expect("operations lock").get(id).cloned()
    }

    /// Every operation remembered, newest first.
    pub fn all(&self) -> Vec<Arc<Operation>> {
        self.all
            .lock()
            .expect("operations lock")
            .values()
            .rev()
            .cloned()
            .collect()
    }
}
