//! Threat feeds against a live agent: the three formats from a file and over
//! HTTP, the guards (protected and allowlisted entries skipped, bad,
//! oversized and unreachable versions refused with the last good one kept),
//! a feed leaving the config, restart from the cached version, an atomic
//! swap under a flood, a large feed, and a feed that does not fit.
use std::{
    process::{Child, Stdio},
    time::Instant,
};

use rampart_tests::lab::{Lab, eventually};

/// A static HTTP server on 127.0.0.1:`port` inside the lab's server
/// namespace (where the agent runs), serving `dir`.
struct HttpServer(Child);

impl HttpServer {
    fn start(lab: &Lab, dir: &std::path::Path, port: u16) -> anyhow::Result<Self> {
        let child = lab
            .srv
            .command("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let s = Self(child);
        let url = format!("http://127.0.0.1:{port}/");
        let up = eventually(10, || {
            lab.srv
                .command("curl")
                .args(["-s", "-o", "/dev/null", &url])
                .status()
                .is_ok_and(|st| st.success())
        });
        anyhow::ensure!(up, "the test HTTP server did not start");
        Ok(s)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn feed<'a>(view: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    view["feeds"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

#[test]
fn feeds_load_in_every_format_and_bad_versions_keep_the_last_good_one() -> anyhow::Result<()> {
    let mut lab = Lab::new("fd", 101, "")?;
    let (client, blocked, allowed) = (
        lab.client_ips[0].clone(),
        lab.client_ips[1].clone(),
        lab.client_ips[2].clone(),
    );
    let server = lab.server_ip.clone();
    let feeds = lab.dir.join("feeds");
    std::fs::create_dir_all(&feeds)?;
    // Plain: the blocked client, the server itself (protected: host address),
    // the allowlisted client, and a few others.
    std::fs::write(
        feeds.join("own.txt"),
        format!("# own list\n{blocked}\n{server}\n{allowed}\n203.0.113.0/24\n2001:db8:bad::/48\n"),
    )?;
    std::fs::write(
        feeds.join("drop.txt"),
        "; Spamhaus DROP List\n; Last-Modified: today\n198.18.0.0/15 ; SBL1\n100.64.0.0/10 ; SBL2\n",
    )?;
    std::fs::write(
        feeds.join("level1.netset"),
        "#\n# firehol_level1\n#\n192.0.2.0/24\n198.51.100.7\n",
    )?;
    let _http = HttpServer::start(&lab, &feeds, 18101)?;
    let config = |extra: &str| {
        format!(
            "[allowlist]\nentries = [\"{allowed}\"]\n\n\
             [[feed]]\nname = \"own\"\nsource = \"{dir}/own.txt\"\nrefresh = \"1h\"\n\n\
             [[feed]]\nname = \"drop\"\nsource = \"http://127.0.0.1:18101/drop.txt\"\nallow_http = true\nformat = \"spamhaus\"\nrefresh = \"1h\"\n\n\
             [[feed]]\nname = \"level1\"\nsource = \"file://{dir}/level1.netset\"\nformat = \"netset\"\nrefresh = \"1h\"\nmax_bytes = 200\n{extra}",
            dir = feeds.display()
        )
    };
    lab.write_config(&config(""))?;
    lab.start()?;

    assert!(
        eventually(15, || lab.ping(&blocked, 1, "0.2") == 0),
        "the feed's entry is not enforced"
    );
    assert_eq!(
        lab.ping(&client, 2, "0.2"),
        2,
        "an unlisted client is blocked"
    );
    assert_eq!(
        lab.ping(&allowed, 2, "0.2"),
        2,
        "the allowlisted client is blocked"
    );

    let view = lab.cli_json(&["feeds", "list"])?;
    let own = feed(&view, "own");
    assert_eq!(own["entries"], 3, "{own}");
    assert_eq!(own["skipped_protected"], 1, "{own}");
    assert_eq!(own["skipped_allowlisted"], 1, "{own}");
    assert!(own["last_success"].as_u64().unwrap_or(0) > 0, "{own}");
    assert_eq!(feed(&view, "drop")["entries"], 2, "{view}");
    assert_eq!(feed(&view, "level1")["entries"], 2, "{view}");

    let rows = lab.cli_json(&["block", "list", "--match", &blocked])?;
    assert_eq!(rows[0]["origin"][0], "feed:own", "{rows}");
    let o = lab.cli(&["block", "del", &blocked]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("comes from feed own"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (_, metrics) = lab.http_get("/metrics");
    assert!(
        metrics.contains("rampart_feed_entries{feed=\"own\",list=\"block\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("rampart_feed_skipped_entries{feed=\"own\",reason=\"protected\"} 1"));

    // A malformed version is refused, named by line, and the old one stays.
    std::fs::write(
        feeds.join("own.txt"),
        format!("{blocked}\nnot-an-address\n"),
    )?;
    let o = lab.cli(&["feeds", "refresh", "own"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 2") && err.contains("last good version"),
        "{err}"
    );
    assert_eq!(
        feed(&lab.cli_json(&["feeds", "list"])?, "own")["entries"],
        3
    );
    assert_eq!(lab.ping(&blocked, 2, "0.2"), 0);

    // Oversized: refused.
    std::fs::write(feeds.join("level1.netset"), "192.0.2.0/24\n".repeat(40))?;
    let o = lab.cli(&["feeds", "refresh", "level1"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("larger than max_bytes = 200"));
    assert_eq!(
        feed(&lab.cli_json(&["feeds", "list"])?, "level1")["entries"],
        2
    );

    // Unreachable: the HTTP feed keeps its entries.
    drop(_http);
    let o = lab.cli(&["-o", "json", "feeds", "refresh", "drop"]);
    assert_eq!(o.status.code(), Some(1));
    let list = lab.cli_json(&["feeds", "list"])?;
    let drop_feed = feed(&list, "drop");
    assert_eq!(drop_feed["entries"], 2, "{drop_feed}");
    assert!(
        drop_feed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot fetch")),
        "{drop_feed}"
    );
    assert!(
        lab.cli_json(&["block", "list", "--match", "100.64.1.1"])?[0]["origin"][0] == "feed:drop"
    );
    let (_, metrics) = lab.http_get("/metrics");
    assert!(
        metrics.contains("rampart_feed_refreshes_total{feed=\"drop\",result=\"failure\"} 1"),
        "{metrics}"
    );

    // A restart with the source gone: the cached version applies at once.
    lab.kill9();
    std::fs::remove_file(feeds.join("own.txt"))?;
    lab.start()?;
    assert_eq!(
        lab.ping(&blocked, 2, "0.2"),
        0,
        "the cached feed was not restored"
    );
    let own = feed(&lab.cli_json(&["feeds", "list"])?, "own").clone();
    assert_eq!(own["entries"], 3, "{own}");

    // An allow feed overrides a block; removing feeds from the config
    // removes their entries.
    std::fs::write(feeds.join("allow.txt"), format!("{blocked}\n"))?;
    lab.write_config(&format!(
        "[allowlist]\nentries = [\"{allowed}\"]\n\n[[feed]]\nname = \"own\"\nsource = \"{dir}/own.txt\"\nrefresh = \"1h\"\n\n[[feed]]\nname = \"friends\"\nsource = \"{dir}/allow.txt\"\naction = \"allow\"\n",
        dir = feeds.display()
    ))?;
    assert!(
        eventually(15, || lab.ping(&blocked, 1, "0.2") == 1),
        "the allow feed does not let the source through"
    );
    lab.write_config("")?;
    assert!(eventually(15, || {
        lab.cli_json(&["block", "list"])
            .is_ok_and(|r| r.as_array().is_some_and(Vec::is_empty))
    }));
    assert!(
        lab.cli_json(&["allow", "list", "--match", &blocked])?
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    Ok(())
}

/// Writes a feed of `n` distinct entries that depend on `seed` (IPv4 hosts
/// and /28s in (20 + seed).0.0.0/8, IPv6 /80s), plus `always`.
fn write_feed(path: &std::path::Path, seed: u32, n: u32, always: &[&str]) -> anyhow::Result<()> {
    let mut s = String::with_capacity(n as usize * 24);
    for a in always {
        s.push_str(a);
        s.push('\n');
    }
    let base = (20 + seed) << 24;
    for i in 0..n {
        match i % 4 {
            0 => s.push_str(&format!(
                "{}/28\n",
                std::net::Ipv4Addr::from(base | (i << 2))
            )),
            1 => s.push_str(&format!(
                "2001:db8:{seed:x}:{:x}:{:x}::/80\n",
                i >> 16,
                i & 0xffff
            )),
            _ => s.push_str(&format!("{}\n", std::net::Ipv4Addr::from(base | i))),
        }
    }
    std::fs::write(path, s)?;
    Ok(())
}

#[test]
fn a_feed_swap_under_a_flood_lets_nothing_from_both_versions_through() -> anyhow::Result<()> {
    let mut lab = Lab::new("fs", 102, "")?;
    let (client, blocked, moving) = (
        lab.client_ips[0].clone(),
        lab.client_ips[1].clone(),
        lab.client_ips[2].clone(),
    );
    let path = lab.dir.join("swap.txt");
    // Version A lists `blocked` and `moving`; version B only `blocked`.
    // Each has 20k other entries, different between versions.
    write_feed(&path, 1, 20_000, &[&blocked, &moving])?;
    lab.write_config(&format!(
        "[[feed]]\nname = \"swap\"\nsource = \"{}\"\nrefresh = \"1h\"\nmax_change_percent = 0\n",
        path.display()
    ))?;
    lab.start()?;
    assert!(eventually(15, || lab.ping(&blocked, 1, "0.2") == 0));
    assert_eq!(lab.ping(&client, 1, "0.2"), 1);

    // Flood from the source that both versions block, while swapping.
    let flooder = lab
        .cli
        .command("ping")
        .args(["-f", "-w", "30", "-I", &blocked, &lab.server_ip])
        .stdout(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    let mut swaps = 0;
    for round in 0..8u32 {
        let b_version = round % 2 == 0;
        if b_version {
            write_feed(&path, round + 2, 20_000, &[&blocked])?;
        } else {
            write_feed(&path, round + 2, 20_000, &[&blocked, &moving])?;
        }
        lab.cli_ok(&["feeds", "refresh", "swap"])?;
        swaps += 1;
        // The data plane follows each version.
        assert_eq!(
            lab.ping(&moving, 1, "0.2"),
            u32::from(b_version),
            "round {round}: the swap did not take effect"
        );
    }
    let took = started.elapsed();
    let out = flooder.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let stat = text
        .lines()
        .find(|l| l.contains("transmitted"))
        .unwrap_or("");
    let sent: u64 = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let received: u64 = stat
        .split(',')
        .find(|p| p.contains("received"))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    eprintln!("{swaps} swaps of 20k-entry versions in {took:?}; flood: {stat}");
    assert!(sent > 1000, "the flood did not run: {stat}");
    assert_eq!(
        received, 0,
        "packets from a source in both versions passed: {stat}"
    );
    Ok(())
}

#[test]
fn a_large_feed_loads_and_a_feed_that_does_not_fit_changes_nothing() -> anyhow::Result<()> {
    let mut lab = Lab::new("fl", 103, "")?;
    let blocked = lab.client_ips[1].clone();
    let path = lab.dir.join("big.txt");
    let n = 200_000;
    write_feed(&path, 7, n, &[&blocked])?;
    // Room for the feed's 150,001 IPv4 entries and four more.
    let cap = 150_005;
    lab.write_config(&format!(
        "[capacity]\nblock_v4 = {cap}\n\n[[feed]]\nname = \"big\"\nsource = \"{}\"\nrefresh = \"1h\"\nmax_change_percent = 0\n",
        path.display()
    ))?;
    let started = Instant::now();
    lab.start()?;
    let loaded = || {
        lab.cli_json(&["feeds", "list"])
            .map(|v| feed(&v, "big").clone())
            .unwrap_or_default()
    };
    assert!(
        eventually(60, || loaded()["last_success"].as_u64().unwrap_or(0) > 0),
        "{}",
        lab.log()
    );
    eprintln!(
        "a {}-entry feed in force {:?} after the agent started",
        n + 1,
        started.elapsed()
    );
    let big = loaded();
    assert_eq!(big["entries"].as_u64(), Some(u64::from(n) + 1), "{big}");
    assert_eq!(lab.ping(&blocked, 2, "0.2"), 0);
    let fill = || {
        let status = lab.cli_json(&["status"]).unwrap_or_default();
        let get = |t: &str| {
            status["tables"]
                .as_array()
                .and_then(|a| a.iter().find(|r| r["table"] == t))
                .map_or(0, |r| r["entries"].as_u64().unwrap_or(0))
        };
        (get("BLOCK_V4"), get("BLOCK_V6"))
    };
    assert_eq!(fill(), (150_001, 50_000));

    // Twice the size does not fit: refused with the numbers, and every
    // entry already listed stays.
    write_feed(&path, 8, 2 * n, &[&blocked])?;
    let o = lab.cli(&["feeds", "refresh", "big"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("does not fit") && err.contains(&cap.to_string()),
        "{err}"
    );
    assert_eq!(loaded()["entries"].as_u64(), Some(u64::from(n) + 1));
    assert_eq!(fill(), (150_001, 50_000));
    assert_eq!(lab.ping(&blocked, 2, "0.2"), 0);

    // `block add` into the nearly full table: refused whole, naming the fill.
    let many: Vec<String> = (1..=5).map(|i| format!("192.0.2.{i}")).collect();
    let mut args = vec!["block", "add"];
    args.extend(many.iter().map(String::as_str));
    let o = lab.cli(&args);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("list is full") && err.contains("150001/150005"),
        "{err}"
    );
    assert_eq!(fill(), (150_001, 50_000));
    lab.cli_ok(&["block", "add", "192.0.2.1"])?;
    assert_eq!(fill(), (150_002, 50_000));
    Ok(())
}

/// An HTTP server on 0.0.0.0:`port` in the lab's server namespace: `/same`
/// redirects to `/feed.txt` on the same host, `/away` to `/feed.txt` on
/// 127.0.0.2 (another host that serves it too), `/feed.txt` is `body`.
fn redirect_server(lab: &Lab, port: u16, body: &str) -> anyhow::Result<HttpServer> {
    let script = format!(
        r#"
import http.server
BODY = {body:?}.encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        to = {{"/same": "/feed.txt", "/away": "http://127.0.0.2:{port}/feed.txt"}}.get(self.path)
        if to:
            self.send_response(302); self.send_header("Location", to); self.end_headers()
        else:
            self.send_response(200); self.send_header("Content-Length", str(len(BODY))); self.end_headers(); self.wfile.write(BODY)
    def log_message(self, *a): pass
http.server.HTTPServer(("0.0.0.0", {port}), H).serve_forever()
"#
    );
    let child = lab
        .srv
        .command("python3")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let s = HttpServer(child);
    let url = format!("http://127.0.0.1:{port}/feed.txt");
    let up = eventually(10, || {
        lab.srv
            .command("curl")
            .args(["-sf", "-o", "/dev/null", &url])
            .status()
            .is_ok_and(|st| st.success())
    });
    anyhow::ensure!(up, "the test HTTP server did not start");
    Ok(s)
}

fn sha256_hex(text: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

#[test]
fn a_feed_source_cannot_redirect_away_widen_the_lists_or_swap_them_whole() -> anyhow::Result<()> {
    let mut lab = Lab::new("fg", 104, "")?;
    let blocked = lab.client_ips[1].clone();
    let dir = lab.dir.join("feeds");
    std::fs::create_dir_all(&dir)?;
    let _http = redirect_server(&lab, 18104, "198.51.100.1\n198.51.100.2\n")?;
    let churn = |seed: u32| -> String {
        (0..300)
            .map(|i| format!("{}.{}.{}.1\n", 20 + seed, i / 250, i % 250))
            .collect()
    };
    std::fs::write(dir.join("churn.txt"), churn(0))?;
    std::fs::write(dir.join("pinned.txt"), "192.0.2.7\n")?;
    std::fs::write(dir.join("wide-allow.txt"), "198.18.0.5\n")?;
    std::fs::write(dir.join("wide-block.txt"), "203.0.113.9\n")?;
    let pin = sha256_hex("192.0.2.7\n");
    let feed_cfg = |name: &str, source: &str, extra: &str| {
        format!("[[feed]]\nname = \"{name}\"\nsource = \"{source}\"\nrefresh = \"1h\"\n{extra}\n")
    };
    let d = dir.display().to_string();
    lab.write_config(
        &[
            format!("[blocklist]\nentries = [\"{blocked}\"]\n"),
            feed_cfg("same", "http://127.0.0.1:18104/same", "allow_http = true"),
            feed_cfg("away", "http://127.0.0.1:18104/away", "allow_http = true"),
            feed_cfg("churn", &format!("{d}/churn.txt"), ""),
            feed_cfg(
                "pinned",
                &format!("{d}/pinned.txt"),
                &format!("sha256 = \"{pin}\""),
            ),
            feed_cfg(
                "wide-allow",
                &format!("{d}/wide-allow.txt"),
                "action = \"allow\"",
            ),
            feed_cfg("wide-block", &format!("{d}/wide-block.txt"), ""),
        ]
        .concat(),
    )?;
    lab.start()?;
    let status = |name: &str| {
        lab.cli_json(&["feeds", "list"])
            .map(|v| feed(&v, name).clone())
            .unwrap_or_default()
    };
    assert!(
        eventually(15, || [
            "same",
            "churn",
            "pinned",
            "wide-allow",
            "wide-block"
        ]
        .iter()
        .all(|n| status(n)["last_success"].as_u64().unwrap_or(0) > 0)),
        "{}",
        lab.log()
    );
    // A redirect on the source's own host is followed; one to another host
    // is not, and says why.
    assert_eq!(status("same")["entries"], 2);
    let away = status("away");
    assert_eq!(away["entries"], 0, "{away}");
    assert!(
        away["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("redirected to another host")),
        "{away}"
    );
    // An allow feed may not pass everything, nor a block feed drop half the
    // Internet: refused, the last good version stays.
    std::fs::write(dir.join("wide-allow.txt"), "198.18.0.5\n0.0.0.0/0\n")?;
    std::fs::write(dir.join("wide-block.txt"), "203.0.113.9\n0.0.0.0/1\n")?;
    for (name, wide) in [("wide-allow", "0.0.0.0/0"), ("wide-block", "0.0.0.0/1")] {
        let o = lab.cli(&["feeds", "refresh", name]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("1 entries broader than /8 (IPv4) or /32 (IPv6)") && err.contains(wide),
            "{err}"
        );
        assert_eq!(status(name)["entries"], 1);
    }
    assert!(
        lab.cli_json(&["allow", "list", "--match", "8.8.8.8"])?
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    // A version that replaces the whole list is refused past the cap.
    std::fs::write(dir.join("churn.txt"), churn(1))?;
    let o = lab.cli(&["feeds", "refresh", "churn"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("adds 300 and removes 300 of the 300 entries in force")
            && err.contains("max_change_percent = 50"),
        "{err}"
    );
    assert_eq!(status("churn")["entries"], 300);
    assert!(
        lab.cli_json(&["block", "list", "--match", "20.0.0.1"])?[0]["origin"][0] == "feed:churn"
    );
    // Pinned content: anything else is refused.
    std::fs::write(dir.join("pinned.txt"), "192.0.2.8\n")?;
    let o = lab.cli(&["feeds", "refresh", "pinned"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("does not match the pinned sha256") && err.contains(&pin),
        "{err}"
    );
    assert!(
        lab.cli_json(&["block", "list", "--match", "192.0.2.7"])?[0]["origin"][0] == "feed:pinned"
    );
    assert_eq!(
        lab.ping(&blocked, 2, "0.2"),
        0,
        "the blocklist still applies"
    );
    Ok(())
}
