//! `cargo xtask test`: the whole suite, in the order that fails fastest.
use crate::cmd::{self, cargo};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Only the checks that need no root: fmt, clippy and unit tests.
    #[arg(long)]
    pub unprivileged: bool,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    // Host crates (the agent's build script builds and embeds the XDP object).
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "rampart-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The XDP program itself, for the BPF target.
    cmd::run(
        "cargo",
        &[
            "+nightly",
            "clippy",
            "-p",
            "rampart-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "rampart-ebpf",
        "--exclude",
        "rampart-tests",
    ])?;
    if args.unprivileged {
        return Ok(());
    }
    // The plain manifests must be the chart's defaults.
    crate::manifests::run(true)?;
    // The agent tests drive the real binary; the deployment tests check the
    // release binary the container image's build stage produces.
    cargo(&["build", "-p", "rampart"])?;
    crate::build()?;
    // Privileged tests share the kernel, namespaces and pins: one at a time.
    cargo(&["test", "-p", "rampart-tests", "--", "--test-threads=1"])?;
    // The demo doubles as an end-to-end smoke test: it fails if the attack
    // gets through or the client is starved.
    crate::demo::run()?;
    // A short benchmark run keeps it from rotting; timing decides nothing here.
    crate::bench::run(true)
}
