//! Sharing this node's decisions through the CrowdSec local API, as a log
//! processor does: logged in as a registered machine, it posts alerts that
//! carry ban decisions. Every other node's bouncer (Rampart's or any
//! other) then enforces them on its next poll.
//!
//! Bans the data plane starts reach the queue from the event ring buffer
//! and from a table scan every few seconds (which also finds bans started
//! while the agent was down, and events the ring buffer lost). One push a
//! `push_interval` at most, of up to `push_batch` decisions in one alert:
//! the LAPI's load is bounded by time, not by how many sources a flood
//! brings. While the LAPI is unreachable, the queue waits (persisted).
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use serde_json::{Value, json};

use crate::{
    api::ShareStatus,
    clock,
    config::CrowdsecSection,
    feed::{error_chain, excerpt, read_capped},
    prefix::Prefix,
    share_queue::{self, Op, Queued},
    shared::{Shared, lock},
};

/// The queue's file in the state directory.
pub const QUEUE_FILE: &str = "crowdsec-share.json";
/// Requests in one push at most (one alert, and deletions).
const MAX_REQUESTS_PER_PUSH: usize = 8;
/// Answers larger than this are refused.
const MAX_ANSWER_BYTES: u64 = 1 << 20;
/// A machine's token, when it was issued, and the credentials it was
/// issued for (changed credentials log in again).
type Token = (String, Instant, String);

/// A login is reused this long (CrowdSec's tokens last an hour).
const TOKEN_REUSE: Duration = Duration::from_secs(30 * 60);
/// The longest wait between retries while the LAPI fails (or 50 push
/// intervals, if shorter).
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the ban tables are scanned for bans not yet offered.
const SCAN_EVERY: Duration = Duration::from_secs(5);

/// This node's name in scenarios: the configured one, else the host name.
/// A host name that does not fit a scenario is cleaned up to fit.
pub fn node_name(cfg: &CrowdsecSection) -> String {
    cfg.node
        .clone()
        .unwrap_or_else(|| host_node_name().to_string())
}

/// The host name, cleaned up, read once: every ban event and poll asks.
fn host_node_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let clean: String = host
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(63)
            .collect();
        if clean.is_empty() {
            "node".into()
        } else {
            clean
        }
    })
}

/// The bouncer's status with the pusher's in it, for the API and metrics.
pub fn bouncer_view(shared: &Shared) -> Option<crate::api::CrowdsecStatus> {
    let share = lock(&shared.share.status).clone();
    let mut view = lock(&shared.crowdsec.status).clone();
    if share.enabled {
        view.get_or_insert_with(Default::default).share = Some(share);
    }
    view
}

/// The sharing config in force, if sharing is on.
fn share_config(shared: &Shared) -> Option<CrowdsecSection> {
    lock(&shared.core)
        .cfg
        .config
        .crowdsec
        .clone()
        .filter(|c| c.share)
}

/// A ban the program started (from its event): queued unless protected or
/// offered before.
pub fn offer_ban(shared: &Shared, prefix: Prefix, expires_ns: u64, policy: u8) {
    // One look at the core: the config, protection and the policy's name.
    let scenario = {
        let core = lock(&shared.core);
        let Some(cfg) = core.cfg.config.crowdsec.as_ref().filter(|c| c.share) else {
            return;
        };
        if core.protected_hit(&prefix).is_some() {
            return;
        }
        share_queue::scenario(&node_name(cfg), &core.policy_name(policy as usize))
    };
    let queued = lock(&shared.share.queue).offer_ban(
        prefix,
        expires_ns,
        clock::unix_of_mono(expires_ns),
        scenario,
    );
    if queued {
        shared.share.wake.notify_one();
    }
}

/// After `block add --share`: the blocks go to the LAPI, with their TTL or
/// `share_block_duration`.
/// The caller has checked that sharing is on.
pub fn share_blocks(shared: &Shared, prefixes: &[Prefix], ttl: Option<Duration>) {
    let Some(cfg) = share_config(shared) else {
        return;
    };
    let until = clock::unix_now() + ttl.unwrap_or(cfg.share_block_duration).as_secs();
    let scenario = share_queue::scenario(&node_name(&cfg), share_queue::MANUAL);
    let mut q = lock(&shared.share.queue);
    for p in prefixes {
        q.share_block(*p, until, scenario.clone());
    }
    // An operator's action is saved at once: a crash must not lose it.
    save_queue(shared, &mut q);
    drop(q);
    shared.share.wake.notify_one();
}

/// After `block del`: shared blocks are deleted upstream too.
pub fn unshare_blocks(shared: &Shared, prefixes: &[Prefix]) {
    let Some(cfg) = lock(&shared.core).cfg.config.crowdsec.clone() else {
        return;
    };
    let scenario = share_queue::scenario(&node_name(&cfg), share_queue::MANUAL);
    let mut q = lock(&shared.share.queue);
    let mut any = false;
    for p in prefixes {
        any |= q.unshare_block(p, scenario.clone());
    }
    if any {
        save_queue(shared, &mut q);
        drop(q);
        shared.share.wake.notify_one();
    }
}

fn save_queue(shared: &Shared, q: &mut share_queue::ShareQueue) {
    let path = shared.state_dir.join(QUEUE_FILE);
    if let Err(e) = q.save(&path) {
        let msg = format!("cannot save the share queue to {}: {e}", path.display());
        tracing::error!("{msg}");
        lock(&shared.share.status).last_error = Some(msg);
    }
}

/// Queues live bans from the tables that were not offered yet.
fn scan_bans(shared: &Shared, node: &str) {
    let now = clock::mono_ns();
    let bans = {
        let core = lock(&shared.core);
        match core.dp.bans() {
            Ok(b) => b
                .into_iter()
                .filter(|(p, b)| b.expires_ns > now && core.protected_hit(p).is_none())
                .map(|(p, b)| (p, b.expires_ns, core.policy_name(b.policy as usize)))
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!("cannot scan the ban tables for sharing: {e}");
                return;
            }
        }
    };
    let mut q = lock(&shared.share.queue);
    for (p, expires, policy) in bans {
        q.offer_ban(
            p,
            expires,
            clock::unix_of_mono(expires),
            share_queue::scenario(node, &policy),
        );
    }
}

/// The pusher: runs for the agent's life, idle while sharing is off. It
/// wakes on new work or every second (scans, saves), and pushes at most
/// once a `push_interval`, or once a backoff while the LAPI fails.
pub async fn run(shared: Arc<Shared>) {
    let mut token: Option<Token> = None;
    let mut last_scan: Option<Instant> = None;
    let mut last_save = Instant::now();
    let mut next_push = Instant::now();
    let mut backoff = Duration::ZERO;
    let mut waiting = false;
    loop {
        let tick = if waiting {
            next_push
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1))
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = shared.share.wake.notified() => {}
        }
        let Some(cfg) = share_config(&shared) else {
            *lock(&shared.share.status) = ShareStatus::default();
            waiting = false;
            continue;
        };
        let node = node_name(&cfg);
        let scan = last_scan.is_none_or(|t| t.elapsed() >= SCAN_EVERY);
        let save = last_save.elapsed() >= Duration::from_secs(1);
        let (s, node2, queue_max, batch_max) =
            (shared.clone(), node.clone(), cfg.queue_max, cfg.push_batch);
        let batch = tokio::task::spawn_blocking(move || {
            if scan {
                scan_bans(&s, &node2);
            }
            let mut q = lock(&s.share.queue);
            q.set_max(queue_max);
            q.prune(clock::mono_ns(), clock::unix_now());
            if save && q.dirty {
                save_queue(&s, &mut q);
            }
            q.batch(batch_max)
        })
        .await
        .unwrap_or_default();
        if scan {
            last_scan = Some(Instant::now());
        }
        if save {
            last_save = Instant::now();
        }
        waiting = !batch.is_empty();
        let outcome = if waiting && Instant::now() >= next_push {
            Some(push(&shared, &cfg, &mut token, &batch).await)
        } else {
            None
        };
        if let Some((sent, _, result)) = &outcome {
            if let Some(seq) = sent.upto {
                let s = shared.clone();

                let _ = tokio::task::spawn_blocking(move || {
                    let mut q = lock(&s.share.queue);
                    q.ack(seq);
                    save_queue(&s, &mut q);
                })
                .await;
                last_save = Instant::now();
            }
            // Back off while it fails; local enforcement goes on.
            backoff = if result.is_ok() {
                Duration::ZERO
            } else {
                (backoff * 2).clamp(cfg.push_interval, MAX_BACKOFF.min(cfg.push_interval * 50))
            };
            next_push = Instant::now() + cfg.push_interval.max(backoff);
        }
        let (queued, overflowed) = {
            let q = lock(&shared.share.queue);
            (q.len() as u64, q.overflowed)
        };
        let mut st = lock(&shared.share.status);
        st.enabled = true;
        st.url.clone_from(&cfg.url);
        st.node.clone_from(&node);
        st.queued = queued;
        st.overflowed_total = overflowed;
        if let Some((sent, requests, result)) = outcome {
            st.requests_total += requests;
            st.pushed_total += sent.decisions;
            match result {
                Ok(()) => {
                    st.pushes_ok += 1;
                    st.last_success = clock::unix_now();
                    if st.last_error.take().is_some() {
                        tracing::info!(url = %cfg.url, "the local API takes shared decisions again");
                    }
                }
                Err(e) => {
                    st.pushes_failed += 1;
                    if st.last_error.as_deref() != Some(&e) {
                        tracing::error!(url = %cfg.url, "sharing decisions failed (they stay queued): {e}");
                    }
                    st.last_error = Some(e);
                }
            }
        }
    }
}

/// What a push got the LAPI to take.
#[derive(Debug, Default)]
struct Sent {
    /// The last queue entry taken (everything before it was too).
    upto: Option<u64>,
    decisions: u64,
}

/// Sends `batch` in order: runs of adds as one alert, deletions one by
/// one. Returns what was taken, the requests made, and the first error.
async fn push(
    shared: &Shared,
    cfg: &CrowdsecSection,
    token: &mut Option<Token>,
    batch: &[Queued],
) -> (Sent, u64, Result<(), String>) {
    let mut sent = Sent::default();
    let mut requests = 0u64;
    let spec = crate::lapi_client::ClientSpec {
        ca_file: cfg.ca_file.clone(),
        identity: cfg.tls_cert_file.clone().zip(cfg.tls_key_file.clone()),
    };
    let client = match shared.share.clients.get(&spec) {
        Ok(c) => c,
        Err(e) => return (sent, 0, Err(e)),
    };
    let client = &client;
    let bearer = match login(client, cfg, token).await {
        Ok(t) => {
            requests += u64::from(t.1);
            t.0
        }
        Err(e) => return (sent, 1, Err(e)),
    };
    // Protected ranges may have grown since a ban was queued.
    let protected: Vec<bool> = {
        let core = lock(&shared.core);
        batch
            .iter()
            .map(|q| match &q.op {
                Op::Add { prefix, .. } => core.protected_hit(prefix).is_some(),
                Op::Delete { .. } => false,
            })
            .collect()
    };
    let now = clock::unix_now();
    // Adds waiting to go as one alert, and the last entry they cover
    // (expired or protected ones are covered without a decision).
    let mut run: Vec<&Queued> = Vec::new();
    let mut covered = None;
    for (q, protected) in batch.iter().zip(protected) {
        match &q.op {
            Op::Add { until, .. } => {
                if *until > now && !protected {
                    run.push(q);
                }
                covered = Some(q.seq);
            }
            Op::Delete { prefix, scenario } => {
                if let Err(e) = flush(client, cfg, &bearer, &mut run, now, &mut requests).await {
                    forget_token_on_401(&e, token);
                    return (sent, requests, Err(e));
                }
                sent.decisions += std::mem::take(&mut run).len() as u64;
                sent.upto = covered.or(sent.upto);
                if requests as usize >= MAX_REQUESTS_PER_PUSH {
                    return (sent, requests, Ok(()));
                }
                requests += 1;
                if let Err(e) = delete(client, cfg, &bearer, prefix, scenario).await {
                    forget_token_on_401(&e, token);
                    return (sent, requests, Err(e));
                }
                sent.upto = Some(q.seq);
                covered = None;
            }
        }
    }
    if let Err(e) = flush(client, cfg, &bearer, &mut run, now, &mut requests).await {
        forget_token_on_401(&e, token);
        return (sent, requests, Err(e));
    }
    sent.decisions += run.len() as u64;
    sent.upto = covered.or(sent.upto);
    (sent, requests, Ok(()))
}

/// Posts the adds in `run` as one alert, if there are any.
async fn flush(
    client: &reqwest::Client,
    cfg: &CrowdsecSection,
    bearer: &str,
    run: &mut Vec<&Queued>,
    now: u64,
    requests: &mut u64,
) -> Result<(), String> {
    if run.is_empty() {
        return Ok(());
    }
    *requests += 1;
    post_alert(client, cfg, bearer, run, now).await
}

/// Marks errors that mean the token was refused.
const REFUSED: &str = "refused the machine's token";

fn forget_token_on_401(e: &str, token: &mut Option<Token>) {
    if e.contains(REFUSED) {
        *token = None;
    }
}

/// A token for the machine: the cached one, or a new login. The bool says
/// whether a request was made.
async fn login(
    client: &reqwest::Client,
    cfg: &CrowdsecSection,
    token: &mut Option<Token>,
) -> Result<(String, bool), String> {
    let creds = format!(
        "{:?} {:?} {:?} {:?}",
        cfg.machine_id, cfg.password_file, cfg.tls_cert_file, cfg.tls_key_file
    );
    if let Some((t, at, for_creds)) = token
        && at.elapsed() < TOKEN_REUSE
        && *for_creds == creds
    {
        return Ok((t.clone(), false));
    }
    let machine = cfg.machine_id.clone().unwrap_or_default();
    // With a client certificate, the LAPI names the machine after the
    // certificate's CN; no password goes.
    let password = match &cfg.password_file {
        Some(file) if cfg.tls_cert_file.is_none() => {
            let p = tokio::fs::read_to_string(file)
                .await
                .map_err(|e| format!("cannot read password_file {}: {e}", file.display()))?;
            let p = p.trim().to_string();
            if p.is_empty() {
                return Err(format!("password_file {} is empty", file.display()));
            }
            p
        }
        _ => String::new(),
    };
    let password = password.as_str();
    let url = format!("{}/v1/watchers/login", cfg.url.trim_end_matches('/'));
    let resp = client
        .post(&url)
        .json(&json!({"machine_id": machine, "password": password, "scenarios": []}))
        .timeout(cfg.timeout)
        .send()
        .await
        .map_err(|e| format!("cannot reach {}: {}", cfg.url, error_chain(&e)))?;
    let status = resp.status();
    let body = read_capped(resp, MAX_ANSWER_BYTES).await.map_err(|e| {
        e.unwrap_or_else(|| format!("the login answer is larger than {MAX_ANSWER_BYTES} bytes"))
    })?;
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(format!(
            "{} refused the login of machine '{machine}' ({status}); register it with `cscli machines add {machine} --password-file ...` and check password_file",
            cfg.url
        ));
    }
    if !status.is_success() {
        return Err(format!(
            "{url} answered {status}: {}",
            excerpt(&String::from_utf8_lossy(&body))
        ));
    }
    let t = parse_login(&body)?;
    *token = Some((t.clone(), Instant::now(), creds));
    Ok((t, true))
}

/// The token in a login answer.
fn parse_login(body: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the login answer is not JSON ({e}): {}",
            excerpt(&String::from_utf8_lossy(body))
        )
    })?;
    match v.get("token").and_then(Value::as_str) {
        Some(t) if !t.is_empty() && t.len() < 8192 && t.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(t.to_string())
        }
        _ => Err("the login answer holds no usable token".into()),
    }
}

/// One alert carrying `run`'s decisions.
fn alert_body(node: &str, run: &[&Queued], now: u64) -> Value {
    let at = humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(now))
        .to_string();
    let decisions: Vec<Value> = run
        .iter()
        .filter_map(|q| match &q.op {
            Op::Add {
                prefix,
                until,
                scenario,
            } => {
                let (scope, value) = scope_value(prefix);
                Some(json!({
                    "duration": format!("{}s", until.saturating_sub(now).max(1)),
                    "type": "ban",
                    "scope": scope,
                    "value": value,
                    "origin": "rampart",
                    "scenario": scenario,
                }))
            }
            Op::Delete { .. } => None,
        })
        .collect();
    let scenario = share_queue::scenario(node, "shared");
    json!([{
        "scenario": scenario,
        "scenario_hash": "",
        "scenario_version": "",
        "message": format!("rampart on {node}: {} decisions", decisions.len()),
        "events_count": decisions.len(),
        "start_at": at,
        "stop_at": at,
        "capacity": 0,
        "leakspeed": "0",
        "simulated": false,
        "remediation": true,
        "events": [],
        "source": {"scope": "rampart", "value": node},
        "decisions": decisions,
    }])
}

/// CrowdSec's scope and value for a prefix: an address is `Ip`.
fn scope_value(p: &Prefix) -> (&'static str, String) {
    let host = p.prefix_len() == if p.is_ipv4() { 32 } else { 128 };
    if host {
        ("Ip", p.addr().to_string())
    } else {
        ("Range", p.to_string())
    }
}

async fn post_alert(
    client: &reqwest::Client,
    cfg: &CrowdsecSection,
    bearer: &str,
    run: &[&Queued],
    now: u64,
) -> Result<(), String> {
    let url = format!("{}/v1/alerts", cfg.url.trim_end_matches('/'));
    let resp = client
        .post(&url)
        .bearer_auth(bearer)
        .json(&alert_body(&node_name(cfg), run, now))
        .timeout(cfg.timeout)
        .send()
        .await
        .map_err(|e| format!("cannot reach {}: {}", cfg.url, error_chain(&e)))?;
    answer(resp, &url).await.and_then(|body| {
        // The LAPI answers with the new alerts' ids.
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(_)) => Ok(()),
            _ => Err(format!(
                "{url} did not answer with alert ids: {}",
                excerpt(&String::from_utf8_lossy(&body))
            )),
        }
    })
}

async fn delete(
    client: &reqwest::Client,
    cfg: &CrowdsecSection,
    bearer: &str,
    prefix: &Prefix,
    scenario: &str,
) -> Result<(), String> {
    let (scope, value) = scope_value(prefix);
    let key = if scope == "Ip" { "ip" } else { "range" };
    let url = format!("{}/v1/decisions", cfg.url.trim_end_matches('/'));
    let resp = client
        .delete(&url)
        .query(&[(key, value.as_str()), ("scenario", scenario)])
        .bearer_auth(bearer)
        .timeout(cfg.timeout)
        .send()
        .await
        .map_err(|e| format!("cannot reach {}: {}", cfg.url, error_chain(&e)))?;
    answer(resp, &url).await.map(drop)
}

/// The body of a successful answer; errors say what the LAPI said.
async fn answer(resp: reqwest::Response, url: &str) -> Result<Vec<u8>, String> {
    let status = resp.status();
    let body = read_capped(resp, MAX_ANSWER_BYTES).await.map_err(|e| {
        e.unwrap_or_else(|| format!("{url} answered more than {MAX_ANSWER_BYTES} bytes"))
    })?;
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(format!("{url} {REFUSED} ({status}); logging in again"));
    }
    if !status.is_success() {
        return Err(format!(
            "{url} answered {status}: {}",
            excerpt(&String::from_utf8_lossy(&body))
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(seq: u64, prefix: &str, until: u64) -> Queued {
        Queued {
            seq,
            op: Op::Add {
                prefix: prefix.parse().unwrap(),
                until,
                scenario: "rampart/a/syn".into(),
            },
        }
    }

    #[test]
    fn an_alert_carries_one_decision_per_entry_with_its_time_left() {
        let (a, b) = (add(1, "192.0.2.7", 1_600), add(2, "2001:db8::/64", 1_100));
        let v = alert_body("a", &[&a, &b], 1_000);
        let d = &v[0]["decisions"];
        assert_eq!(d[0]["scope"], "Ip");
        assert_eq!(d[0]["value"], "192.0.2.7");
        assert_eq!(d[0]["duration"], "600s");
        assert_eq!(d[0]["origin"], "rampart");
        assert_eq!(d[1]["scope"], "Range");
        assert_eq!(d[1]["value"], "2001:db8::/64");
        assert_eq!(v[0]["events_count"], 2);
        assert_eq!(v[0]["start_at"], "1970-01-01T00:16:40Z");
    }

    #[test]
    fn hostile_login_answers_are_clear_errors() {
        assert_eq!(
            parse_login(br#"{"code":200,"token":"abc.def"}"#),
            Ok("abc.def".into())
        );
        for (body, says) in [
            (&b"<html>proxy error</html>"[..], "not JSON"),
            (br#"{"token":""}"#, "no usable token"),
            (br#"{"token":"a\r\nX-Evil: 1"}"#, "no usable token"),
            (br#"{"token":42}"#, "no usable token"),
            (br#"[]"#, "no usable token"),
        ] {
            let e = parse_login(body).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }

    mod fuzz {
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(2000)))]
            #[test]
            fn login_answers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..128)) {
                let _ = super::super::parse_login(&body);
            }
        }
    }
}
