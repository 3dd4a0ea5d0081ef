//! `cargo xtask <command>`: makes sure the machine can build the workspace, then runs the
//! project's tasks (the `stowage-xtask` package, which does the work).
//!
//! The tasks link every controller, and etcd-client's build script compiles etcd's protobuf
//! definitions with `protoc` and protobuf's well-known types. A fresh Debian machine has
//! neither, and the tasks could not even be built to install them, so the README's two
//! commands would fail at the build. This launcher has no dependencies and always builds.

use std::path::Path;
use std::process::{Command, ExitCode};

/// Debian packages that building the workspace needs: (a file that proves it is installed,
/// the package).
const BUILD_PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/protoc", "protobuf-compiler"),
    ("/usr/include/google/protobuf/descriptor.proto", "libprotobuf-dev"),
];

fn main() -> ExitCode {
    if let Err(message) = install_build_packages() {
        eprintln!("cargo xtask: {message}");
        return ExitCode::FAILURE;
    }
    // `cargo run` sets CARGO to the cargo that runs us, so the tasks build with the same one.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["run", "--quiet", "--package", "stowage-xtask", "--"])
        .args(std::env::args_os().skip(1))
        .status();
    match status {
        Ok(status) => ExitCode::from(status.code().and_then(|code| u8::try_from(code).ok()).unwrap_or(1)),
        Err(error) => {
            eprintln!("cargo xtask: could not run cargo to build the tasks: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the missing build packages with apt-get, in one call.
fn install_build_packages() -> Result<(), String> {
    let missing: Vec<&str> = BUILD_PACKAGES
        .iter()
        .filter(|(proof, _)| !Path::new(proof).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    eprintln!("cargo xtask: installing what the build needs: {list}");
    let how = format!("install them (as root: apt-get install -y {list}) and run cargo xtask again");
    apt_get(&["update", "-qq"]).map_err(|error| format!("apt-get update failed ({error}); {how}"))?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt_get(&install).map_err(|error| format!("apt-get install failed ({error}); {how}"))
}

fn apt_get(args: &[&str]) -> Result<(), String> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|error| error.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(status.to_string())
    }
}
