//! Records the target triple this crate is compiled for: it names the compiled-code
//! cache entries (`Host::fingerprint`), so code made for one target is never looked up
//! by a build for another (x86_64 and aarch64 nodes may share a cache directory).

fn main() {
    // Cargo always sets TARGET for build scripts.
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown-target".into());
    println!("cargo:rustc-env=ROAM_TARGET_TRIPLE={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
