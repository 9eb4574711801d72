//! The `hookbridge` command line. Errors from the library are reported here, once, with
//! their full cause chain.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hookbridge::config::{self, Config};
use hookbridge::server::Role;
use hookbridge::telemetry::{self, LogFormat};

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
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The YAML config file. `${VAR}` and `${VAR:-default}` are taken from the environment.
    #[arg(long, short, env = "HOOKBRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn load(&self) -> Result<(String, Config), config::ConfigError> {
        match &self.config {
            Some(path) => Ok((path.display().to_string(), config::load_file(path)?)),
            None => {
                let env = |name: &str| std::env::var(name).ok();
                let parsed =
                    config::load_str(config::DEFAULT_CONFIG_NAME, config::DEFAULT_CONFIG, &env)?;
                Ok((config::DEFAULT_CONFIG_NAME.to_string(), parsed))
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            role,
            log_format,
        } => {
            // Dropped after `serve` returns: the last spans are flushed.
            let _telemetry = telemetry::init(log_format);
            serve(&config, role)
        }
        Command::CheckConfig { config } => check_config(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(arg: &ConfigArg) -> anyhow::Result<()> {
    let (name, config) = arg.load()?;
    println!(
        "{name}: ok ({:?} broker, {} routes, {} subscriptions)",
        config.broker.kind,
        config.routes.len(),
        config.subscriptions.len()
    );
    Ok(())
}

fn serve(arg: &ConfigArg, role: Role) -> anyhow::Result<()> {
    let (name, config) = arg.load()?;
    tracing::info!(config = %name, "configuration loaded");
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(hookbridge::server::serve(
        config,
        role,
        hookbridge::server::shutdown_signal(),
        |_| {},
    ))?;
    Ok(())
}
