//! A CrowdSec bouncer: follows a local API's decision stream and keeps one
//! runtime blocklist entry (origin `crowdsec`) per ban decision, expiring
//! with it and removed when CrowdSec deletes it.
//!
//! The first poll (and the first after any failure) asks for the whole
//! set (`startup=true`) and reconciles: entries CrowdSec no longer holds go.
use std::{collections::HashSet, sync::Arc, time::Duration};

use serde::Deserialize;

use rampart_common::decide::List;

pub use crate::config::CrowdsecSection;
pub use crate::{api::CrowdsecStatus, shared::Bouncer};
use crate::{
    api::{MAX_REASON_BYTES, MAX_TTL},
    clock,
    feed::{error_chain, read_capped},
    prefix::Prefix,
    shared::{Shared, lock},
    state::CROWDSEC_ORIGIN,
};

/// One decision as the stream sends it.
#[derive(Debug, Deserialize)]
pub struct Decision {
    /// CrowdSec's decision id: several decisions may hold one address.
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default)]
    pub duration: String,
    #[serde(default)]
    pub scenario: String,
    #[serde(default)]
    pub scope: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Stream {
    #[serde(default)]
    pub new: Option<Vec<Decision>>,
    #[serde(default)]
    pub deleted: Option<Vec<Decision>>,
}

/// Reads a Go duration ("4h", "59m59.75s", "1h2m3.5s", "250ms"). Negative
/// or unreadable durations give None.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    (total.is_finite() && total < 1e12).then(|| Duration::from_secs_f64(total))
}

/// A decision's target as a prefix, if it is an address or range. An
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4 address: the
/// program sees IPv4 packets from it, never that /128. A mapped range is
/// its IPv4 range; one reaching outside the mapped space is not a target.
fn target(d: &Decision) -> Option<Prefix> {
    match d.scope.to_ascii_lowercase().as_str() {
        "ip" => d
            .value
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|a| Prefix::host(a.to_canonical())),
        "range" => {
            let (addr, len) = d.value.split_once('/')?;
            let addr: std::net::IpAddr = addr.parse().ok()?;
            let len: u8 = len.parse().ok()?;
            let (addr, len) = match addr {
                std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
                    Some(v4) if len >= 96 => (std::net::IpAddr::V4(v4), len - 96),
                    Some(_) => return None,
                    None => (addr, len),
                },
                std::net::IpAddr::V4(_) => (addr, len),
            };
            let max = if addr.is_ipv4() { 32 } else { 128 };
            (len <= max).then(|| Prefix::new_masked(addr, len))
        }
        _ => None,
    }
}

/// Polls while `[crowdsec]` is configured; when it is removed, the
/// bouncer's entries go with it.
pub async fn run(shared: Arc<Shared>) {
    let mut startup = true;
    let mut was_on = false;
    loop {
        let cfg = lock(&shared.core).cfg.config.crowdsec.clone();
        let Some(cfg) = cfg else {
            if was_on {
                was_on = false;
                let s = shared.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let mut core = lock(&s.core);
                    let ours = core.runtime_of(List::Block, CROWDSEC_ORIGIN);
                    let _ = core.remove_from(List::Block, &ours, CROWDSEC_ORIGIN);
                    lock(&s.crowdsec.book).clear();
                })
                .await;
                *lock(&shared.crowdsec.status) = None;
                tracing::info!("crowdsec bouncer turned off; its entries were removed");
            }
            startup = true;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        was_on = true;
        let result = poll(&shared, &cfg, startup).await;
        {
            let active = lock(&shared.core)
                .runtime_of(List::Block, CROWDSEC_ORIGIN)
                .len() as u64;
            let mut guard = lock(&shared.crowdsec.status);
            let st = guard.get_or_insert_with(CrowdsecStatus::default);
            st.url.clone_from(&cfg.url);
            st.active = active;
            match &result {
                Ok(()) => {
                    st.polls_ok += 1;
                    st.last_success = clock::unix_now();
                    if st.last_error.take().is_some() {
                        tracing::info!(url = %cfg.url, "crowdsec local API answers again");
                    }
                }
                Err(e) => {
                    st.polls_failed += 1;
                    if st.last_error.as_deref() != Some(e) {
                        tracing::error!(url = %cfg.url, "crowdsec poll failed (entries stay as they are): {e}");
                    }
                    st.last_error = Some(e.clone());
                }
            }
        }
        shared.metrics.crowdsec_polled(result.is_ok());
        // The stream remembers per key what was pulled: nodes that share a
        // key ask for the whole set each time (`full_sync`).
        startup = result.is_err() || cfg.full_sync;
        tokio::time::sleep(cfg.poll).await;
    }
}

/// Stream bodies larger than this are refused.
const MAX_STREAM_BYTES: u64 = 256 << 20;

async fn poll(shared: &Arc<Shared>, cfg: &CrowdsecSection, startup: bool) -> Result<(), String> {
    let key = tokio::fs::read_to_string(&cfg.api_key_file)
        .await
        .map_err(|e| {
            format!(
                "cannot read api_key_file {}: {e}",
                cfg.api_key_file.display()
            )
        })?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!(
            "api_key_file {} is empty",
            cfg.api_key_file.display()
        ));
    }
    let url = format!(
        "{}/v1/decisions/stream?startup={startup}",
        cfg.url.trim_end_matches('/')
    );
    let client = shared
        .crowdsec
        .clients
        .get(&crate::lapi_client::ClientSpec {
            ca_file: cfg.ca_file.clone(),
            identity: None,
        })?;
    let resp = client
        .get(&url)
        .header("X-Api-Key", key)
        .timeout(cfg.timeout)
        .send()
        .await
        .map_err(|e| format!("cannot reach {}: {}", cfg.url, error_chain(&e)))?;
    if resp.status() == reqwest::StatusCode::FORBIDDEN
        || resp.status() == reqwest::StatusCode::UNAUTHORIZED
    {
        return Err(format!(
            "{} refused the bouncer key ({}); create one with `cscli bouncers add rampart`",
            cfg.url,
            resp.status()
        ));
    }
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    let body = read_capped(resp, MAX_STREAM_BYTES).await.map_err(|e| {
        e.unwrap_or_else(|| format!("the decision stream is larger than {MAX_STREAM_BYTES} bytes"))
    })?;
    let stream: Stream = serde_json::from_slice(&body)
        .map_err(|e| format!("the decision stream is not the expected JSON: {e}"))?;
    let shared2 = shared.clone();
    let types: HashSet<String> = cfg.types.iter().map(|t| t.to_ascii_lowercase()).collect();
    let me = crate::crowdsec_push::node_name(cfg);
    tokio::task::spawn_blocking(move || apply(&shared2, stream, &types, &me, startup))
        .await
        .map_err(|_| "applying decisions failed".to_string())?
}

/// Whose decision it is: another Rampart node's, this node's own (shared
/// by it, and already enforced here), or anyone else's.
#[derive(PartialEq, Eq)]
enum Author {
    OtherNode,
    Me,
    Other,
}

fn author(d: &Decision, me: &str) -> Author {
    match crate::share_queue::node_of(&d.scenario) {
        Some(n) if n == me => Author::Me,
        Some(_) => Author::OtherNode,
        None => Author::Other,
    }
}

fn apply(
    shared: &Shared,
    stream: Stream,
    types: &HashSet<String>,
    me: &str,
    startup: bool,
) -> Result<(), String> {
    let mut ignored = 0u64;
    let mut skipped = 0u64;
    let (mut from_nodes, mut own) = (0u64, 0u64);
    // This node's own decisions are never imported: they would come back
    // as duplicates of what it enforces already, and be pushed again.
    let stream = Stream {
        new: stream.new.map(|v| {
            v.into_iter()
                .filter(|d| match author(d, me) {
                    Author::Me => {
                        own += 1;
                        false
                    }
                    Author::OtherNode => {
                        from_nodes += 1;
                        true
                    }
                    Author::Other => true,
                })
                .collect()
        }),
        deleted: stream.deleted.map(|v| {
            v.into_iter()
                .filter(|d| author(d, me) != Author::Me)
                .collect()
        }),
    };
    let deleted: Vec<(Prefix, Option<i64>)> = stream
        .deleted
        .unwrap_or_default()
        .iter()
        .filter_map(|d| {
            let t = target(d);
            ignored += u64::from(t.is_none());
            t.map(|p| (p, d.id))
        })
        .collect();
    let now = clock::unix_now();
    let mut news = Vec::new();
    let mut reasons = std::collections::HashMap::new();
    let mut core = lock(&shared.core);
    for d in stream.new.unwrap_or_default() {
        let (Some(p), Some(left)) = (target(&d), parse_go_duration(&d.duration)) else {
            ignored += 1;
            continue;
        };
        if !types.contains(&d.kind.to_ascii_lowercase()) || left.is_zero() {
            ignored += 1;
            continue;
        }
        if core.protected_hit(&p).is_some() {
            skipped += 1;
            continue;
        }
        let reason: Arc<str> = Arc::from(clip(&format!("crowdsec: {}", d.scenario)));
        let secs = left.as_secs().clamp(1, MAX_TTL.as_secs());
        news.push((p, d.id, now.saturating_add(secs)));
        reasons.insert(p, reason);
    }
    // An entry goes only with the last decision that holds it.
    let changes = lock(&shared.crowdsec.book).apply(&news, &deleted, startup, now);
    let items: Vec<_> = changes
        .hold
        .into_iter()
        .map(|(p, expires)| (p, Some(expires), reasons.remove(&p)))
        .collect();
    let mut removed = core
        .remove_from(List::Block, &changes.lift, CROWDSEC_ORIGIN)
        .map_err(|e| e.to_string())?;
    if startup {
        let book = lock(&shared.crowdsec.book);
        let stale: Vec<Prefix> = core
            .runtime_of(List::Block, CROWDSEC_ORIGIN)
            .into_iter()
            .filter(|p| !book.holds(p))
            .collect();
        drop(book);
        removed += core
            .remove_from(List::Block, &stale, CROWDSEC_ORIGIN)
            .map_err(|e| e.to_string())?;
    }
    let added = items.len() as u64;
    if !items.is_empty() {
        core.add_each(List::Block, items, CROWDSEC_ORIGIN)
            .map_err(|e| e.to_string())?;
    }
    drop(core);
    if added > 0 || removed > 0 {
        tracing::info!(
            added,
            removed,
            skipped_protected = skipped,
            "crowdsec decisions applied"
        );
        shared.save_soon.notify_one();
    }
    let mut guard = lock(&shared.crowdsec.status);
    let st = guard.get_or_insert_with(CrowdsecStatus::default);
    st.added_total += added;
    st.deleted_total += removed as u64;
    st.skipped_protected_total += skipped;
    st.ignored_total += ignored;
    st.from_nodes_total += from_nodes;
    st.own_skipped_total += own;
    Ok(())
}

/// A reason cut to what an entry keeps, at a character boundary.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(MAX_REASON_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_decisions_become_their_ipv4_address_or_range() {
        let d = |scope: &str, value: &str| Decision {
            id: None,
            duration: "1h".into(),
            scenario: String::new(),
            scope: scope.into(),
            kind: "ban".into(),
            value: value.into(),
        };
        let t = |scope, value| target(&d(scope, value)).map(|p| p.to_string());
        assert_eq!(t("Ip", "::ffff:192.0.2.7"), Some("192.0.2.7".into()));
        assert_eq!(t("Range", "::ffff:10.0.0.0/104"), Some("10.0.0.0/8".into()));
        assert_eq!(
            t("Range", "::ffff:0:0/95"),
            None,
            "reaches outside the mapped space"
        );
        assert_eq!(t("Ip", "2001:db8::1"), Some("2001:db8::1".into()));
        assert_eq!(t("Range", "192.0.2.0/24"), Some("192.0.2.0/24".into()));
    }

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s).map(|d| d.as_millis());
        assert_eq!(d("4h"), Some(4 * 3_600_000));
        assert_eq!(d("59m59.758560863s"), Some(3_599_758));
        assert_eq!(d("1h2m3s"), Some(3_723_000));
        assert_eq!(d("250ms"), Some(250));
        assert_eq!(d("0"), Some(0));
        for bad in ["", "-1s", "5", "h", "3x", "1.2.3s", "1e400h"] {
            assert_eq!(d(bad), None, "{bad}");
        }
    }

    #[test]
    fn targets() {
        let dec = |scope: &str, value: &str| Decision {
            id: None,
            duration: "1h".into(),
            scenario: String::new(),
            scope: scope.into(),
            kind: "ban".into(),
            value: value.into(),
        };
        assert_eq!(
            target(&dec("Ip", "192.0.2.1")),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            target(&dec("Range", "198.51.100.7/24")),
            Some("198.51.100.0/24".parse().unwrap())
        );
        assert_eq!(target(&dec("Range", "2001:db8::/200")), None);
        assert_eq!(target(&dec("Country", "FR")), None);
        assert_eq!(target(&dec("Ip", "nope")), None);
    }

    #[test]
    fn stream_bodies_with_nulls_parse() {
        let s: Stream = serde_json::from_str(r#"{"deleted":null,"new":[{"duration":"59m59.7s","id":1,"origin":"cscli","scenario":"test","scope":"Ip","type":"ban","value":"203.0.113.7"}]}"#).unwrap();
        assert_eq!(s.new.unwrap().len(), 1);
        assert!(s.deleted.is_none());
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(3000)))]
            #[test]
            fn durations_never_panic(s in "[0-9.hmsuµn+-]{0,24}") {
                let _ = parse_go_duration(&s);
            }

            /// Whatever the local API sends: decoded or refused, and every
            /// decision's target is read without a panic.
            #[test]
            fn stream_bodies_never_panic(
                scope in "(Ip|Range|ip|range|Country|)",
                value in "[0-9a-f.:/]{0,45}",
                duration in "[0-9hms.-]{0,12}",
                junk in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let body = format!(
                    r#"{{"new":[{{"duration":"{duration}","scope":"{scope}","type":"ban","value":"{value}"}}],"deleted":null}}"#
                );
                if let Ok(s) = serde_json::from_str::<Stream>(&body) {
                    for d in s.new.unwrap_or_default() {
                        let _ = target(&d);
                        let _ = parse_go_duration(&d.duration);
                    }
                }
                let _ = serde_json::from_slice::<Stream>(&junk);
            }
        }
    }
}
