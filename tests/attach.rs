//! The program attached natively to a veth in a namespace created here, with
//! real traffic from the peer: a blocked source's packets are dropped, others
//! delivered.
use aya::programs::XdpMode;
use rampart::datapath::Datapath;
use rampart_common::abi::{action, counter_index, reason};
use rampart_tests::{
    harness::test_capacities,
    netns::{InNetns, Netns, Veth},
};

#[test]
fn native_attach_drops_blocked_source_and_delivers_others() -> anyhow::Result<()> {
    let server = Netns::new("rp-attach-srv")?;
    let client = Netns::new("rp-attach-cli")?;
    let _veth = Veth::new(
        "rpa0",
        &server,
        &["10.210.0.1/24"],
        "rpa1",
        &client,
        &["10.210.0.2/24", "10.210.0.3/24"],
    )?;
    let mut dp = Datapath::load(test_capacities(), None)?;
    dp.list_insert(
        rampart_common::decide::List::Block,
        &"10.210.0.3".parse()?,
        Default::default(),
    )?;
    {
        let _in = InNetns::enter(&server)?;
        dp.program_mut()?.attach("rpa0", XdpMode::Driver)?;
    }
    let ping = |from: &str| {
        client
            .command("ping")
            .args(["-c", "5", "-i", "0.2", "-W", "1", "-I", from, "10.210.0.1"])
            .output()
    };
    let ok = ping("10.210.0.2")?;
    assert!(
        ok.status.success(),
        "allowed source: {}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let blocked = ping("10.210.0.3")?;
    let text = String::from_utf8_lossy(&blocked.stdout);
    assert!(
        !blocked.status.success() && text.contains("100% packet loss"),
        "blocked source got through: {text}"
    );
    let c = dp.counters()?;
    let drops = c[counter_index(0, action::DROP, reason::BLOCKLIST) as usize].packets;
    assert!(drops >= 5, "only {drops} blocklist drops counted");
    let passes = c[counter_index(0, action::PASS, reason::NONE) as usize].packets;
    assert!(passes >= 5, "only {passes} passes counted");
    Ok(())
}
