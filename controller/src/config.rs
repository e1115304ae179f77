//! The operator's configuration: a TOML file, then `FLIGHTDECK_*` environment overrides.
//!
//! Every mistake stops start-up with the setting's name and the reason. Unknown keys are
//! mistakes too (a misspelt setting must not be silently ignored).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flightdeck_core::identity::Identity;
use flightdeck_core::orphan::{OrphanPolicy, OrphanSettings};
use flightdeck_core::policy::{Policy, parse_duration};
use flightdeck_core::rate::Rate;
use serde::Deserialize;

use crate::ports::Template;

/// CloudFormation's limit on an inline template body.
pub const MAX_TEMPLATE_BODY: usize = 51_200;

/// Sections of the file, for the environment overrides.
const SECTIONS: [&str; 9] = [
    "bucket",
    "rate",
    "election",
    "stacks",
    "customizer",
    "reconcile",
    "notify",
    "http",
    "metrics",
];
/// Top-level keys, for the environment overrides.
const TOP_LEVEL: [&str; 5] = ["instance", "region", "endpoint_url", "log_format", "policy"];
/// `FLIGHTDECK_PARAMETER_<Name>` sets the fixed template parameter `<Name>`.
const PARAMETER_ENV: &str = "PARAMETER_";
/// The hint token, when not in a file (`http.hint_token_file`).
pub const HINT_TOKEN_ENV: &str = "FLIGHTDECK_HINT_TOKEN";
/// Shortest hint token accepted.
const MIN_TOKEN_LEN: usize = 16;

/// A configuration the controller cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a setting has the wrong type or is unknown.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's words, with line and column.
        message: String,
    },
    /// The policy file does not parse or contradicts itself.
    #[error("policy file {path}, line {line}: {reason}")]
    Policy {
        /// The file.
        path: PathBuf,
        /// The line at fault (0: the file as a whole).
        line: usize,
        /// Why.
        reason: String,
    },
    /// A setting has a value that cannot work.
    #[error("setting `{setting}`: {reason}")]
    Invalid {
        /// Which setting, e.g. `reconcile.resync_interval`.
        setting: String,
        /// Why, and what would work.
        reason: String,
    },
}

fn invalid(setting: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.to_owned(),
        reason: reason.into(),
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines.
    #[default]
    Text,
    /// One JSON object per line (containers).
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    instance: String,
    region: Option<String>,
    endpoint_url: Option<String>,
    #[serde(default)]
    log_format: LogFormat,
    bucket: BucketFile,
    stacks: StacksFile,
    #[serde(default)]
    customizer: CustomizerFile,
    #[serde(default)]
    reconcile: ReconcileFile,
    #[serde(default)]
    notify: NotifyFile,
    #[serde(default)]
    http: HttpFile,
    #[serde(default)]
    metrics: MetricsFile,
    #[serde(default)]
    election: ElectionFile,
    #[serde(default)]
    rate: RateFile,
    #[serde(default = "default_policy")]
    policy: PathBuf,
}

fn default_policy() -> PathBuf {
    "policies/limits.toml".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default)]
    hint_token_file: String,
    #[serde(default = "default_max_hint_bytes")]
    max_hint_bytes: usize,
    #[serde(default)]
    metrics_listen: String,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
}

impl Default for HttpFile {
    fn default() -> Self {
        HttpFile {
            listen: default_listen(),
            hint_token_file: String::new(),
            max_hint_bytes: default_max_hint_bytes(),
            metrics_listen: String::new(),
            max_connections: default_max_connections(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ElectionFile {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_lease")]
    lease_duration: String,
    #[serde(default = "default_renew_deadline")]
    renew_deadline: String,
    #[serde(default = "default_retry_period")]
    retry_period: String,
    #[serde(default)]
    identity: String,
}

impl Default for ElectionFile {
    fn default() -> Self {
        ElectionFile {
            enabled: true,
            lease_duration: default_lease(),
            renew_deadline: default_renew_deadline(),
            retry_period: default_retry_period(),
            identity: String::new(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_lease() -> String {
    "15s".into()
}
fn default_renew_deadline() -> String {
    "10s".into()
}
fn default_retry_period() -> String {
    "2s".into()
}

/// Each service's token bucket. client-go's 10 queries a second, bursts of 100, for the
/// control-plane services; S3, which serves thousands a second per prefix, gets more, so
/// that a bucket of a million files lists in seconds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateFile {
    #[serde(default = "default_s3_qps")]
    s3_qps: f64,
    #[serde(default = "default_s3_burst")]
    s3_burst: u32,
    #[serde(default = "default_qps")]
    cloudformation_qps: f64,
    #[serde(default = "default_burst")]
    cloudformation_burst: u32,
    #[serde(default = "default_qps")]
    ec2_qps: f64,
    #[serde(default = "default_burst")]
    ec2_burst: u32,
    #[serde(default = "default_qps")]
    sesv2_qps: f64,
    #[serde(default = "default_burst")]
    sesv2_burst: u32,
}

impl Default for RateFile {
    fn default() -> Self {
        RateFile {
            s3_qps: default_s3_qps(),
            s3_burst: default_s3_burst(),
            cloudformation_qps: default_qps(),
            cloudformation_burst: default_burst(),
            ec2_qps: default_qps(),
            ec2_burst: default_burst(),
            sesv2_qps: default_qps(),
            sesv2_burst: default_burst(),
        }
    }
}

fn default_s3_qps() -> f64 {
    100.0
}
fn default_s3_burst() -> u32 {
    1000
}
fn default_qps() -> f64 {
    10.0
}
fn default_burst() -> u32 {
    100
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    #[serde(default)]
    per_user: bool,
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_max_hint_bytes() -> usize {
    256 * 1024
}
fn default_max_connections() -> usize {
    256
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BucketFile {
    name: String,
    #[serde(default = "default_home")]
    home_prefix: String,
    #[serde(default = "default_controller_prefix")]
    controller_prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StacksFile {
    #[serde(default = "default_prefix")]
    prefix: String,
    template: PathBuf,
    #[serde(default = "default_login_output")]
    login_output: String,
    #[serde(default = "default_login_resource")]
    login_resource: String,
    #[serde(default)]
    service_role_arn: String,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomizerFile {
    #[serde(default)]
    bucket: String,
    #[serde(default = "default_customizer_prefix")]
    prefix: String,
}

impl Default for CustomizerFile {
    fn default() -> Self {
        CustomizerFile {
            bucket: String::new(),
            prefix: default_customizer_prefix(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileFile {
    #[serde(default = "default_resync")]
    resync_interval: String,
    #[serde(default = "default_busy")]
    busy_interval: String,
    #[serde(default = "default_grace")]
    orphan_grace: String,
    #[serde(default = "default_max_orphans")]
    max_orphan_deletes: usize,
    #[serde(default = "default_orphan_policy")]
    orphan_policy: OrphanPolicy,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default = "default_pass_deadline")]
    pass_deadline: String,
    #[serde(default = "default_max_expiry_deletes")]
    max_expiry_deletes: usize,
    #[serde(default = "default_expiry_grace")]
    expiry_grace: String,
    #[serde(default = "default_max_clock_skew")]
    max_clock_skew: String,
    #[serde(default = "default_per_user_work")]
    per_user_work: usize,
}

impl Default for ReconcileFile {
    fn default() -> Self {
        ReconcileFile {
            resync_interval: default_resync(),
            busy_interval: default_busy(),
            orphan_grace: default_grace(),
            max_orphan_deletes: default_max_orphans(),
            orphan_policy: default_orphan_policy(),
            concurrency: default_concurrency(),
            pass_deadline: default_pass_deadline(),
            max_expiry_deletes: default_max_expiry_deletes(),
            expiry_grace: default_expiry_grace(),
            max_clock_skew: default_max_clock_skew(),
            per_user_work: default_per_user_work(),
        }
    }
}

fn default_pass_deadline() -> String {
    "15m".into()
}
fn default_max_expiry_deletes() -> usize {
    10
}
fn default_expiry_grace() -> String {
    "1h".into()
}
fn default_max_clock_skew() -> String {
    "2m".into()
}
fn default_per_user_work() -> usize {
    50
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyFile {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    from: String,
    #[serde(default)]
    operator: Vec<String>,
    #[serde(default)]
    users: BTreeMap<String, String>,
    #[serde(default)]
    user_domain: String,
    #[serde(default)]
    lifetime_warning: Option<String>,
    #[serde(default)]
    per_user_hour: Option<u32>,
}

fn default_per_user_hour() -> u32 {
    6
}

fn default_home() -> String {
    "home/".into()
}
fn default_controller_prefix() -> String {
    "flightdeck/".into()
}
fn default_prefix() -> String {
    "fd".into()
}
fn default_login_output() -> String {
    "LoginIp".into()
}
fn default_login_resource() -> String {
    "Master".into()
}
fn default_customizer_prefix() -> String {
    "customizer/".into()
}
fn default_resync() -> String {
    "60s".into()
}
fn default_busy() -> String {
    "15s".into()
}
fn default_grace() -> String {
    "10m".into()
}
fn default_max_orphans() -> usize {
    5
}
fn default_orphan_policy() -> OrphanPolicy {
    OrphanPolicy::Delete
}
fn default_concurrency() -> usize {
    8
}

/// Where the customizer folders are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// The customizer bucket.
    pub bucket: String,
    /// Its prefix, e.g. `customizer/`; a user is enrolled when `<prefix><user>/configure.d/`
    /// holds an object.
    pub prefix: String,
}

impl Enrolment {
    /// The folder whose presence enrols `user`.
    pub fn folder(&self, user: &str) -> String {
        format!("{}{user}/configure.d/", self.prefix)
    }
}

/// Email notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// Sender address (an SES identity).
    pub from: String,
    /// Operator addresses.
    pub operator: Vec<String>,
    /// Users' own addresses, by user name.
    pub users: BTreeMap<String, String>,
    /// When set, a user without an entry in `users` gets `<user>@<domain>` (or their user
    /// name itself when it is an address).
    pub user_domain: Option<String>,
}

impl Notify {
    /// Who hears about `user`'s cluster: the operators, and the user when an address is known.
    pub fn recipients(&self, user: &str) -> Vec<String> {
        let mut to = self.operator.clone();
        let own = self.users.get(user).cloned().or_else(|| {
            self.user_domain.as_ref().map(|d| {
                if user.contains('@') {
                    user.to_owned()
                } else {
                    format!("{user}@{d}")
                }
            })
        });
        if let Some(address) = own
            && !to.contains(&address)
        {
            to.push(address);
        }
        to
    }
}

/// The HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http {
    /// Listen address.
    pub listen: std::net::SocketAddr,
    /// Bearer token for `POST /hints`; `None` turns hints off.
    pub hint_token: Option<String>,
    /// Largest hint body accepted.
    pub max_hint_bytes: usize,
    /// Where `/metrics` is served instead (with the probes); `None`: on `listen`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Connections open at once on each listener.
    pub max_connections: usize,
}

/// Leader election among replicas (`[election]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Election {
    /// Whether replicas elect a leader; off, this replica always acts (run one only).
    pub enabled: bool,
    /// Lease, renew deadline and retry period.
    pub timing: flightdeck_core::lease::Timing,
    /// This replica's name in the lease and the logs.
    pub identity: String,
}

/// How fast each AWS service may be called (`[rate]`): one token bucket per service,
/// shared by every call this replica makes to it but the leader lease's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// S3.
    pub s3: Rate,
    /// CloudFormation.
    pub cloudformation: Rate,
    /// EC2.
    pub ec2: Rate,
    /// SES.
    pub sesv2: Rate,
}

impl Default for Rates {
    /// `[rate]`'s defaults.
    fn default() -> Self {
        let (qps, burst) = (default_qps(), default_burst());
        Rates {
            s3: Rate {
                qps: default_s3_qps(),
                burst: default_s3_burst(),
            },
            cloudformation: Rate { qps, burst },
            ec2: Rate { qps, burst },
            sesv2: Rate { qps, burst },
        }
    }
}

/// The validated settings the controller runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Stack prefix and owner tag.
    pub identity: Identity,
    /// AWS region; `None` takes the standard chain's.
    pub region: Option<String>,
    /// Endpoint for an S3-compatible store or the local emulator.
    pub endpoint_url: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// The users' bucket.
    pub bucket: String,
    /// Users' home prefix, ending in `/`.
    pub home_prefix: String,
    /// The controller's own prefix in the bucket, ending in `/`.
    pub controller_prefix: String,
    /// The cluster template and service role.
    pub template: Template,
    /// Admin-fixed template parameters (`${user}`, `${cluster}` substituted).
    pub fixed_parameters: BTreeMap<String, String>,
    /// Parameters users may set in a request (the policy's `[parameters]`).
    pub user_parameters: BTreeSet<String>,
    /// Parameters that may change on a running cluster (the policy's `updatable`).
    pub updatable: BTreeSet<String>,
    /// The admission policy.
    pub policy: Policy,
    /// The template output holding the login address.
    pub login_output: String,
    /// The login instance's logical id, for the EC2 fallback.
    pub login_resource: String,
    /// Where users' customizer folders are (the policy says whether one is required).
    pub enrolment: Enrolment,
    /// Full resync period.
    pub resync_interval: Duration,
    /// How soon to look again at a cluster whose stack is changing.
    pub busy_interval: Duration,
    /// Orphan guard settings.
    pub orphans: OrphanSettings,
    /// Clusters reconciled at once.
    pub concurrency: usize,
    /// Notifications, when enabled.
    pub notify: Option<Notify>,
    /// How long before a cluster's lifetime ends its user is warned.
    pub lifetime_warning: Duration,
    /// The HTTP endpoint.
    pub http: Http,
    /// Per-user metric series.
    pub per_user_metrics: bool,
    /// Bounds on what one pass, one user or a wrong clock can do.
    pub guards: Guards,
    /// Leader election among replicas.
    pub election: Election,
    /// Each AWS service's token bucket.
    pub rates: Rates,
}

/// Bounds that keep a slow pass, one user's files and a wrong clock from doing harm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guards {
    /// A full resync still running after this long is stopped, logged, counted and alerted
    /// (`reconcile.pass_deadline`).
    pub pass_deadline: Duration,
    /// Most clusters deleted in one pass because their lifetime ended; more at once deletes
    /// none (`reconcile.max_expiry_deletes`).
    pub max_expiry_deletes: usize,
    /// A cluster first seen past the end of its lifetime lives this much longer, and its
    /// user is warned (`reconcile.expiry_grace`).
    pub expiry_grace: Duration,
    /// Nothing is expired while this clock and AWS's differ by more
    /// (`reconcile.max_clock_skew`).
    pub max_clock_skew: Duration,
    /// Requests read and explanations written for one user in one pass; the rest wait for
    /// the next pass (`reconcile.per_user_work`).
    pub per_user_work: usize,
    /// Notices one user's clusters may send in an hour; the rest wait in the outbox
    /// (`notify.per_user_hour`).
    pub notices_per_user_hour: u32,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            pass_deadline: Duration::from_secs(15 * 60),
            max_expiry_deletes: default_max_expiry_deletes(),
            expiry_grace: Duration::from_secs(3600),
            max_clock_skew: Duration::from_secs(120),
            per_user_work: default_per_user_work(),
            notices_per_user_hour: default_per_user_hour(),
        }
    }
}

impl Settings {
    /// Reads `path`, applies `FLIGHTDECK_*` overrides from `env`, and validates. A relative
    /// template path is taken from the current directory.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or setting and the reason.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| parse_error(e.to_string()))?;
        let env: Vec<(String, String)> = env.into_iter().collect();
        let env_token = env
            .iter()
            .find(|(k, _)| k == HINT_TOKEN_ENV)
            .map(|(_, v)| v.clone());
        apply_env(&mut table, env)?;
        let file: File = table
            .try_into()
            .map_err(|e: toml::de::Error| parse_error(e.to_string()))?;
        let template_body = std::fs::read_to_string(&file.stacks.template).map_err(|e| {
            invalid(
                "stacks.template",
                format!("cannot read {}: {e}", file.stacks.template.display()),
            )
        })?;
        let policy_text = std::fs::read_to_string(&file.policy).map_err(|e| {
            invalid(
                "policy",
                format!("cannot read {}: {e}", file.policy.display()),
            )
        })?;
        let policy = Policy::parse(&policy_text).map_err(|e| ConfigError::Policy {
            path: file.policy.clone(),
            line: e.line,
            reason: e.reason,
        })?;
        validate(file, template_body, policy, env_token)
    }
}

fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("FLIGHTDECK_") else {
            continue;
        };
        if let Some(parameter) = rest.strip_prefix(PARAMETER_ENV) {
            section(table, "stacks")?
                .entry("parameters")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| invalid("stacks.parameters", "must be a table"))?
                .insert(parameter.to_owned(), toml::Value::String(value));
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        let value = env_value(&value);
        if TOP_LEVEL.contains(&rest.as_str()) {
            table.insert(rest, value);
        } else if let Some((sec, key)) = SECTIONS
            .iter()
            .find_map(|s| rest.strip_prefix(&format!("{s}_")).map(|k| (*s, k)))
        {
            section(table, sec)?.insert(key.to_owned(), value);
        }
        // Any other FLIGHTDECK_* variable belongs to the tooling around the controller.
    }
    Ok(())
}

fn section<'a>(table: &'a mut toml::Table, name: &str) -> Result<&'a mut toml::Table, ConfigError> {
    table
        .entry(name)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| invalid(name, "must be a table"))
}

/// An environment value as TOML when it parses as a TOML value (numbers, booleans,
/// `["a", "b"]`), else as a string.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn validate(
    file: File,
    template_body: String,
    policy: Policy,
    env_token: Option<String>,
) -> Result<Settings, ConfigError> {
    let mut fixed_parameters = policy.fixed.clone();
    for (name, value) in &file.stacks.parameters {
        if fixed_parameters.contains_key(name) {
            return Err(invalid(
                "stacks.parameters",
                format!("`{name}` is fixed in the policy file too; fix it in one place"),
            ));
        }
        if policy.parameters.contains_key(name) {
            return Err(invalid(
                "stacks.parameters",
                format!(
                    "`{name}` is a parameter users may set in the policy file; it cannot also be fixed"
                ),
            ));
        }
        fixed_parameters.insert(name.clone(), value.clone());
    }
    let identity = Identity::new(&file.stacks.prefix, &file.instance).map_err(|e| {
        let setting = match e {
            flightdeck_core::identity::IdentityError::Prefix(_) => "stacks.prefix",
            flightdeck_core::identity::IdentityError::Owner(_) => "instance",
        };
        invalid(setting, e.to_string())
    })?;
    if file.bucket.name.trim().is_empty() {
        return Err(invalid("bucket.name", "must name the users' bucket"));
    }
    let home = &file.bucket.home_prefix;
    let own = &file.bucket.controller_prefix;
    for (setting, prefix) in [
        ("bucket.home_prefix", home),
        ("bucket.controller_prefix", own),
    ] {
        if prefix.is_empty() || !prefix.ends_with('/') || prefix.starts_with('/') {
            return Err(invalid(
                setting,
                format!(
                    "`{prefix}` must be a folder like `home/`: not empty, ending in `/`, not starting with `/`"
                ),
            ));
        }
    }
    if home.starts_with(own.as_str()) || own.starts_with(home.as_str()) {
        return Err(invalid(
            "bucket.controller_prefix",
            format!(
                "`{own}` overlaps the users' `{home}`: users must not be able to write the controller's state"
            ),
        ));
    }
    if template_body.len() > MAX_TEMPLATE_BODY {
        return Err(invalid(
            "stacks.template",
            format!(
                "{} is {} bytes; CloudFormation takes at most {MAX_TEMPLATE_BODY} bytes inline",
                file.stacks.template.display(),
                template_body.len()
            ),
        ));
    }
    let role_arn = Some(file.stacks.service_role_arn.trim().to_owned()).filter(|r| !r.is_empty());
    if let Some(role) = &role_arn
        && !(role.starts_with("arn:") && role.contains(":role/"))
    {
        return Err(invalid(
            "stacks.service_role_arn",
            format!("`{role}` is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"),
        ));
    }
    for (setting, value) in [
        ("stacks.login_output", &file.stacks.login_output),
        ("stacks.login_resource", &file.stacks.login_resource),
    ] {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid(
                setting,
                format!("`{value}` must be a CloudFormation logical name (letters and digits)"),
            ));
        }
    }
    if file.customizer.bucket.trim().is_empty() {
        return Err(invalid(
            "customizer.bucket",
            "must name the customizer bucket",
        ));
    }
    if !file.customizer.prefix.ends_with('/') {
        return Err(invalid("customizer.prefix", "must end in `/`"));
    }
    let enrolment = Enrolment {
        bucket: file.customizer.bucket,
        prefix: file.customizer.prefix,
    };
    let r = &file.reconcile;
    let resync_interval = duration("reconcile.resync_interval", &r.resync_interval)?;
    let busy_interval = duration("reconcile.busy_interval", &r.busy_interval)?;
    let grace = duration("reconcile.orphan_grace", &r.orphan_grace)?;
    if busy_interval > resync_interval {
        return Err(invalid(
            "reconcile.busy_interval",
            "must not be longer than reconcile.resync_interval",
        ));
    }
    let guards = Guards {
        pass_deadline: duration("reconcile.pass_deadline", &r.pass_deadline)?,
        max_expiry_deletes: r.max_expiry_deletes,
        expiry_grace: duration("reconcile.expiry_grace", &r.expiry_grace)?,
        max_clock_skew: duration("reconcile.max_clock_skew", &r.max_clock_skew)?,
        per_user_work: r.per_user_work,
        notices_per_user_hour: file
            .notify
            .per_user_hour
            .unwrap_or_else(default_per_user_hour),
    };
    if guards.pass_deadline < Duration::from_secs(10) {
        return Err(invalid(
            "reconcile.pass_deadline",
            "must be at least 10s: a pass lists the bucket and every stack",
        ));
    }
    if guards.per_user_work == 0 {
        return Err(invalid(
            "reconcile.per_user_work",
            "must be at least 1, or no user's request would ever be read",
        ));
    }
    if guards.notices_per_user_hour == 0 {
        return Err(invalid(
            "notify.per_user_hour",
            "must be at least 1 (to send no email, set notify.enabled = false)",
        ));
    }
    if !(1..=64).contains(&r.concurrency) {
        return Err(invalid(
            "reconcile.concurrency",
            format!("{} is not between 1 and 64", r.concurrency),
        ));
    }
    let notify = if file.notify.enabled {
        let bad = |a: &String| !a.contains('@') || a.trim() != a;
        if bad(&file.notify.from) {
            return Err(invalid(
                "notify.from",
                format!("`{}` is not an email address", file.notify.from),
            ));
        }
        if file.notify.operator.is_empty() {
            return Err(invalid(
                "notify.operator",
                "needs at least one address while notify.enabled is true",
            ));
        }
        if let Some(a) = file.notify.operator.iter().find(|a| bad(a)) {
            return Err(invalid(
                "notify.operator",
                format!("`{a}` is not an email address"),
            ));
        }
        if let Some((user, a)) = file.notify.users.iter().find(|(_, a)| bad(a)) {
            return Err(invalid(
                "notify.users",
                format!("`{a}` (for {user}) is not an email address"),
            ));
        }
        Some(Notify {
            from: file.notify.from,
            operator: file.notify.operator,
            users: file.notify.users,
            user_domain: Some(file.notify.user_domain).filter(|d| !d.is_empty()),
        })
    } else {
        None
    };
    let lifetime_warning = duration(
        "notify.lifetime_warning",
        file.notify.lifetime_warning.as_deref().unwrap_or("1h"),
    )?;
    let http = http(file.http, env_token)?;
    let election = election(file.election)?;
    let rates = rates(&file.rate)?;
    Ok(Settings {
        identity,
        region: file.region.filter(|r| !r.is_empty()),
        endpoint_url: file.endpoint_url.filter(|e| !e.is_empty()),
        log_format: file.log_format,
        bucket: file.bucket.name,
        home_prefix: file.bucket.home_prefix,
        controller_prefix: file.bucket.controller_prefix,
        template: Template {
            body: template_body,
            role_arn,
        },
        fixed_parameters,
        user_parameters: policy.settable(),
        updatable: policy.updatable(),
        login_output: file.stacks.login_output,
        login_resource: file.stacks.login_resource,
        enrolment,
        resync_interval,
        busy_interval,
        orphans: OrphanSettings {
            grace,
            max_deletes: r.max_orphan_deletes,
            policy: r.orphan_policy,
        },
        concurrency: r.concurrency,
        notify,
        lifetime_warning,
        http,
        per_user_metrics: file.metrics.per_user,
        guards,
        policy,
        election,
        rates,
    })
}

fn rates(file: &RateFile) -> Result<Rates, ConfigError> {
    let rate = |service: &str, qps: f64, burst: u32| {
        Rate::new(qps, burst).map_err(|reason| {
            let which = if reason.starts_with("qps") {
                "qps"
            } else {
                "burst"
            };
            invalid(&format!("rate.{service}_{which}"), reason)
        })
    };
    Ok(Rates {
        s3: rate("s3", file.s3_qps, file.s3_burst)?,
        cloudformation: rate(
            "cloudformation",
            file.cloudformation_qps,
            file.cloudformation_burst,
        )?,
        ec2: rate("ec2", file.ec2_qps, file.ec2_burst)?,
        sesv2: rate("sesv2", file.sesv2_qps, file.sesv2_burst)?,
    })
}

fn election(file: ElectionFile) -> Result<Election, ConfigError> {
    let timing = flightdeck_core::lease::Timing::new(
        duration("election.lease_duration", &file.lease_duration)?,
        duration("election.renew_deadline", &file.renew_deadline)?,
        duration("election.retry_period", &file.retry_period)?,
    )
    .map_err(|(setting, reason)| invalid(setting, reason))?;
    let identity = match file.identity.trim() {
        "" => default_identity(),
        given => given.to_owned(),
    };
    if identity.len() > 128 || identity.chars().any(|c| c.is_control() || c == '"') {
        return Err(invalid(
            "election.identity",
            format!("`{identity}` must be at most 128 printable characters without quotes"),
        ));
    }
    Ok(Election {
        enabled: file.enabled,
        timing,
        identity,
    })
}

/// The host's name and this process's id: unique among running replicas, and different
/// after a restart.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "flightdeck".into());
    format!("{host}-{}", std::process::id())
}

fn http(file: HttpFile, env_token: Option<String>) -> Result<Http, ConfigError> {
    let address = |setting: &str, text: &str| {
        text.trim().parse::<std::net::SocketAddr>().map_err(|_| {
            invalid(
                setting,
                format!("`{text}` is not an address like 0.0.0.0:8080"),
            )
        })
    };
    let listen = address("http.listen", &file.listen)?;
    let metrics_listen = match file.metrics_listen.trim() {
        "" => None,
        text => Some(address("http.metrics_listen", text)?),
    };
    if let Some(m) = metrics_listen
        && m.port() == listen.port()
        && m.port() != 0
        && (m.ip() == listen.ip() || m.ip().is_unspecified() || listen.ip().is_unspecified())
    {
        return Err(invalid(
            "http.metrics_listen",
            format!("{m} overlaps http.listen ({listen}): use another port"),
        ));
    }
    if file.max_connections == 0 {
        return Err(invalid("http.max_connections", "must be at least 1"));
    }
    let token = match (env_token, file.hint_token_file.trim()) {
        (Some(token), _) => Some(token),
        (None, "") => None,
        (None, path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| invalid("http.hint_token_file", format!("cannot read {path}: {e}")))?,
        ),
    };
    let token = token.map(|t| t.trim().to_owned());
    if let Some(t) = &token
        && t.len() < MIN_TOKEN_LEN
    {
        return Err(invalid(
            "http.hint_token_file",
            format!(
                "the hint token ({HINT_TOKEN_ENV} or the file) must be at least {MIN_TOKEN_LEN} characters"
            ),
        ));
    }
    if file.max_hint_bytes < 1024 {
        return Err(invalid("http.max_hint_bytes", "must be at least 1024"));
    }
    Ok(Http {
        listen,
        hint_token: token,
        max_hint_bytes: file.max_hint_bytes,
        metrics_listen,
        max_connections: file.max_connections,
    })
}

/// `90s`, `10m`, `2h`, `1d`, or a plain number of seconds.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `setting`.
pub fn duration(setting: &str, text: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).ok_or_else(|| {
        invalid(
            setting,
            format!(
                "`{}` is not a duration above zero like 90s, 10m, 2h or 1d",
                text.trim()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
instance = "site-a"
policy = "POLICY"
[bucket]
name = "users"
[stacks]
template = "TEMPLATE"
[customizer]
bucket = "cust"
"#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "flightdeck-config-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let template = dir.join("t.yaml");
        std::fs::write(&template, "Resources: {}\n").unwrap();
        let policy = dir.join("limits.toml");
        std::fs::write(&policy, "version = 1\n[parameters.ComputeMaxNodes]\nrange = [1, 8]\nupdatable = true\n[fixed]\nSshCidr = \"10.0.0.0/8\"\n").unwrap();
        let path = dir.join("flightdeck.toml");
        std::fs::write(
            &path,
            text.replace("TEMPLATE", &template.display().to_string())
                .replace("POLICY", &policy.display().to_string()),
        )
        .unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let result = Settings::load(&path, env);
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    fn setting_of(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { setting, .. } => setting,
            other => panic!("not an invalid setting: {other}"),
        }
    }

    #[test]
    fn minimal_file_takes_the_documented_defaults() {
        let s = load(MINIMAL, &[]).unwrap();
        assert_eq!(s.home_prefix, "home/");
        assert_eq!(s.controller_prefix, "flightdeck/");
        assert_eq!(s.resync_interval, Duration::from_secs(60));
        assert_eq!(s.rates, Rates::default());
        assert_eq!(
            (s.rates.cloudformation.qps, s.rates.cloudformation.burst),
            (10.0, 100),
            "client-go's"
        );
        assert_eq!((s.rates.s3.qps, s.rates.s3.burst), (100.0, 1000));
        assert_eq!(s.orphans.grace, Duration::from_secs(600));
        assert_eq!(s.orphans.max_deletes, 5);
        assert_eq!(s.orphans.policy, OrphanPolicy::Delete);
        assert_eq!(s.login_output, "LoginIp");
        assert!(s.template.role_arn.is_none());
        assert_eq!(s.enrolment.folder("alice"), "customizer/alice/configure.d/");
        assert!(s.notify.is_none());
        assert_eq!(
            s.identity
                .stack_name(&flightdeck_core::key::ClusterKey::new("a", "b").unwrap()),
            "fd-a-b"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let s = load(
            MINIMAL,
            &[
                ("FLIGHTDECK_ENDPOINT_URL", "http://127.0.0.1:5050"),
                ("FLIGHTDECK_RECONCILE_RESYNC_INTERVAL", "5m"),
                ("FLIGHTDECK_RECONCILE_MAX_ORPHAN_DELETES", "2"),
                ("FLIGHTDECK_PARAMETER_ImageId", "/custom/image"),
                ("FLIGHTDECK_EMULATOR_PORT", "5050"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(s.endpoint_url.as_deref(), Some("http://127.0.0.1:5050"));
        assert_eq!(s.resync_interval, Duration::from_secs(300));
        assert_eq!(s.orphans.max_deletes, 2);
        assert_eq!(s.fixed_parameters["ImageId"], "/custom/image");
        assert_eq!(
            s.fixed_parameters["SshCidr"], "10.0.0.0/8",
            "the policy's fixed parameters join the config's"
        );
        assert_eq!(s.updatable, BTreeSet::from(["ComputeMaxNodes".to_string()]));
    }

    #[test]
    fn a_misspelt_setting_stops_start_up_with_its_name() {
        let e = load(
            &format!("{MINIMAL}\n[reconcile]\nresync_intervall = \"5s\"\n"),
            &[],
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("resync_intervall"), "{text}");
        let e = load(MINIMAL, &[("FLIGHTDECK_RECONCILE_RESYNC_INTERVALL", "5s")]).unwrap_err();
        assert!(e.to_string().contains("resync_intervall"), "{e}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (extra, env, setting) in [
            (
                "",
                ("FLIGHTDECK_RECONCILE_RESYNC_INTERVAL", "soon"),
                "reconcile.resync_interval",
            ),
            (
                "",
                ("FLIGHTDECK_RECONCILE_BUSY_INTERVAL", "2h"),
                "reconcile.busy_interval",
            ),
            (
                "",
                ("FLIGHTDECK_RECONCILE_CONCURRENCY", "0"),
                "reconcile.concurrency",
            ),
            (
                "",
                ("FLIGHTDECK_RECONCILE_PASS_DEADLINE", "5s"),
                "reconcile.pass_deadline",
            ),
            (
                "",
                ("FLIGHTDECK_RECONCILE_PER_USER_WORK", "0"),
                "reconcile.per_user_work",
            ),
            (
                "",
                ("FLIGHTDECK_ELECTION_LEASE_DURATION", "10s"),
                "election.lease_duration",
            ),
            (
                "",
                ("FLIGHTDECK_ELECTION_RENEW_DEADLINE", "3s"),
                "election.renew_deadline",
            ),
            (
                "",
                ("FLIGHTDECK_ELECTION_RETRY_PERIOD", "often"),
                "election.retry_period",
            ),
            (
                "",
                ("FLIGHTDECK_ELECTION_IDENTITY", "a\"b"),
                "election.identity",
            ),
            (
                "",
                ("FLIGHTDECK_RECONCILE_MAX_CLOCK_SKEW", "a while"),
                "reconcile.max_clock_skew",
            ),
            (
                "",
                ("FLIGHTDECK_RATE_CLOUDFORMATION_QPS", "0"),
                "rate.cloudformation_qps",
            ),
            ("", ("FLIGHTDECK_RATE_S3_BURST", "0"), "rate.s3_burst"),
            ("", ("FLIGHTDECK_INSTANCE", "two words"), "instance"),
            ("", ("FLIGHTDECK_STACKS_PREFIX", "9x"), "stacks.prefix"),
            (
                "",
                ("FLIGHTDECK_BUCKET_CONTROLLER_PREFIX", "home/state/"),
                "bucket.controller_prefix",
            ),
            (
                "",
                ("FLIGHTDECK_BUCKET_HOME_PREFIX", "home"),
                "bucket.home_prefix",
            ),
            (
                "",
                ("FLIGHTDECK_STACKS_SERVICE_ROLE_ARN", "my-role"),
                "stacks.service_role_arn",
            ),
            (
                "",
                ("FLIGHTDECK_CUSTOMIZER_BUCKET", ""),
                "customizer.bucket",
            ),
            (
                "\n[notify]\nenabled = true\nfrom = \"ops\"\n",
                ("X", ""),
                "notify.from",
            ),
            (
                "\n[notify]\nenabled = true\nfrom = \"fd@example.org\"\n",
                ("X", ""),
                "notify.operator",
            ),
        ] {
            let e = load(&format!("{MINIMAL}{extra}"), &[env]).unwrap_err();
            assert_eq!(setting_of(e), setting, "{env:?}");
        }
    }

    #[test]
    fn unreadable_template_names_the_setting() {
        let e = load(
            &MINIMAL.replace("TEMPLATE", "/nonexistent/t.yaml").replace(
                "template = \"TEMPLATE\"",
                "template = \"/nonexistent/t.yaml\"",
            ),
            &[],
        )
        .unwrap_err();
        assert_eq!(setting_of(e), "stacks.template");
    }

    #[test]
    fn hint_token_comes_from_the_environment_and_must_be_long_enough() {
        let s = load(MINIMAL, &[("FLIGHTDECK_HINT_TOKEN", "0123456789abcdef")]).unwrap();
        assert_eq!(s.http.hint_token.as_deref(), Some("0123456789abcdef"));
        assert_eq!(s.http.listen.to_string(), "0.0.0.0:8080");
        assert!(load(MINIMAL, &[]).unwrap().http.hint_token.is_none());
        let e = load(MINIMAL, &[("FLIGHTDECK_HINT_TOKEN", "short")]).unwrap_err();
        assert_eq!(setting_of(e), "http.hint_token_file");
        let e = load(MINIMAL, &[("FLIGHTDECK_HTTP_LISTEN", "everywhere")]).unwrap_err();
        assert_eq!(setting_of(e), "http.listen");
    }

    #[test]
    fn metrics_can_have_their_own_listener_and_connections_are_capped() {
        let s = load(MINIMAL, &[]).unwrap();
        assert_eq!(s.http.metrics_listen, None);
        assert_eq!(s.http.max_connections, 256);
        let s = load(
            &format!(
                "{MINIMAL}\n[http]\nmetrics_listen = \"0.0.0.0:8081\"\nmax_connections = 64\n"
            ),
            &[],
        )
        .unwrap();
        assert_eq!(s.http.metrics_listen, Some("0.0.0.0:8081".parse().unwrap()));
        assert_eq!(s.http.max_connections, 64);
        let s = load(
            MINIMAL,
            &[("FLIGHTDECK_HTTP_METRICS_LISTEN", "127.0.0.1:9090")],
        )
        .unwrap();
        assert_eq!(
            s.http.metrics_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        for (env, value, why) in [
            ("FLIGHTDECK_HTTP_MAX_CONNECTIONS", "0", "must be at least 1"),
            (
                "FLIGHTDECK_HTTP_METRICS_LISTEN",
                "metrics",
                "`metrics` is not an address",
            ),
            (
                "FLIGHTDECK_HTTP_METRICS_LISTEN",
                "127.0.0.1:8080",
                "overlaps http.listen (0.0.0.0:8080): use another port",
            ),
        ] {
            let e = load(MINIMAL, &[(env, value)]).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(why), "{text}");
            let setting = env
                .trim_start_matches("FLIGHTDECK_HTTP_")
                .to_ascii_lowercase();
            assert_eq!(setting_of(e), format!("http.{setting}"));
        }
    }

    #[test]
    fn users_hear_about_their_clusters_when_an_address_is_known() {
        let n = Notify {
            from: "fd@example.org".into(),
            operator: vec!["ops@example.org".into()],
            users: BTreeMap::from([("alice".to_string(), "alice@uni.example".to_string())]),
            user_domain: Some("example.org".into()),
        };
        assert_eq!(
            n.recipients("alice"),
            ["ops@example.org", "alice@uni.example"]
        );
        assert_eq!(n.recipients("bob"), ["ops@example.org", "bob@example.org"]);
        assert_eq!(
            n.recipients("carol@lab.example"),
            ["ops@example.org", "carol@lab.example"]
        );
        let operators_only = Notify {
            user_domain: None,
            ..n
        };
        assert_eq!(operators_only.recipients("bob"), ["ops@example.org"]);
    }

    #[test]
    fn a_broken_policy_stops_start_up_with_its_line() {
        let dir = std::env::temp_dir().join(format!("flightdeck-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(
            &bad,
            "version = 1\n\n[parameters.ComputeMaxNodes]\nrange = [9, 1]\n",
        )
        .unwrap();
        let path = bad.display().to_string();
        let e = load(MINIMAL, &[("FLIGHTDECK_POLICY", path.as_str())]).unwrap_err();
        let text = e.to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            text.starts_with(&format!(
                "policy file {path}, line 3: `ComputeMaxNodes`: range [9, 1] is empty"
            )),
            "{text}"
        );
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(duration("x", "90").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("x", "10m").unwrap(), Duration::from_secs(600));
        assert_eq!(duration("x", "1d").unwrap(), Duration::from_secs(86_400));
        assert!(duration("x", "0s").is_err());
        assert!(duration("x", "1w").is_err());
        assert!(duration("x", "").is_err());
    }
}
