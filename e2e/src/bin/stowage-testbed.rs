//! Runs the whole test bed in the foreground until SIGTERM or SIGINT: the control plane, the
//! node simulator, the volume and CSI simulator and the project's CRDs. When ready it writes
//! `<dir>/testbed.json`; tests find it through `STOWAGE_TESTBED_DIR=<dir>`.
//!
//! Usage: stowage-testbed --dir DIR   (`cargo xtask envtest start` runs it detached)

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use stowage_e2e::testbed::RunningBed;
use tokio::signal::unix::{SignalKind, signal};

/// Marks a directory as the bed's own, so that a restart may wipe it.
const MARKER: &str = ".stowage-testbed";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = parse_dir()?;
    prepare_dir(&dir)?;
    let started = std::time::Instant::now();
    let mut bed = RunningBed::start(&dir).await?;
    let info = bed.info().clone();
    println!(
        "test bed ready in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        info.dir.join(stowage_e2e::testbed::INFO_FILE).display()
    );
    println!("export KUBECONFIG={}", info.kubeconfig.display());
    println!("export STOWAGE_TESTBED_DIR={}", info.dir.display());

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut health = tokio::time::interval(Duration::from_secs(2));
    let outcome = loop {
        tokio::select! {
            _ = terminate.recv() => break Ok("SIGTERM"),
            _ = interrupt.recv() => break Ok("SIGINT"),
            _ = health.tick() => {
                // A bed whose apiserver died must not look alive to the tests.
                if let Err(err) = bed.check_running() {
                    break Err(err);
                }
            }
        }
    };
    match &outcome {
        Ok(signal) => println!("{signal}: stopping the test bed"),
        Err(err) => eprintln!("a control-plane component stopped: {err:#}; stopping the test bed"),
    }
    bed.stop().await;
    println!("test bed stopped");
    outcome.map(drop)
}

fn parse_dir() -> anyhow::Result<PathBuf> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next(), args.next()) {
        (Some("--dir"), Some(dir), None) => Ok(PathBuf::from(dir)),
        _ => anyhow::bail!("usage: stowage-testbed --dir DIR"),
    }
}

/// Starts from an empty directory (stale etcd data would carry objects signed with old keys),
/// but only wipes a directory that an earlier bed created.
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        anyhow::ensure!(
            empty || dir.join(MARKER).exists(),
            "{} is not empty and was not made by stowage-testbed: choose another --dir",
            dir.display()
        );
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "").with_context(|| format!("writing into {}", dir.display()))
}
