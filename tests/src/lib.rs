//! Integration tests of flightdeck against the local AWS emulator (moto).
//!
//! [`Emulator::shared`] starts one emulator (moto with `deploy/local/emulator_ext.py`) per test binary, the first time a test
//! asks for it, and every test of that binary shares it. Tests never reset it: they make
//! their own buckets and stacks under [`unique`] names, so they can run in parallel.
//!
//! Statics are never dropped, so the server cannot be stopped from a destructor. Instead it
//! runs under a small `sh` wrapper whose standard input is a pipe held open by the test
//! process. However that process ends (tests done, panic, Ctrl-C, SIGKILL), the kernel
//! closes the pipe; the wrapper's `read` then returns and it stops the server and removes
//! the server's log.
//!
//! moto comes from the virtualenv at `$FLIGHTDECK_VENV`, else `.venv` at the workspace root
//! (`make venv` makes it). Without it the tests fail, never skip.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use flightdeck::aws::AwsSettings;

pub mod counted;
pub mod scale;
pub mod site;

/// The region every test works in; outside us-east-1 on purpose, as a bucket there needs
/// a LocationConstraint.
pub const REGION: &str = "eu-west-2";

/// How long the server may take to answer after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs the server in the background, waits for standard input to close, then stops the
/// server and removes its log. `$0` is the venv's Python, `$1` the port, `$2` the log, `$3`
/// the emulator (moto with the project's extension, `deploy/local/emulator_ext.py`). No
/// instance boots in these tests, so wait conditions complete as soon as they are created.
const WRAPPER: &str = r#"
FLIGHTDECK_EMULATOR_WAIT_CONDITIONS=complete "$0" "$3" -H 127.0.0.1 -p "$1" >"$2" 2>&1 &
server=$!
read -r _ || true
kill "$server" 2>/dev/null
wait "$server" 2>/dev/null
rm -f "$2"
"#;

/// A running moto server.
#[derive(Debug)]
pub struct Emulator {
    endpoint: String,
    /// The wrapper; it ends after this process does, so it is never waited for.
    _wrapper: Child,
    /// The write end of the wrapper's standard input: closing it stops the server.
    _lifeline: ChildStdin,
}

impl Emulator {
    /// The emulator of this test binary, started on first use.
    ///
    /// # Panics
    /// When moto is not installed, or does not answer within 20 s.
    pub fn shared() -> &'static Emulator {
        static SHARED: OnceLock<Emulator> = OnceLock::new();
        SHARED.get_or_init(Emulator::start)
    }

    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The SDK configuration flightdeck would load with this endpoint and region, with
    /// static credentials (moto accepts any).
    pub async fn sdk_config(&self) -> SdkConfig {
        let settings = AwsSettings {
            region: Some(REGION.to_owned()),
            endpoint_url: Some(self.endpoint.clone()),
        };
        flightdeck::aws::load(&settings)
            .await
            .into_builder()
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "testing", "testing", None, None, "static",
            )))
            .build()
    }

    /// An S3 client on this emulator (path-style addressing).
    pub async fn s3(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::from(&self.sdk_config().await)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Creates a bucket named `name` in [`REGION`].
    ///
    /// # Panics
    /// When the emulator refuses.
    pub async fn create_bucket(&self, name: &str) {
        self.s3()
            .await
            .create_bucket()
            .bucket(name)
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(REGION))
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("creating bucket {name}: {e:?}"));
    }

    fn start() -> Emulator {
        let program = venv_python();
        let mut last_failure = String::new();
        // A port found free may be taken before moto binds it; try a few.
        for _ in 0..3 {
            let port = free_port();
            let log = std::env::temp_dir()
                .join(format!("flightdeck-moto-{}-{port}.log", std::process::id()));
            let mut wrapper = Command::new("sh")
                .arg("-c")
                .arg(WRAPPER)
                .arg(&program)
                .arg(port.to_string())
                .arg(&log)
                .arg(workspace_root().join("deploy/local/emulator_ext.py"))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting sh to run {}: {e}", program.display()));
            let lifeline = wrapper.stdin.take().expect("stdin is piped");
            let endpoint = format!("http://127.0.0.1:{port}");
            match wait_until_ready(port, &mut wrapper) {
                Ok(()) => {
                    return Emulator {
                        endpoint,
                        _wrapper: wrapper,
                        _lifeline: lifeline,
                    };
                }
                Err(why) => {
                    let output = fs::read_to_string(&log).unwrap_or_default();
                    last_failure = format!("{why}; its output:\n{output}");
                    drop(lifeline);
                    let _ = wrapper.wait();
                }
            }
        }
        panic!(
            "the emulator ({}) did not start: {last_failure}",
            program.display()
        );
    }
}

/// A name no other test of this binary uses: `<prefix>-<pid>-<n>`. Lower case, digits and
/// hyphens only, so it is both a valid bucket name and a valid stack name when `prefix`
/// is (lower-case letters first).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
}

/// The Python of the test virtualenv, which has moto.
///
/// # Panics
/// When moto is missing: the tests need it and must not pass without it.
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("FLIGHTDECK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv"));
    let program = venv.join("bin").join("python");
    assert!(
        venv.join("bin").join("moto_server").is_file(),
        "{} not found: these tests need the local AWS emulator. Run `make test` (or \
         `make venv` first), or set FLIGHTDECK_VENV to a virtualenv with moto[server] installed.",
        program.display()
    );
    program
}

fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Waits until `GET /moto-api/` answers 200, or the wrapper ends, or time runs out.
fn wait_until_ready(port: u16, wrapper: &mut Child) -> Result<(), String> {
    let started = Instant::now();
    while started.elapsed() < START_TIMEOUT {
        if answers(port) {
            return Ok(());
        }
        if let Ok(Some(status)) = wrapper.try_wait() {
            return Err(format!("it exited ({status})"));
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(format!("no answer on port {port} within {START_TIMEOUT:?}"))
}

/// Whether the server answers its status page with 200.
fn answers(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
    };
    attempt().unwrap_or(false)
}
