//! `cargo xtask bench resources [--quick]`: resource-backup-ctrl (the release binary, as a
//! process against the test bed) backing up and restoring ConfigMaps and Secrets of 1-4 KiB
//! spread over 50 namespaces, against a shell loop of `kubectl get <resource> -A -o json` over
//! the same objects piped to `gzip -6 | age`, in one run.
//!
//! The bed holds 50,000 objects (5,000 and 10 namespaces with `--quick`), labelled in batches
//! of 5,000 so that ResourceSets select 5,000, 20,000 or all of them. Backup and kubectl run
//! over 20,000 in two interleaved rounds (best counts); the 20,000 are restored into new
//! namespaces (every object created); the controller's peak RSS (VmHWM, reset before each run)
//! is measured for a backup and a restore of 5,000 and of 50,000 objects, each in a fresh
//! process, and for a backup of 100 Secrets of 512 KiB (20 with `--quick`), whose list pages
//! hold one or two of them. Everything the bench creates is deleted at the end.
//!
//! `--rss` runs only the peak-RSS measurements (backup and restore of the small batch and of
//! all objects), for working on the controller's memory; `--keep` leaves the namespaces and
//! their objects in the bed, so that the next run creates none (the full run is unchanged).
//! `STOWAGE_BENCH_CONTROLLER=<binary>` measures that controller binary instead of building one.
//!
//! This file runs and reports the measurements; seed.rs fills the bed (namespaces, objects,
//! storage, ResourceSets) and empties it, controller.rs runs the controller process and reads
//! its peak RSS.

mod controller;
mod seed;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use stowage_api::{ResourceBackup, ResourceRestore};
use stowage_e2e::bed::TestBed;

use super::{age_key, build_release, load_average, require_tools, target_dir};
use controller::{Controller, stop};
use seed::ensure_namespace;

const LABEL: &str = "stowage.io/bench";
const BATCH: &str = "stowage.io/bench-batch";
const PREFIX: &str = "rbench";
const SYSTEM: &str = "rbench-system";
/// Objects created at once.
const CREATING: usize = 32;

/// The sizes of one run.
struct Sizes {
    namespaces: usize,
    /// Objects per batch label; also the "small" measurement.
    batch: usize,
    /// Objects of the timed backup, kubectl and restore runs.
    main: usize,
    /// Objects in the bed; the "large" measurement.
    all: usize,
    /// Secrets of 512 KiB in a namespace of their own.
    large: usize,
}

/// One measured run.
struct Row {
    label: String,
    objects: u64,
    seconds: f64,
    peak_rss_kib: Option<u64>,
}

impl Row {
    fn per_second(&self) -> f64 {
        self.objects as f64 / self.seconds.max(1e-6)
    }
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    require_tools(&[
        ("kubectl", "kubernetes-client"),
        ("gzip", "gzip"),
        ("age", "age"),
        ("age-keygen", "age"),
    ])?;
    let sizes = if quick {
        Sizes {
            namespaces: 10,
            batch: 500,
            main: 2_000,
            all: 5_000,
            large: 20,
        }
    } else {
        Sizes {
            namespaces: 50,
            batch: 5_000,
            main: 20_000,
            all: 50_000,
            large: 100,
        }
    };
    let root = crate::deps::workspace_root();
    // A directory of its own: other benches clean target/stowage-bench.
    let dir = target_dir(&root).join("stowage-bench-resources");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("store"))?;
    let key = dir.join("key.txt");
    let recipient = age_key(&key)?;

    // Another build of the controller to compare (e.g. a copy of an earlier commit's).
    let binary = match std::env::var_os("STOWAGE_BENCH_CONTROLLER") {
        Some(binary) => PathBuf::from(binary),
        None => build_release(
            &root,
            "stowage-resource-backup-ctrl",
            &["--bin", "resource-backup-ctrl"],
        )?,
    };
    let info = crate::envtest::start()?;
    let bench = Bench {
        binary,
        kubeconfig: info.kubeconfig.clone(),
        dir: dir.clone(),
        identity: std::fs::read_to_string(&key)?,
        recipient,
        sizes,
        rss_only: flag("--rss"),
    };
    let keep = flag("--keep");
    let result = tokio::runtime::Runtime::new()?.block_on(async {
        let bed = TestBed::connect(info).await?;
        let client = bed.client();
        let measured = bench.measure(&client).await;
        eprintln!("cleaning up…");
        let cleaned = bench.clean_up(&client, keep).await;
        measured.and_then(|report| cleaned.map(|()| report))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    println!("{report}");
    let file = target_dir(&root).join(if quick {
        "stowage-bench/resources-quick.md"
    } else {
        "stowage-bench/resources.md"
    });
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&file, &report)?;
    eprintln!("report written to {}", file.display());
    Ok(())
}

struct Bench {
    binary: PathBuf,
    kubeconfig: PathBuf,
    dir: PathBuf,
    identity: String,
    recipient: String,
    sizes: Sizes,
    /// `--rss`: the peak-RSS measurements only.
    rss_only: bool,
}

impl Bench {
    async fn measure(&self, client: &kube::Client) -> anyhow::Result<String> {
        let sizes = &self.sizes;
        stowage_e2e::crds::apply_crds(client, &stowage_api::crds()).await?;
        ensure_namespace(client, SYSTEM).await?;
        self.populate(client).await?;
        self.populate_large(client).await?;
        self.setup(client).await?;
        let mut rows = Vec::new();
        let ratio = if self.rss_only {
            None
        } else {
            Some(self.throughput(client, &mut rows).await?)
        };

        // Peak memory against object count, each size in a fresh controller.
        for (name, objects) in [("small", sizes.batch), ("all", sizes.all)] {
            let controller = self.start_controller()?;
            eprintln!("  memory: ResourceBackup of {objects} objects…");
            let row = self.backup(client, &controller, name, name).await?;
            rows.push(Row {
                label: format!("Stowage ResourceBackup, {objects} objects"),
                ..row
            });
            eprintln!("  memory: ResourceRestore of {objects} objects (existing: Skip)…");
            let row = self
                .restore(
                    client,
                    &controller,
                    name,
                    json!({"existingResourcePolicy": "Skip"}),
                    "skipped",
                )
                .await?;
            rows.push(Row {
                label: format!("Stowage ResourceRestore, {objects} objects read, verified and skipped"),
                ..row
            });
        }

        let controller = self.start_controller()?;
        eprintln!("  memory: ResourceBackup of {} Secrets of 512 KiB…", sizes.large);
        let row = self.backup(client, &controller, "large", "large").await?;
        rows.push(Row {
            label: format!(
                "Stowage ResourceBackup, {} Secrets of 512 KiB (as large as Helm's releases)",
                sizes.large
            ),
            ..row
        });

        report(sizes, &rows, ratio)
    }

    /// Backup against the kubectl loop (two interleaved rounds, each run's best) and a restore
    /// into new namespaces; adds their rows and returns the backup throughput ratio.
    async fn throughput(&self, client: &kube::Client, rows: &mut Vec<Row>) -> anyhow::Result<f64> {
        let sizes = &self.sizes;
        let batches = |objects: usize| {
            (0..objects.div_ceil(sizes.batch))
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
        };
        let main_batches = batches(sizes.main);
        let mut controller = self.start_controller()?;
        let (mut ours, mut theirs): (Option<Row>, Option<Row>) = (None, None);
        for round in 1..=2 {
            eprintln!("  round {round}/2: ResourceBackup of {} objects…", sizes.main);
            let row = self
                .backup(client, &controller, "main", &format!("main-{round}"))
                .await?;
            if ours.as_ref().is_none_or(|b| row.seconds < b.seconds) {
                ours = Some(row);
            }
            eprintln!("  round {round}/2: kubectl get -A -o json | gzip | age…");
            let row = self.kubectl(&main_batches, sizes.main as u64)?;
            if theirs.as_ref().is_none_or(|b| row.seconds < b.seconds) {
                theirs = Some(row);
            }
        }
        let (ours, theirs) = (ours.context("a backup ran")?, theirs.context("kubectl ran")?);
        let ratio = ours.per_second() / theirs.per_second();
        rows.push(ours);
        rows.push(theirs);

        eprintln!("  ResourceRestore of {} objects into new namespaces…", sizes.main);
        let mapping: serde_json::Map<String, Value> = (0..sizes.namespaces)
            .map(|i| (format!("{PREFIX}-{i}"), Value::from(format!("{PREFIX}-{i}-r"))))
            .collect();
        for i in 0..sizes.namespaces {
            ensure_namespace(client, &format!("{PREFIX}-{i}-r")).await?;
        }
        let restore = self
            .restore(
                client,
                &controller,
                "main-1",
                json!({"namespaceMapping": mapping}),
                "created",
            )
            .await?;
        rows.push(Row {
            label: format!(
                "Stowage ResourceRestore, {} objects created in new namespaces",
                sizes.main
            ),
            ..restore
        });
        stop(&mut controller);
        Ok(ratio)
    }

    fn start_controller(&self) -> anyhow::Result<Controller> {
        Controller::start(&self.binary, &self.kubeconfig, &self.dir.join("controller.log"))
    }

    /// A ResourceBackup of ResourceSet `set`, timed from creation to Succeeded.
    async fn backup(
        &self,
        client: &kube::Client,
        controller: &Controller,
        set: &str,
        name: &str,
    ) -> anyhow::Result<Row> {
        let name = format!("{PREFIX}-{name}");
        let backup: ResourceBackup = serde_json::from_value(json!({
            "apiVersion": "stowage.io/v1alpha1", "kind": "ResourceBackup", "metadata": {"name": name},
            "spec": {"resourceSetName": format!("{PREFIX}-{set}"), "storage": {"name": PREFIX},
                     "encryption": {"recipients": [self.recipient], "decryptionKey": {"name": "age", "key": "key.txt"}}},
        }))?;
        controller.reset_peak()?;
        let api: Api<ResourceBackup> = Api::all(client.clone());
        let started = Instant::now();
        api.create(&PostParams::default(), &backup).await?;
        let status = finished(&api, &name, &["Succeeded", "Failed"]).await?;
        let seconds = started.elapsed().as_secs_f64();
        if status["phase"] != "Succeeded" {
            bail!("ResourceBackup {name} failed: {status}");
        }
        Ok(Row {
            label: "Stowage ResourceBackup (gzip-6 + age → filesystem)".into(),
            objects: status["objectCount"].as_u64().unwrap_or(0),
            seconds,
            peak_rss_kib: Some(controller.peak_rss_kib()?),
        })
    }

    /// A ResourceRestore of backup `backup` with `spec`, timed from creation to its end;
    /// the objects counted are those of `counted` (e.g. `created`).
    async fn restore(
        &self,
        client: &kube::Client,
        controller: &Controller,
        backup: &str,
        mut spec: Value,
        counted: &str,
    ) -> anyhow::Result<Row> {
        let name = format!("{PREFIX}-restore-{backup}-{counted}");
        spec["backupName"] = json!(format!("{PREFIX}-{backup}"));
        let restore: ResourceRestore = serde_json::from_value(json!({
            "apiVersion": "stowage.io/v1alpha1", "kind": "ResourceRestore", "metadata": {"name": name}, "spec": spec,
        }))?;
        controller.reset_peak()?;
        let api: Api<ResourceRestore> = Api::all(client.clone());
        let started = Instant::now();
        api.create(&PostParams::default(), &restore).await?;
        let status = finished(&api, &name, &["Succeeded", "PartiallyFailed", "Failed"]).await?;
        let seconds = started.elapsed().as_secs_f64();
        if status["phase"] != "Succeeded" {
            bail!("ResourceRestore {name} did not succeed: {status}");
        }
        Ok(Row {
            label: String::new(),
            objects: status["counts"][counted].as_u64().unwrap_or(0),
            seconds,
            peak_rss_kib: Some(controller.peak_rss_kib()?),
        })
    }

    /// `kubectl get <resource> -A -o json` for ConfigMaps and Secrets of `batches`, piped to
    /// `gzip -6 | age`.
    fn kubectl(&self, batches: &[String], objects: u64) -> anyhow::Result<Row> {
        let selector = format!("{BATCH} in ({})", batches.join(","));
        let output = self.dir.join("kubectl.json.gz.age");
        let command = format!(
            "for r in configmaps secrets; do kubectl get $r -A -l '{selector}' -o json; done | gzip -6 | age -r {} > {}",
            self.recipient,
            output.display()
        );
        let started = Instant::now();
        let result = Command::new("bash")
            .args(["-o", "pipefail", "-c", &command])
            .env("KUBECONFIG", &self.kubeconfig)
            .output()?;
        let seconds = started.elapsed().as_secs_f64();
        if !result.status.success() {
            bail!("{command} failed: {}", String::from_utf8_lossy(&result.stderr));
        }
        Ok(Row {
            label: "for r in configmaps secrets; kubectl get $r -A -o json; done | gzip -6 | age".into(),
            objects,
            seconds,
            peak_rss_kib: None,
        })
    }
}

/// The report: every run, then the ratios against the issue's targets.
fn report(sizes: &Sizes, rows: &[Row], ratio: Option<f64>) -> anyhow::Result<String> {
    let mut report = String::new();
    writeln!(
        report,
        "Stowage resources benchmark: ConfigMaps and Secrets of 1-4 KiB in {} namespaces ({} in the bed), \
         resource-backup-ctrl (release) against the test bed's kube-apiserver 1.20, {} cores, load average {}",
        sizes.namespaces,
        sizes.all,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average()
    )?;
    writeln!(
        report,
        "\n| run | objects | seconds | objects/s | controller peak RSS |\n|---|---:|---:|---:|---:|"
    )?;
    for row in rows {
        writeln!(
            report,
            "| {} | {} | {:.2} | {:.0} | {} |",
            row.label.replace('|', "\\|"),
            row.objects,
            row.seconds,
            row.per_second(),
            row.peak_rss_kib
                .map_or("".to_string(), |kib| format!("{:.1} MiB", kib as f64 / 1024.0))
        )?;
    }
    let rss = |label: &str| {
        rows.iter()
            .find(|r| r.label.starts_with(label))
            .and_then(|r| r.peak_rss_kib)
            .unwrap_or(0) as f64
            / 1024.0
    };
    let backup_small = rss(&format!("Stowage ResourceBackup, {} objects", sizes.batch));
    let backup_all = rss(&format!("Stowage ResourceBackup, {} objects", sizes.all));
    let restore_small = rss(&format!("Stowage ResourceRestore, {} objects read", sizes.batch));
    let restore_all = rss(&format!("Stowage ResourceRestore, {} objects read", sizes.all));
    writeln!(report, "\n| ratio | value | target |\n|---|---:|---:|")?;
    if let Some(ratio) = ratio {
        writeln!(
            report,
            "| backup objects/s, Stowage / kubectl loop \\| gzip \\| age | {ratio:.2}x | ≥ 3x |"
        )?;
    }
    writeln!(
        report,
        "| backup peak RSS, {} / {} objects | {backup_all:.1} / {backup_small:.1} MiB ({:.2}x) | flat, < 128 MiB |",
        sizes.all,
        sizes.batch,
        backup_all / backup_small
    )?;
    writeln!(
        report,
        "| restore peak RSS, {} / {} objects | {restore_all:.1} / {restore_small:.1} MiB ({:.2}x) | flat, < 128 MiB |",
        sizes.all,
        sizes.batch,
        restore_all / restore_small
    )?;
    Ok(report)
}

/// True when the command line has `name` (after `cargo xtask bench resources`).
fn flag(name: &str) -> bool {
    std::env::args().any(|arg| arg == name)
}

/// Polls `name` until its phase is one of `phases` (no time limit: a big run takes minutes).
async fn finished<K>(api: &Api<K>, name: &str, phases: &[&str]) -> anyhow::Result<Value>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    loop {
        let status = serde_json::to_value(api.get(name).await?)?["status"].clone();
        if phases.contains(&status["phase"].as_str().unwrap_or("")) {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
