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
//! process. Everything the bench creates is deleted at the end.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use stowage_api::{BackupStorage, ResourceBackup, ResourceRestore, ResourceSet};
use stowage_e2e::bed::TestBed;

use super::target_dir;

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
    for (tool, package) in [
        ("kubectl", "kubernetes-client"),
        ("gzip", "gzip"),
        ("age", "age"),
        ("age-keygen", "age"),
    ] {
        let found = Command::new("bash")
            .args(["-c", &format!("command -v {tool}")])
            .output()?
            .status
            .success();
        if !found {
            bail!("{tool} not found: apt-get install {package}");
        }
    }
    let sizes = if quick {
        Sizes {
            namespaces: 10,
            batch: 500,
            main: 2_000,
            all: 5_000,
        }
    } else {
        Sizes {
            namespaces: 50,
            batch: 5_000,
            main: 20_000,
            all: 50_000,
        }
    };
    let root = crate::deps::workspace_root();
    // A directory of its own: other benches clean target/stowage-bench.
    let dir = target_dir(&root).join("stowage-bench-resources");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("store"))?;
    let key = dir.join("key.txt");
    let status = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("age-keygen -o {} failed", key.display());
    }
    let recipient = String::from_utf8(Command::new("age-keygen").arg("-y").arg(&key).output()?.stdout)?
        .trim()
        .to_string();

    eprintln!("building resource-backup-ctrl (release)…");
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "stowage-resource-backup-ctrl",
            "--bin",
            "resource-backup-ctrl",
        ])
        .status()?;
    if !status.success() {
        bail!("building resource-backup-ctrl failed");
    }
    let binary = target_dir(&root).join("release/resource-backup-ctrl");
    let info = crate::envtest::start()?;
    let bench = Bench {
        binary,
        kubeconfig: info.kubeconfig.clone(),
        dir: dir.clone(),
        identity: std::fs::read_to_string(&key)?,
        recipient,
        sizes,
    };
    let result = tokio::runtime::Runtime::new()?.block_on(async {
        let bed = TestBed::connect(info).await?;
        let client = bed.client();
        let measured = bench.measure(&client).await;
        eprintln!("cleaning up…");
        let cleaned = bench.clean_up(&client).await;
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
}

impl Bench {
    async fn measure(&self, client: &kube::Client) -> anyhow::Result<String> {
        let sizes = &self.sizes;
        stowage_e2e::crds::apply_crds(client, &stowage_api::crds()).await?;
        ensure_namespace(client, SYSTEM).await?;
        self.populate(client).await?;
        self.setup(client).await?;
        let batches = |objects: usize| {
            (0..objects.div_ceil(sizes.batch))
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
        };
        let mut rows = Vec::new();

        // Backup against kubectl, two interleaved rounds, each run's best.
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

        // Peak memory against object count, each size in a fresh controller.
        for (name, objects) in [("small", sizes.batch), ("all", sizes.all)] {
            controller = self.start_controller()?;
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
            stop(&mut controller);
        }

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
        for row in &rows {
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
        writeln!(
            report,
            "| backup objects/s, Stowage / kubectl loop \\| gzip \\| age | {ratio:.2}x | ≥ 3x |"
        )?;
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

    /// Creates the namespaces and objects the bed lacks, `CREATING` at a time.
    async fn populate(&self, client: &kube::Client) -> anyhow::Result<()> {
        let sizes = &self.sizes;
        for i in 0..sizes.namespaces {
            ensure_namespace(client, &format!("{PREFIX}-{i}")).await?;
        }
        eprintln!("creating {} ConfigMaps and Secrets…", sizes.all);
        let started = Instant::now();
        let mut created = futures::stream::iter(0..sizes.all)
            .map(|i| create_object(client, i, sizes))
            .buffer_unordered(CREATING);
        let mut count = 0;
        while let Some(result) = created.next().await {
            result?;
            count += 1;
            if count % 5_000 == 0 {
                eprintln!(
                    "  {count} objects ({:.0}/s)",
                    count as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        Ok(())
    }

    /// The storage, the age key Secret and the three ResourceSets.
    async fn setup(&self, client: &kube::Client) -> anyhow::Result<()> {
        let sizes = &self.sizes;
        let apply = PatchParams::apply("stowage-bench").force();
        let storage: BackupStorage = serde_json::from_value(json!({
            "apiVersion": "stowage.io/v1alpha1", "kind": "BackupStorage", "metadata": {"name": PREFIX},
            "spec": {"type": "Filesystem", "filesystem": {"path": self.dir.join("store")}},
        }))?;
        Api::<BackupStorage>::all(client.clone())
            .patch(PREFIX, &apply, &Patch::Apply(&storage))
            .await?;
        let secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": "age"}, "stringData": {"key.txt": self.identity}}))?;
        Api::<Secret>::namespaced(client.clone(), SYSTEM)
            .patch("age", &apply, &Patch::Apply(&secret))
            .await?;
        let batches = |objects: usize| {
            (0..objects.div_ceil(sizes.batch))
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
        };
        for (name, objects) in [("small", sizes.batch), ("main", sizes.main), ("all", sizes.all)] {
            let set: ResourceSet = serde_json::from_value(json!({
                "apiVersion": "stowage.io/v1alpha1", "kind": "ResourceSet", "metadata": {"name": format!("{PREFIX}-{name}")},
                "spec": {"resourceSelectors": [{
                    "apiVersion": "v1", "kinds": ["ConfigMap", "Secret"], "namespaceRegexp": format!("^{PREFIX}-[0-9]+$"),
                    "labelSelectors": {"matchExpressions": [{"key": BATCH, "operator": "In", "values": batches(objects)}]},
                }]},
            }))?;
            Api::<ResourceSet>::all(client.clone())
                .patch(&format!("{PREFIX}-{name}"), &apply, &Patch::Apply(&set))
                .await?;
        }
        Ok(())
    }

    fn start_controller(&self) -> anyhow::Result<Controller> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(self.dir.join("controller.log"))?;
        let child = Command::new(&self.binary)
            .args(["--namespace", SYSTEM, "--leader-elect=false"])
            .arg(format!("--admin-address=127.0.0.1:{port}"))
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "warn")
            // As deploy/resource-backup-ctrl runs it.
            .env("MALLOC_ARENA_MAX", "2")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting resource-backup-ctrl")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready(port) {
            if Instant::now() > deadline {
                bail!(
                    "resource-backup-ctrl not ready after 120 s; see {}",
                    self.dir.join("controller.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Controller { child })
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

    async fn clean_up(&self, client: &kube::Client) -> anyhow::Result<()> {
        let delete = DeleteParams::background();
        let restores: Api<ResourceRestore> = Api::all(client.clone());
        let backups: Api<ResourceBackup> = Api::all(client.clone());
        let sets: Api<ResourceSet> = Api::all(client.clone());
        for list in [
            restores
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .map(|o| o.metadata.name)
                .collect::<Vec<_>>(),
            backups
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .map(|o| o.metadata.name)
                .collect(),
        ] {
            for name in list.into_iter().flatten().filter(|n| n.starts_with(PREFIX)) {
                let _ = restores.delete(&name, &delete).await;
                let _ = backups.delete(&name, &delete).await;
            }
        }
        for name in ["small", "main", "all"] {
            let _ = sets.delete(&format!("{PREFIX}-{name}"), &delete).await;
        }
        let _ = Api::<BackupStorage>::all(client.clone()).delete(PREFIX, &delete).await;
        // The namespace controller deletes the objects in the background.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for namespace in namespaces.list(&Default::default()).await?.items {
            if let Some(name) = namespace.metadata.name.filter(|n| n.starts_with(PREFIX)) {
                let _ = namespaces.delete(&name, &delete).await;
            }
        }
        Ok(())
    }
}

/// The controller process; killed when dropped.
struct Controller {
    child: Child,
}

impl Controller {
    /// Resets the process's peak RSS (VmHWM) to its current RSS.
    fn reset_peak(&self) -> anyhow::Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").context("resetting VmHWM")
    }

    fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/<pid>/status")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stop(controller: &mut Controller) {
    let _ = controller.child.kill();
    let _ = controller.child.wait();
}

/// True when the admin server answers `/readyz` with 200.
fn ready(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
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

/// Creates namespace `name` unless it exists; one still terminating (an earlier run's) is
/// waited for first.
async fn ensure_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    loop {
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        match namespaces.create(&PostParams::default(), &namespace).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let terminating = namespaces
                    .get_opt(name)
                    .await?
                    .is_some_and(|n| n.metadata.deletion_timestamp.is_some());
                if !terminating {
                    return Ok(());
                }
                eprintln!("  waiting for namespace {name} of an earlier run to go…");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Object `i`: a ConfigMap (even) or Secret (odd) of 1-4 KiB in namespace `i % namespaces`.
async fn create_object(client: &kube::Client, i: usize, sizes: &Sizes) -> anyhow::Result<()> {
    let namespace = format!("{PREFIX}-{}", i % sizes.namespaces);
    let name = format!("obj-{i}");
    let size = 1024 + (i * 7919) % 3072;
    let mut seed = i as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let text: String = (0..size)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            char::from(b"abcdefghijklmnopqrstuvwxyz0123456789 "[(seed >> 33) as usize % 37])
        })
        .collect();
    let metadata = json!({"name": name, "labels": {LABEL: "resources", BATCH: (i / sizes.batch).to_string()}});
    let created = if i.is_multiple_of(2) {
        let object: ConfigMap = serde_json::from_value(json!({"metadata": metadata, "data": {"value": text}}))?;
        Api::<ConfigMap>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &object)
            .await
            .map(|_| ())
    } else {
        let object: Secret = serde_json::from_value(json!({"metadata": metadata, "stringData": {"value": text}}))?;
        Api::<Secret>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &object)
            .await
            .map(|_| ())
    };
    match created {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(anyhow::Error::from(e).context(format!("creating {namespace}/{name}"))),
    }
}

/// The 1-minute load average: the machine is shared, so say how busy it was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}
