//! The operator's offline commands: `validate` (what the user would read) and `render`
//! (what would be sent to CloudFormation), from the configuration and the policy alone.
//!
//! Both go through the same parsing, admission and planning as the controller, so
//! `validate` prints the very `.cf-failed` text the controller would write. Offline there
//! is no template summary and no view of the user's other clusters: the template's own
//! type checks, enrolment and usage limits are the controller's to apply.

use std::collections::BTreeMap;

use flightdeck_core::admission::{Usage, admit};
use flightdeck_core::key::{ClusterKey, Suffix};
use flightdeck_core::orphan::OrphanVerdict;
use flightdeck_core::plan::{
    Action, Context, Observed, RequestState, StackSpec, TemplateChoice, plan,
};
use flightdeck_core::request::{ParameterRule, RESERVED, RequestRules, parse_request};

use crate::config::Settings;

/// The request rules the policy and the fixed parameters give, without the template.
///
/// # Errors
/// When the policy and the fixed parameters contradict each other.
pub fn rules(settings: &Settings) -> Result<RequestRules, String> {
    let template: BTreeMap<String, ParameterRule> = settings
        .user_parameters
        .iter()
        .chain(settings.fixed_parameters.keys())
        .cloned()
        .chain(RESERVED.map(String::from))
        .map(|k| (k, ParameterRule::default()))
        .collect();
    RequestRules::new(
        &template,
        &settings.fixed_parameters,
        &settings.user_parameters,
    )
    .map_err(|e| e.to_string())
}

/// The `.cf-failed` text `user` would read for this request as cluster `cluster`, or `None`
/// when it would be admitted (as their only cluster).
///
/// # Errors
/// When the user or cluster name is not valid, or the policy is inconsistent.
pub fn validate(
    settings: &Settings,
    user: &str,
    cluster: &str,
    body: &[u8],
) -> Result<Option<String>, String> {
    let key = ClusterKey::new(user, cluster).map_err(|e| e.to_string())?;
    let rules = rules(settings)?;
    let request = match parse_request(body, &rules) {
        Ok(request) => {
            let admission = admit(&settings.policy, user, &request, &Usage::default());
            let state = RequestState::Valid {
                request,
                etag: String::new(),
                modified: 0,
            };
            (state, Some(admission))
        }
        Err(e) => (
            RequestState::Invalid {
                reason: e.to_string(),
                etag: String::new(),
            },
            None,
        ),
    };
    let observed = Observed {
        key: key.clone(),
        request: request.0,
        delete_requested: false,
        markers: BTreeMap::new(),
        stack: None,
        unmanaged: None,
        enrolled: true,
        orphan: OrphanVerdict::NotJudged,
        admission: request.1,
        lifetime: None,
        expiry: None,
        vanished: None,
        now: 0,
    };
    let ctx = Context {
        identity: &settings.identity,
        rules: &rules,
        home_prefix: &settings.home_prefix,
        updatable: &settings.updatable,
        lifetime_warning: settings.lifetime_warning,
    };
    let failed = key.object_key(&settings.home_prefix, Suffix::Failed);
    Ok(plan(&observed, &ctx).into_iter().find_map(|a| match a {
        Action::Put { key, body } if key == failed => Some(body),
        _ => None,
    }))
}

/// The stack that would be created for this request: name, parameters, tags.
///
/// # Errors
/// The `.cf-failed` text when the request would be refused, or a bad name.
pub fn render(
    settings: &Settings,
    user: &str,
    cluster: &str,
    body: &[u8],
) -> Result<StackSpec, String> {
    if let Some(failed) = validate(settings, user, cluster, body)? {
        return Err(failed);
    }
    let key = ClusterKey::new(user, cluster).map_err(|e| e.to_string())?;
    let rules = rules(settings)?;
    let request = parse_request(body, &rules).map_err(|e| e.to_string())?;
    Ok(StackSpec {
        name: settings.identity.stack_name(&key),
        parameters: rules.stack_parameters(&request, &key),
        tags: settings.identity.tags(&key, &request.hash),
        token: String::new(),
        template: TemplateChoice::Install,
    })
}

/// The cluster name a request file stands for: `x.cf-create` → `x`.
pub fn cluster_of_file(path: &std::path::Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".cf-create").map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;
    use crate::reconcile::Reconciler;

    fn settings() -> Settings {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let env = [
            ("FLIGHTDECK_POLICY", root.join("policies/limits.toml")),
            (
                "FLIGHTDECK_STACKS_TEMPLATE",
                root.join("templates/cluster.yaml"),
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v.display().to_string()));
        Settings::load(&root.join("deploy/local/flightdeck.toml"), env).unwrap()
    }

    const SEED: &str = include_str!("../../examples/cluster.cf-create");

    /// What the controller writes to `.cf-failed` for the same file and user.
    async fn controller_writes(settings: &Settings, user: &str, body: &str) -> Option<String> {
        let rules = rules(settings).unwrap();
        let cloud = crate::fake::cloud();
        cloud.customizer.insert(
            &format!("customizer/{user}/configure.d/authorized_keys"),
            "k",
        );
        let rec = Reconciler::new(
            cloud,
            settings.clone(),
            rules,
            Arc::new(Metrics::new(false)),
        );
        rec.cloud()
            .store
            .insert(&format!("home/{user}/x.cf-create"), body);
        rec.resync(false, None).await.unwrap();
        rec.cloud().store.text(&format!("home/{user}/x.cf-failed"))
    }

    #[tokio::test]
    async fn validate_prints_what_the_controller_writes() {
        let s = settings();
        for body in [
            SEED.to_owned(),
            SEED.replace("\"25\"", "\"65\""),
            SEED.replace("0.03", "0.75"),
            SEED.replace("ComputeMaxNodes", "ComputeMaxNode"),
            SEED.replace('{', "{\"AccessUsername\": \"root\","),
            SEED.replace("r4.large-2C", "p4d.24xlarge-96C"),
            "{ not json".to_owned(),
            SEED.replace('{', "{\"Lifetime\": \"30d\","),
        ] {
            let offline = validate(&s, "alice", "x", body.as_bytes()).unwrap();
            let online = controller_writes(&s, "alice", &body).await;
            assert_eq!(offline, online, "for {body}");
        }
    }

    #[test]
    fn the_example_is_admitted_and_renders_with_fixed_parameters_and_tags() {
        let s = settings();
        assert_eq!(validate(&s, "alice", "x", SEED.as_bytes()).unwrap(), None);
        let spec = render(&s, "alice", "x", SEED.as_bytes()).unwrap();
        assert_eq!(spec.name, "fd-alice-x");
        assert_eq!(spec.parameters["AccessUsername"], "alice");
        assert_eq!(spec.parameters["ComputeInstanceType"], "r4.large");
        assert_eq!(spec.parameters["CustomizerBucket"], "flightdeck-customizer");
        assert_eq!(spec.parameters["CustomizerPrefix"], "customizer");
        assert_eq!(spec.tags["USER"], "alice");
        assert_eq!(spec.tags["flightdeck:owner"], "local");
    }

    #[test]
    fn a_refused_request_renders_as_its_refusal() {
        let e = render(
            &settings(),
            "alice",
            "x",
            SEED.replace("\"25\"", "\"65\"").as_bytes(),
        )
        .unwrap_err();
        assert!(
            e.starts_with(
                "`ComputeMaxNodes` = `65` is not allowed: it must be a whole number from 1 to 64"
            ),
            "{e}"
        );
    }

    #[test]
    fn the_cluster_name_comes_from_the_file_name() {
        assert_eq!(
            cluster_of_file(std::path::Path::new("a/b/x-1.cf-create")).as_deref(),
            Some("x-1")
        );
        assert_eq!(cluster_of_file(std::path::Path::new("request.json")), None);
    }
}
