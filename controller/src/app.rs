//! Start-up: from validated settings to a reconciler on the real AWS adapters. Every check
//! that can catch an operator's mistake runs here, before the first resync, and names the
//! setting at fault.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use flightdeck_core::request::{ParameterRule, RequestRules, RulesError};

use crate::aws::cloudformation::CloudFormation;
use crate::aws::ec2::Ec2;
use crate::aws::s3::S3Store;
use crate::aws::ses::Ses;
use crate::aws::{AwsSettings, load};
use std::sync::Arc;

use crate::config::Settings;
use crate::http::{Endpoint, Health, Limits, Listener, Serves, serve};
use crate::instrument::{Instrumented, Limiter};
use crate::leader::{Fence, Fenced, LEASE_OBJECT, elect};
use crate::metrics::Metrics;
use crate::ports::{ErrorKind, Instances, Mailer, ObjectStore, StackService};
use crate::queue::WorkQueue;
use crate::reconcile::{Cloud, Reconciler};
use crate::run::run;

/// An adapter whose calls are counted, and whose mutating calls need the fence's permit.
pub type Guarded<T> = Fenced<Instrumented<T>>;

/// The reconciler on the real AWS adapters.
pub type AwsReconciler =
    Reconciler<Guarded<S3Store>, Guarded<CloudFormation>, Guarded<Ec2>, Guarded<Ses>>;

/// The real adapters.
pub type AwsCloud = Cloud<Guarded<S3Store>, Guarded<CloudFormation>, Guarded<Ec2>, Guarded<Ses>>;

/// What every real adapter is wrapped in: its service's limiter, the metrics, the fence.
struct Guard {
    limiter: Arc<Limiter>,
    metrics: Arc<Metrics>,
    fence: Arc<Fence>,
}

impl Guard {
    fn wrap<T>(self, inner: T) -> Guarded<T> {
        Fenced::new(
            Instrumented::new(inner, self.metrics).limited(self.limiter),
            self.fence,
        )
    }
}

/// The real AWS adapters for `settings`, counting their calls into `metrics`, each
/// mutating call made only with `fence`'s permit.
pub async fn aws_cloud(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    fence: &Arc<Fence>,
) -> AwsCloud {
    let aws = AwsSettings {
        region: settings.region.clone(),
        endpoint_url: settings.endpoint_url.clone(),
    };
    let conf = load(&aws).await;
    let path_style = aws.s3_path_style();
    let customizer_bucket = settings.enrolment.bucket.clone();
    let rates = &settings.rates;
    let s3 = Limiter::new("s3", rates.s3, metrics.clone());
    let guarded = |limiter: &Arc<Limiter>| Guard {
        limiter: limiter.clone(),
        metrics: metrics.clone(),
        fence: fence.clone(),
    };
    Cloud {
        store: guarded(&s3).wrap(S3Store::new(&conf, settings.bucket.clone(), path_style)),
        customizer: guarded(&s3).wrap(S3Store::new(&conf, customizer_bucket, path_style)),
        stacks: guarded(&Limiter::new(
            "cloudformation",
            rates.cloudformation,
            metrics.clone(),
        ))
        .wrap(CloudFormation::new(&conf)),
        instances: guarded(&Limiter::new("ec2", rates.ec2, metrics.clone())).wrap(Ec2::new(&conf)),
        mailer: settings.notify.as_ref().map(|n| {
            guarded(&Limiter::new("sesv2", rates.sesv2, metrics.clone()))
                .wrap(Ses::new(&conf, n.from.clone()))
        }),
    }
}

/// Builds the AWS clients, then [`checked`].
///
/// # Errors
/// As [`checked`].
pub async fn connect(
    settings: Settings,
    metrics: Arc<Metrics>,
    fence: &Arc<Fence>,
) -> anyhow::Result<AwsReconciler> {
    let cloud = aws_cloud(&settings, &metrics, fence).await;
    checked(cloud, settings, metrics).await
}

/// Checks the buckets and the template against `cloud`, derives the request rules from the
/// template's parameters, and returns the reconciler.
///
/// # Errors
/// A message naming the setting at fault (bucket, customizer bucket, template, fixed,
/// user or updatable parameters), or the AWS call that failed.
pub async fn checked<S, C, E, M>(
    cloud: Cloud<S, C, E, M>,
    settings: Settings,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Reconciler<S, C, E, M>>
where
    S: ObjectStore,
    C: StackService,
    E: Instances,
    M: Mailer,
{
    if let Err(e) = cloud.store.any_under(&settings.home_prefix).await {
        let hint = match e.kind {
            ErrorKind::NotFound => "the bucket does not exist",
            ErrorKind::Denied => "the controller's credentials may not list it",
            _ => "AWS did not answer as expected",
        };
        bail!(
            "setting `bucket.name`: cannot list s3://{}/{}: {hint} ({e})",
            settings.bucket,
            settings.home_prefix
        );
    }
    let enrolment = &settings.enrolment;
    if let Err(e) = cloud.customizer.any_under(&enrolment.prefix).await {
        bail!(
            "setting `customizer.bucket`: cannot list s3://{}/{}: {e}",
            enrolment.bucket,
            enrolment.prefix
        );
    }
    let parameters = cloud
        .stacks
        .template_parameters(&settings.template)
        .await
        .context("setting `stacks.template`: CloudFormation could not read the template")?;
    let rules = request_rules(&parameters, &settings).map_err(anyhow::Error::msg)?;
    let rec = Reconciler::new(cloud, settings, rules, metrics);
    rec.load_delivered()
        .await
        .context("reading which notifications went out (bucket.controller_prefix)")?;
    Ok(rec)
}

/// The template's parameters and the settings disagree: which setting is at fault, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("setting `{setting}`: {error}")]
pub struct RulesMismatch {
    /// `policy`, `stacks.parameters` or `stacks.template`.
    pub setting: &'static str,
    /// What disagrees.
    pub error: RulesError,
}

/// The request rules from the template's `parameters` (GetTemplateSummary) and the
/// settings' fixed and user parameters.
///
/// # Errors
/// [`RulesMismatch`] naming the setting at fault.
pub fn request_rules(
    parameters: &BTreeMap<String, ParameterRule>,
    settings: &Settings,
) -> Result<RequestRules, RulesMismatch> {
    RequestRules::new(
        parameters,
        &settings.fixed_parameters,
        &settings.user_parameters,
    )
    .map_err(|error| {
        let setting = match &error {
            RulesError::UnknownSettable(_) | RulesError::SettableFixed(_) => "policy",
            RulesError::UnknownFixed(name) if settings.policy.fixed.contains_key(name) => "policy",
            RulesError::UnknownFixed(_) => "stacks.parameters",
            RulesError::MissingReserved(_) => "stacks.template",
        };
        RulesMismatch { setting, error }
    })
}

/// Runs the controller: the HTTP endpoint and the control loop side by side, until
/// `shutdown` completes (or after one full pass with `once`).
///
/// # Errors
/// A setting at fault at start-up (listen address, buckets, template, policy), or with
/// `once` the listing that failed.
pub async fn serve_and_run(
    settings: Settings,
    once: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new(settings.per_user_metrics));
    let listeners = listeners(&settings.http).await?;
    let election = &settings.election;
    let fence = if election.enabled {
        tracing::info!(replica = %election.identity, "standing by until this replica holds the leader lease");
        Fence::elected(&election.identity, election.timing, metrics.clone())
    } else {
        tracing::warn!("leader election is off (election.enabled = false): run one replica only");
        Fence::unelected(&election.identity, metrics.clone())
    };
    let rec = Arc::new(connect(settings, metrics.clone(), &fence).await?);
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
        fence: fence.clone(),
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
        shutdown.await;
        let _ = stop.send(true);
    });
    let server = tokio::spawn(serve(listeners, endpoint, until_stopped()));
    // The elector outlives the control loop: the clusters in hand at a shutdown may still
    // need the lease. It is stopped (and gives the lease up) once the loop has returned.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let elector = {
        let (rec, fence, health) = (rec.clone(), fence.clone(), health.clone());
        let key = format!("{}{LEASE_OBJECT}", settings.controller_prefix);
        tokio::spawn(async move {
            // The lease is renewed outside the bucket's token bucket: a backlog of calls
            // waiting for tokens must never make the leader miss its renew deadline.
            let store = Instrumented::new(
                rec.cloud().store.inner().inner().clone(),
                rec.metrics().clone(),
            );
            elect(&store, &key, &fence, &health, async {
                let _ = released.await;
            })
            .await;
        })
    };
    let result = run(rec, queue, health, fence, once, until_stopped()).await;
    let _ = release.send(());
    let _ = elector.await;
    if once {
        server.abort();
    } else {
        let _ = server.await;
    }
    result.context("resync failed")
}

/// Binds `http.listen`, and `http.metrics_listen` when set: `/metrics` and the probes then
/// have their own listener and connection budget, which hint traffic cannot use up.
///
/// # Errors
/// The setting whose address cannot be listened on.
async fn listeners(http: &crate::config::Http) -> anyhow::Result<Vec<Listener>> {
    let bind = |setting: &'static str, address| async move {
        tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("setting `{setting}`: cannot listen on {address}"))
    };
    let limits = Limits::new(http.max_connections);
    let listen = http.listen;
    let main = bind("http.listen", listen).await?;
    let Some(metrics_listen) = http.metrics_listen else {
        tracing::info!(%listen, "serving /metrics, /healthz, /readyz and /hints");
        return Ok(vec![Listener::new(main, Serves::Everything, limits)]);
    };
    let metrics = bind("http.metrics_listen", metrics_listen).await?;
    tracing::info!(%listen, "serving /healthz, /readyz and /hints");
    tracing::info!(%metrics_listen, "serving /metrics, /healthz and /readyz");
    Ok(vec![
        Listener::new(main, Serves::HintsAndProbes, limits.clone()),
        Listener::new(metrics, Serves::MetricsAndProbes, limits),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeInstances, FakeMailer, FakeStacks, FakeStore};

    fn settings() -> Settings {
        let dir = std::env::temp_dir().join(format!(
            "flightdeck-app-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.yaml"), "Resources: {}\n").unwrap();
        let config = dir.join("c.toml");
        let text = format!(
            "instance = \"i\"\npolicy = \"{}\"\n[bucket]\nname = \"users\"\n[stacks]\ntemplate = \"{}\"\n[customizer]\nbucket = \"cust\"\n",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../policies/limits.toml")
                .display(),
            dir.join("t.yaml").display()
        );
        std::fs::write(&config, text).unwrap();
        let s = Settings::load(&config, []).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        s
    }

    fn cloud(parameters: &[&str]) -> Cloud<FakeStore, FakeStacks, FakeInstances, FakeMailer> {
        let stacks = FakeStacks::default();
        *stacks.parameters.lock().unwrap() = parameters
            .iter()
            .map(|p| (p.to_string(), ParameterRule::default()))
            .collect::<BTreeMap<_, _>>();
        Cloud {
            store: FakeStore::default(),
            customizer: FakeStore::default(),
            stacks,
            instances: FakeInstances::default(),
            mailer: None,
        }
    }

    fn error(
        cloud: Cloud<FakeStore, FakeStacks, FakeInstances, FakeMailer>,
        settings: Settings,
    ) -> String {
        let result = tokio::runtime::Runtime::new().unwrap().block_on(checked(
            cloud,
            settings,
            Arc::new(Metrics::new(false)),
        ));
        format!("{:#}", result.err().expect("start-up should fail"))
    }

    #[test]
    fn an_unlistable_bucket_stops_start_up_naming_the_setting() {
        let c = cloud(&[]);
        c.store.fail("ListObjectsV2", ErrorKind::NotFound, 1);
        let e = error(c, settings());
        assert!(
            e.starts_with(
                "setting `bucket.name`: cannot list s3://users/home/: the bucket does not exist"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_template_without_the_user_parameters_stops_start_up() {
        let e = error(
            cloud(&["AccessUsername", "FlightProfiles", "CustomizerPrefix"]),
            settings(),
        );
        assert!(
            e.starts_with("setting `policy`: user parameter `AutoscalingPolicy` is not a parameter of the template"),
            "{e}"
        );
    }
}
