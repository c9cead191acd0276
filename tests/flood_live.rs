//! Flood defence end to end: a live agent on the server's veth, a real
//! HTTP server behind it and real clients (curl), under hping3 floods with
//! a random source on every packet. What reaches the server's IP stack is
//! read from its namespace's `Ip: InReceives` counter, against what the
//! client side's veth sent.
use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use rampart_tests::{
    lab::Lab,
    traffic::Delivered,
    web::{SpoofedFlood, WEB_PORT, Web, client_tx, get, hping3, in_receives, lab},
};

const UDP_PORT: u16 = 9999;

fn web_policy(mode: &str) -> String {
    format!(
        "[[policy]]\nname = \"web\"\nprotocol = \"tcp\"\nports = [{WEB_PORT}]\npps = 500\nburst = 1000\nsyn_cookies = \"{mode}\"\nsyn_cookies_above = 1000\n"
    )
}

#[test]
fn curl_connects_through_the_cookie_path_and_its_source_is_verified() -> anyhow::Result<()> {
    let (lab, _pass) = lab("fa", 120, &web_policy("on"))?;
    let _web = Web::start(&lab)?;
    let client = lab.client_ips[0].clone();
    let explain = lab.cli_json(&["explain", &client, "--proto", "tcp", "--port", "8080"])?;
    assert_eq!(explain["verified"], false, "{explain}");
    let before = lab.counter("challenge", "syn_cookie");
    assert!(
        get(&lab, &client),
        "curl through the cookie path:\n{}",
        lab.log()
    );
    assert!(
        lab.counter("challenge", "syn_cookie") > before,
        "the program answered the SYN"
    );
    let explain = lab.cli_json(&["explain", &client, "--proto", "tcp", "--port", "8080"])?;
    assert_eq!(explain["verified"], true, "{explain}");
    // Verified now: its next connection goes to the listener directly.
    let answered = lab.counter("challenge", "syn_cookie");
    assert!(get(&lab, &client));
    assert_eq!(lab.counter("challenge", "syn_cookie"), answered);
    let status = lab.cli_json(&["status"])?;
    let flood = &status["flood"];
    assert!(
        flood["syn_cookies"]
            .as_str()
            .is_some_and(|s| s.starts_with("available")),
        "{flood}"
    );
    assert_eq!(flood["policies"][0]["engaged"], true, "{flood}");
    let sysctl = lab
        .srv
        .exec(&["cat", "/proc/sys/net/ipv4/tcp_syncookies"])?;
    assert_eq!(sysctl.trim(), "2", "the agent set what cookie mode needs");
    let (_, metrics) = lab.http_get("/metrics");
    assert!(
        metrics.contains("rampart_syn_cookie_valid_acks_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("rampart_syn_cookies_engaged{policy=\"web\"} 1"));
    assert!(metrics.contains("rampart_syn_cookies_available 1"));
    Ok(())
}

/// Floods the web port for `secs` with spoofed SYNs while one client makes
/// sequential requests; returns (flood packets sent, packets that reached
/// the stack, requests made, requests served).
fn syn_flood_with_a_client(lab: &Lab, client: &str, secs: u64) -> (u64, u64, u32, u32) {
    let (tx0, rx0) = (client_tx(lab), in_receives(lab));
    let flood = SpoofedFlood::start(lab, &["-S", "-p", &WEB_PORT.to_string()]);
    let start = Instant::now();
    let (mut made, mut served) = (0, 0);
    while start.elapsed() < Duration::from_secs(secs) {
        made += 1;
        served += u32::from(get(lab, client));
        sleep(Duration::from_millis(100));
    }
    drop(flood);
    sleep(Duration::from_millis(300));
    (client_tx(lab) - tx0, in_receives(lab) - rx0, made, served)
}

fn the_syn_flood_is_answered_at_xdp(name: &str, net: u8, mode: &str) -> anyhow::Result<()> {
    let (lab, _pass) = lab(name, net, &web_policy(mode))?;
    let _web = Web::start(&lab)?;
    let client = lab.client_ips[0].clone();
    let (sent, reached, made, served) = syn_flood_with_a_client(&lab, &client, 6);
    // The client's own packets reach the stack too: a request is about ten.
    let client_share = u64::from(made) * 12;
    let leaked = reached.saturating_sub(client_share);
    eprintln!(
        "{mode}: flood sent {sent}, reached the stack {reached} ({leaked} beyond the client's); \
         client {served}/{made}"
    );
    assert!(
        sent > 50_000,
        "the flood was too weak to judge: {sent} packets"
    );
    assert!(
        leaked as f64 <= 0.05 * sent as f64,
        "{mode}: {leaked} of {sent} flood packets reached the stack (more than 5%)"
    );
    assert!(
        f64::from(served) >= 0.95 * f64::from(made),
        "{mode}: the client got {served} of {made} requests served during the flood"
    );
    assert!(lab.counter("challenge", "syn_cookie") as f64 >= 0.9 * sent as f64 - 2000.0);
    Ok(())
}

#[test]
fn a_spoofed_syn_flood_is_answered_at_xdp_with_cookies_on() -> anyhow::Result<()> {
    the_syn_flood_is_answered_at_xdp("fb", 121, "on")
}

#[test]
fn a_spoofed_syn_flood_engages_auto_mode_and_is_answered_at_xdp() -> anyhow::Result<()> {
    the_syn_flood_is_answered_at_xdp("fc", 122, "auto")
}

#[test]
fn a_spoofed_udp_flood_is_capped_by_the_newcomer_budget_while_a_tracked_client_flows()
-> anyhow::Result<()> {
    let budget = 200u64;
    let (lab, _pass) = lab(
        "fd",
        123,
        &format!(
            "[[policy]]\nname = \"dns\"\nprotocol = \"udp\"\nports = [{UDP_PORT}]\npps = 1000\nnew_sources_pps = {budget}\nnew_sources_burst = {budget}\n"
        ),
    )?;
    let client = lab.client_ips[0].clone();
    let delivered = Delivered::watch(&lab, &client)?;
    let port = UDP_PORT.to_string();
    let udp = |args: &[&str]| {
        let mut a = vec!["--udp", "-p", port.as_str(), "-q"];
        a.extend_from_slice(args);
        hping3(&lab, &a)
    };
    // The client first, so the policy tracks it; then the flood beside it.
    let sends = 400u64;
    let mut tracked = udp(&["-a", &client, "-i", "u10000", "-c", &sends.to_string()]);
    sleep(Duration::from_millis(500));
    let rx0 = in_receives(&lab);
    let drops0 = lab.counter("drop", "newcomer_budget");
    let start = Instant::now();
    let flood = SpoofedFlood::start(&lab, &["--udp", "-p", &UDP_PORT.to_string()]);
    sleep(Duration::from_secs(3));
    drop(flood);
    let secs = start.elapsed().as_secs_f64();
    let _ = tracked.wait();
    sleep(Duration::from_millis(300));
    let reached = in_receives(&lab) - rx0;
    let refused = lab.counter("drop", "newcomer_budget") - drops0;
    let client_got = delivered.packets();
    eprintln!(
        "udp: {refused} refused by the budget, {reached} reached the stack in {secs:.1}s; \
         tracked client {client_got}/{sends}"
    );
    assert!(
        refused > 10_000,
        "the flood was too weak to judge: {refused}"
    );
    // What reached the stack: the budget (its burst, then its rate), the
    // client's own packets, and a margin for the clock's ticks.
    let allowed = budget as f64 * (1.0 + secs) + sends as f64 + 100.0;
    assert!(
        (reached as f64) <= allowed,
        "{reached} packets reached the stack; the budget allows about {allowed:.0}"
    );
    assert!(
        client_got as f64 >= 0.95 * sends as f64,
        "the tracked client got {client_got} of {sends} packets through"
    );
    Ok(())
}

#[test]
fn dry_run_answers_nothing_and_counts_what_it_would_have() -> anyhow::Result<()> {
    let (lab, _pass) = lab("fe", 124, &format!("{}dry_run = true\n", web_policy("on")))?;
    let _web = Web::start(&lab)?;
    let client = lab.client_ips[0].clone();
    assert!(get(&lab, &client), "served by the listener itself");
    let flood = SpoofedFlood::start(&lab, &["-S", "-p", &WEB_PORT.to_string()]);
    sleep(Duration::from_secs(2));
    drop(flood);
    assert!(lab.counter("would_challenge", "syn_cookie") > 1000);
    assert_eq!(lab.counter("challenge", "syn_cookie"), 0);
    assert_eq!(lab.dropped()?, 0, "dry-run drops nothing");
    Ok(())
}
