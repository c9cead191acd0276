//! Every CLI command against a live agent, in both output formats, with the
//! JSON shape checked; every bad input; the audit log; and a user outside the
//! socket's group refused.
use std::process::Command;

use rampart_tests::lab::{Lab, rampart_bin};
use serde_json::Value;

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

#[test]
fn every_command_in_table_and_json() -> anyhow::Result<()> {
    let policy = "[[policy]]\nname = \"icmp\"\nprotocol = \"icmp\"\npps = 20\nburst = 20\nban_threshold = 3\nban_time = \"10m\"\ndetect = \"alert\"\n";
    let mut lab = Lab::new(
        "cl",
        71,
        &format!("[blocklist]\nentries = [\"198.51.100.0/24\"]\n{policy}"),
    )?;
    lab.start()?;
    let (c0, c1, c2) = (
        lab.client_ips[0].clone(),
        lab.client_ips[1].clone(),
        lab.client_ips[2].clone(),
    );

    // status
    let t = lab.cli_ok(&["status"])?;
    assert!(
        t.contains("INTERFACE") && t.contains(&lab.iface()) && t.contains("BLOCK_V4"),
        "{t}"
    );
    let s = lab.cli_json(&["status"])?;
    assert_eq!(
        keys(&s),
        [
            "config_file",
            "detector",
            "dry_run",
            "flood",
            "interfaces",
            "reload",
            "state_error",
            "tables",
            "uptime_secs",
            "version"
        ]
    );
    assert_eq!(s["interfaces"][0]["attached"], true);
    assert!(s["interfaces"][0]["program_id"].as_u64().is_some());
    // Every table, as the metrics name it: lists, bans, policies, spill maps, rate table.
    assert_eq!(s["tables"].as_array().map(Vec::len), Some(12));

    // The detector watches the policy from its first reading, about a
    // second in, and has found nothing.
    assert!(rampart_tests::lab::eventually(10, || lab
        .cli_json(&["status"])
        .is_ok_and(|s| s["detector"][0]["policy"] == "icmp")));
    let d = &lab.cli_json(&["status"])?["detector"][0];
    assert_eq!(
        keys(d),
        [
            "anomaly",
            "features",
            "learning",
            "learning_left_secs",
            "policy"
        ]
    );
    assert_eq!(d["learning"], true, "{d}");
    assert_eq!(d["features"].as_array().map(Vec::len), Some(6));
    assert_eq!(
        keys(&d["features"][0]),
        ["baseline", "deviation", "feature", "score", "value"]
    );
    assert!(
        lab.cli_ok(&["status"])?
            .contains("detector of policy icmp: learning")
    );
    assert_eq!(lab.cli_json(&["anomalies"])?, serde_json::json!([]));
    assert_eq!(lab.cli_ok(&["anomalies"])?, "no anomalies\n");

    // The allowlist starts with the host's own addresses, marked protected.
    let allow = lab.cli_json(&["allow", "list"])?;
    let allow = allow.as_array().cloned().unwrap_or_default();
    assert!(allow.iter().any(|r| r["prefix"] == lab.server_ip.as_str()));
    assert!(
        allow
            .iter()
            .all(|r| r["origin"] == serde_json::json!(["protected"])),
        "{allow:?}"
    );
    // empty lists are [] in JSON
    assert_eq!(
        lab.cli_json(&["allow", "list", "--match", "192.0.2.200"])?,
        serde_json::json!([])
    );
    assert_eq!(lab.cli_json(&["bans", "list"])?, serde_json::json!([]));
    assert_eq!(lab.cli_json(&["top"])?, serde_json::json!([]));

    // block add / list / del
    let out = lab.cli_ok(&[
        "block",
        "add",
        &c1,
        "2001:db8:66::/48",
        "--ttl",
        "2h",
        "--reason",
        "credential stuffing",
    ])?;
    assert!(out.contains("added 2 entries"), "{out}");
    assert_eq!(lab.ping(&c1, 2, "0.2"), 0);
    let rows = lab.cli_json(&["block", "list"])?;
    let rows = rows.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert_eq!(keys(r), ["expires", "origin", "prefix", "reason"]);
    }
    let cfg_row = rows
        .iter()
        .find(|r| r["prefix"] == "198.51.100.0/24")
        .expect("config entry listed");
    assert_eq!(cfg_row["origin"], serde_json::json!(["config"]));
    assert_eq!(cfg_row["expires"], Value::Null);
    let t = lab.cli_ok(&["block", "list", "--match", "198.51.100.77"])?;
    assert!(
        t.contains("198.51.100.0/24") && t.contains("config") && !t.contains(&c1),
        "{t}"
    );
    let t = lab.cli_ok(&["block", "list"])?;
    assert!(
        t.contains("credential stuffing") && t.contains("1h59m"),
        "{t}"
    );
    lab.cli_ok(&["block", "del", &c1])?;
    assert_eq!(lab.ping(&c1, 2, "0.2"), 2);
    let o = lab.cli(&["block", "del", "198.51.100.0/24"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("config file"));

    // import: comments, blank lines, per-line errors, all-or-nothing
    let file = lab.dir.join("list.txt");
    std::fs::write(
        &file,
        format!("# feed\n{c1}\n\n203.0.113.0/24 ; spamhaus style\n192.0.2.1/8\nnonsense\n"),
    )?;
    let o = lab.cli(&["block", "import", file.to_str().unwrap_or_default()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("list.txt:5:") && err.contains("192.0.0.0/8") && err.contains("list.txt:6:"),
        "{err}"
    );
    assert!(err.contains("nothing was imported"));
    assert_eq!(
        lab.ping(&c1, 1, "0.2"),
        1,
        "a failed import applied entries"
    );
    let out = lab.cli_ok(&[
        "block",
        "import",
        file.to_str().unwrap_or_default(),
        "--skip-invalid",
    ])?;
    assert!(
        out.contains("imported 2 entries") && out.contains("2 invalid"),
        "{out}"
    );
    assert_eq!(lab.ping(&c1, 1, "0.2"), 0);

    // allow add / list / del: an allowed source skips the blocklist
    lab.cli_ok(&["allow", "add", &c1])?;
    assert_eq!(lab.ping(&c1, 1, "0.2"), 1);
    let allow = lab.cli_json(&["allow", "list", "--match", &c1])?;
    assert_eq!(allow[0]["origin"], serde_json::json!(["cli"]));
    lab.cli_ok(&["allow", "del", &c1])?;
    assert_eq!(lab.ping(&c1, 1, "0.2"), 0);

    // bans: get c2 banned by the icmp policy, then lift it
    lab.flood(&c2, 200);
    let bans = lab.cli_json(&["bans", "list"])?;
    assert_eq!(bans[0]["prefix"], c2.as_str());
    assert_eq!(
        keys(&bans[0]),
        ["active", "expires", "offences", "policy", "prefix"]
    );
    assert_eq!(bans[0]["policy"], "icmp");
    assert!(lab.cli_ok(&["bans", "list"])?.contains("OFFENCES"));
    let x = lab.cli_json(&["explain", &c2, "--proto", "icmp"])?;
    assert_eq!(
        (x["action"].as_str(), x["reason"].as_str()),
        (Some("drop"), Some("ban"))
    );
    assert!(
        x["because"][0]
            .as_str()
            .unwrap_or_default()
            .contains("policy icmp")
    );
    lab.cli_ok(&["bans", "del", &c2])?;
    assert_eq!(lab.cli_json(&["bans", "list"])?, serde_json::json!([]));
    lab.flood(&c2, 200);
    let out = lab.cli_ok(&["bans", "del", "--all"])?;
    assert!(out.contains("lifted 1 ban"), "{out}");

    // explain without consuming tokens: repeated asks give the same answer
    let t = lab.cli_ok(&["explain", &c0, "--proto", "icmp"])?;
    assert!(t.contains("-> pass"), "{t}");
    // The policy that would apply, and its detector's baseline and score.
    assert!(
        t.contains("detector of policy icmp") && t.contains("BASELINE"),
        "{t}"
    );
    let x = lab.cli_json(&["explain", &c0, "--proto", "icmp"])?;
    assert_eq!(x["policy"], "icmp");
    assert_eq!(x["detector"]["policy"], "icmp", "{x}");
    let x = lab.cli_json(&["explain", &c0, "--proto", "udp", "--port", "53"])?;
    assert_eq!(x["policy"], Value::Null, "no policy matches UDP: {x}");
    for _ in 0..5 {
        assert_eq!(
            lab.cli_json(&["explain", &c0, "--proto", "icmp"])?["action"],
            "pass"
        );
    }
    let x = lab.cli_json(&["explain", "198.51.100.9", "--proto", "tcp", "--port", "443"])?;
    assert_eq!(x["reason"], "blocklist");

    // stats and top
    let st = lab.cli_json(&["stats"])?;
    let st = st.as_array().cloned().unwrap_or_default();
    assert!(
        st.iter()
            .all(|r| keys(r) == ["action", "bytes", "interface", "packets", "reason"])
    );
    assert!(
        st.iter()
            .any(|r| r["interface"] == lab.iface().as_str() && r["reason"] == "blocklist")
    );
    assert!(lab.cli_ok(&["stats"])?.contains("PACKETS"));
    let top = lab.cli_json(&["top", "-n", "3"])?;
    assert!(!top.as_array().cloned().unwrap_or_default().is_empty());
    assert!(top.as_array().map_or(0, Vec::len) <= 3);
    assert!(lab.cli_ok(&["top"])?.contains("SOURCE"));

    // reload
    assert!(lab.cli_ok(&["reload"])?.contains("reloaded"));
    assert_eq!(
        lab.cli_json(&["reload"])?,
        serde_json::json!({"changed": 1})
    );

    // the audit log has every change, with uid and pid
    let audit = std::fs::read_to_string(lab.dir.join("state/audit.log"))?;
    let lines: Vec<Value> = audit
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    for action in [
        "block.add",
        "block.del",
        "allow.add",
        "allow.del",
        "bans.del",
        "reload",
    ] {
        assert!(
            lines.iter().any(|l| l["action"] == action),
            "{action} not audited"
        );
    }
    assert!(
        lines
            .iter()
            .all(|l| l["uid"] == 0 && l["pid"].as_i64().is_some() && l["time"].is_string())
    );
    assert!(lines.iter().any(|l| {
        l["action"] == "block.del"
            && l["result"]
                .as_str()
                .is_some_and(|r| r.starts_with("refused"))
    }));
    Ok(())
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() -> anyhow::Result<()> {
    let mut lab = Lab::new("cb", 72, "")?;
    lab.start()?;
    let cases: &[(&[&str], i32, &str)] = &[
        (&["block", "add", "10.0.0.300"], 2, "not an IP address"),
        (
            &["block", "add", "10.1.2.3/8"],
            2,
            "the network is 10.0.0.0/8",
        ),
        (
            &["block", "add", "2001:db8::1/32"],
            2,
            "the network is 2001:db8::/32",
        ),
        (
            &["block", "add", "::ffff:192.0.2.1"],
            2,
            "write the IPv4 form 192.0.2.1",
        ),
        (&["block", "add", "192.0.2.1/33"], 2, "out of range"),
        (
            &["block", "add", "192.0.2.1", "--ttl", "0s"],
            2,
            "at least 1s",
        ),
        (
            &["block", "add", "192.0.2.1", "--ttl=-5m"],
            2,
            "not a duration",
        ),
        (
            &[
                "block",
                "add",
                "192.0.2.1",
                "--ttl",
                "99999999999999999999h",
            ],
            2,
            "not a duration",
        ),
        (
            &["block", "add", "192.0.2.1", "--ttl", "20y"],
            2,
            "at most 10 years",
        ),
        (
            &["block", "add", "192.0.2.1", "--frobnicate"],
            2,
            "unexpected argument",
        ),
        (&["block"], 2, "Usage"),
        (&["bans", "del"], 2, "required"),
        (&["explain", "nonsense"], 2, "invalid value"),
        (&["block", "del", "192.0.2.99"], 1, "not on the list"),
    ];
    for (args, code, needle) in cases {
        let o = lab.cli(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected '{needle}' in: {err}"
        );
    }
    assert_eq!(
        lab.cli_json(&["block", "list"])?,
        serde_json::json!([]),
        "bad input changed the list"
    );

    // No socket: the message says how to start the agent.
    let o = Command::new(rampart_bin())
        .args(["--socket", "/nonexistent/rampart.sock", "status"])
        .output()?;
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("rampart agent"));

    // Malformed requests straight to the socket get a 4xx, and the agent
    // keeps serving others.
    for (raw, want) in [
        (
            "POST /v1/lists/block/add HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"nope\":1",
            "HTTP/1.1 4",
        ),
        (
            "POST /v1/lists/block/add HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 23\r\n\r\n{\"prefixes\":[\"1.2.3.4/1\"]}",
            "HTTP/1.1 4",
        ),
        (
            "GET /v2/whatever HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 404",
        ),
        (
            "GET /v1/lists/nope HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 404",
        ),
        ("GARBAGE\r\n\r\n", "HTTP/1.1 400"),
    ] {
        let resp = raw_request(&lab.socket, raw)?;
        assert!(resp.starts_with(want), "{raw:?} -> {resp:?}");
    }
    let big = format!(
        "POST /v1/lists/block/add HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1500000\r\n\r\n{}",
        " ".repeat(1_500_000)
    );
    let resp = raw_request(&lab.socket, &big)?;
    assert!(
        resp.starts_with("HTTP/1.1 413"),
        "oversized body -> {resp:?}"
    );
    assert!(lab.cli_ok(&["status"]).is_ok(), "the agent stopped serving");
    Ok(())
}

#[test]
fn a_user_outside_the_group_is_refused() -> anyhow::Result<()> {
    let mut lab = Lab::new("cu", 73, "")?;
    lab.start()?;
    let _ = Command::new("useradd")
        .args([
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "rampart-nobody",
        ])
        .output();
    // The lab's socket lives in a private directory; open the path (not the socket).
    let _ = Command::new("chmod").args(["0755"]).arg(&lab.dir).output();
    let o = Command::new("runuser")
        .args(["-u", "rampart-nobody", "--"])
        .arg(rampart_bin())
        .arg("--socket")
        .arg(&lab.socket)
        .arg("status")
        .output()?;
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("permission denied") && err.contains("group"),
        "{err}"
    );
    Ok(())
}

/// Writes raw bytes to the control socket and returns what comes back.
fn raw_request(socket: &std::path::Path, raw: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    // The server may answer (and close) before reading everything.
    let _ = s.write_all(raw.as_bytes());
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
