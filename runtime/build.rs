//! Builds the first-party plugins and the test fixtures in `plugins/` for wasm32-wasip2, so that
//! one `cargo test` (or `cargo run -- demo`) builds everything, and the demo can embed the sql
//! connector and need nothing installed.
//!
//! Each plugin is built by its own `cargo build -p`: connectors and rules enable different SDK
//! features, and building them together would unify those features into one SDK build that
//! implements two worlds (which cannot link). The nested cargo uses `plugins/target`, outside this
//! build's target directory, so it never waits on this build's lock.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The plugin folders: every `<group>/<name>/Cargo.toml` under `plugins/` is a plugin, so adding
/// one is adding a folder.
const GROUPS: &[&str] = &["connectors", "rules", "fixtures"];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest
        .parent()
        .expect("runtime/ sits in the workspace root")
        .to_owned();
    let plugins = root.join("plugins");
    for watched in [
        "wit",
        "sdk/src",
        "sdk/Cargo.toml",
        "plugins/Cargo.toml",
        "plugins/connectors",
        "plugins/rules",
        "plugins/fixtures",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let out = plugins.join("target").join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=DUPLEX_PLUGIN_DIR={}", out.display());

    ensure_wasm_target();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for plugin in &packages(&plugins) {
        let mut cmd = Command::new(&cargo);
        cmd.args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            plugin,
        ])
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .current_dir(&plugins);
        // What this build's cargo set for its own compilation must not leak into the guest build.
        for var in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "CARGO_BUILD_RUSTFLAGS",
            "CLIPPY_ARGS",
        ] {
            cmd.env_remove(var);
        }
        let output = match cmd.output() {
            Ok(o) => o,
            Err(e) => panic!("could not run cargo to build plugin {plugin}: {e}"),
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let hint = if stderr.contains("wasm32-wasip2")
                && (stderr.contains("target may not be installed")
                    || stderr.contains("can't find crate for `core`")
                    || stderr.contains("can't find crate for `std`"))
            {
                "\n\nThe wasm32-wasip2 target is missing: run `rustup target add wasm32-wasip2`."
            } else {
                ""
            };
            panic!("building plugin {plugin} for wasm32-wasip2 failed:\n{stderr}{hint}");
        }
        assert!(
            artifact(&out, plugin).exists(),
            "cargo built {plugin} but {} is missing",
            artifact(&out, plugin).display()
        );
    }
}

/// Adds the wasm32-wasip2 target to the toolchain building this, when it lacks it, so that the
/// README's first `cargo run` needs no set-up by hand. A rust-toolchain.toml naming the target
/// would have rustup fetch it on every cargo call where the target was installed some other way.
fn ensure_wasm_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(sysroot) = &sysroot {
        if sysroot.join("lib/rustlib/wasm32-wasip2/lib").is_dir() {
            return;
        }
    }
    println!("cargo:warning=adding the wasm32-wasip2 target (rustup target add wasm32-wasip2), which the plugins are built for");
    let added = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status();
    if !added.is_ok_and(|s| s.success()) {
        panic!(
            "the wasm32-wasip2 target is missing and `rustup target add wasm32-wasip2` failed; \
             add it to the Rust toolchain by hand (the plugins are built for it)"
        );
    }
}

/// The package names of the plugins, sorted.
fn packages(plugins: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for group in GROUPS {
        let Ok(entries) = std::fs::read_dir(plugins.join(group)) else {
            continue;
        };
        for entry in entries.flatten() {
            let manifest = entry.path().join("Cargo.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else {
                continue;
            };
            let name = text
                .lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("name = ")
                        .map(|v| v.trim_matches('"').to_owned())
                })
                .unwrap_or_else(|| panic!("{} has no package name", manifest.display()));
            names.push(name);
        }
    }
    names.sort();
    names
}

fn artifact(dir: &Path, plugin: &str) -> PathBuf {
    dir.join(format!("{}.wasm", plugin.replace('-', "_")))
}
