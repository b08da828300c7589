//! Link arguments for the freestanding binary: no C runtime start files, no libc, a
//! static non-PIE executable (nothing applies relocations at startup, so the image must
//! not need any).

fn main() {
    for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
