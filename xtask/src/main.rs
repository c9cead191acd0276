//! Project tasks: `cargo xtask setup | build | test | kernels | demo | bench | reliability`.
//! xtask only orchestrates; the work is in the crates and their tests.
mod bench;
mod cmd;
mod demo;
mod kernels;
mod manifests;
mod modgraph;
mod reliability;
mod setup;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Rampart project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything the build and tests need (idempotent).
    Setup,
    /// Build the `rampart` binary (release), with the XDP program embedded.
    Build,
    /// Data-plane benchmarks side by side with nftables, iptables and xdp-filter.
    Bench {
        /// Prove the bench catches a scenario that takes the wrong path: a
        /// short run with S2's blocklist missing its address must fail.
        #[arg(long, conflicts_with_all = ["quick", "report_only"])]
        self_check: bool,
        /// A short smoke run (no docs written).
        #[arg(long)]
        quick: bool,
        /// Only re-render docs/benchmarks.md from docs/bench-results.json.
        #[arg(long, conflicts_with = "quick")]
        report_only: bool,
    },
    /// Rampart stopping an attack in a lab of network namespaces.
    Demo,
    /// Render the Helm chart's defaults into deploy/kubernetes.
    Manifests {
        /// Fail if the checked-in manifests differ from the rendering.
        #[arg(long)]
        check: bool,
    },
    /// Formatting, lints, unit tests, then the privileged integration tests.
    Test(test::TestArgs),
    /// Only the kernel matrix: the decision tables and the attach smoke
    /// test on Debian's kernels, each booted under QEMU.
    Kernels(test::KernelArgs),
    /// Long runs of the fuzzing and load tests (see docs/reliability.md).
    Reliability(reliability::ReliabilityArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Build => setup::run().and_then(|()| build()),
        Task::Manifests { check } => manifests::run(check),
        Task::Bench {
            self_check: true, ..
        } => setup::run().and_then(|()| bench::self_check()),
        Task::Bench {
            quick, report_only, ..
        } => setup::run().and_then(|()| bench::run_with(quick, report_only)),
        Task::Demo => setup::run().and_then(|()| demo::run()),
        Task::Test(args) => setup::run().and_then(|()| test::run(&args)),
        Task::Kernels(args) => setup::run().and_then(|()| test::run_kernels(&args)),
        Task::Reliability(args) => setup::run().and_then(|()| reliability::run(&args)),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

pub fn build() -> anyhow::Result<()> {
    cmd::cargo(&["build", "--release", "-p", "rampart"])
}
