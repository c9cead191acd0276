//! Rebuild when bpf-linker changes: it is the linker, so cargo cannot see it.
//!
//! The kernel allows misaligned packet loads on the hosts Rampart runs on
//! (x86-64, arm64); telling LLVM so turns header reads into word loads
//! instead of byte-by-byte assembly. Stack data stays aligned (the verifier
//! insists), which is why the parsed types are 8-byte aligned.
fn main() {
    println!("cargo:rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
    // The list and ban lookups are BPF global functions (see `maps.rs`); exported,
    // they keep global linkage and the verifier checks each once.
    for probe in [
        "rampart_allow_v4",
        "rampart_block_v4",
        "rampart_allow_v6",
        "rampart_block_v6",
        "rampart_find_v4",
        "rampart_find_v6",
        "rampart_ban_v4",
        "rampart_ban_v6",
        "rampart_start_ban",
        "rampart_meter",
        "rampart_sample",
        "rampart_syn_answer",
        "rampart_syn_defence",
        "rampart_ack_check",
    ] {
        println!("cargo:rustc-link-arg-bins=--export={probe}");
    }
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
