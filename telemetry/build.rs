//! Stamps the build with its version, for `roomcast_build_info{version}`: the crate
//! version plus the git commit (`0.1.0+3f2a9c1`), so a regression can be tied to a
//! release. A build without `.git` (the Docker context) takes `ROOMCAST_BUILD_VERSION`
//! (the Dockerfile passes the commit in), or else the crate version alone.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=ROOMCAST_BUILD_VERSION");
    // HEAD moves on checkout and commit; the ref it names moves on commit.
    for path in ["../.git/HEAD", "../.git/refs/heads"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let crate_version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let version = std::env::var("ROOMCAST_BUILD_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| git_commit().map(|commit| format!("{crate_version}+{commit}")))
        .unwrap_or(crate_version);
    println!("cargo:rustc-env=ROOMCAST_BUILD_VERSION={version}");
}

fn git_commit() -> Option<String> {
    let out = Command::new("git").args(["rev-parse", "--short=9", "HEAD"]).output().ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !commit.is_empty()).then_some(commit)
}
