//! The admin API's subscriptions in a JetStream KV bucket (see `broker::stored`): a key per
//! name, kept until changed.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;

use super::{NatsBroker, leases, unavailable};
use crate::broker::stored::NATS_BUCKET;
use crate::broker::{BrokerError, SubscriptionStore};

impl NatsBroker {
    /// The bucket, created on first use.
    async fn subscriptions_bucket(&self) -> Result<&kv::Store, BrokerError> {
        self.subscriptions
            .get_or_try_init(|| leases::bucket(&self.jetstream, NATS_BUCKET, Duration::ZERO))
            .await
    }
}

#[async_trait]
impl SubscriptionStore for NatsBroker {
    async fn load(&self) -> Result<BTreeMap<String, Bytes>, BrokerError> {
        let store = self.subscriptions_bucket().await?;
        let names: Vec<String> = store
            .keys()
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)?;
        let mut all = BTreeMap::new();
        for name in names {
            // Deleted between the listing and the read: not there.
            if let Some(value) = store.get(&name).await.map_err(unavailable)? {
                all.insert(name, value);
            }
        }
        Ok(all)
    }

    async fn put(&self, name: &str, value: Bytes) -> Result<(), BrokerError> {
        let store = self.subscriptions_bucket().await?;
        store.put(name, value).await.map_err(unavailable)?;
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), BrokerError> {
        let store = self.subscriptions_bucket().await?;
        store.delete(name).await.map_err(unavailable)?;
        Ok(())
    }
}
