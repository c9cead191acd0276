//! Sharing decisions between nodes through a real CrowdSec local API. Two
//! labs with the same addresses stand for two nodes: node A's server
//! namespace runs the LAPI, node B reaches it over a veth between the two
//! server namespaces. A source that floods A is banned by A's program,
//! pushed by A, pulled by B, and dropped by B's data plane, which never saw
//! the flood.
use std::{
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use rampart_tests::{
    frames::FrameBuilder,
    lab::{Lab, eventually},
    lapi::{Lapi, PORT, stand_in},
    netns::{InNetns, Netns, Veth},
};

/// Both labs use this net number: the same client addresses exist on both.
const NET: u8 = 121;
const SYN_POLICY: &str = "[[policy]]\nname = \"syn\"\nprotocol = \"tcp\"\nports = [8080]\npps = 20\nburst = 20\nban_threshold = 3\nban_time = \"10m\"\n";

fn share_config(
    lapi_url: &str,
    key: &Path,
    node: &str,
    password: &Path,
    full_sync: bool,
) -> String {
    format!(
        "[crowdsec]\nurl = \"{lapi_url}\"\napi_key_file = \"{}\"\npoll = \"1s\"\nfull_sync = {full_sync}\nshare = true\nnode = \"{node}\"\nmachine_id = \"{node}\"\npassword_file = \"{}\"\npush_interval = \"1s\"\n\n{SYN_POLICY}",
        key.display(),
        password.display()
    )
}

/// A SYN flood from `from` at port 8080 of the lab's server, until killed.
fn start_syn_flood(lab: &Lab, from: &str) -> Child {
    lab.cli
        .command("hping3")
        .args(["-S", "-p", "8080", "--flood", "-a", from, &lab.server_ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hping3")
}

fn stop(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// A SYN flood for `secs`.
fn syn_flood(lab: &Lab, from: &str, secs: u64) {
    let c = start_syn_flood(lab, from);
    std::thread::sleep(Duration::from_secs(secs));
    stop(c);
}

fn banned(lab: &Lab, ip: &str) -> bool {
    lab.cli_json(&["bans", "list"]).is_ok_and(|v| {
        v.as_array()
            .into_iter()
            .flatten()
            .any(|b| b["prefix"] == ip && b["active"] == true)
    })
}

fn block_row(lab: &Lab, ip: &str) -> Option<serde_json::Value> {
    lab.cli_json(&["block", "list", "--match", ip])
        .ok()
        .and_then(|v| v.as_array().and_then(|a| a.first().cloned()))
}

fn share_status(lab: &Lab) -> serde_json::Value {
    lab.cli_json(&["feeds", "list"])
        .map(|v| v["crowdsec"].clone())
        .unwrap_or_default()
}

/// Two nodes and a LAPI in A's server namespace, B joined to it. With
/// `one_key`, both poll with one bouncer key and `full_sync`, as the Helm
/// chart's one Secret has them; else each has its own key.
struct Cluster {
    a: Lab,
    b: Lab,
    lapi: Lapi,
    _link: Veth,
}

impl Cluster {
    fn new(one_key: bool) -> anyhow::Result<Self> {
        let mut a = Lab::new("na", NET, "")?;
        let mut b = Lab::new("nb", NET, "")?;
        let link = Veth::new(
            "nl0",
            &a.srv,
            &["10.250.0.1/30"],
            "nl1",
            &b.srv,
            &["10.250.0.2/30"],
        )?;
        let lapi = Lapi::start_on(&a, "0.0.0.0")?;
        let a_pw = lapi.add_machine("node-a", "node-a-password-0123456789")?;
        let b_pw = lapi.add_machine("node-b", "node-b-password-0123456789")?;
        let a_key = lapi.add_bouncer("rampart-a", "rampart-a-bouncer-key-0123456789")?;
        let b_key = if one_key {
            a_key.clone()
        } else {
            lapi.add_bouncer("rampart-b", "rampart-b-bouncer-key-0123456789")?
        };
        a.write_config(&share_config(
            &format!("http://127.0.0.1:{PORT}"),
            &a_key,
            "node-a",
            &a_pw,
            one_key,
        ))?;
        b.write_config(&share_config(
            &format!("http://10.250.0.1:{PORT}"),
            &b_key,
            "node-b",
            &b_pw,
            one_key,
        ))?;
        a.start()?;
        b.start()?;
        for lab in [&a, &b] {
            anyhow::ensure!(
                eventually(10, || share_status(lab)["polls_ok"].as_u64().unwrap_or(0)
                    > 0),
                "{} does not poll the LAPI: {}\n{}",
                lab.name,
                share_status(lab),
                lab.log()
            );
        }
        Ok(Self {
            a,
            b,
            lapi,
            _link: link,
        })
    }
}

#[test]
fn a_ban_on_one_node_is_enforced_on_the_other_and_shared_blocks_come_and_go_everywhere()
-> anyhow::Result<()> {
    let c = Cluster::new(false)?;
    let (client, attacker, operator) = (
        c.a.client_ips[0].clone(),
        c.a.client_ips[1].clone(),
        c.a.client_ips[2].clone(),
    );
    // The lab's default config blocks client 1; here nothing is blocked.
    assert_eq!(
        c.b.ping(&attacker, 1, "0.2"),
        1,
        "B passes the source first"
    );
    let b_drops_before = c.b.counter("drop", "blocklist");

    // A SYN flood at A: A's program bans the source. Timed from the
    // flood's start, so the figure bounds the ban's way to B from above.
    let flood_started = Instant::now();
    let flood = start_syn_flood(&c.a, &attacker);
    let reached_b = eventually(10, || block_row(&c.b, &attacker).is_some());
    let propagation = flood_started.elapsed();
    stop(flood);
    assert!(
        banned(&c.a, &attacker),
        "A did not ban the flood:\n{}",
        c.a.log()
    );
    assert!(
        reached_b,
        "B never got A's ban: {}\n{}",
        share_status(&c.a),
        c.a.log()
    );
    eprintln!(
        "ban propagation, flood start on A to the block on B: {propagation:?} (poll 1s, push_interval 1s)"
    );
    assert!(
        propagation <= Duration::from_secs(2) + Duration::from_millis(500),
        "propagation took {propagation:?}, more than one poll interval plus one second"
    );
    let row = block_row(&c.b, &attacker).unwrap_or_default();
    assert_eq!(row["origin"][0], "crowdsec", "{row}");
    assert_eq!(row["reason"], "crowdsec: rampart/node-a/syn", "{row}");
    // B drops the source's frames, and B never banned it itself.
    assert_eq!(c.b.ping(&attacker, 2, "0.2"), 0);
    assert!(c.b.counter("drop", "blocklist") >= b_drops_before + 2);
    assert!(!banned(&c.b, &attacker), "B saw no flood to ban");
    assert_eq!(c.b.ping(&client, 2, "0.2"), 2, "other sources pass on B");
    // The LAPI holds it as Rampart's decision with the ban's time.
    let d = c
        .lapi
        .decisions()
        .into_iter()
        .find(|d| d["value"] == attacker.as_str())
        .expect("decision in the LAPI");
    assert_eq!(d["origin"], "rampart", "{d}");
    assert_eq!(d["scenario"], "rampart/node-a/syn", "{d}");
    // A does not import its own decision back.
    assert!(eventually(5, || share_status(&c.a)["own_skipped_total"]
        .as_u64()
        .unwrap_or(0)
        >= 1));
    assert!(
        block_row(&c.a, &attacker).is_none(),
        "A re-imported its own ban as a block"
    );
    assert!(share_status(&c.b)["from_nodes_total"].as_u64().unwrap_or(0) >= 1);

    // An operator's shared block on A is enforced on B ...
    c.a.cli_ok(&[
        "block",
        "add",
        &operator,
        "--share",
        "--reason",
        "fraud ring",
    ])?;
    assert_eq!(c.a.ping(&operator, 1, "0.2"), 0);
    assert!(
        eventually(5, || c.b.ping(&operator, 1, "0.2") == 0),
        "B does not enforce A's shared block"
    );
    // ... and its deletion on A lifts it on both.
    c.a.cli_ok(&["block", "del", &operator])?;
    assert_eq!(c.a.ping(&operator, 1, "0.2"), 1);
    assert!(
        eventually(5, || c.b.ping(&operator, 1, "0.2") == 1),
        "B kept a block A deleted"
    );
    assert!(
        !c.lapi
            .decisions()
            .iter()
            .any(|d| d["value"] == operator.as_str()),
        "the LAPI kept the deleted decision"
    );
    // A protected address is never shared: the block is refused outright.
    let server = c.a.server_ip.clone();
    assert!(
        !c.a.cli(&["block", "add", &server, "--share"])
            .status
            .success()
    );
    let (_, metrics) = c.a.http_get("/metrics");
    for m in [
        "rampart_crowdsec_share_pushes_total{result=\"success\"}",
        "rampart_crowdsec_share_queue_length 0",
        "rampart_crowdsec_shared_received_total{from=\"self\"}",
    ] {
        assert!(metrics.contains(m), "{m} missing:\n{metrics}");
    }
    let (_, metrics) = c.b.http_get("/metrics");
    assert!(metrics.contains("rampart_crowdsec_shared_received_total{from=\"other_node\"}"));
    drop(c.lapi);
    Ok(())
}

#[test]
fn bans_made_while_the_lapi_is_down_survive_a_restart_and_arrive_when_it_returns_on_one_key()
-> anyhow::Result<()> {
    let mut c = Cluster::new(true)?;
    let attacker = c.a.client_ips[2].clone();
    c.lapi.stop();
    syn_flood(&c.a, &attacker, 2);
    assert!(eventually(5, || banned(&c.a, &attacker)));
    c.a.cli_ok(&["block", "add", "192.0.2.88", "--share", "--ttl", "1h"])?;
    assert!(
        eventually(10, || {
            let s = share_status(&c.a);
            s["share"]["queued"].as_u64().unwrap_or(0) >= 2 && s["share"]["last_error"].is_string()
        }),
        "{}",
        share_status(&c.a)
    );
    // Local enforcement never stops.
    assert_eq!(c.a.ping(&attacker, 2, "0.2"), 0);
    // A restarts (killed, no clean shutdown) while the LAPI is still down.
    c.a.kill9();
    c.a.start()?;
    assert!(
        eventually(5, || share_status(&c.a)["share"]["queued"]
            .as_u64()
            .unwrap_or(0)
            >= 2),
        "the queue did not survive the restart: {}",
        share_status(&c.a)
    );
    c.lapi.run()?;
    // Backoff is capped at 30 s.
    assert!(
        eventually(45, || block_row(&c.b, &attacker).is_some()
            && block_row(&c.b, "192.0.2.88").is_some()),
        "B did not get the queued decisions: A {}\nB {}\n{}",
        share_status(&c.a),
        share_status(&c.b),
        c.a.log()
    );
    assert!(eventually(5, || share_status(&c.a)["share"]["queued"] == 0));
    // Each decision reached the LAPI once: the restart's table scan did not
    // send the ban again.
    let ours = c
        .lapi
        .decisions()
        .into_iter()
        .filter(|d| d["value"] == attacker.as_str())
        .count();
    assert_eq!(ours, 1, "{:?}", c.lapi.decisions());
    assert_eq!(c.b.ping(&attacker, 2, "0.2"), 0);
    // On one key, a deletion reaches B by absence from the whole set.
    c.a.cli_ok(&["block", "del", "192.0.2.88"])?;
    assert!(
        eventually(10, || block_row(&c.b, "192.0.2.88").is_none()),
        "B kept a block A deleted"
    );
    assert!(block_row(&c.b, &attacker).is_some(), "the ban stays on B");
    Ok(())
}

/// Sends `frames` out of `dev` in `ns` (AF_PACKET), from a thread that
/// enters the namespace.
fn send_frames(ns: &Netns, dev: &str, frames: Vec<Vec<u8>>) -> anyhow::Result<()> {
    let (ns, dev) = (ns.name.clone(), dev.to_string());
    std::thread::spawn(move || -> anyhow::Result<()> {
        let _in = InNetns::enter_named(&ns)?;
        let cdev = std::ffi::CString::new(dev)?;
        // SAFETY: plain socket calls on a descriptor this function owns.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            anyhow::ensure!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = libc::if_nametoindex(cdev.as_ptr()) as i32;
            sll.sll_halen = 6;
            // Paced in chunks so the veth ring never overflows (an
            // overflow there is a silent drop), and a full socket buffer
            // (ENOBUFS) retries the same frame rather than skipping it.
            for (i, f) in frames.iter().enumerate() {
                if i % 64 == 63 {
                    std::thread::sleep(Duration::from_micros(500));
                }
                loop {
                    let n = libc::sendto(
                        fd,
                        f.as_ptr().cast(),
                        f.len(),
                        0,
                        (&raw const sll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    );
                    if n >= 0 {
                        break;
                    }
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::ENOBUFS) {
                        libc::close(fd);
                        anyhow::bail!("sendto: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            libc::close(fd);
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sender thread panicked"))?
}

#[test]
fn ten_thousand_bans_in_a_minute_take_a_bounded_number_of_lapi_requests() -> anyhow::Result<()> {
    let mut lab = Lab::new("nt", 122, "")?;
    let lapi = Lapi::start(&lab)?;
    let pw = lapi.add_machine("node-t", "node-t-password-0123456789")?;
    let key = lapi.add_bouncer("rampart-t", "rampart-t-bouncer-key-0123456789")?;
    lab.write_config(&format!(
        "[crowdsec]\nurl = \"http://127.0.0.1:{PORT}\"\napi_key_file = \"{}\"\npoll = \"1s\"\nshare = true\nnode = \"node-t\"\nmachine_id = \"node-t\"\npassword_file = \"{}\"\n\n[[policy]]\nname = \"udp\"\nprotocol = \"udp\"\nports = [9999]\npps = 1\nburst = 1\nban_threshold = 1\nban_time = \"10m\"\nnew_sources_pps = 0\n",
        key.display(),
        pw.display()
    ))?;
    lab.start()?;
    let server = lab.server_ip.clone();
    let started = Instant::now();
    // 10,000 sources in ten bursts over about ten seconds, four frames each:
    // the first passes, the rest are over the limit and ban the source.
    const SOURCES: u32 = 10_000;
    for burst in 0..10u32 {
        let frames: Vec<Vec<u8>> = (0..SOURCES / 10)
            .flat_map(|i| {
                let n = burst * (SOURCES / 10) + i;
                let src = format!("198.18.{}.{}", n / 250, 1 + n % 250);
                let f = FrameBuilder::udp(&src, &server, 9999).build();
                [f.clone(), f.clone(), f.clone(), f]
            })
            .collect();
        send_frames(&lab.cli, &format!("{}1", lab.name), frames)?;
        std::thread::sleep(Duration::from_millis(900));
    }
    let in_table = || {
        lab.cli_json(&["bans", "list"])
            .map_or(0, |v| v.as_array().map_or(0, Vec::len))
    };
    assert!(
        eventually(30, || in_table() >= SOURCES as usize),
        "the program banned {} of {SOURCES} sources",
        in_table()
    );
    let counted = || {
        lapi.decisions()
            .iter()
            .filter(|d| d["scenario"] == "rampart/node-t/udp")
            .count()
    };
    assert!(
        eventually(60, || counted() >= SOURCES as usize),
        "the LAPI holds {} of {SOURCES} decisions: {}",
        counted(),
        share_status(&lab)
    );
    let elapsed = started.elapsed();
    let alerts = lapi.alerts().len();
    let st = share_status(&lab);
    let requests = st["share"]["requests_total"].as_u64().unwrap_or(0);
    eprintln!(
        "{SOURCES} bans over {elapsed:?}: {alerts} alerts posted, {requests} LAPI requests in all (logins included)"
    );
    // One push a second at most, whatever the ban rate.
    let bound = elapsed.as_secs() as usize + 2;
    assert!(alerts <= bound, "{alerts} alerts in {elapsed:?}");
    assert!(
        requests as usize <= bound + 2,
        "{requests} requests in {elapsed:?}"
    );
    assert_eq!(st["share"]["overflowed_total"], 0, "{st}");
    Ok(())
}

/// A stand-in local API at 0.0.0.0:`port` in the lab's server namespace
/// whose answers follow the word in `<dir>/mode`: `login-html`,
/// `login-401`, `alerts-500`, `alerts-object`, `alerts-huge`, or anything
/// else for well-formed answers (each accepted alert adds a line to
/// `<dir>/accepted`).
fn hostile_lapi(lab: &Lab, port: u16, dir: &Path) -> anyhow::Result<Child> {
    let script = format!(
        r#"
import http.server, json, os
D = {dir:?}
def mode():
    try: return open(os.path.join(D, "mode")).read().strip()
    except OSError: return ""
class H(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body):
        self.send_response(code); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_GET(self):
        self.reply(200, b'{{"new": null, "deleted": null}}')
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0")); body = self.rfile.read(n)
        m = mode()
        if self.path.startswith("/v1/watchers/login"):
            if m == "login-html": return self.reply(200, b"<html>502 Bad Gateway</html>")
            if m == "login-401": return self.reply(401, b'{{"message":"ent: machine not found"}}')
            return self.reply(200, b'{{"code":200,"expire":"2099-01-01T00:00:00Z","token":"t0k3n"}}')
        if m == "alerts-500": return self.reply(500, b'{{"message":"database is locked"}}')
        if m == "alerts-object": return self.reply(201, b'{{"message":"unexpected"}}')
        if m == "alerts-huge": return self.reply(201, b"[" + b" " * (2 << 20) + b"]")
        open(os.path.join(D, "accepted"), "a").write(json.dumps(json.loads(body)) + "\n")
        self.reply(201, b'["1"]')
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", {port}), H).serve_forever()
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
fn hostile_or_malformed_lapi_answers_are_clear_errors_and_lose_nothing() -> anyhow::Result<()> {
    let mut lab = Lab::new("nh", 123, "")?;
    let dir = lab.dir.join("hostile-lapi");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("mode"), "login-html")?;
    std::fs::write(dir.join("key"), "some-bouncer-key\n")?;
    std::fs::write(dir.join("password"), "some-password\n")?;
    let port = 18123;
    let mut server = hostile_lapi(&lab, port, &dir)?;
    lab.write_config(&format!(
        "[crowdsec]\nurl = \"http://127.0.0.1:{port}\"\napi_key_file = \"{d}/key\"\npoll = \"1s\"\nshare = true\nnode = \"node-h\"\nmachine_id = \"node-h\"\npassword_file = \"{d}/password\"\npush_interval = \"200ms\"\n",
        d = dir.display()
    ))?;
    lab.start()?;
    lab.cli_ok(&["block", "add", "192.0.2.5", "--share", "--ttl", "1h"])?;
    let error_now = || {
        share_status(&lab)["share"]["last_error"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    for (mode, says) in [
        ("login-html", "the login answer is not JSON"),
        ("login-401", "refused the login of machine 'node-h'"),
        ("alerts-500", "answered 500 Internal Server Error"),
        ("alerts-object", "did not answer with alert ids"),
        ("alerts-huge", "more than 1048576 bytes"),
    ] {
        std::fs::write(dir.join("mode"), mode)?;
        assert!(
            eventually(40, || error_now().contains(says)),
            "{mode}: the error reads {:?}",
            error_now()
        );
        let st = share_status(&lab);
        assert_eq!(
            st["share"]["queued"], 1,
            "{mode}: the decision stays queued: {st}"
        );
        assert!(lab.cli_ok(&["status"]).is_ok(), "{mode}: the agent answers");
        assert!(
            block_row(&lab, "192.0.2.5").is_some(),
            "{mode}: the block stays"
        );
    }
    std::fs::write(dir.join("mode"), "ok")?;
    assert!(
        eventually(40, || share_status(&lab)["share"]["queued"] == 0),
        "{}",
        share_status(&lab)
    );
    assert!(share_status(&lab)["share"]["last_error"].is_null());
    let accepted = std::fs::read_to_string(dir.join("accepted"))?;
    assert_eq!(accepted.lines().count(), 1, "{accepted}");
    assert!(accepted.contains("\"value\": \"192.0.2.5\""), "{accepted}");
    assert!(!lab.log().contains("panicked"), "{}", lab.log());
    let _ = server.kill();
    let _ = server.wait();
    Ok(())
}

#[test]
fn a_machine_with_a_tls_client_certificate_shares_without_a_password() -> anyhow::Result<()> {
    let mut lab = Lab::new("nc", 124, "")?;
    let lapi = Lapi::start_tls(&lab)?;
    let (cert, key) = lapi.client_cert(&lab, "node-c", "agent-ou")?;
    let bouncer_key = lapi.add_bouncer("rampart-c", "rampart-c-bouncer-key-0123456789")?;
    let ca = lapi.ca.clone().unwrap_or_default();
    lab.write_config(&format!(
        "[crowdsec]\nurl = \"{url}\"\napi_key_file = \"{k}\"\nca_file = \"{ca}\"\npoll = \"1s\"\nshare = true\nnode = \"node-c\"\ntls_cert_file = \"{c}\"\ntls_key_file = \"{kf}\"\n",
        url = lapi.url(),
        k = bouncer_key.display(),
        ca = ca.display(),
        c = cert.display(),
        kf = key.display(),
    ))?;
    lab.start()?;
    assert!(
        eventually(10, || share_status(&lab)["polls_ok"].as_u64().unwrap_or(0)
            > 0),
        "the bouncer does not poll over HTTPS: {}",
        share_status(&lab)
    );
    lab.cli_ok(&["block", "add", "192.0.2.61", "--share", "--ttl", "1h"])?;
    assert!(
        eventually(10, || lapi.decisions().iter().any(|d| d["value"]
            == "192.0.2.61"
            && d["scenario"] == "rampart/node-c/manual")),
        "the LAPI did not take the decision: {}\n{}",
        share_status(&lab),
        std::fs::read_to_string(lapi.dir.join("lapi.log")).unwrap_or_default()
    );
    // The LAPI registered the certificate's machine by itself.
    let machines = lapi.cscli(&["machines", "list", "-o", "json"], None);
    let text = String::from_utf8_lossy(&machines.stdout);
    assert!(text.contains("node-c@"), "{text}");
    // A certificate outside agents_allowed_ou is refused, with the reason.
    let (bad_cert, bad_key) = lapi.client_cert(&lab, "intruder", "bouncer-ou")?;
    let cfg = std::fs::read_to_string(&lab.config)?
        .replace(&cert.display().to_string(), &bad_cert.display().to_string())
        .replace(&key.display().to_string(), &bad_key.display().to_string());
    std::fs::write(&lab.config, cfg)?;
    lab.cli_ok(&["reload"])?;
    lab.cli_ok(&["block", "add", "192.0.2.62", "--share", "--ttl", "1h"])?;
    assert!(
        eventually(15, || share_status(&lab)["share"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused the login"))),
        "{}",
        share_status(&lab)
    );
    assert!(!lapi.decisions().iter().any(|d| d["value"] == "192.0.2.62"));
    Ok(())
}
