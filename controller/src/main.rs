//! `flightdeck`: the controller and the operator's commands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::sync::Arc;
use std::time::Duration;

use flightdeck::app::connect;
use flightdeck::config::{LogFormat, Settings};
use flightdeck::http::{Endpoint, Health, serve};
use flightdeck::metrics::Metrics;
use flightdeck::queue::WorkQueue;
use flightdeck::run::run;
use flightdeck_core::plan::Action;
use tracing_subscriber::EnvFilter;

/// flightdeck turns users' request files in S3 into CloudFormation clusters.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: a full resync every interval, until SIGTERM or Ctrl-C.
    Run {
        /// The configuration file.
        #[arg(long, env = "FLIGHTDECK_CONFIG", default_value = "flightdeck.toml")]
        config: PathBuf,
        /// One full pass, then exit (non-zero if the pass could not list).
        #[arg(long)]
        once: bool,
    },
    /// Observe and plan one pass; print what would be done; write nothing.
    Plan {
        /// The configuration file.
        #[arg(long, env = "FLIGHTDECK_CONFIG", default_value = "flightdeck.toml")]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command.execute().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flightdeck: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    async fn execute(self) -> anyhow::Result<()> {
        match self {
            Command::Run { config, once } => {
                let settings = load(&config)?;
                let metrics = Arc::new(Metrics::new(settings.per_user_metrics));
                let listen = settings.http.listen;
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("setting `http.listen`: cannot listen on {listen}"))?;
                let rec = Arc::new(connect(settings, metrics.clone()).await?);
                let settings = rec.settings();
                let queue = Arc::new(WorkQueue::new(metrics.clone()));
                let health = Arc::new(Health::new(
                    settings.resync_interval * 3 + Duration::from_secs(60),
                ));
                let endpoint = Arc::new(Endpoint {
                    metrics,
                    health: health.clone(),
                    queue: queue.clone(),
                    hint_token: settings.http.hint_token.clone(),
                    max_hint_bytes: settings.http.max_hint_bytes,
                    bucket: settings.bucket.clone(),
                    home_prefix: settings.home_prefix.clone(),
                });
                if endpoint.hint_token.is_none() {
                    tracing::info!(
                        "hints are off: set FLIGHTDECK_HINT_TOKEN or http.hint_token_file to turn them on"
                    );
                }
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let until_stopped = move || {
                    let mut rx = stopped.clone();
                    async move {
                        let _ = rx.wait_for(|s| *s).await;
                    }
                };
                tokio::spawn(async move {
                    shutdown_signal().await;
                    let _ = stop.send(true);
                });
                tracing::info!(%listen, "serving /metrics, /healthz, /readyz and /hints");
                let server = tokio::spawn(serve(listener, endpoint, until_stopped()));
                let result = run(rec, queue, health, once, until_stopped()).await;
                if once {
                    server.abort();
                } else {
                    let _ = server.await;
                }
                result.context("resync failed")?;
                Ok(())
            }
            Command::Plan { config } => {
                let settings = load(&config)?;
                let rec = connect(settings, Arc::new(Metrics::new(false))).await?;
                let report = rec
                    .resync(true, None)
                    .await
                    .context("listing failed; nothing planned")?;
                let mut any = false;
                for (key, outcome) in &report.outcomes {
                    for action in outcome
                        .actions
                        .iter()
                        .filter(|a| **a != Action::LookAgainSoon)
                    {
                        println!("{key}: {}", describe(action));
                        any = true;
                    }
                }
                for action in &report.mistake_actions {
                    println!("mistake: {}", describe(action));
                    any = true;
                }
                if !any {
                    println!("nothing to do");
                }
                Ok(())
            }
        }
    }
}

fn load(config: &std::path::Path) -> anyhow::Result<Settings> {
    let settings = Settings::load(config, std::env::vars())?;
    init_logging(settings.log_format);
    Ok(settings)
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// One line for a person reading a plan.
fn describe(action: &Action) -> String {
    match action {
        Action::CreateStack(s) => format!(
            "create stack {} ({} parameters)",
            s.name,
            s.parameters.len()
        ),
        Action::UpdateStack(s) => format!("update stack {}", s.name),
        Action::DeleteStack { name, .. } => format!("delete stack {name}"),
        Action::Put { key, .. } => format!("write {key}"),
        Action::Remove { key } => format!("remove {key}"),
        Action::Notify(n) => format!("notify {:?}", n.event),
        Action::LookAgainSoon => "look again soon".into(),
    }
}

/// Completes on SIGTERM (containers) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
