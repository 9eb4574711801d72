//! The parked keys of each partition (G8, see `delivery::parking`), kept in a KV bucket
//! because JetStream's acks cannot carry them.
//!
//! Writes are fenced by the entry's revision. A replica taking a partition over *claims*
//! its entry: it reads it and writes the same keys back on the revision it read. From then
//! on it writes only on the revision of its own last write, so a previous owner that wakes
//! up late (frozen past its lease between its tenure check and its write) is refused
//! instead of overwriting the new owner's keys; and an owner whose claim was taken over is
//! refused too, and stays refused until it claims again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use super::leases;
use crate::broker::completion::ParkedKey;
use crate::broker::{BrokerError, Completion};

type Unit = (Arc<str>, u32);

/// One subscription's parked-key entries, and the claims this replica holds on them.
pub struct ParkedStore {
    store: kv::Store,
    group: String,
    claims: Mutex<HashMap<Unit, Claim>>,
}

/// This replica's hold on a partition's entry.
#[derive(Debug, Clone)]
enum Claim {
    /// Written last at `revision`, with `keys`.
    Held { revision: u64, keys: Vec<ParkedKey> },
    /// Another replica has written since: nothing more is written until claimed again.
    Lost,
}

impl ParkedStore {
    /// The parked keys of `group`'s partitions, in the bucket shared by every group.
    pub async fn open(js: &jetstream::Context, group: &str) -> Result<ParkedStore, BrokerError> {
        // Kept until changed: without the leases' expiry.
        let store = leases::bucket(js, leases::PARKED_BUCKET, Duration::ZERO).await?;
        Ok(ParkedStore {
            store,
            group: group.to_string(),
            claims: Mutex::default(),
        })
    }

    /// The partition's parked keys and the entry's revision (0: no entry).
    async fn read(&self, key: &str) -> Result<(Vec<ParkedKey>, u64), BrokerError> {
        let entry = self
            .store
            .entry(key)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("cannot read parked keys: {e}")))?;
        Ok(match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                (decode(&entry.value), entry.revision)
            }
            Some(entry) => (Vec::new(), entry.revision),
            None => (Vec::new(), 0),
        })
    }

    /// The partition's parked keys, as last written by whoever owned it.
    pub async fn keys(&self, topic: &str, partition: u32) -> Result<Vec<ParkedKey>, BrokerError> {
        let key = leases::parked_key(&self.group, topic, partition);
        Ok(self.read(&key).await?.0)
    }

    /// Takes the partition's entry over (see the module's comment) and returns its keys.
    pub async fn claim(&self, topic: &str, partition: u32) -> Result<Vec<ParkedKey>, BrokerError> {
        let key = leases::parked_key(&self.group, topic, partition);
        let (keys, revision) = self.read(&key).await?;
        let written = self.put(&key, &keys, revision).await?;
        self.claims.lock().expect("claims lock").insert(
            (Arc::from(topic), partition),
            Claim::Held {
                revision: written,
                keys: keys.clone(),
            },
        );
        Ok(keys)
    }

    /// Writes the partition's parked keys if they changed since this replica's last write,
    /// on that write's revision; refused once another replica has claimed the entry.
    pub async fn write(
        &self,
        topic: &str,
        partition: u32,
        parked: &[ParkedKey],
    ) -> Result<(), BrokerError> {
        let unit: Unit = (Arc::from(topic), partition);
        let mut claim = self.claim_of(&unit);
        if claim.is_none() && !parked.is_empty() {
            // Never claimed (reading at the start failed): claim now, before the first write.
            self.claim(topic, partition).await?;
            claim = self.claim_of(&unit);
        }
        let revision = match claim {
            Some(Claim::Held { keys, .. }) if keys == parked => return Ok(()),
            Some(Claim::Held { revision, .. }) => revision,
            Some(Claim::Lost) => return Err(lost(topic, partition)),
            // Never claimed and nothing to write.
            None => return Ok(()),
        };
        let key = leases::parked_key(&self.group, topic, partition);
        match self.put(&key, parked, revision).await {
            Ok(written) => {
                self.claims.lock().expect("claims lock").insert(
                    unit,
                    Claim::Held {
                        revision: written,
                        keys: parked.to_vec(),
                    },
                );
                Ok(())
            }
            Err(Put::Conflict) => {
                self.claims
                    .lock()
                    .expect("claims lock")
                    .insert(unit, Claim::Lost);
                Err(lost(topic, partition))
            }
            Err(Put::Failed(e)) => Err(e),
        }
    }

    fn claim_of(&self, unit: &Unit) -> Option<Claim> {
        self.claims.lock().expect("claims lock").get(unit).cloned()
    }

    /// Writes `keys` on `revision` (0: creates the entry); the new revision.
    async fn put(&self, key: &str, keys: &[ParkedKey], revision: u64) -> Result<u64, Put> {
        let value = Bytes::from(encode(keys));
        if revision == 0 {
            return self
                .store
                .create(key, value)
                .await
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => Put::Conflict,
                    _ => Put::Failed(BrokerError::Unavailable(format!(
                        "cannot store parked keys: {e}"
                    ))),
                });
        }
        self.store
            .update(key, value, revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => Put::Conflict,
                _ => Put::Failed(BrokerError::Unavailable(format!(
                    "cannot store parked keys: {e}"
                ))),
            })
    }
}

/// Why a write did not happen.
enum Put {
    /// Someone else wrote the entry since the revision given.
    Conflict,
    Failed(BrokerError),
}

impl From<Put> for BrokerError {
    fn from(put: Put) -> BrokerError {
        match put {
            Put::Conflict => BrokerError::Unavailable(
                "parked keys were written by another replica meanwhile".into(),
            ),
            Put::Failed(e) => e,
        }
    }
}

fn lost(topic: &str, partition: u32) -> BrokerError {
    BrokerError::Rejected(format!(
        "the parked keys of {topic}/{partition} were claimed by another replica"
    ))
}

/// Parked keys as stored: the completion's text form, with nothing but its parked keys.
fn encode(keys: &[ParkedKey]) -> String {
    Completion {
        parked: keys.to_vec(),
        ..Completion::at(0)
    }
    .to_text(usize::MAX)
}

fn decode(value: &[u8]) -> Vec<ParkedKey> {
    Completion::from_text(0, std::str::from_utf8(value).unwrap_or_default()).parked
}
