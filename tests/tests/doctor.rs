//! `flightdeck doctor`, the binary, against the local emulator: a deliberately broken
//! install fails each check with its own line, and passes once each piece is fixed.
//!
//! Every test makes its own buckets, SSM names and SES identities; none resets the shared
//! emulator.

use flightdeck_tests::site::{Site, emulator, flightdeck_command, free_port, root};
use flightdeck_tests::unique;

/// Runs `flightdeck doctor` for `site` with the local configuration; its exit code and
/// standard output.
fn doctor(site: &Site, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["doctor", "--config", "deploy/local/flightdeck.toml"];
    args.extend_from_slice(extra);
    let out = flightdeck_command(site, &args)
        .output()
        .expect("running flightdeck doctor");
    let stdout = String::from_utf8(out.stdout).expect("text");
    let code = out.status.code().expect("an exit code");
    (code, stdout)
}

/// The line of one check: its tag (`ok`, `FAIL`, `--`) and the rest.
fn line<'a>(out: &'a str, check: &str) -> (&'a str, &'a str) {
    out.lines()
        .find_map(|l| {
            let (tag, rest) = l.split_once(' ')?;
            rest.trim_start()
                .starts_with(&format!("{check}: "))
                .then_some((tag, rest.trim_start()))
        })
        .unwrap_or_else(|| panic!("no line for {check} in:\n{out}"))
}

/// The checks whose lines say FAIL.
fn failed(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("FAIL  "))
        .map(|rest| rest.split(": ").next().unwrap_or_default().to_owned())
        .collect()
}

fn set(site: &mut Site, key: &str, value: &str) {
    site.env.retain(|(k, _)| k != key);
    site.env.push((key.to_owned(), value.to_owned()));
}

#[tokio::test]
async fn a_broken_install_fails_each_check_and_passes_once_each_is_fixed() {
    let mut site = Site::new().await;
    let customizer = unique("cust");
    emulator().create_bucket(&customizer).await;
    let image = format!("/{}/image-id", unique("doctor"));
    let domain = format!("{}.example", unique("mail"));
    for (key, value) in [
        ("FLIGHTDECK_CUSTOMIZER_BUCKET", customizer.as_str()),
        ("FLIGHTDECK_PARAMETER_ImageId", image.as_str()),
        ("FLIGHTDECK_NOTIFY_FROM", &format!("flightdeck@{domain}")),
        ("FLIGHTDECK_HINT_TOKEN", "0123456789abcdef0123"),
        ("FLIGHTDECK_PARAMETER_NotInTheTemplate", "x"),
    ] {
        set(&mut site, key, value);
    }

    let (code, out) = doctor(&site, &["--allow-unchecked"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        failed(&out),
        [
            "template",
            "ssm parameters",
            "ses identity",
            "bucket notification",
            "customizer defaults"
        ],
        "{out}"
    );
    let (_, template) = line(&out, "template");
    assert!(
        template.contains("setting `stacks.parameters`: fixed parameter `NotInTheTemplate` is not a parameter of the template — fix: "),
        "{template}"
    );
    let (_, ssm) = line(&out, "ssm parameters");
    assert!(ssm.contains(&format!("{image} (ImageId)")), "{ssm}");
    assert!(ssm.contains("stacks.parameters.ImageId"), "{ssm}");
    assert!(!ssm.contains("/flightdeck/network/vpc-id"), "{ssm}");
    let (_, ses) = line(&out, "ses identity");
    assert!(
        ses.contains(&format!(
            "SES has no identity flightdeck@{domain} nor {domain}"
        )),
        "{ses}"
    );
    let (_, notification) = line(&out, "bucket notification");
    assert!(
        notification.contains(&format!("s3://{} sends no ObjectCreated", site.bucket)),
        "{notification}"
    );
    let (_, defaults) = line(&out, "customizer defaults");
    assert!(
        defaults.contains(&format!(
            "s3://{customizer}/customizer/default/configure.d/ is empty"
        )),
        "{defaults}"
    );

    // One fix at a time: each turns its own line to ok.
    site.env
        .retain(|(k, _)| k != "FLIGHTDECK_PARAMETER_NotInTheTemplate");
    let (_, out) = doctor(&site, &[]);
    assert_eq!(line(&out, "template").0, "ok", "{out}");
    assert_eq!(failed(&out).len(), 4, "{out}");

    site.aws(
        &[
            "ssm",
            "put-parameter",
            "--type",
            "String",
            "--name",
            &image,
            "--value",
            "ami-0d5eff06f840b45e9",
        ],
        None,
    );
    let (_, out) = doctor(&site, &[]);
    assert_eq!(line(&out, "ssm parameters").0, "ok", "{out}");
    assert_eq!(failed(&out).len(), 3, "{out}");

    site.aws(
        &[
            "sesv2",
            "create-email-identity",
            "--email-identity",
            &domain,
        ],
        None,
    );
    let (_, out) = doctor(&site, &[]);
    let (tag, ses) = line(&out, "ses identity");
    assert_eq!(tag, "ok", "{out}");
    assert!(
        ses.contains(&format!("its domain {domain} is verified")),
        "{ses}"
    );
    assert_eq!(failed(&out).len(), 2, "{out}");

    let forwarder = "arn:aws:lambda:eu-west-2:123456789012:function:flightdeck-forward";
    let notification = std::fs::read_to_string(root().join("deploy/lambda/notification.json"))
        .expect("the shipped notification configuration")
        .replace(
            "arn:aws:lambda:REGION:ACCOUNT_ID:function:FUNCTION_NAME",
            forwarder,
        );
    site.aws(
        &[
            "s3api",
            "put-bucket-notification-configuration",
            "--bucket",
            &site.bucket,
            "--notification-configuration",
            &notification,
        ],
        None,
    );
    let (_, out) = doctor(&site, &[]);
    let (tag, notification) = line(&out, "bucket notification");
    assert_eq!(tag, "ok", "{out}");
    assert!(
        notification.ends_with(&format!("under home/ to {forwarder}")),
        "{notification}"
    );
    assert_eq!(failed(&out), ["customizer defaults"], "{out}");

    let defaults = root().join("customizer/default/configure.d/");
    site.aws(
        &[
            "s3",
            "cp",
            "--recursive",
            &defaults.display().to_string(),
            &format!("s3://{customizer}/customizer/default/configure.d/"),
        ],
        None,
    );
    let (code, out) = doctor(&site, &[]);
    assert!(failed(&out).is_empty(), "{out}");
    // The emulator cannot simulate IAM policies: never "ok", and a failure unless accepted.
    let (tag, permissions) = line(&out, "permissions");
    assert_eq!(tag, "--", "{out}");
    assert!(
        permissions.starts_with(
            "permissions: not checked: IAM did not simulate the policies of arn:aws:iam::"
        ),
        "{permissions}"
    );
    assert_eq!(code, 1, "a check not made fails doctor: {out}");
    let (code, out) = doctor(&site, &["--allow-unchecked"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("doctor: 7 ok, 0 failed, 1 not checked (a check not made fails doctor unless --allow-unchecked)\n"), "{out}");
}

#[tokio::test]
async fn the_local_install_passes() {
    let emulator = emulator();
    let site = Site {
        bucket: "flightdeck-users".into(),
        env: vec![(
            "FLIGHTDECK_ENDPOINT_URL".into(),
            emulator.endpoint().to_owned(),
        )],
    };
    let (code, out) = doctor(&site, &["--allow-unchecked"]);
    assert_eq!(code, 0, "{out}");
    assert!(failed(&out).is_empty(), "{out}");
    assert_eq!(
        line(&out, "ssm parameters").1,
        "ssm parameters: /flightdeck/local/image-id (ImageId), /flightdeck/network/subnet-id (SubnetId), /flightdeck/network/vpc-id (VpcId) exist"
    );
}

#[tokio::test]
async fn a_configuration_that_does_not_load_is_a_failed_line() {
    let mut site = Site::new().await;
    set(&mut site, "FLIGHTDECK_RECONCILE_RESYNC_INTERVAL", "soon");
    let (code, out) = doctor(&site, &["--allow-unchecked"]);
    assert_eq!(code, 1, "{out}");
    let (tag, configuration) = line(&out, "configuration");
    assert_eq!(tag, "FAIL");
    assert!(
        configuration.contains("setting `reconcile.resync_interval`"),
        "{configuration}"
    );
    assert!(
        configuration.contains("fix: correct `reconcile.resync_interval`"),
        "{configuration}"
    );
}

#[tokio::test]
async fn doctor_that_cannot_reach_aws_exits_2() {
    let mut site = Site::new().await;
    set(
        &mut site,
        "FLIGHTDECK_ENDPOINT_URL",
        &format!("http://127.0.0.1:{}", free_port()),
    );
    let (code, out) = doctor(&site, &["--allow-unchecked"]);
    assert_eq!(code, 2, "{out}");
    let (tag, identity) = line(&out, "aws identity");
    assert_eq!(tag, "FAIL");
    assert!(
        identity.contains("AWS cannot be asked who doctor runs as"),
        "{identity}"
    );
    assert!(
        out.ends_with("AWS could not be asked, nothing else was checked\n"),
        "{out}"
    );
}
