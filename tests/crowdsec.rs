//! The CrowdSec bouncer against a real CrowdSec local API (Debian's
//! `crowdsec` binaries, installed by `cargo xtask setup`), run with a
//! private config in the lab's server namespace. Decisions are added and
//! deleted with `cscli`, and the data plane must follow within the poll
//! interval.
use std::process::Child;

use rampart_tests::{
    lab::{Lab, eventually},
    lapi::{KEY, Lapi, PORT, stand_in},
};

fn listed(lab: &Lab, ip: &str) -> Option<serde_json::Value> {
    lab.cli_json(&["block", "list", "--match", ip])
        .ok()
        .and_then(|v| v.as_array().and_then(|a| a.first().cloned()))
}

fn bouncer(lab: &Lab) -> serde_json::Value {
    lab.cli_json(&["feeds", "list"])
        .map(|v| v["crowdsec"].clone())
        .unwrap_or_default()
}

#[test]
fn the_data_plane_follows_crowdsec_decisions() -> anyhow::Result<()> {
    let mut lab = Lab::new("cw", 104, "")?;
    let (client, blocked, ranged) = (
        lab.client_ips[0].clone(),
        lab.client_ips[1].clone(),
        lab.client_ips[2].clone(),
    );
    let server = lab.server_ip.clone();
    let mut lapi = Lapi::start(&lab)?;
    lab.write_config(&format!(
        "[crowdsec]\nurl = \"http://127.0.0.1:{PORT}\"\napi_key_file = \"{}\"\npoll = \"1s\"\n",
        lapi.dir.join("bouncer.key").display()
    ))?;
    lab.start()?;
    assert!(
        eventually(10, || bouncer(&lab)["polls_ok"].as_u64().unwrap_or(0) > 0),
        "{}",
        lab.log()
    );

    // A ban on one address, and on a range.
    lapi.cscli_ok(
        &[
            "decisions",
            "add",
            "-i",
            &blocked,
            "-d",
            "1h",
            "-R",
            "ssh-bf",
        ],
        None,
    )?;
    lapi.cscli_ok(
        &["decisions", "add", "-r", "10.104.0.4/30", "-d", "2h"],
        None,
    )?;
    assert!(
        eventually(5, || lab.ping(&blocked, 1, "0.2") == 0),
        "the ban decision is not enforced"
    );
    assert!(
        eventually(5, || lab.ping(&ranged, 1, "0.2") == 0),
        "the range decision is not enforced"
    );
    assert_eq!(lab.ping(&client, 2, "0.2"), 2);
    let row = listed(&lab, &blocked).expect("listed");
    assert_eq!(row["origin"][0], "crowdsec", "{row}");
    assert_eq!(row["reason"], "crowdsec: ssh-bf", "{row}");
    let left = row["expires"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(rampart::clock::unix_now());
    assert!(
        (3500..=3600).contains(&left),
        "expiry follows the decision: {row}"
    );
    assert_eq!(
        listed(&lab, &ranged).map(|r| r["prefix"].clone()),
        Some("10.104.0.4/30".into())
    );

    // The host's own address is never blocked; other decision types are not bans.
    lapi.cscli_ok(&["decisions", "add", "-i", &server, "-d", "1h"], None)?;
    lapi.cscli_ok(
        &["decisions", "add", "-i", "192.0.2.9", "-t", "captcha"],
        None,
    )?;
    assert!(eventually(5, || bouncer(&lab)["skipped_protected_total"] == 1));
    assert!(listed(&lab, &server).is_none());
    assert!(listed(&lab, "192.0.2.9").is_none());
    assert!(bouncer(&lab)["ignored_total"].as_u64().unwrap_or(0) >= 1);

    // --share without sharing configured: refused, nothing added.
    let out = lab.cli(&["block", "add", "192.0.2.99", "--share"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("share = true"), "{err}");
    assert!(listed(&lab, "192.0.2.99").is_none());

    // Deleted in CrowdSec: lifted here.
    lapi.cscli_ok(&["decisions", "delete", "-i", &blocked], None)?;
    assert!(
        eventually(5, || lab.ping(&blocked, 1, "0.2") == 1),
        "the deletion was not followed"
    );
    assert!(listed(&lab, &blocked).is_none());

    // A short decision expires on its own.
    lapi.cscli_ok(&["decisions", "add", "-i", "192.0.2.50", "-d", "3s"], None)?;
    assert!(eventually(5, || listed(&lab, "192.0.2.50").is_some()));
    assert!(
        eventually(8, || listed(&lab, "192.0.2.50").is_none()),
        "the decision did not expire"
    );

    // Deleted while the agent was down: the restart reconciles.
    lab.kill9();
    lapi.cscli_ok(&["decisions", "delete", "-r", "10.104.0.4/30"], None)?;
    lab.start()?;
    assert!(
        eventually(10, || lab.ping(&ranged, 1, "0.2") == 1),
        "a stale decision survived the restart"
    );

    // The local API down: decisions in force stay, the error is reported.
    lapi.cscli_ok(&["decisions", "add", "-i", &blocked, "-d", "1h"], None)?;
    assert!(eventually(5, || lab.ping(&blocked, 1, "0.2") == 0));
    lapi.stop();
    assert!(eventually(10, || bouncer(&lab)["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("cannot reach"))));
    assert_eq!(lab.ping(&blocked, 2, "0.2"), 0);
    let (_, metrics) = lab.http_get("/metrics");
    assert!(
        metrics.contains("rampart_crowdsec_decisions_active 1"),
        "{metrics}"
    );
    assert!(metrics.contains("rampart_crowdsec_polls_total{result=\"failure\"}"));
    let v = bouncer(&lab);
    assert_eq!(v["active"], 1, "{v}");
    Ok(())
}

/// The ids of CrowdSec's decisions on `value` (from the alerts: `decisions
/// list` shows one decision per address).
fn decision_ids(lapi: &Lapi, value: &str) -> Vec<i64> {
    let o = lapi.cscli(&["alerts", "list", "-o", "json"], None);
    let alerts: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    alerts
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["decisions"].as_array().cloned().unwrap_or_default())
        .filter(|d| d["value"] == value)
        .filter_map(|d| d["id"].as_i64())
        .collect()
}

#[test]
fn a_deleted_decision_leaves_the_block_while_another_decision_holds_it() -> anyhow::Result<()> {
    let mut lab = Lab::new("cm", 106, "")?;
    let blocked = lab.client_ips[1].clone();
    let lapi = Lapi::start(&lab)?;
    lab.write_config(&format!(
        "[crowdsec]\nurl = \"http://127.0.0.1:{PORT}\"\napi_key_file = \"{}\"\npoll = \"1s\"\n",
        lapi.dir.join("bouncer.key").display()
    ))?;
    lab.start()?;
    for (scenario, duration) in [("ssh-bf", "1h"), ("http-probing", "2h")] {
        lapi.cscli_ok(
            &[
                "decisions",
                "add",
                "-i",
                &blocked,
                "-d",
                duration,
                "-R",
                scenario,
            ],
            None,
        )?;
    }
    let ids = decision_ids(&lapi, &blocked);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(eventually(5, || lab.ping(&blocked, 1, "0.2") == 0));
    // The entry expires with the longer decision.
    let left = || {
        listed(&lab, &blocked).map_or(0, |r| {
            r["expires"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(rampart::clock::unix_now())
        })
    };
    assert!(
        eventually(5, || left() > 3600),
        "{:?}",
        listed(&lab, &blocked)
    );
    // One of the two is deleted: the other still holds the block.
    let first = ids.iter().min().copied().unwrap_or_default().to_string();
    lapi.cscli_ok(&["decisions", "delete", "--id", &first], None)?;
    assert!(eventually(5, || bouncer(&lab)["polls_ok"]
        .as_u64()
        .unwrap_or(0)
        > 3));
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        listed(&lab, &blocked).is_some(),
        "lifted while a decision lives"
    );
    assert_eq!(lab.ping(&blocked, 2, "0.2"), 0);
    // The last one goes: lifted.
    let last = ids.iter().max().copied().unwrap_or_default().to_string();
    lapi.cscli_ok(&["decisions", "delete", "--id", &last], None)?;
    assert!(
        eventually(5, || lab.ping(&blocked, 1, "0.2") == 1),
        "the last deletion was not followed"
    );
    Ok(())
}

/// A stand-in local API at 0.0.0.0:`port` in the lab's server namespace.
/// It answers the decision stream with one ban on 192.0.2.66, or, once
/// `<dir>/redirect` exists, redirects it to another host, whose `/steal`
/// records the API key it was sent in `<dir>/stolen`.
fn fake_lapi(lab: &Lab, port: u16, dir: &std::path::Path) -> anyhow::Result<Child> {
    let script = format!(
        r#"
import http.server, json, os
D = {dir:?}
BODY = json.dumps({{"new": [{{"id": 7, "duration": "1h", "scenario": "t", "scope": "Ip", "type": "ban", "value": "192.0.2.66"}}], "deleted": None}}).encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/steal"):
            open(os.path.join(D, "stolen"), "w").write(self.headers.get("X-Api-Key", ""))
        elif os.path.exists(os.path.join(D, "redirect")):
            self.send_response(302); self.send_header("Location", "http://127.0.0.2:{port}/steal"); self.end_headers(); return
        self.send_response(200); self.send_header("Content-Length", str(len(BODY))); self.end_headers(); self.wfile.write(BODY)
    def log_message(self, *a): pass
http.server.HTTPServer(("0.0.0.0", {port}), H).serve_forever()
"#,
        dir = dir.display().to_string()
    );
    stand_in(
        lab,
        &script,
        &format!("http://127.0.0.1:{port}/v1/decisions/stream"),
    )
}

#[test]
fn the_bouncer_ignores_proxy_variables_and_never_follows_a_redirect_with_its_key()
-> anyhow::Result<()> {
    let mut lab = Lab::new("cr", 107, "")?;
    let dir = lab.dir.join("fake-lapi");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("key"), format!("{KEY}\n"))?;
    let port = 18107;
    let mut server = fake_lapi(&lab, port, &dir)?;
    let url = format!("http://{}:{port}", lab.server_ip);
    lab.write_config(&format!(
        "[crowdsec]\nurl = \"{url}\"\napi_key_file = \"{}\"\npoll = \"1s\"\n",
        dir.join("key").display()
    ))?;
    // Every proxy variable points at a port where nothing listens: the
    // bouncer must not use them (none is configured).
    let dead = "http://127.0.0.1:9";
    lab.start_with_env(&[
        ("HTTP_PROXY", dead),
        ("http_proxy", dead),
        ("HTTPS_PROXY", dead),
        ("https_proxy", dead),
        ("ALL_PROXY", dead),
        ("all_proxy", dead),
    ])?;
    assert!(
        eventually(10, || lab
            .cli_json(&["block", "list", "--match", "192.0.2.66"])
            .is_ok_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))),
        "the decision did not arrive past the proxy variables: {}",
        bouncer(&lab)
    );
    // The local API now redirects to another host: not followed.
    std::fs::write(dir.join("redirect"), "")?;
    assert!(
        eventually(10, || bouncer(&lab)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("answered 302"))),
        "{}",
        bouncer(&lab)
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        !dir.join("stolen").exists(),
        "the API key was sent to the redirect target"
    );
    let _ = server.kill();
    let _ = server.wait();
    Ok(())
}
