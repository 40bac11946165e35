//! The bindings are generated from `../wit` by a macro, which cargo does not know reads those
//! files: tell it, so a changed contract rebuilds the SDK and every plugin.

fn main() {
    println!("cargo:rerun-if-changed=../wit");
}
