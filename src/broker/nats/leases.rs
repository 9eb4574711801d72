//! Partition leases in a JetStream KV bucket: how replicas of one subscription share its
//! partitions without a coordinator.
//!
//! Every replica keeps a membership key alive (`m.<group>.<member>`) and tries to hold its
//! fair share (`ceil(partitions / members)`) of partition numbers, each the lease keys
//! (`l.<group>.<stream>.<partition>`) of that partition of every topic of the group.
//! A lease is taken with KV `create` (fails if someone holds it), renewed with `update` at
//! the revision it holds (fails if it was lost), and given up with `delete`. The bucket's
//! `max_age` is the lease period: keys that are not renewed expire, so a dead replica's
//! partitions are free again within one period and the survivors take them.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::broker::BrokerError;

pub const BUCKET: &str = "hookbridge_leases";
/// The parked keys of each partition (see `delivery::parking`): kept until changed, so
/// without the leases' expiry.
pub const PARKED_BUCKET: &str = "hookbridge_parked";

/// Opens a KV bucket, creating its stream directly: `create_key_value` cannot parse the
/// answer of NATS servers before 2.10, while a plain stream in the KV layout works on all.
/// `max_age`: how long a key lives unless written again (zero: for ever).
pub async fn bucket(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
) -> Result<kv::Store, BrokerError> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| BrokerError::Unavailable(format!("cannot create the {bucket} bucket: {e}")))?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| BrokerError::Unavailable(format!("cannot open the {bucket} bucket: {e}")))
}

/// KV keys allow letters, digits and `-/_=.`; group names are already restricted to
/// those, but escape anything else the same way stream names are.
fn token(text: &str) -> String {
    super::names::stream_name(text)
}

pub fn member_key(group: &str, member: &str) -> String {
    format!("m.{}.{member}", token(group))
}

pub fn parked_key(group: &str, topic: &str, partition: u32) -> String {
    format!(
        "p.{}.{}.{partition}",
        token(group),
        super::names::stream_name(topic)
    )
}

pub fn lease_key(group: &str, topic: &str, partition: u32) -> String {
    format!(
        "l.{}.{}.{partition}",
        token(group),
        super::names::stream_name(topic)
    )
}

/// Announces this member (again).
pub async fn heartbeat(store: &kv::Store, group: &str, member: &str) -> Result<(), BrokerError> {
    store
        .put(member_key(group, member), Bytes::from_static(b"alive"))
        .await
        .map(|_| ())
        .map_err(|e| BrokerError::Unavailable(format!("lease heartbeat: {e}")))
}

/// How many members of the group are alive (their keys have not expired).
pub async fn members(store: &kv::Store, group: &str) -> Result<usize, BrokerError> {
    let prefix = format!("m.{}.", token(group));
    let mut keys = store
        .keys()
        .await
        .map_err(|e| BrokerError::Unavailable(format!("listing members: {e}")))?;
    let mut count = 0;
    while let Some(key) = keys.next().await {
        if key
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?
            .starts_with(&prefix)
        {
            count += 1;
        }
    }
    Ok(count.max(1))
}

/// Takes a free lease; `Ok(Some(revision))` when it is now ours.
pub async fn acquire(
    store: &kv::Store,
    key: &str,
    member: &str,
) -> Result<Option<u64>, BrokerError> {
    match store.create(key, Bytes::from(member.to_string())).await {
        Ok(revision) => Ok(Some(revision)),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(BrokerError::Unavailable(format!("acquiring {key}: {e}"))),
    }
}

/// Renews a lease held at `revision`; `Ok(None)` when it was lost meanwhile.
pub async fn renew(
    store: &kv::Store,
    key: &str,
    member: &str,
    revision: u64,
) -> Result<Option<u64>, BrokerError> {
    match store
        .update(key, Bytes::from(member.to_string()), revision)
        .await
    {
        Ok(revision) => Ok(Some(revision)),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
        Err(e) => Err(BrokerError::Unavailable(format!("renewing {key}: {e}"))),
    }
}

/// Gives a lease up, so another member can take it without waiting for it to expire.
pub async fn release(store: &kv::Store, key: &str) {
    if let Err(e) = store.delete(key).await {
        tracing::debug!(%key, error = %e, "releasing a lease failed; it expires by itself");
    }
}
