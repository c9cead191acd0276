//! `cargo xtask test`: the whole suite, in the order that fails fastest.
use crate::cmd::{self, cargo};

#[derive(clap::Args)]
pub(crate) struct TestArgs {
    /// Only the checks that need no root: fmt, clippy and unit tests.
    #[arg(long)]
    pub unprivileged: bool,
    #[command(flatten)]
    pub kernels: KernelArgs,
}

#[derive(clap::Args)]
pub(crate) struct KernelArgs {
    /// Kernels of the matrix to boot under QEMU: a comma-separated list of
    /// 6.1 and 6.12, `all` or `none`.
    #[arg(long, default_value = "all")]
    pub kernels: String,
    /// Longest one kernel's boot and tests may take, in seconds.
    #[arg(long, default_value_t = 2400)]
    pub vm_timeout: u64,
    /// Only one test binary in the VMs, optionally with a test name
    /// filter: `datapath` or `datapath:allowlist`.
    #[arg(long)]
    pub only: Option<String>,
}

/// The kernel matrix alone (it needs the release agent and test binaries,
/// which it builds).
pub(crate) fn run_kernels(args: &KernelArgs) -> anyhow::Result<()> {
    let kernels = crate::kernels::select(&args.kernels)?;
    crate::build()?;
    crate::vm::run_matrix(
        &kernels,
        &crate::vm::Options {
            timeout: std::time::Duration::from_secs(args.vm_timeout),
            only: args.only.clone(),
        },
    )
}

pub(crate) fn run(args: &TestArgs) -> anyhow::Result<()> {
    // A bad --kernels fails before anything runs.
    crate::kernels::select(&args.kernels.kernels)?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    // The agent's layers run one way: no module imports one that imports it.
    crate::modgraph::check(&cmd::root().join("agent/src"))?;
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
    // The same decision tables and an attach smoke test on the kernels
    // users run, each booted under QEMU.
    run_kernels(&args.kernels)?;
    // A short benchmark run keeps it from rotting; timing decides nothing here.
    crate::bench::run(true)
}
