//! Ways protection could be turned off by mistake, each tried against a
//! live agent: a second agent on the same pins, and a config file missing
//! when the agent starts or reloads.
use std::process::Command;

use rampart_tests::lab::{Lab, eventually, rampart_bin};

/// The lab's blocklist as `rampart block list` shows it.
fn blocked(lab: &Lab) -> Vec<String> {
    let rows = lab.cli_json(&["block", "list"]).unwrap_or_default();
    let mut v: Vec<String> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["prefix"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

#[test]
fn a_second_agent_on_the_same_pins_is_refused_before_it_changes_anything() -> anyhow::Result<()> {
    let mut lab = Lab::new("hb", 125, "")?;
    let first = lab.client_ips[1].clone();
    let second = lab.client_ips[2].clone();
    lab.write_config(&format!("[blocklist]\nentries = [\"{first}\"]\n"))?;
    lab.start()?;
    let before = blocked(&lab);
    assert_eq!(before, std::slice::from_ref(&first));
    let pid = lab.agent_pid().expect("the first agent runs");
    // The same pins, its own socket, metrics port and state, and a config
    // that would block another address and drop this one.
    let other = lab.dir.join("other.toml");
    let text = lab
        .config_text(&format!("[blocklist]\nentries = [\"{second}\"]\n"))
        .replace(
            &lab.socket.display().to_string(),
            "/tmp/rampart-hb-other.sock",
        )
        .replace(
            &format!("127.0.0.1:{}", lab.metrics_port),
            "127.0.0.1:19901",
        )
        .replace(
            &format!("{}/state", lab.dir.display()),
            &format!("{}/other-state", lab.dir.display()),
        );
    std::fs::write(&other, text)?;
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.srv.name))
        .arg(rampart_bin())
        .args(["agent", "--config"])
        .arg(&other)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("another rampart agent (pid {pid})"))
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(blocked(&lab), before, "the running agent's lists");
    assert_eq!(lab.ping(&first, 2, "0.2"), 0, "still dropped");
    assert_eq!(lab.ping(&second, 2, "0.2"), 2, "still served");
    Ok(())
}

#[test]
fn a_config_file_missing_at_reload_changes_nothing_and_is_reported() -> anyhow::Result<()> {
    let mut lab = Lab::new("hm", 126, "")?;
    let client = lab.client_ips[1].clone();
    lab.write_config(&format!("[blocklist]\nentries = [\"{client}\"]\n"))?;
    lab.start()?;
    let away = lab.dir.join("rampart.toml.away");
    std::fs::rename(&lab.config, &away)?;
    lab.sighup();
    let reported = eventually(10, || {
        lab.cli_json(&["status"]).is_ok_and(|s| {
            s["reload"]["last_result"] == "failed"
                && s["reload"]["errors"][0]
                    .as_str()
                    .is_some_and(|e| e.contains("does not exist"))
        })
    });
    assert!(reported, "{}", lab.cli_ok(&["status"])?);
    assert_eq!(
        blocked(&lab),
        std::slice::from_ref(&client),
        "the config's entries stay"
    );
    assert_eq!(lab.ping(&client, 2, "0.2"), 0, "still dropped");
    // Back in place, the next reload applies it again.
    std::fs::rename(&away, &lab.config)?;
    lab.cli_ok(&["reload"])?;
    let s = lab.cli_json(&["status"])?;
    assert_eq!(s["reload"]["last_result"], "ok", "{s}");
    Ok(())
}

#[test]
fn a_given_config_file_that_is_missing_stops_the_agent_at_start() {
    let missing = std::env::temp_dir().join("rampart-no-such-config.toml");
    let _ = std::fs::remove_file(&missing);
    let child = Command::new(rampart_bin())
        .args(["agent", "--config"])
        .arg(&missing)
        .output()
        .expect("run the agent");
    let err = String::from_utf8_lossy(&child.stderr);
    assert_eq!(child.status.code(), Some(1), "{err}");
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn a_huge_ttl_or_an_overlong_reason_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let mut lab = Lab::new("ht", 127, "")?;
    lab.start()?;
    let target = lab.client_ips[1].clone();
    // Straight to the socket, past the CLI's own checks: a TTL that used to
    // wrap and expire at once while the API said it was added.
    let body = format!("{{\"prefixes\":[\"{target}\"],\"ttl_secs\":{}}}", u64::MAX);
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(&lab.socket)
        .args(["-H", "Content-Type: application/json", "-d", &body])
        .arg("http://rampart/v1/lists/block/add")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n400"), "{text}");
    assert!(text.contains("ttl must be 1 second to 10 years"), "{text}");
    let reason = "x".repeat(300);
    let o = lab.cli(&["block", "add", &target, "--reason", &reason]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "an overlong reason was accepted");
    assert!(err.contains("reason is 300 bytes; at most 256"), "{err}");
    assert!(blocked(&lab).is_empty(), "nothing was added");
    assert_eq!(lab.ping(&target, 1, "0.2"), 1, "still served");
    Ok(())
}

#[test]
fn a_broad_allowlist_entry_needs_force_and_force_is_audited() -> anyhow::Result<()> {
    let mut lab = Lab::new("ha", 128, "")?;
    lab.write_config(&format!(
        "[blocklist]\nentries = [\"{}\"]\n",
        lab.client_ips[1]
    ))?;
    lab.start()?;
    let blocked_client = lab.client_ips[1].clone();
    for broad in ["0.0.0.0/0", "10.0.0.0/7", "::/0", "2001:db8::/31"] {
        let o = lab.cli(&["allow", "add", broad]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "{broad} was allowlisted without --force"
        );
        assert!(
            err.contains("need --force") && err.contains("/8 (IPv4) or /32 (IPv6)"),
            "{err}"
        );
    }
    assert_eq!(
        lab.ping(&blocked_client, 2, "0.2"),
        0,
        "the blocklist still applies"
    );
    // At the minimum it is an ordinary entry; below it, --force takes it,
    // and the audit log says so.
    lab.cli_ok(&["allow", "add", "10.0.0.0/8"])?;
    lab.cli_ok(&["allow", "del", "10.0.0.0/8"])?;
    lab.cli_ok(&["allow", "add", "0.0.0.0/0", "--force"])?;
    let audit = std::fs::read_to_string(lab.dir.join("state/audit.log"))?;
    let line = audit
        .lines()
        .rfind(|l| l.contains("allow.add"))
        .unwrap_or_default();
    assert!(
        line.contains("\"force\":true") && line.contains("0.0.0.0/0"),
        "{line}"
    );
    Ok(())
}

/// Raises this process's descriptor limit to its hard limit (the test
/// holds thousands of connections).
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

/// One scrape on a fresh connection: true on a complete 200 answer.
fn scrape(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: rampart\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    s.read_to_string(&mut body).is_ok()
        && body.starts_with("HTTP/1.1 200")
        && body.contains("rampart_build_info")
}

#[test]
fn idle_connections_and_a_scrape_flood_leave_the_agent_working() -> anyhow::Result<()> {
    use std::{
        sync::atomic::{AtomicBool, AtomicU64, Ordering},
        time::{Duration, Instant},
    };

    use rampart_tests::netns::InNetns;

    raise_nofile();
    let mut lab = Lab::new("hc", 129, "")?;
    let blocked_client = lab.client_ips[1].clone();
    // Listening on every address, as a node's metrics port may be.
    let text = lab
        .config_text(&format!("[blocklist]\nentries = [\"{blocked_client}\"]\n"))
        .replace(
            &format!("127.0.0.1:{}", lab.metrics_port),
            &format!("0.0.0.0:{}", lab.metrics_port),
        );
    std::fs::write(&lab.config, text)?;
    lab.start()?;
    let pid = lab.agent_pid().expect("the agent runs");
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    let fds_before = fds();

    // 2,000 connections from the client namespace that never send a byte.
    let remote = format!("{}:{}", lab.server_ip, lab.metrics_port);
    let cli_ns = lab.cli.name.clone();
    let holder = std::thread::spawn(move || {
        let _in = InNetns::enter_named(&cli_ns).expect("enter the client namespace");
        (0..2000)
            .filter_map(|_| std::net::TcpStream::connect(&remote).ok())
            .collect::<Vec<_>>()
    });
    let held = holder.join().expect("the holder thread");
    assert!(held.len() >= 1900, "{} of 2000 connected", held.len());

    // A scrape flood from the server's loopback, 4 at a time, for 6 s.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (ok, failed) = (
        std::sync::Arc::new(AtomicU64::new(0)),
        std::sync::Arc::new(AtomicU64::new(0)),
    );
    let local = format!("127.0.0.1:{}", lab.metrics_port);
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, local) =
                (stop.clone(), ok.clone(), failed.clone(), local.clone());
            let srv_ns = lab.srv.name.clone();
            std::thread::spawn(move || {
                let _in = InNetns::enter_named(&srv_ns).expect("enter the server namespace");
                while !stop.load(Ordering::Relaxed) {
                    let c = if scrape(&local) { &ok } else { &failed };
                    c.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Meanwhile the CLI, /healthz and filtering keep working.
    let started = Instant::now();
    let mut slowest_cli = Duration::ZERO;
    let mut health = Vec::new();
    while started.elapsed() < Duration::from_secs(6) {
        let t = Instant::now();
        lab.cli_ok(&["status"])?;
        slowest_cli = slowest_cli.max(t.elapsed());
        health.push(lab.http_get("/healthz").0);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(lab.ping(&lab.client_ips[0], 3, "0.2"), 3, "served");
    assert_eq!(lab.ping(&blocked_client, 3, "0.2"), 0, "still dropped");
    let fds_during = fds();
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.join();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let (_, metrics) = lab.http_get("/metrics");
    let refused: u64 = metrics
        .lines()
        .find(|l| l.starts_with("rampart_connections_refused_total{listener=\"metrics\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    eprintln!(
        "held {} idle connections; agent fds {fds_before} before, {fds_during} during; \
         {ok} scrapes served, {failed} failed in 6 s; {refused} connections refused; \
         slowest CLI status {slowest_cli:?}; /healthz {}/{} ok",
        held.len(),
        health.iter().filter(|c| **c == 200).count(),
        health.len()
    );
    assert!(health.iter().all(|c| *c == 200), "/healthz: {health:?}");
    assert!(
        slowest_cli < Duration::from_secs(2),
        "CLI took {slowest_cli:?}"
    );
    assert_eq!(failed, 0, "every scrape from the local address was served");
    assert!(ok >= 100, "only {ok} scrapes in 6 s");
    assert!(
        fds_during < fds_before + 100,
        "the agent holds {fds_during} descriptors (from {fds_before})"
    );
    assert!(refused >= 1900, "refused {refused}");
    drop(held);
    Ok(())
}

/// The lab's config with `interfaces` set to `ifaces` (empty: auto).
fn with_interfaces(lab: &Lab, ifaces: &str, extra: &str) -> String {
    lab.config_text(extra).replace(
        &format!("interfaces = [\"{}\"]", lab.iface()),
        &format!("interfaces = [{ifaces}]"),
    )
}

/// `rampart status`'s row for interface `name`.
fn iface_row(lab: &Lab, name: &str) -> serde_json::Value {
    lab.cli_json(&["status"]).unwrap_or_default()["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == name)
        .cloned()
        .unwrap_or_default()
}

#[test]
fn an_interface_without_ethernet_framing_is_refused_and_readiness_says_so() -> anyhow::Result<()> {
    let mut lab = Lab::new("hl", 130, "")?;
    // An L3 device (tun: no link layer, as WireGuard) carrying the default
    // route, with the source behind it blocked.
    lab.srv
        .exec(&["ip", "tuntap", "add", "dev", "hltun", "mode", "tun"])?;
    lab.srv
        .exec(&["ip", "addr", "add", "192.168.130.1/24", "dev", "hltun"])?;
    lab.srv.exec(&["ip", "link", "set", "hltun", "up"])?;
    lab.srv
        .exec(&["ip", "route", "add", "default", "dev", "hltun"])?;
    let blocks = "[blocklist]\nentries = [\"192.168.130.2\"]\n";

    // Named in the config: refused with the reason, and not ready.
    std::fs::write(&lab.config, with_interfaces(&lab, "\"hltun\"", blocks))?;
    lab.start()?;
    let row = iface_row(&lab, "hltun");
    assert_eq!(row["attached"], false, "{row}");
    let err = row["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("is not Ethernet (no link layer (WireGuard, tun))")
            && err.contains("protect the Ethernet interface"),
        "{err}"
    );
    assert_eq!(
        lab.http_get("/readyz"),
        (503, "not attached: hltun\n".to_string())
    );
    let tc = lab.srv.exec(&["ip", "link", "show", "hltun"])?;
    assert!(!tc.contains("xdp"), "no program on the tun device: {tc}");
    lab.stop();

    // Auto mode passes over it: not ready while it is the only default route,
    // ready once an Ethernet interface carries one too.
    std::fs::write(&lab.config, with_interfaces(&lab, "", blocks))?;
    lab.start()?;
    assert_eq!(iface_row(&lab, "hltun")["mode"], "skipped");
    let (code, body) = lab.http_get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("no interface to protect: interface hltun is not Ethernet"),
        "{body}"
    );
    lab.srv.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &lab.client_ips[0],
        "dev",
        &lab.iface(),
        "metric",
        "100",
    ])?;
    assert!(
        eventually(10, || lab.http_get("/readyz").0 == 200),
        "ready with the Ethernet interface: {:?}",
        lab.http_get("/readyz")
    );
    assert_eq!(iface_row(&lab, &lab.iface())["attached"], true);
    Ok(())
}

#[test]
fn a_default_route_flap_keeps_the_filter_attached() -> anyhow::Result<()> {
    let mut lab = Lab::new("hr", 131, "")?;
    let blocked_client = lab.client_ips[1].clone();
    let via = lab.client_ips[0].clone();
    let route = [
        "ip",
        "route",
        "add",
        "default",
        "via",
        &via,
        "dev",
        &lab.iface(),
    ];
    lab.srv.exec(&route)?;
    let blocks = format!("[blocklist]\nentries = [\"{blocked_client}\"]\n");
    std::fs::write(&lab.config, with_interfaces(&lab, "", &blocks))?;
    lab.start()?;
    assert_eq!(iface_row(&lab, &lab.iface())["attached"], true);
    assert_eq!(lab.ping(&blocked_client, 2, "0.2"), 0);
    // The default route goes away for a few seconds (a DHCP renewal, a
    // routing daemon's restart): the interface stays protected.
    lab.srv.exec(&["ip", "route", "del", "default"])?;
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert_eq!(
        iface_row(&lab, &lab.iface())["attached"],
        true,
        "{}",
        lab.log()
    );
    assert_eq!(lab.ping(&blocked_client, 3, "0.2"), 0, "still dropped");
    assert_eq!(lab.ping(&via, 2, "0.2"), 2, "still served");
    lab.srv.exec(&route)?;
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(lab.ping(&blocked_client, 2, "0.2"), 0);
    assert!(!lab.log().contains("detached"), "{}", lab.log());
    Ok(())
}

#[test]
fn the_agent_moves_only_its_own_pin_layouts_and_keeps_its_files_private() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let mut lab = Lab::new("hp", 132, "")?;
    // Another tool's directories beside ours under the bpffs root, one
    // starting with "v" like our layout directories.
    for other in ["vendor-maps", "v5-backup", "v"] {
        std::fs::create_dir_all(format!("{}/{other}", lab.bpffs()))?;
    }
    // A state directory as a hostPath volume creates it, with an audit log
    // an earlier version left world-readable.
    let state = lab.dir.join("state");
    std::fs::create_dir_all(&state)?;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(state.join("audit.log"), "{}\n")?;
    std::fs::set_permissions(
        state.join("audit.log"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    lab.start()?;
    lab.cli_ok(&["block", "add", "192.0.2.1", "--reason", "test"])?;
    assert!(eventually(5, || state.join("state.json").exists()));
    for other in ["vendor-maps", "v5-backup", "v"] {
        assert!(
            std::path::Path::new(&format!("{}/{other}", lab.bpffs())).is_dir(),
            "{other} was removed"
        );
    }
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o777)
    };
    assert_eq!(mode(&state), 0o700);
    for f in ["state.json", "audit.log"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    Ok(())
}

#[test]
fn a_flood_in_an_exempt_range_is_rate_limited_but_never_banned() -> anyhow::Result<()> {
    let (partner, other) = ("10.133.0.2", "10.133.0.4");
    let config = format!(
        "[bans]\nexempt = [\"{partner}/32\"]\n\n[[policy]]\nname = \"icmp\"\nprotocol = \"icmp\"\npps = 2\nburst = 2\nban_threshold = 3\nban_time = \"10m\"\n"
    );
    let mut lab = Lab::new("he", 133, &config)?;
    lab.start()?;
    // The partner's gateway (or a flood spoofing it) goes over its rate.
    let served = lab.ping(partner, 20, "0.05");
    assert!(served < 20, "rate-limited: {served} of 20 answered");
    lab.ping(other, 20, "0.05");
    let bans = lab.cli_json(&["bans", "list"])?;
    let banned: Vec<&str> = bans
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["prefix"].as_str())
        .collect();
    assert_eq!(banned, [other], "{bans}");
    let (_, metrics) = lab.http_get("/metrics");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("rampart_bans_spared_total{reason=\"exempt\"}") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    // A bad range is refused with its place, and changes nothing.
    lab.write_config(&format!("{config}\n").replace(&format!("{partner}/32"), "10.133.0.2/33"))?;
    lab.sighup();
    assert!(eventually(10, || lab.cli_json(&["status"]).is_ok_and(
        |s| s["reload"]["last_result"] == "failed"
            && s["reload"]["errors"][0]
                .as_str()
                .is_some_and(|e| e.contains("bans.exempt[0]"))
    )));
    Ok(())
}
