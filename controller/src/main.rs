//! `flightdeck`: the controller and the operator's commands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::sync::Arc;

use flightdeck::app::connect;
use flightdeck::config::{LogFormat, Settings};
use flightdeck::metrics::Metrics;
use flightdeck_core::plan::Action;
use tracing_subscriber::EnvFilter;

/// flightdeck turns users' request files in S3 into CloudFormation clusters.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The configuration file, for every command.
#[derive(clap::Args)]
struct ConfigArg {
    /// The configuration file.
    #[arg(long, env = "FLIGHTDECK_CONFIG", default_value = "flightdeck.toml")]
    config: PathBuf,
}

/// A request file to check or render, and whose it is.
#[derive(clap::Args)]
struct RequestArgs {
    /// The request file (`<cluster>.cf-create`).
    file: PathBuf,
    /// The user it is for.
    #[arg(long)]
    user: String,
    /// The cluster name; by default the file's name without `.cf-create`.
    #[arg(long)]
    cluster: Option<String>,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: a full resync every interval, until SIGTERM or Ctrl-C.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// One full pass, then exit (non-zero if the pass could not list).
        #[arg(long)]
        once: bool,
    },
    /// Observe and plan one pass; print what would be done; write nothing.
    Plan {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check a request against the policy, offline: exit 0 when admitted, else print what
    /// the user would read in `.cf-failed` and exit 1.
    Validate(RequestArgs),
    /// Print the stack name, Parameters and Tags a request would be sent with, offline.
    Render(RequestArgs),
    /// Enrol a user: create `customizer/USER/configure.d/` from the defaults, with their key.
    Enrol {
        /// The user's IAM user name.
        user: String,
        /// Their SSH public key file (one or more keys).
        #[arg(long, required_unless_present = "from_seed_script")]
        ssh_key: Option<PathBuf>,
        /// Or their older design's (af-user) `configure.d/user.sh`: its `pubkey=` is used.
        #[arg(long, conflicts_with = "ssh_key")]
        from_seed_script: Option<PathBuf>,
        /// Replace an existing folder.
        #[arg(long)]
        force: bool,
        /// The default scripts to copy.
        #[arg(long, default_value = "customizer/default/configure.d")]
        defaults: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Take over the older design's (af-user) stacks; a dry run unless --apply.
    Adopt {
        /// Adopt: write missing requests, then tag the stacks.
        #[arg(long)]
        apply: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check a configured install, one line each: exit 0 when all is well, 1 when something
    /// is broken (or not checked, without --allow-unchecked), 2 when AWS cannot be asked.
    Doctor {
        #[command(flatten)]
        config: ConfigArg,
        /// Pass even when a check could not be made (e.g. no IAM policy simulation).
        #[arg(long)]
        allow_unchecked: bool,
    },
}

impl RequestArgs {
    /// The settings, the user, the cluster name (by default the file's name without
    /// `.cf-create`), the request's bytes and the file.
    fn read(self) -> anyhow::Result<(Settings, String, String, Vec<u8>, PathBuf)> {
        let settings = Settings::load(&self.config.config, std::env::vars())?;
        let body = std::fs::read(&self.file)
            .with_context(|| format!("cannot read {}", self.file.display()))?;
        let cluster = self
            .cluster
            .or_else(|| flightdeck::offline::cluster_of_file(&self.file))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} is not named <cluster>.cf-create: give --cluster",
                    self.file.display()
                )
            })?;
        Ok((settings, self.user, cluster, body, self.file))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command.execute().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flightdeck: {e:#}");
            ExitCode::from(2)
        }
    }
}

impl Command {
    async fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            Command::Validate(args) => {
                let (settings, user, cluster, body, file) = args.read()?;
                match flightdeck::offline::validate(&settings, &user, &cluster, &body)
                    .map_err(anyhow::Error::msg)?
                {
                    None => {
                        println!(
                            "admitted: {} for {user} as cluster {cluster}",
                            file.display()
                        );
                        Ok(ExitCode::SUCCESS)
                    }
                    Some(failed) => {
                        print!("{failed}");
                        Ok(ExitCode::FAILURE)
                    }
                }
            }
            Command::Render(args) => {
                let (settings, user, cluster, body, _) = args.read()?;
                match flightdeck::offline::render(&settings, &user, &cluster, &body) {
                    Ok(spec) => {
                        let out = serde_json::json!({
                            "StackName": spec.name,
                            "Parameters": spec.parameters.iter().map(|(k, v)| serde_json::json!({"ParameterKey": k, "ParameterValue": v})).collect::<Vec<_>>(),
                            "Tags": spec.tags.iter().map(|(k, v)| serde_json::json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
                        });
                        println!("{}", serde_json::to_string_pretty(&out)?);
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(failed) => {
                        print!("{failed}");
                        Ok(ExitCode::FAILURE)
                    }
                }
            }
            Command::Enrol {
                user,
                ssh_key,
                from_seed_script,
                force,
                defaults,
                config,
            } => {
                let settings = load(&config.config)?;
                let file = ssh_key.or(from_seed_script.clone()).unwrap_or_default();
                let mut keys = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                if from_seed_script.is_some() {
                    keys = flightdeck::enrol::keys_from_seed_script(&keys, &user)
                        .with_context(|| format!("{}", file.display()))?;
                }
                let metrics = Arc::new(Metrics::new(false));
                let fence = flightdeck::leader::Fence::command(metrics.clone());
                let cloud = flightdeck::app::aws_cloud(&settings, &metrics, &fence).await;
                let done = flightdeck::enrol::enrol(
                    &cloud.customizer,
                    &flightdeck::enrol::Enrolment {
                        user: &user,
                        ssh_keys: &keys,
                        default_dir: &defaults,
                        prefix: &settings.enrolment.prefix,
                        force,
                    },
                )
                .await?;
                for key in &done.written {
                    println!("wrote s3://{}/{key}", settings.enrolment.bucket);
                }
                for key in &done.removed {
                    println!("removed s3://{}/{key}", settings.enrolment.bucket);
                }
                println!("{user} is enrolled");
                Ok(ExitCode::SUCCESS)
            }
            Command::Adopt { apply, config } => {
                let metrics = Arc::new(Metrics::new(false));
                // An operator's command, idempotent, and careful never to overwrite a
                // request: it needs no lease (the controller may run meanwhile).
                let fence = flightdeck::leader::Fence::command(metrics.clone());
                let rec = connect(load(&config.config)?, metrics, &fence).await?;
                let lines = flightdeck::adopt::adopt(&rec, apply).await?;
                for line in &lines {
                    println!("{line}");
                }
                if lines.is_empty() {
                    println!("no stack of the older design (a live stack tagged `project`)");
                }
                Ok(if lines.iter().any(flightdeck::adopt::Line::failed) {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                })
            }
            Command::Doctor {
                config,
                allow_unchecked,
            } => {
                let report = flightdeck::doctor::run(&config.config, std::env::vars()).await;
                print!("{report}");
                Ok(ExitCode::from(report.exit_code(allow_unchecked)))
            }
            Command::Run { config, once } => {
                flightdeck::app::serve_and_run(load(&config.config)?, once, shutdown_signal())
                    .await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Plan { config } => {
                let settings = load(&config.config)?;
                let metrics = Arc::new(Metrics::new(false));
                // A plan changes nothing, so it needs no lease.
                let rec = connect(
                    settings,
                    metrics.clone(),
                    &flightdeck::leader::Fence::command(metrics.clone()),
                )
                .await?;
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
                Ok(ExitCode::SUCCESS)
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
        Action::Remove { key, .. } => format!("remove {key}"),
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
