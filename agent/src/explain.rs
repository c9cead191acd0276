//! `rampart explain`: what the data plane would do with a packet now, and
//! why, computed by the shared decision code over the live maps without
//! changing them.
use std::net::IpAddr;

use rampart_common::{
    abi::{action, reason},
    decide::List,
    decide::decide,
    parse::parse,
};

use crate::{api::Explain, clock, datapath::ReadOnlyView, policy::Protocol, state::Core};

/// A minimal frame: Ethernet, IPv4 or IPv6, and the transport header.
pub fn frame(src: IpAddr, proto: Protocol, port: u16) -> Vec<u8> {
    let (l4_proto, l4): (u8, Vec<u8>) = match proto {
        Protocol::Tcp | Protocol::Any => {
            let mut h = vec![0x9c, 0x40];
            h.extend_from_slice(&port.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
            (6, h)
        }
        Protocol::Udp => {
            let mut h = vec![0x9c, 0x40];
            h.extend_from_slice(&port.to_be_bytes());
            h.extend_from_slice(&[0, 8, 0, 0]);
            (17, h)
        }
        Protocol::Icmp => (
            if src.is_ipv4() { 1 } else { 58 },
            vec![port as u8, 0, 0, 0, 0, 0, 0, 0],
        ),
    };
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    match src {
        IpAddr::V4(a) => {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
            f.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0, 64, l4_proto, 0, 0]);
            f.extend_from_slice(&a.octets());
            f.extend_from_slice(&[192, 0, 2, 1]);
        }
        IpAddr::V6(a) => {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            f.extend_from_slice(&[l4_proto, 64]);
            f.extend_from_slice(&a.octets());
            f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        }
    }
    f.extend(l4);
    f
}

pub fn explain(core: &Core, ip: IpAddr, proto: Protocol, port: u16) -> Explain {
    let f = frame(ip, proto, port);
    let dp = &core.dp;
    let v = decide(
        &ReadOnlyView(dp, &f),
        dp.config(),
        &parse(&f.as_slice()),
        f.len() as u32,
        &clock::mono_ns,
    );
    let mut because = Vec::new();
    let listed = |kind| core.rows(kind, Some(ip));
    match v.reason {
        reason::ALLOWLIST => {
            for r in listed(List::Allow) {
                because.push(format!(
                    "allowlisted by {} ({})",
                    r.prefix,
                    r.origin.join(", ")
                ));
            }
        }
        reason::BLOCKLIST => {
            for r in listed(List::Block) {
                let exp = r.expires.map_or("never expires".to_string(), |e| {
                    format!(
                        "expires in {}",
                        clock::human(std::time::Duration::from_secs(
                            e.saturating_sub(clock::unix_now())
                        ))
                    )
                });
                because.push(format!(
                    "blocklisted by {} ({}; {exp})",
                    r.prefix,
                    r.origin.join(", ")
                ));
            }
        }
        reason::BAN => {
            if let Ok(bans) = core.bans() {
                for b in bans.iter().filter(|b| b.active && b.prefix.contains(ip)) {
                    because.push(format!(
                        "banned as {} by policy {} (offence {}, ends in {})",
                        b.prefix,
                        b.policy,
                        b.offences,
                        clock::human(std::time::Duration::from_secs(
                            b.expires.saturating_sub(clock::unix_now())
                        ))
                    ));
                }
            }
        }
        reason::RATELIMIT => because.push(format!("over the limit of policy {}", policy_name(core, v.policy))),
        reason::NEWCOMER => because.push(format!(
            "policy {} does not track this source yet, and its newcomer budget is spent",
            policy_name(core, v.policy)
        )),
        reason::SYN_COOKIE => because.push(format!(
            "policy {} is in SYN cookie mode: a SYN from an unverified source is answered by the program; its connection reaches the listener once its ACK carries the cookie",
            policy_name(core, v.policy)
        )),
        _ => {}
    }
    if v.action == action::WOULD_DROP {
        because.push("dry-run: counted as would_drop and passed".into());
    }
    if v.action == action::WOULD_CHALLENGE {
        because.push("dry-run: counted as would_challenge and passed to the stack".into());
    }
    if because.is_empty() {
        because.push(match v.reason {
            reason::MALFORMED => "the packet could not be parsed".into(),
            _ if core.policy_names.is_empty() => "no list entry, ban or policy applies".into(),
            _ => "no list entry or ban applies, and the source is within its rate limit (or no policy matches)".into(),
        });
    }
    let verified = core
        .dp
        .verified(ip)
        .filter(|v| v.expires_ns > clock::mono_ns());
    because.push(match verified {
        Some(v) => format!(
            "verified source (it proved it can receive): skips SYN cookies and newcomer budgets for {}",
            clock::human(std::time::Duration::from_nanos(
                v.expires_ns.saturating_sub(clock::mono_ns())
            ))
        ),
        None => "not a verified source".into(),
    });
    let pkt = match parse(&f.as_slice()) {
        rampart_common::parse::Parsed::Ip(p) => Some(p),
        _ => None,
    };
    let policy = pkt.and_then(|pkt| {
        core.dp
            .policies()
            .unwrap_or_default()
            .iter()
            .position(|p| rampart_common::decide::policy_matches(p, &pkt))
            .map(|i| policy_name(core, i as u8).to_string())
    });
    Explain {
        ip: ip.to_string(),
        policy,
        detector: None,
        protocol: format!("{proto:?}").to_lowercase(),
        port,
        action: action::NAMES[v.action as usize].into(),
        reason: reason::NAMES[v.reason as usize].into(),
        verified: verified.is_some(),
        because,
    }
}

fn policy_name(core: &Core, index: u8) -> &str {
    core.policy_names
        .get(index as usize)
        .map_or("?", String::as_str)
}
