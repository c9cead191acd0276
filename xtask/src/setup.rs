//! `cargo xtask setup`: everything a fresh Debian 12 machine of this kind
//! needs to build and test Rampart. Each step checks its result first and is
//! skipped when already done; a failing step says how to run it by hand.
use std::path::Path;

use anyhow::{Context, bail};

use crate::cmd::{self, output, run_env};

/// Debian packages: the LLVM that matches the nightly's (for bpf-linker),
/// and the tools the tests drive.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "bpftool",
    "nftables",
    "iptables",
    "iputils-ping",
    "tcpdump",
    "curl",
    "python3",
    "hping3",
    "ethtool",
    // The XDP peer the benchmark measures beside Rampart (xdp-filter).
    "xdp-tools",
    // The kernel matrix: QEMU, and what its initramfs is made of.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "binutils",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

struct Step {
    name: &'static str,
    done: fn() -> bool,
    run: fn() -> anyhow::Result<()>,
    by_hand: &'static str,
}

const STEPS: &[Step] = &[
    Step {
        name: "Debian packages",
        done: packages_present,
        run: install_packages,
        by_hand: "apt-get update && apt-get install -y llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev iproute2 bpftool nftables iptables iputils-ping tcpdump curl python3 hping3 ethtool xdp-tools qemu-system-x86 busybox-static cpio xz-utils binutils",
    },
    Step {
        name: "nightly rust-src (for -Z build-std=core)",
        done: rust_src_present,
        run: install_rust_src,
        by_hand: "rustup component add rust-src --toolchain nightly",
    },
    Step {
        name: "bpf-linker built against LLVM 22",
        done: bpf_linker_present,
        run: install_bpf_linker,
        by_hand: "PATH=/usr/lib/llvm-22/bin:$PATH LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --no-default-features --features llvm-22",
    },
    Step {
        name: "promtool (from Debian's prometheus package, without the server)",
        done: promtool_present,
        run: install_promtool,
        by_hand: "cd $(mktemp -d) && apt-get download prometheus && dpkg-deb -x prometheus_*.deb x && install -m 0755 x/usr/bin/promtool /usr/local/bin/promtool",
    },
    Step {
        name: "CrowdSec local API and cscli (from Debian's crowdsec package, binaries only)",
        done: crowdsec_present,
        run: install_crowdsec,
        by_hand: "cd $(mktemp -d) && apt-get download crowdsec && dpkg-deb -x crowdsec_*.deb x && install -m 0755 x/usr/bin/crowdsec x/usr/bin/cscli /usr/local/bin/",
    },
    Step {
        name: "manifest validators (kubernetes-validate, yamllint from PyPI)",
        done: validators_present,
        run: install_validators,
        by_hand: "python3 -m pip install kubernetes-validate yamllint",
    },
    Step {
        name: "bpffs mounted at /sys/fs/bpf",
        done: bpffs_mounted,
        run: mount_bpffs,
        by_hand: "mount -t bpf bpf /sys/fs/bpf",
    },
];

pub(crate) fn run() -> anyhow::Result<()> {
    for step in STEPS {
        if (step.done)() {
            continue;
        }
        eprintln!("setup: {} ...", step.name);
        (step.run)()
            .and_then(|()| {
                if (step.done)() {
                    Ok(())
                } else {
                    bail!("the step ran but its result is still missing")
                }
            })
            .with_context(|| {
                format!(
                    "setup step '{}' failed; to run it by hand: {}",
                    step.name, step.by_hand
                )
            })?;
    }
    Ok(())
}

fn package_installed(name: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", name])
        .is_some_and(|s| s.contains("install ok installed"))
}

fn packages_present() -> bool {
    PACKAGES.iter().all(|p| package_installed(p))
}

fn install_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    cmd::run("apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing);
    run_env("apt-get", &args, &[("DEBIAN_FRONTEND", "noninteractive")])
}

fn rust_src_present() -> bool {
    output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")))
}

fn install_rust_src() -> anyhow::Result<()> {
    cmd::run(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )
}

fn bpf_linker_present() -> bool {
    output("bpf-linker", &["--version"]).is_some_and(|v| v.contains(BPF_LINKER_VERSION))
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let path = format!(
        "{LLVM_PREFIX}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    run_env(
        &cmd::cargo_path(),
        &[
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ],
        &[("PATH", &path), ("LLVM_PREFIX", LLVM_PREFIX)],
    )
}

fn promtool_present() -> bool {
    output("promtool", &["--version"]).is_some()
}

fn install_promtool() -> anyhow::Result<()> {
    install_from_deb("prometheus", &["promtool"])
}

fn crowdsec_present() -> bool {
    output("crowdsec", &["-version"]).is_some() && output("cscli", &["version"]).is_some()
}

/// Debian's package registers with CrowdSec's online API in its
/// post-install script, which fails without internet; the local API the
/// tests need is only the binaries, run with a config of their own.
fn install_crowdsec() -> anyhow::Result<()> {
    install_from_deb("crowdsec", &["crowdsec", "cscli"])
}

/// Installs `binaries` from a Debian package's /usr/bin into
/// /usr/local/bin without installing (or configuring) the package.
fn install_from_deb(package: &str, binaries: &[&str]) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("rampart-deb-{package}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let d = dir.to_str().context("temp dir path")?;
    cmd::run("apt-get", &["update", "-q"])?;
    cmd::run(
        "sh",
        &["-c", &format!("cd {d} && apt-get download {package}")],
    )?;
    cmd::run(
        "sh",
        &["-c", &format!("cd {d} && dpkg-deb -x {package}_*.deb x")],
    )?;
    for b in binaries {
        cmd::run(
            "install",
            &[
                "-m",
                "0755",
                &format!("{d}/x/usr/bin/{b}"),
                &format!("/usr/local/bin/{b}"),
            ],
        )?;
    }
    Ok(())
}

fn validators_present() -> bool {
    output("python3", &["-m", "kubernetes_validate", "--version"]).is_some()
        && output("python3", &["-m", "yamllint", "--version"]).is_some()
}

fn install_validators() -> anyhow::Result<()> {
    cmd::run_env(
        "python3",
        &[
            "-m",
            "pip",
            "install",
            "--quiet",
            "kubernetes-validate",
            "yamllint",
        ],
        &[
            ("PIP_ROOT_USER_ACTION", "ignore"),
            ("PIP_BREAK_SYSTEM_PACKAGES", "1"),
        ],
    )
}

fn bpffs_mounted() -> bool {
    output("stat", &["-f", "-c", "%T", "/sys/fs/bpf"]).is_some_and(|t| t.trim() == "bpf_fs")
}

fn mount_bpffs() -> anyhow::Result<()> {
    if !Path::new("/sys/fs/bpf").exists() {
        std::fs::create_dir_all("/sys/fs/bpf").context("creating /sys/fs/bpf")?;
    }
    cmd::run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])
}
