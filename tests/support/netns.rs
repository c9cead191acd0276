//! Network namespaces and veth pairs created by a test and removed when the
//! guard drops, so a failed test leaves nothing behind.
use std::process::Command;

use anyhow::{Context, bail};

/// Runs a command, failing with its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let _ = sh(&["ip", "netns", "del", name]);
        sh(&["ip", "netns", "add", name])?;
        sh(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        Ok(Self { name: name.into() })
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// A veth pair between two namespaces with addresses on each end:
/// `a` (in `ns_a`, address `addr_a`) and `b` (in `ns_b`).
pub struct Veth {
    pub a: String,
    pub b: String,
}

impl Veth {
    pub fn new(
        a: &str,
        ns_a: &Netns,
        addrs_a: &[&str],
        b: &str,
        ns_b: &Netns,
        addrs_b: &[&str],
    ) -> anyhow::Result<Self> {
        let _ = sh(&["ip", "link", "del", a]);
        sh(&["ip", "link", "add", a, "type", "veth", "peer", "name", b])?;
        sh(&["ip", "link", "set", a, "netns", &ns_a.name])?;
        sh(&["ip", "link", "set", b, "netns", &ns_b.name])?;
        for (ns, dev, addrs) in [(ns_a, a, addrs_a), (ns_b, b, addrs_b)] {
            for addr in addrs {
                let fam = if addr.contains(':') { "-6" } else { "-4" };
                ns.exec(&["ip", fam, "addr", "add", addr, "dev", dev, "nodad"])
                    .or_else(|_| ns.exec(&["ip", fam, "addr", "add", addr, "dev", dev]))?;
            }
            ns.exec(&["ip", "link", "set", dev, "up"])?;
        }
        Ok(Self {
            a: a.into(),
            b: b.into(),
        })
    }
}

/// Enters a namespace for the rest of this thread's life (for attaching a
/// program to an interface that lives there). Returns a guard that goes back.
pub struct InNetns {
    orig: std::fs::File,
}

impl InNetns {
    pub fn enter(ns: &Netns) -> anyhow::Result<Self> {
        Self::enter_named(&ns.name)
    }

    /// Enters the namespace named `name` (from another thread than its owner).
    pub fn enter_named(name: &str) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd;
        let orig = std::fs::File::open("/proc/thread-self/ns/net")?;
        let target = std::fs::File::open(format!("/run/netns/{name}"))?;
        // SAFETY: setns on valid namespace fds; affects only this thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns into {name}: {}", std::io::Error::last_os_error());
        }
        Ok(Self { orig })
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: returning this thread to the namespace it came from.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Moves the calling thread (one test) into a network namespace of its own,
/// with `net.ipv4.tcp_syncookies` set as given there: the flood tests
/// listen and change that setting without touching the host's.
pub fn isolate_this_thread(tcp_syncookies: u8) -> anyhow::Result<()> {
    // SAFETY: unshare has no memory effects; it moves only this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    }
    // /proc/sys/net shows the namespace of the thread that opens it.
    std::fs::write(
        "/proc/sys/net/ipv4/tcp_syncookies",
        tcp_syncookies.to_string(),
    )
    .context("setting net.ipv4.tcp_syncookies in the test's namespace")
}

/// The client's end of a wire, as an XDP program attached natively to an
/// interface in a namespace for as long as this lives: it delivers frames
/// addressed to the namespace's own IPv4 addresses (and every non-IPv4
/// frame) and drops the rest. A spoofed flood's answers (SYN-ACKs to its
/// spoofed sources) would go to those sources on a real network, not back
/// to the host that sent the flood. It is also what makes a veth deliver
/// its peer's `XDP_TX` frames at all: it does so only to an end that runs
/// XDP itself.
pub struct XdpWire {
    _link: std::os::fd::OwnedFd,
}

/// `bpf(2)` with a zeroed 128-byte attribute block, `fill` writing the
/// command's fields; returns the new fd.
fn bpf_fd(
    cmd: libc::c_long,
    fill: impl FnOnce(&mut [u32; 32]),
) -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut attr = [0u32; 32];
    fill(&mut attr);
    // SAFETY: the attribute block is 128 initialised bytes, more than any
    // of the commands used here reads; the kernel returns an fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) };
    if fd < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel gave us, owned from here on.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// One BPF instruction.
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | ((dst | src << 4) as u64) << 8
        | (off as u16 as u64) << 16
        | (imm as u32 as u64) << 32
}

/// The wire's program for `local` (at most 8 addresses).
fn wire_program(local: &[std::net::Ipv4Addr]) -> Vec<u64> {
    const LDXW: u8 = 0x61;
    const LDXH: u8 = 0x69;
    const MOV_X: u8 = 0xbf;
    const ADD_K: u8 = 0x07;
    const JGT_X: u8 = 0x2d;
    const JNE_K: u8 = 0x55;
    const JEQ_K: u8 = 0x15;
    const MOV_K: u8 = 0xb7;
    const EXIT: u8 = 0x95;
    let n = local.len().min(8);
    // Instructions 0-7, the address checks, drop (2), pass (2).
    let pass = 8 + n + 2;
    let to_pass = |at: usize| (pass - (at + 1)) as i16;
    let mut p = vec![
        insn(LDXW, 2, 1, 0, 0),                // r2 = ctx->data
        insn(LDXW, 3, 1, 4, 0),                // r3 = ctx->data_end
        insn(MOV_X, 4, 2, 0, 0),               // r4 = r2
        insn(ADD_K, 4, 0, 0, 34),              // r4 += Ethernet + IPv4 header
        insn(JGT_X, 4, 3, to_pass(4), 0),      // short: pass
        insn(LDXH, 5, 2, 12, 0),               // r5 = ethertype
        insn(JNE_K, 5, 0, to_pass(6), 0x0008), // not IPv4 (0x0800 as read): pass
        insn(LDXW, 5, 2, 30, 0),               // r5 = destination address
    ];
    for (i, a) in local.iter().take(n).enumerate() {
        let at = 8 + i;
        p.push(insn(
            JEQ_K,
            5,
            0,
            to_pass(at),
            u32::from_le_bytes(a.octets()) as i32,
        ));
    }
    p.push(insn(MOV_K, 0, 0, 0, 1)); // XDP_DROP
    p.push(insn(EXIT, 0, 0, 0, 0));
    p.push(insn(MOV_K, 0, 0, 0, 2)); // XDP_PASS
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

impl XdpWire {
    /// Attaches to `ifname` in `ns`, delivering what is addressed to `local`.
    pub fn attach(ns: &Netns, ifname: &str, local: &[std::net::Ipv4Addr]) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd;
        const BPF_PROG_LOAD: libc::c_long = 5;
        const BPF_LINK_CREATE: libc::c_long = 28;
        const BPF_PROG_TYPE_XDP: u32 = 6;
        const BPF_XDP: u32 = 37;
        const XDP_FLAGS_DRV_MODE: u32 = 4;
        let insns = wire_program(local);
        let license = b"GPL\0";
        let prog = bpf_fd(BPF_PROG_LOAD, |a| {
            a[0] = BPF_PROG_TYPE_XDP;
            a[1] = insns.len() as u32;
            let p = insns.as_ptr() as u64;
            a[2] = p as u32;
            a[3] = (p >> 32) as u32;
            let l = license.as_ptr() as u64;
            a[4] = l as u32;
            a[5] = (l >> 32) as u32;
        })?;
        // The interface index, and the link, in the namespace's own terms:
        // this thread steps in and back out.
        let here = std::fs::File::open("/proc/thread-self/ns/net")?;
        let there = std::fs::File::open(format!("/run/netns/{}", ns.name))?;
        // SAFETY: setns on this thread only, with namespace fds we opened.
        if unsafe { libc::setns(there.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("entering {}: {}", ns.name, std::io::Error::last_os_error());
        }
        let name = std::ffi::CString::new(ifname)?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        let link = if ifindex == 0 {
            Err(anyhow::anyhow!("no interface {ifname} in {}", ns.name))
        } else {
            bpf_fd(BPF_LINK_CREATE, |a| {
                a[0] = prog.as_raw_fd() as u32;
                a[1] = ifindex;
                a[2] = BPF_XDP;
                a[3] = XDP_FLAGS_DRV_MODE;
            })
        };
        // SAFETY: as above, back to where the thread was.
        if unsafe { libc::setns(here.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("leaving {}: {}", ns.name, std::io::Error::last_os_error());
        }
        Ok(Self { _link: link? })
    }
}
