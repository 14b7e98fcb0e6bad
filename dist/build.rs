// Compiles src/shim.cpp against the libtorch that scripts/setup-libtorch.sh installed
// (LIBTORCH, from .cargo/config.toml), with the Gloo headers that script also fetched
// (libtorch ships c10d's headers but not Gloo's). Without those headers the shim is built
// without Gloo and every call says how to get them. Also bakes libtorch's rpath into this
// crate's tests.
use std::path::Path;

#[path = "../build-support/libtorch_rpath.rs"]
mod rpath;

fn main() {
    rpath::main();
    println!("cargo:rerun-if-changed=src/shim.cpp");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        panic!("LIBTORCH is not set: run scripts/setup-libtorch.sh (the workspace's .cargo/config.toml points LIBTORCH at it)");
    };
    let torch = Path::new(&libtorch);
    let gloo = torch.parent().and_then(|site| site.parent()).map(|l| l.join("gloo/include")).unwrap();
    println!("cargo:rerun-if-changed={}", gloo.display());
    let mut b = cc::Build::new();
    b.cpp(true)
        .file("src/shim.cpp")
        .include(torch.join("include"))
        .include(torch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false);
    if gloo.join("gloo/context.h").exists() {
        b.include(&gloo).define("USE_C10D_GLOO", None);
    } else {
        println!(
            "cargo:warning=Gloo headers not found at {}: ponder-dist is built without Gloo (run scripts/setup-libtorch.sh)",
            gloo.display()
        );
    }
    b.compile("ponder_dist_shim");
    println!("cargo:rustc-link-search=native={}", torch.join("lib").display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
