//! Metrics against a live agent: promtool accepts the exposition and the
//! alert rules, counters match the traffic sent, /readyz follows attachment,
//! the endpoint serves nothing else, and every dashboard query names a metric
//! the agent exports.
use std::{collections::BTreeSet, path::Path, process::Command};

use rampart_tests::lab::Lab;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut c = Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (installed by cargo xtask setup)");
    if let Some(s) = stdin {
        c.stdin.take().map(|mut i| i.write_all(s.as_bytes()));
    }
    drop(c.stdin.take());
    let o = c.wait_with_output().expect("promtool runs");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// The sample value of the series whose line starts with `series`.
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn exposition_passes_promtool_and_counters_match_traffic() -> anyhow::Result<()> {
    let mut lab = Lab::new(
        "mt",
        81,
        "[blocklist]\nentries = [\"10.81.0.3\"]\n[[policy]]\nname = \"icmp\"\nprotocol = \"icmp\"\npps = 1000\n",
    )?;
    lab.start()?;
    lab.ping(&lab.client_ips[0], 3, "0.2");
    let (code, before) = lab.http_get("/metrics");
    assert_eq!(code, 200);
    let (ok, out) = promtool(&["check", "metrics"], Some(&before));
    assert!(ok, "promtool check metrics: {out}");

    let iface = lab.iface();
    let series = format!(
        "rampart_packets_total{{action=\"drop\",interface=\"{iface}\",reason=\"blocklist\"}}"
    );
    let n = 7;
    assert_eq!(lab.ping(&lab.client_ips[1], n, "0.1"), 0);
    let (_, after) = lab.http_get("/metrics");
    let delta = value(&after, &series) - value(&before, &series);
    assert_eq!(
        delta,
        f64::from(n),
        "drop counter rose by {delta}, sent {n}\n{after}"
    );
    let bytes = format!(
        "rampart_bytes_total{{action=\"drop\",interface=\"{iface}\",reason=\"blocklist\"}}"
    );
    // An echo request of 64 ICMP bytes is a 98-byte frame.
    assert_eq!(
        value(&after, &bytes) - value(&before, &bytes),
        f64::from(n * 98)
    );

    for family in [
        "rampart_build_info",
        "rampart_list_entries",
        "rampart_bans_active",
        "rampart_map_entries",
        "rampart_map_capacity",
        "rampart_config_reloads_total",
        "rampart_interface_attached",
        "rampart_control_requests_total",
        "rampart_events_sampled_total",
        "rampart_ratelimit_evictions_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(
            after.contains(&format!("# HELP {family} ")),
            "{family} missing"
        );
    }
    assert!(
        after.contains("rampart_list_entries{family=\"ipv4\",list=\"block\",origin=\"config\"} 1")
    );
    // No label carries an address.
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        assert!(!line.contains("10.81.0."), "per-address label: {line}");
    }
    Ok(())
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = repo().join("deploy/prometheus/rampart-alerts.yaml");
    let (ok, out) = promtool(
        &["check", "rules", rules.to_str().unwrap_or_default()],
        None,
    );
    assert!(ok, "{out}");
    assert!(out.contains("15 rules found"), "{out}");
}

#[test]
fn readyz_follows_attachment_and_nothing_else_is_served() -> anyhow::Result<()> {
    let mut lab = Lab::new("mr", 82, "")?;
    // One configured interface does not exist: the agent runs, not ready.
    let text = lab.config_text("").replace(
        &format!("interfaces = [\"{}\"]", lab.iface()),
        &format!("interfaces = [\"{}\", \"nosuch0\"]", lab.iface()),
    );
    std::fs::write(&lab.config, text)?;
    lab.start()?;
    assert_eq!(lab.http_get("/healthz"), (200, "ok\n".into()));
    let (code, body) = lab.http_get("/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("nosuch0"), "{body}");
    assert_eq!(
        lab.ping(&lab.client_ips[0], 1, "0.2"),
        1,
        "the other interface is still served"
    );
    lab.write_config("")?;
    assert!(rampart_tests::lab::eventually(10, || lab
        .http_get("/readyz")
        .0
        == 200));

    assert_eq!(lab.http_get("/").0, 404);
    assert_eq!(lab.http_get("/v1/status").0, 404);
    let post = lab
        .srv
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            &format!("http://127.0.0.1:{}/metrics", lab.metrics_port),
        ])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&post.stdout), "405");
    Ok(())
}

#[test]
fn every_dashboard_query_names_an_exported_metric() -> anyhow::Result<()> {
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        repo().join("deploy/grafana/rampart-dashboard.json"),
    )?)?;
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().cloned().unwrap_or_default() {
        for t in p["targets"].as_array().cloned().unwrap_or_default() {
            exprs.push(t["expr"].as_str().unwrap_or_default().to_string());
        }
    }
    assert!(exprs.len() >= 10);
    let mut lab = Lab::new(
        "md",
        83,
        "[blocklist]\nentries = [\"10.83.0.3\"]\n\n[[policy]]\nname = \"web\"\nprotocol = \"tcp\"\nports = [443]\npps = 100\nsyn_cookies = \"auto\"\ndetect = \"alert\"\n",
    )?;
    lab.start()?;
    lab.ping(&lab.client_ips[1], 2, "0.1");
    // The detector's series appear with its first reading, about a second in.
    assert!(rampart_tests::lab::eventually(10, || lab
        .http_get("/metrics")
        .1
        .contains("rampart_detector_baseline{")));
    let (_, metrics) = lab.http_get("/metrics");
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for e in &exprs {
        let names = e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("rampart_") || w.starts_with("process_"));
        let mut any = false;
        for n in names {
            any = true;
            assert!(
                exported.contains(n),
                "dashboard query uses {n}, which the agent does not export: {e}"
            );
        }
        assert!(any, "query names no metric: {e}");
    }
    Ok(())
}
