//! The kernel matrix's runs: each kernel booted under QEMU with an
//! initramfs of the test binaries, the release agent and the tools they
//! drive, the tests run on that kernel by the VM's init, and their results
//! read back from the serial console.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    cmd,
    kernels::{self, Fetched, Kernel, path_str},
};

/// A test binary of `rampart-tests` run in every VM, with the bounds that
/// keep it inside the time emulation allows (the host runs the full counts).
struct VmTest {
    target: &'static str,
    env: &'static [(&'static str, &'static str)],
}

/// The decision tables, the flood defence's answers (SYN-ACKs from the
/// kernel's own cookie helpers), the evasion and differential tests, and
/// the attach smoke test with the release agent.
const TESTS: &[VmTest] = &[
    VmTest {
        target: "datapath",
        env: &[],
    },
    VmTest {
        target: "flood",
        env: &[],
    },
    VmTest {
        target: "evasion",
        // Every frame shape, with the truncations sampled (see the test).
        env: &[("RAMPART_EVASION_CUT_STRIDE", "7")],
    },
    VmTest {
        target: "model_diff",
        env: &[("RAMPART_FUZZ_CASES", "1000")],
    },
    VmTest {
        target: "smoke",
        env: &[("RAMPART_BIN", "/rampart/rampart")],
    },
];

/// Host tools the tests run, copied in with their libraries; busybox
/// provides the rest (sh, mount, insmod).
const TOOLS: &[&str] = &["ip", "nsenter", "ping"];

/// Markers the VM's init prints on the serial console.
const BOOTED: &str = "RAMPART-VM-BOOTED";
const RESULT: &str = "RAMPART-VM-RESULT";
const DONE: &str = "RAMPART-VM-DONE";

pub(crate) struct Options {
    /// Longest a boot may take, tests included.
    pub timeout: Duration,
    /// Run only this test binary, with this name filter (for iterating on
    /// one kernel's failure): `datapath` or `datapath:allowlist`.
    pub only: Option<String>,
}

/// What one boot runs: each test binary, with a name filter or none.
struct Plan {
    tests: Vec<(&'static VmTest, Option<String>)>,
}

impl Plan {
    fn new(only: Option<&str>) -> anyhow::Result<Self> {
        let Some(only) = only else {
            return Ok(Self {
                tests: TESTS.iter().map(|t| (t, None)).collect(),
            });
        };
        let (target, filter) = match only.split_once(':') {
            Some((t, f)) => (t, Some(f.to_string())),
            None => (only, None),
        };
        let test = TESTS.iter().find(|t| t.target == target).with_context(|| {
            let names: Vec<&str> = TESTS.iter().map(|t| t.target).collect();
            format!(
                "--only: no test binary '{target}' in the VMs; choose from {}",
                names.join(", ")
            )
        })?;
        Ok(Self {
            tests: vec![(test, filter)],
        })
    }
}

/// Boots each kernel with the suite; fails on the first kernel whose
/// program is rejected or whose tests fail, after printing its log.
pub(crate) fn run_matrix(kernels: &[&'static Kernel], opts: &Options) -> anyhow::Result<()> {
    if kernels.is_empty() {
        return Ok(());
    }
    let plan = Plan::new(opts.only.as_deref())?;
    let fetched = kernels
        .iter()
        .map(|k| kernels::fetch(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let image = build_image(&plan)?;
    let accel = accelerator();
    // Every kernel runs even when one fails: one run shows them all.
    let mut summary = Vec::new();
    let mut failed = 0;
    for k in &fetched {
        let started = Instant::now();
        let outcome = boot(k, &image, &accel, &plan, opts);
        let secs = started.elapsed().as_secs();
        match outcome {
            Ok(()) => summary.push(format!("{} ({}): passed in {secs} s", k.name, k.release)),
            Err(e) => {
                failed += 1;
                summary.push(format!(
                    "{} ({}): FAILED after {secs} s: {e:#}; rerun it alone with `cargo xtask kernels --kernels {}`",
                    k.name, k.release, k.name
                ));
            }
        }
    }
    for line in &summary {
        eprintln!("kernel matrix: {line}");
    }
    if failed > 0 {
        bail!("{failed} of {} kernels failed", fetched.len());
    }
    Ok(())
}

/// KVM only where the host's module runs stock kernels; this machine's
/// nested `kvm_pvm` hangs them at boot, so it gets software emulation.
/// `RAMPART_VM_ACCEL=kvm|tcg` overrides.
fn accelerator() -> String {
    if let Ok(a) = std::env::var("RAMPART_VM_ACCEL") {
        return a;
    }
    let stock = ["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| Path::new("/sys/module").join(m).exists());
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if stock && !pvm && usable {
        "kvm".into()
    } else {
        "tcg,thread=multi".into()
    }
}

fn boot(k: &Fetched, image: &Path, accel: &str, plan: &Plan, opts: &Options) -> anyhow::Result<()> {
    let initrd = with_modules(image, k)?;
    eprintln!(
        "kernel matrix: booting {} ({}) with accel={accel}",
        k.name, k.release
    );
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", accel, "-cpu", "max", "-smp", "2", "-m", "3072"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet",
            "-nographic",
            "-nodefaults",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let (tx, rx) = mpsc::channel();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + opts.timeout;
    let mut log = Vec::new();
    let timed_out = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break true;
        }
        match rx.recv_timeout(left) {
            Ok(line) => {
                // The console's control sequences say nothing to a reader.
                let line: String = line.chars().filter(|c| !c.is_control()).collect();
                eprintln!("[{}] {line}", k.name);
                log.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break true,
            Err(mpsc::RecvTimeoutError::Disconnected) => break false,
        }
    };
    if timed_out {
        let _ = child.kill();
        let _ = child.wait();
        let tail = log.len().saturating_sub(60);
        bail!(
            "the VM did not finish within {} s; the last of its serial log:\n{}",
            opts.timeout.as_secs(),
            log[tail..].join("\n")
        );
    }
    let status = child.wait()?;
    check_results(plan, &log).with_context(|| format!("qemu exited with {status}"))
}

/// The lines that hold `marker`, from the marker on: a marker may follow
/// the console's escape sequences on its line.
fn marked<'a>(log: &'a [String], marker: &'a str) -> impl Iterator<Item = &'a str> {
    log.iter()
        .filter_map(move |l| l.find(marker).map(|i| &l[i..]))
}

/// Every test binary must have reported success, and the init its end.
fn check_results(plan: &Plan, log: &[String]) -> anyhow::Result<()> {
    if marked(log, BOOTED).next().is_none() {
        bail!("the VM never reached its init (no {BOOTED} line)");
    }
    let mut failed = Vec::new();
    for (t, _) in &plan.tests {
        let prefix = format!("{RESULT} {} rc=", t.target);
        let rc = marked(log, &prefix)
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split_whitespace().next());
        match rc {
            Some("0") => {}
            Some(rc) => failed.push(format!("{} exited {rc}", t.target)),
            None => failed.push(format!("{} never finished", t.target)),
        }
    }
    if marked(log, DONE).next().is_none() {
        failed.push("the init did not finish".into());
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} (the serial log above has the details)",
            failed.join("; ")
        )
    }
}

/// The kernel's modules appended to the image as a second archive: the
/// kernel unpacks concatenated cpio archives in turn.
fn with_modules(image: &Path, k: &Fetched) -> anyhow::Result<PathBuf> {
    let dir = vm_dir().join(format!("modules-{}", k.name));
    let _ = std::fs::remove_dir_all(&dir);
    let lib = dir.join("lib/modules");
    std::fs::create_dir_all(&lib)?;
    for m in &k.modules {
        let name = m.file_name().context("module path")?;
        std::fs::copy(m, lib.join(name))?;
    }
    let modules_cpio = vm_dir().join(format!("modules-{}.cpio", k.name));
    cpio(&dir, &modules_cpio)?;
    let out = vm_dir().join(format!("initrd-{}.cpio", k.name));
    let mut bytes = std::fs::read(image)?;
    bytes.extend(std::fs::read(&modules_cpio)?);
    std::fs::write(&out, bytes)?;
    Ok(out)
}

fn vm_dir() -> PathBuf {
    cmd::target_dir().join("vm")
}

/// The initramfs, rebuilt only when one of its inputs changed.
fn build_image(plan: &Plan) -> anyhow::Result<PathBuf> {
    let tests = test_binaries()?;
    let agent = cmd::target_dir().join("release/rampart");
    if !agent.is_file() {
        bail!(
            "{} is missing (cargo xtask build makes it)",
            agent.display()
        );
    }
    let mut inputs: Vec<PathBuf> = tests.iter().map(|(_, p)| p.clone()).collect();
    inputs.push(agent.clone());
    let tools: Vec<PathBuf> = TOOLS
        .iter()
        .map(|t| which(t))
        .collect::<anyhow::Result<_>>()?;
    inputs.extend(tools.iter().cloned());
    let busybox = PathBuf::from("/bin/busybox");
    inputs.push(busybox.clone());
    let init = init_script(plan);
    let key = image_key(&inputs, &init)?;
    let image = vm_dir().join("image.cpio");
    let key_file = vm_dir().join("image.key");
    if image.is_file() && std::fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
        eprintln!(
            "kernel matrix: image unchanged, reusing {}",
            image.display()
        );
        return Ok(image);
    }
    eprintln!("kernel matrix: building the initramfs");
    let root = vm_dir().join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "bin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "rampart/tests",
        "lib/modules",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    install(&busybox, &root.join("bin/busybox"), false)?;
    for t in &tools {
        let under = if t.starts_with("/usr/sbin") || t.starts_with("/sbin") {
            "usr/sbin"
        } else {
            "usr/bin"
        };
        install(
            t,
            &root.join(under).join(t.file_name().context("tool")?),
            true,
        )?;
    }
    install(&agent, &root.join("rampart/rampart"), true)?;
    for (name, path) in &tests {
        install(path, &root.join("rampart/tests").join(name), true)?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nrampart:x:990:\n")?;
    let init_path = root.join("init");
    std::fs::write(&init_path, init)?;
    chmod_x(&init_path)?;
    cpio(&root, &image)?;
    std::fs::write(&key_file, key)?;
    Ok(image)
}

/// Copies an executable in (without its debug info, to keep the image
/// small) and, for dynamic ones, the libraries `ldd` names.
fn install(from: &Path, to: &Path, libs: bool) -> anyhow::Result<()> {
    let root = vm_dir().join("root");
    cmd::run(
        "strip",
        &["--strip-debug", "-o", path_str(to)?, path_str(from)?],
    )?;
    chmod_x(to)?;
    if !libs {
        return Ok(());
    }
    let out = Command::new("ldd").arg(from).output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            let dest = root.join(p.trim_start_matches('/'));
            if !dest.exists() {
                std::fs::create_dir_all(dest.parent().context("lib dir")?)?;
                std::fs::copy(p, &dest).with_context(|| format!("copying {p}"))?;
            }
        }
    }
    Ok(())
}

fn chmod_x(p: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn cpio(dir: &Path, out: &Path) -> anyhow::Result<()> {
    cmd::run(
        "sh",
        &[
            "-c",
            &format!(
                "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
                dir.display(),
                out.display()
            ),
        ],
    )
}

/// A key over the inputs' names, sizes and modification times and the init
/// script: equal keys, equal images.
fn image_key(inputs: &[PathBuf], init: &str) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in inputs {
        let m = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
        let mtime = m
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        h.update(format!("{}\0{}\0{mtime}\n", p.display(), m.len()));
    }
    h.update(init);
    Ok(format!("{:x}", h.finalize()))
}

/// The VM's init: mounts what the tests need, loads the modules, runs each
/// test binary and prints its exit code, then powers off.
fn init_script(plan: &Plan) -> String {
    let mut s = String::from(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /proc /sys /dev /tmp /run /var/lib
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
ulimit -l unlimited
for m in /lib/modules/*.ko; do insmod "$m" || echo "insmod $m failed"; done
ip link set lo up
echo "RAMPART-VM-BOOTED $(uname -r)"
run_test() {
    name=$1; shift
    echo "RAMPART-VM-START $name"
    start=$(date +%s)
    "$@"
    rc=$?
    echo "RAMPART-VM-RESULT $name rc=$rc secs=$(( $(date +%s) - start ))"
}
"#,
    );
    for (t, filter) in &plan.tests {
        let env: Vec<String> = t.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s.push_str(&format!(
            "run_test {name} env {env} /rampart/tests/{name} --test-threads=1 {filter}\n",
            name = t.target,
            env = env.join(" "),
            filter = filter.as_deref().unwrap_or(""),
        ));
    }
    s.push_str("echo RAMPART-VM-DONE\npoweroff -f\n");
    s
}

/// The test binaries of `rampart-tests` that the VMs run, built for the
/// host (the same binaries the host suite runs).
fn test_binaries() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut args = vec![
        "test",
        "-p",
        "rampart-tests",
        "--no-run",
        "--message-format=json",
    ];
    for t in TESTS {
        args.extend(["--test", t.target]);
    }
    eprintln!("+ cargo {}", args.join(" "));
    let out = Command::new(cmd::cargo_path())
        .args(&args)
        .current_dir(cmd::root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        else {
            continue;
        };
        if TESTS.iter().any(|t| t.target == name) {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    for t in TESTS {
        if !found.iter().any(|(n, _)| n == t.target) {
            bail!("cargo built no test binary '{}'", t.target);
        }
    }
    Ok(found)
}

fn which(tool: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
        .with_context(|| format!("'{tool}' is not installed (cargo xtask setup installs it)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn a_run_passes_only_when_every_test_reported_zero() {
        let mut ok = vec![format!("\u{1b}[?7l\u{1b}[2J{BOOTED} 6.1.0-57-amd64")];
        for t in TESTS {
            ok.push(format!("{RESULT} {} rc=0 secs=3", t.target));
        }
        ok.push(DONE.into());
        let plan = Plan::new(None).unwrap();
        assert!(check_results(&plan, &ok).is_ok());

        let mut one_failed = ok.clone();
        one_failed[1] = format!("{RESULT} {} rc=101", TESTS[0].target);
        let err = check_results(&plan, &one_failed).unwrap_err().to_string();
        assert!(err.contains("exited 101"), "{err}");

        let cut_short = ok[..2].to_vec();
        let err = check_results(&plan, &cut_short).unwrap_err().to_string();
        assert!(err.contains("never finished"), "{err}");
        assert!(check_results(&plan, &log(&["SeaBIOS"])).is_err());
        // A plan of one binary expects that one only.
        let one = Plan::new(Some("datapath:allowlist")).unwrap();
        let only_datapath = log(&[
            &format!("{BOOTED} 6.12"),
            &format!("{RESULT} datapath rc=0 secs=1"),
            DONE,
        ]);
        assert!(check_results(&one, &only_datapath).is_ok());
        assert!(Plan::new(Some("nope")).is_err());
    }
}
