//! The `hookbridge` command line. Errors from the library are reported here, once, with
//! their full cause chain.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hookbridge::ConfigFile;
use hookbridge::LogFormat;
use hookbridge::Role;
use hookbridge::config::{self, Config};

/// Bridges HTTP webhooks and event streams (Kafka, NATS JetStream, or an embedded log).
///
/// Webhooks POSTed to /hooks/{route} are verified, wrapped in an envelope and published to
/// the route's topic; the sender gets 202 only once the broker has durably stored them.
#[derive(Parser)]
#[command(name = "hookbridge", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ingress and admin servers until SIGTERM or SIGINT.
    ///
    /// Without --config (or HOOKBRIDGE_CONFIG), runs the built-in default: the embedded broker
    /// in ./data and a `demo` route at POST http://0.0.0.0:8080/hooks/demo.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// What this process does: `all` (ingress and delivery), `ingress` (webhooks in,
        /// published to the broker) or `delivery` (consumes and sends webhooks out). Split
        /// roles scale apart (the ingress on CPU, delivery on consumer lag) and need Kafka or
        /// NATS: the embedded broker runs `all` only.
        #[arg(long, value_enum, env = "HOOKBRIDGE_ROLE", default_value = "all")]
        role: Role,
        /// Log format on stderr: `text` for people, `json` for log pipelines.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a config file and exit: 0 when valid, 1 with every problem listed otherwise.
    ///
    /// The TLS certificates, keys and CAs and the NATS creds file it names are read too, as
    /// `serve` will; --skip-files leaves them out, to check a config away from where they
    /// are mounted (in CI, say).
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
        /// Do not read the files the config names (TLS material, NATS creds).
        #[arg(long)]
        skip_files: bool,
    },
    /// Show where each subscription stands, on every replica
    ///
    /// Paused or running, requests in flight, circuit breaker, consumer lag, rate limit, the
    /// subscriber's last error; with SUB, each partition too (committed offset, end, lag,
    /// records held, parked keys). Asks every replica behind --admin-url.
    ///
    /// Example: hookbridge status billing --admin-url http://hookbridge-admin:9090
    #[command(verbatim_doc_comment)]
    Status {
        /// One subscription, with its partitions.
        subscription: Option<String>,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Hold a subscription's delivery without leaving its consumer group
    ///
    /// No record is pulled and no attempt starts (attempts on the wire finish); the
    /// partitions stay owned, the lag grows, nothing is lost or reordered. Holds until
    /// `hookbridge resume` or a restart of the replica. Asks every replica behind
    /// --admin-url.
    ///
    /// Example: hookbridge pause billing
    #[command(verbatim_doc_comment)]
    Pause {
        /// The subscription's name, as in the config.
        subscription: String,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Resume a paused subscription where it stopped
    ///
    /// Example: hookbridge resume billing
    #[command(verbatim_doc_comment)]
    Resume {
        /// The subscription's name, as in the config.
        subscription: String,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// A subscription's dead letters: list them, show one, send them again.
    #[command(subcommand)]
    Dlq(Dlq),
    /// Subscriptions stored through the admin API: list, show, create or change, delete
    ///
    /// An application team's own subscriptions, without a change to the config file: each is
    /// stored in the broker, applied by every replica within seconds, and kept across
    /// restarts. The config file's subscriptions are listed and shown too, but changed only
    /// in the file. With a tenant's token in HOOKBRIDGE_ADMIN_TOKEN, only that tenant's, by
    /// their short names. Asks the first replica behind --admin-url (the store is shared).
    #[command(subcommand, verbatim_doc_comment)]
    Subscriptions(Subscriptions),
    /// Send a subscription past events of its topics again
    ///
    /// The topics are read from --since (or --offset) up to --until (or their end when the
    /// replay starts); the events that pass the subscription's type filter and the options'
    /// go to this subscription only, in their per-key order, through its resend topic (its
    /// live position does not move; other subscriptions see nothing). Events an earlier
    /// redrive or replay sent are skipped unless --force. Progress is shown as it goes;
    /// Ctrl-C stops the replay and says how far it got.
    ///
    /// Examples:
    ///   hookbridge replay billing --since 2026-12-01T09:00:00Z --until 2026-12-01T10:00:00Z
    ///   hookbridge replay billing --since 2h --type 'invoice.*' --rate 50
    ///   hookbridge replay billing --offset payments/0=1200 --offset payments/1=1180
    #[command(verbatim_doc_comment)]
    Replay {
        /// The subscription's name, as in the config.
        subscription: String,
        /// Start a partition at this offset instead of --since: TOPIC/PARTITION=OFFSET.
        /// Repeatable; partitions not named are not replayed.
        #[arg(long = "offset", value_name = "TOPIC/PARTITION=OFFSET")]
        offsets: Vec<String>,
        #[command(flatten)]
        filter: cli::FilterArgs,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Search a subscription's attempt log, newest first
    ///
    /// Every attempt the subscription's `attempt_log` keeps (`failures`, the default: those
    /// that did not deliver; `all`: every one): when, which event and key, the status or
    /// error, the latency and the replica. From `hookbridge.attempts.<name>`, so every
    /// replica's attempts, whichever is asked.
    ///
    /// Examples:
    ///   hookbridge attempts billing --key customer-42 --status 5xx --since 1h
    ///   hookbridge attempts billing --id 0193a4f2-7c1e-7d2a-9f00-1c2b3d4e5f60 --since 1d
    ///   hookbridge attempts billing --status error --since 2026-12-01T09:00:00Z --until 2026-12-01T09:10:00Z
    #[command(verbatim_doc_comment)]
    Attempts {
        /// The subscription's name.
        subscription: String,
        #[command(flatten)]
        search: cli::AttemptArgs,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Receive webhooks here and print them: headers, body, whether the signature verifies
    ///
    /// A receiver on this machine that answers every request (any path) and prints it, to
    /// see what a subscription sends before pointing it at a real service. With --secret
    /// (the subscription's signing.secret), each Standard Webhooks signature is checked and
    /// shown as verified or NOT VERIFIED.
    ///
    /// Example: point a subscription's url at http://127.0.0.1:9000/hook, then
    ///   hookbridge listen --port 9000 --secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
    ///   hookbridge listen --port 9000 --status 503     # see retries and parking at work
    #[command(verbatim_doc_comment)]
    Listen {
        /// The port to listen on (0: any free one, printed at start).
        #[arg(long, default_value_t = 9000)]
        port: u16,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// A signing secret (`whsec_…`) to check signatures with. Repeatable, as while a
        /// secret rotates.
        #[arg(
            long = "secret",
            env = "HOOKBRIDGE_LISTEN_SECRET",
            value_delimiter = ','
        )]
        secrets: Vec<String>,
        /// The status every request is answered with.
        #[arg(long, default_value_t = 200)]
        status: u16,
        /// `table`: each request as text, for people; `json`: one object per line.
        #[arg(long, short, value_enum, default_value = "table")]
        output: cli::Output,
    },
}

#[derive(Subcommand)]
enum Dlq {
    /// List a subscription's dead letters, a page at a time
    ///
    /// Example: hookbridge dlq list billing --limit 20
    #[command(verbatim_doc_comment)]
    List {
        /// The subscription's name, as in the config.
        subscription: String,
        /// How many (at most 1000).
        #[arg(long, default_value = "100")]
        limit: usize,
        /// Start after this position (the POSITION column; `more:` prints the next one).
        #[arg(long, value_name = "POSITION")]
        after: Option<String>,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Show one dead letter in full, its event included
    ///
    /// Example: hookbridge dlq show billing 0193a4f2-7c1e-7d2a-9f00-1c2b3d4e5f60
    #[command(verbatim_doc_comment)]
    Show {
        /// The subscription's name, as in the config.
        subscription: String,
        /// The webhook id (the ID column of `dlq list`).
        id: String,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Send a subscription's dead letters again
    ///
    /// Those matching the options; all without. They go to this subscription only, in their
    /// per-key order, through its resend topic, and are delivered (retried, dead-lettered
    /// again if they fail) like any event. The redrive is recorded: running it again sends
    /// nothing twice unless --force. --since and
    /// --until select by the time the event was dead-lettered. Progress is shown as it goes;
    /// Ctrl-C stops the redrive and says how far it got.
    ///
    /// Examples:
    ///   hookbridge dlq redrive billing --dry-run
    ///   hookbridge dlq redrive billing --type 'invoice.*' --since 1h --rate 20
    ///   hookbridge dlq redrive billing --key customer-42 --force
    #[command(verbatim_doc_comment)]
    Redrive {
        /// The subscription's name, as in the config.
        subscription: String,
        #[command(flatten)]
        filter: cli::FilterArgs,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
}

#[derive(Subcommand)]
enum Subscriptions {
    /// List every subscription, the config file's and those stored through the API
    ///
    /// NAME, SOURCE (`config`: the file's; `api`: stored), TENANT, TOPICS, URL (scheme, host
    /// and port), and RUNNING: whether the replica that answered delivers it. One it refused
    /// is listed with why below the table.
    ///
    /// Example: hookbridge subscriptions list --admin-url http://hookbridge-admin:9090
    #[command(verbatim_doc_comment)]
    List {
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Show one subscription: its settings as YAML (secrets redacted) and where it stands
    ///
    /// Example: hookbridge subscriptions get orders-hook
    #[command(verbatim_doc_comment)]
    Get {
        /// The subscription's name (a tenant's short name, with a tenant's token).
        name: String,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Create or replace subscriptions from a YAML file
    ///
    /// FILE (`-`: standard input) holds one subscription (its keys, as under the config
    /// file's `subscriptions:`), a list of them, or `subscriptions:` and a list; each needs
    /// its `name`. `${VAR}` and `${VAR:-default}` are taken from this environment, as in the
    /// config file (the server substitutes nothing). Each is sent in turn and printed
    /// `created` or `updated`; the first one refused stops the run, with every problem by
    /// its key, and those after it are not sent. Every replica applies a stored
    /// subscription within 5 seconds, a changed one as a reload changes it: in place, or
    /// rejoining its consumer group when its topics change. A config-file subscription's
    /// name cannot be used.
    ///
    /// Examples:
    ///   hookbridge subscriptions apply -f orders-hook.yaml
    ///   ./render-hooks | hookbridge subscriptions apply -f -
    #[command(verbatim_doc_comment)]
    Apply {
        /// The YAML file (`-`: standard input).
        #[arg(long, short = 'f', value_name = "FILE")]
        file: String,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
    /// Delete a subscription stored through the API
    ///
    /// Every replica stops it within 5 seconds, as a reload removes one: attempts on the
    /// wire finish and what is done is committed. Its consumer group and its dead-letter
    /// topic stay in the broker: created again with the same name, it goes on from where
    /// its group stopped.
    ///
    /// Example: hookbridge subscriptions delete orders-hook
    #[command(verbatim_doc_comment)]
    Delete {
        /// The subscription's name (a tenant's short name, with a tenant's token).
        name: String,
        #[command(flatten)]
        admin: cli::AdminArgs,
    },
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The YAML config file. `${VAR}` and `${VAR:-default}` are taken from the environment.
    #[arg(long, short, env = "HOOKBRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn load(&self) -> anyhow::Result<(ConfigFile, Config)> {
        self.load_checking(true)
    }

    /// Loads the config; with `files`, also reads the TLS and creds files it names.
    fn load_checking(&self, files: bool) -> anyhow::Result<(ConfigFile, Config)> {
        let file = match &self.config {
            Some(path) => ConfigFile {
                path: Some(path.clone()),
                name: path.display().to_string(),
                text: std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            },
            None => ConfigFile {
                path: None,
                name: config::DEFAULT_CONFIG_NAME.to_string(),
                text: config::DEFAULT_CONFIG.to_string(),
            },
        };
        let env = |name: &str| std::env::var(name).ok();
        let parsed = config::load_str(&file.name, &file.text, &env)?;
        // The TLS files it names, read as start-up will (each problem names its key).
        let problems = match files {
            true => hookbridge::check_files(&parsed),
            false => Vec::new(),
        };
        if !problems.is_empty() {
            return Err(config::ConfigError::Invalid {
                file: file.name,
                problems,
            }
            .into());
        }
        Ok((file, parsed))
    }
}

fn main() -> ExitCode {
    // Process-wide set-up, once: rustls is built without a default crypto provider, and
    // the clients that take the process's default (the CLI's, the OTLP exporter's) get ring,
    // the one hookbridge's own TLS configs name explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            role,
            log_format,
        } => {
            // Dropped after `serve` returns: the last spans are flushed.
            let _telemetry = hookbridge::init_telemetry(log_format);
            serve(&config, role)
        }
        Command::CheckConfig { config, skip_files } => check_config(&config, skip_files),
        Command::Status {
            subscription,
            admin,
        } => run(cli::status(&admin, subscription.as_deref())),
        Command::Pause {
            subscription,
            admin,
        } => run(cli::pause(&admin, &subscription, true)),
        Command::Resume {
            subscription,
            admin,
        } => run(cli::pause(&admin, &subscription, false)),
        Command::Dlq(Dlq::List {
            subscription,
            limit,
            after,
            admin,
        }) => run(cli::dlq_list(
            &admin,
            &subscription,
            limit,
            after.as_deref(),
        )),
        Command::Dlq(Dlq::Show {
            subscription,
            id,
            admin,
        }) => run(cli::dlq_show(&admin, &subscription, &id)),
        Command::Dlq(Dlq::Redrive {
            subscription,
            filter,
            admin,
        }) => run(cli::redrive(&admin, &subscription, &filter)),
        Command::Subscriptions(Subscriptions::List { admin }) => {
            run(cli::subscriptions::list(&admin))
        }
        Command::Subscriptions(Subscriptions::Get { name, admin }) => {
            run(cli::subscriptions::get(&admin, &name))
        }
        Command::Subscriptions(Subscriptions::Apply { file, admin }) => {
            run(cli::subscriptions::apply(&admin, &file))
        }
        Command::Subscriptions(Subscriptions::Delete { name, admin }) => {
            run(cli::subscriptions::delete(&admin, &name))
        }
        Command::Replay {
            subscription,
            offsets,
            filter,
            admin,
        } => run(cli::replay(&admin, &subscription, &filter, &offsets)),
        Command::Attempts {
            subscription,
            search,
            admin,
        } => run(cli::attempts(&admin, &subscription, &search)),
        Command::Listen {
            port,
            host,
            secrets,
            status,
            output,
        } => run(cli::listen(cli::Listen {
            listen: std::net::SocketAddr::new(host, port),
            secrets,
            status,
            output,
        })),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(arg: &ConfigArg, skip_files: bool) -> anyhow::Result<()> {
    let (file, config) = arg.load_checking(!skip_files)?;
    let name = file.name;
    println!(
        "{name}: ok ({:?} broker, {} routes, {} subscriptions)",
        config.broker.kind,
        config.routes.len(),
        config.subscriptions.len()
    );
    Ok(())
}

fn serve(arg: &ConfigArg, role: Role) -> anyhow::Result<()> {
    let (file, config) = arg.load()?;
    tracing::info!(config = %file.name, "configuration loaded");
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let grace = config.server.shutdown_timeout.0;
    let signalled = async move {
        shutdown_signal().await;
        exit_after(grace + Duration::from_secs(1));
    };
    let served = runtime.block_on(hookbridge::serve(file, config, role, signalled, |_| {}));
    // What `serve` left running (a blocking broker call, a client's close) is abandoned:
    // everything that must outlive the process was committed and flushed within the
    // shutdown timeout.
    runtime.shutdown_timeout(Duration::from_millis(500));
    served?;
    Ok(())
}

/// Runs a CLI verb that talks to the admin API.
fn run(verb: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(verb)
}

/// The last resort of a shutdown: past `after`, the process exits whatever still runs (a
/// broker client's close that waits for an unreachable broker, say), so that it never
/// outlasts the grace its orchestrator gives it.
fn exit_after(after: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        tracing::error!(
            ?after,
            "the shutdown took longer than server.shutdown_timeout; exiting now"
        );
        std::process::exit(1);
    });
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
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
