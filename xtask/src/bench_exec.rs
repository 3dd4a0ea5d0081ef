//! `cargo xtask bench exec [--quick]`: the exec-backup data path through the real API server and
//! the test bed's node simulator, against core alone on the same data and against
//! `kubectl exec | gzip -6 | age`, in one run.
//!
//! Every phase runs the release binary `exec_throughput` (xtask/src/bin) once (the
//! Pod phases in a namespace and Pod of their own, on SQL-dump-like data in a file that the Pod
//! reads with `cat` through a hostPath volume) and is timed inside it, so that starting a Pod is
//! not counted; see that binary for what each phase does. The phases run in three interleaved
//! rounds and the best of each counts, since the machine and the bed are shared.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};
use stowage_core::testing::Pattern;

use super::{age_key, build_release, generate, human, load_average, require_tools, target_dir};

/// The phases, in the order they run: (phase, label).
const PHASES: [(&str, &str); 4] = [
    ("core", "core alone: file → gzip-6 + age → filesystem"),
    ("exec", "exec alone: `cat` through the apiserver, stdout dropped"),
    (
        "backup",
        "exec path: `cat` through the apiserver → gzip-6 + age → filesystem",
    ),
    ("kubectl", "kubectl exec … cat | gzip -6 | age > file"),
];

/// Rounds of all phases; each phase's best counts.
const ROUNDS: usize = 3;

/// What one phase measured.
struct Measured {
    label: &'static str,
    bytes: u64,
    seconds: f64,
    peak_rss_kib: u64,
}

impl Measured {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-6)
    }
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    require_tools(&[
        ("kubectl", "kubernetes-client"),
        ("gzip", "gzip"),
        ("age", "age"),
        ("age-keygen", "age"),
        ("time", "time"),
    ])?;
    let size: u64 = if quick { 128 << 20 } else { 1 << 30 };
    let root = crate::deps::workspace_root();
    let dir = target_dir(&root).join("stowage-bench");
    std::fs::create_dir_all(&dir)?;
    let input = dir.join(format!("sql-{size}.bin"));
    generate(&input, Pattern::SqlDump, size)?;
    let key = dir.join("key.txt");
    let recipient = age_key(&key)?;

    let bed = crate::envtest::start()?;
    let example = build_release(&root, "stowage-xtask", &["--bin", "exec_throughput"])?;
    let store = dir.join("exec-store");
    let _ = std::fs::remove_dir_all(&store);

    let load_before = load_average();
    // The machine is shared: the phases run in interleaved rounds and the best of each counts.
    let mut best: Vec<Option<Measured>> = PHASES.iter().map(|_| None).collect();
    let mut ranges: Vec<(f64, f64)> = PHASES.iter().map(|_| (f64::INFINITY, 0.0)).collect();
    for round in 1..=ROUNDS {
        for (index, (phase, label)) in PHASES.into_iter().enumerate() {
            eprintln!("  round {round}/{ROUNDS}: {label}…");
            let run = Phase {
                example: &example,
                input: &input,
                store: &store,
                recipient: &recipient,
                output: &dir.join("kubectl.gz.age"),
                key: &key,
                kubeconfig: &bed.kubeconfig,
            };
            let m = run.measure(phase, label)?;
            let range = &mut ranges[index];
            *range = (range.0.min(m.mb_per_s()), range.1.max(m.mb_per_s()));
            if best[index].as_ref().is_none_or(|b| m.seconds < b.seconds) {
                best[index] = Some(m);
            }
        }
    }
    let measured: Vec<Measured> = best.into_iter().flatten().collect();
    let load_after = load_average();

    let mut report = String::new();
    writeln!(
        report,
        "Stowage exec benchmark: {} of SQL-dump-like text, {} cores, best of {ROUNDS} interleaved rounds, \
         load average {load_before} before and {load_after} after",
        human(size),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )?;
    writeln!(
        report,
        "\n| run | MB/s | MB/s over rounds | peak RSS | seconds |\n|---|---:|---:|---:|---:|"
    )?;
    for (m, (low, high)) in measured.iter().zip(&ranges) {
        writeln!(
            report,
            "| {} | {:.0} | {low:.0}–{high:.0} | {:.1} MiB | {:.2} |",
            super::cell(m.label),
            m.mb_per_s(),
            m.peak_rss_kib as f64 / 1024.0,
            m.seconds
        )?;
    }
    let rate = |index: usize| measured.get(index).map_or(f64::NAN, Measured::mb_per_s);
    let (core, exec, path, kubectl) = (rate(0), rate(1), rate(2), rate(3));
    writeln!(report, "\n| ratio | value | target |\n|---|---:|---:|")?;
    writeln!(report, "| exec path / core alone | {:.2}x | ≥ 0.80x |", path / core)?;
    writeln!(
        report,
        "| exec path / kubectl exec \\| gzip -6 \\| age | {:.2}x | |",
        path / kubectl
    )?;
    writeln!(report, "| exec path / exec alone | {:.2}x | |", path / exec)?;
    println!("{report}");
    let file = dir.join(if quick { "exec-quick.md" } else { "exec.md" });
    std::fs::write(&file, &report)?;
    eprintln!("report written to {}", file.display());
    let _ = std::fs::remove_dir_all(&store);
    let _ = std::fs::remove_file(dir.join("kubectl.gz.age"));
    Ok(())
}

/// Where one run of the example reads, writes and connects.
struct Phase<'a> {
    example: &'a Path,
    input: &'a Path,
    store: &'a Path,
    recipient: &'a str,
    output: &'a Path,
    key: &'a Path,
    kubeconfig: &'a Path,
}

impl Phase<'_> {
    /// Runs the example for `phase` and reads its result line.
    fn measure(&self, phase: &str, label: &'static str) -> anyhow::Result<Measured> {
        let output = Command::new(self.example)
            .arg(phase)
            .arg("--input")
            .arg(self.input)
            .arg("--fs")
            .arg(self.store)
            .args(["--recipient", self.recipient])
            .arg("--output")
            .arg(self.output)
            .arg("--identity")
            .arg(self.key)
            .env("KUBECONFIG", self.kubeconfig)
            .output()
            .context("running exec_throughput")?;
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            bail!("phase {phase} failed: {}", output.status);
        }
        let line: serde_json::Value =
            serde_json::from_slice(&output.stdout).with_context(|| format!("reading phase {phase}'s result"))?;
        let number = |field: &str| {
            line.get(field)
                .and_then(serde_json::Value::as_f64)
                .with_context(|| format!("phase {phase}'s result has no {field}: {line}"))
        };
        Ok(Measured {
            label,
            bytes: number("bytes")? as u64,
            seconds: number("seconds")?,
            peak_rss_kib: number("peak_rss_kib")? as u64,
        })
    }
}
