//! The traffic detector end to end: a live agent learns a client's normal
//! load on a web port, then a spoofed SYN flood (hping3, a random source
//! per packet) arrives. The policy's own SYN-rate trigger is set out of
//! reach, so only the detector can engage the cookies.
use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use rampart_tests::{
    lab::Lab,
    web::{SpoofedFlood, WEB_PORT, Web, get, lab},
};

/// A short learning period and quick hysteresis, so a test fits in a
/// minute; everything else is the default detector.
fn config(detect: &str, extra: &str) -> String {
    format!(
        "[detect]\nlearning = \"20s\"\nhalf_life = \"60s\"\ncalm = 3\n\n[[policy]]\nname = \"web\"\nprotocol = \"tcp\"\nports = [{WEB_PORT}]\npps = 500\nburst = 1000\nsyn_cookies = \"auto\"\nsyn_cookies_above = 10000000\ndetect = \"{detect}\"\n{extra}"
    )
}

/// The client's normal load until the detector has learnt it: requests
/// every 100 ms until `status` says learning is over.
fn learn(lab: &Lab, client: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        assert!(get(lab, client), "a request during learning failed");
        sleep(Duration::from_millis(100));
        let status = lab.cli_json(&["status"])?;
        let d = &status["detector"][0];
        if d["learning"] == false {
            assert_eq!(d["anomaly"], false, "normal load is not an anomaly: {d}");
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(90),
            "the detector never finished learning: {status}"
        );
    }
}

fn engaged(lab: &Lab) -> bool {
    lab.cli_json(&["status"])
        .is_ok_and(|s| s["flood"]["policies"][0]["engaged"] == true)
}

fn anomalies(lab: &Lab) -> Vec<serde_json::Value> {
    lab.cli_json(&["anomalies"])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Floods until `done` or `secs`; returns the seconds it took for `done`
/// (None if never), and the client's (made, served) requests meanwhile.
fn flood_until(
    lab: &Lab,
    client: &str,
    secs: u64,
    done: impl Fn() -> bool,
) -> (Option<f64>, u32, u32) {
    let flood = SpoofedFlood::start(lab, &["-S", "-p", &WEB_PORT.to_string()]);
    let start = Instant::now();
    let mut at = None;
    let (mut made, mut served) = (0, 0);
    while start.elapsed() < Duration::from_secs(secs) {
        if at.is_none() && done() {
            at = Some(start.elapsed().as_secs_f64());
        }
        if at.is_some() {
            made += 1;
            served += u32::from(get(lab, client));
        }
        sleep(Duration::from_millis(100));
    }
    drop(flood);
    (at, made, served)
}

#[test]
fn defend_engages_the_cookies_within_seconds_keeps_the_client_served_and_releases_them()
-> anyhow::Result<()> {
    let (lab, _pass) = lab("da", 140, &config("defend", ""))?;
    let _web = Web::start(&lab)?;
    let client = lab.client_ips[0].clone();
    learn(&lab, &client)?;
    assert!(!engaged(&lab), "nothing engaged before the flood");
    let (at, made, served) = flood_until(&lab, &client, 10, || engaged(&lab));
    let at = at.ok_or_else(|| anyhow::anyhow!("defence never engaged:\n{}", lab.log()))?;
    eprintln!("defence engaged {at:.1} s into the flood; client {served}/{made} after");
    assert!(at <= 6.0, "engaged after {at:.1} s");
    assert!(
        f64::from(served) >= 0.9 * f64::from(made),
        "the client got {served} of {made} requests served under defence"
    );
    assert!(
        lab.counter("challenge", "syn_cookie") > 1000,
        "cookies answered the flood"
    );
    let a = anomalies(&lab);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["policy"], "web");
    assert_eq!(a[0]["action"], "defend");
    let fired: Vec<&str> = a[0]["fired"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["feature"].as_str())
        .collect();
    assert!(fired.contains(&"syns"), "{fired:?}");
    // The flood is over: calm seconds end the anomaly and release the defence.
    assert!(
        rampart_tests::lab::eventually(20, || !engaged(&lab)),
        "the defence stayed engaged after the flood"
    );
    let a = anomalies(&lab);
    assert_eq!(a[0]["active"], false, "{a:?}");
    assert!(get(&lab, &client));
    let (_, metrics) = lab.http_get("/metrics");
    assert!(
        metrics.contains("rampart_anomalies_total{action=\"defend\",policy=\"web\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("rampart_detector_baseline{feature=\"syns\",policy=\"web\"}"));
    let audit = std::fs::read_to_string(lab.dir.join("state/audit.log")).unwrap_or_default();
    assert!(
        audit.contains("anomaly.start") && audit.contains("anomaly.end"),
        "{audit}"
    );
    Ok(())
}

#[test]
fn alert_only_reports_and_engages_nothing() -> anyhow::Result<()> {
    let (lab, _pass) = lab("db", 141, &config("alert", ""))?;
    let _web = Web::start(&lab)?;
    let client = lab.client_ips[0].clone();
    learn(&lab, &client)?;
    let (at, _, _) = flood_until(&lab, &client, 6, || !anomalies(&lab).is_empty());
    assert!(at.is_some(), "the flood raised no anomaly:\n{}", lab.log());
    assert!(!engaged(&lab), "alert engaged the defence");
    assert_eq!(lab.counter("challenge", "syn_cookie"), 0);
    let a = anomalies(&lab);
    assert_eq!(a[0]["action"], "alert", "{a:?}");
    let explain = lab.cli_json(&["explain", &client, "--proto", "tcp", "--port", "8080"])?;
    assert_eq!(explain["policy"], "web", "{explain}");
    let syns = explain["detector"]["features"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["feature"] == "syns")
        .cloned()
        .unwrap_or_default();
    assert!(
        syns["baseline"].as_f64().is_some_and(|b| b < 1000.0),
        "{syns}"
    );
    assert!(lab.log().contains("traffic anomaly started"));
    Ok(())
}

#[test]
fn dry_run_defend_drops_nothing_and_counts_what_it_would_have_done() -> anyhow::Result<()> {
    let (lab, _pass) = lab("dc", 142, &config("defend", "dry_run = true\n"))?;
    let _web = Web::start(&lab)?;
    let client = lab.client_ips[0].clone();
    learn(&lab, &client)?;
    let (at, _, _) = flood_until(&lab, &client, 6, || {
        lab.counter("would_challenge", "syn_cookie") > 1000
    });
    assert!(
        at.is_some(),
        "dry-run defence counted nothing:\n{}",
        lab.log()
    );
    let a = anomalies(&lab);
    assert_eq!(a[0]["action"], "defend (dry-run)", "{a:?}");
    assert_eq!(lab.counter("challenge", "syn_cookie"), 0);
    assert_eq!(lab.dropped()?, 0, "dry-run drops nothing");
    Ok(())
}
