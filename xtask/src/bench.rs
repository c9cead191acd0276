//! `cargo xtask bench`: runs the data-plane benchmark (tests/bench) and
//! turns its raw figures into docs/benchmarks.md, docs/bench-results.json
//! and docs/benchmarks.svg. Figures are ratios against baselines measured in
//! the same run: these machines are shared and noisy.
use std::fmt::Write as _;

use anyhow::Context;
use serde_json::Value;

use crate::cmd::{self, root};

pub fn run(quick: bool) -> anyhow::Result<()> {
    run_with(quick, false)
}

/// `report_only`: re-render the docs from docs/bench-results.json.
pub fn run_with(quick: bool, report_only: bool) -> anyhow::Result<()> {
    let docs = root().join("docs");
    std::fs::create_dir_all(&docs)?;
    // A smoke run leaves the committed figures alone.
    let json_path = if quick {
        std::env::temp_dir().join("rampart-bench-smoke.json")
    } else {
        docs.join("bench-results.json")
    };
    let path = json_path.to_str().context("path")?.to_string();
    // S6 measures the agent as shipped: the release binary.
    let agent = root().join("target/release/rampart");
    let agent = agent.to_str().context("path")?.to_string();
    let mut env = vec![
        ("RAMPART_BENCH_OUT", path.as_str()),
        ("RAMPART_BIN", agent.as_str()),
    ];
    if quick {
        env.push(("RAMPART_BENCH_QUICK", "1"));
    }
    if !report_only {
        crate::build()?;
        cmd::cargo_env(
            &["bench", "-p", "rampart-tests", "--bench", "dataplane"],
            &env,
        )?;
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json_path)?)?;
    if quick {
        // A smoke run keeps the code from rotting; it does not overwrite docs.
        println!(
            "bench smoke run: {}",
            serde_json::to_string(&v["per_packet"])?
        );
        return Ok(());
    }
    std::fs::write(docs.join("benchmarks.svg"), svg(&v))?;
    std::fs::write(docs.join("benchmarks.md"), report(&v))?;
    println!("wrote docs/benchmarks.md, docs/benchmarks.svg, docs/bench-results.json");
    Ok(())
}

fn ns(v: &Value, k: &str) -> f64 {
    v["per_packet"][k]["median_ns"].as_f64().unwrap_or(f64::NAN)
}

/// A scenario's cost over the floor's: the median of its runs' ratios to
/// the floor run just before each, so drift of the machine's speed between
/// scenarios cancels out.
fn vs_floor(v: &Value, k: &str) -> f64 {
    v["per_packet"][k]["vs_floor"].as_f64().unwrap_or(f64::NAN)
}

/// A filter's throughput over the nftables meter's: the median of the
/// ratios of runs in the same round.
fn vs_meter(v: &Value, k: &str) -> f64 {
    v["throughput"][k]["vs_meter"].as_f64().unwrap_or(f64::NAN)
}

struct Target {
    what: String,
    limit: String,
    measured: String,
    met: bool,
    /// Distance to the limit as a fraction of it; negative when missed.
    headroom: f64,
}

/// Which side of its limit a figure must stay on.
#[derive(Clone, Copy)]
enum Bound {
    AtMost,
    Below,
    AtLeast,
}

/// How a figure and its limit are printed.
#[derive(Clone, Copy)]
enum Unit {
    Ratio,
    Seconds,
    MiB,
    Ms,
}

impl Unit {
    fn measured(self, x: f64) -> String {
        match self {
            Self::Ratio => format!("{x:.2}x"),
            Self::Seconds => format!("{x:.2} s"),
            Self::MiB => format!("{x:.0} MiB"),
            Self::Ms => format!("{x:.1} ms"),
        }
    }

    fn limit(self, x: f64) -> String {
        match self {
            Self::Ratio => format!("{x:.1}x"),
            Self::Seconds => format!("{x} s"),
            Self::MiB => format!("{x} MiB"),
            Self::Ms => format!("{x} ms"),
        }
    }
}

impl Target {
    /// A figure against a limit stated once: the limit's text, whether it
    /// was met and the headroom all come from it.
    fn new(what: impl Into<String>, x: f64, bound: Bound, limit: f64, unit: Unit) -> Self {
        let (sign, met, headroom) = match bound {
            Bound::AtMost => ("<=", x <= limit, (limit - x) / limit),
            Bound::Below => ("<", x < limit, (limit - x) / limit),
            Bound::AtLeast => (">=", x >= limit, (x - limit) / limit),
        };
        Self {
            what: what.into(),
            limit: format!("{sign} {}", unit.limit(limit)),
            measured: unit.measured(x),
            met,
            headroom,
        }
    }

    /// Counts as met only if `ok` holds too (the run measured enough).
    fn provided(mut self, ok: bool) -> Self {
        self.met &= ok;
        self
    }
}

fn targets(v: &Value) -> Vec<Target> {
    use Bound::{AtLeast, AtMost, Below};
    let mut t = Vec::new();
    let per_packet = v["per_packet"].as_object().cloned().unwrap_or_default();
    for k in per_packet
        .keys()
        .filter(|k| k.starts_with("S1") || k.starts_with("S2") || k.starts_with("S3"))
    {
        t.push(Target::new(
            format!("{k}: cost / floor"),
            vs_floor(v, k),
            AtMost,
            3.0,
            Unit::Ratio,
        ));
    }
    t.push(Target::new(
        "S4 spoofed flood / S3 flood from 256 sources",
        vs_floor(v, "S4 spoofed flood") / vs_floor(v, "S3 flood 256 sources"),
        AtMost,
        1.5,
        Unit::Ratio,
    ));
    t.push(Target::new(
        "S2 with 1M entries / S2 with 1 entry",
        vs_floor(v, "S2 blocklist 1000000") / vs_floor(v, "S2 blocklist 1"),
        AtMost,
        1.2,
        Unit::Ratio,
    ));
    let cp = &v["control_plane"];
    let f = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
    let import = f(&cp["import"]["seconds"]);
    let entries = cp["import"]["entries"].as_u64().unwrap_or(0);
    t.push(
        Target::new(
            format!("S6 import of {entries} entries"),
            import,
            AtMost,
            2.0,
            Unit::Seconds,
        )
        .provided(entries >= 1_000_000),
    );
    let rss = f(&cp["import"]["rss_after_bytes"]) / 1048576.0;
    t.push(
        Target::new(
            format!("S6 agent resident memory with {entries} entries"),
            rss,
            AtMost,
            256.0,
            Unit::MiB,
        )
        .provided(entries >= 1_000_000),
    );
    if cp["feed"].is_object() {
        let n = cp["feed"]["entries"].as_u64().unwrap_or(0);
        t.push(
            Target::new(
                format!("S6 feed of {n} entries fetched, parsed and swapped in atomically"),
                f(&cp["feed"]["seconds"]),
                AtMost,
                2.0,
                Unit::Seconds,
            )
            .provided(n >= 1_000_000),
        );
    }
    t.push(Target::new(
        "S6 `block add` to enforcement (CLI round trip, median)",
        f(&cp["block add to enforcement"]["median_ms"]),
        Below,
        10.0,
        Unit::Ms,
    ));
    t.push(Target::new(
        "S6 metrics scrape during a flood (worst of 10)",
        f(&cp["scrape during flood"]["max_ms"]),
        Below,
        50.0,
        Unit::Ms,
    ));
    if let Some(phases) = v["legit_client"].as_object() {
        for (k, x) in phases {
            let ok = x["succeeded"].as_u64().unwrap_or(0);
            let n = x["requests"].as_u64().unwrap_or(0);
            t.push(Target {
                what: format!("S5 legitimate client, {k}: requests that succeeded"),
                limit: "all".into(),
                measured: format!("{ok}/{n}"),
                met: n > 0 && ok == n,
                // All or nothing: no margin to speak of.
                headroom: f64::INFINITY,
            });
        }
    }
    for k in ["rampart S2 blocklist", "rampart S3 256 sources"] {
        t.push(Target::new(
            format!("throughput {k} / nftables meter"),
            vs_meter(v, k),
            AtLeast,
            3.0,
            Unit::Ratio,
        ));
    }
    t
}

/// The S5 table: one row per phase.
fn s5_table(v: &Value) -> String {
    let mut s = String::from(
        "| phase | succeeded | p50 | p99 | max | flood dropped |\n|---|---|---|---|---|---|\n",
    );
    let ms = |x: &Value| {
        x.as_f64()
            .map_or_else(|| "-".to_string(), |m| format!("{m:.1} ms"))
    };
    for (k, x) in v["legit_client"].as_object().cloned().unwrap_or_default() {
        let _ = writeln!(
            s,
            "| {k} | {}/{} | {} | {} | {} | {} |",
            x["succeeded"],
            x["requests"],
            ms(&x["p50_ms"]),
            ms(&x["p99_ms"]),
            ms(&x["max_ms"]),
            x["flood_dropped"]
                .as_u64()
                .map_or("-".into(), |n| n.to_string()),
        );
    }
    s
}

/// One line on the targets of this run, for the notes under the tables.
fn verdict(v: &Value) -> String {
    let all = targets(v);
    let missed: Vec<&str> = all
        .iter()
        .filter(|t| !t.met)
        .map(|t| t.what.as_str())
        .collect();
    // Ratios on this shared machine move a few percent from run to run.
    let close: Vec<String> = all
        .iter()
        .filter(|t| t.met && t.headroom < 0.05)
        .map(|t| format!("{} ({}, limit {})", t.what, t.measured, t.limit))
        .collect();
    let close = if close.is_empty() {
        String::new()
    } else {
        format!(
            " Within 5% of their limits, inside this machine's run-to-run spread, so a re-run can miss them: {}.",
            close.join("; ")
        )
    };
    if missed.is_empty() {
        format!("All {} targets were met in this run.{close}", all.len())
    } else {
        format!(
            "{} of {} targets were missed in this run: {}. The issue stays open until they are met.{close}",
            missed.len(),
            all.len(),
            missed.join("; ")
        )
    }
}

fn report(v: &Value) -> String {
    let m = &v["machine"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Benchmarks\n\nReproduce with `cargo xtask bench` (as root; about ten minutes). Every figure\nbelow was measured in one run on the machine described; compare ratios, not\nabsolute times across runs.\n"
    );
    let _ = writeln!(
        s,
        "Machine: {} CPUs ({}), kernel {}.\n",
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "## Targets\n\n| target | limit | measured | |\n|---|---|---|---|"
    );
    for t in targets(v) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            t.what,
            t.limit,
            t.measured,
            if t.met { "met" } else { "**missed**" }
        );
    }
    let f = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
    let _ = writeln!(
        s,
        "\n## Per-packet cost\n\n`BPF_PROG_TEST_RUN`, {} repetitions per run, timed around the call (the kernel\nreports whole nanoseconds, a 5% step at the floor), by a thread pinned to one CPU.\nThe scenarios are measured in {} rounds, and in each round every scenario's run\ncomes right after a run of the floor: `vs floor` is the median of those paired\nratios, and the targets use it. This machine's speed drifts over seconds (other\ntenants); a floor measured once, a minute before a scenario, moved ratios by more\nthan 10% between runs of the bench, while the paired ratios hold. S1 and S2\n(one source) run the shipped program. Multi-source scenarios run a benchmark build\nwhose prologue rewrites the IPv4 source on every packet (cycling through N sources,\nor random for S4), so they are not one-key hot-cache figures; that prologue costs\na few ns, included in S3 and S4.\n\n![per-packet cost](benchmarks.svg)\n\n| scenario | ns/packet | min-max | vs floor | min-max |\n|---|---|---|---|---|",
        v["per_packet"]["floor"]["repeat"], v["per_packet"]["S1 pass"]["runs"]
    );
    for (k, x) in v["per_packet"].as_object().cloned().unwrap_or_default() {
        let med = f(&x["median_ns"]);
        let _ = writeln!(
            s,
            "| {k} | {med:.1} | {:.1}-{:.1} | {:.2}x | {:.2}-{:.2}x |",
            f(&x["min_ns"]),
            f(&x["max_ns"]),
            f(&x["vs_floor"]),
            f(&x["vs_floor_min"]),
            f(&x["vs_floor_max"]),
        );
    }
    let _ = writeln!(
        s,
        "\n## Throughput over veth\n\nA live-frames generator (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`,\nXDP_TX) in one namespace sends {} frames per run into a veth whose peer, in\nanother namespace, runs the filter under test (the shipped program attached\nnatively, or nftables/iptables in the kernel stack); the generator varies the\nsources. Rate = frames the receiving veth counted / generator time. The filters\nare measured in rounds, each filter set up, run once and taken down in every\nround; `vs nftables meter` is the median of the ratios to the meter's run in\nthe same round. On a 2-vCPU VM generator and receiver share\nthe CPU the generator runs on (veth processes XDP_TX frames in the sender's\nNAPI context), so these are lower bounds for a real NIC.\nThreaded NAPI on the receiving veth, pinned to the other CPU, was tried: the floor\nreached 13 Mpps, but every XDP filter's rate then varied by half from run to run\n(frames and their pages crossing CPUs), so receiver and generator share one CPU.\n\n| filter | Mpps | min-max | vs nftables meter | min-max |\n|---|---|---|---|---|",
        v["throughput"]["floor"]["frames"]
    );
    for (k, x) in v["throughput"].as_object().cloned().unwrap_or_default() {
        let _ = writeln!(
            s,
            "| {k} | {:.2} | {:.2}-{:.2} | {:.2}x | {:.2}-{:.2}x |",
            f(&x["median_mpps"]),
            f(&x["min_mpps"]),
            f(&x["max_mpps"]),
            f(&x["vs_meter"]),
            f(&x["vs_meter_min"]),
            f(&x["vs_meter_max"]),
        );
    }
    let _ = writeln!(
        s,
        "\n## Where the cost goes\n\n{verdict}\n\n- **Calls are the cost.** This machine's kernel returns from every function\n  through the SRSO \"safe RET\" thunk (see\n  `/sys/devices/system/cpu/vulnerabilities/spec_rstack_overflow`), so every\n  call and return is dear: a helper call, and a hash-map lookup (which calls\n  into the kernel's hash code). Array-map lookups and `bpf_jiffies64` are\n  inlined by the verifier and cost no call. The empty floor program makes none.\n- **Addresses travel as words.** The BPF backend splits a `[u8; 16]` into\n  sixteen scalars, so parsing, masking and hashing an address cost hundreds of\n  instructions; a profile of the JIT image (`perf record -e cpu-clock`, mapped\n  to source lines through the program's line info) showed it as the largest\n  part. Addresses are two native-order words (`abi::Addr`). Experimental\n  builds measured here: S1 144 -> 103 ns, S2 84 -> 60 ns, S3 100 -> 70 ns.\n- **The clock is read once per tick.** `bpf_ktime_get_coarse_ns` only moves\n  with the tick, so each CPU caches it against `jiffies` (an inlined load):\n  about 15 ns off every metered packet.\n- **S1: a /24 summary of the IPv4 lists.** Legitimate traffic used to miss one\n  hash probe per prefix length in use (/32 and /24 here). One bit per /24 and\n  list (`V4_SLASH24`, an array map) says whether the /24 holds any entry of /24\n  or longer; a clear bit skips those probes. The agent maintains it beside the\n  prefix-length counts and rewrites it whole when it re-adopts pinned maps; the\n  reference model computes it from the entries, so the differential tests check\n  it. S1 went from about 95 to 55 ns.\n- **S2: lists in array maps.** A hash-map probe calls into the kernel's hash\n  code (`htab_map_hash`, `lookup_nulls_elem_raw`, `memcmp`, each a call and a\n  return), which kept S2 at about 2.9x the floor (60 ns). Each list is now an\n  array of four-slot buckets: the agent places a key in the emptier of its two\n  buckets (a keyed hash; a table has twice as many slots as its capacity), and\n  the rare key whose buckets are both full goes to a small spill hash map,\n  flagged per bucket. A probe reads at most eight slots, with lookups the\n  verifier inlines. It is a BPF global function, one per table, so the\n  verifier checks it once: inlined at every prefix length of every list, the\n  probes passed its limit of one million instructions. It returns a scalar\n  (found, and the entry's flags, expiry applied), since memory shared with the\n  caller costs a copy each way. The parsed packet keeps its ports 4-byte\n  aligned: with a call in the program, LLVM merges their two 16-bit stores\n  into one 32-bit stack store, which the verifier refuses when misaligned. S2\n  went from about 60 to 50 ns; the probe's call and return (through the thunk\n  above) are now most of what a probe costs.\n- **S4 / S3: what a newcomer reads fits in a core's cache.** A spoofed flood\n  reads a random set of the rate table on every packet. A set was two cache\n  lines (tags and last-use times, then tokens) with the overflow bucket in\n  another map: each packet of a spoofed flood read two random lines out of\n  2.5 MiB, more than this CPU's 1 MiB L2, and S4 cost 75-90 ns (1.35-1.45x S3\n  when the machine was quiet, over 1.7x when it was not). What a newcomer\n  reads is now 32 bytes per set: the tags, the oldest way's last use in ~1 ms\n  ticks (if even that way is busy, so is every way) and the overflow bucket,\n  two sets to a line, 512 KiB for the default 16,384 sets. The ways' buckets\n  (one line per set) and the ban counts and byte buckets (a line that only\n  policies using them touch) are maps of their own. S4 went to about 65 ns,\n  and the four-times table from about 170 to 80 ns. A spoofed flood fills a\n  table of any size within milliseconds, so a larger table buys room for\n  legitimate sources in calm times, not resilience under attack; sources\n  already tracked keep their buckets (S5).\n- **Throughput vs the nftables meter** follows the per-packet cost: the\n  generator is not the limit, the receiving CPU is. The spoofed flood's\n  throughput is low for every filter because its packets pass: each new source\n  starts with a full bucket, so they go up the receiving stack.\n- The lookup cost does not grow with the list (S2 at 1M entries costs the same\n  as at 1), which is the property the design was chosen for.\n- **S6:** the import inserts in key order and writes batches to the kernel from\n  two threads. List slots are read and written through a\n  mapping of the table (a memory-mappable array), with no syscall per slot; a\n  new slot is written whole but unmarked, then marked after a fence, so the\n  program never reads a key beside half its entry; the feed swap computes its changes with sorted merges and looks\n  each arrival up once. Memory freed by a bulk change is returned to the system\n  (`malloc_trim`), so resident memory shows what the agent holds. After the\n  feed the agent holds two million entries (the import and the feed), which is\n  why its resident memory roughly doubles there.\n\n## Legitimate client (S5)\n\nA real service (Python's HTTP server) in the server namespace behind the agent,\nwith a `web` policy of 200 packets/s per source on its port. A client makes\nsequential requests with curl from its own address: without attack, during an\nhping3 SYN flood from one source over its limit (S3), and during a SYN flood\nwith a random source on every packet (S4). `flood dropped` is what the rate\nlimit dropped while the client ran, so the flood was there.\n\n{s5}\n## Control plane (S6)\n\nA live agent in a namespace: `rampart block import` of a generated file (4/5\naddresses, 1/5 /24s) through the control socket and batch map updates; the\nagent's resident memory after it; `rampart block add` timed end to end (the map\nis updated before the command returns, and a packet sent right after is checked\nto be dropped); a one-million-entry feed file applied with `rampart feeds\nrefresh` (fetch, parse, guards, staged swap); `/metrics` fetched ten times\nduring an hping3 SYN flood. The agent is the release build. Times include\nstarting the `rampart`/`curl` process.\n\nRaw figures: [bench-results.json](bench-results.json).",
        s5 = s5_table(v),
        verdict = verdict(v)
    );
    s
}

fn svg(v: &Value) -> String {
    let items: Vec<(String, f64, f64)> = v["per_packet"]
        .as_object()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, x)| {
            let ratio = x["vs_floor"].as_f64().unwrap_or(f64::NAN);
            (k, x["median_ns"].as_f64().unwrap_or(0.0), ratio)
        })
        .collect();
    let max = items.iter().map(|(_, x, _)| *x).fold(1.0, f64::max);
    let (w, row, left) = (760.0, 26.0, 230.0);
    let h = row * items.len() as f64 + 50.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><text x="10" y="18" font-size="14">Per-packet cost (median ns, BPF_PROG_TEST_RUN)</text>"#
    );
    let floor = ns(v, "floor");
    for (i, (k, x, ratio)) in items.iter().enumerate() {
        let y = 30.0 + row * i as f64;
        let bw = (w - left - 90.0) * x / max;
        let color = if k == "floor" { "gray" } else { "steelblue" };
        let _ = write!(
            s,
            r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{k}</text><rect x="{left}" y="{:.0}" width="{bw:.1}" height="{:.0}" fill="{color}"/><text x="{:.1}" y="{:.0}">{x:.1} ns ({:.1}x)</text>"#,
            left - 8.0,
            y + 14.0,
            y + 2.0,
            row - 6.0,
            left + bw + 6.0,
            y + 14.0,
            ratio
        );
    }
    let fx = left + (w - left - 90.0) * 3.0 * floor / max;
    let _ = write!(
        s,
        r#"<line x1="{fx:.1}" y1="26" x2="{fx:.1}" y2="{:.0}" stroke="crimson" stroke-dasharray="4"/><text x="{fx:.1}" y="{:.0}" fill="crimson">3x floor</text></svg>"#,
        h - 14.0,
        h - 2.0
    );
    s
}
