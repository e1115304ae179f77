//! `flightdeck enrol` through the real S3 adapter against the local emulator, with the
//! repository's default customizer folder.
//!
//! Every test makes its own bucket; none resets the shared emulator.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use flightdeck::aws::s3::S3Store;
use flightdeck::enrol::{EnrolError, Enrolment, enrol};
use flightdeck::ports::ObjectStore;
use flightdeck_tests::{Emulator, unique};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPZbhMULNk97Q3/A7xwdpKy/4Nz20D7FpLeGUaRa1vrX alice@example.org";

/// The repository's `customizer/default/configure.d/`.
fn defaults() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../customizer/default/configure.d")
}

/// A store on a new, empty customizer bucket.
async fn customizer_bucket() -> S3Store {
    let emulator = Emulator::shared();
    let bucket = unique("fd-enrol");
    emulator.create_bucket(&bucket).await;
    S3Store::new(&emulator.sdk_config().await, bucket, true)
}

fn alice(default_dir: &Path) -> Enrolment<'_> {
    Enrolment {
        user: "alice",
        ssh_keys: KEY,
        default_dir,
        prefix: "customizer/",
        force: false,
    }
}

async fn keys(store: &S3Store, prefix: &str) -> BTreeSet<String> {
    store
        .list(prefix)
        .await
        .expect("listing")
        .into_iter()
        .map(|o| o.key)
        .collect()
}

async fn text(store: &S3Store, key: &str) -> String {
    let fetched = store.get(key).await.expect("get").expect("the object");
    String::from_utf8(fetched.body).expect("text")
}

#[tokio::test]
async fn enrolling_a_user_writes_the_default_scripts_and_the_keys() {
    let defaults = defaults();
    let store = customizer_bucket().await;
    let done = enrol(&store, &alice(&defaults)).await.expect("enrolled");

    let folder = "customizer/alice/configure.d/";
    let listed = keys(&store, "").await;
    assert_eq!(listed, done.written.iter().cloned().collect());
    for name in [
        "authorized_keys",
        "10-access-user.sh",
        "20-packages.sh",
        "30-hyperthreading.sh",
    ] {
        assert!(listed.contains(&format!("{folder}{name}")), "{listed:?}");
    }
    assert!(
        !listed.iter().any(|k| k.ends_with(".example")),
        "{listed:?}"
    );
    assert_eq!(
        text(&store, &format!("{folder}authorized_keys")).await,
        format!("{KEY}\n")
    );
    assert_eq!(
        text(&store, &format!("{folder}10-access-user.sh")).await,
        std::fs::read_to_string(defaults.join("10-access-user.sh")).expect("the default script")
    );
    // What the controller checks before it creates a cluster.
    assert!(store.any_under(folder).await.expect("listing"));
}

#[tokio::test]
async fn a_second_enrolment_is_refused_and_force_replaces_the_folder() {
    let defaults = defaults();
    let store = customizer_bucket().await;
    let first = enrol(&store, &alice(&defaults)).await.expect("enrolled");
    let before = keys(&store, "").await;

    let err = enrol(&store, &alice(&defaults)).await.unwrap_err();
    assert!(
        matches!(&err, EnrolError::AlreadyEnrolled { folder } if folder == "customizer/alice/"),
        "{err:?}"
    );
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(keys(&store, "").await, before);

    let stray = "customizer/alice/configure.d/99-old.sh";
    store.put(stray, "echo old").await.expect("put");
    let other = "customizer/bob/configure.d/authorized_keys";
    store.put(other, "bob's key").await.expect("put");
    let new_key = format!("# alice's new laptop\n{KEY}\n");
    let forced = Enrolment {
        ssh_keys: &new_key,
        force: true,
        ..alice(&defaults)
    };
    let done = enrol(&store, &forced).await.expect("replaced");
    assert_eq!(done.written, first.written);
    assert_eq!(done.removed, [stray]);
    assert_eq!(
        keys(&store, "customizer/alice/").await,
        first.written.iter().cloned().collect()
    );
    assert_eq!(
        text(&store, "customizer/alice/configure.d/authorized_keys").await,
        new_key
    );
    assert_eq!(text(&store, other).await, "bob's key");
}
