//! A live agent in a lab: a server namespace (where the agent runs, entered
//! with `nsenter --net` so the host's bpffs stays visible) and a client
//! namespace, linked by a veth pair. Everything is removed on drop.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::netns::{Netns, Veth, sh};

/// The `rampart` binary under test (`cargo xtask test` builds it first).
pub fn rampart_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RAMPART_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    target.join("debug/rampart")
}

pub struct Lab {
    pub name: String,
    pub srv: Netns,
    pub cli: Netns,
    _veth: Veth,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub metrics_port: u16,
    /// Server address (on the veth in `srv`).
    pub server_ip: String,
    /// Client addresses: [0] is a normal client, [1] is blocked by default.
    pub client_ips: Vec<String>,
    agent: Option<Child>,
}

impl Lab {
    /// A lab named `name` (short: it names interfaces) with `extra` appended
    /// to the generated config.
    pub fn new(name: &str, net: u8, extra: &str) -> anyhow::Result<Self> {
        let srv = Netns::new(&format!("rp-{name}-s"))?;
        let cli = Netns::new(&format!("rp-{name}-c"))?;
        let server_ip = format!("10.{net}.0.1");
        let client_ips = vec![
            format!("10.{net}.0.2"),
            format!("10.{net}.0.3"),
            format!("10.{net}.0.4"),
        ];
        let veth = Veth::new(
            &format!("{name}0"),
            &srv,
            &[&format!("{server_ip}/24")],
            &format!("{name}1"),
            &cli,
            &client_ips
                .iter()
                .map(|a| format!("{a}/24"))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;
        let dir = std::env::temp_dir().join(format!("rampart-lab-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let metrics_port = 19700 + u16::from(net);
        let lab = Self {
            name: name.into(),
            srv,
            cli,
            _veth: veth,
            config: dir.join("rampart.toml"),
            socket: dir.join("rampart.sock"),
            dir,
            metrics_port,
            server_ip,
            client_ips,
            agent: None,
        };
        lab.write_config(extra)?;
        Ok(lab)
    }

    pub fn iface(&self) -> String {
        format!("{}0", self.name)
    }

    pub fn bpffs(&self) -> String {
        format!("/sys/fs/bpf/rampart-test-{}", self.name)
    }

    /// The lab's config: its interface, private paths, the second client
    /// blocked, plus `extra`.
    pub fn config_text(&self, extra: &str) -> String {
        format!(
            "[agent]\ninterfaces = [\"{iface}\"]\nstate_dir = \"{dir}/state\"\nbpffs = \"{bpffs}\"\n\n[control]\nsocket = \"{sock}\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[events]\nsample_every = 1\nmax_per_second = 10000\n\n{extra}\n",
            iface = self.iface(),
            dir = self.dir.display(),
            bpffs = self.bpffs(),
            sock = self.socket.display(),
            port = self.metrics_port,
        )
    }

    pub fn write_config(&self, extra: &str) -> anyhow::Result<()> {
        let text = self.config_text(extra);
        let tmp = self.dir.join(".rampart.toml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.config)?;
        Ok(())
    }

    /// Starts the agent and waits until its control socket answers.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.start_with_env(&[])
    }

    /// Starts the agent with extra environment variables.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.srv.name))
            .arg(rampart_bin())
            .args(["agent", "--config"])
            .arg(&self.config)
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting the agent")?;
        self.agent = Some(child);
        // Generous: under emulation or a flood, start-up takes several times
        // as long; the wait ends as soon as the socket answers.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.cli_ok(&["status"]).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(st))) = self.agent.as_mut().map(Child::try_wait) {
                bail!("the agent exited ({st}):\n{}", self.log());
            }
            sleep(Duration::from_millis(100));
        }
        bail!("the agent did not come up:\n{}", self.log())
    }

    /// The agent's process id while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// SIGKILL: no clean-up at all.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn sighup(&self) {
        if let Some(c) = &self.agent {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGHUP) };
        }
    }

    /// Runs the CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(rampart_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run the rampart CLI")
    }

    /// Runs the CLI and returns stdout, failing with stderr on a non-zero exit.
    pub fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = self.cli(args);
        if !o.status.success() {
            bail!("rampart {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    pub fn cli_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut a = vec!["-o", "json"];
        a.extend_from_slice(args);
        Ok(serde_json::from_str(&self.cli_ok(&a)?)?)
    }

    /// Pings the server from client address `from`; returns replies received.
    pub fn ping(&self, from: &str, count: u32, interval: &str) -> u32 {
        let out = self
            .cli
            .command("ping")
            .args([
                "-c",
                &count.to_string(),
                "-i",
                interval,
                "-W",
                "1",
                "-I",
                from,
                &self.server_ip,
            ])
            .output()
            .expect("run ping");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| {
                l.split(',')
                    .find(|p| p.contains("received"))
                    .and_then(|p| p.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Floods the server with `count` pings from `from` (as fast as it goes).
    pub fn flood(&self, from: &str, count: u32) {
        let _ = self
            .cli
            .command("ping")
            .args([
                "-f",
                "-c",
                &count.to_string(),
                "-W",
                "1",
                "-I",
                from,
                &self.server_ip,
            ])
            .output();
    }

    /// GET from the metrics server (inside the server namespace).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let out = self
            .srv
            .command("curl")
            .args([
                "-s",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                &format!("http://127.0.0.1:{}{path}", self.metrics_port),
            ])
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Packets the program dropped, over every interface and reason
    /// (`rampart stats`).
    pub fn dropped(&self) -> anyhow::Result<u64> {
        Ok(self
            .cli_json(&["stats"])?
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["action"] == "drop")
            .map(|r| r["packets"].as_u64().unwrap_or(0))
            .sum())
    }

    pub fn counter(&self, action: &str, reason: &str) -> u64 {
        let rows = self.cli_json(&["stats"]).unwrap_or_default();
        rows.as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["action"] == action && r["reason"] == reason)
            .map(|r| r["packets"].as_u64().unwrap_or(0))
            .sum()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill9();
        let _ = Command::new(rampart_bin())
            .args(["detach", "--config"])
            .arg(&self.config)
            .output();
        let _ = sh(&["rm", "-rf", &self.bpffs()]);
    }
}

/// Waits up to `secs` for `f` to hold.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        sleep(Duration::from_millis(100));
    }
    f()
}
