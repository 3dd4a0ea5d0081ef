//! `cargo xtask test`: everything CI checks, in the order that fails fastest.
//!
//! 1. `cargo fmt --check`, the CRDs in deploy/crds are current, `cargo clippy -D warnings`;
//! 2. what the tests need (Debian packages, s3s-fs, the control plane binaries);
//! 3. one test bed for the whole run (`envtest start`), shared by every test
//!    binary through `STOWAGE_TESTBED_DIR` (each test still gets its own namespace);
//! 4. `cargo nextest run --workspace`, then the bed is stopped, pass or fail.
//!
//! Arguments after `--` go to nextest, e.g. `cargo xtask test -- node`.

use std::process::Command;

use anyhow::bail;

use crate::deps;

pub fn run(args: Vec<String>) -> anyhow::Result<()> {
    let nextest_args: Vec<String> = args.iter().skip_while(|a| *a != "--").skip(1).cloned().collect();
    let root = deps::workspace_root();
    let cargo = || {
        let mut command = Command::new(env!("CARGO"));
        command.current_dir(&root);
        command
    };

    step("cargo fmt --check", cargo().args(["fmt", "--all", "--check"]))?;
    crate::crds::run(vec!["--check".into()])?;
    step(
        "cargo clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    deps::ensure_all()?;

    // Build every test before the bed starts, so the bed is not idling through a compile.
    step(
        "build tests",
        cargo().args(["nextest", "run", "--workspace", "--no-run"]),
    )?;
    let bed = crate::envtest::start()?;
    let tests = step(
        "cargo nextest run",
        cargo()
            .args(["nextest", "run", "--workspace", "--no-fail-fast"])
            .args(&nextest_args)
            .env("STOWAGE_TESTBED_DIR", &bed.dir)
            .env("KUBECONFIG", &bed.kubeconfig),
    );
    let stopped = crate::envtest::stop();
    tests?;
    stopped
}

fn step(name: &str, command: &mut Command) -> anyhow::Result<()> {
    eprintln!("==> {name}");
    let status = command.status()?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}
