//! Three replicas of the controller on one emulator, the leader killed with SIGKILL every
//! few seconds while users create 40 clusters and delete 20, a user at their quota asks
//! for more with hints sent to every replica, and every notice is counted at the mail
//! server. What must hold: one stack per cluster, never two replicas mutating in
//! overlapping terms (from the `flightdeck::mutation` log lines of every replica), the
//! quota never exceeded, each notice sent at most once, and once things are calm every
//! notice sent or reported (a leader killed between claiming a notice and sending it loses
//! it, and the next leader logs that). Three more kills with nothing else going on measure
//! the takeover: until another replica holds the lease, and until it completes a full pass.
//!
//! The replicas run with a short election (lease 3 s, renew deadline 2 s, retry 1 s) and a
//! 1 s resync, so that a test of many takeovers stays short. The takeover times are
//! printed, not asserted: this machine is shared and its timing noisy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flightdeck_core::identity::{TAG_CLUSTER, TAG_USER};
use flightdeck_tests::site::{
    Site, emulator, flightdeck_command, free_port, http, root, s3_event, seed,
};
use flightdeck_tests::unique;

const TOKEN: &str = "replicas-test-token-0123456789";
const USERS: usize = 10;
const CLUSTERS: usize = 4;
/// The user at their quota, and that quota.
const QUOTA_USER: &str = "q";
const QUOTA: usize = 2;
const KILL_EVERY: Duration = Duration::from_secs(5);
const LEASE: Duration = Duration::from_secs(3);

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// One replica process.
struct Replica {
    identity: String,
    addr: String,
    log: PathBuf,
    child: Child,
}

impl Drop for Replica {
    /// A test that fails leaves no replica running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The replicas running now, every log written, and when each replica was killed.
struct Fleet {
    site_env: Site,
    policy: PathBuf,
    running: Vec<Replica>,
    logs: Vec<(String, PathBuf)>,
    killed: BTreeMap<String, u128>,
    generation: usize,
}

impl Fleet {
    /// SIGKILLs the running replica `identity` and starts another in its slot; returns when
    /// it was killed, or `None` when no such replica runs.
    fn kill(&mut self, identity: &str) -> Option<u128> {
        let i = self.running.iter().position(|r| r.identity == identity)?;
        let mut r = self.running.remove(i);
        r.child.kill().unwrap();
        let at = now_ms();
        let _ = r.child.wait();
        self.killed.insert(r.identity.clone(), at);
        let slot = r.identity[1..2].parse().unwrap();
        let new = self.start(slot);
        self.running.push(new);
        Some(at)
    }

    fn start(&mut self, slot: usize) -> Replica {
        self.generation += 1;
        let identity = format!("r{slot}-g{}", self.generation);
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::env::temp_dir().join(format!("{}.log", unique(&identity)));
        let child = flightdeck_command(
            &self.site_env,
            &["run", "--config", "deploy/local/flightdeck.toml"],
        )
        .env("FLIGHTDECK_HTTP_LISTEN", &addr)
        .env("FLIGHTDECK_ELECTION_IDENTITY", &identity)
        .env("FLIGHTDECK_ELECTION_LEASE_DURATION", "3s")
        .env("FLIGHTDECK_ELECTION_RENEW_DEADLINE", "2s")
        .env("FLIGHTDECK_ELECTION_RETRY_PERIOD", "1s")
        .env("FLIGHTDECK_LOG_FORMAT", "json")
        .env("FLIGHTDECK_HINT_TOKEN", TOKEN)
        .env("FLIGHTDECK_POLICY", &self.policy)
        .env("FLIGHTDECK_METRICS_PER_USER", "false")
        .env("RUST_LOG", "info,flightdeck::mutation=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting a replica");
        self.logs.push((identity.clone(), log.clone()));
        Replica {
            identity,
            addr,
            log,
            child,
        }
    }
}

/// The admission policy of the test: the shipped one, without enrolment (the shared
/// customizer bucket enrols only alice and bob), four clusters a user (nodes and dollars
/// unbounded), two for the quota user.
fn policy() -> PathBuf {
    let text = std::fs::read_to_string(root().join("policies/limits.toml")).unwrap();
    let text = text
        .replace("require_enrolment = true", "require_enrolment = false")
        .replacen("max_nodes = 64", "max_nodes = 1000", 1)
        .replacen(
            "dollars_per_hour = \"10.00\"",
            "dollars_per_hour = \"1000.00\"",
            1,
        )
        .replacen(
            "[limits]\nclusters = 3",
            &format!("[limits]\nclusters = {CLUSTERS}"),
            1,
        );
    assert!(text.contains(&format!(
        "[limits]\nclusters = {CLUSTERS}\nmax_nodes = 1000\ndollars_per_hour = \"1000.00\""
    )));
    let text = format!("{text}\n[users.{QUOTA_USER}]\nclusters = {QUOTA}\n");
    let path = std::env::temp_dir().join(format!("{}.toml", unique("replicas-policy")));
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes each `(key, body)` under `home/` with one `aws s3 cp --recursive`, as users with
/// the CLI would.
fn users_write(site: &Site, files: &[(String, String)]) {
    let dir = std::env::temp_dir().join(unique("replicas-upload"));
    for (key, body) in files {
        let path = dir.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    site.aws(
        &[
            "s3",
            "cp",
            "--recursive",
            "--quiet",
            &dir.display().to_string(),
            &format!("s3://{}/home/", site.bucket),
        ],
        None,
    );
    std::fs::remove_dir_all(dir).unwrap();
}

async fn keys_under_home(site: &Site) -> BTreeSet<String> {
    let s3 = emulator().s3().await;
    let mut keys = BTreeSet::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(&site.bucket)
            .prefix("home/")
            .set_continuation_token(token)
            .send()
            .await
            .expect("listing the bucket");
        for o in page.contents() {
            keys.insert(o.key().unwrap().trim_start_matches("home/").to_owned());
        }
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return keys;
        }
    }
}

async fn lease_holder(site: &Site) -> Option<(String, u64)> {
    let s3 = emulator().s3().await;
    let got = s3
        .get_object()
        .bucket(&site.bucket)
        .key("flightdeck/leader.json")
        .send()
        .await
        .ok()?;
    let body = got.body.collect().await.ok()?.into_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some((v["holder"].as_str()?.to_owned(), v["term"].as_u64()?))
}

/// Waits until every key in `want` is in the bucket, killing the leader every few seconds
/// meanwhile (see [`chaos`]).
async fn wait_for_keys(site: &Site, want: &BTreeSet<String>, fleet: &Mutex<Fleet>) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let have = keys_under_home(site).await;
        let missing: Vec<_> = want.difference(&have).collect();
        if missing.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<_> = fleet
                .lock()
                .unwrap()
                .logs
                .iter()
                .map(|(i, l)| format!("{i}: {}", l.display()))
                .collect();
            panic!("still missing after 10 minutes: {missing:?}; logs: {logs:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the chaos saw.
#[derive(Default)]
struct Seen {
    kills: Vec<(String, u128)>,
    /// Time from each kill until the lease named another replica in a higher term.
    takeovers_ms: Vec<u128>,
    most_quota_stacks: usize,
    hints_accepted: usize,
    hints_standby: usize,
}

/// Until `stop`: every [`KILL_EVERY`], SIGKILL the replica the lease names and start a new
/// one in its place; watch how soon another replica holds the lease; count the quota user's
/// stacks; send hints for the quota user's extra requests to every replica.
async fn chaos(site: &Site, fleet: &Mutex<Fleet>, stop: &AtomicBool, seen: &Mutex<Seen>) {
    let mut last_kill = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let quota_stacks = site
            .stacks()
            .await
            .iter()
            .filter(|s| s.tags.get(TAG_USER).map(String::as_str) == Some(QUOTA_USER))
            .count();
        let addrs: Vec<String> = fleet
            .lock()
            .unwrap()
            .running
            .iter()
            .map(|r| r.addr.clone())
            .collect();
        {
            let mut s = seen.lock().unwrap();
            s.most_quota_stacks = s.most_quota_stacks.max(quota_stacks);
        }
        for addr in addrs {
            for c in QUOTA..CLUSTERS {
                let key = format!("home/{QUOTA_USER}/c{c}.cf-create");
                let event = s3_event(&site.bucket, &key);
                let addr = addr.clone();
                let status = tokio::task::spawn_blocking(move || {
                    std::net::TcpStream::connect(&addr)
                        .ok()
                        .map(|_| http(&addr, "POST", "/hints", Some(TOKEN), &event).0)
                })
                .await
                .unwrap();
                let mut s = seen.lock().unwrap();
                match status {
                    Some(202) => s.hints_accepted += 1,
                    Some(503) => s.hints_standby += 1,
                    _ => {}
                }
            }
        }
        if last_kill.elapsed() >= KILL_EVERY
            && let Some((holder, term)) = lease_holder(site).await
        {
            let killed = fleet.lock().unwrap().kill(&holder);
            if let Some(at) = killed {
                last_kill = Instant::now();
                let who = holder;
                let (takeover, _) = successor(site, &who, term, at).await;
                let mut s = seen.lock().unwrap();
                s.kills.push((who, at));
                s.takeovers_ms.push(takeover);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the lease names a replica other than `killed` in a term above `term`;
/// returns how long after `at` that was seen, and who.
async fn successor(site: &Site, killed: &str, term: u64, at: u128) -> (u128, String) {
    loop {
        if let Some((h, t)) = lease_holder(site).await
            && h != killed
            && t > term
        {
            return (now_ms() - at, h);
        }
        assert!(
            now_ms() - at < 60_000,
            "nobody took over within a minute of killing {killed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With nothing else going on: SIGKILLs the leader, and returns how soon another replica
/// held the lease and how soon it completed its first full pass.
async fn calm_takeover(site: &Site, fleet: &Mutex<Fleet>) -> (u128, u128) {
    let (holder, term) = lease_holder(site).await.expect("a lease");
    let at = fleet
        .lock()
        .unwrap()
        .kill(&holder)
        .expect("the holder is running");
    let (lease, who) = successor(site, &holder, term, at).await;
    loop {
        let logs = fleet.lock().unwrap().logs.clone();
        if let Some(t) = first_resync_after(&logs, &who, at) {
            return (lease, t - at);
        }
        assert!(
            now_ms() - at < 60_000,
            "{who} took over but completed no pass within a minute"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The subjects of the notices a replica found claimed but maybe never sent (its sender
/// was killed between claim and send), from the logs.
fn unconfirmed_subjects(logs: &[(String, PathBuf)]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, log) in logs {
        for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if !v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("a notice may not have gone out"))
            {
                continue;
            }
            let what = match v["event"].as_str() {
                Some("ready") => "is ready",
                Some("deleted") => "is deleted",
                _ => continue,
            };
            out.insert(subject(
                v["cluster"].as_str().unwrap_or_default(),
                v["user"].as_str().unwrap_or_default(),
                what,
            ));
        }
    }
    out
}

fn subject(cluster: &str, user: &str, what: &str) -> String {
    format!("[flightdeck] cluster {cluster} of {user} {what}")
}

/// One mutating call from the logs: who, in which term, from when to when (epoch ms).
#[derive(Debug)]
struct Mutation {
    replica: String,
    term: u64,
    started: u128,
    ended: u128,
}

/// Every mutating call of every replica: a `mutation` line has its start and end; a
/// `mutating` line with no `mutation` after it was cut off by the replica's death, so it
/// ends when that replica was killed (or stopped).
fn mutations(logs: &[(String, PathBuf)], ended: &BTreeMap<String, u128>) -> Vec<Mutation> {
    let mut out = Vec::new();
    for (identity, log) in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let mut open: BTreeMap<(u64, String, String, u128), usize> = BTreeMap::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let message = v["message"].as_str().unwrap_or_default();
            if message != "mutating" && message != "mutation" {
                continue;
            }
            let term = v["term"].as_u64().unwrap();
            let op = v["operation"].as_str().unwrap().to_owned();
            let on = v["on"].as_str().unwrap().to_owned();
            let started = u128::from(v["started_ms"].as_u64().unwrap());
            assert_eq!(v["replica"].as_str(), Some(identity.as_str()));
            let id = (term, op, on, started);
            if message == "mutating" {
                *open.entry(id).or_default() += 1;
            } else {
                if let Some(n) = open.get_mut(&id) {
                    *n -= 1;
                }
                out.push(Mutation {
                    replica: identity.clone(),
                    term,
                    started,
                    ended: u128::from(v["ended_ms"].as_u64().unwrap()),
                });
            }
        }
        for ((term, _, _, started), n) in open {
            for _ in 0..n {
                out.push(Mutation {
                    replica: identity.clone(),
                    term,
                    started,
                    ended: ended.get(identity).copied().unwrap_or(u128::MAX),
                });
            }
        }
    }
    out
}

/// Subjects of the emails the mail server (the emulator's SES) accepted.
fn sent_subjects() -> Vec<String> {
    let out = Command::new("curl")
        .args([
            "-sf",
            &format!("{}/moto-api/data.json", emulator().endpoint()),
        ])
        .output()
        .expect("running curl");
    assert!(out.status.success(), "reading the emulator's state failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["ses"]["Message"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["subject"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// When `replica` first logged a complete full pass after `after` (epoch ms).
fn first_resync_after(logs: &[(String, PathBuf)], replica: &str, after: u128) -> Option<u128> {
    let (_, log) = logs.iter().find(|(identity, _)| identity == replica)?;
    std::fs::read_to_string(log)
        .ok()?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "resync complete")
        .filter_map(|v| epoch_ms_of(v["timestamp"].as_str()?))
        .find(|t| *t >= after)
}

/// `2026-12-03T14:35:49.582562Z` in milliseconds since the epoch.
fn epoch_ms_of(stamp: &str) -> Option<u128> {
    let n = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, min, s, ms) = (n(11..13)?, n(14..16)?, n(17..19)?, n(20..23)?);
    // Days from the civil date (proleptic Gregorian), March-based years.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u128::try_from((((days * 24 + h) * 60 + min) * 60 + s) * 1000 + ms).ok()
}

fn median(v: &mut [u128]) -> u128 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_with_the_leader_killed_every_few_seconds_act_as_one() {
    let site = Site::new().await;
    let fleet = Arc::new(Mutex::new(Fleet {
        site_env: Site {
            bucket: site.bucket.clone(),
            env: site.env.clone(),
        },
        policy: policy(),
        running: Vec::new(),
        logs: Vec::new(),
        killed: BTreeMap::new(),
        generation: 0,
    }));
    for slot in 0..3 {
        let r = fleet.lock().unwrap().start(slot);
        fleet.lock().unwrap().running.push(r);
    }
    let (stop, seen) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(Seen::default())),
    );
    let chaos = {
        let (fleet, stop, seen) = (fleet.clone(), stop.clone(), seen.clone());
        let site = Site {
            bucket: site.bucket.clone(),
            env: site.env.clone(),
        };
        tokio::spawn(async move { chaos(&site, &fleet, &stop, &seen).await })
    };

    // The quota user's two clusters first, then 40 creates in four waves, then the quota
    // user's two more (refused, however hard every replica is hinted).
    let request = seed();
    let file = |user: &str, c: usize, suffix: &str, body: &str| {
        (format!("{user}/c{c}.{suffix}"), body.to_owned())
    };
    users_write(
        &site,
        &(0..QUOTA)
            .map(|c| file(QUOTA_USER, c, "cf-create", &request))
            .collect::<Vec<_>>(),
    );
    for c in 0..CLUSTERS {
        let wave: Vec<_> = (0..USERS)
            .map(|u| file(&format!("u{u}"), c, "cf-create", &request))
            .collect();
        users_write(&site, &wave);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut created: BTreeSet<String> = (0..USERS)
        .flat_map(|u| (0..CLUSTERS).map(move |c| format!("u{u}/c{c}.cf-created")))
        .collect();
    created.extend((0..QUOTA).map(|c| format!("{QUOTA_USER}/c{c}.cf-created")));
    wait_for_keys(&site, &created, &fleet).await;
    users_write(
        &site,
        &(QUOTA..CLUSTERS)
            .map(|c| file(QUOTA_USER, c, "cf-create", &request))
            .collect::<Vec<_>>(),
    );

    // 20 deletes, in two waves.
    for c in 0..2 {
        let wave: Vec<_> = (0..USERS)
            .map(|u| file(&format!("u{u}"), c, "cf-delete", ""))
            .collect();
        users_write(&site, &wave);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut settled: BTreeSet<String> = (0..USERS)
        .flat_map(|u| (0..2).map(move |c| format!("u{u}/c{c}.cf-deleted")))
        .collect();
    settled.extend((QUOTA..CLUSTERS).map(|c| format!("{QUOTA_USER}/c{c}.cf-failed")));
    wait_for_keys(&site, &settled, &fleet).await;
    stop.store(true, Ordering::SeqCst);
    chaos.await.unwrap();

    // Calm: the last leader completes its passes and empties the outbox. Every notice is
    // then sent, or was found claimed by a replica killed before it sent it.
    let mut expected: BTreeSet<String> = (0..USERS)
        .flat_map(|u| {
            (0..CLUSTERS).map(move |c| subject(&format!("c{c}"), &format!("u{u}"), "is ready"))
        })
        .collect();
    expected.extend((0..QUOTA).map(|c| subject(&format!("c{c}"), QUOTA_USER, "is ready")));
    expected.extend((0..USERS).flat_map(|u| {
        (0..2).map(move |c| subject(&format!("c{c}"), &format!("u{u}"), "is deleted"))
    }));
    let calm = Instant::now();
    let missing = loop {
        let logs = fleet.lock().unwrap().logs.clone();
        let accounted: BTreeSet<String> = sent_subjects()
            .into_iter()
            .chain(unconfirmed_subjects(&logs))
            .collect();
        let missing: Vec<String> = expected.difference(&accounted).cloned().collect();
        if missing.is_empty() || calm.elapsed() > Duration::from_secs(120) {
            break missing;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    assert!(
        missing.is_empty(),
        "notices neither sent nor reported: {missing:?}"
    );

    // Takeovers with nothing else going on: lease, and the successor's first full pass.
    let mut calm_takeovers = Vec::new();
    for _ in 0..3 {
        calm_takeovers.push(calm_takeover(&site, &fleet).await);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let (logs, ended) = {
        let mut f = fleet.lock().unwrap();
        for mut r in std::mem::take(&mut f.running) {
            let _ = Command::new("kill")
                .args(["-TERM", &r.child.id().to_string()])
                .status();
            let _ = r.child.wait();
            f.killed.insert(r.identity.clone(), now_ms());
            assert!(r.log.exists());
        }
        (f.logs.clone(), f.killed.clone())
    };
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    // One stack per cluster, and exactly the clusters that should be there.
    let stacks = site.stacks().await;
    let mut by_cluster: BTreeMap<(String, String), usize> = BTreeMap::new();
    for s in &stacks {
        *by_cluster
            .entry((s.tags[TAG_USER].clone(), s.tags[TAG_CLUSTER].clone()))
            .or_default() += 1;
    }
    let duplicates: Vec<_> = by_cluster.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "duplicate stacks: {duplicates:?}");
    let mut expected: BTreeSet<(String, String)> = (0..USERS)
        .flat_map(|u| (2..CLUSTERS).map(move |c| (format!("u{u}"), format!("c{c}"))))
        .collect();
    expected.extend((0..QUOTA).map(|c| (QUOTA_USER.to_owned(), format!("c{c}"))));
    assert_eq!(
        by_cluster.keys().cloned().collect::<BTreeSet<_>>(),
        expected
    );

    // The quota held, though every replica was hinted.
    assert!(
        seen.most_quota_stacks <= QUOTA,
        "the quota user had {} stacks",
        seen.most_quota_stacks
    );
    let refused = site
        .read(&format!("{QUOTA_USER}/c{QUOTA}.cf-failed"))
        .await
        .unwrap();
    assert!(refused.contains("your limit is 2"), "{refused}");

    // No two replicas ever mutated in overlapping terms.
    let calls = mutations(&logs, &ended);
    let mut terms: BTreeMap<u64, (BTreeSet<String>, u128, u128, usize)> = BTreeMap::new();
    for m in &calls {
        let t = terms
            .entry(m.term)
            .or_insert((BTreeSet::new(), u128::MAX, 0, 0));
        t.0.insert(m.replica.clone());
        t.1 = t.1.min(m.started);
        t.2 = t.2.max(m.ended);
        t.3 += 1;
    }
    assert!(
        calls.len() > 200,
        "the replicas mutated: {} calls",
        calls.len()
    );
    assert!(terms.len() >= 3, "several terms acted: {:?}", terms.keys());
    for (term, (replicas, _, _, _)) in &terms {
        assert_eq!(
            replicas.len(),
            1,
            "term {term} was acted in by {replicas:?}"
        );
    }
    for ((a, (ra, _, end_a, _)), (b, (rb, start_b, _, _))) in terms.iter().zip(terms.iter().skip(1))
    {
        assert!(
            end_a < start_b,
            "term {a} ({ra:?}) mutated until {end_a}, term {b} ({rb:?}) from {start_b}"
        );
    }

    // Each notice at most once; and mail did go out.
    let subjects = sent_subjects();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &subjects {
        *counts.entry(s.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "notices sent more than once: {twice:?}");
    let ready = subjects.iter().filter(|s| s.ends_with("is ready")).count();
    let deleted = subjects
        .iter()
        .filter(|s| s.ends_with("is deleted"))
        .count();
    let unconfirmed = unconfirmed_subjects(&logs);

    assert!(
        seen.kills.len() >= 5,
        "the leader was killed {} times",
        seen.kills.len()
    );
    let mut takeovers = seen.takeovers_ms.clone();
    println!(
        "replicas: {} kills; lease taken over after a median {} ms, at most {} ms (lease {} ms); \
         calm takeovers (lease, first full pass) in ms: {calm_takeovers:?}; \
         {} mutating calls in {} terms; {} stacks; notices: {ready} ready and {deleted} deleted \
         of 42 and 20, none twice, {} found claimed and maybe unsent; hints: {} accepted, {} answered 503 by a standby; \
         the quota user never had more than {} stacks",
        seen.kills.len(),
        median(&mut takeovers),
        takeovers.iter().max().unwrap(),
        LEASE.as_millis(),
        calls.len(),
        terms.len(),
        stacks.len(),
        unconfirmed.len(),
        seen.hints_accepted,
        seen.hints_standby,
        seen.most_quota_stacks,
    );
}

#[test]
fn log_timestamps_read_as_epoch_milliseconds() {
    assert_eq!(epoch_ms_of("1970-01-01T00:00:00.000000Z"), Some(0));
    // A line of a replica's log and the ended_ms it carried.
    assert_eq!(
        epoch_ms_of("2026-12-03T14:35:49.582562Z"),
        Some(1_796_308_549_582)
    );
    assert_eq!(
        epoch_ms_of("2024-02-29T00:00:00.001Z"),
        Some(1_709_164_800_001)
    );
    assert_eq!(epoch_ms_of("garbage"), None);
}
