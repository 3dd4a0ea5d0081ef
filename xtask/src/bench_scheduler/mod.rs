//! `cargo xtask bench scheduler [--quick] [--schedules N] [--ticks T]`: 1,000 BackupSchedules
//! ticking every minute on the test bed, handled by the release binary of scheduler-ctrl,
//! measured over three ticks (`--quick`: 100 schedules, one tick; `--schedules` and `--ticks`
//! change either, to find how many schedules the bed can tick within the target). Target:
//! p99 lag under 1 s.
//!
//! Runs are ExecBackups that nobody executes: a completer in this process watches them and
//! marks each Succeeded the moment it appears, so the scheduler always finds its previous run
//! finished (no Forbid skips) and its history limit deletes one run per schedule per tick.
//! The real exec controller would start 1,000 Pods a minute on the node simulator, and the
//! 2-core bed would then measure Pod start-up rather than the scheduler.
//!
//! Lag is measured twice, to the millisecond (a run's creationTimestamp has only seconds): by
//! scheduler-ctrl itself, from the tick to the answer of its create call, logged for every run
//! at debug and read back from its log (the "time from tick to run creation"); and by
//! the completer, from the tick (the run's `stowage.io/scheduled-at`) to the moment its watch
//! sees the run, which adds the watch's delivery and so bounds the first from above. CPU and
//! RSS come from /proc for the scheduler process, sampled every second; the apiserver's CPU is
//! beside it, since every run costs the apiserver too.
//!
//! Last, with the scheduler stopped, the bench creates as many runs at once itself: the bed's
//! floor, how fast any controller could create one tick's runs on this machine at this load;
//! then as many ConfigMaps, which shows what part of that floor is the API server's handling
//! of custom resources.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Timelike as _, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use stowage_api::{BackupSchedule, ExecBackup};
use stowage_e2e::bed::{TestBed, wait_for};

use super::{build_release, load_average, target_dir};
use report::{Distribution, Report};

mod report;

const NAMESPACE: &str = "bench-scheduler";

/// Lags seen by the completer: tick → milliseconds, for each run.
type Lags = Arc<Mutex<BTreeMap<String, (DateTime<Utc>, f64)>>>;

pub fn run(quick: bool, args: &[String]) -> anyhow::Result<()> {
    let (schedules, ticks) = if quick { (100, 1) } else { (1000, 3) };
    let schedules = number(args, "--schedules")?.unwrap_or(schedules);
    let ticks = number(args, "--ticks")?.map_or(ticks, |t| t as i64);
    let root = crate::deps::workspace_root();
    let binary = build_release(&root, "stowage-scheduler-ctrl", &["--bin", "scheduler-ctrl"])?;
    let dir = target_dir(&root).join("stowage-bench");
    std::fs::create_dir_all(&dir)?;
    let info = crate::envtest::start()?;
    let apiserver_pid = info.pids.get("kube-apiserver").copied();
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(async {
        let bed = TestBed::connect(info.clone()).await?;
        let client = bed.client();
        stowage_e2e::crds::apply_crds(&client, &stowage_api::crds()).await?;
        crate::demo::fresh_namespace(&client, NAMESPACE).await?;

        let lags: Lags = Arc::default();
        let completer = tokio::spawn(complete_runs(client.clone(), lags.clone()));
        let port = free_port()?;
        let log = dir.join("scheduler-ctrl.log");
        let mut controller = Controller::start(&binary, &info.kubeconfig, port, &log)?;

        eprintln!("creating {schedules} schedules ticking every minute…");
        create_schedules(&client, schedules).await?;
        wait_ready(&client, schedules).await?;

        // The measured ticks: whole minutes, starting at the first after every schedule is ready.
        let now = Utc::now();
        let first_tick = now
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .context("a minute")?
            + chrono::Duration::minutes(1);
        let end = first_tick + chrono::Duration::minutes(ticks);
        eprintln!("measuring ticks {first_tick} to {end} (exclusive)…");
        let mut samples = Samples::default();
        let load_before = load_average();
        while Utc::now() < end {
            if let Some(status) = controller.child.try_wait()? {
                bail!("scheduler-ctrl exited with {status}: see {}", log.display());
            }
            let in_window = Utc::now() >= first_tick - chrono::Duration::seconds(1);
            samples.take(controller.pid(), apiserver_pid, in_window);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        samples.take(controller.pid(), apiserver_pid, true);
        let load_after = load_average();
        let metrics = scrape(port).unwrap_or_else(|error| format!("# /metrics unavailable: {error}"));
        controller.stop();
        eprintln!("measuring the bed alone: {schedules} runs created at once by the bench…");
        let floor = Distribution::new(create_at_once(&client, schedules).await?);
        completer.abort();
        eprintln!("… and {schedules} ConfigMaps created at once, for comparison…");
        let config_map_floor = Distribution::new(create_config_maps_at_once(&client, schedules).await?);

        let seen: Vec<f64> = lags
            .lock()
            .map_err(|_| anyhow::anyhow!("lag map poisoned"))?
            .values()
            .filter(|(tick, _)| *tick >= first_tick && *tick < end)
            .map(|(_, lag)| *lag)
            .collect();
        let created = created_lags(&log, first_tick, end)?;
        let expected = schedules * ticks as usize;
        let report = Report {
            schedules,
            ticks,
            expected,
            created: Distribution::new(created),
            seen: Distribution::new(seen),
            floor,
            config_map_floor,
            samples,
            metrics,
            load: (load_before, load_after),
        };
        // Schedules and runs go with the namespace; nothing waits for it.
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        namespaces.delete(NAMESPACE, &Default::default()).await?;
        report.render()
    })?;
    println!("{report}");
    let file = dir.join(format!("scheduler-{schedules}.md"));
    std::fs::write(&file, &report)?;
    eprintln!("report written to {}", file.display());
    Ok(())
}

/// The release scheduler-ctrl running against the bed, confined to the bench's namespace.
struct Controller {
    child: Child,
}

impl Controller {
    fn start(
        binary: &std::path::Path,
        kubeconfig: &std::path::Path,
        port: u16,
        log: &std::path::Path,
    ) -> anyhow::Result<Controller> {
        let child = Command::new(binary)
            .args([
                "--namespace",
                NAMESPACE,
                "--watch-namespace",
                NAMESPACE,
                "--leader-elect",
                "false",
            ])
            .args(["--log-format", "json", "--admin-address", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", kubeconfig)
            // Each run's lag, as the scheduler measured it, goes to the log at debug.
            .env("RUST_LOG", "warn,stowage_scheduler_ctrl::reconcile=debug")
            // tracing writes to stdout.
            .stdout(std::fs::File::create(log)?)
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Controller { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Plays the run kind's controller: every new run is marked Succeeded at once, and the time
/// from its tick to this moment is recorded.
async fn complete_runs(client: kube::Client, lags: Lags) -> anyhow::Result<()> {
    let api: Api<ExecBackup> = Api::namespaced(client, NAMESPACE);
    let mut events = watcher(api.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    while let Some(run) = events.try_next().await? {
        let seen = Utc::now();
        if run.status.is_some() || run.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = run.metadata.name.clone().unwrap_or_default();
        let tick = run
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("stowage.io/scheduled-at"))
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let Some(tick) = tick else { continue };
        let fresh = {
            let mut lags = lags.lock().map_err(|_| anyhow::anyhow!("lag map poisoned"))?;
            let fresh = !lags.contains_key(&name);
            lags.entry(name.clone())
                .or_insert((tick, (seen - tick).num_microseconds().unwrap_or(0) as f64 / 1e6));
            fresh
        };
        if fresh {
            let api = api.clone();
            tokio::spawn(async move {
                let status = json!({"status": {"phase": "Succeeded",
                    "completionTime": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}});
                if let Err(error) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                {
                    eprintln!("completing {name} failed: {error}");
                }
            });
        }
    }
    Ok(())
}

/// The bed's own floor: `count` runs of the scheduler's shape created at once by the bench
/// (the scheduler stopped, the completer still completing them), each one's seconds from the
/// start to its create call's answer. No scheduler can create a tick's runs faster than this.
async fn create_at_once(client: &kube::Client, count: usize) -> anyhow::Result<Vec<f64>> {
    let api: Api<ExecBackup> = Api::namespaced(client.clone(), NAMESPACE);
    // After the measured ticks, so the completer's lag map leaves these runs out.
    let scheduled_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    at_once(count, |index| {
        let api = api.clone();
        let scheduled_at = scheduled_at.clone();
        async move {
            let run: ExecBackup = serde_json::from_value(json!({
                "apiVersion": "stowage.io/v1alpha1", "kind": "ExecBackup",
                "metadata": {"name": format!("floor-{index:04}"), "labels": {"bench": "floor"},
                    "annotations": {"stowage.io/scheduled-at": scheduled_at}},
                "spec": {"backup": {"command": ["true"]}, "storage": {"name": "nowhere"},
                    "template": {"spec": {"containers": [{"name": "c", "image": "debian:12"}]}}},
            }))?;
            api.create(&PostParams::default(), &run).await?;
            Ok(())
        }
    })
    .await
}

/// The same with ConfigMaps of the same labels and annotation: what the API server's built-in
/// types cost, against the custom resources every run is (decoded, pruned and encoded as
/// JSON maps, whatever their schema: 2-4x a ConfigMap's CPU in the apiserver on this bed).
async fn create_config_maps_at_once(client: &kube::Client, count: usize) -> anyhow::Result<Vec<f64>> {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let scheduled_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    at_once(count, |index| {
        let api = api.clone();
        let scheduled_at = scheduled_at.clone();
        async move {
            let map = serde_json::from_value(json!({
                "metadata": {"name": format!("floor-{index:04}"), "labels": {"bench": "floor"},
                    "annotations": {"stowage.io/scheduled-at": scheduled_at}},
                "data": {"command": "true", "storage": "nowhere"},
            }))?;
            api.create(&PostParams::default(), &map).await?;
            Ok(())
        }
    })
    .await
}

/// Runs `count` creations at once; each one's seconds from the start to its answer.
async fn at_once<F, Fut>(count: usize, create: F) -> anyhow::Result<Vec<f64>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let start = std::time::Instant::now();
    let creations = (0..count).map(|index| {
        let created = create(index);
        async move {
            created.await?;
            anyhow::Ok(start.elapsed().as_secs_f64())
        }
    });
    futures::future::try_join_all(creations).await
}

async fn create_schedules(client: &kube::Client, count: usize) -> anyhow::Result<()> {
    let api: Api<BackupSchedule> = Api::namespaced(client.clone(), NAMESPACE);
    futures::stream::iter(0..count)
        .map(|index| {
            let api = api.clone();
            async move {
                let schedule: BackupSchedule = serde_json::from_value(json!({
                    "apiVersion": "stowage.io/v1alpha1", "kind": "BackupSchedule",
                    "metadata": {"name": format!("s{index:04}")},
                    "spec": {"schedule": "* * * * *", "successfulRunsHistoryLimit": 1,
                        "template": {"kind": "ExecBackup", "spec": {
                            "backup": {"command": ["true"]}, "storage": {"name": "nowhere"},
                            "template": {"spec": {"containers": [{"name": "c", "image": "debian:12"}]}}}}},
                }))?;
                api.create(&PostParams::default(), &schedule).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn wait_ready(client: &kube::Client, count: usize) -> anyhow::Result<()> {
    let api: Api<BackupSchedule> = Api::namespaced(client.clone(), NAMESPACE);
    wait_for(&format!("{count} schedules to be Ready"), || async {
        let ready = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|s| s.status.as_ref().is_some_and(|s| s.next_schedule_time.is_some()))
            .count();
        Ok((ready == count).then_some(()))
    })
    .await
}

/// Per-second readings of /proc for the scheduler (and the apiserver, for context).
#[derive(Default)]
struct Samples {
    /// (scheduler CPU seconds, apiserver CPU seconds) at the start and end of the window.
    first: Option<(f64, f64, std::time::Instant)>,
    last: Option<(f64, f64, std::time::Instant)>,
    previous: Option<(f64, std::time::Instant)>,
    /// The busiest second of the scheduler, as a fraction of one core.
    peak_cpu: f64,
    rss_kib: Vec<u64>,
    hwm_kib: u64,
}

impl Samples {
    fn take(&mut self, pid: u32, apiserver: Option<u32>, in_window: bool) {
        let now = std::time::Instant::now();
        let cpu = cpu_seconds(pid).unwrap_or(0.0);
        let api_cpu = apiserver.and_then(cpu_seconds).unwrap_or(0.0);
        if !in_window {
            self.previous = Some((cpu, now));
            return;
        }
        if self.first.is_none() {
            self.first = Some((cpu, api_cpu, now));
        }
        if let Some((before, at)) = self.previous {
            let seconds = now.duration_since(at).as_secs_f64();
            if seconds > 0.0 {
                self.peak_cpu = self.peak_cpu.max((cpu - before) / seconds);
            }
        }
        self.previous = Some((cpu, now));
        self.last = Some((cpu, api_cpu, now));
        if let Some((rss, hwm)) = memory_kib(pid) {
            self.rss_kib.push(rss);
            self.hwm_kib = self.hwm_kib.max(hwm);
        }
    }

    /// Average CPU over the window as fractions of one core: (scheduler, apiserver).
    fn average_cpu(&self) -> (f64, f64, f64) {
        match (self.first, self.last) {
            (Some((c0, a0, t0)), Some((c1, a1, t1))) => {
                let seconds = t1.duration_since(t0).as_secs_f64().max(1e-6);
                ((c1 - c0) / seconds, (a1 - a0) / seconds, c1 - c0)
            }
            _ => (f64::NAN, f64::NAN, f64::NAN),
        }
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Clock ticks per second of /proc's CPU times.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// (VmRSS, VmHWM) of a process, in KiB.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The value of `flag` (`--schedules 500`), a number of at least 1.
fn number(args: &[String], flag: &str) -> anyhow::Result<Option<usize>> {
    let Some(at) = args.iter().position(|a| a == flag) else {
        return Ok(None);
    };
    let value = args
        .get(at + 1)
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n >= 1);
    value
        .map(Some)
        .with_context(|| format!("{flag} takes a number of at least 1"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The scheduler's /metrics text.
fn scrape(port: u16) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or(response))
}

/// Each run's lag as scheduler-ctrl measured it (tick to the create call's answer), from the
/// `run created` lines of its JSON log, for ticks in `[first, end)` (run names end in the tick).
fn created_lags(log: &std::path::Path, first: DateTime<Utc>, end: DateTime<Utc>) -> anyhow::Result<Vec<f64>> {
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let mut lags = Vec::new();
    for line in text.lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let fields = &entry["fields"];
        if fields["message"] != "run created" {
            continue;
        }
        let tick = fields["run"]
            .as_str()
            .and_then(|run| run.rsplit_once('-'))
            .and_then(|(_, unix)| unix.parse::<i64>().ok())
            .and_then(|unix| DateTime::from_timestamp(unix, 0));
        if let (Some(tick), Some(lag)) = (tick, fields["lag_seconds"].as_f64())
            && tick >= first
            && tick < end
        {
            lags.push(lag);
        }
    }
    Ok(lags)
}
