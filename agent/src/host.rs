//! Facts about the host: its addresses, interfaces and privileges.
use std::{
    ffi::{CStr, CString},
    net::IpAddr,
};

use crate::prefix::Prefix;

/// Every address configured on the host (for the lockout guard).
pub fn addresses() -> Vec<Prefix> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            let fam = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            let ip = match fam {
                libc::AF_INET => {
                    // SAFETY: family is AF_INET.
                    let sa = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                    Some(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()))
                }
                libc::AF_INET6 => {
                    // SAFETY: family is AF_INET6.
                    let sa = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                    Some(IpAddr::from(sa.sin6_addr.s6_addr))
                }
                _ => None,
            };
            if let Some(ip) = ip {
                let p = Prefix::host(ip);
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: freeing the list getifaddrs returned.
    unsafe { libc::freeifaddrs(ifap) };
    out
}

/// The interface index of `name`, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The name of interface `index`.
pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// ARPHRD_ETHER: the only link type whose frames the program parses.
pub const LINK_ETHER: u16 = 1;

/// The link type (ARPHRD_*) of interface `name` in this network namespace
/// (from the device itself: /sys may show another namespace's devices).
pub fn link_type(name: &str) -> Option<u16> {
    const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills the ifreq it is given; fd is ours.
    let ok = unsafe { libc::ioctl(fd, SIOCGIFHWADDR as _, &mut req) } == 0;
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    if !ok {
        return None;
    }
    // SAFETY: on success the kernel set the hardware address member.
    Some(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family })
}

/// A link type's name, for errors.
pub fn link_type_name(t: u16) -> String {
    match t {
        1 => "Ethernet".into(),
        512 => "PPP".into(),
        768 => "IPIP tunnel".into(),
        769 => "IPv6-in-IPv6 tunnel".into(),
        772 => "loopback".into(),
        776 => "SIT tunnel".into(),
        778 => "GRE tunnel".into(),
        823 => "IP6GRE tunnel".into(),
        65534 => "no link layer (WireGuard, tun)".into(),
        t => format!("link type {t}"),
    }
}

/// Why the program cannot protect interface `name`, if it cannot: its
/// frames must start with an Ethernet header. On an L3 device the parser
/// would read the ethertype from inside the IP header and pass nearly
/// every packet as non-IP.
pub fn unprotectable(name: &str) -> Option<String> {
    let t = link_type(name)?;
    (t != LINK_ETHER).then(|| {
        format!(
            "interface {name} is not Ethernet ({}): the program parses Ethernet frames only; protect the Ethernet interface that carries its traffic instead",
            link_type_name(t)
        )
    })
}

/// Interfaces that carry a default route (IPv4 or IPv6): the embedded
/// default's choice of what to protect. An error when the routes cannot be
/// read (then nothing is known, and the caller keeps what it had).
pub fn default_route_interfaces() -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let v4 = std::fs::read_to_string("/proc/net/route")?;
    for line in v4.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 2 && f[1] == "00000000" && !out.contains(&f[0].to_string()) {
            out.push(f[0].to_string());
        }
    }
    if let Ok(t) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in t.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 10 && f[0] == "00000000000000000000000000000000" && f[1] == "00" {
                let dev = f[9].to_string();
                if dev != "lo" && !out.contains(&dev) {
                    out.push(dev);
                }
            }
        }
    }
    Ok(out)
}

/// Capabilities the agent needs, with their bit numbers.
pub const NEEDED_CAPS: &[(&str, u32)] =
    &[("CAP_BPF", 39), ("CAP_NET_ADMIN", 12), ("CAP_PERFMON", 38)];

/// The needed capabilities this process lacks (from /proc/self/status).
pub fn missing_capabilities() -> Vec<&'static str> {
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    // CAP_SYS_ADMIN implies what CAP_BPF and CAP_PERFMON grant.
    let sys_admin = eff & (1 << 21) != 0;
    NEEDED_CAPS
        .iter()
        .filter(|(name, bit)| eff & (1u64 << bit) == 0 && !(sys_admin && *name != "CAP_NET_ADMIN"))
        .map(|(name, _)| *name)
        .collect()
}

/// Whether bpffs is mounted at (or above) `path`.
pub fn is_bpffs(path: &std::path::Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct with a valid path.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated; s is writable.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return false;
    }
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    s.f_type as i64 == BPF_FS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_types_come_from_the_device() {
        assert_eq!(link_type("lo"), Some(772));
        assert!(unprotectable("lo").is_some_and(|w| w.contains("(loopback)")));
        assert_eq!(link_type("no-such-device0"), None);
    }
}
