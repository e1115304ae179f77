//! Measures how soon a hint turns into a CreateStack: the controller runs as a process on
//! the local emulator with its resync an hour away, so only hints act; for each of 50 new
//! requests, the time from just before `POST /hints` to the controller's own log line
//! "stack create started" (which it writes when CreateStack has returned).
//!
//! `make bench-hints` runs it; it prints every sample, then the median and the worst.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flightdeck_tests::site::{Controller, Site, free_port, http, s3_event, seed, wait_ready};

const SAMPLES: usize = 50;

/// Seconds since midnight UTC of a log timestamp like `2026-12-01T11:07:22.601987Z`.
fn seconds_of_day(timestamp: &str) -> Option<f64> {
    let time = timestamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn now_of_day() -> f64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (t.as_secs() % 86_400) as f64 + f64::from(t.subsec_micros()) / 1e6
}

/// When the log says the stack of `cluster` started, in seconds of the day.
fn create_logged(log: &str, cluster: &str) -> Option<f64> {
    log.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["message"] == "stack create started" && v["cluster"] == cluster)
            .then(|| seconds_of_day(v["timestamp"].as_str()?))
            .flatten()
    })
}

#[tokio::main]
async fn main() {
    let mut site = Site::new().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let token = "bench-token-0123456789";
    site.env.extend(
        [
            ("FLIGHTDECK_HTTP_LISTEN", addr.clone()),
            ("FLIGHTDECK_HINT_TOKEN", token.to_owned()),
            ("FLIGHTDECK_RECONCILE_RESYNC_INTERVAL", "1h".to_owned()),
            ("FLIGHTDECK_RECONCILE_BUSY_INTERVAL", "1h".to_owned()),
            ("FLIGHTDECK_LOG_FORMAT", "json".to_owned()),
            ("FLIGHTDECK_NOTIFY_ENABLED", "false".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let controller = Controller::start(&site, &["run", "--config", "deploy/local/flightdeck.toml"]);
    wait_ready(&addr, &controller.log);
    let s3 = flightdeck_tests::Emulator::shared().s3().await;
    let body = seed();
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let cluster = format!("h{i}");
        let key = format!("home/alice/{cluster}.cf-create");
        s3.put_object()
            .bucket(&site.bucket)
            .key(&key)
            .body(body.clone().into_bytes().into())
            .send()
            .await
            .expect("writing the request");
        let sent = now_of_day();
        let (status, _) = http(
            &addr,
            "POST",
            "/hints",
            Some(token),
            &s3_event(&site.bucket, &key),
        );
        assert_eq!(status, 202);
        let mut logged = None;
        for _ in 0..2000 {
            logged = create_logged(&std::fs::read_to_string(&controller.log).unwrap(), &cluster);
            if logged.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let logged = logged.unwrap_or_else(|| panic!("no CreateStack logged for {cluster}"));
        let ms = (logged - sent).rem_euclid(86_400.0) * 1000.0;
        println!("sample {i:2}: {ms:7.1} ms");
        samples.push(ms);
    }
    samples.sort_by(f64::total_cmp);
    let median = (samples[SAMPLES / 2 - 1] + samples[SAMPLES / 2]) / 2.0;
    println!(
        "hint to CreateStack over {SAMPLES} requests: median {median:.1} ms, worst {:.1} ms, best {:.1} ms",
        samples[SAMPLES - 1],
        samples[0]
    );
    assert!(controller.stop());
}
