//! One full look at scale, as a resync makes it: [`Snapshot::build`] over a listing of the
//! home prefix and of the stacks, the orphans judged, every cluster planned, and the
//! explanations of mistaken files planned.
//!
//! The listing holds 10,000 clusters of 2,000 users among 100,000 keys (`100k`) and among
//! 1,000,000 (`1m`), and 1,000 clusters among 100,000 (`100k_1k_clusters`: the same one in
//! a hundred keys as `1m`); every other key is a user's own file. It is built, and settled
//! (every marker that exists already holds what the plan would write), before anything is
//! timed. Requests are parsed once beforehand too, as the controller caches them by ETag.
//! Each cluster's files and stacks are moved out of the snapshot to be planned
//! ([`Snapshot::take_clusters`]), not copied.
//!
//! The aim: 100,000 keys within 50 ms and 1,000,000 within 500 ms on one core
//! (`make bench-plan`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use flightdeck_core::admission::{Admitted, lifetime_end};
use flightdeck_core::identity::{Identity, TAG_EXPIRES, hex_md5};
use flightdeck_core::key::{ClusterKey, Suffix};
use flightdeck_core::orphan::{OrphanPolicy, OrphanSettings, OrphanTracker, OrphanVerdict};
use flightdeck_core::plan::{
    Action, Context, Expiry, Observed, RequestState, plan_mistakes, plan_with_phase,
};
use flightdeck_core::request::{ParameterRule, RequestRules, parse_request};
use flightdeck_core::snapshot::{ClusterParts, ObjectMeta, Snapshot};
use flightdeck_core::stack::StackView;

const HOME: &str = "home/";
const USERS: usize = 2_000;
/// Mistaken request files (a subfolder, a bad cluster name, a mangled suffix).
const MISTAKES: usize = 60;
/// When the look is made: 2026-11-30.
const NOW: i64 = 1_796_000_000;
const DAY: i64 = 86_400;
/// `reconcile.per_user_work`.
const PER_USER_WORK: usize = 20;

/// The install's settings that the look needs.
struct Install {
    identity: Identity,
    rules: RequestRules,
    updatable: BTreeSet<String>,
    orphans: OrphanSettings,
}

impl Install {
    /// The shipped template's parameters, the older design's user settings, the defaults.
    fn new() -> Self {
        let text = |required| ParameterRule {
            required,
            ..ParameterRule::default()
        };
        let number = ParameterRule {
            number: true,
            ..ParameterRule::default()
        };
        let template: BTreeMap<String, ParameterRule> = [
            ("ComputeInstanceType", text(true)),
            ("ComputeInstanceTypeOther", text(false)),
            ("ComputeSpotPrice", text(false)),
            ("ComputeMaxNodes", number.clone()),
            ("ComputeInitialNodes", number.clone()),
            ("MasterInstanceType", text(true)),
            ("MasterInstanceTypeOther", text(false)),
            (
                "MasterSystemVolumeSize",
                ParameterRule {
                    default: Some("16".into()),
                    ..number
                },
            ),
            (
                "AutoscalingPolicy",
                ParameterRule {
                    allowed: vec!["enabled".into(), "disabled".into()],
                    ..ParameterRule::default()
                },
            ),
            ("AccessUsername", text(true)),
            ("FlightProfiles", text(false)),
            ("CustomizerBucket", text(true)),
        ]
        .map(|(name, rule)| (name.to_owned(), rule))
        .into();
        let fixed: BTreeMap<String, String> =
            [("CustomizerBucket".to_owned(), "cust-${user}".to_owned())].into();
        let settable: BTreeSet<String> = [
            "ComputeInstanceType",
            "ComputeInstanceTypeOther",
            "ComputeSpotPrice",
            "ComputeMaxNodes",
            "ComputeInitialNodes",
            "MasterInstanceType",
            "MasterInstanceTypeOther",
            "MasterSystemVolumeSize",
            "AutoscalingPolicy",
        ]
        .map(String::from)
        .into();
        Install {
            identity: Identity::new("fd", "site-a").expect("a valid identity"),
            rules: RequestRules::new(&template, &fixed, &settable).expect("valid rules"),
            updatable: ["ComputeMaxNodes", "ComputeInitialNodes", "ComputeSpotPrice"]
                .map(String::from)
                .into(),
            orphans: OrphanSettings {
                grace: Duration::from_secs(3_600),
                max_deletes: 10,
                policy: OrphanPolicy::Delete,
            },
        }
    }

    fn context(&self) -> Context<'_> {
        Context {
            identity: &self.identity,
            rules: &self.rules,
            home_prefix: HOME,
            updatable: &self.updatable,
            lifetime_warning: Duration::from_secs(3_600),
        }
    }
}

/// A parsed request as the controller caches it, by the request object's key.
struct CachedRequest {
    etag: String,
    modified: i64,
    state: RequestState,
}

/// The bucket and the stacks as a look lists them, and the requests already read.
struct World {
    objects: Vec<ObjectMeta>,
    stacks: Vec<StackView>,
    requests: HashMap<String, CachedRequest>,
}

/// A small deterministic generator (xorshift64*), so that every run sees the same world.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("below n")
    }

    fn etag(&mut self) -> String {
        format!("\"{:016x}{:016x}\"", self.next(), self.next())
    }
}

/// What became of a cluster, by its number: most run and are reported; a few of each other
/// case a resync meets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Running, its request unchanged, `.cf-created` and `.cf-status` up to date.
    Ready,
    /// Running, but not reported yet (no markers).
    Unreported,
    /// A new request: no stack yet.
    New,
    /// The user wrote `.cf-delete`.
    Deleting,
    /// The request was removed: the stack is an orphan.
    Orphan,
    /// The request does not parse: `.cf-failed` says why.
    Refused,
}

impl Fate {
    fn of(cluster: usize) -> Fate {
        match cluster % 100 {
            0 => Fate::New,
            1 => Fate::Unreported,
            2 => Fate::Deleting,
            3 => Fate::Orphan,
            4 => Fate::Refused,
            _ => Fate::Ready,
        }
    }
}

fn user_name(i: usize) -> String {
    const NAMES: [&str; 8] = [
        "alice", "bob", "chen", "dana", "emeka", "farah", "goran", "hiro",
    ];
    let name = NAMES[i % NAMES.len()];
    // A few IAM names that are no plain login name part: their stack names carry a hash.
    match i % 10 {
        0 => format!("{name}.{i}"),
        5 => format!("{name}_{i}"),
        _ => format!("{name}{i}"),
    }
}

fn cluster_name(i: usize) -> String {
    const KINDS: [&str; 5] = ["cfd", "md-run", "test", "genomics-batch", "x"];
    format!("{}-{i}", KINDS[i % KINDS.len()])
}

fn request_body(max_nodes: usize, refused: bool) -> String {
    let extra = if refused { r#", "Colour": "blue""# } else { "" };
    format!(
        r#"{{
    "ComputeInstanceType": "other",
    "ComputeSpotPrice": "0.03",
    "ComputeInstanceTypeOther": "r4.large-2C-15.25GB",
    "MasterSystemVolumeSize": "16",
    "MasterInstanceType": "other",
    "ComputeMaxNodes": "{max_nodes}",
    "MasterInstanceTypeOther": "r4.large-2C-15.25GB",
    "ComputeInitialNodes": "0",
    "AutoscalingPolicy": "enabled"{extra}
}}"#
    )
}

/// A user's own file, of one of the shapes home folders hold; `n` keeps it unique.
fn data_key(dice: &mut Dice, user: &str, n: usize) -> String {
    match dice.below(8) {
        0 | 1 => format!("{HOME}{user}/data/run-{n:06}/out.h5"),
        2 => format!(
            "{HOME}{user}/projects/p{}/results/step-{n:07}/field-{:03}.vtk",
            dice.below(20),
            dice.below(1_000)
        ),
        3 => format!("{HOME}{user}/scratch/{n:x}-{:016x}.tmp", dice.next()),
        4 => format!("{HOME}{user}/notes-{n}.txt"),
        5 => format!(
            "{HOME}{user}/src/solver/src/module_{}/part_{n}.rs",
            dice.below(50)
        ),
        6 => format!(
            "{HOME}{user}/.cache/pip/http/{:x}/{:x}/{n:08x}{:024x}",
            dice.below(16),
            dice.below(16),
            dice.next()
        ),
        _ => format!("{HOME}{user}/data/{n}/"),
    }
}

impl World {
    /// `keys` objects under the home prefix, `clusters` of them clusters', and the stacks of
    /// the clusters that have one, settled for `install`.
    fn new(keys: usize, clusters: usize, install: &Install) -> World {
        let mut dice = Dice(0x5eed_f11e_de0c_0001);
        let mut objects = Vec::with_capacity(keys);
        let mut stacks = Vec::new();
        let mut requests = HashMap::new();
        let object = |key: String, etag: String, size: u64| ObjectMeta {
            key,
            etag,
            modified: NOW - 30 * DAY,
            size,
        };
        for i in 0..clusters {
            let fate = Fate::of(i);
            let key = ClusterKey::new(&user_name(i % USERS), &cluster_name(i))
                .expect("a valid cluster key");
            let file = |suffix| key.object_key(HOME, suffix);
            let body = request_body(1 + i % 32, fate == Fate::Refused);
            let etag = format!("\"{}\"", hex_md5(body.as_bytes()));
            if fate != Fate::Orphan {
                let create = object(file(Suffix::Create), etag.clone(), body.len() as u64);
                let state = match parse_request(body.as_bytes(), &install.rules) {
                    Ok(request) => RequestState::Valid {
                        request,
                        etag: etag.clone(),
                        modified: create.modified,
                    },
                    Err(e) => RequestState::Invalid {
                        reason: e.to_string(),
                        etag: etag.clone(),
                    },
                };
                requests.insert(
                    create.key.clone(),
                    CachedRequest {
                        etag,
                        modified: create.modified,
                        state,
                    },
                );
                objects.push(create);
            }
            let markers: &[Suffix] = match fate {
                Fate::Ready | Fate::Deleting | Fate::Orphan => &[Suffix::Created, Suffix::Status],
                Fate::Refused => &[Suffix::Failed, Suffix::Status],
                Fate::New | Fate::Unreported => &[],
            };
            for suffix in markers {
                objects.push(object(file(*suffix), dice.etag(), 400));
            }
            if fate == Fate::Deleting {
                objects.push(object(file(Suffix::Delete), dice.etag(), 0));
            }
            if !matches!(fate, Fate::New | Fate::Refused) {
                let request =
                    parse_request(request_body(1 + i % 32, false).as_bytes(), &install.rules)
                        .expect("a valid request");
                let created = NOW - 30 * DAY + 600;
                let mut tags = install.identity.tags(&key, &request.hash);
                tags.insert(TAG_EXPIRES.into(), (created + 60 * DAY).to_string());
                let ip = format!("198.18.{}.{}", i / 250, i % 250 + 1);
                stacks.push(StackView {
                    name: install.identity.stack_name(&key),
                    id: format!(
                        "arn:aws:cloudformation:eu-west-2:123456789012:stack/{}/{:016x}",
                        install.identity.stack_name(&key),
                        dice.next()
                    ),
                    status: "CREATE_COMPLETE".into(),
                    status_reason: None,
                    last_change: created + 900,
                    created,
                    tags,
                    parameters: install.rules.stack_parameters(&request, &key),
                    outputs: [("LoginIp".to_owned(), ip.clone())].into(),
                    failure_reason: None,
                    login_ip: Some(ip),
                });
            }
        }
        for i in 0..MISTAKES {
            let user = user_name(i * 7 % USERS);
            let key = match i % 3 {
                0 => format!("{HOME}{user}/requests/run{i}.cf-create"),
                1 => format!("{HOME}{user}/My_Cluster{i}.cf-create"),
                _ => format!("{HOME}{user}/run{i}.cf_delete"),
            };
            // Two in three were explained by an earlier pass.
            if i % 3 != 2 {
                objects.push(object(format!("{key}.cf-failed"), dice.etag(), 200));
            }
            objects.push(object(key, dice.etag(), 200));
        }
        // An explanation whose mistaken file is gone, and a folder that is no user's.
        objects.push(object(
            format!("{HOME}{}/old run.cf-create.cf-failed", user_name(3)),
            dice.etag(),
            200,
        ));
        for n in 0..3 {
            objects.push(object(
                format!("{HOME}jean luc/notes-{n}.txt"),
                dice.etag(),
                100,
            ));
        }
        let mut n = 0;
        while objects.len() < keys {
            let user = user_name(dice.below(USERS));
            let size = dice.next() % (1 << 30);
            objects.push(object(data_key(&mut dice, &user, n), dice.etag(), size));
            n += 1;
        }
        // A listing comes in key order.
        objects.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let mut world = World {
            objects,
            stacks,
            requests,
        };
        world.settle(install);
        let planned = look(
            install,
            &world.requests,
            world.objects.clone(),
            world.stacks.clone(),
        );
        assert!(
            planned.len() < clusters / 10 + MISTAKES,
            "a settled world plans little: {} actions for {clusters} clusters",
            planned.len()
        );
        world
    }

    /// Gives every marker that exists the content the plan writes there, as after a pass
    /// that wrote them: the look then finds them up to date.
    fn settle(&mut self, install: &Install) {
        let at: HashMap<String, usize> = self
            .objects
            .iter()
            .enumerate()
            .map(|(i, o)| (o.key.clone(), i))
            .collect();
        let actions = look(
            install,
            &self.requests,
            self.objects.clone(),
            self.stacks.clone(),
        );
        for action in actions {
            if let Action::Put { key, body } = action
                && let Some(&i) = at.get(&key)
            {
                self.objects[i].etag = format!("\"{}\"", hex_md5(body.as_bytes()));
            }
        }
    }
}

/// One full look: what a resync decides, without doing it.
fn look(
    install: &Install,
    requests: &HashMap<String, CachedRequest>,
    objects: Vec<ObjectMeta>,
    stacks: Vec<StackView>,
) -> Vec<Action> {
    let mut snap = Snapshot::build(HOME, &install.identity, objects, stacks);
    let judgement = OrphanTracker::default().judge(
        Duration::from_secs(60),
        true,
        &snap.orphans(),
        &install.orphans,
    );
    let ctx = install.context();
    let mut actions = Vec::new();
    for ClusterParts {
        key,
        files,
        stack,
        unmanaged,
    } in snap.take_clusters()
    {
        let request = match &files.create {
            None => RequestState::Absent,
            Some(meta) => requests
                .get(&meta.key)
                .filter(|c| c.etag == meta.etag && c.modified == meta.modified)
                .map(|hit| hit.state.clone())
                .expect("every request was read before the look"),
        };
        let admission = match &request {
            RequestState::Valid { .. } if stack.is_none() && unmanaged.is_some() => None,
            RequestState::Valid { request, .. } => Some(Ok(Admitted {
                lifetime: Some(Duration::from_secs(14 * 86_400)),
                max_nodes: request
                    .parameters
                    .get("ComputeMaxNodes")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
                cost: None,
            })),
            _ => None,
        };
        let lifetime = match &request {
            RequestState::Valid { .. } => Some(Duration::from_secs(14 * 86_400)),
            _ => None,
        };
        let expiry = stack.as_ref().and_then(|s| {
            Some(Expiry {
                end: lifetime_end(s, None, NOW, Duration::from_secs(86_400))?,
                may_delete: true,
            })
        });
        let observed = Observed {
            orphan: judgement
                .verdicts
                .get(&key)
                .copied()
                .unwrap_or(OrphanVerdict::NotJudged),
            key,
            request,
            delete_requested: files.delete,
            markers: files.markers,
            stack,
            unmanaged,
            enrolled: true,
            admission,
            lifetime,
            expiry,
            vanished: None,
            now: NOW,
        };
        actions.extend(plan_with_phase(&observed, &ctx).actions);
    }
    actions.extend(plan_mistakes(
        &snap.mistaken,
        &snap.reports,
        HOME,
        PER_USER_WORK,
    ));
    actions
}

/// Whether criterion measures (`cargo bench`), rather than running each benchmark once as a
/// test (`cargo test`), as criterion itself decides.
fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

fn snapshot_plan(c: &mut Criterion) {
    let install = Install::new();
    // A test run (unoptimised) checks that the look runs, on a world a hundredth the size.
    let scale = if measuring() { 1 } else { 100 };
    let mut group = c.benchmark_group("snapshot_plan");
    for (label, keys, clusters, samples, seconds) in [
        ("100k", 100_000, 10_000, 20, 8),
        ("100k_1k_clusters", 100_000, 1_000, 20, 8),
        ("1m", 1_000_000, 10_000, 10, 10),
    ] {
        // Built only when this size runs, and once.
        let mut world = None;
        group.sample_size(samples);
        group.measurement_time(Duration::from_secs(seconds));
        group.bench_function(label, |b| {
            let world =
                world.get_or_insert_with(|| World::new(keys / scale, clusters / scale, &install));
            b.iter_batched(
                || (world.objects.clone(), world.stacks.clone()),
                |(objects, stacks)| look(&install, &world.requests, objects, stacks),
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, snapshot_plan);
criterion_main!(benches);
