//! The smoke test the kernel matrix runs on every kernel it boots, and the
//! host suite runs too: the agent (`RAMPART_BIN`, the release build in the
//! VMs) attaches natively to a veth, a blocked source's frames are dropped,
//! another source's pass, and `rampart status` shows the attach mode.
use rampart_tests::lab::Lab;

#[test]
fn the_agent_attaches_drops_a_blocked_source_and_shows_its_mode() -> anyhow::Result<()> {
    let mut lab = Lab::new("sm", 69, "")?;
    let blocked = lab.client_ips[1].clone();
    // `auto` mode: native XDP, which veth supports on every kernel tested.
    lab.write_config(&format!("[blocklist]\nentries = [\"{blocked}\"]\n"))?;
    lab.start()?;
    assert_eq!(
        lab.ping(&lab.client_ips[0], 3, "0.2"),
        3,
        "a source that is not blocked lost replies:\n{}",
        lab.log()
    );
    assert_eq!(
        lab.ping(&blocked, 3, "0.2"),
        0,
        "a blocked source got through"
    );
    let drops = lab.counter("drop", "blocklist");
    assert!(drops >= 3, "only {drops} blocklist drops counted");

    let status = lab.cli_json(&["status"])?;
    let iface = &status["interfaces"][0];
    assert_eq!(iface["name"], lab.iface());
    assert_eq!(iface["attached"], true, "{status}");
    assert_eq!(iface["mode"], "native", "{status}");
    let text = lab.cli_ok(&["status"])?;
    assert!(
        text.contains(&lab.iface()) && text.contains("native"),
        "`rampart status` does not show the mode:\n{text}"
    );
    Ok(())
}
