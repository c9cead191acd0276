//! Builds the XDP program (ebpf/program) for the BPF target and leaves the
//! object in OUT_DIR, where `datapath.rs` embeds it: one binary is all a host
//! needs. `AYA_BUILD_SKIP=1` skips it (for lint-only builds); the binary then
//! says so when asked to load.
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?)
        .parent()
        .ok_or_else(|| anyhow::anyhow!("agent/ has no parent"))?
        .to_path_buf();
    let program = root.join("ebpf/program");
    let common = root.join("ebpf/common");
    println!("cargo:rerun-if-changed={}", common.display());
    let program_dir = program
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", program.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "rampart-ebpf",
            root_dir: program_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    for object in ["rampart", "rampart-bench"] {
        let out = PathBuf::from(std::env::var("OUT_DIR")?).join(object);
        if !out.exists() {
            // Skipped build: an empty object, refused with a clear error at load.
            std::fs::write(&out, [])?;
        }
    }
    Ok(())
}
