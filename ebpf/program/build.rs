//! Rebuild when bpf-linker changes: it is the linker, so cargo cannot see it.
//!
//! The kernel allows misaligned packet loads on the hosts Rampart runs on
//! (x86-64, arm64); telling LLVM so turns header reads into word loads
//! instead of byte-by-byte assembly. Stack data stays aligned (the verifier
//! insists), which is why the parsed types are 8-byte aligned.
fn main() {
    println!("cargo:rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
