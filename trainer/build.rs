//! tch's build script adds libtorch's rpath and `--no-as-needed -ltorch` to tch's own
//! targets only; our binaries need them too, or they need LD_LIBRARY_PATH and, on a GPU
//! machine, never load libtorch_cuda (nothing references it, so the linker drops it).
//! It also compiles the libtorch calls tch lacks: the autocast dtype and the process group
//! of data-parallel training (csrc/dist.cpp).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=csrc");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports DEP_TCH_LIBTORCH_LIB"),
    );
    let include = lib
        .parent()
        .expect("libtorch's lib dir has a parent")
        .join("include");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        // Stand-ins for the Gloo headers libtorch's process group names (csrc/gloo/README.md).
        .include("csrc")
        .file("csrc/autocast.cpp")
        .file("csrc/dist.cpp")
        .compile("nasop_csrc");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed");
}
