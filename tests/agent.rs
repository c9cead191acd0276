//! The agent against the real kernel, in namespaces created here: config
//! checks, reloads, SIGKILL and restart, state-file restore, a corrupt state
//! file, the lockout guard, and an interface deleted and re-created.
use std::{process::Command, thread::sleep, time::Duration};

use rampart_tests::{
    lab::{Lab, eventually, rampart_bin},
    traffic::{Delivered, Flood},
};

fn block_second_client(lab: &Lab) -> String {
    format!("[blocklist]\nentries = [\"{}\"]\n", lab.client_ips[1])
}

#[test]
fn check_config_accepts_valid_and_names_line_and_key_of_invalid() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join("rampart-check-config");
    std::fs::create_dir_all(&dir)?;
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[agent]\ninterfaces = [\"eth0\"]\n[[policy]]\nname = \"web\"\nprotocol = \"tcp\"\nports = [443, \"8000-8080\"]\npps = 100\n",
    )?;
    let o = Command::new(rampart_bin())
        .args(["agent", "--check-config"])
        .arg(&good)
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[agent]\ndry_run = false\n\n[blocklist]\nentries = [\"192.0.2.0/16\"]\n\n[[policy]]\nname = \"x\"\npps = 10\nburst = 0\n",
    )?;
    let o = Command::new(rampart_bin())
        .args(["agent", "--check-config"])
        .arg(&bad)
        .output()?;
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.toml:5: blocklist.entries[0]") && err.contains("192.0.0.0/16"),
        "{err}"
    );
    assert!(
        err.contains("bad.toml:7: policy[0]") && err.contains("burst must be 1"),
        "{err}"
    );
    std::fs::write(&bad, "[agent]\nnonsense = 1\n")?;
    let o = Command::new(rampart_bin())
        .args(["agent", "--check-config"])
        .arg(&bad)
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.toml:2") && err.contains("unknown field `nonsense`"),
        "{err}"
    );
    Ok(())
}

#[test]
fn reloads_apply_valid_configs_and_keep_the_running_one_on_errors() -> anyhow::Result<()> {
    let mut lab = Lab::new("rl", 61, "")?;
    lab.start()?;
    let (client, other) = (lab.client_ips[0].clone(), lab.client_ips[1].clone());
    assert_eq!(lab.ping(&other, 2, "0.2"), 2);

    // A file change is picked up on its own.
    lab.write_config(&block_second_client(&lab))?;
    assert!(
        eventually(10, || lab.ping(&other, 1, "0.2") == 0),
        "file change not applied"
    );
    assert_eq!(lab.ping(&client, 2, "0.2"), 2);

    // An invalid file changes nothing, is reported, and `reload` fails.
    std::fs::write(
        &lab.config,
        lab.config_text("[blocklist]\nentries = [\"not-an-ip\"]\n"),
    )?;
    sleep(Duration::from_secs(2));
    let o = lab.cli(&["reload"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not-an-ip"));
    assert_eq!(
        lab.ping(&other, 2, "0.2"),
        0,
        "the running blocklist was lost"
    );
    let st = lab.cli_json(&["status"])?;
    assert_eq!(st["reload"]["last_result"], "failed");
    assert!(st["reload"]["failed_total"].as_u64() >= Some(1));

    // SIGHUP with a valid config applies it; a runtime entry survives reloads.
    lab.cli_ok(&["block", "add", &lab.client_ips[2], "--reason", "runtime"])?;
    std::fs::write(&lab.config, lab.config_text(""))?;
    lab.sighup();
    assert!(
        eventually(10, || lab.ping(&other, 1, "0.2") == 1),
        "SIGHUP reload not applied"
    );
    assert_eq!(
        lab.ping(&lab.client_ips[2], 2, "0.2"),
        0,
        "a reload erased a runtime entry"
    );
    assert_eq!(lab.cli_json(&["status"])?["reload"]["last_result"], "ok");
    Ok(())
}

#[test]
fn sigkill_leaves_filtering_on_and_a_restart_readopts() -> anyhow::Result<()> {
    let policy = "[[policy]]\nname = \"icmp\"\nprotocol = \"icmp\"\npps = 2\nburst = 2\nban_threshold = 3\nban_time = \"10m\"\n";
    let mut lab = Lab::new(
        "kl",
        62,
        &format!("[blocklist]\nentries = [\"10.62.0.3\"]\n{policy}"),
    )?;
    lab.start()?;
    let blocked = lab.client_ips[1].clone();
    let flooder = lab.client_ips[2].clone();
    // Get the flooder banned.
    lab.ping(&flooder, 12, "0.05");
    let bans = lab.cli_json(&["bans", "list"])?;
    assert_eq!(bans.as_array().map(Vec::len), Some(1), "{bans}");
    assert_eq!(lab.ping(&blocked, 3, "0.1"), 0);
    let before = lab.counter("drop", "blocklist");
    assert!(before >= 3);

    // Kill the agent while the blocked source sends and the banned source
    // floods; nothing from the blocked source may reach the server's stack.
    let delivered = Delivered::watch(&lab, &blocked)?;
    let flood = Flood::start(&lab, &flooder);
    let sender = lab
        .cli
        .command("ping")
        .args([
            "-c",
            "40",
            "-i",
            "0.05",
            "-W",
            "1",
            "-I",
            &blocked,
            &lab.server_ip,
        ])
        .output();
    lab.kill9();
    let out = sender?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0 received"),
        "blocked packets got through while the agent was down: {text}"
    );
    lab.start()?;
    drop(flood);
    assert_eq!(delivered.packets(), 0, "blocked packets reached the stack");
    let after = lab.counter("drop", "blocklist");
    assert!(
        after >= before + 40,
        "counters did not continue: {before} -> {after}"
    );
    let bans = lab.cli_json(&["bans", "list"])?;
    assert_eq!(
        bans.as_array().map(Vec::len),
        Some(1),
        "bans lost on restart: {bans}"
    );
    assert_eq!(lab.ping(&flooder, 2, "0.2"), 0, "the ban no longer applies");
    assert!(lab.log().contains("readopted=true"));
    Ok(())
}

#[test]
fn runtime_state_comes_back_from_the_state_file_after_pins_are_gone() -> anyhow::Result<()> {
    let mut lab = Lab::new("sf", 63, "")?;
    lab.start()?;
    let target = lab.client_ips[1].clone();
    lab.cli_ok(&[
        "block", "add", &target, "--ttl", "1h", "--reason", "scanner",
    ])?;
    assert_eq!(lab.ping(&target, 2, "0.2"), 0);
    lab.stop();
    // Remove every pin (as a reboot would).
    let o = Command::new(rampart_bin())
        .args(["detach", "--config"])
        .arg(&lab.config)
        .output()?;
    assert!(o.status.success());
    assert_eq!(
        lab.ping(&target, 2, "0.2"),
        2,
        "detach left the program attached"
    );
    lab.start()?;
    assert_eq!(
        lab.ping(&target, 2, "0.2"),
        0,
        "the runtime block was not restored"
    );
    let rows = lab.cli_json(&["block", "list"])?;
    let row = &rows[0];
    assert_eq!(row["prefix"], target.as_str());
    assert_eq!(row["origin"][0], "cli");
    assert_eq!(row["reason"], "scanner");
    assert!(row["expires"].as_u64().is_some());
    Ok(())
}

#[test]
fn a_corrupt_state_file_is_set_aside_and_the_config_still_applies() -> anyhow::Result<()> {
    let mut lab = Lab::new("cs", 64, "")?;
    lab.write_config(&block_second_client(&lab))?;
    std::fs::create_dir_all(lab.dir.join("state"))?;
    std::fs::write(
        lab.dir.join("state/state.json"),
        "{\"version\": 1, \"entries\": [oops",
    )?;
    lab.start()?;
    assert_eq!(
        lab.ping(&lab.client_ips[1], 2, "0.2"),
        0,
        "the config's list was dropped"
    );
    let aside = std::fs::read_dir(lab.dir.join("state"))?
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        });
    assert!(aside, "the corrupt file was not moved aside");
    assert!(lab.log().contains("unreadable"), "{}", lab.log());
    Ok(())
}

#[test]
fn protected_addresses_are_never_blocked() -> anyhow::Result<()> {
    let mut lab = Lab::new("pr", 65, "[protected]\nranges = [\"10.65.0.4/32\"]\n")?;
    lab.start()?;
    let o = lab.cli(&["block", "add", "10.65.0.0/24"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("protected") && err.contains("10.65.0.1"),
        "{err}"
    );
    let o = lab.cli(&["block", "add", &lab.client_ips[2]]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("10.65.0.4"));
    assert_eq!(lab.cli_json(&["block", "list"])?, serde_json::json!([]));
    // A config that would block a protected address is refused whole.
    lab.write_config("[protected]\nranges = [\"10.65.0.4/32\"]\n[blocklist]\nentries = [\"10.65.0.4\", \"10.65.0.3\"]\n")?;
    let o = lab.cli(&["reload"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        lab.ping(&lab.client_ips[1], 1, "0.2"),
        1,
        "a refused config was partly applied"
    );
    let (_, metrics) = lab.http_get("/metrics");
    assert!(
        metrics.contains("rampart_protected_refusals_total 3"),
        "{metrics}"
    );
    Ok(())
}

#[test]
fn an_interface_deleted_and_recreated_is_reattached() -> anyhow::Result<()> {
    let mut lab = Lab::new("if", 66, "")?;
    lab.write_config(&block_second_client(&lab))?;
    lab.start()?;
    assert_eq!(lab.ping(&lab.client_ips[1], 1, "0.2"), 0);
    // The interface goes away under a flood, and comes back under it.
    let flood = Flood::start(&lab, &lab.client_ips[2]);
    let iface = lab.iface();
    lab.srv.exec(&["ip", "link", "del", &iface])?;
    assert!(eventually(10, || {
        lab.cli_json(&["status"])
            .is_ok_and(|s| s["interfaces"][0]["attached"] == false)
    }));
    let (code, _) = lab.http_get("/readyz");
    assert_eq!(code, 503);
    // Re-create the pair with the same names and addresses.
    let peer = format!("{}1", lab.name);
    lab.srv.exec(&[
        "ip", "link", "add", &iface, "type", "veth", "peer", "name", &peer,
    ])?;
    lab.srv
        .exec(&["ip", "link", "set", &peer, "netns", &lab.cli.name])?;
    lab.srv.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", lab.server_ip),
        "dev",
        &iface,
    ])?;
    lab.srv.exec(&["ip", "link", "set", &iface, "up"])?;
    for a in &lab.client_ips {
        lab.cli
            .exec(&["ip", "addr", "add", &format!("{a}/24"), "dev", &peer])?;
    }
    lab.cli.exec(&["ip", "link", "set", &peer, "up"])?;
    assert!(
        eventually(10, || {
            lab.cli_json(&["status"])
                .is_ok_and(|s| s["interfaces"][0]["attached"] == true)
        }),
        "not re-attached:\n{}",
        lab.log()
    );
    assert_eq!(lab.ping(&lab.client_ips[0], 2, "0.2"), 2);
    assert_eq!(
        lab.ping(&lab.client_ips[1], 2, "0.2"),
        0,
        "re-attached without the blocklist"
    );
    let (code, _) = lab.http_get("/readyz");
    assert_eq!(code, 200);
    drop(flood);
    assert!(!lab.log().contains("panicked"));
    Ok(())
}

#[test]
fn a_new_layout_version_takes_over_the_link_and_removes_old_pins() -> anyhow::Result<()> {
    let mut lab = Lab::new("mg", 67, "")?;
    lab.write_config(&block_second_client(&lab))?;
    lab.start()?;
    lab.cli_ok(&["block", "add", &lab.client_ips[2], "--reason", "runtime"])?;
    lab.stop();
    // Make the running pins look like an earlier layout's.
    use rampart_common::abi::LAYOUT_VERSION;
    let old = format!("{}/v{}", lab.bpffs(), LAYOUT_VERSION - 1);
    std::fs::rename(format!("{}/v{LAYOUT_VERSION}", lab.bpffs()), &old)?;
    assert!(std::path::Path::new(&format!("{old}/links")).exists());
    // The old program keeps filtering through its pinned link meanwhile.
    assert_eq!(lab.ping(&lab.client_ips[1], 2, "0.2"), 0);
    let sender = lab
        .cli
        .command("ping")
        .args([
            "-c",
            "30",
            "-i",
            "0.05",
            "-W",
            "1",
            "-I",
            &lab.client_ips[1],
            &lab.server_ip,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    lab.start()?;
    let out = sender.wait_with_output()?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" 0 received"),
        "a packet got through during the migration"
    );
    assert!(!std::path::Path::new(&old).exists(), "old pins left behind");
    assert!(lab.log().contains("migrating from an earlier pin layout"));
    assert_eq!(
        lab.ping(&lab.client_ips[1], 2, "0.2"),
        0,
        "config entry lost"
    );
    assert_eq!(
        lab.ping(&lab.client_ips[2], 2, "0.2"),
        0,
        "runtime entry lost"
    );
    assert_eq!(lab.ping(&lab.client_ips[0], 2, "0.2"), 2);
    let st = lab.cli_json(&["status"])?;
    assert_eq!(st["interfaces"][0]["attached"], true);
    Ok(())
}
