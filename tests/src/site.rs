//! A flightdeck install under test on the shared emulator: its own users' bucket, stack
//! prefix and owner tag; users acting with the real `aws` CLI; the controller as a process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flightdeck::aws::cloudformation::CloudFormation;
use flightdeck::config::Settings;
use flightdeck::ports::StackService;
use flightdeck_core::identity::TAG_OWNER;
use flightdeck_core::stack::StackView;

use crate::{Emulator, REGION, unique};

pub const WAIT: Duration = Duration::from_secs(90);

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

pub fn venv() -> PathBuf {
    std::env::var_os("FLIGHTDECK_VENV").map_or_else(|| root().join(".venv"), PathBuf::from)
}

/// The shared emulator, bootstrapped once with the customizer bucket (alice and bob
/// enrolled), the network in SSM and the SES identity.
pub fn emulator() -> &'static Emulator {
    static BOOTSTRAPPED: OnceLock<()> = OnceLock::new();
    let emulator = Emulator::shared();
    BOOTSTRAPPED.get_or_init(|| {
        let out = Command::new(venv().join("bin/python"))
            .arg(root().join("deploy/local/bootstrap.py"))
            .arg(emulator.endpoint())
            .output()
            .expect("running deploy/local/bootstrap.py");
        assert!(
            out.status.success(),
            "bootstrap failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    emulator
}

/// One flightdeck install under test: its own bucket, stack prefix and owner.
pub struct Site {
    /// The users' bucket.
    pub bucket: String,
    /// The `FLIGHTDECK_*` settings that make it this site.
    pub env: Vec<(String, String)>,
}

impl Site {
    pub async fn new() -> Site {
        let emulator = emulator();
        let bucket = unique("users");
        emulator.create_bucket(&bucket).await;
        let n = bucket.rsplit('-').next().unwrap().to_owned();
        let env = [
            ("FLIGHTDECK_ENDPOINT_URL", emulator.endpoint().to_owned()),
            ("FLIGHTDECK_BUCKET_NAME", bucket.clone()),
            (
                "FLIGHTDECK_STACKS_PREFIX",
                format!("t{}x{n}", std::process::id()),
            ),
            (
                "FLIGHTDECK_INSTANCE",
                format!("test-{}-{n}", std::process::id()),
            ),
            (
                "FLIGHTDECK_POLICY",
                root().join("policies/limits.toml").display().to_string(),
            ),
            (
                "FLIGHTDECK_STACKS_TEMPLATE",
                root().join("templates/cluster.yaml").display().to_string(),
            ),
            ("FLIGHTDECK_RECONCILE_RESYNC_INTERVAL", "1s".into()),
            ("FLIGHTDECK_RECONCILE_BUSY_INTERVAL", "1s".into()),
            ("FLIGHTDECK_RECONCILE_ORPHAN_GRACE", "2s".into()),
            ("FLIGHTDECK_RECONCILE_MAX_ORPHAN_DELETES", "2".into()),
            ("FLIGHTDECK_HTTP_LISTEN", "127.0.0.1:0".into()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .to_vec();
        Site { bucket, env }
    }

    pub fn settings(&self) -> Settings {
        Settings::load(
            &root().join("deploy/local/flightdeck.toml"),
            self.env.clone(),
        )
        .expect("test settings")
    }

    pub fn stack_name(&self, user: &str, cluster: &str) -> String {
        let prefix = &self
            .env
            .iter()
            .find(|(k, _)| k == "FLIGHTDECK_STACKS_PREFIX")
            .unwrap()
            .1;
        format!("{prefix}-{user}-{cluster}")
    }

    pub fn owner(&self) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == "FLIGHTDECK_INSTANCE")
            .unwrap()
            .1
            .clone()
    }

    /// Runs the real `aws` CLI as a user would, against this site's emulator.
    pub fn aws(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut cmd = Command::new(venv().join("bin/aws"));
        cmd.arg("--endpoint-url")
            .arg(emulator().endpoint())
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_DEFAULT_REGION", REGION)
            .env_remove("AWS_PROFILE")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("running the aws CLI");
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "aws {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `aws s3 cp - s3://bucket/home/<key>` with `body`.
    pub fn user_writes(&self, key: &str, body: &str) {
        self.aws(
            &["s3", "cp", "-", &format!("s3://{}/home/{key}", self.bucket)],
            Some(body),
        );
    }

    pub fn user_removes(&self, key: &str) {
        self.aws(
            &["s3", "rm", &format!("s3://{}/home/{key}", self.bucket)],
            None,
        );
    }

    pub async fn read(&self, key: &str) -> Option<String> {
        let s3 = emulator().s3().await;
        let got = s3
            .get_object()
            .bucket(&self.bucket)
            .key(format!("home/{key}"))
            .send()
            .await
            .ok()?;
        let bytes = got.body.collect().await.ok()?.into_bytes();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn phase(&self, key: &str) -> String {
        let status = self
            .read(key)
            .await
            .unwrap_or_else(|| panic!("{key} missing"));
        let v: serde_json::Value = serde_json::from_str(&status).unwrap();
        v["phase"].as_str().unwrap().to_owned()
    }

    /// Every stack carrying this site's owner tag.
    pub async fn stacks(&self) -> Vec<StackView> {
        let cfn = CloudFormation::new(&emulator().sdk_config().await);
        let owner = self.owner();
        cfn.list()
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.tags.get(TAG_OWNER) == Some(&owner))
            .collect()
    }

    pub async fn wait_for(&self, key: &str, log: &Path) -> String {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(body) = self.read(key).await {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "{key} did not appear; controller log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// The controller as a process, stopped with SIGTERM when dropped.
pub struct Controller {
    child: Child,
    /// Where its log goes.
    pub log: PathBuf,
}

impl Controller {
    pub fn start(site: &Site, args: &[&str]) -> Controller {
        let log = std::env::temp_dir().join(format!("{}.log", unique("flightdeck-controller")));
        let child = flightdeck_command(site, args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting flightdeck");
        Controller { child, log }
    }

    /// Sends SIGTERM and waits for the process to end; returns whether it exited cleanly.
    pub fn stop(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("waiting for flightdeck");
        status.success()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `flightdeck` binary of this build, run from the workspace root with the site's
/// settings and the emulator's credentials.
pub fn flightdeck_command(site: &Site, args: &[&str]) -> Command {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let bin = BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "flightdeck",
                "--bin",
                "flightdeck",
            ])
            .current_dir(root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building the flightdeck binary failed");
        // Tests run from <target>/debug/deps/, binaries from <target>/debug/.
        let exe = std::env::current_exe().unwrap();
        exe.ancestors()
            .skip(1)
            .take(2)
            .map(|d| d.join("flightdeck"))
            .find(|p| p.is_file())
            .expect("the flightdeck binary next to this program")
    });
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .current_dir(root())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .envs(site.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd
}

pub fn seed() -> String {
    std::fs::read_to_string(root().join("examples/cluster.cf-create")).unwrap()
}

/// A free port on 127.0.0.1, for a controller's `[http] listen`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP/1.1 request to a controller's endpoint; returns the status code and the body.
///
/// # Panics
/// When the connection fails.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting to the controller");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// An S3 event notification naming one object, as S3 sends it.
pub fn s3_event(bucket: &str, key: &str) -> String {
    serde_json::json!({ "Records": [ {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
        "eventName": "ObjectCreated:Put",
        "s3": { "bucket": { "name": bucket }, "object": { "key": key } }
    } ] })
    .to_string()
}

/// Waits until the controller at `addr` says it is ready.
///
/// # Panics
/// When it is not ready within a minute; shows its log.
pub fn wait_ready(addr: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok()
            && http(addr, "GET", "/readyz", None, "").0 == 200
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "controller not ready; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}
