//! `hookbridge serve`: opens the broker, binds the listeners, runs until SIGTERM/SIGINT, and
//! shuts down without dropping an acknowledged webhook.
//!
//! Shutdown order: stop accepting connections, let in-flight requests finish (their
//! publishes are awaited, so every 202 already sent stays true), flush the broker, exit.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError, OpenError, Publisher};
use crate::config::{BrokerKind, Config};
use crate::delivery::{Delivery, DeliveryError};
use crate::ingress::Ingress;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Broker(#[from] OpenError),
    #[error("cannot create the configured topics")]
    Topics { source: BrokerError },
    #[error("cannot start delivery")]
    Delivery(#[from] DeliveryError),
    #[error("cannot set up the ingress's TLS")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "--role {role} needs a broker other processes can reach (kafka or nats): the embedded log belongs to one process, so its replica must run every role (--role all)"
    )]
    RoleNeedsSharedBroker { role: Role },
    #[error("the {what} server failed")]
    Serve {
        what: &'static str,
        source: std::io::Error,
    },
}

/// What one `hookbridge serve` process does. Splitting the roles lets the ingress scale on
/// request load (CPU) and delivery on consumer lag, each in its own Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// Ingress and delivery in one process: the default, and the only role the embedded
    /// broker allows.
    #[default]
    All,
    /// Only the ingress: webhooks in, published to the broker. No consumer groups are joined.
    Ingress,
    /// Only delivery: consumes the subscriptions' topics and sends webhooks out. The ingress
    /// listener is not bound.
    Delivery,
}

impl Role {
    fn ingress(self) -> bool {
        matches!(self, Role::All | Role::Ingress)
    }

    fn delivery(self) -> bool {
        matches!(self, Role::All | Role::Delivery)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::All => "all",
            Role::Ingress => "ingress",
            Role::Delivery => "delivery",
        })
    }
}

/// Addresses actually bound (useful when the config asks for port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The ingress listener; `None` when this process runs `--role delivery`.
    pub listen: Option<SocketAddr>,
    pub admin: SocketAddr,
}

/// How long a start waits for a broker it cannot reach yet (restarting, a network blip)
/// before it gives up: longer than a broker's restart, short enough that a wrong address
/// fails the start.
const UNREACHABLE_AT_START: Duration = Duration::from_secs(60);

/// Creates the config's missing topics, waiting up to `UNREACHABLE_AT_START` for a broker
/// that cannot be reached; a refusal fails at once.
async fn ensure_topics(publisher: &dyn Publisher, topics: &[String]) -> Result<(), ServeError> {
    let give_up = Instant::now() + UNREACHABLE_AT_START;
    loop {
        match publisher.ensure_topics(topics).await {
            Ok(()) => return Ok(()),
            Err(BrokerError::Unavailable(e)) if Instant::now() < give_up => {
                tracing::warn!(error = %e, "cannot create the configured topics yet: the broker is not reachable; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(source) => return Err(ServeError::Topics { source }),
        }
    }
}

/// The subscriptions made through the admin API, to run from the start; if the store
/// cannot be read now, they join once it can (the reloader reads it every second).
async fn stored_at_start(broker: &Broker) -> Vec<crate::config::StoredSubscription> {
    match crate::reload::read_stored(broker.subscriptions.as_ref()).await {
        Ok(read) => read.subscriptions,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the stored subscriptions yet; they start once they can be read");
            Vec::new()
        }
    }
}

/// Runs hookbridge in `role` until `shutdown` resolves. `on_bound` learns the bound
/// addresses.
pub async fn serve(
    file: crate::reload::ConfigFile,
    config: Config,
    role: Role,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(Bound),
) -> Result<(), ServeError> {
    if role != Role::All && config.broker.kind == BrokerKind::Embedded {
        return Err(ServeError::RoleNeedsSharedBroker { role });
    }
    // The ingress's certificate, read (and checked) before anything starts.
    let tls = match config.server.tls.is_empty() || !role.ingress() {
        true => None,
        false => Some(crate::tls::server_config("server.tls", &config.server.tls)?),
    };
    let broker = Broker::open(&config).await?;
    let publisher = broker.publisher.clone();
    let ingress = Ingress::new(&config, publisher.clone());
    ensure_topics(publisher.as_ref(), &config.topics()).await?;
    let stored = stored_at_start(&broker).await;
    let from_file = config;
    let (mut config, mut left_out) = from_file.with_stored(&stored);
    crate::delivery::leave_out_unbuildable(&mut config, &mut left_out);
    ensure_topics(publisher.as_ref(), &config.topics()).await?;
    let delivery = if role.delivery() {
        Some(Arc::new(Delivery::start(&config, broker.clone())?))
    } else {
        None
    };

    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { what, addr, source })
    };
    let listener = if role.ingress() {
        Some(bind("ingress", config.server.listen).await?)
    } else {
        None
    };
    let admin_listener = bind("admin", config.server.admin_listen).await?;
    let bound = Bound {
        listen: listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
            .map_err(|source| ServeError::Serve {
                what: "ingress",
                source,
            })?,
        admin: admin_listener
            .local_addr()
            .map_err(|source| ServeError::Serve {
                what: "admin",
                source,
            })?,
    };
    let ingress_addr = bound
        .listen
        .map_or_else(|| "none".to_string(), |addr| addr.to_string());
    tracing::info!(
        %role, ingress = %ingress_addr, admin = %bound.admin, broker = ?config.broker.kind,
        routes = config.routes.len(), subscriptions = config.subscriptions.len(),
        "hookbridge is serving"
    );
    on_bound(bound);

    let store = broker.subscriptions.clone();
    let admin_state = Arc::new(crate::admin::AdminState::new(
        &config,
        &stored,
        left_out,
        &file.version(),
        broker,
        delivery.clone(),
    ));
    // The listeners and the config watcher stop on this token (delivery stops through
    // `Delivery::shutdown`, which waits for its commits); dropped, it stops them too.
    let stop = CancellationToken::new();
    let _stop_when_dropped = stop.clone().drop_guard();
    let admin = tokio::spawn(
        axum::serve(admin_listener, crate::admin::router(admin_state.clone()))
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    let reloader = crate::reload::Reloader {
        file,
        from_file,
        stored,
        store: crate::reload::StoreWatch::new(store),
        running: config.clone(),
        ingress: ingress.clone(),
        delivery: delivery.clone(),
        admin: admin_state,
        publisher: publisher.clone(),
    };
    let reloading = tokio::spawn(reloader.run(stop.clone()));
    let grace = config.server.shutdown_timeout.0;
    let limits = crate::ingress::listener::Limits {
        read_timeout: config.server.read_timeout.0,
        idle_timeout: config.server.idle_timeout.0,
        max_connections: config.server.max_connections as usize,
    };

    let ingress_task = listener.map(|listener| {
        tokio::spawn(crate::ingress::listener::serve(
            listener,
            ingress.router(),
            limits,
            tls,
            stop.clone().cancelled_owned(),
            grace,
        ))
    });
    shutdown.await;
    tracing::info!(grace = ?grace, "shutting down: no new connections, finishing in-flight requests");
    // One deadline for every phase, so that the whole stays within the grace the
    // orchestrator gives (the chart's terminationGracePeriodSeconds).
    let deadline = Instant::now() + grace;
    let left = || deadline.saturating_duration_since(Instant::now());
    stop.cancel();
    // The ingress's requests and the deliveries finish side by side: neither waits for
    // the other's slow peers.
    let ingress = async {
        if let Some(task) = ingress_task {
            phase("ingress", left(), task).await;
        }
    };
    let delivering = async {
        // A reload under way finishes first: it may be stopping or starting subscriptions.
        phase("reload", left(), reloading).await;
        if let Some(delivery) = &delivery {
            phase("delivery", left(), delivery.shutdown(left())).await;
        }
    };
    tokio::join!(ingress, delivering);
    phase("admin", left().min(Duration::from_secs(1)), admin).await;
    // Last: what the ingress accepted is published by now.
    if phase("broker flush", left(), publisher.close()).await {
        tracing::info!("broker flushed; bye");
    }
    Ok(())
}

/// Runs one phase of the shutdown within `within`, what is left of its deadline; says how
/// long it took, or that it was given up. True when it finished.
async fn phase<T>(name: &'static str, within: Duration, work: impl Future<Output = T>) -> bool {
    let started = Instant::now();
    match tokio::time::timeout(within, work).await {
        Ok(_) => {
            tracing::info!(phase = name, took = ?started.elapsed(), "shutdown phase finished");
            true
        }
        Err(_) => {
            tracing::warn!(phase = name, given = ?within, "shutdown phase did not finish within server.shutdown_timeout; going on without it");
            false
        }
    }
}
