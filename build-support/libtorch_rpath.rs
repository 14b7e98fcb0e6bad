// Shared by the rollout and trainer crates (their Cargo.toml `build` key points here).
// Bake libtorch's library folders into the rpath of every binary and test of this crate,
// so nobody has to set LD_LIBRARY_PATH. LIBTORCH comes from .cargo/config.toml.
pub fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else { return };
    let torch = std::path::Path::new(&libtorch);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", torch.join("lib").display());
    // CUDA runtime libraries installed next to torch/ by scripts/setup-libtorch.sh.
    let Some(site) = torch.parent() else { return };
    let cuda_lib = site.join("nvidia/cu13/lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", cuda_lib.display());
    println!("cargo:rerun-if-changed={}", cuda_lib.display());
    // With the full CUDA stack installed (GPU machines), keep libtorch.so (and through it
    // libtorch_cuda.so) linked although no symbol is used directly, or CUDA is not found at
    // run time. On CPU installs those libraries' CUDA dependencies are absent, so skip it.
    if cuda_lib.join("libcublas.so.13").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed");
    }
}
