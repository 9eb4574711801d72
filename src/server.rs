//! `hookbridge serve`: opens the broker, binds the listeners, runs until SIGTERM/SIGINT, and
//! shuts down without dropping an acknowledged webhook.
//!
//! Shutdown order: stop accepting connections, let in-flight requests finish (their
//! publishes are awaited, so every 202 already sent stays true), flush the broker, exit.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::broker::embedded::EmbeddedBroker;
use crate::broker::kafka::KafkaBroker;
use crate::broker::kafka::KafkaTopicReader;
use crate::broker::nats::NatsBroker;
use crate::broker::{BrokerError, Publisher, Subscriber, TopicReader};
use crate::config::{BrokerKind, Config};
use crate::delivery::{Delivery, DeliveryError};
use crate::ingress::Ingress;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the {kind} broker")]
    Broker {
        kind: &'static str,
        source: BrokerError,
    },
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

/// The faces of the broker the config names.
pub struct Broker {
    pub publisher: Arc<dyn Publisher>,
    pub subscriber: Arc<dyn Subscriber>,
    /// Outside any group, for the operator's dead-letter listings, redrives and replays.
    pub reader: Arc<dyn TopicReader>,
}

/// Opens the broker the config names.
pub async fn open_broker(config: &Config) -> Result<Broker, ServeError> {
    match config.broker.kind {
        BrokerKind::Embedded => {
            let broker = EmbeddedBroker::open(&config.broker.embedded).map_err(|source| {
                ServeError::Broker {
                    kind: "embedded",
                    source,
                }
            })?;
            Ok(Broker {
                publisher: broker.clone(),
                subscriber: broker.clone(),
                reader: broker,
            })
        }
        BrokerKind::Kafka => {
            let broker = KafkaBroker::connect(&config.broker.kafka).map_err(|source| {
                ServeError::Broker {
                    kind: "kafka",
                    source,
                }
            })?;
            let reader = KafkaTopicReader::new(&config.broker.kafka).map_err(|source| {
                ServeError::Broker {
                    kind: "kafka",
                    source,
                }
            })?;
            Ok(Broker {
                publisher: broker.clone(),
                subscriber: broker,
                reader: Arc::new(reader),
            })
        }
        BrokerKind::Nats => {
            let broker = NatsBroker::connect(&config.broker.nats)
                .await
                .map_err(|source| ServeError::Broker {
                    kind: "nats",
                    source,
                })?;
            Ok(Broker {
                publisher: broker.clone(),
                subscriber: broker.clone(),
                reader: broker,
            })
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
    let Broker {
        publisher,
        subscriber,
        reader,
    } = open_broker(&config).await?;
    let ingress = Ingress::new(&config, publisher.clone());
    publisher
        .ensure_topics(&configured_topics(&config))
        .await
        .map_err(|source| ServeError::Topics { source })?;
    let delivery = if role.delivery() {
        Some(Arc::new(Delivery::start(
            &config,
            subscriber,
            publisher.clone(),
        )?))
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

    let admin_state = Arc::new(crate::admin::AdminState::new(
        &config,
        &file.version(),
        crate::operations::Broker {
            reader,
            publisher: publisher.clone(),
        },
        delivery.clone(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin = tokio::spawn(
        axum::serve(admin_listener, crate::admin::router(admin_state.clone()))
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    );
    let reloader = crate::reload::Reloader {
        file,
        running: config.clone(),
        ingress: ingress.clone(),
        delivery: delivery.clone(),
        admin: admin_state,
        publisher: publisher.clone(),
    };
    let reloading = tokio::spawn(reloader.run(stop_rx.clone()));
    let grace = config.server.shutdown_timeout.0;
    let limits = crate::ingress::listener::Limits {
        read_timeout: config.server.read_timeout.0,
        max_connections: config.server.max_connections as usize,
    };

    let ingress_task = listener.map(|listener| {
        tokio::spawn(crate::ingress::listener::serve(
            listener,
            ingress.router(),
            limits,
            tls,
            stopped(stop_rx),
            grace,
        ))
    });
    shutdown.await;
    tracing::info!(grace = ?grace, "shutting down: no new connections, finishing in-flight requests");
    let _ = stop_tx.send(true);
    if let Some(task) = ingress_task {
        let _ = task.await;
    }
    // A reload under way finishes first: it may be stopping or starting subscriptions.
    let _ = tokio::time::timeout(grace, reloading).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
    if let Some(delivery) = &delivery {
        delivery.shutdown(grace).await;
    }
    match tokio::time::timeout(grace, publisher.close()).await {
        Ok(()) => tracing::info!("broker flushed; bye"),
        Err(_) => tracing::warn!("broker flush did not finish within the shutdown timeout"),
    }
    Ok(())
}

/// Every topic the config names: routes', subscriptions', dead-letter, parking and resend
/// topics.
pub fn configured_topics(config: &Config) -> Vec<String> {
    let mut topics: Vec<String> = config.routes.iter().map(|r| r.topic.clone()).collect();
    for sub in &config.subscriptions {
        topics.extend(sub.topics.iter().cloned());
        topics.push(sub.dead_letter_topic());
        topics.push(sub.parking_topic());
        topics.push(sub.resend_topic());
    }
    topics.sort();
    topics.dedup();
    topics
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
