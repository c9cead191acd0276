//! `cargo xtask demo`: Rampart stopping an attack in a lab of network
//! namespaces, in a real kernel, in about half a minute.
//!
//! A switch namespace holds a bridge; the server, a legitimate client, an
//! attacker and a blocklisted host each hang off it on a veth. The server
//! runs an HTTP service and `rampart agent` on the embedded default config
//! (plus the demo policy printed below). Phases: legitimate traffic; a SYN
//! flood from the attacker; traffic from a host blocked with the CLI; the
//! client throughout. Exits non-zero if the client was starved or the attack
//! got through, so `cargo xtask test` runs it as a smoke test.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cmd::{self, root};

const NS: [&str; 5] = ["rd-sw", "rd-srv", "rd-cli", "rd-atk", "rd-blk"];
const SERVER: &str = "10.99.0.1";
const CLIENT: &str = "10.99.0.10";
const ATTACKER: &str = "10.99.0.66";
const BLOCKED: &str = "10.99.0.99";
const PORT: &str = "8080";
const BPFFS: &str = "/sys/fs/bpf/rampart-demo";

const DEMO_POLICY: &str = r#"
# The demo policy: the API port, per source.
[[policy]]
name = "api"
protocol = "tcp"
ports = [8080]
pps = 300
burst = 600
ban_threshold = 2000
ban_time = "2m"
"#;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Everything the demo creates, removed on drop (success, failure, Ctrl-C).
struct Lab {
    dir: PathBuf,
    children: Vec<Child>,
    bin: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(&self.bin)
            .args(["detach", "--config"])
            .arg(self.dir.join("rampart.toml"))
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(BPFFS);
        for ns in NS {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        println!("lab removed: namespaces, pins and processes");
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("ip")
        .args(args)
        .status()
        .with_context(|| format!("ip {args:?}"))?;
    if !st.success() {
        bail!("`ip {}` failed", args.join(" "));
    }
    Ok(())
}

fn in_ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

fn build_lab() -> anyhow::Result<()> {
    for ns in NS {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    ip(&["-n", "rd-sw", "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", "rd-sw", "link", "set", "br0", "up"])?;
    for (ns, addr) in [
        ("rd-srv", SERVER),
        ("rd-cli", CLIENT),
        ("rd-atk", ATTACKER),
        ("rd-blk", BLOCKED),
    ] {
        let side = format!("sw-{}", &ns[3..]);
        ip(&[
            "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", &side, "netns",
            "rd-sw",
        ])?;
        ip(&["-n", "rd-sw", "link", "set", &side, "master", "br0", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        // A default route makes eth0 what the embedded default protects.
        ip(&["-n", ns, "route", "add", "default", "dev", "eth0"])?;
    }
    Ok(())
}

/// The embedded default config, with the demo's private paths and the demo
/// policy placed before the default one (the first matching policy applies).
fn demo_config(dir: &Path) -> String {
    let default = include_str!("../../agent/src/default.toml");
    let text = default
        .replace(
            "state_dir = \"/var/lib/rampart\"",
            &format!(
                "state_dir = \"{}/state\"\nbpffs = \"{BPFFS}\"",
                dir.display()
            ),
        )
        .replace(
            "socket = \"/run/rampart/rampart.sock\"",
            &format!("socket = \"{}/rampart.sock\"", dir.display()),
        )
        .replace("listen = \"0.0.0.0:9717\"", "listen = \"127.0.0.1:9717\"")
        .replace("sample_every = 64", "sample_every = 16");
    match text.find("[[policy]]") {
        Some(at) => format!("{}{DEMO_POLICY}\n{}", &text[..at], &text[at..]),
        None => format!("{text}{DEMO_POLICY}"),
    }
}

struct Client {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Sum of latencies in microseconds (of successful requests).
    micros: AtomicU64,
    max_micros: AtomicU64,
}

fn http_get(ns: &str, timeout: &str) -> Option<u64> {
    let o = in_ns(ns, "curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-m",
            timeout,
            "-w",
            "%{http_code} %{time_total}",
            &format!("http://{SERVER}:{PORT}/"),
        ])
        .output()
        .ok()?;
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut it = t.split_whitespace();
    let code = it.next()?;
    let secs: f64 = it.next()?.parse().ok()?;
    (code == "200").then_some((secs * 1e6) as u64)
}

fn stats(bin: &Path, sock: &Path) -> Vec<Value> {
    Command::new(bin)
        .arg("--socket")
        .arg(sock)
        .args(["-o", "json", "stats"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn packets(rows: &[Value], action: &str, reason: &str) -> u64 {
    rows.iter()
        .filter(|r| r["action"] == action && (reason.is_empty() || r["reason"] == reason))
        .filter_map(|r| r["packets"].as_u64())
        .sum()
}

pub(crate) fn run() -> anyhow::Result<()> {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    cmd::cargo(&["build", "--release", "-p", "rampart"])?;
    let bin = root().join("target/release/rampart");
    let dir = std::env::temp_dir().join("rampart-demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut lab = Lab {
        dir: dir.clone(),
        children: Vec::new(),
        bin: bin.clone(),
    };
    println!(
        "\n== Rampart demo ==\nbuilding a lab: server {SERVER}, client {CLIENT}, attacker {ATTACKER}, blocklisted host {BLOCKED}, on one bridge"
    );
    build_lab()?;
    let config = dir.join("rampart.toml");
    std::fs::write(&config, demo_config(&dir))?;
    println!(
        "agent config: the embedded default (attach to the default-route interface, protect the host's addresses,\n2000 pps per source) plus this demo policy:{DEMO_POLICY}"
    );

    // The service and the agent.
    std::fs::write(dir.join("index.html"), "hello from the API\n")?;
    lab.children.push(
        in_ns("rd-srv", "python3")
            .args(["-m", "http.server", PORT, "--bind", SERVER, "--directory"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the HTTP service")?,
    );
    let log = std::fs::File::create(dir.join("agent.log"))?;
    lab.children.push(
        Command::new("nsenter")
            .arg("--net=/run/netns/rd-srv")
            .arg(&bin)
            .args(["agent", "--config"])
            .arg(&config)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting the agent")?,
    );
    let sock = dir.join("rampart.sock");
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let o = Command::new(&bin)
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .output()?;
        if !o.status.success() {
            bail!(
                "rampart {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let start = Instant::now();
    while cli(&["status"]).is_err() || http_get("rd-cli", "1").is_none() {
        interrupted()?;
        if start.elapsed() > Duration::from_secs(20) {
            bail!(
                "the lab did not come up; agent log:\n{}",
                std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
            );
        }
        sleep(Duration::from_millis(200));
    }
    println!(
        "agent and service up in {:.1}s\n",
        start.elapsed().as_secs_f64()
    );

    // The legitimate client, throughout.
    let client = Arc::new(Client {
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        micros: AtomicU64::new(0),
        max_micros: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (client, stop) = (client.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match http_get("rd-cli", "2") {
                    Some(us) => {
                        client.ok.fetch_add(1, Ordering::SeqCst);
                        client.micros.fetch_add(us, Ordering::SeqCst);
                        client.max_micros.fetch_max(us, Ordering::SeqCst);
                    }
                    None => {
                        client.failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                sleep(Duration::from_millis(100));
            }
        })
    };
    let client_line = |c: &Client| {
        let ok = c.ok.load(Ordering::SeqCst);
        let failed = c.failed.load(Ordering::SeqCst);
        let avg = c.micros.load(Ordering::SeqCst) as f64 / ok.max(1) as f64 / 1000.0;
        format!(
            "client {ok}/{} ok ({:.0}%), avg {avg:.1} ms",
            ok + failed,
            ok as f64 * 100.0 / (ok + failed).max(1) as f64
        )
    };

    // Phase 1: legitimate traffic.
    for s in 1..=3 {
        interrupted()?;
        sleep(Duration::from_secs(1));
        println!("[1/3 legitimate traffic {s}/3s] {}", client_line(&client));
    }

    // Phase 2: a SYN flood from the attacker.
    let before = stats(&bin, &sock);
    // `ip netns exec` execs hping3, so this child is hping3 itself: the lab
    // kills it on any exit.
    lab.children.push(
        in_ns("rd-atk", "hping3")
            .args(["--flood", "-S", "-p", PORT, "-q", SERVER])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting hping3")?,
    );
    let mut banned_at = None;
    let phase = Instant::now();
    for s in 1..=10 {
        interrupted()?;
        sleep(Duration::from_secs(1));
        let now = stats(&bin, &sock);
        let rl = packets(&now, "drop", "ratelimit") - packets(&before, "drop", "ratelimit");
        let ban = packets(&now, "drop", "ban") - packets(&before, "drop", "ban");
        let bans = cli(&["-o", "json", "bans", "list"]).unwrap_or_default();
        if banned_at.is_none() && bans.contains(ATTACKER) {
            banned_at = Some(phase.elapsed());
        }
        println!(
            "[2/3 SYN flood {s}/10s] dropped: {rl} rate-limited, {ban} banned | attacker banned: {} | {}",
            banned_at.map_or("not yet".to_string(), |t| format!(
                "yes (after {:.1}s)",
                t.as_secs_f64()
            )),
            client_line(&client)
        );
    }
    if let Some(mut flood) = lab.children.pop() {
        let _ = flood.kill();
        let _ = flood.wait();
    }

    // Phase 3: a host blocked with the CLI.
    println!("\n$ rampart block add {BLOCKED} --ttl 1h --reason \"known scanner\"");
    print!(
        "{}",
        cli(&[
            "block",
            "add",
            BLOCKED,
            "--ttl",
            "1h",
            "--reason",
            "known scanner"
        ])?
    );
    let mut blocked_ok = 0;
    for s in 1..=3 {
        interrupted()?;
        if http_get("rd-blk", "1").is_some() {
            blocked_ok += 1;
        }
        println!(
            "[3/3 blocklisted host {s}/3] its requests answered: {blocked_ok} | {}",
            client_line(&client)
        );
    }
    stop.store(true, Ordering::SeqCst);
    let _ = worker.join();

    println!("\n$ rampart status\n{}", cli(&["status"])?);
    println!("$ rampart top -n 5\n{}", cli(&["top", "-n", "5"])?);
    println!("$ rampart stats\n{}", cli(&["stats"])?);
    let metrics = in_ns("rd-srv", "curl")
        .args(["-s", "http://127.0.0.1:9717/metrics"])
        .output()?;
    println!(
        "$ curl -s localhost:9717/metrics | grep -E 'rampart_(packets_total\\{{.*drop|bans_active)'"
    );
    for l in String::from_utf8_lossy(&metrics.stdout).lines() {
        let nonzero = !l.ends_with(" 0");
        if nonzero
            && ((l.starts_with("rampart_packets_total{") && l.contains("\"drop\""))
                || l.starts_with("rampart_bans_active"))
        {
            println!("{l}");
        }
    }

    // Verdict.
    let after = stats(&bin, &sock);
    let ok = client.ok.load(Ordering::SeqCst);
    let total = ok + client.failed.load(Ordering::SeqCst);
    let dropped = packets(&after, "drop", "ratelimit") + packets(&after, "drop", "ban");
    let mut problems = Vec::new();
    if total == 0 || (ok as f64) < 0.95 * total as f64 {
        problems.push(format!(
            "the client was starved: {ok}/{total} requests answered"
        ));
    }
    if banned_at.is_none() {
        problems.push("the attacker was never banned".to_string());
    }
    if dropped < 1000 {
        problems.push(format!("only {dropped} attack packets were dropped"));
    }
    if blocked_ok > 0 {
        problems.push(format!("the blocklisted host got {blocked_ok} answers"));
    }
    if packets(&after, "drop", "blocklist") == 0 {
        problems.push("no blocklist drop was counted".to_string());
    }
    if !problems.is_empty() {
        bail!("protection did not work: {}", problems.join("; "));
    }
    println!(
        "\nresult: attack stopped ({dropped} packets dropped, attacker banned after {:.1}s), blocklisted host dropped, client served {ok}/{total}",
        banned_at.map_or(0.0, |t| t.as_secs_f64())
    );
    drop(lab);
    Ok(())
}
