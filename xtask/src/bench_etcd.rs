//! `cargo xtask bench etcd [--quick]`: an etcd backup through Stowage against the stock way,
//! `etcdctl snapshot save f && gzip -6 -c f | age -r R > out`, in the same run on the same etcd.
//!
//! The bench starts a Debian etcd (as the tests do), fills it with about 500 MB (50 MB with
//! `--quick`) of 100 KiB SQL-dump-like values by concurrent puts, then runs each phase as a
//! process under /usr/bin/time (wall time and peak RSS). Stowage's phase is the release binary
//! `etcd_bench backup` (xtask/src/bin): etcd-backup-ctrl's own backup path (member
//! choice, the snapshot stream checked against etcd's SHA-256 trailer, core's parallel gzip-6
//! and age, a Filesystem store, the manifest). The phases run in interleaved rounds and the best
//! of each counts, since the machine is shared. Throughput is snapshot bytes per second.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};
use stowage_e2e::etcd::{EtcdOptions, EtcdServer};

use super::{Sample, age_key, build_release, human, load_average, measure, require_tools, target_dir};

/// Rounds of all phases; each phase's best counts.
const ROUNDS: usize = 3;
/// Size of each value put into etcd.
const VALUE_SIZE: u64 = 100 * 1024;

pub fn run(quick: bool) -> anyhow::Result<()> {
    require_tools(&[
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
        ("gzip", "gzip"),
        ("age", "age"),
        ("age-keygen", "age"),
        ("time", "time"),
    ])?;
    let fill_bytes: u64 = if quick { 50_000_000 } else { 500_000_000 };
    let root = crate::deps::workspace_root();
    let dir = target_dir(&root).join("stowage-bench");
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("key.txt");
    let recipient = age_key(&key)?;

    let example = build_release(&root, "stowage-xtask", &["--bin", "etcd_bench"])?;

    let etcd = EtcdServer::start(EtcdOptions::default())?;
    let endpoint = etcd.endpoint().to_string();
    eprintln!(
        "filling etcd at {endpoint} with {} in {} values…",
        human(fill_bytes),
        human(VALUE_SIZE)
    );
    let output = Command::new(&example)
        .args(["fill", "--endpoint", &endpoint])
        .args(["--bytes", &fill_bytes.to_string()])
        .args(["--value-size", &VALUE_SIZE.to_string()])
        .output()
        .context("running etcd_bench fill")?;
    if !output.status.success() {
        bail!(
            "filling etcd failed: {}\n(etcd's log: {})",
            String::from_utf8_lossy(&output.stderr),
            etcd.log_path().display()
        );
    }
    let filled: serde_json::Value = serde_json::from_slice(&output.stdout).context("reading fill's result")?;
    eprintln!("filled: {filled}");

    let store = dir.join("etcd-store");
    let snapshot = dir.join("etcd-snapshot.db");
    let out = dir.join("etcd-snapshot.db.gz.age");
    let clean = || {
        let _ = std::fs::remove_dir_all(&store);
        let _ = std::fs::remove_file(&snapshot);
        let _ = std::fs::remove_file(&out);
    };
    // A first save tells the snapshot's size (and warms etcd's page cache for every phase alike).
    clean();
    let etcdctl = format!("ETCDCTL_API=3 etcdctl --endpoints={endpoint}");
    let save = format!("{etcdctl} snapshot save {} >/dev/null", snapshot.display());
    measure("warm-up", &save, 0)?;
    let snapshot_bytes = std::fs::metadata(&snapshot)?.len();
    clean();

    let phases: [(&str, String); 3] = [
        (
            "Stowage: etcd-backup-ctrl's backup path (snapshot stream → gzip-6 + age → filesystem)",
            format!(
                "{} backup --endpoint {endpoint} --fs {} --level 6 --recipient {recipient} >/dev/null",
                example.display(),
                store.display()
            ),
        ),
        (
            "etcdctl snapshot save f && gzip -6 -c f | age -r R > out",
            format!(
                "{save} && gzip -6 -c {} | age -r {recipient} > {}",
                snapshot.display(),
                out.display()
            ),
        ),
        ("etcdctl snapshot save f (no compression, no encryption)", save.clone()),
    ];
    let load_before = load_average();
    let mut best: Vec<Option<Sample>> = phases.iter().map(|_| None).collect();
    let mut ranges: Vec<(f64, f64)> = phases.iter().map(|_| (f64::INFINITY, 0.0)).collect();
    let mut stored_bytes = 0;
    for round in 1..=ROUNDS {
        for (index, (label, command)) in phases.iter().enumerate() {
            eprintln!("  round {round}/{ROUNDS}: {label}…");
            clean();
            let sample = measure(label, command, snapshot_bytes)?;
            if index == 0 {
                stored_bytes = dir_size(&store);
            }
            let range = &mut ranges[index];
            *range = (range.0.min(sample.mb_per_s()), range.1.max(sample.mb_per_s()));
            if best[index].as_ref().is_none_or(|b| sample.seconds < b.seconds) {
                best[index] = Some(sample);
            }
        }
    }
    clean();
    let load_after = load_average();
    drop(etcd);
    let samples: Vec<Sample> = best.into_iter().flatten().collect();

    let mut report = String::new();
    writeln!(
        report,
        "Stowage etcd benchmark: a {} snapshot ({} keys of {} SQL-dump-like values), {} cores, \
         best of {ROUNDS} interleaved rounds, load average {load_before} before and {load_after} after",
        human(snapshot_bytes),
        filled["keys"],
        human(VALUE_SIZE),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )?;
    writeln!(
        report,
        "\n| run | MB/s | MB/s over rounds | peak RSS | seconds |\n|---|---:|---:|---:|---:|"
    )?;
    for (s, (low, high)) in samples.iter().zip(&ranges) {
        writeln!(
            report,
            "| {} | {:.0} | {low:.0}–{high:.0} | {:.1} MiB | {:.2} |",
            super::cell(&s.label),
            s.mb_per_s(),
            s.peak_rss_mib,
            s.seconds
        )?;
    }
    let rate = |index: usize| samples.get(index).map_or(f64::NAN, Sample::mb_per_s);
    writeln!(report, "\n| ratio | value | target |\n|---|---:|---:|")?;
    writeln!(
        report,
        "| Stowage / etcdctl snapshot save && gzip -6 \\| age | {:.2}x | ≥ 1.5x |",
        rate(0) / rate(1)
    )?;
    writeln!(
        report,
        "| Stowage / etcdctl snapshot save alone | {:.2}x | |",
        rate(0) / rate(2)
    )?;
    writeln!(
        report,
        "\nStored by Stowage: {} ({:.0}% of the snapshot), written once, no temporary file.",
        human(stored_bytes),
        100.0 * stored_bytes as f64 / snapshot_bytes.max(1) as f64
    )?;
    println!("{report}");
    let file = dir.join(if quick { "etcd-quick.md" } else { "etcd.md" });
    std::fs::write(&file, &report)?;
    eprintln!("report written to {}", file.display());
    Ok(())
}

/// Bytes of all files under `dir` (the payload and its manifest).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_size(&entry.path()),
            _ => entry.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}
