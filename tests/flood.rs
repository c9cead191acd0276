//! Flood defence through BPF_PROG_TEST_RUN: the SYN-ACK the program sends
//! (checked byte by byte, checksums recomputed here), the ACK that proves a
//! source, `auto` mode's threshold, dry-run, and the newcomer budget.
//!
//! The program asks the kernel for the listener's cookie, so each test
//! listens on a port of its own in this network namespace (the one a test
//! run's packets arrive in).
use std::net::{IpAddr, TcpListener};

use rampart_common::{
    abi::{Policy, action, policy_flag, proto, reason, stat, syn_cookies},
    parse::tcp_at,
};
use rampart_tests::{
    frames::{FrameBuilder as F, checksum},
    harness::*,
    netns,
};

const SERVER4: &str = "198.51.100.1";
const SERVER6: &str = "2001:db8:ffff::1";
/// MSS 1460, SACK permitted, timestamps, window scale 7: what Linux sends.
const LINUX_SYN_OPTIONS: &[u8] = &[
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
];

/// A dual-stack listener on a free port, in a namespace of the test's own
/// where the kernel issues cookies for every SYN (`tcp_syncookies = 2`,
/// what the agent sets for cookie mode).
fn listen() -> (TcpListener, u16) {
    netns::isolate_this_thread(2).expect("a namespace for the test");
    let l = TcpListener::bind("[::]:0").expect("listen on a free port");
    let port = l.local_addr().expect("listener address").port();
    (l, port)
}

/// A TCP policy on `port` with a generous rate, and the given cookie mode.
fn cookie_policy(port: u16, mode: u8) -> Policy {
    Policy {
        proto: proto::TCP,
        flags: policy_flag::HAS_PORTS,
        v4_prefix: 32,
        v6_prefix: 64,
        port_lo: port,
        port_hi: port,
        pps: 1,
        pps_burst: 1 << 30,
        pps_fill_ns: 1 << 62,
        idle_ns: 1 << 62,
        syn_cookies: mode,
        syn_above: 50,
        ..Policy::default()
    }
}

/// A plane with these policies, whose model knows which port listens.
fn plane_with(policies: &[Policy], listening: Option<u16>) -> Plane {
    let mut p = Plane::new();
    p.configure(|c| c.verified_ttl_ns = 3_600_000_000_000);
    p.policies(policies);
    p.model.tables.listening.extend(listening);
    p
}

/// The fields of a SYN-ACK, read back from the frame.
#[derive(Debug)]
struct SynAck {
    seq: u32,
    mss: u16,
    window: u16,
}

/// Checks `out` is a correct SYN-ACK for `syn` (whose IP header starts at
/// `l3`), with checksums recomputed independently; returns its fields.
fn check_synack(syn: &[u8], out: &[u8], l3: usize, v6: bool) -> SynAck {
    let ip_len = if v6 { 40 } else { 20 };
    assert_eq!(
        out.len(),
        l3 + ip_len + 24,
        "Ethernet, IP and a 24-byte TCP header"
    );
    assert_eq!(&out[0..6], &syn[6..12], "back to the sender's MAC");
    assert_eq!(&out[6..12], &syn[0..6], "from the MAC it was sent to");
    assert_eq!(
        &out[12..l3],
        &syn[12..l3],
        "the same ethertype and VLAN tags"
    );
    let ip = &out[l3..l3 + ip_len];
    let (src, dst, pseudo_addrs) = if v6 {
        assert_eq!(ip[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 24, "payload length");
        assert_eq!(ip[6], 6, "next header TCP, no extension headers");
        (&ip[8..24], &ip[24..40], ip[8..40].to_vec())
    } else {
        assert_eq!(ip[0], 0x45, "IPv4 without options");
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 44, "total length");
        assert_eq!(ip[9], 6);
        assert_eq!(checksum(ip), 0, "IPv4 header checksum");
        (&ip[12..16], &ip[16..20], ip[12..20].to_vec())
    };
    // The SYN's addresses, wherever its header was.
    let syn_l3 = &syn[l3..];
    let (syn_src, syn_dst) = if v6 {
        (&syn_l3[8..24], &syn_l3[24..40])
    } else {
        (&syn_l3[12..16], &syn_l3[16..20])
    };
    assert_eq!(src, syn_dst, "from the address the SYN was sent to");
    assert_eq!(dst, syn_src, "to the SYN's source");
    let tcp = &out[l3 + ip_len..];
    let syn_tcp = &syn[l4_of(syn)..];
    assert_eq!(
        &tcp[0..2],
        &syn_tcp[2..4],
        "from the port the SYN was sent to"
    );
    assert_eq!(&tcp[2..4], &syn_tcp[0..2], "to the SYN's port");
    let client_seq = u32::from_be_bytes(syn_tcp[4..8].try_into().unwrap());
    let ack = u32::from_be_bytes(tcp[8..12].try_into().unwrap());
    assert_eq!(ack, client_seq.wrapping_add(1), "acknowledges the SYN");
    assert_eq!(tcp[12] >> 4, 6, "data offset");
    assert_eq!(tcp[13], 0x12, "SYN and ACK, nothing else");
    assert_eq!(&tcp[20..22], &[2, 4], "one option: MSS");
    // The TCP checksum over the pseudo-header and the header.
    let mut sum = pseudo_addrs;
    if v6 {
        sum.extend_from_slice(&[0, 0, 0, 24, 0, 0, 0, 6]);
    } else {
        sum.extend_from_slice(&[0, 6, 0, 24]);
    }
    sum.extend_from_slice(tcp);
    assert_eq!(checksum(&sum), 0, "TCP checksum");
    SynAck {
        seq: u32::from_be_bytes(tcp[4..8].try_into().unwrap()),
        mss: u16::from_be_bytes([tcp[22], tcp[23]]),
        window: u16::from_be_bytes([tcp[14], tcp[15]]),
    }
}

/// Where the SYN's TCP header starts, as the parser finds it.
fn l4_of(syn: &[u8]) -> usize {
    tcp_at(&syn).expect("the test SYN's TCP header").l4
}

#[test]
fn a_syn_is_answered_with_a_correct_syn_ack_in_every_shape() {
    let (_l, port) = listen();
    let p = plane_with(&[cookie_policy(port, syn_cookies::ON)], Some(port));
    let shapes: Vec<(&str, Vec<u8>, usize, bool, u16)> = vec![
        (
            "IPv4",
            F::new("192.0.2.10", SERVER4, 6, 40001, port)
                .tcp_options(LINUX_SYN_OPTIONS)
                .seq(0xfffffff0)
                .payload(0)
                .build(),
            14,
            false,
            1460,
        ),
        (
            "IPv4, VLAN-tagged, with IP options and a payload",
            F::new("192.0.2.11", SERVER4, 6, 40002, port)
                .vlan(7)
                .v4_options(2)
                .tcp_options(LINUX_SYN_OPTIONS)
                .payload(40)
                .build(),
            18,
            false,
            1460,
        ),
        (
            "IPv4, QinQ, no options at all (the reply is longer)",
            F::new("192.0.2.12", SERVER4, 6, 40003, port)
                .vlan(1)
                .vlan(2)
                .qinq()
                .payload(0)
                .build(),
            22,
            false,
            536,
        ),
        (
            "IPv6, VLAN-tagged",
            F::new("2001:db8::10", SERVER6, 6, 40004, port)
                .vlan(9)
                .tcp_options(&[2, 4, 0x05, 0xa0])
                .payload(0)
                .build(),
            18,
            true,
            1440,
        ),
    ];
    for (what, syn, l3, v6, mss) in shapes {
        let (out, reply) = p.run_out(&syn);
        assert_eq!(
            (out.action_name(), out.reason_name()),
            ("challenge", "syn_cookie"),
            "{what}"
        );
        assert_eq!(out.xdp, XDP_TX, "{what}");
        let s = check_synack(&syn, &reply, l3, v6);
        assert_eq!(s.mss, mss, "{what}: the MSS the cookie encodes");
        assert!(s.window > 0, "{what}: a window the client may send into");
        assert_ne!(s.seq, 0, "{what}: a cookie");
    }
}

#[test]
fn the_ack_with_the_cookie_verifies_its_source_and_a_forged_one_drops() {
    let (_l, port) = listen();
    let p = plane_with(&[cookie_policy(port, syn_cookies::ON)], Some(port));
    let client = "192.0.2.20";
    let syn = F::new(client, SERVER4, 6, 40010, port)
        .tcp_options(LINUX_SYN_OPTIONS)
        .seq(1000)
        .payload(0)
        .build();
    let (out, reply) = p.run_out(&syn);
    assert_eq!(out.xdp, XDP_TX);
    let s = check_synack(&syn, &reply, 14, false);
    let ack = |src: &str, ack: u32| {
        F::new(src, SERVER4, 6, 40010, port)
            .flags(0x10)
            .seq(1001)
            .ack(ack)
            .payload(0)
            .build()
    };
    // A forged ACK, from a source that never saw the SYN-ACK.
    let before = p.stats();
    let out = p.run_both(&ack("192.0.2.21", 0x1234_5678));
    assert_eq!(
        (out.action_name(), out.reason_name()),
        ("drop", "bad_cookie")
    );
    // The real one: on to the listener, and the source is now verified.
    let out = p.run(&ack(client, s.seq.wrapping_add(1)));
    assert_eq!((out.action_name(), out.reason_name()), ("pass", "none"));
    let after = p.stats();
    assert_eq!(
        after[stat::COOKIES_VALID as usize] - before[stat::COOKIES_VALID as usize],
        1
    );
    let ip: IpAddr = client.parse().unwrap();
    assert!(
        p.dp.verified(ip).is_some(),
        "a valid cookie verifies the source"
    );
    assert!(p.dp.verified("192.0.2.21".parse().unwrap()).is_none());
    // A verified source's SYNs go to the listener as usual.
    let out = p.run(&syn);
    assert_eq!((out.action_name(), out.reason_name()), ("pass", "none"));
    // A wrong cookie from the verified source is not checked: it is its own.
    let out = p.run(&ack(client, 1));
    assert_eq!(out.action_name(), "pass");
}

#[test]
fn without_a_listener_a_syn_goes_on_to_be_metered() {
    let (l, port) = listen();
    drop(l);
    let p = plane_with(&[cookie_policy(port, syn_cookies::ON)], None);
    let before = p.stats();
    let out = p.run_both(&F::new("192.0.2.30", SERVER4, 6, 40020, port).build());
    assert_eq!((out.action_name(), out.reason_name()), ("pass", "none"));
    let after = p.stats();
    assert_eq!(
        after[stat::COOKIE_FALLBACK as usize] - before[stat::COOKIE_FALLBACK as usize],
        1
    );
}

#[test]
fn auto_answers_only_once_the_syn_rate_passes_its_threshold() {
    let (_l, port) = listen();
    // A low threshold, so the whole sequence fits in one 1 s window even
    // under emulation, where each frame takes milliseconds. An attempt that
    // still took longer than the window (it then restarted midway) proves
    // nothing and is tried again on a fresh plane.
    const ABOVE: u32 = 5;
    let syn = |i: u32| {
        F::new(
            &format!("10.1.{}.{}", i / 250, i % 250 + 1),
            SERVER4,
            6,
            40030,
            port,
        )
        .build()
    };
    for attempt in 0..3 {
        let mut pol = cookie_policy(port, syn_cookies::AUTO);
        pol.syn_above = ABOVE;
        let p = plane_with(&[pol], Some(port));
        let started = std::time::Instant::now();
        let under: Vec<_> = (0..ABOVE)
            .map(|i| {
                let out = p.run(&syn(i));
                (out.action_name(), out.reason_name())
            })
            .collect();
        let out = p.run(&syn(ABOVE));
        let over = (out.action_name(), out.reason_name());
        if started.elapsed() >= std::time::Duration::from_millis(900) {
            eprintln!(
                "attempt {attempt} took {:?}, longer than the window",
                started.elapsed()
            );
            continue;
        }
        for (i, o) in under.iter().enumerate() {
            assert_eq!(*o, ("pass", "none"), "SYN {i}, under the threshold");
        }
        assert_eq!(over, ("challenge", "syn_cookie"));
        let engaged = p.dp.flood_states().unwrap()[0].engaged;
        assert_eq!(engaged, 1, "auto mode is engaged");
        return;
    }
    panic!("three attempts each took longer than the 1 s window");
}

#[test]
fn dry_run_counts_would_challenge_and_passes_the_syn_untouched() {
    let (_l, port) = listen();
    let mut pol = cookie_policy(port, syn_cookies::ON);
    pol.flags |= policy_flag::DRY_RUN;
    let p = plane_with(&[pol], Some(port));
    let out = p.run_both(&F::new("192.0.2.40", SERVER4, 6, 40040, port).build());
    assert_eq!(
        (out.action_name(), out.reason_name()),
        ("would_challenge", "syn_cookie")
    );
    assert_eq!(out.xdp, XDP_PASS, "the frame (checked unchanged) goes on");
    // A forged ACK is counted as it would be dropped, and passes.
    let ack = F::new("192.0.2.41", SERVER4, 6, 40040, port)
        .flags(0x10)
        .ack(7)
        .build();
    let out = p.run_both(&ack);
    assert_eq!(
        (out.action_name(), out.reason_name()),
        ("would_drop", "bad_cookie")
    );
}

#[test]
fn the_newcomer_budget_caps_a_spoofed_flood_and_spares_tracked_and_verified_sources() {
    let udp = Policy {
        proto: proto::UDP,
        v4_prefix: 32,
        v6_prefix: 64,
        pps: 1000,
        pps_burst: 1000,
        pps_fill_ns: 1_000_000_000,
        idle_ns: 3_600_000_000_000,
        new_pps: 100,
        new_burst: 200,
        new_fill_ns: 2_000_000_000,
        ..Policy::default()
    };
    let p = plane_with(&[udp], None);
    let tracked = F::udp("192.0.2.50", SERVER4, 53).build();
    assert_eq!(p.run(&tracked).action_name(), "pass", "tracked from now on");
    let verified: IpAddr = "192.0.2.51".parse().unwrap();
    let mut p = p;
    p.dp.set_verified(verified, now_ns() + 3_600_000_000_000)
        .unwrap();
    let start = now_ns();
    let (mut passed, mut budget_drops) = (0u64, 0u64);
    let flood = 5000u32;
    for i in 0..flood {
        let src = format!("10.{}.{}.{}", 2 + i / 62500, (i / 250) % 250, i % 250 + 1);
        let out = p.run(&F::udp(&src, SERVER4, 53).build());
        match (out.counted.0, out.counted.1) {
            (action::PASS, _) => passed += 1,
            (action::DROP, reason::NEWCOMER) => budget_drops += 1,
            other => panic!("unexpected verdict {other:?} for {src}"),
        }
        if i % 500 == 0 {
            assert_eq!(
                p.run(&tracked).action_name(),
                "pass",
                "tracked source starved at {i}"
            );
        }
    }
    let secs = (now_ns() - start) as f64 / 1e9;
    let allowed = 200.0 + 100.0 * secs;
    assert!(
        passed as f64 <= allowed + 10.0,
        "{passed} of {flood} spoofed packets passed in {secs:.2}s; the budget allows {allowed:.0}"
    );
    assert_eq!(passed + budget_drops, u64::from(flood));
    let out = p.run(&F::udp("192.0.2.51", SERVER4, 53).build());
    assert_eq!(
        out.action_name(),
        "pass",
        "a verified source skips the spent budget"
    );
}

#[test]
fn the_verified_hint_is_consulted_and_rebuilt_from_live_entries() {
    let (_l, port) = listen();
    let mut p = plane_with(&[cookie_policy(port, syn_cookies::ON)], Some(port));
    let src = "192.0.2.60";
    let syn = F::new(src, SERVER4, 6, 40060, port).payload(0).build();
    let hour = 3_600_000_000_000;
    p.dp.set_verified(src.parse().unwrap(), now_ns() + hour)
        .unwrap();
    assert_eq!(p.run(&syn).action_name(), "pass", "verified: no challenge");
    // A rebuild as of a time past the entry's expiry leaves its bit out:
    // the program then does not even look the source up.
    p.dp.rebuild_verified_hint(now_ns() + 2 * hour).unwrap();
    assert_eq!(p.run(&syn).action_name(), "challenge");
    // Rebuilt as of now, the live entry's bit is back.
    p.dp.rebuild_verified_hint(now_ns()).unwrap();
    assert_eq!(p.run(&syn).action_name(), "pass");
}

#[test]
fn ipv6_with_extension_headers_is_not_answered_but_metered() {
    let (_l, port) = listen();
    let p = plane_with(&[cookie_policy(port, syn_cookies::ON)], Some(port));
    let syn = F::new("2001:db8::11", SERVER6, 6, 40005, port)
        .ext(60)
        .payload(0)
        .build();
    let out = p.run_both(&syn);
    assert_eq!((out.action_name(), out.reason_name()), ("pass", "none"));
}
