//! `cargo xtask envtest install | start | stop`: the test bed as a background service.
//!
//! `start` runs `stowage-testbed` detached (its own session, output in the state directory)
//! and prints the variables that point tests and kubectl at it:
//!
//! ```text
//! eval "$(cargo xtask envtest start)"
//! ```
//!
//! The state directory is `${XDG_RUNTIME_DIR:-/tmp}/stowage-testbed/`: `testbed.pid`,
//! `testbed.log` (the process's output) and `bed/` (the bed itself: kubeconfig, certificates,
//! component logs, `testbed.json`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use stowage_e2e::process::{log_tail, pid_alive, spawn_detached, terminate_pid};
use stowage_e2e::testbed::TestBedInfo;

/// How long `start` waits for a bed to become ready (it takes seconds with cached binaries).
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `stop` lets the bed shut down cleanly before killing it.
const STOP_GRACE: Duration = Duration::from_secs(30);

pub fn run(args: Vec<String>) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("install") => {
            let binaries = stowage_e2e::envtest::install()?;
            eprintln!(
                "envtest installed:\n  {}\n  {}\n  {}",
                binaries.etcd.display(),
                binaries.kube_apiserver.display(),
                binaries.kube_controller_manager.display()
            );
            Ok(())
        }
        Some("start") => {
            let bed = start()?;
            println!("export KUBECONFIG={}", bed.kubeconfig.display());
            println!("export STOWAGE_TESTBED_DIR={}", bed.dir.display());
            Ok(())
        }
        Some("stop") => stop(),
        _ => anyhow::bail!("usage: cargo xtask envtest install|start|stop"),
    }
}

/// `${XDG_RUNTIME_DIR:-/tmp}/stowage-testbed`.
pub fn state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    base.join("stowage-testbed")
}

fn pid_file() -> PathBuf {
    state_dir().join("testbed.pid")
}

fn bed_dir() -> PathBuf {
    state_dir().join("bed")
}

/// Starts the bed unless one is already running, and returns its description once ready.
pub fn start() -> anyhow::Result<TestBedInfo> {
    stowage_e2e::envtest::ensure_installed()?;
    let state = state_dir();
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    if let Some(pid) = running_pid() {
        eprintln!("envtest: the test bed is already running (pid {pid})");
        return wait_ready(pid, &state.join("testbed.log"));
    }

    let binary = build_testbed_binary()?;
    let log = state.join("testbed.log");
    let _ = std::fs::remove_file(&log);
    let mut command = Command::new(&binary);
    command.arg("--dir").arg(bed_dir());
    let pid = spawn_detached(command, &log)?;
    std::fs::write(pid_file(), format!("{pid}\n")).with_context(|| format!("writing {}", pid_file().display()))?;
    eprintln!("envtest: started the test bed (pid {pid}, log {})", log.display());
    wait_ready(pid, &log)
}

/// Stops the running bed, if any, and waits until its process has gone.
pub fn stop() -> anyhow::Result<()> {
    let Some(pid) = running_pid() else {
        eprintln!("envtest: no test bed is running");
        let _ = std::fs::remove_file(pid_file());
        return Ok(());
    };
    eprintln!("envtest: stopping the test bed (pid {pid})");
    terminate_pid(pid, STOP_GRACE)?;
    let _ = std::fs::remove_file(pid_file());
    eprintln!("envtest: stopped");
    Ok(())
}

/// The pid in the pid file, if that process still runs.
fn running_pid() -> Option<u32> {
    let text = std::fs::read_to_string(pid_file()).ok()?;
    let pid = text.trim().parse().ok()?;
    pid_alive(pid).then_some(pid)
}

/// Builds `stowage-testbed` beside this xtask binary (same target directory and profile).
fn build_testbed_binary() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("envtest: building stowage-testbed");
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--package",
            "stowage-e2e",
            "--bin",
            "stowage-testbed",
        ])
        .status()
        .context("running cargo build")?;
    anyhow::ensure!(status.success(), "cargo build of stowage-testbed failed: {status}");
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let binary = exe.with_file_name("stowage-testbed");
    anyhow::ensure!(binary.is_file(), "{} was not built", binary.display());
    Ok(binary)
}

/// Waits until the bed of process `pid` has written its testbed.json.
fn wait_ready(pid: u32, log: &Path) -> anyhow::Result<TestBedInfo> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        // The file of an earlier bed may linger for a moment: only this process's counts.
        if let Ok(info) = TestBedInfo::read(&bed_dir())
            && info.pids.get("testbed") == Some(&pid)
        {
            return Ok(info);
        }
        anyhow::ensure!(
            pid_alive(pid),
            "the test bed (pid {pid}) exited before it was ready; the end of {}:\n{}",
            log.display(),
            log_tail(log, 40)
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "the test bed (pid {pid}) not ready after {READY_TIMEOUT:?}; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
