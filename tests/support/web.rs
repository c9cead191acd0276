//! A live lab for flood tests: a real HTTP server behind the agent, real
//! clients (curl), and hping3 floods with a random source on every packet.
use std::process::{Child, Stdio};

use crate::{
    lab::{Lab, eventually},
    netns::XdpWire,
};

pub const WEB_PORT: u16 = 8080;

/// Python's HTTP server on the lab's server address.
pub struct Web(Child);

impl Web {
    pub fn start(lab: &Lab) -> anyhow::Result<Self> {
        let child = lab
            .srv
            .command("python3")
            .args([
                "-m",
                "http.server",
                &WEB_PORT.to_string(),
                "--bind",
                &lab.server_ip,
                "--directory",
                "/usr/share/doc",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let web = Self(child);
        let url = format!("http://{}:{WEB_PORT}/", lab.server_ip);
        let up = eventually(15, || {
            lab.srv
                .command("curl")
                .args(["-s", "-o", "/dev/null", "--max-time", "1", &url])
                .status()
                .is_ok_and(|s| s.success())
        });
        anyhow::ensure!(up, "the HTTP server did not come up");
        Ok(web)
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request from client address `from`; true on HTTP 200 within 2 s.
pub fn get(lab: &Lab, from: &str) -> bool {
    let out = lab
        .cli
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
            "--interface",
            from,
            &format!("http://{}:{WEB_PORT}/", lab.server_ip),
        ])
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout) == "200"
}

/// IP packets the server's stack received (its namespace's `Ip: InReceives`).
pub fn in_receives(lab: &Lab) -> u64 {
    let snmp = lab.srv.exec(&["cat", "/proc/net/snmp"]).unwrap_or_default();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (Some(head), Some(vals)) = (ip.next(), ip.next()) else {
        return 0;
    };
    let col = head
        .split_whitespace()
        .position(|h| h == "InReceives")
        .unwrap_or(usize::MAX);
    vals.split_whitespace()
        .nth(col)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Packets the client side's veth sent.
pub fn client_tx(lab: &Lab) -> u64 {
    let path = format!("/sys/class/net/{}1/statistics/tx_packets", lab.name);
    lab.cli
        .exec(&["cat", &path])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A lab with the flood policies, whose client side takes the SYN-ACKs for
/// its own addresses and drops the spoofed sources' (see `XdpWire`).
pub fn lab(name: &str, net: u8, policy: &str) -> anyhow::Result<(Lab, XdpWire)> {
    let mut lab = Lab::new(name, net, policy)?;
    let local: Vec<std::net::Ipv4Addr> = lab
        .client_ips
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let pass = XdpWire::attach(&lab.cli, &format!("{name}1"), &local)?;
    lab.start()?;
    Ok((lab, pass))
}

/// hping3 in the client namespace with `args`, aimed at the server.
pub fn hping3(lab: &Lab, args: &[&str]) -> Child {
    lab.cli
        .command("hping3")
        .args(args)
        .arg(&lab.server_ip)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hping3")
}

/// An hping3 flood from the client namespace with a random source on every
/// packet; stopped on drop.
pub struct SpoofedFlood(Child);

impl SpoofedFlood {
    pub fn start(lab: &Lab, args: &[&str]) -> Self {
        let mut a = vec!["--flood", "--rand-source", "-q"];
        a.extend_from_slice(args);
        Self(hping3(lab, &a))
    }
}

impl Drop for SpoofedFlood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
