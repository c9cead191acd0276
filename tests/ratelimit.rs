//! Rate limits, bans and the full-table behaviour, through BPF_PROG_TEST_RUN.
//! Expected counts are computed from the elapsed time actually measured, so
//! a slow machine changes the numbers, not the verdict.
use std::{thread::sleep, time::Duration};

use rampart::policy::{PolicySpec, Protocol};
use rampart_common::abi::{Policy, action, reason, stat};
use rampart_tests::{frames::FrameBuilder as F, harness::*};

const SERVER: &str = "198.51.100.1";

fn policy(pps: u64, burst: u64) -> Policy {
    PolicySpec::simple("test", Protocol::Tcp, &[(443, 443)], pps, burst).to_abi()[0]
}

/// Sends `frame` every `gap` until `total` elapses; returns (sent, passed,
/// measured seconds).
fn paced(plane: &Plane, frame: &[u8], gap: Duration, total: Duration) -> (u64, u64, f64) {
    let start = now_ns();
    let (mut sent, mut passed) = (0, 0);
    while now_ns() - start < total.as_nanos() as u64 {
        sent += 1;
        if plane.dp.test_run(frame).unwrap() == XDP_PASS {
            passed += 1;
        }
        sleep(gap);
    }
    (sent, passed, (now_ns() - start) as f64 / 1e9)
}

#[test]
fn twice_the_rate_keeps_about_half() {
    let mut p = Plane::new();
    let (pps, burst) = (200, 20);
    p.policies(&[policy(pps, burst)]);
    let frame = F::tcp("192.0.2.50", SERVER).build();
    // About 400 packets a second for 2 s.
    let (sent, passed, secs) = paced(
        &p,
        &frame,
        Duration::from_micros(2500),
        Duration::from_secs(2),
    );
    let allowed = burst as f64 + pps as f64 * secs;
    let expected = allowed.min(sent as f64);
    // Tolerance: 10% plus two clock ticks' worth of tokens (the program reads
    // the coarse monotonic clock).
    let tol = expected * 0.10 + 2.0 * pps as f64 * 0.004;
    assert!(
        (passed as f64 - expected).abs() <= tol,
        "sent {sent} in {secs:.2}s, passed {passed}, expected {expected:.0} +/- {tol:.0}"
    );
    assert!(
        sent as f64 > 1.5 * allowed,
        "the test did not send at about twice the rate"
    );
}

#[test]
fn a_source_under_its_rate_loses_nothing() {
    let mut p = Plane::new();
    p.policies(&[policy(200, 20)]);
    let frame = F::tcp("192.0.2.51", SERVER).build();
    // About 100 a second: half the rate, with relative sleeps (never catching up).
    let (sent, passed, _) = paced(
        &p,
        &frame,
        Duration::from_millis(10),
        Duration::from_secs(1),
    );
    assert_eq!(passed, sent, "an under-rate source lost packets");
}

#[test]
fn bans_start_after_the_threshold_and_end_after_their_time() {
    let mut p = Plane::new();
    let mut spec = PolicySpec::simple("ban", Protocol::Tcp, &[(443, 443)], 10, 5);
    spec.ban_threshold = 20;
    spec.ban_time = Duration::from_secs(1);
    spec.ban_max = Duration::from_secs(10);
    p.policies(&spec.to_abi());
    let frame = F::tcp("192.0.2.52", SERVER).build();
    let mut ratelimited = 0;
    let mut first_ban = None;
    for i in 0..100 {
        let out = p.run(&frame);
        match out.counted {
            (action::DROP, reason::RATELIMIT) => ratelimited += 1,
            (action::DROP, reason::BAN) => {
                first_ban.get_or_insert(i);
            }
            _ => {}
        }
    }
    let first_ban = first_ban.expect("the source was never banned");
    assert_eq!(ratelimited, 20, "the ban starts at exactly the threshold");
    assert!(
        first_ban >= 25,
        "banned after the burst and 20 drops, at {first_ban}"
    );
    let bans = p.dp.bans().unwrap();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].0.to_string(), "192.0.2.52");
    let first = bans[0].1;
    assert_eq!(first.offences, 1);
    assert_eq!(p.dp.stats().unwrap()[stat::BANS_STARTED as usize], 1);

    // After the ban time the source is metered again (its bucket refilled).
    sleep(Duration::from_millis(1100));
    assert_eq!(p.run(&frame).counted, (action::PASS, reason::NONE));

    // A repeat offence doubles the ban.
    for _ in 0..100 {
        p.run(&frame);
    }
    let bans = p.dp.bans().unwrap();
    let second = bans[0].1;
    assert_eq!(second.offences, 2);
    let dur = |b: &rampart_common::abi::BanEntry, start: u64| b.expires_ns - start;
    let started_second = second.expires_ns - 2_000_000_000;
    assert!(dur(&second, started_second) == 2_000_000_000);
    assert!(second.expires_ns > first.expires_ns + 1_000_000_000);
}

#[test]
fn ipv6_sources_in_one_64_share_a_bucket() {
    let mut p = Plane::new();
    p.policies(&[policy(1, 5)]);
    for i in 0..5 {
        let src = format!("2001:db8:5:6::{:x}", i + 1);
        assert_eq!(p.run(&F::tcp(&src, "2001:db8::1").build()).xdp, XDP_PASS);
    }
    // A sixth address in the same /64: the shared bucket is empty.
    let out = p.run(&F::tcp("2001:db8:5:6::ffff", "2001:db8::1").build());
    assert_eq!(out.counted, (action::DROP, reason::RATELIMIT));
    // Another /64 has its own bucket.
    let out = p.run(&F::tcp("2001:db8:5:7::1", "2001:db8::1").build());
    assert_eq!(out.counted, (action::PASS, reason::NONE));
}

#[test]
fn policies_match_by_protocol_and_port_and_fragments_meet_portless_ones() {
    let mut p = Plane::new();
    let web = PolicySpec::simple("web", Protocol::Tcp, &[(443, 443), (8000, 8080)], 1, 1);
    let udp_any = PolicySpec::simple("udp", Protocol::Udp, &[], 1, 1);
    let mut all: Vec<Policy> = web.to_abi();
    all.extend(udp_any.to_abi());
    p.policies(&all);
    let src = "192.0.2.60";
    let hit = |p: &Plane, f: &F| p.run_both(&f.build()).counted;
    assert_eq!(
        hit(&p, &F::new(src, SERVER, 6, 1, 8080)),
        (action::PASS, reason::NONE)
    );
    assert_eq!(
        hit(&p, &F::new(src, SERVER, 6, 1, 8080)),
        (action::DROP, reason::RATELIMIT)
    );
    // Port 22 matches no policy.
    for _ in 0..3 {
        assert_eq!(
            hit(&p, &F::new(src, SERVER, 6, 1, 22)),
            (action::PASS, reason::NONE)
        );
    }
    // A later TCP fragment has no port: the port policy cannot match it.
    for _ in 0..3 {
        let f = F::new(src, SERVER, 6, 1, 443).fragment(100, false);
        assert_eq!(hit(&p, &f), (action::PASS, reason::NONE));
    }
    // UDP fragments meet the port-less UDP policy.
    let f = F::udp(src, SERVER, 53).fragment(100, false);
    assert_eq!(hit(&p, &f), (action::PASS, reason::NONE));
    assert_eq!(hit(&p, &f), (action::DROP, reason::RATELIMIT));
}

#[test]
fn a_full_rate_table_meters_newcomers_and_keeps_tracked_sources() {
    let mut p = Plane::new();
    p.policies(&[policy(1, 3)]);
    let legit = F::tcp("192.0.2.70", SERVER).build();
    for _ in 0..3 {
        assert_eq!(p.run(&legit).xdp, XDP_PASS);
    }
    // A spoofed flood: far more sources than the table's 1024 slots.
    let (mut passed, mut dropped) = (0, 0);
    for i in 0..8000u32 {
        let src = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        // The bare test run: fast enough that the tracked source's bucket
        // cannot refill during the flood.
        match p.dp.test_run(&F::tcp(&src, SERVER).build()).unwrap() {
            XDP_PASS => passed += 1,
            _ => dropped += 1,
        }
    }
    let stats = p.dp.stats().unwrap();
    assert!(
        stats[stat::RATE_OVERFLOW as usize] > 0,
        "the table never filled"
    );
    assert!(
        passed > 0 && dropped > 0,
        "newcomers were all {}",
        if passed == 0 { "dropped" } else { "passed" }
    );
    // The tracked source kept its (empty) bucket: not reset by the flood.
    assert_eq!(p.run(&legit).counted, (action::DROP, reason::RATELIMIT));
}

#[test]
fn ways_of_quiet_sources_go_to_newcomers_and_of_active_ones_do_not() {
    let mut p = Plane::new();
    let mut pol = policy(1, 1);
    // Long enough that the flood below ends well before a way can idle out.
    pol.idle_ns = 2_000_000_000;
    p.policies(&[pol]);
    let send = |p: &Plane, round: u32, n: u32| {
        (0..n)
            .filter(|i| {
                let src = format!("10.{round}.{}.{}", (i >> 8) & 255, i & 255);
                p.dp.test_run(&F::tcp(&src, SERVER).build()).unwrap() == XDP_PASS
            })
            .count() as u64
    };
    let evictions = |p: &Plane| p.dp.stats().unwrap()[stat::RATE_EVICTIONS as usize];
    // Four times the table's 1024 ways: every set fills.
    let start = now_ns();
    send(&p, 1, 4096);
    assert!(
        p.dp.stats().unwrap()[stat::RATE_OVERFLOW as usize] > 0,
        "the table never filled"
    );
    let before = evictions(&p);
    send(&p, 2, 256);
    assert!(
        now_ns() - start < pol.idle_ns,
        "the flood took longer than the idle time"
    );
    assert_eq!(evictions(&p), before, "ways of active sources were taken");
    // Once every source has been quiet for the idle time, a newcomer takes
    // a way, with a full bucket. Up to 256 newcomers in 256 sets of four
    // ways: a few sets get more than four, so not every one finds a way.
    sleep(Duration::from_nanos(pol.idle_ns) + Duration::from_millis(300));
    let passed = send(&p, 3, 256);
    let taken = evictions(&p) - before;
    assert!(
        taken >= 240,
        "only {taken} of 256 newcomers took an idle way"
    );
    assert!(passed >= 240, "only {passed} of 256 newcomers passed");
}
