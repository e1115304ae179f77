//! Hints never change where flightdeck ends up: for random histories of user actions,
//! a controller that also receives duplicated, reordered, dropped, forged and garbage hints
//! converges to exactly the state of one that only resyncs.
//!
//! Both controllers settle (resync until nothing changes) after every user action, so both
//! start from the same states; the hinted one also looks at single clusters before it
//! settles, and late hints reach it after later actions. (Without settling, the comparison
//! would not be fair: a controller that finished a deletion before the user wrote a new
//! `.cf-create` rightly ends elsewhere than one that first sees both files.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use flightdeck::config::{Http, LogFormat, Notify, Settings};
use flightdeck::fake::{FakeInstances, FakeMailer, FakeStacks, FakeStore};
use flightdeck::metrics::Metrics;
use flightdeck::ports::Template;
use flightdeck::reconcile::Reconciler;
use flightdeck_core::hint::parse_hint;
use flightdeck_core::identity::Identity;
use flightdeck_core::orphan::{OrphanPolicy, OrphanSettings};
use proptest::prelude::*;

type Rec = Reconciler<FakeStore, FakeStacks, FakeInstances, FakeMailer>;

const USERS: [&str; 2] = ["alice", "bob"];
const CLUSTERS: [&str; 2] = ["x", "y"];
const KEYS: [&str; 3] = [
    "ComputeMaxNodes",
    "ComputeInstanceType",
    "MasterInstanceType",
];

fn reconciler() -> Rec {
    let settings = Settings {
        identity: Identity::new("fd", "site").unwrap(),
        region: None,
        endpoint_url: None,
        log_format: LogFormat::Text,
        bucket: "users".into(),
        home_prefix: "home/".into(),
        controller_prefix: "flightdeck/".into(),
        template: Template {
            body: String::new(),
            role_arn: None,
        },
        fixed_parameters: BTreeMap::new(),
        user_parameters: KEYS.iter().map(|k| k.to_string()).collect(),
        updatable: BTreeSet::from(["ComputeMaxNodes".to_string()]),
        login_output: "LoginIp".into(),
        login_resource: "Master".into(),
        enrolment: flightdeck::config::Enrolment {
            bucket: "cust".into(),
            prefix: "customizer/".into(),
        },
        resync_interval: Duration::from_secs(60),
        busy_interval: Duration::from_secs(5),
        orphans: OrphanSettings {
            grace: Duration::ZERO,
            max_deletes: 10,
            policy: OrphanPolicy::Delete,
        },
        concurrency: 2,
        notify: Some(Notify {
            from: "fd@example.org".into(),
            operator: vec!["ops@example.org".into()],
            users: BTreeMap::new(),
            user_domain: None,
        }),
        http: Http {
            listen: "127.0.0.1:0".parse().unwrap(),
            hint_token: None,
            max_hint_bytes: 4096,
            metrics_listen: None,
            max_connections: 256,
        },
        per_user_metrics: false,
        guards: flightdeck::config::Guards::default(),
        election: flightdeck::config::Election {
            enabled: false,
            timing: flightdeck_core::lease::Timing::default(),
            identity: "bench".into(),
        },
        rates: flightdeck::config::Rates::default(),
        lifetime_warning: Duration::from_secs(3600),
        policy: flightdeck_core::policy::Policy::parse(
            "version = 1\n[limits]\nrequire_enrolment = false\n[parameters.ComputeMaxNodes]\nupdatable = true\n[parameters.ComputeInstanceType]\n[parameters.MasterInstanceType]\n",
        )
        .unwrap(),
    };
    let rules = flightdeck::offline::rules(&settings).unwrap();
    let cloud = flightdeck::fake::cloud();
    Reconciler::new(cloud, settings, rules, Arc::new(Metrics::new(false)))
}

/// What a user does.
#[derive(Debug, Clone)]
enum Op {
    /// Writes a request (valid with `nodes` > 0, else malformed).
    Create {
        user: usize,
        cluster: usize,
        nodes: u8,
    },
    Delete {
        user: usize,
        cluster: usize,
    },
    RemoveCreate {
        user: usize,
        cluster: usize,
    },
}

/// What happens to the hints of one step.
#[derive(Debug, Clone)]
enum Delivery {
    Drop,
    Once,
    Twice,
    /// Held back and delivered this many steps later (out of order).
    Late(usize),
}

/// A hint that is not the truth.
#[derive(Debug, Clone)]
enum Forged {
    OtherUsersKey { user: usize, cluster: usize },
    OtherBucket { user: usize, cluster: usize },
    Garbage(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    let u = 0..USERS.len();
    let c = 0..CLUSTERS.len();
    prop_oneof![
        (u.clone(), c.clone(), 0u8..4).prop_map(|(user, cluster, nodes)| Op::Create {
            user,
            cluster,
            nodes
        }),
        (u.clone(), c.clone()).prop_map(|(user, cluster)| Op::Delete { user, cluster }),
        (u, c).prop_map(|(user, cluster)| Op::RemoveCreate { user, cluster }),
    ]
}

fn delivery() -> impl Strategy<Value = Delivery> {
    prop_oneof![
        Just(Delivery::Drop),
        Just(Delivery::Once),
        Just(Delivery::Twice),
        (1usize..4).prop_map(Delivery::Late)
    ]
}

fn forged() -> impl Strategy<Value = Option<Forged>> {
    let u = 0..USERS.len();
    let c = 0..CLUSTERS.len();
    prop_oneof![
        3 => Just(None),
        1 => (u.clone(), c.clone()).prop_map(|(user, cluster)| Some(Forged::OtherUsersKey { user, cluster })),
        1 => (u, c).prop_map(|(user, cluster)| Some(Forged::OtherBucket { user, cluster })),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| Some(Forged::Garbage(b))),
    ]
}

fn event(bucket: &str, key: &str) -> Vec<u8> {
    serde_json::json!({ "Records": [ { "s3": { "bucket": { "name": bucket }, "object": { "key": key } } } ] })
        .to_string()
        .into_bytes()
}

fn apply(rec: &Rec, op: &Op) -> String {
    let store = &rec.cloud().store;
    match *op {
        Op::Create {
            user,
            cluster,
            nodes,
        } => {
            let key = format!("home/{}/{}.cf-create", USERS[user], CLUSTERS[cluster]);
            let body = if nodes == 0 {
                "{ broken".to_owned()
            } else {
                format!(
                    r#"{{"ComputeMaxNodes": "{nodes}", "ComputeInstanceType": "c5.large", "MasterInstanceType": "c5.large"}}"#
                )
            };
            store.insert(&key, body);
            key
        }
        Op::Delete { user, cluster } => {
            let key = format!("home/{}/{}.cf-delete", USERS[user], CLUSTERS[cluster]);
            store.insert(&key, "");
            key
        }
        Op::RemoveCreate { user, cluster } => {
            let key = format!("home/{}/{}.cf-create", USERS[user], CLUSTERS[cluster]);
            store.remove(&key);
            key
        }
    }
}

/// Handles one hint body as the endpoint does, then looks at each named cluster as a
/// worker does.
async fn hint(rec: &Rec, body: &[u8]) {
    if let Ok(h) = parse_hint(body, "users", "home/") {
        for key in h.keys {
            rec.reconcile_key(&key).await;
        }
    }
}

/// The state that matters to users and operators: every object under home/ with its
/// content (the status as phase and message only: it names stack ids, which differ between
/// two runs), and every stack with its parameters and tags.
fn state(rec: &Rec) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let store = &rec.cloud().store;
    let objects = store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("home/"))
        .map(|k| {
            let body = store.text(&k).unwrap();
            let shown = if k.ends_with(".cf-status") {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                format!("{} {}", v["phase"], v["message"])
            } else {
                body
            };
            (k, shown)
        })
        .collect();
    let stacks = rec
        .cloud()
        .stacks
        .names()
        .into_iter()
        .map(|n| {
            let s = rec.cloud().stacks.get(&n).unwrap();
            (n, format!("{} {:?} {:?}", s.status, s.parameters, s.tags))
        })
        .collect();
    (objects, stacks)
}

async fn converge(rec: &Rec) {
    for _ in 0..4 {
        rec.resync(false, None).await.unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn hints_never_change_the_final_state(
        steps in proptest::collection::vec((op(), delivery(), forged()), 1..10),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let resync_only = reconciler();
            let hinted = reconciler();
            let mut late: Vec<(usize, Vec<u8>)> = Vec::new();
            for (i, (op, delivery, forged)) in steps.iter().enumerate() {
                apply(&resync_only, op);
                converge(&resync_only).await;
                let key = apply(&hinted, op);
                let body = event("users", &key);
                match delivery {
                    Delivery::Drop => {}
                    Delivery::Once => hint(&hinted, &body).await,
                    Delivery::Twice => {
                        hint(&hinted, &body).await;
                        hint(&hinted, &body).await;
                    }
                    Delivery::Late(n) => late.push((i + n, body)),
                }
                match forged {
                    None => {}
                    Some(Forged::OtherUsersKey { user, cluster }) => {
                        let k = format!("home/{}/{}.cf-delete", USERS[*user], CLUSTERS[*cluster]);
                        hint(&hinted, &event("users", &k)).await;
                    }
                    Some(Forged::OtherBucket { user, cluster }) => {
                        let k = format!("home/{}/{}.cf-create", USERS[*user], CLUSTERS[*cluster]);
                        hint(&hinted, &event("elsewhere", &k)).await;
                    }
                    Some(Forged::Garbage(bytes)) => hint(&hinted, bytes).await,
                }
                for (_, body) in late.iter().filter(|(at, _)| *at == i) {
                    hint(&hinted, body).await;
                }
                converge(&hinted).await;
            }
            for (_, body) in &late {
                hint(&hinted, body).await;
            }
            converge(&resync_only).await;
            converge(&hinted).await;
            prop_assert_eq!(state(&hinted), state(&resync_only));
            Ok(())
        })?;
    }
}
