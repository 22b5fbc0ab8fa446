//! tch's build script adds libtorch's rpath and `--no-as-needed -ltorch` to tch's own
//! targets only; our binaries need them too, or they need LD_LIBRARY_PATH and, on a GPU
//! machine, never load libtorch_cuda (nothing references it, so the linker drops it).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed");
    }
}
