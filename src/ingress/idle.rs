//! A connection's requests: how many are open, and since when none is, so that a
//! connection idle for `server.idle_timeout` is closed whatever its protocol. (hyper's
//! HTTP/1 server closes an idle keep-alive connection at its header read timeout, but its
//! HTTP/2 server keeps one that sent its preface and nothing more for ever.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

pub struct Activity {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// A request open on the connection, until dropped.
pub struct Open(Arc<Activity>);

impl Activity {
    /// A connection just accepted: idle from now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    /// A request began; it ends when the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }

    /// Resolves once no request has been open for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let wait = if self.open.load(Ordering::Acquire) > 0 {
                timeout
            } else {
                let idle = self.idle_since.lock().expect("idle lock").elapsed();
                if idle >= timeout {
                    return;
                }
                timeout - idle
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        // Set before the count drops, so a look at the count of 0 never reads a stale time.
        *self.0.idle_since.lock().expect("idle lock") = Instant::now();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_while_no_request_is_open() {
        let activity = Activity::new();
        let open = activity.begin();
        let idle = activity.idle_for(Duration::from_secs(5));
        tokio::pin!(idle);
        assert!(
            tokio::time::timeout(Duration::from_secs(12), &mut idle)
                .await
                .is_err(),
            "a request open for 12 s keeps it"
        );
        drop(open);
        let started = tokio::time::Instant::now();
        idle.await;
        assert!(started.elapsed() >= Duration::from_secs(5));
    }
}
