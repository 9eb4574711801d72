//! The admin API's subscriptions in the embedded log's own keyspace (see
//! `broker::stored`), written straight to the storage engine and synced before a write
//! returns.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use fjall::PersistMode;

use super::EmbeddedBroker;
use super::log::storage_error;
use crate::broker::{BrokerError, SubscriptionStore};

impl EmbeddedBroker {
    /// Runs a call on the storage engine off the async threads.
    async fn on_log<T: Send + 'static>(
        &self,
        call: impl FnOnce(&super::log::Log) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || call(&log))
            .await
            .map_err(|_| BrokerError::Closed)?
    }
}

#[async_trait]
impl SubscriptionStore for EmbeddedBroker {
    async fn load(&self) -> Result<BTreeMap<String, Bytes>, BrokerError> {
        self.on_log(|log| {
            let mut all = BTreeMap::new();
            for entry in log.subscriptions.iter() {
                let (name, value) = entry.into_inner().map_err(storage_error)?;
                all.insert(
                    String::from_utf8_lossy(&name).into_owned(),
                    Bytes::copy_from_slice(&value),
                );
            }
            Ok(all)
        })
        .await
    }

    async fn put(&self, name: &str, value: Bytes) -> Result<(), BrokerError> {
        let name = name.to_string();
        self.on_log(move |log| {
            log.subscriptions
                .insert(name.as_bytes(), value.as_ref())
                .map_err(storage_error)?;
            log.db.persist(PersistMode::SyncAll).map_err(storage_error)
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<(), BrokerError> {
        let name = name.to_string();
        self.on_log(move |log| {
            log.subscriptions
                .remove(name.as_bytes())
                .map_err(storage_error)?;
            log.db.persist(PersistMode::SyncAll).map_err(storage_error)
        })
        .await
    }
}
