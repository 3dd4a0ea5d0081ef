//! `cargo xtask bench pipeline [--quick] [--rounds N]`: Stowage's data path
//! measured as a process, side by side with the stock tools it replaces, in the
//! same run on the same files, reported as throughput, peak RSS, CPU time and
//! ratios. On a shared machine, CPU time is the steadier figure of the two.
//! `cargo xtask bench exec [--quick]` (bench_exec.rs) measures the exec-backup path through the
//! API server the same way.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use stowage_core::testing::{Generated, Pattern, S3Server};

// Each controller's bench lives in its own file beside this one.
#[path = "bench_etcd.rs"]
mod etcd;
#[path = "bench_exec.rs"]
mod exec;
#[path = "bench_resources/mod.rs"]
mod resources;
#[path = "bench_scheduler/mod.rs"]
mod scheduler;

pub fn run(args: Vec<String>) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    // Every bench installs what it measures against, as demo and test do; the benches that
    // need the test bed install its control plane when they start it.
    if matches!(
        args.first().map(String::as_str),
        Some("pipeline" | "exec" | "resources" | "scheduler" | "etcd")
    ) {
        crate::deps::ensure_packages()?;
        crate::deps::ensure_s3s_fs()?;
    }
    match args.first().map(String::as_str) {
        Some("pipeline") => pipeline(quick, rounds(&args)?),
        Some("exec") => exec::run(quick),
        Some("resources") => resources::run(quick),
        Some("scheduler") => scheduler::run(quick, &args),
        Some("etcd") => etcd::run(quick),
        _ => {
            bail!(
                "usage: cargo xtask bench pipeline [--quick] [--rounds N] | exec|resources|etcd [--quick] | scheduler [--quick] [--schedules N] [--ticks T]"
            )
        }
    }
}

/// One measured command.
struct Sample {
    label: String,
    seconds: f64,
    peak_rss_mib: f64,
    /// User plus system CPU time of the command and its children: unlike
    /// throughput, it barely moves when other work shares the machine.
    cpu_seconds: f64,
    bytes: u64,
}

impl Sample {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-6)
    }
}

/// `--rounds N`: how many times each pipeline command runs (interleaved); the fastest counts.
fn rounds(args: &[String]) -> anyhow::Result<usize> {
    match args.iter().position(|a| a == "--rounds") {
        None => Ok(1),
        Some(i) => Ok(args
            .get(i + 1)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n >= 1)
            .context("--rounds takes a number of at least 1")?),
    }
}

/// The 1, 5 and 15-minute load averages: the machine is shared, so a report says how busy it was.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn pipeline(quick: bool, rounds: usize) -> anyhow::Result<()> {
    require_tools(&[
        ("gzip", "gzip"),
        ("pigz", "pigz"),
        ("zstd", "zstd"),
        ("age", "age"),
        ("age-keygen", "age"),
        ("restic", "restic"),
        ("time", "time"),
        ("libdeflate-gzip", "libdeflate-tools"),
    ])?;
    let size: u64 = if quick { 64 << 20 } else { 1 << 30 };
    let root = crate::deps::workspace_root();
    let dir = target_dir(&root).join("stowage-bench");
    std::fs::create_dir_all(&dir)?;
    let pipe = build_release(&root, "stowage-core", &["--features", "testing", "--example", "pipe"])?;
    let key = dir.join("key.txt");
    let recipient = age_key(&key)?;

    let runtime = tokio::runtime::Runtime::new()?;
    let s3 = runtime
        .block_on(S3Server::start("bench"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let s3_url = format!("{}/{}", s3.endpoint(), s3.bucket());
    let s3_env = "AWS_ACCESS_KEY_ID=stowage-test AWS_SECRET_ACCESS_KEY=stowage-test-secret-key";

    let mut report = String::new();
    writeln!(
        report,
        "Stowage pipeline benchmark: {} per input, {} cores, best of {rounds} round(s), load average at the start {}",
        human(size),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average()
    )?;
    for (name, pattern) in [
        ("SQL-dump-like text", Pattern::SqlDump),
        ("random bytes", Pattern::Random),
    ] {
        let input = dir.join(format!(
            "{}-{size}.bin",
            if pattern == Pattern::SqlDump { "sql" } else { "random" }
        ));
        generate(&input, pattern, size)?;
        let store = dir.join("store");
        let _ = std::fs::remove_dir_all(&store);
        let restic_repo = dir.join("restic");
        let _ = std::fs::remove_dir_all(&restic_repo);
        sh(&format!(
            "RESTIC_PASSWORD=bench restic init --quiet --repo {} >/dev/null",
            restic_repo.display()
        ))?;
        let (i, p, k, st, out) = (
            input.display(),
            pipe.display(),
            key.display(),
            store.display(),
            dir.display(),
        );

        let runs: Vec<(String, String)> = vec![
            (
                "stowage gzip-6 + age → filesystem".into(),
                format!("{p} backup --fs {st} --key x.gz.age --level 6 --recipient {recipient} --input {i}"),
            ),
            (
                "stowage gzip-6 + age → s3s-fs".into(),
                format!(
                    "{s3_env} {p} backup --s3 {s3_url} --key x.gz.age --level 6 --recipient {recipient} --input {i}"
                ),
            ),
            (
                "stowage zstd-3 + age → filesystem".into(),
                format!(
                    "{p} backup --fs {st} --key x.zst.age --compression zstd --level 3 --recipient {recipient} --input {i}"
                ),
            ),
            (
                "gzip -6 | age".into(),
                format!("gzip -6 -c < {i} | age -r {recipient} > {out}/b.gz.age"),
            ),
            (
                "pigz -6 -p2 | age".into(),
                format!("pigz -6 -p2 -c < {i} | age -r {recipient} > {out}/b.pigz.age"),
            ),
            (
                "zstd -3 -T2 | age".into(),
                format!("zstd -q -3 -T2 -c < {i} | age -r {recipient} > {out}/b.zst.age"),
            ),
            // The compressors alone, output discarded: their CPU time bounds what any pipeline
            // built on them can reach on this machine's cores (see `ceiling`).
            (
                "libdeflate-gzip -6 alone → /dev/null".into(),
                format!("libdeflate-gzip -6 -c < {i} > /dev/null"),
            ),
            (
                "zstd -3 -T2 alone → /dev/null".into(),
                format!("zstd -q -3 -T2 -c < {i} > /dev/null"),
            ),
            (
                "restic backup --stdin".into(),
                format!(
                    "RESTIC_PASSWORD=bench restic backup --quiet --stdin --stdin-filename dump --repo {} < {i} >/dev/null",
                    restic_repo.display()
                ),
            ),
            (
                "stowage restore age + gunzip".into(),
                format!("{p} restore --fs {st} --key x.gz.age --identity {k} --output /dev/null"),
            ),
            (
                "age -d | gzip -d".into(),
                format!("age -d -i {k} < {out}/b.gz.age | gzip -d -c > /dev/null"),
            ),
        ];
        // Rounds interleave the commands, so a burst of load elsewhere on a
        // shared machine does not hit one command's every run.
        let mut best: Vec<Option<Sample>> = runs.iter().map(|_| None).collect();
        for round in 1..=rounds {
            for ((label, command), best) in runs.iter().zip(&mut best) {
                eprintln!("  {name}: {label} (round {round} of {rounds})…");
                let sample = measure(label, command, size)?;
                if best.as_ref().is_none_or(|b| sample.seconds < b.seconds) {
                    *best = Some(sample);
                }
            }
        }
        let samples: Vec<Sample> = best.into_iter().flatten().collect();
        let find = |label: &str| samples.iter().find(|s| s.label.starts_with(label));
        let get = |label: &str| find(label).map(Sample::mb_per_s).unwrap_or(f64::NAN);
        let cpu = |label: &str| find(label).map(|s| s.cpu_seconds).unwrap_or(f64::NAN);
        writeln!(report, "\n### {name}\n")?;
        writeln!(report, "| run | MB/s | peak RSS | seconds | CPU seconds |")?;
        writeln!(report, "|---|---:|---:|---:|---:|")?;
        for s in &samples {
            writeln!(
                report,
                "| {} | {:.0} | {:.1} MiB | {:.2} | {:.2} |",
                cell(&s.label),
                s.mb_per_s(),
                s.peak_rss_mib,
                s.seconds,
                s.cpu_seconds
            )?;
        }
        writeln!(
            report,
            "\n| ratio | throughput | CPU (theirs / ours) |\n|---|---:|---:|"
        )?;
        let gzip = "stowage gzip-6 + age → filesystem";
        for (label, ours, theirs) in [
            ("stowage gzip-6+age / gzip -6 | age", gzip, "gzip -6 | age"),
            ("stowage gzip-6+age / pigz -6 -p2 | age", gzip, "pigz -6 -p2 | age"),
            (
                "stowage gzip-6+age (s3s-fs) / gzip -6 | age",
                "stowage gzip-6 + age → s3s-fs",
                "gzip -6 | age",
            ),
            (
                "stowage zstd-3+age / zstd -3 -T2 | age",
                "stowage zstd-3",
                "zstd -3 -T2 | age",
            ),
            ("stowage gzip-6+age / restic backup --stdin", gzip, "restic"),
            (
                "stowage restore / age -d | gzip -d",
                "stowage restore",
                "age -d | gzip -d",
            ),
        ] {
            writeln!(
                report,
                "| {} | {:.2}x | {:.2}x |",
                cell(label),
                get(ours) / get(theirs),
                cpu(theirs) / cpu(ours)
            )?;
        }
        // The best ratio any pipeline could reach here: the baseline's seconds against the
        // compressor's own CPU time spread perfectly over every core, with nothing else to do
        // (no hashing, no encryption, no I/O). A target above it needs more cores, not code.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let seconds = |label: &str| find(label).map(|s| s.seconds).unwrap_or(f64::NAN);
        for (label, compressor, baseline) in [
            (
                "ceiling: gzip -6 | age / (libdeflate level 6 CPU ÷ cores)",
                "libdeflate-gzip -6 alone",
                "gzip -6 | age",
            ),
            (
                "ceiling: zstd -3 -T2 | age / (zstd -3 CPU ÷ cores)",
                "zstd -3 -T2 alone",
                "zstd -3 -T2 | age",
            ),
        ] {
            writeln!(
                report,
                "| {} | {:.2}x | |",
                cell(label),
                seconds(baseline) / (cpu(compressor) / cores)
            )?;
        }
    }

    // Memory must not grow with the stream: the same pipeline on a stream 8x larger, generated on the fly.
    let big = if quick { 512u64 << 20 } else { 8u64 << 30 };
    let store = dir.join("store");
    let mut rss = Vec::new();
    for len in [size, big] {
        let command = format!(
            "{} backup --fs {} --key rss.gz.age --level 6 --recipient {recipient} --generate sql:{len}",
            pipe.display(),
            store.display()
        );
        eprintln!("  memory: {} generated…", human(len));
        rss.push(measure(
            &format!("stowage gzip-6 + age, {} generated", human(len)),
            &command,
            len,
        )?);
    }
    writeln!(
        report,
        "\n### Peak memory against stream size\n\n| run | MB/s | peak RSS |\n|---|---:|---:|"
    )?;
    for s in &rss {
        writeln!(
            report,
            "| {} | {:.0} | {:.1} MiB |",
            s.label,
            s.mb_per_s(),
            s.peak_rss_mib
        )?;
    }
    drop(s3);
    println!("{report}");
    let file = dir.join(if quick { "pipeline-quick.md" } else { "pipeline.md" });
    std::fs::write(&file, &report)?;
    eprintln!("report written to {}", file.display());
    Ok(())
}

/// `text` as a Markdown table cell: the shell pipes in the labels would end the cell.
pub(crate) fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn measure(label: &str, command: &str, bytes: u64) -> anyhow::Result<Sample> {
    let timing = tempfile::NamedTempFile::new()?;
    let started = Instant::now();
    let output = Command::new("/usr/bin/time")
        .args(["-f", "%M %U %S", "-o"])
        .arg(timing.path())
        .args(["bash", "-o", "pipefail", "-c", command])
        .output()?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "{label} failed: {}\n{}",
            command,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The last line is "peak-RSS-KiB user-seconds system-seconds".
    let timing = std::fs::read_to_string(timing.path())?;
    let fields: Vec<f64> = timing
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    Ok(Sample {
        label: label.to_string(),
        seconds,
        peak_rss_mib: field(0) / 1024.0,
        cpu_seconds: field(1) + field(2),
        bytes,
    })
}

pub(crate) fn generate(path: &Path, pattern: Pattern, size: u64) -> anyhow::Result<()> {
    if std::fs::metadata(path).map(|m| m.len() == size).unwrap_or(false) {
        return Ok(());
    }
    eprintln!("generating {} of {pattern:?} into {}…", human(size), path.display());
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    std::io::copy(&mut Generated::new(pattern, 42, size), &mut file).context("writing benchmark input")?;
    Ok(())
}

fn sh(command: &str) -> anyhow::Result<()> {
    let status = Command::new("bash").args(["-c", command]).status()?;
    if !status.success() {
        bail!("{command} failed");
    }
    Ok(())
}

/// Fails, naming the Debian package to install, unless every `(tool, package)` is on PATH.
pub(crate) fn require_tools(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (tool, package) in tools {
        if !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()) {
            bail!("{tool} not found: apt-get install {package}");
        }
    }
    Ok(())
}

/// The age identity in `key`, made with age-keygen if it is missing; returns its recipient.
pub(crate) fn age_key(key: &Path) -> anyhow::Result<String> {
    if !key.exists() {
        let status = Command::new("age-keygen")
            .arg("-o")
            .arg(key)
            .stderr(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("age-keygen -o {} failed", key.display());
        }
    }
    let output = Command::new("age-keygen").arg("-y").arg(key).output()?;
    if !output.status.success() {
        bail!("age-keygen -y {} failed", key.display());
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

/// Builds `package`'s `target` (`["--bin", name]` or `["--example", name]`, plus any other
/// cargo arguments) with the release profile and returns the built binary's path.
pub(crate) fn build_release(root: &Path, package: &str, target: &[&str]) -> anyhow::Result<PathBuf> {
    let name = target.last().copied().unwrap_or(package);
    eprintln!("building {name} (release)…");
    let status = Command::new(env!("CARGO"))
        .current_dir(root)
        .args(["build", "--release", "--quiet", "-p", package])
        .args(target)
        .status()?;
    if !status.success() {
        bail!("building {name} (release) failed");
    }
    let built = target_dir(root).join("release");
    Ok(if target.contains(&"--example") {
        built.join("examples").join(name)
    } else {
        built.join(name)
    })
}

pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

pub(crate) fn human(bytes: u64) -> String {
    stowage_core::human_bytes(bytes)
}
