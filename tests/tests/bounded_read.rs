//! Issue 8, hardening: a request far larger than its listing says is refused without being
//! read into memory. Alone in its test binary, because it measures this process's peak
//! memory (VmHWM): nothing else may allocate beside it.

use std::sync::Arc;

use flightdeck::app::checked;
use flightdeck::aws::cloudformation::CloudFormation;
use flightdeck::aws::ec2::Ec2;
use flightdeck::aws::s3::S3Store;
use flightdeck::aws::ses::Ses;
use flightdeck::ports::{CallError, Fetched, ObjectStore, Page, Read};
use flightdeck::reconcile::{Cloud, Reconciler};
use flightdeck_core::snapshot::ObjectMeta;
use flightdeck_tests::site::{Site, emulator};

/// The size the stale listing reports for every `.cf-create`.
const LISTED_SIZE: u64 = 200;
const MIB: u64 = 1024 * 1024;

/// S3 whose listing is stale: it reports each `.cf-create` as [`LISTED_SIZE`] bytes,
/// whatever the object is now. Everything else goes to the real store.
struct StaleListing(S3Store);

impl ObjectStore for StaleListing {
    async fn list_page(
        &self,
        prefix: &str,
        next: Option<&str>,
    ) -> Result<Page<ObjectMeta>, CallError> {
        let mut page = self.0.list_page(prefix, next).await?;
        for o in &mut page.items {
            if o.key.ends_with(".cf-create") {
                o.size = LISTED_SIZE;
            }
        }
        Ok(page)
    }
    async fn any_under(&self, prefix: &str) -> Result<bool, CallError> {
        self.0.any_under(prefix).await
    }
    async fn get(&self, key: &str) -> Result<Option<Fetched>, CallError> {
        self.0.get(key).await
    }
    async fn read(&self, key: &str, etag: &str, limit: usize) -> Result<Read, CallError> {
        self.0.read(key, etag, limit).await
    }
    async fn delete_if(&self, key: &str, etag: &str) -> Result<bool, CallError> {
        self.0.delete_if(key, etag).await
    }
    fn clock_offset(&self) -> Option<i64> {
        self.0.clock_offset()
    }
    async fn put(&self, key: &str, body: &str) -> Result<String, CallError> {
        self.0.put(key, body).await
    }
    async fn delete(&self, key: &str) -> Result<(), CallError> {
        self.0.delete(key).await
    }
    async fn put_new(&self, key: &str, body: &str) -> Result<(), CallError> {
        self.0.put_new(key, body).await
    }
    async fn put_if(
        &self,
        key: &str,
        body: &str,
        etag: Option<&str>,
    ) -> Result<Option<String>, CallError> {
        self.0.put_if(key, body, etag).await
    }
}

/// This process's peak resident memory so far, in bytes (`VmHWM`).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a VmHWM line in /proc/self/status");
    kib * 1024
}

#[tokio::test]
async fn a_64_mib_object_behind_a_small_listed_size_is_refused_with_bounded_memory() {
    let site = Site::new().await;
    let conf = emulator().sdk_config().await;
    let cloud = Cloud {
        store: StaleListing(S3Store::new(&conf, site.bucket.clone(), true)),
        customizer: StaleListing(S3Store::new(&conf, "flightdeck-customizer", true)),
        stacks: CloudFormation::new(&conf),
        instances: Ec2::new(&conf),
        mailer: Some(Ses::new(&conf, "flightdeck@example.org")),
    };
    let rec: Reconciler<_, _, _, _> = checked(
        cloud,
        site.settings(),
        Arc::new(flightdeck::metrics::Metrics::new(false)),
    )
    .await
    .expect("start-up checks");

    // 64 MiB of zeros, uploaded in one PUT by another process (the CLI), so that this
    // process never holds it: its peak memory is what the controller's read costs.
    let file = std::env::temp_dir().join(format!("{}.bin", flightdeck_tests::unique("huge")));
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(64 * MIB))
        .expect("a sparse 64 MiB file");
    site.aws(
        &[
            "s3api",
            "put-object",
            "--bucket",
            &site.bucket,
            "--key",
            "home/alice/x.cf-create",
            "--body",
            &file.display().to_string(),
        ],
        None,
    );
    let _ = std::fs::remove_file(&file);

    let before = peak_rss();
    rec.resync(false, None).await.expect("a full pass");
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 16 * MIB,
        "the pass grew the peak memory by {} MiB: the object was read whole",
        grown / MIB
    );
    let failed = site.read("alice/x.cf-failed").await;
    assert!(
        failed
            .as_deref()
            .is_some_and(|f| f.contains("the request is 67108864 bytes; the limit is 16384 bytes")),
        "{failed:?}"
    );
    assert!(site.stacks().await.is_empty(), "no stack");
}
