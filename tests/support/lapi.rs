//! A CrowdSec local API (Debian's `crowdsec` binaries, installed by
//! `cargo xtask setup`, no log processing) with its own config and
//! database in a lab's namespace.
use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
};

use crate::lab::{Lab, eventually};

/// The port the tests' local API listens on.
pub const PORT: u16 = 18104;
/// The bouncer key registered at start.
pub const KEY: &str = "rampart-test-bouncer-key-0123456789";

fn openssl(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

/// `<name>.pem` and `<name>.key` for `subject`, signed by the CA in `dir`:
/// X.509 v3 (with `ext`), which rustls requires.
fn sign(dir: &std::path::Path, name: &str, subject: &str, ext: &str) -> anyhow::Result<()> {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out", &csr,
        ],
    )?;
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        &pem,
    ];
    let extfile = dir.join(format!("{name}.ext"));
    let extpath = extfile.display().to_string();
    std::fs::write(&extfile, format!("basicConstraints=CA:FALSE\n{ext}\n"))?;
    args.extend(["-extfile", &extpath]);
    openssl(dir, &args)
}

/// A CrowdSec local API (no log processing) with its own database.
pub struct Lapi {
    /// The network namespace it listens in.
    pub netns: String,
    pub dir: PathBuf,
    /// `http` or `https` (with [`Lapi::start_tls`]).
    pub scheme: &'static str,
    /// The CA of its certificate, with HTTPS.
    pub ca: Option<PathBuf>,
    child: Option<Child>,
}

impl Lapi {
    pub fn start(lab: &Lab) -> anyhow::Result<Self> {
        Self::start_on(lab, "127.0.0.1")
    }

    /// A local API listening on `addr`:PORT in the lab's server namespace.
    pub fn start_on(lab: &Lab, addr: &str) -> anyhow::Result<Self> {
        Self::start_with(lab, addr, "", "http")
    }

    /// A local API on 127.0.0.1 serving HTTPS with a certificate from a
    /// private CA (`<dir>/tls/ca.pem`), which also signs client certificates:
    /// a machine authenticates with one whose OU is `agent-ou`
    /// ([`Lapi::client_cert`]).
    pub fn start_tls(lab: &Lab) -> anyhow::Result<Self> {
        let tls = lab.dir.join("crowdsec-tls");
        let _ = std::fs::remove_dir_all(&tls);
        std::fs::create_dir_all(&tls)?;
        openssl(
            &tls,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=rampart-test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        )?;
        sign(
            &tls,
            "server",
            "/CN=127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        )?;
        let t = tls.display();
        let extra = format!(
            "    tls:\n      cert_file: {t}/server.pem\n      key_file: {t}/server.key\n      ca_cert_path: {t}/ca.pem\n      client_verification: VerifyClientCertIfGiven\n      agents_allowed_ou: [agent-ou]\n      bouncers_allowed_ou: [bouncer-ou]\n"
        );
        Self::start_with(lab, "127.0.0.1", &extra, "https")
    }

    /// A client certificate and key signed by the test CA, for `cn` in `ou`.
    pub fn client_cert(&self, lab: &Lab, cn: &str, ou: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let tls = lab.dir.join("crowdsec-tls");
        sign(
            &tls,
            cn,
            &format!("/OU={ou}/CN={cn}"),
            "extendedKeyUsage=clientAuth",
        )?;
        Ok((tls.join(format!("{cn}.pem")), tls.join(format!("{cn}.key"))))
    }

    fn start_with(
        lab: &Lab,
        addr: &str,
        server_extra: &str,
        scheme: &'static str,
    ) -> anyhow::Result<Self> {
        let dir = lab.dir.join("crowdsec");
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["data", "hub"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let d = dir.display();
        std::fs::write(dir.join("hub/.index.json"), "{}")?;
        std::fs::write(dir.join("simulation.yaml"), "simulation: false\n")?;
        std::fs::write(
            dir.join("profiles.yaml"),
            "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && Alert.GetScope() == \"Ip\"\ndecisions:\n - type: ban\n   duration: 4h\non_success: break\n",
        )?;
        std::fs::write(
            dir.join("config.yaml"),
            format!(
                "common:\n  daemonize: false\n  log_media: stdout\n  log_level: warning\n\
                 config_paths:\n  config_dir: {d}/\n  data_dir: {d}/data/\n  simulation_path: {d}/simulation.yaml\n  hub_dir: {d}/hub/\n  index_path: {d}/hub/.index.json\n\
                 db_config:\n  type: sqlite\n  use_wal: false\n  db_path: {d}/data/crowdsec.db\n\
                 api:\n  client:\n    credentials_path: {d}/local_api_credentials.yaml\n  server:\n    listen_uri: {addr}:{PORT}\n    profiles_path: {d}/profiles.yaml\n    trusted_ips: [127.0.0.1]\n{server_extra}\
                 prometheus:\n  enabled: false\n"
            ),
        )?;
        let mut lapi = Self {
            netns: lab.srv.name.clone(),
            dir,
            scheme,
            ca: (scheme == "https").then(|| lab.dir.join("crowdsec-tls/ca.pem")),
            child: None,
        };
        lapi.cscli_ok(
            &["machines", "add", "-a", "--force", "-f"],
            Some("local_api_credentials.yaml"),
        )?;
        lapi.cscli_ok(&["bouncers", "add", "rampart", "-k", KEY], None)?;
        std::fs::write(lapi.dir.join("bouncer.key"), format!("{KEY}\n"))?;
        lapi.run()?;
        Ok(lapi)
    }

    pub fn run(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join("lapi.log"))?;
        self.child = Some(
            self.command("crowdsec")
                .arg("-c")
                .arg(self.dir.join("config.yaml"))
                .arg("-no-cs")
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()?,
        );
        let url = format!("{}/v1/decisions/stream?startup=true", self.url());
        let up = eventually(20, || {
            self.curl()
                .args([
                    "-sf",
                    "-o",
                    "/dev/null",
                    "-H",
                    &format!("X-Api-Key: {KEY}"),
                    &url,
                ])
                .status()
                .is_ok_and(|s| s.success())
        });
        anyhow::ensure!(
            up,
            "the CrowdSec local API did not come up:\n{}",
            std::fs::read_to_string(self.dir.join("lapi.log")).unwrap_or_default()
        );
        Ok(())
    }

    /// Its URL from its own namespace.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{PORT}", self.scheme)
    }

    /// curl in its namespace, trusting its CA.
    fn curl(&self) -> Command {
        let mut c = self.command("curl");
        if let Some(ca) = &self.ca {
            c.arg("--cacert").arg(ca);
        }
        c
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn cscli(&self, args: &[&str], file_arg: Option<&str>) -> Output {
        let mut c = self.command("cscli");
        c.arg("-c").arg(self.dir.join("config.yaml")).args(args);
        if let Some(f) = file_arg {
            c.arg(self.dir.join(f));
        }
        c.output().expect("run cscli")
    }

    pub fn cscli_ok(&self, args: &[&str], file_arg: Option<&str>) -> anyhow::Result<()> {
        let o = self.cscli(args, file_arg);
        anyhow::ensure!(
            o.status.success(),
            "cscli {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(())
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Lapi {
    /// Registers a machine (for pushing alerts) with `password`, and writes
    /// the password to `<dir>/<name>.password`.
    pub fn add_machine(&self, name: &str, password: &str) -> anyhow::Result<PathBuf> {
        self.cscli_ok(
            &[
                "machines",
                "add",
                name,
                "--password",
                password,
                "-f",
                "/dev/null",
                "--force",
            ],
            None,
        )?;
        let file = self.dir.join(format!("{name}.password"));
        std::fs::write(&file, format!("{password}\n"))?;
        Ok(file)
    }

    /// Registers a bouncer with `key`, written to `<dir>/<name>.key`.
    pub fn add_bouncer(&self, name: &str, key: &str) -> anyhow::Result<PathBuf> {
        self.cscli_ok(&["bouncers", "add", name, "-k", key], None)?;
        let file = self.dir.join(format!("{name}.key"));
        std::fs::write(&file, format!("{key}\n"))?;
        Ok(file)
    }

    /// The decisions in force, as a bouncer gets them (`GET /v1/decisions`
    /// with the start-up bouncer's key).
    pub fn decisions(&self) -> Vec<serde_json::Value> {
        let o = self
            .curl()
            .args([
                "-sf",
                "-H",
                &format!("X-Api-Key: {KEY}"),
                &format!("{}/v1/decisions", self.url()),
            ])
            .output()
            .expect("run curl");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v.as_array().cloned().unwrap_or_default()
    }

    /// Alerts recorded, each one push of decisions.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let o = self.cscli(
            &["alerts", "list", "-a", "-o", "json", "--limit", "0"],
            None,
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v.as_array().cloned().unwrap_or_default()
    }
}

/// A stand-in local API: the Python `script` run in the lab's server
/// namespace, returned once `probe` (a URL) answers there.
pub fn stand_in(lab: &Lab, script: &str, probe: &str) -> anyhow::Result<Child> {
    let mut child = lab
        .srv
        .command("python3")
        .args(["-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let up = eventually(10, || {
        lab.srv
            .command("curl")
            .args(["-sf", "-o", "/dev/null", probe])
            .status()
            .is_ok_and(|s| s.success())
    });
    if !up {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!("the stand-in local API did not start");
    }
    Ok(child)
}
