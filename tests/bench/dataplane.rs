//! `cargo xtask bench` runs this: every scenario's per-packet cost
//! (BPF_PROG_TEST_RUN, repeated, several runs) and throughput over a veth
//! (a live-frames generator in one namespace, the filter under test attached
//! natively in another), with the empty XDP_DROP program, nftables and
//! iptables and xdp-filter (xdp-tools) measured in the same run. Every
//! per-packet scenario is checked to take the path it is named for (S1
//! passes, S2 drops as blocklisted, S3 as rate-limited) before it is timed. Writes raw figures as JSON to the path
//! in RAMPART_BENCH_OUT; xtask turns them into docs/benchmarks.md.
use std::{collections::BTreeMap, time::Instant};

use aya::{
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use aya_obj::programs::XdpAttachType;
use rampart::{
    datapath::{BENCH_OBJECT, Capacities, Datapath},
    policy::{PolicySpec, Protocol, SynCookies},
    prefix::Prefix,
};
use rampart_common::{
    abi::{ListEntry, MAX_IFACE_SLOTS, action, counter_index, reason},
    decide::List,
};
use rampart_tests::{
    frames::FrameBuilder,
    netns::{self, InNetns, Netns, Veth, XdpWire, sh},
};
use serde_json::{Value, json};

mod detector;

fn quick() -> bool {
    std::env::var("RAMPART_BENCH_QUICK").is_ok()
}

fn repeat() -> u32 {
    if quick() { 20_000 } else { 2_000_000 }
}

/// Runs per figure; medians of more runs ride out the noise of a shared
/// machine.
fn runs() -> usize {
    if quick() { 2 } else { 9 }
}

/// CPU time of the calling thread, in nanoseconds: unlike the wall clock it
/// leaves out time other tasks ran on this CPU (a test run yields when
/// another task is waiting), and unlike the kernel's own figure for a test
/// run it is not rounded to whole nanoseconds per packet (a 5% step at the
/// floor's 21 ns).
fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec, which lives on this stack frame.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "the thread CPU clock");
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Nanoseconds per packet of one run of `repeat()` packets. The syscall's
/// own cost, spread over millions of packets, is far below 0.01 ns.
fn ns_per_packet(prog: &Xdp, frame: &[u8]) -> f64 {
    let t = thread_cpu_ns();
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat: repeat(),
        ..TestRunOptions::default()
    })
    .expect("test run");
    (thread_cpu_ns() - t) as f64 / f64::from(repeat())
}

/// Median, min and max of a set of figures.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Pins the calling thread to one CPU, so a run never moves between CPUs
/// and their caches; returns the CPUs it could use before.
fn pin_to_last_cpu() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain bits; both calls only read and write the
    // sets passed, for the calling thread (pid 0).
    unsafe {
        let mut before: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of_val(&before), &mut before);
        let last = (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&c| libc::CPU_ISSET(c, &before))
            .unwrap_or(0);
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(last, &mut one);
        libc::sched_setaffinity(0, std::mem::size_of_val(&one), &one);
        before
    }
}

fn unpin(before: &libc::cpu_set_t) {
    // SAFETY: reads the set passed, for the calling thread (pid 0).
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of_val(before), before);
    }
}

/// What a scenario's program must do with its frame: the XDP return code
/// and, for Rampart, the action and reason its counters record.
#[derive(Clone, Copy)]
struct Expect {
    xdp: u32,
    counted: Option<(u8, u8)>,
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

impl Expect {
    const fn rampart(action: u8, reason: u8) -> Self {
        let xdp = match action {
            action::DROP => XDP_DROP,
            action::CHALLENGE => XDP_TX,
            _ => XDP_PASS,
        };
        Self {
            xdp,
            counted: Some((action, reason)),
        }
    }
}

/// The program a scenario times.
enum Subject {
    Rampart(Box<Datapath>),
    Peer(Box<Peer>),
}

/// xdp-filter's program, attached to a veth of its own namespace (which
/// lives as long as the scenario).
struct Peer {
    prog: Xdp,
    _ns: [Netns; 2],
    _veth: Veth,
}

impl Subject {
    fn prog(&self) -> &Xdp {
        match self {
            Self::Rampart(dp) => dp.program().expect("prog"),
            Self::Peer(peer) => &peer.prog,
        }
    }
}

/// One per-packet scenario: a loaded program, the frame it is fed, and the
/// verdict it must reach.
struct Scenario {
    name: String,
    subject: Subject,
    frame: Vec<u8>,
    expect: Expect,
}

/// Every Rampart counter, summed over CPUs and interface slots, by
/// (action, reason).
fn counted(dp: &Datapath) -> BTreeMap<(u8, u8), u64> {
    let c = dp.counters().expect("read the counters");
    let mut out = BTreeMap::new();
    for slot in 0..MAX_IFACE_SLOTS {
        for a in 0..action::COUNT as u8 {
            for r in 0..reason::COUNT as u8 {
                *out.entry((a, r)).or_insert(0) += c[counter_index(slot, a, r) as usize].packets;
            }
        }
    }
    out
}

/// Packets a verdict check runs after a warm-up that drains the flood
/// scenarios' buckets (256 sources x a burst of 100). Reading the counters
/// takes milliseconds, in which each source earns a token or two back: the
/// checked run is long enough that those passes stay far below 1%.
const VERDICT_WARMUP: u32 = 100_000;
const VERDICT_RUNS: u32 = 500_000;

/// Runs a scenario's frame and reads back what its program did: the XDP
/// return code and, for Rampart, the (action, reason) that took nearly all
/// of the packets. `ok` only if both are what the scenario is named for.
fn check_verdict(s: &Scenario) -> Value {
    let prog = s.subject.prog();
    let run = |repeat: u32| {
        prog.test_run(TestRunOptions {
            data_in: Some(&s.frame),
            repeat,
            ..TestRunOptions::default()
        })
        .expect("test run")
        .return_value
    };
    run(VERDICT_WARMUP);
    let before = match &s.subject {
        Subject::Rampart(dp) => Some(counted(dp)),
        Subject::Peer(_) => None,
    };
    let xdp = run(VERDICT_RUNS);
    let mut ok = xdp == s.expect.xdp;
    let mut out = json!({"xdp_return": xdp, "expected_xdp_return": s.expect.xdp});
    if let (Subject::Rampart(dp), Some(before), Some(want)) = (&s.subject, before, s.expect.counted)
    {
        let after = counted(dp);
        let delta: Vec<((u8, u8), u64)> = after
            .iter()
            .map(|(k, n)| (*k, n - before.get(k).copied().unwrap_or(0)))
            .collect();
        let total: u64 = delta.iter().map(|(_, n)| n).sum();
        let (top, n) = delta
            .iter()
            .max_by_key(|(_, n)| *n)
            .copied()
            .unwrap_or(((0, 0), 0));
        let share = n as f64 / total.max(1) as f64;
        ok &= top == want && share >= 0.99;
        let name = |(a, r): (u8, u8)| {
            format!(
                "{}/{}",
                action::NAMES[a as usize],
                reason::NAMES[r as usize]
            )
        };
        out["counted"] = json!(name(top));
        out["counted_share"] = json!(share);
        out["expected"] = json!(name(want));
    }
    out["ok"] = json!(ok);
    if !ok {
        eprintln!("{}: WRONG VERDICT {out}", s.name);
    }
    out
}

/// Measures every scenario in rounds, each run of a scenario right after a
/// run of the floor: its ratio to that floor is what the targets use. The
/// machine's speed drifts over seconds (other tenants, frequency), which
/// moves a figure measured a minute after the floor by more than the
/// margins being checked; a floor run beside each run cancels that drift.
fn measure_interleaved(
    floor: &Xdp,
    frame: &[u8],
    scenarios: &[Scenario],
) -> BTreeMap<String, Value> {
    let pinned = pin_to_last_cpu();
    let mut floors = Vec::new();
    let mut taken: Vec<(Vec<f64>, Vec<f64>)> =
        scenarios.iter().map(|_| Default::default()).collect();
    for _ in 0..runs() {
        for (s, (ns, ratios)) in scenarios.iter().zip(&mut taken) {
            let f = ns_per_packet(floor, frame);
            let x = ns_per_packet(s.subject.prog(), &s.frame);
            floors.push(f);
            ns.push(x);
            ratios.push(x / f);
        }
    }
    unpin(&pinned);
    let figure = |ns: Vec<f64>, ratios: Vec<f64>| {
        let n = ns.len();
        let (median_ns, min_ns, max_ns) = spread(ns);
        let (vs_floor, vs_floor_min, vs_floor_max) = spread(ratios);
        json!({"median_ns": median_ns, "min_ns": min_ns, "max_ns": max_ns, "runs": n, "repeat": repeat(),
               "vs_floor": vs_floor, "vs_floor_min": vs_floor_min, "vs_floor_max": vs_floor_max})
    };
    let mut out = BTreeMap::new();
    let ones = vec![1.0; floors.len()];
    out.insert("floor".to_string(), figure(floors, ones));
    for (s, (ns, ratios)) in scenarios.iter().zip(taken) {
        let mut x = figure(ns, ratios);
        x["verdict"] = check_verdict(s);
        out.insert(s.name.clone(), x);
    }
    out
}

/// The shipped capacities (the rate table's size matters to S4), with room
/// for the blocklist under test.
fn caps(block: u32) -> Capacities {
    Capacities {
        block_v4: block.max(1024),
        block_v6: 1 << 17,
        ..Capacities::default()
    }
}

/// The benchmark build loaded, with its prologue's control map.
struct Bench {
    dp: Datapath,
    mode: Array<aya::maps::MapData, u32>,
}

/// The shipped program, for scenarios with one source: the benchmark
/// build's prologue would only add its own cost to them.
fn load_shipped(block: u32) -> Datapath {
    Datapath::load(caps(block), None).expect("load the XDP program (root)")
}

fn load(block: u32) -> Bench {
    load_with(caps(block))
}

fn load_with(caps: Capacities) -> Bench {
    load_with_program("rampart_varied", caps)
}

/// The benchmark build with `program` as the one its `Datapath` runs.
fn load_with_program(program: &'static str, caps: Capacities) -> Bench {
    let mut dp = Datapath::load_object(BENCH_OBJECT, program, caps, None)
        .expect("load the benchmark build (root)");
    // Every program is loaded while the object still holds all its maps.
    dp.other_program("floor").expect("floor");
    dp.other_program("generator").expect("generator");
    let mode = Array::try_from(dp.raw_map("BENCH").expect("BENCH map")).expect("BENCH is an array");
    Bench { dp, mode }
}

impl std::ops::Deref for Bench {
    type Target = Datapath;
    fn deref(&self) -> &Datapath {
        &self.dp
    }
}

impl std::ops::DerefMut for Bench {
    fn deref_mut(&mut self) -> &mut Datapath {
        &mut self.dp
    }
}

/// Sets the source-varying prologue: 0 keep, 1 cycle over `n` (a power of
/// two: the prologue masks), 2 random.
fn vary(b: &mut Bench, mode: u32, n: u32) {
    assert!(n == 0 || n.is_power_of_two(), "cycle over a power of two");
    b.mode.set(0, mode, 0).expect("set mode");
    b.mode.set(1, n, 0).expect("set n");
}

fn web_policy(pps: u64, burst: u64) -> Vec<rampart_common::abi::Policy> {
    PolicySpec::simple("web", Protocol::Tcp, &[(443, 443)], pps, burst).to_abi()
}

/// The web policy without a newcomer budget: S4 measures the rate table
/// itself under a spoofed flood (every packet a newcomer that passes).
fn web_policy_unbudgeted(pps: u64, burst: u64) -> Vec<rampart_common::abi::Policy> {
    PolicySpec {
        new_sources_pps: 0,
        ..PolicySpec::simple("web", Protocol::Tcp, &[(443, 443)], pps, burst)
    }
    .to_abi()
}

/// S7: the web policy answering every SYN from an unverified source with a
/// SYN cookie.
fn cookie_policy() -> Vec<rampart_common::abi::Policy> {
    PolicySpec {
        syn_cookies: SynCookies::On,
        ..PolicySpec::simple("web", Protocol::Tcp, &[(443, 443)], 100, 100)
    }
    .to_abi()
}

/// S8: a UDP policy whose newcomer budget (1000/s, burst 2000) caps a
/// spoofed flood in total.
fn budget_policy() -> Vec<rampart_common::abi::Policy> {
    PolicySpec {
        new_sources_pps: 1000,
        new_sources_burst: Some(2000),
        ..PolicySpec::simple("dns", Protocol::Udp, &[(53, 53)], 100, 100)
    }
    .to_abi()
}

/// The SYN mode 3 of the prologue writes back before each run.
fn set_syn_template(b: &mut Bench, syn: &[u8]) {
    assert_eq!(syn.len(), 54, "the prologue rebuilds a 54-byte SYN");
    let mut t = [0u8; 64];
    t[..syn.len()].copy_from_slice(syn);
    let mut m: Array<_, [u8; 64]> =
        Array::try_from(b.dp.raw_map("BENCH_FRAME").expect("BENCH_FRAME map"))
            .expect("BENCH_FRAME is an array");
    m.set(0, t, 0).expect("set the SYN template");
}

/// A blocklist of `n` entries: 3/4 IPv4 addresses, 1/5 IPv4 /24s, the rest
/// IPv6 /48s; `target` is among the addresses.
fn fill_blocklist(dp: &mut Datapath, n: u32, target: &str) {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    dp.list_insert(
        List::Block,
        &target.parse().expect("target"),
        ListEntry::default(),
    )
    .expect("insert");
    for i in 1..n {
        let r = next();
        let p = match i % 20 {
            0..=14 => Prefix::new_masked(
                std::net::IpAddr::from(((r as u32) | 0x0100_0000).to_be_bytes()),
                32,
            ),
            15..=18 => Prefix::new_masked(std::net::IpAddr::from((r as u32).to_be_bytes()), 24),
            _ => {
                let mut a = [0u8; 16];
                a[..8].copy_from_slice(&r.to_be_bytes());
                a[0] = 0x20;
                Prefix::new_masked(std::net::IpAddr::from(a), 48)
            }
        };
        dp.list_insert(List::Block, &p, ListEntry::default())
            .expect("insert");
    }
}

/// The per-packet part, on a thread of its own in a network namespace of
/// its own with a listener on S7's port and `tcp_syncookies = 2`: a test
/// run's packets arrive in the caller's namespace, where the program asks
/// for the listener's cookie.
fn per_packet_beside_a_listener() -> BTreeMap<String, Value> {
    std::thread::spawn(|| {
        netns::isolate_this_thread(2).expect("a namespace for the per-packet part");
        let _listener = std::net::TcpListener::bind("[::]:443").expect("listen on S7's port");
        per_packet()
    })
    .join()
    .expect("the per-packet part")
}

fn per_packet() -> BTreeMap<String, Value> {
    let pass = FrameBuilder::tcp("192.0.2.10", "198.51.100.1").build();
    let blocked = FrameBuilder::tcp("198.18.7.7", "198.51.100.1").build();
    let flood = FrameBuilder::tcp("10.0.0.1", "198.51.100.1").build();
    let mut scenarios = Vec::new();
    let mut add = |name: String, dp: Datapath, frame: &[u8], expect: Expect| {
        scenarios.push(Scenario {
            name,
            subject: Subject::Rampart(Box::new(dp)),
            frame: frame.to_vec(),
            expect,
        });
    };
    let pass_expect = Expect::rampart(action::PASS, reason::NONE);
    let flood_expect = Expect::rampart(action::DROP, reason::RATELIMIT);
    // `cargo xtask bench --self-check` breaks S2 on purpose: its blocklist
    // holds the address next to the one it sends, so its packets pass, and
    // the bench must report the scenario as failed.
    let s2_listed = if std::env::var("RAMPART_BENCH_BREAK").is_ok_and(|b| b == "S2") {
        "198.18.7.8"
    } else {
        "198.18.7.7"
    };

    // S1: legitimate traffic under its limit, policies and lists loaded.
    let mut dp = load_shipped(1024);
    dp.set_policies(&web_policy(1 << 30, 1 << 30))
        .expect("policies");
    fill_blocklist(&mut dp, 1000, "198.18.7.7");
    add("S1 pass".into(), dp, &pass, pass_expect);

    // S1 with the traffic detector watching the policy: what `detect`
    // costs a packet.
    let mut dp = load_shipped(1024);
    let watched: Vec<_> = PolicySpec {
        detect: rampart::policy::Detect::Alert,
        ..PolicySpec::simple("web", Protocol::Tcp, &[(443, 443)], 1 << 30, 1 << 30)
    }
    .to_abi();
    dp.set_policies(&watched).expect("policies");
    fill_blocklist(&mut dp, 1000, "198.18.7.7");
    add(
        "S1 pass, watched by the detector".into(),
        dp,
        &pass,
        pass_expect,
    );

    // S2: a blocklisted source, lists of growing size.
    for n in [1u32, 10_000, 100_000, 1_000_000] {
        if quick() && n > 10_000 {
            continue;
        }
        let mut dp = load_shipped(n);
        dp.set_policies(&web_policy(1 << 30, 1 << 30))
            .expect("policies");
        let t = Instant::now();
        fill_blocklist(&mut dp, n, s2_listed);
        eprintln!(
            "S2: {n} entries loaded in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        add(
            format!("S2 blocklist {n}"),
            dp,
            &blocked,
            Expect::rampart(action::DROP, reason::BLOCKLIST),
        );
    }

    // S3: floods from 1, 16 and 256 sources, over their limit.
    for n in [1u32, 16, 256] {
        let mut b = load(1024);
        b.set_policies(&web_policy(100, 100)).expect("policies");
        vary(&mut b, 1, n);
        add(format!("S3 flood {n} sources"), b.dp, &flood, flood_expect);
    }

    // S4: a spoofed flood, a new random source every packet, into the rate
    // table itself (no newcomer budget: S8 has one).
    let mut b = load(1024);
    b.set_policies(&web_policy_unbudgeted(100, 100))
        .expect("policies");
    vary(&mut b, 2, 0);
    // Every packet a newcomer with a full bucket: they pass.
    add("S4 spoofed flood".into(), b.dp, &flood, pass_expect);
    // For comparison, not a target: the same flood into a rate table four
    // times the default, which no longer fits in cache.
    let big = 4 * Capacities::default().rate_sets;
    let mut b = load_with(Capacities {
        rate_sets: big,
        ..caps(1024)
    });
    b.set_policies(&web_policy_unbudgeted(100, 100))
        .expect("policies");
    vary(&mut b, 2, 0);
    add(
        format!("S4 spoofed flood, 4x rate table ({} sources)", big * 4),
        b.dp,
        &flood,
        pass_expect,
    );
    // S7: a spoofed SYN flood at a port in cookie mode, a listener behind
    // it: every SYN answered with a SYN-ACK. The prologue writes the SYN
    // back over the last answer first; S7's own cost is this scenario's
    // less that prologue's, measured alone.
    let syn = FrameBuilder::tcp("10.0.0.1", "198.51.100.1")
        .payload(0)
        .build();
    let mut b = load(1024);
    b.set_policies(&cookie_policy()).expect("policies");
    set_syn_template(&mut b, &syn);
    vary(&mut b, 3, 0);
    add(
        "S7 SYN cookie answer".into(),
        b.dp,
        &syn,
        Expect::rampart(action::CHALLENGE, reason::SYN_COOKIE),
    );
    let mut b = load_with_program("syn_rebuild", caps(1024));
    set_syn_template(&mut b, &syn);
    vary(&mut b, 3, 0);
    add(
        "S7 SYN rebuild alone".into(),
        b.dp,
        &syn,
        Expect {
            xdp: XDP_DROP,
            counted: None,
        },
    );
    // S8: a spoofed UDP flood over the newcomer budget: dropped in total.
    let udp = FrameBuilder::udp("10.0.0.1", "198.51.100.1", 53).build();
    let mut b = load(1024);
    b.set_policies(&budget_policy()).expect("policies");
    vary(&mut b, 2, 0);
    add(
        "S8 spoofed UDP flood, newcomer budget".into(),
        b.dp,
        &udp,
        Expect::rampart(action::DROP, reason::NEWCOMER),
    );
    scenarios.push(xdp_filter_scenario(&blocked));

    let mut floor = load(1024);
    let floor = floor.dp.other_program("floor").expect("floor");
    measure_interleaved(floor, &pass, &scenarios)
}

/// xdp-filter (xdp-tools), the XDP peer: loaded natively on a veth of its
/// own namespace with the blocked frame's source in its list, its program
/// pinned and opened so it can be test-run like Rampart's.
fn xdp_filter_scenario(blocked: &[u8]) -> Scenario {
    let ns = Netns::new("rb-xf").expect("netns");
    let other = Netns::new("rb-xf2").expect("netns");
    let veth = Veth::new("rbxf0", &ns, &[], "rbxf1", &other, &[]).expect("veth");
    load_xdp_filter(&ns, "rbxf0", "198.18.7.7");
    let pin = "/sys/fs/bpf/rampart-bench-xdp-filter";
    let _ = std::fs::remove_file(pin);
    let id = attached_prog_id(&ns, "rbxf0");
    sh(&["bpftool", "prog", "pin", "id", &id.to_string(), pin]).expect("pin xdp-filter's program");
    let prog = Xdp::from_pin(pin, XdpAttachType::Interface).expect("open xdp-filter's program");
    let _ = std::fs::remove_file(pin);
    Scenario {
        name: "xdp-filter blocklist 1".into(),
        subject: Subject::Peer(Box::new(Peer {
            prog,
            _ns: [ns, other],
            _veth: veth,
        })),
        frame: blocked.to_vec(),
        expect: Expect {
            xdp: XDP_DROP,
            counted: None,
        },
    }
}

/// Loads xdp-filter natively on `dev` in `ns`, dropping packets from `src`.
/// It runs in the namespace's network only (nsenter), so it finds the
/// host's bpffs for its pins.
fn load_xdp_filter(ns: &Netns, dev: &str, src: &str) {
    let netns = format!("--net=/run/netns/{}", ns.name);
    let xf = |args: &[&str]| {
        let mut full = vec!["nsenter", netns.as_str(), "xdp-filter"];
        full.extend_from_slice(args);
        sh(&full)
    };
    let _ = xf(&["unload", dev]);
    xf(&["load", dev, "-m", "native"]).expect("xdp-filter load (apt-get install xdp-tools)");
    xf(&["ip", src, "-m", "src"]).expect("xdp-filter ip");
}

fn unload_xdp_filter(ns: &Netns, dev: &str) {
    let netns = format!("--net=/run/netns/{}", ns.name);
    let _ = sh(&["nsenter", netns.as_str(), "xdp-filter", "unload", dev]);
}

/// The id of the XDP program attached to `dev` in `ns`.
fn attached_prog_id(ns: &Netns, dev: &str) -> u64 {
    let out = ns
        .exec(&["ip", "-d", "-j", "link", "show", dev])
        .expect("ip link");
    let v: Value = serde_json::from_str(&out).expect("ip -j output");
    v[0]["xdp"]["prog"]["id"]
        .as_u64()
        .expect("an XDP program attached")
}

fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    let out = ns
        .exec(&["ip", "-s", "-j", "link", "show", dev])
        .unwrap_or_default();
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap_or(0)
}

/// Sends `count` frames from the generator out of `dev` (in `ns`) in
/// live-frames mode; returns the seconds it took.
fn generate(gen_prog: &Xdp, ns: &Netns, dev: &str, frame: &[u8], count: u32) -> f64 {
    let _in = InNetns::enter(ns).expect("enter generator namespace");
    let ifindex = rampart::host::ifindex(dev).expect("generator interface");
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let t = Instant::now();
    gen_prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::default()
        })
        .expect("live-frames generator");
    t.elapsed().as_secs_f64()
}

/// A filter on the receiving veth. Each is set up for one measurement and
/// taken down after it, so that every filter is measured in every round and
/// drift of the machine's speed over a minute falls on all of them alike.
#[derive(Clone, Copy)]
enum Filter {
    /// The empty XDP_DROP program.
    Floor,
    /// The shipped program, the generator's first source blocklisted or not.
    Rampart { blocked: bool },
    /// An nftables ruleset at netdev ingress.
    Nft(&'static str),
    /// iptables raw with hashlimit per source.
    Hashlimit,
    /// xdp-filter (xdp-tools) attached natively, dropping the generator's
    /// first source.
    XdpTools,
    /// The shipped program, its web policy in SYN cookie mode (S7).
    RampartCookies,
    /// The shipped program, a UDP policy with a newcomer budget (S8).
    RampartBudget,
    /// No filter: the kernel's own SYN cookies answer (S7's baseline).
    KernelCookies,
}

const NFT_SET_DROP: &str = "table netdev rb {\n  set blk {\n    type ipv4_addr\n    flags interval\n    elements = { 10.0.0.1, 198.18.0.0/15 }\n  }\n  chain in {\n    type filter hook ingress device rbd0 priority 0;\n    ip saddr @blk drop\n  }\n}\n";
const NFT_METER: &str = "table netdev rb {\n  chain in {\n    type filter hook ingress device rbd0 priority 0;\n    meter m { ip saddr limit rate over 100/second } drop\n  }\n}\n";
const HASHLIMIT: [&str; 16] = [
    "-A",
    "PREROUTING",
    "-i",
    "rbd0",
    "-m",
    "hashlimit",
    "--hashlimit-above",
    "100/second",
    "--hashlimit-mode",
    "srcip",
    "--hashlimit-name",
    "rb",
    "-j",
    "DROP",
    "-t",
    "raw",
];

/// What the generator sends (its source-varying mode and source count,
/// a TCP SYN or a UDP datagram) into which filter.
struct Row {
    name: &'static str,
    filter: Filter,
    mode: u32,
    n: u32,
    udp: bool,
}

impl Row {
    const fn tcp(name: &'static str, filter: Filter, mode: u32, n: u32) -> Self {
        Self {
            name,
            filter,
            mode,
            n,
            udp: false,
        }
    }
}

/// The DUT side: the programs that can be attached and the namespace.
struct Receiver<'a> {
    dut: &'a Netns,
    floor: Bench,
    rampart: Datapath,
    cookies: Datapath,
    budget: Datapath,
    blocked: bool,
}

/// The MAC address of `dev` in `ns`.
fn mac_of(ns: &Netns, dev: &str) -> [u8; 6] {
    let out = ns
        .exec(&["cat", &format!("/sys/class/net/{dev}/address")])
        .expect("the interface's address");
    let mut mac = [0u8; 6];
    for (b, h) in mac.iter_mut().zip(out.trim().split(':')) {
        *b = u8::from_str_radix(h, 16).expect("a MAC address");
    }
    mac
}

/// Fills in the TCP checksum of an untagged IPv4 TCP frame without options.
fn set_tcp_checksum(f: &mut [u8]) {
    let seg = f[34..].to_vec();
    let mut sum = f[26..34].to_vec();
    sum.extend_from_slice(&[0, 6]);
    sum.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    let mut seg = seg;
    seg[16] = 0;
    seg[17] = 0;
    sum.extend_from_slice(&seg);
    let c = rampart_tests::frames::checksum(&sum);
    f[50..52].copy_from_slice(&c.to_be_bytes());
}

/// A counter of the DUT namespace's `/proc/net/snmp` (`Ip:` or `Tcp:`
/// lines) or `/proc/net/netstat` (`TcpExt:`).
fn ns_counter(ns: &Netns, file: &str, prefix: &str, name: &str) -> u64 {
    let text = ns.exec(&["cat", file]).unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (Some(head), Some(vals)) = (lines.next(), lines.next()) else {
        return 0;
    };
    let Some(col) = head.split_whitespace().position(|h| h == name) else {
        return 0;
    };
    vals.split_whitespace()
        .nth(col)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// SYN cookies the DUT's kernel sent, and IP packets its stack received.
fn kernel_counts(dut: &Netns) -> (u64, u64) {
    (
        ns_counter(dut, "/proc/net/netstat", "TcpExt:", "SyncookiesSent"),
        ns_counter(dut, "/proc/net/snmp", "Ip:", "InReceives"),
    )
}

/// Runs `f` with `p` attached natively to the receiving veth.
fn with_xdp<R>(dut: &Netns, p: &mut Xdp, f: impl FnOnce() -> R) -> R {
    let id = {
        let _in = InNetns::enter(dut).expect("enter");
        p.attach("rbd0", XdpMode::Driver).expect("attach natively")
    };
    let r = f();
    p.detach(id).expect("detach");
    r
}

/// Runs `f` with a kernel-stack filter that `setup` installs and `teardown`
/// removes. Without an XDP program, a veth takes frames its peer sends with
/// XDP_TX only in NAPI (GRO) mode, so GRO is on meanwhile.
fn with_stack<R>(dut: &Netns, setup: &[&str], teardown: &[&str], f: impl FnOnce() -> R) -> R {
    let gro = |on| {
        dut.exec(&["ethtool", "-K", "rbd0", "gro", on])
            .expect("set GRO on the receiving veth");
    };
    gro("on");
    dut.exec(setup).expect("install the filter");
    let r = f();
    let _ = dut.exec(teardown);
    gro("off");
    r
}

impl Receiver<'_> {
    /// Sets `filter` up, runs `f`, takes it down.
    fn with<R>(&mut self, filter: Filter, f: impl FnOnce() -> R) -> R {
        match filter {
            Filter::Floor => {
                let p = self.floor.dp.other_program("floor").expect("floor");
                with_xdp(self.dut, p, f)
            }
            Filter::Rampart { blocked } => {
                if blocked != self.blocked {
                    let src = "10.0.0.1".parse().expect("prefix");
                    if blocked {
                        self.rampart
                            .list_insert(List::Block, &src, ListEntry::default())
                            .expect("block");
                    } else {
                        self.rampart
                            .list_remove(List::Block, &src)
                            .expect("unblock");
                    }
                    self.blocked = blocked;
                }
                with_xdp(self.dut, self.rampart.program_mut().expect("prog"), f)
            }
            Filter::Nft(rules) => {
                let path = std::env::temp_dir().join("rampart-bench.nft");
                std::fs::write(&path, rules).expect("write nft rules");
                let setup = ["nft", "-f", path.to_str().unwrap_or_default()];
                with_stack(
                    self.dut,
                    &setup,
                    &["nft", "delete", "table", "netdev", "rb"],
                    f,
                )
            }
            Filter::XdpTools => {
                load_xdp_filter(self.dut, "rbd0", "10.0.0.1");
                let r = f();
                unload_xdp_filter(self.dut, "rbd0");
                r
            }
            Filter::RampartCookies => {
                with_xdp(self.dut, self.cookies.program_mut().expect("prog"), f)
            }
            Filter::RampartBudget => {
                with_xdp(self.dut, self.budget.program_mut().expect("prog"), f)
            }
            // Its SYN-ACKs need a route back to their spoofed sources.
            Filter::KernelCookies => {
                let _pass =
                    XdpWire::attach(self.dut, "rbd0", &["10.250.0.1".parse().expect("address")])
                        .expect("XDP_PASS on the DUT's veth");
                let _ = self
                    .dut
                    .exec(&["ip", "route", "add", "default", "via", "10.250.0.2"]);
                let r = f();
                let _ = self.dut.exec(&["ip", "route", "del", "default"]);
                r
            }
            Filter::Hashlimit => {
                let mut setup = vec!["iptables"];
                setup.extend(HASHLIMIT);
                with_stack(
                    self.dut,
                    &setup,
                    &["iptables", "-t", "raw", "-F", "PREROUTING"],
                    f,
                )
            }
        }
    }
}

fn throughput() -> BTreeMap<String, Value> {
    let gen_ns = Netns::new("rb-gen").expect("netns");
    let dut = Netns::new("rb-dut").expect("netns");
    let _veth = Veth::new(
        "rbg0",
        &gen_ns,
        &["10.250.0.2/24"],
        "rbd0",
        &dut,
        &["10.250.0.1/24"],
    )
    .expect("veth");
    let count: u32 = if quick() { 200_000 } else { 5_000_000 };
    // Addressed to the DUT's MAC, with a correct TCP checksum: the kernel
    // stack takes only such frames (S7's baseline).
    let dut_mac = mac_of(&dut, "rbd0");
    let mut frame = FrameBuilder::tcp("10.0.0.1", "10.250.0.1").build();
    frame[..6].copy_from_slice(&dut_mac);
    // S7's rows: a bare SYN that the generator writes whole each time.
    let mut syn = FrameBuilder::tcp("10.0.0.1", "10.250.0.1")
        .payload(0)
        .build();
    syn[..6].copy_from_slice(&dut_mac);
    set_tcp_checksum(&mut syn);
    let mut gen_dp = load(1024);
    set_syn_template(&mut gen_dp, &syn);

    // Rampart, the shipped program (the generator varies the sources): S2
    // (a blocked source, 100k entries), S3 (256 sources), S4 (spoofed).
    let mut rampart = load_shipped(1 << 17);
    rampart
        .set_policies(&web_policy(100, 100))
        .expect("policies");
    fill_blocklist(
        &mut rampart,
        if quick() { 1000 } else { 100_000 },
        "10.0.0.1",
    );
    // S7: the kernel issues cookies for a listener on the web port behind
    // the DUT's veth (what the agent sets for cookie mode); the listener
    // exists only in S7's rows, so that SYNs other rows pass meet none.
    // The generator's end takes SYN-ACKs as a wire would: to spoofed
    // addresses they go nowhere.
    dut.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_syncookies=2"])
        .expect("tcp_syncookies in the DUT namespace");
    let _wire = XdpWire::attach(&gen_ns, "rbg0", &["10.250.0.2".parse().expect("address")])
        .expect("XDP on the generator's end");
    let mut cookies = load_shipped(1024);
    cookies.set_policies(&cookie_policy()).expect("policies");
    let mut budget = load_shipped(1024);
    budget.set_policies(&budget_policy()).expect("policies");
    let mut rx = Receiver {
        dut: &dut,
        floor: load(1024),
        rampart,
        cookies,
        budget,
        blocked: true,
    };
    let mut rows = vec![
        Row::tcp("floor", Filter::Floor, 0, 0),
        Row::tcp(
            "rampart S2 blocklist",
            Filter::Rampart { blocked: true },
            0,
            0,
        ),
        Row::tcp(
            "rampart S3 256 sources",
            Filter::Rampart { blocked: false },
            1,
            256,
        ),
        Row::tcp(
            "rampart S4 spoofed",
            Filter::Rampart { blocked: false },
            2,
            0,
        ),
        // Mode 4: the SYN written whole from a random source, checksums
        // right: the kernel's own cookies need them (the program does not).
        Row::tcp(
            "rampart S7 spoofed SYNs, SYN cookies",
            Filter::RampartCookies,
            4,
            0,
        ),
        Row::tcp(
            "kernel SYN cookies, spoofed SYNs",
            Filter::KernelCookies,
            4,
            0,
        ),
        Row {
            udp: true,
            ..Row::tcp(
                "rampart S8 spoofed UDP, newcomer budget",
                Filter::RampartBudget,
                2,
                0,
            )
        },
        Row::tcp("xdp-filter blocklist", Filter::XdpTools, 0, 0),
        Row::tcp("nftables set drop", Filter::Nft(NFT_SET_DROP), 0, 0),
        Row::tcp("nftables meter 256 sources", Filter::Nft(NFT_METER), 1, 256),
        Row::tcp("nftables meter spoofed", Filter::Nft(NFT_METER), 2, 0),
    ];
    let mut probe = vec!["iptables"];
    probe.extend(HASHLIMIT);
    match dut.exec(&probe) {
        Ok(_) => {
            let _ = dut.exec(&["iptables", "-t", "raw", "-F", "PREROUTING"]);
            rows.push(Row::tcp(
                "iptables hashlimit 256 sources",
                Filter::Hashlimit,
                1,
                256,
            ));
        }
        Err(e) => eprintln!("iptables hashlimit unavailable: {e:?}"),
    }

    let mut udp = FrameBuilder::udp("10.0.0.1", "10.250.0.1", 53).build();
    udp[..6].copy_from_slice(&dut_mac);
    let mut rates: Vec<Vec<f64>> = rows.iter().map(|_| Vec::new()).collect();
    // S7: what reached the DUT's stack, of what was sent.
    let mut s7_reached = (0u64, 0u64);
    for _ in 0..runs().min(5) {
        for (row, rates) in rows.iter().zip(&mut rates) {
            vary(&mut gen_dp, row.mode, row.n);
            let generator = gen_dp.dp.other_program("generator").expect("generator");
            let cookies = matches!(row.filter, Filter::RampartCookies | Filter::KernelCookies);
            let frame = match (row.udp, cookies) {
                (true, _) => &udp,
                (_, true) => &syn,
                _ => &frame,
            };
            let _listener = cookies.then(|| {
                let _in = InNetns::enter(&dut).expect("enter the DUT namespace");
                std::net::TcpListener::bind("10.250.0.1:443").expect("S7's listener")
            });
            let (handled, secs, reached) = rx.with(row.filter, || {
                let before = rx_packets(&dut, "rbd0");
                let (cookies0, stack0) = kernel_counts(&dut);
                let secs = generate(generator, &gen_ns, "rbg0", frame, count);
                std::thread::sleep(std::time::Duration::from_millis(200));
                let (cookies1, stack1) = kernel_counts(&dut);
                // The kernel's baseline counts the SYNs it answered; a
                // filter, every frame the veth took in (each one decided).
                let handled = match row.filter {
                    Filter::KernelCookies => cookies1 - cookies0,
                    _ => rx_packets(&dut, "rbd0") - before,
                };
                (handled, secs, stack1 - stack0)
            });
            if matches!(row.filter, Filter::RampartCookies) {
                s7_reached.0 += reached;
                s7_reached.1 += u64::from(count);
            }
            rates.push(handled as f64 / secs / 1e6);
        }
    }

    // Each rate against the meter's in the same round.
    let meter = rows
        .iter()
        .position(|r| r.name == "nftables meter 256 sources")
        .map(|i| rates[i].clone())
        .expect("the meter row");
    // S7 against the kernel's own SYN cookies, round by round.
    let kernel = rows
        .iter()
        .position(|r| matches!(r.filter, Filter::KernelCookies))
        .map(|i| rates[i].clone())
        .expect("the kernel cookies row");
    let mut out = BTreeMap::new();
    out.insert(
        "S7 flood share reaching the stack".to_string(),
        json!({"reached": s7_reached.0, "sent": s7_reached.1,
               "share": s7_reached.0 as f64 / s7_reached.1.max(1) as f64}),
    );
    for (row, rates) in rows.iter().zip(rates) {
        let vs_kernel: Vec<f64> = rates.iter().zip(&kernel).map(|(r, k)| r / k).collect();
        let (vs_kernel_cookies, _, _) = spread(vs_kernel);
        let ratios = rates.iter().zip(&meter).map(|(r, m)| r / m).collect();
        let (vs_meter, vs_meter_min, vs_meter_max) = spread(ratios);
        let (median, min, max) = spread(rates);
        eprintln!("throughput {}: {median:.2} Mpps", row.name);
        out.insert(
            row.name.to_string(),
            json!({"median_mpps": median, "min_mpps": min, "max_mpps": max, "frames": count,
                   "vs_meter": vs_meter, "vs_meter_min": vs_meter_min, "vs_meter_max": vs_meter_max,
                   "vs_kernel_cookies": vs_kernel_cookies}),
        );
    }
    out
}

/// S6: the control plane with a live agent: a 1M-entry import, the agent's
/// memory with it, `block add` to enforcement, and a scrape during a flood.
fn control_plane() -> BTreeMap<String, Value> {
    use rampart_tests::lab::Lab;
    let mut out = BTreeMap::new();
    let n: u32 = if quick() { 10_000 } else { 1_000_000 };
    let mut lab = Lab::new("bs", 91, "").expect("lab");
    let feed_file = lab.dir.join("feed.txt");
    lab.write_config(&format!(
        // Every version is new: the change cap is off.
        "[capacity]\nblock_v4 = 3000000\n\n[[feed]]\nname = \"big\"\nsource = \"{}\"\nrefresh = \"1h\"\nmax_change_percent = 0\n",
        feed_file.display()
    ))
    .expect("config");
    lab.start().expect("agent");
    let file = lab.dir.join("import.txt");
    let mut text = String::with_capacity(n as usize * 16);
    let mut x = 0x9e37_79b9u32;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        // Public-looking space, away from the lab's 10.91.0.0/24.
        let a = (x | 0x0100_0000) & 0xdfff_ffff;
        if i % 5 == 4 {
            let _ = std::fmt::Write::write_fmt(
                &mut text,
                format_args!("{}/24\n", std::net::Ipv4Addr::from(a & 0xffff_ff00)),
            );
        } else {
            let _ = std::fmt::Write::write_fmt(
                &mut text,
                format_args!("{}\n", std::net::Ipv4Addr::from(a)),
            );
        }
    }
    std::fs::write(&file, text).expect("write import file");
    let rss = |lab: &Lab| -> u64 {
        let pid = lab.agent_pid().unwrap_or(0);
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024
    };
    let rss_before = rss(&lab);
    let t = Instant::now();
    lab.cli_ok(&["block", "import", file.to_str().unwrap_or_default()])
        .expect("import");
    let import_s = t.elapsed().as_secs_f64();
    let rss_after = rss(&lab);
    eprintln!(
        "S6: {n} entries imported in {import_s:.2}s; agent RSS {} MiB",
        rss_after >> 20
    );
    out.insert("import".into(), json!({"entries": n, "seconds": import_s, "rss_before_bytes": rss_before, "rss_after_bytes": rss_after}));

    // The same size as a feed: fetched, parsed, guarded and swapped in
    // atomically (staged, one generation flip, clean-up).
    let feed: String = (0..n)
        .map(|i| format!("{}\n", std::net::Ipv4Addr::from(0x0b00_0000u32 + i * 3)))
        .collect();
    std::fs::write(&feed_file, feed).expect("write feed");
    let t = Instant::now();
    lab.cli_ok(&["feeds", "refresh", "big"])
        .expect("feed refresh");
    let feed_s = t.elapsed().as_secs_f64();
    let rss_feed = rss(&lab);
    eprintln!(
        "S6: a {n}-entry feed swapped in in {feed_s:.2}s; agent RSS {} MiB",
        rss_feed >> 20
    );
    out.insert(
        "feed".into(),
        json!({"entries": n, "seconds": feed_s, "rss_after_bytes": rss_feed}),
    );

    // block add -> enforcement: the map is updated before the CLI returns,
    // so the CLI's round trip bounds it; a packet sent right after must drop.
    let target = lab.client_ips[1].clone();
    let mut times = Vec::new();
    for _ in 0..(if quick() { 3 } else { 15 }) {
        let t = Instant::now();
        lab.cli_ok(&["block", "add", &target]).expect("block add");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(
            lab.ping(&target, 1, "0.2"),
            0,
            "not enforced right after block add"
        );
        lab.cli_ok(&["block", "del", &target]).expect("block del");
    }
    times.sort_by(f64::total_cmp);
    out.insert("block add to enforcement".into(), json!({"median_ms": times[times.len() / 2], "max_ms": times[times.len() - 1], "note": "CLI round trip including process start; the map is updated before it returns"}));

    // A scrape during a flood from the client namespace.
    let mut flood = lab
        .cli
        .command("hping3")
        .args(["--flood", "-S", "-p", "443", "-q", &lab.server_ip])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("hping3");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut scrapes = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let (code, _) = lab.http_get("/metrics");
        scrapes.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(code, 200);
    }
    let _ = flood.kill();
    let _ = flood.wait();
    scrapes.sort_by(f64::total_cmp);
    out.insert("scrape during flood".into(), json!({"median_ms": scrapes[scrapes.len() / 2], "max_ms": scrapes[scrapes.len() - 1], "note": "curl in the agent's namespace, including process start"}));
    out
}

/// S5: a legitimate TCP client of a real service (Python's HTTP server in
/// the server namespace), without attack, during an S3 flood (one source,
/// SYNs to the service's port, over its limit) and during an S4 flood (a
/// random source per packet): success rate and latency of its requests.
fn legit_client() -> BTreeMap<String, Value> {
    use rampart_tests::lab::Lab;
    const PORT: &str = "8080";
    let requests = if quick() { 10 } else { 60 };
    let mut lab = Lab::new(
        "b5",
        93,
        "[[policy]]\nname = \"web\"\nprotocol = \"tcp\"\nports = [\"8080\"]\npps = 200\nburst = 400\n",
    )
    .expect("lab");
    // The S7 phase's SYN-ACKs leave by XDP_TX: the client's end delivers
    // its own and drops those to the spoofed sources, as a network would.
    let local: Vec<std::net::Ipv4Addr> = lab
        .client_ips
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let _wire = XdpWire::attach(&lab.cli, "b51", &local).expect("XDP on the client's veth");
    lab.start().expect("agent");
    let mut server = lab
        .srv
        .command("python3")
        .args(["-m", "http.server", PORT, "--bind", &lab.server_ip])
        .current_dir(&lab.dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 http.server");
    let url = format!("http://{}:{PORT}/", lab.server_ip);
    let client = lab.client_ips[0].clone();
    let ready = rampart_tests::lab::eventually(10, || {
        lab.cli
            .exec(&["curl", "-s", "-o", "/dev/null", "--max-time", "1", &url])
            .is_ok()
    });
    assert!(ready, "the service did not come up");
    let phase = |what: &str| -> Value {
        let mut ok = 0u32;
        let mut ms = Vec::new();
        for _ in 0..requests {
            let out = lab
                .cli
                .exec(&[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "--interface",
                    &client,
                    "--max-time",
                    "2",
                    "-w",
                    "%{http_code} %{time_total}",
                    &url,
                ])
                .unwrap_or_default();
            let mut f = out.split_whitespace();
            if f.next() == Some("200") {
                ok += 1;
                if let Some(t) = f.next().and_then(|t| t.parse::<f64>().ok()) {
                    ms.push(t * 1000.0);
                }
            }
        }
        ms.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            ms.get(((ms.len() as f64 - 1.0) * q).round() as usize)
                .copied()
        };
        eprintln!("S5 {what}: {ok}/{requests} requests succeeded");
        json!({"requests": requests, "succeeded": ok, "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": ms.last().copied()})
    };
    let mut out = BTreeMap::new();
    out.insert("no attack".into(), phase("no attack"));
    let flood = |extra: &[&str]| {
        let mut args = vec!["--flood", "-S", "-p", PORT, "-q"];
        args.extend_from_slice(extra);
        args.push(&lab.server_ip);
        lab.cli
            .command("hping3")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("hping3")
    };
    for (name, extra) in [
        (
            "during S3 flood (one source)",
            vec!["-a", lab.client_ips[2].as_str()],
        ),
        ("during S4 flood (random sources)", vec!["--rand-source"]),
    ] {
        let dropped = lab.counter("drop", "ratelimit");
        let seen = packets_seen(&lab);
        let mut f = flood(&extra);
        std::thread::sleep(std::time::Duration::from_secs(1));
        let mut r = phase(name);
        let _ = f.kill();
        let _ = f.wait();
        // The flood was real: what the rate limit dropped meanwhile.
        r["flood_dropped"] = json!(lab.counter("drop", "ratelimit") - dropped);
        // ... and what the program saw, whatever it did with it: a spoofed
        // flood passes (every source is new), so drops alone prove nothing.
        r["flood_seen"] = json!(packets_seen(&lab) - seen);
        out.insert(name.into(), r);
    }
    // S7's phase: the same policy in SYN cookie mode, under a spoofed SYN
    // flood; the flood is answered, not dropped.
    lab.write_config(
        "[[policy]]\nname = \"web\"\nprotocol = \"tcp\"\nports = [\"8080\"]\npps = 200\nburst = 400\nsyn_cookies = \"on\"\n",
    )
    .expect("config");
    lab.cli_ok(&["reload"]).expect("reload into cookie mode");
    let name = "during S7 flood (random sources, SYN cookies)";
    let answered = lab.counter("challenge", "syn_cookie");
    let seen = packets_seen(&lab);
    let mut f = flood(&["--rand-source"]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut r = phase(name);
    let _ = f.kill();
    let _ = f.wait();
    r["flood_answered"] = json!(lab.counter("challenge", "syn_cookie") - answered);
    r["flood_seen"] = json!(packets_seen(&lab) - seen);
    out.insert(name.into(), r);
    let _ = server.kill();
    let _ = server.wait();
    out
}

/// Every packet the agent's program counted, whatever its verdict.
fn packets_seen(lab: &rampart_tests::lab::Lab) -> u64 {
    let rows = lab.cli_json(&["stats"]).unwrap_or_default();
    rows.as_array()
        .into_iter()
        .flatten()
        .map(|r| r["packets"].as_u64().unwrap_or(0))
        .sum()
}

/// One part of the benchmark: its name and what runs it (raw figures by
/// scenario).
type Part = (&'static str, fn() -> BTreeMap<String, Value>);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let machine = json!({
        "kernel": sh(&["uname", "-r"]).unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()),
        "quick": quick(),
    });
    // RAMPART_BENCH_ONLY=per_packet (or throughput, legit_client,
    // control_plane, detector; comma separated) runs a subset while working on one part.
    let only = std::env::var("RAMPART_BENCH_ONLY").unwrap_or_default();
    let parts: [Part; 5] = [
        ("per_packet", per_packet_beside_a_listener),
        ("throughput", throughput),
        ("legit_client", legit_client),
        ("control_plane", control_plane),
        ("detector", detector::detector),
    ];
    let mut report = json!({ "machine": machine });
    for (name, run) in parts {
        let wanted = only.is_empty() || only.split(',').any(|p| p == name);
        report[name] = json!(if wanted { run() } else { BTreeMap::new() });
    }
    let text = serde_json::to_string_pretty(&report).expect("json");
    match std::env::var("RAMPART_BENCH_OUT") {
        Ok(p) => std::fs::write(p, text).expect("write results"),
        Err(_) => println!("{text}"),
    }
}
