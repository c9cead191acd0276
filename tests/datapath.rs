//! Decision tables through BPF_PROG_TEST_RUN: crafted frames for every rule,
//! each asserting the XDP verdict, the one counter that moved (action and
//! reason), and that the reference model agrees.
use rampart_common::{
    abi::{BanEntry, ListEntry, action, config_flag, entry_flag, reason},
    decide::List,
};
use rampart_tests::{
    frames::{self, FrameBuilder as F},
    harness::*,
};

const CLIENT: &str = "192.0.2.10";
const BAD: &str = "203.0.113.66";
const SERVER: &str = "198.51.100.1";
const CLIENT6: &str = "2001:db8:1::10";
const BAD6: &str = "2001:db8:bad::66";
const SERVER6: &str = "2001:db8:ffff::1";

fn expect(plane: &Plane, frame: &[u8], act: u8, why: u8) {
    let out = plane.run_both(frame);
    assert_eq!(
        out.counted,
        (act, why),
        "expected {}/{}, got {}/{} for {frame:02x?}",
        action::NAMES[act as usize],
        reason::NAMES[why as usize],
        out.action_name(),
        out.reason_name()
    );
}

fn blocked_plane() -> Plane {
    let mut p = Plane::new();
    p.block(BAD);
    p.block("2001:db8:bad::/48");
    p
}

#[test]
fn plain_traffic_passes() {
    let p = blocked_plane();
    expect(
        &p,
        &F::tcp(CLIENT, SERVER).build(),
        action::PASS,
        reason::NONE,
    );
    expect(
        &p,
        &F::udp(CLIENT, SERVER, 53).build(),
        action::PASS,
        reason::NONE,
    );
    expect(
        &p,
        &F::icmp(CLIENT, SERVER).build(),
        action::PASS,
        reason::NONE,
    );
    expect(
        &p,
        &F::tcp(CLIENT6, SERVER6).build(),
        action::PASS,
        reason::NONE,
    );
    expect(
        &p,
        &F::icmp(CLIENT6, SERVER6).build(),
        action::PASS,
        reason::NONE,
    );
}

#[test]
fn non_ip_passes_and_is_counted() {
    let p = blocked_plane();
    expect(&p, &frames::arp(), action::PASS, reason::NON_IP);
    // LLDP
    let mut lldp = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e, 2, 0, 0, 0, 0, 2, 0x88, 0xcc];
    lldp.extend_from_slice(&[0; 32]);
    expect(&p, &lldp, action::PASS, reason::NON_IP);
}

#[test]
fn blocklisted_sources_drop_in_every_shape() {
    let p = blocked_plane();
    let shapes = [
        F::tcp(BAD, SERVER),
        F::udp(BAD, SERVER, 53),
        F::icmp(BAD, SERVER),
        F::new(BAD, SERVER, 47, 0, 0),  // GRE: no ports
        F::new(BAD, SERVER, 132, 0, 0), // SCTP
        F::tcp(BAD, SERVER).vlan(10),
        F::tcp(BAD, SERVER).vlan(10).vlan(20).qinq(),
        F::tcp(BAD, SERVER).v4_options(3),
        F::tcp(BAD, SERVER).v4_options(10),
        F::tcp(BAD, SERVER).fragment(0, true),
        F::tcp(BAD, SERVER).fragment(185, false),
        F::tcp(BAD6, SERVER6),
        F::udp(BAD6, SERVER6, 443),
        F::icmp(BAD6, SERVER6),
        F::tcp(BAD6, SERVER6).ext(0).ext(43).ext(60),
        F::tcp(BAD6, SERVER6).ext(51),
        F::tcp(BAD6, SERVER6).fragment(0, true),
        F::tcp(BAD6, SERVER6).fragment(100, false),
        F::new(BAD6, SERVER6, 59, 0, 0), // no next header
        F::tcp(BAD6, SERVER6).vlan(7).vlan(8).qinq(),
    ];
    for f in shapes {
        expect(&p, &f.build(), action::DROP, reason::BLOCKLIST);
    }
}

#[test]
fn prefixes_match_and_neighbours_do_not() {
    let mut p = Plane::new();
    p.block("10.20.0.0/16");
    p.block("10.0.0.0/8");
    p.block("2001:db8:42::/48");
    expect(
        &p,
        &F::tcp("10.20.30.40", SERVER).build(),
        action::DROP,
        reason::BLOCKLIST,
    );
    expect(
        &p,
        &F::tcp("10.99.0.1", SERVER).build(),
        action::DROP,
        reason::BLOCKLIST,
    );
    expect(
        &p,
        &F::tcp("11.0.0.1", SERVER).build(),
        action::PASS,
        reason::NONE,
    );
    expect(
        &p,
        &F::tcp("2001:db8:42:ffff::1", SERVER6).build(),
        action::DROP,
        reason::BLOCKLIST,
    );
    expect(
        &p,
        &F::tcp("2001:db8:43::1", SERVER6).build(),
        action::PASS,
        reason::NONE,
    );
    // Removing the /8 withdraws its length; the /16 still matches.
    p.unlist(List::Block, "10.0.0.0/8");
    expect(
        &p,
        &F::tcp("10.99.0.1", SERVER).build(),
        action::PASS,
        reason::NONE,
    );
    expect(
        &p,
        &F::tcp("10.20.30.40", SERVER).build(),
        action::DROP,
        reason::BLOCKLIST,
    );
}

#[test]
fn allowlist_passes_before_everything_else() {
    let mut p = blocked_plane();
    p.allow("203.0.113.0/24");
    p.allow("2001:db8:bad:1::/64");
    expect(
        &p,
        &F::tcp(BAD, SERVER).build(),
        action::PASS,
        reason::ALLOWLIST,
    );
    expect(
        &p,
        &F::tcp("2001:db8:bad:1::9", SERVER6).build(),
        action::PASS,
        reason::ALLOWLIST,
    );
    // Outside the allowed /64 but inside the blocked /48.
    expect(
        &p,
        &F::tcp("2001:db8:bad:2::9", SERVER6).build(),
        action::DROP,
        reason::BLOCKLIST,
    );
}

#[test]
fn expired_entries_stop_matching_in_the_kernel() {
    let mut p = Plane::new();
    let past = ListEntry {
        expires_ns: now_ns().saturating_sub(1),
        ..ListEntry::default()
    };
    let future = ListEntry {
        expires_ns: now_ns() + 3_600_000_000_000,
        ..ListEntry::default()
    };
    p.list(List::Block, "192.0.2.200", past);
    p.list(List::Block, "192.0.2.201", future);
    expect(
        &p,
        &F::tcp("192.0.2.200", SERVER).build(),
        action::PASS,
        reason::NONE,
    );
    expect(
        &p,
        &F::tcp("192.0.2.201", SERVER).build(),
        action::DROP,
        reason::BLOCKLIST,
    );
    // An expired /32 does not hide a live covering /24.
    p.block("192.0.2.0/24");
    expect(
        &p,
        &F::tcp("192.0.2.200", SERVER).build(),
        action::DROP,
        reason::BLOCKLIST,
    );
}

#[test]
fn live_bans_drop_and_expired_bans_do_not() {
    let mut p = Plane::new();
    let live = BanEntry {
        expires_ns: now_ns() + 60_000_000_000,
        offences: 1,
        policy: 0,
    };
    let over = BanEntry {
        expires_ns: now_ns().saturating_sub(1),
        offences: 1,
        policy: 0,
    };
    p.ban("198.18.0.1", live);
    p.ban("198.18.0.2", over);
    p.ban("2001:db8:77::/64", live);
    expect(
        &p,
        &F::tcp("198.18.0.1", SERVER).build(),
        action::DROP,
        reason::BAN,
    );
    expect(
        &p,
        &F::udp("198.18.0.1", SERVER, 53).fragment(50, false).build(),
        action::DROP,
        reason::BAN,
    );
    expect(
        &p,
        &F::tcp("198.18.0.2", SERVER).build(),
        action::PASS,
        reason::NONE,
    );
    expect(
        &p,
        &F::tcp("2001:db8:77::abcd", SERVER6).build(),
        action::DROP,
        reason::BAN,
    );
}

#[test]
fn malformed_ip_drops_by_default_and_still_meets_the_lists() {
    let mut p = blocked_plane();
    let good = F::tcp(CLIENT, SERVER).build();
    // Truncated inside the IPv4 header: no source known.
    expect(&p, &good[..14 + 12], action::DROP, reason::MALFORMED);
    // Truncated inside TCP: source known, not listed.
    expect(&p, &good[..14 + 20 + 10], action::DROP, reason::MALFORMED);
    // Bad IHL (4 words).
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    expect(&p, &bad_ihl, action::DROP, reason::MALFORMED);
    // IHL pointing past the end.
    let mut long_ihl = good[..14 + 24].to_vec();
    long_ihl[14] = 0x4f;
    expect(&p, &long_ihl, action::DROP, reason::MALFORMED);
    // Wrong version nibble under the IPv4 ethertype.
    let mut v6_in_v4 = good.clone();
    v6_in_v4[14] = 0x65;
    expect(&p, &v6_in_v4, action::DROP, reason::MALFORMED);
    // IPv6 extension chain longer than the walk allows.
    let mut long_chain = F::tcp(CLIENT6, SERVER6);
    for _ in 0..9 {
        long_chain = long_chain.ext(60);
    }
    expect(&p, &long_chain.build(), action::DROP, reason::MALFORMED);
    // Three VLAN tags.
    let triple = F::tcp(CLIENT, SERVER).vlan(1).vlan(2).vlan(3).build();
    expect(&p, &triple, action::DROP, reason::MALFORMED);
    // Truncated VLAN tag.
    let tagged = F::tcp(CLIENT, SERVER).vlan(1).build();
    expect(&p, &tagged[..15], action::DROP, reason::MALFORMED);

    // Configured to pass malformed packets: a blocked source still drops,
    // an unknown one passes as malformed.
    p.configure(|c| c.malformed_pass = 1);
    let bad = F::tcp(BAD, SERVER).build();
    expect(&p, &bad[..14 + 20 + 10], action::DROP, reason::BLOCKLIST);
    expect(&p, &good[..14 + 20 + 10], action::PASS, reason::MALFORMED);
}

#[test]
fn garbage_frames_never_fail_open_or_crash() {
    let p = blocked_plane();
    // Runt frames of every length up to a full header (BPF_PROG_TEST_RUN
    // needs at least an Ethernet header).
    for n in 14..60 {
        let f = F::tcp(BAD, SERVER).build();
        let out = p.run_both(&f[..n.min(f.len())]);
        assert_ne!(
            out.counted,
            (action::PASS, reason::NONE),
            "a truncated frame from a blocked source passed as clean at {n} bytes"
        );
    }
}

#[test]
fn dry_run_counts_would_drop_and_passes() {
    let mut p = blocked_plane();
    p.configure(|c| c.flags |= config_flag::DRY_RUN);
    expect(
        &p,
        &F::tcp(BAD, SERVER).build(),
        action::WOULD_DROP,
        reason::BLOCKLIST,
    );
    let good = F::tcp(CLIENT, SERVER).build();
    expect(&p, &good[..30], action::WOULD_DROP, reason::MALFORMED);
    expect(&p, &good, action::PASS, reason::NONE);

    // Per-entry dry-run, global enforcement.
    let mut p = Plane::new();
    p.list(
        List::Block,
        "203.0.113.0/24",
        ListEntry {
            flags: entry_flag::DRY_RUN,
            ..ListEntry::default()
        },
    );
    p.block("203.0.113.66");
    expect(
        &p,
        &F::tcp("203.0.113.1", SERVER).build(),
        action::WOULD_DROP,
        reason::BLOCKLIST,
    );
    // A dry-run entry does not shield the source from an enforcing one.
    let out = p.run_both(&F::tcp("203.0.113.66", SERVER).build());
    assert_eq!(out.xdp, XDP_DROP);
}

/// A batch larger than one syscall's chunk is split over several threads;
/// every entry must land, with its value, and match in the kernel.
#[test]
fn a_large_batch_lands_whole() {
    use rampart::{datapath::Datapath, prefix::Prefix};
    let n = 200_000u32;
    let caps = rampart::datapath::Capacities {
        block_v4: n,
        ..test_capacities()
    };
    let mut dp = Datapath::load(caps, None).expect("load the XDP program (run as root)");
    let host = |i: u32| Prefix::host(std::net::IpAddr::from((0x0b00_0000 + i).to_be_bytes()));
    let entry = |i: u32| ListEntry {
        expires_ns: u64::from(i) + 1,
        ..ListEntry::default()
    };
    let items: Vec<_> = (0..n).map(|i| (host(i), entry(i))).collect();
    dp.list_insert_many(List::Block, &items)
        .expect("batch insert");
    let mut listed = dp.list_entries(List::Block).expect("entries");
    listed.sort_by_key(|(p, _)| *p);
    assert_eq!(listed.len(), n as usize);
    for (i, (p, e)) in listed.iter().enumerate() {
        let i = i as u32;
        assert_eq!((*p, e.expires_ns), (host(i), entry(i).expires_ns));
    }
    assert_eq!(dp.list_len(List::Block), (u64::from(n), 0));
}

/// The /24 summary lets sources skip the probes of /24 and longer: a bit
/// must stay set while any such entry is left in its /24, in both lists,
/// through single and batch changes, and come back whole from pinned maps.
#[test]
fn a_slash24_is_probed_while_any_entry_in_it_remains() {
    let drops = |p: &Plane, src: &str| {
        expect(
            p,
            &F::tcp(src, SERVER).build(),
            action::DROP,
            reason::BLOCKLIST,
        )
    };
    let passes =
        |p: &Plane, src: &str| expect(p, &F::tcp(src, SERVER).build(), action::PASS, reason::NONE);
    let mut p = Plane::new();
    p.block("198.18.7.7");
    p.block("198.18.7.128/25");
    drops(&p, "198.18.7.7");
    drops(&p, "198.18.7.200");
    passes(&p, "198.18.7.8");
    passes(&p, "198.18.8.7");
    p.unlist(List::Block, "198.18.7.7");
    passes(&p, "198.18.7.7");
    drops(&p, "198.18.7.200");
    p.unlist(List::Block, "198.18.7.128/25");
    passes(&p, "198.18.7.200");
    p.block("198.18.7.200");
    drops(&p, "198.18.7.200");
    // The allowlist keeps its own bits: an allowed /32 in a blocked /24.
    p.block("198.18.9.0/24");
    p.allow("198.18.9.9");
    expect(
        &p,
        &F::tcp("198.18.9.9", SERVER).build(),
        action::PASS,
        reason::ALLOWLIST,
    );
    drops(&p, "198.18.9.10");
    p.unlist(List::Allow, "198.18.9.9");
    drops(&p, "198.18.9.9");
}

#[test]
fn batch_changes_and_pinned_maps_keep_the_slash24_summary() {
    use rampart::{datapath::Datapath, prefix::Prefix};
    use rampart_common::abi::{map_name, slash24};
    let pins = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/rampart-test-slash24-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&pins);
    std::fs::create_dir_all(&pins).expect("bpffs dir (run as root)");
    let verdict =
        |dp: &Datapath, src: &str| dp.test_run(&F::tcp(src, SERVER).build()).expect("test run");
    const DROP: u32 = 1;
    const PASS: u32 = 2;
    let host = |s: &str| s.parse::<Prefix>().expect("prefix");
    {
        let mut dp = Datapath::load(test_capacities(), Some(&pins)).expect("load");
        let items: Vec<_> = ["198.18.7.1", "198.18.7.2", "198.18.7.3", "198.18.8.1"]
            .iter()
            .map(|s| (host(s), ListEntry::default()))
            .collect();
        dp.list_insert_many(List::Block, &items)
            .expect("batch insert");
        assert_eq!(verdict(&dp, "198.18.7.3"), DROP);
        dp.list_remove_many(List::Block, &[host("198.18.7.1"), host("198.18.8.1")])
            .expect("batch remove");
        assert_eq!(verdict(&dp, "198.18.7.2"), DROP);
        assert_eq!(verdict(&dp, "198.18.8.1"), PASS);
        // An agent that kept no summary: the pinned words are all clear.
        let pinned =
            aya::maps::MapData::from_pin(pins.join(map_name::V4_SLASH24)).expect("pinned summary");
        let mut words: aya::maps::Array<_, u64> =
            aya::maps::Array::try_from(aya::maps::Map::Array(pinned)).expect("an array");
        for w in 0..slash24::WORDS {
            if words.get(&w, 0).expect("word") != 0 {
                words.set(w, 0, 0).expect("clear");
            }
        }
        assert_eq!(verdict(&dp, "198.18.7.2"), PASS, "the summary decides");
    }
    let dp = Datapath::load(test_capacities(), Some(&pins)).expect("re-adopt");
    assert_eq!(verdict(&dp, "198.18.7.2"), DROP);
    assert_eq!(verdict(&dp, "198.18.7.3"), DROP);
    assert_eq!(verdict(&dp, "198.18.7.1"), PASS);
    drop(dp);
    let _ = std::fs::remove_dir_all(&pins);
}

/// A key whose two buckets are both full goes to its table's spill map and
/// its bucket's spill flag is set: the program must still find it, find the
/// spilled keys once their neighbours in the slots are gone, and stop
/// finding each one removed. Keys are chosen so both buckets are bucket 0,
/// with the seed and geometry the loaded data plane uses.
#[test]
fn keys_of_full_buckets_spill_and_still_match() {
    use rampart::{datapath::Datapath, prefix::Prefix};
    use rampart_common::{
        abi::list_table_index,
        addr::{v4_key, v6_key},
        list_table::{TableKey, WAYS, buckets},
    };
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    let caps = rampart::datapath::Capacities {
        block_v4: 8,
        block_v6: 8,
        ..test_capacities()
    };
    let mut dp = Datapath::load(caps, None).expect("load the XDP program (run as root)");
    let seed = dp.config().hash_seed;
    let masks = dp.config().list_masks;
    let crowded = |v6: bool| -> Vec<IpAddr> {
        let mask = masks[list_table_index(List::Block.index(), v6)];
        (1u32..)
            .map(|i| -> IpAddr {
                if v6 {
                    Ipv6Addr::from(0x2001_0db8_0005_u128 << 80 | u128::from(i)).into()
                } else {
                    Ipv4Addr::from(0xc612_0000 + i).into()
                }
            })
            .filter(|a| {
                let hash = match a {
                    IpAddr::V4(a) => v4_key(a.octets(), 32).table_hash(seed),
                    IpAddr::V6(a) => v6_key(rampart_common::abi::Addr::from_bytes(a.octets()), 128)
                        .table_hash(seed),
                };
                buckets(hash, mask) == [0, 0]
            })
            .take(WAYS as usize + 3)
            .collect()
    };
    let verdict = |dp: &Datapath, a: &IpAddr| {
        let server = if a.is_ipv4() { SERVER } else { SERVER6 };
        dp.test_run(&F::tcp(&a.to_string(), server).build())
            .expect("test run")
    };
    for v6 in [false, true] {
        let addrs = crowded(v6);
        let (held, spilled) = addrs.split_at(WAYS as usize);
        let (outsider, spilled) = spilled.split_last().expect("an outsider");
        for a in held.iter().chain(spilled) {
            dp.list_insert(List::Block, &Prefix::host(*a), ListEntry::default())
                .expect("insert");
        }
        let family = |(v4, v6n): (u64, u64)| if v6 { v6n } else { v4 };
        assert_eq!(family(dp.list_spilled(List::Block)), spilled.len() as u64);
        for a in held.iter().chain(spilled) {
            assert_eq!(verdict(&dp, a), XDP_DROP, "{a} is listed");
        }
        assert_eq!(
            verdict(&dp, outsider),
            XDP_PASS,
            "{outsider} shares the buckets only"
        );
        // The slots empty; the spilled keys stay found.
        for a in held {
            assert!(
                dp.list_remove(List::Block, &Prefix::host(*a))
                    .expect("remove")
            );
            assert_eq!(verdict(&dp, a), XDP_PASS, "{a} was removed");
        }
        for a in spilled {
            assert_eq!(verdict(&dp, a), XDP_DROP, "{a} is still listed");
        }
        for a in spilled {
            assert!(
                dp.list_remove(List::Block, &Prefix::host(*a))
                    .expect("remove")
            );
            assert_eq!(verdict(&dp, a), XDP_PASS, "{a} was removed");
        }
        assert_eq!(family(dp.list_spilled(List::Block)), 0);
        assert!(dp.list_entries(List::Block).expect("entries").is_empty());
    }
}

/// The verifier's work on the main program, on the running kernel: older
/// kernels prune less, so a program near the limit here fails there first.
/// Half the limit leaves room for the kernels of the matrix and for growth.
#[test]
fn the_verifier_accepts_the_program_with_half_its_budget_to_spare() {
    const VERIFIER_LIMIT: u32 = 1_000_000;
    let plane = Plane::new();
    let info = plane
        .dp
        .program()
        .expect("the program")
        .info()
        .expect("its info");
    let verified = info
        .verified_instruction_count()
        .expect("the kernel reports verified instructions (5.16+)");
    eprintln!("verified instructions: {verified} of {VERIFIER_LIMIT}");
    assert!(
        verified < VERIFIER_LIMIT / 2,
        "the verifier walked {verified} instructions, more than half its limit of {VERIFIER_LIMIT}"
    );
}

/// Bans the program must not start: exempt ranges and verified sources
/// (a spoofed flood in their name), and a full ban table (never fail open).
mod spared_bans {
    use std::time::Duration;

    use rampart::policy::{PolicySpec, Protocol};
    use rampart_common::abi::{Policy, action, reason, stat};
    use rampart_tests::{frames::FrameBuilder as F, harness::*};

    const SERVER: &str = "198.51.100.1";
    /// `n` frames of `src` through [`banning_policy`]: (rate-limited drops,
    /// ban drops, the most the rate lets pass in the time they took: its
    /// burst, its rate times the seconds, two clock ticks' worth). Under
    /// emulation the frames take far longer, so the bound follows the clock.
    fn flood_until_banned(p: &Plane, src: &str, n: u32) -> (u32, u32, u32) {
        let started = now_ns();
        let server = if src.contains(':') {
            "2001:db8::1"
        } else {
            SERVER
        };
        let frame = F::tcp(src, server).build();
        let (mut limited, mut banned) = (0, 0);
        for _ in 0..n {
            match p.run(&frame).counted {
                (action::DROP, reason::RATELIMIT) => limited += 1,
                (action::DROP, reason::BAN) => banned += 1,
                _ => {}
            }
        }
        let secs = (now_ns() - started) as f64 / 1e9;
        let allowed = (5.0 + 10.0 * secs + 2.0).ceil() as u32;
        (limited, banned, allowed.min(n))
    }

    fn banning_policy() -> Vec<Policy> {
        let mut spec = PolicySpec::simple("ban", Protocol::Tcp, &[(443, 443)], 10, 5);
        spec.ban_threshold = 5;
        spec.ban_time = Duration::from_secs(60);
        spec.to_abi()
    }

    #[test]
    fn exempt_ranges_and_verified_sources_are_rate_limited_but_never_banned() {
        let mut p = Plane::new();
        p.policies(&banning_policy());
        p.dp.set_ban_exempt(&[
            "192.0.2.0/28".parse().unwrap(),
            "2001:db8:7::/48".parse().unwrap(),
        ])
        .unwrap();
        // A partner's gateway in an exempt range, its address spoofed by a flood.
        let (limited, banned, allowed) = flood_until_banned(&p, "192.0.2.9", 100);
        assert_eq!(banned, 0, "an exempt source was banned");
        assert!(
            limited >= 100 - allowed,
            "but it is still rate-limited ({limited} dropped, {allowed} allowed)"
        );
        let (_, banned, _) = flood_until_banned(&p, "2001:db8:7::1", 100);
        assert_eq!(banned, 0);
        // A source that proved it can receive.
        let verified: std::net::IpAddr = "198.18.0.7".parse().unwrap();
        p.dp.set_verified(verified, now_ns() + 3_600_000_000_000)
            .unwrap();
        let (limited, banned, allowed) = flood_until_banned(&p, "198.18.0.7", 100);
        assert_eq!(banned, 0, "a verified source was banned");
        assert!(
            limited >= 100 - allowed,
            "{limited} dropped, {allowed} allowed"
        );
        // Just outside the exempt range: banned as usual.
        let (_, banned, _) = flood_until_banned(&p, "192.0.2.17", 100);
        assert!(
            banned > 0,
            "a source outside the exempt range was not banned"
        );
        let s = p.dp.stats().unwrap();
        assert!(s[stat::BAN_EXEMPT as usize] >= 2, "{s:?}");
        assert!(s[stat::BAN_SPARED_VERIFIED as usize] >= 1, "{s:?}");
        let bans: Vec<String> =
            p.dp.bans()
                .unwrap()
                .iter()
                .map(|b| b.0.to_string())
                .collect();
        assert_eq!(bans, ["192.0.2.17"]);
        // The set is replaced whole: the range is bannable again once it left.
        p.dp.set_ban_exempt(&[]).unwrap();
        let (_, banned, _) = flood_until_banned(&p, "192.0.2.10", 100);
        assert!(banned > 0);
    }

    #[test]
    fn a_full_ban_table_leaves_offenders_rate_limited() {
        let caps = rampart::config::Capacities {
            bans_v4: 2,
            ..test_capacities()
        };
        let mut p = Plane::with_capacities(caps);
        p.policies(&banning_policy());
        for src in ["192.0.2.1", "192.0.2.2"] {
            assert!(flood_until_banned(&p, src, 100).1 > 0, "{src} banned");
        }
        // The table is full: the third offender cannot be banned, and is still
        // held to its rate (never waved through).
        let (limited, banned, allowed) = flood_until_banned(&p, "192.0.2.3", 100);
        assert_eq!(banned, 0);
        assert!(
            limited >= 100 - allowed,
            "rate-limited: {limited} dropped, {allowed} allowed"
        );
        assert!(p.dp.stats().unwrap()[stat::BAN_TABLE_FULL as usize] > 0);
        assert_eq!(p.dp.bans().unwrap().len(), 2, "existing bans are kept");
    }
}
