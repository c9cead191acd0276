//! `cargo xtask reliability`: the long versions of the bounded runs that
//! `cargo xtask test` does. More differential-fuzzing frames, more parser
//! fuzzing cases, and a longer control-API load test.
//! Each test prints its counts and figures; docs/reliability.md says what they mean.
use crate::cmd;

#[derive(clap::Args)]
pub(crate) struct ReliabilityArgs {
    /// Frames per differential-fuzzing test (kernel against model).
    #[arg(long, default_value_t = 200_000)]
    pub frames: u32,
    /// Cases per parser property test.
    #[arg(long, default_value_t = 100_000)]
    pub parser_cases: u32,
    /// Seconds of control-API load at 1,000 requests a second.
    #[arg(long, default_value_t = 60)]
    pub load_secs: u32,
}

pub(crate) fn run(args: &ReliabilityArgs) -> anyhow::Result<()> {
    cmd::cargo(&["build", "-p", "rampart"])?;
    let parser_cases = args.parser_cases.to_string();
    cmd::cargo_env(
        &[
            "test",
            "-p",
            "rampart",
            "--lib",
            "fuzz",
            "--",
            "--nocapture",
        ],
        &[("RAMPART_FUZZ_CASES", &parser_cases)],
    )?;
    let frames = args.frames.to_string();
    cmd::cargo_env(
        &[
            "test",
            "-p",
            "rampart-tests",
            "--test",
            "model_diff",
            "--test",
            "evasion",
            "--",
            "--nocapture",
            "--test-threads=1",
        ],
        &[("RAMPART_FUZZ_CASES", &frames)],
    )?;
    let secs = args.load_secs.to_string();
    cmd::cargo_env(
        &[
            "test",
            "-p",
            "rampart-tests",
            "--test",
            "reliability",
            "--",
            "--nocapture",
            "--test-threads=1",
        ],
        &[("RAMPART_LOAD_SECS", &secs)],
    )
}
