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
        use std::os::fd::AsRawFd;
        let orig = std::fs::File::open("/proc/thread-self/ns/net")?;
        let target = std::fs::File::open(format!("/run/netns/{}", ns.name))?;
        // SAFETY: setns on valid namespace fds; affects only this thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns into {}: {}",
                ns.name,
                std::io::Error::last_os_error()
            );
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

/// An XDP program that passes every packet, attached natively to an
/// interface inside a namespace for as long as this lives. A veth delivers
/// the frames its peer sends with `XDP_TX` only to an end that runs XDP
/// itself, so the flood tests give the client's end this one.
pub struct XdpPass {
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

impl XdpPass {
    pub fn attach(ns: &Netns, ifname: &str) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd;
        const BPF_PROG_LOAD: libc::c_long = 5;
        const BPF_LINK_CREATE: libc::c_long = 28;
        const BPF_PROG_TYPE_XDP: u32 = 6;
        const BPF_XDP: u32 = 37;
        const XDP_FLAGS_DRV_MODE: u32 = 4;
        // r0 = XDP_PASS; exit.
        let insns: [u64; 2] = [0x0000_0002_0000_00b7, 0x0000_0000_0000_0095];
        let license = b"GPL\0";
        let prog = bpf_fd(BPF_PROG_LOAD, |a| {
            a[0] = BPF_PROG_TYPE_XDP;
            a[1] = 2;
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
