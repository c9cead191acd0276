//! The traffic detector's figures: how long a live agent takes from the
//! start of a spoofed SYN flood to an anomaly and to its defence engaged;
//! false alarms over a replayed benign day; and the agent's CPU for the
//! detector with 16 policies, against the same agent with detection off.
use std::{
    collections::BTreeMap,
    thread::sleep,
    time::{Duration, Instant},
};

use rampart::anomaly::{Change, Detector, Settings};
use rampart_tests::{
    lab::{Lab, eventually},
    web::{SpoofedFlood, WEB_PORT, Web, get, lab},
};
use serde_json::{Value, json};

use crate::quick;

pub(crate) fn detector() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    out.insert("latency".into(), latency());
    out.insert("benign replay".into(), benign_replay());
    out.insert("cpu".into(), cpu());
    out
}

fn engaged(lab: &Lab) -> bool {
    lab.cli_json(&["status"])
        .is_ok_and(|s| s["flood"]["policies"][0]["engaged"] == true)
}

fn active_anomalies(lab: &Lab) -> usize {
    lab.cli_json(&["anomalies"])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|a| a["active"] == true)
        .count()
}

/// Attack start to anomaly start, and to the cookies engaged, over a few
/// floods after a learnt client load. The policy's own SYN-rate trigger is
/// out of reach, so only the detector engages the defence.
fn latency() -> Value {
    let floods = if quick() { 1 } else { 5 };
    let (lab, _wire) = lab(
        "bd",
        95,
        &format!(
            "[detect]\nlearning = \"20s\"\nhalf_life = \"60s\"\ncalm = 3\n\n[[policy]]\nname = \"web\"\nprotocol = \"tcp\"\nports = [{WEB_PORT}]\npps = 500\nburst = 1000\nsyn_cookies = \"auto\"\nsyn_cookies_above = 10000000\ndetect = \"defend\"\n"
        ),
    )
    .expect("lab");
    let _web = Web::start(&lab).expect("web server");
    let client = lab.client_ips[0].clone();
    let learnt = eventually(90, || {
        get(&lab, &client);
        lab.cli_json(&["status"])
            .is_ok_and(|s| s["detector"][0]["learning"] == false)
    });
    assert!(learnt, "the detector never finished learning");
    let (mut to_anomaly, mut to_engaged) = (Vec::new(), Vec::new());
    for _ in 0..floods {
        // A few seconds of the normal load between floods.
        for _ in 0..30 {
            get(&lab, &client);
            sleep(Duration::from_millis(100));
        }
        let flood = SpoofedFlood::start(&lab, &["-S", "-p", &WEB_PORT.to_string()]);
        let start = Instant::now();
        let (mut a, mut e) = (None, None);
        while start.elapsed() < Duration::from_secs(10) && (a.is_none() || e.is_none()) {
            let t = start.elapsed().as_secs_f64();
            if a.is_none() && active_anomalies(&lab) > 0 {
                a = Some(t);
            }
            if e.is_none() && engaged(&lab) {
                e = Some(t);
            }
            sleep(Duration::from_millis(50));
        }
        drop(flood);
        // A figure not measured counts as the longest wait, never left out.
        to_anomaly.push(a.unwrap_or(f64::INFINITY));
        to_engaged.push(e.unwrap_or(f64::INFINITY));
        let released = eventually(30, || !engaged(&lab) && active_anomalies(&lab) == 0);
        assert!(released, "the defence was not released after a flood");
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        json!({ "median_s": v[v.len() / 2], "min_s": v[0], "max_s": v[v.len() - 1], "runs": v.len() })
    };
    json!({ "to anomaly": median(to_anomaly), "to defence engaged": median(to_engaged) })
}

/// A benign day replayed through the detector: traffic that follows a
/// daily curve (a quarter at night, 4x that at the midday peak, the
/// morning ramp 4x over 12 hours), with noise and short bursts of twice
/// the usual rate, a few seconds each. Features move together as a real
/// service's do. Counts every anomaly as a false alarm.
fn benign_replay() -> Value {
    let days = if quick() { 1 } else { 3 };
    let s = Settings::default();
    let mut d = Detector::default();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut alarms = 0u32;
    let seconds = days * 86_400u64;
    let began = Instant::now();
    for t in 0..seconds {
        let day = (t % 86_400) as f64 / 86_400.0;
        // 1x at 00:00, 4x at 12:00: a cosine day.
        let level = 2.5 - 1.5 * (2.0 * std::f64::consts::PI * day).cos();
        let burst = if t % 900 < 4 { 2.0 } else { 1.0 };
        let pps = 2000.0 * level * burst * (1.0 + 0.1 * (uniform() - 0.5));
        let x = [
            pps,
            pps * 700.0,
            pps * 0.04 * (1.0 + 0.2 * (uniform() - 0.5)),
            pps * 0.01 * (1.0 + 0.3 * (uniform() - 0.5)),
            pps * 0.02 * (1.0 + 0.1 * (uniform() - 0.5)),
            5.0 + 4.0 * uniform(),
        ];
        if let Change::Started(a) = d.observe(&s, t, &x) {
            alarms += 1;
            eprintln!("false alarm at {t} s: {a:?}");
        }
    }
    json!({
        "seconds": seconds,
        "false_alarms": alarms,
        "ns_per_sample": began.elapsed().as_nanos() as f64 / seconds as f64,
    })
}

/// The agent's CPU time over `secs` of wall time (utime + stime).
fn cpu_seconds(lab: &Lab) -> f64 {
    let pid = lab.agent_pid().unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th of the line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    f.iter().sum::<u64>() as f64 / hz
}

fn busy_seconds(lab: &Lab) -> f64 {
    lab.http_get("/metrics")
        .1
        .lines()
        .find_map(|l| l.strip_prefix("rampart_detector_busy_seconds_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// 16 policies of two ports each (48 detectors with the port runs), light
/// traffic; the same agent with `detect = "off"` is the baseline.
fn cpu() -> Value {
    let secs = if quick() { 5 } else { 30 };
    let policies = |detect: &str| -> String {
        (0..16)
            .map(|i| {
                format!(
                    "[[policy]]\nname = \"p{i}\"\nprotocol = \"udp\"\nports = [{}, {}]\npps = 1000\ndetect = \"{detect}\"\n\n",
                    10_000 + 2 * i,
                    10_001 + 2 * i
                )
            })
            .collect()
    };
    let run = |name: &str, net: u8, detect: &str| -> (f64, f64) {
        let mut lab = Lab::new(name, net, &policies(detect)).expect("lab");
        lab.start().expect("agent");
        // Past the first readings, then measure.
        sleep(Duration::from_secs(3));
        let (c0, b0, t0) = (cpu_seconds(&lab), busy_seconds(&lab), Instant::now());
        let client = lab.client_ips[0].clone();
        while t0.elapsed() < Duration::from_secs(secs) {
            lab.ping(&client, 5, "0.2");
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = (cpu_seconds(&lab) - c0) / wall;
        let busy = (busy_seconds(&lab) - b0) / wall;
        lab.stop();
        (cpu, busy)
    };
    let (on_cpu, on_busy) = run("be", 96, "alert");
    let (off_cpu, _) = run("bf", 97, "off");
    json!({
        "policies": 16,
        "seconds": secs,
        "agent_cpu_share_on": on_cpu,
        "agent_cpu_share_off": off_cpu,
        "detector_cpu_share": on_cpu - off_cpu,
        "detector_busy_share": on_busy,
    })
}
