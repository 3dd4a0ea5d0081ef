//! `exec_throughput`: one phase of `cargo xtask bench exec`, timed inside this process (so that
//! creating the namespace and starting the Pod are not counted) and printed as one JSON line:
//! `{"phase":…,"bytes":…,"seconds":…,"peak_rss_kib":…}`.
//!
//! ```text
//! exec_throughput core    --input FILE --fs DIR --recipient R
//! exec_throughput exec    --input FILE
//! exec_throughput backup  --input FILE --fs DIR --recipient R
//! exec_throughput kubectl --input FILE --output FILE --recipient R --identity KEY
//! ```
//! - `core`: FILE through `stowage_core::backup` (gzip 6 + age) into a filesystem store.
//! - `exec`: `cat FILE` in a Pod through the API server's exec, stdout read and dropped: the
//!   transport's ceiling.
//! - `backup`: the same exec's stdout through `stream_payload`, then `commit`, as the
//!   exec-backup controller does.
//! - `kubectl`: `kubectl exec … -- cat FILE | gzip -6 | age -r R > OUTPUT`, the baseline
//!   (its peak RSS is the pipeline's, measured by /usr/bin/time); OUTPUT is decrypted with KEY
//!   afterwards, untimed, to check that every byte went through.
//!
//! `--workers N` and `--compression none` change the core and backup phases, to see where the
//! time goes (the defaults are the controller's: gzip 6 on every core).
//!
//! The Pod phases connect with KUBECONFIG, create their own namespace and a Pod that mounts
//! FILE's directory by hostPath at the same path (the test bed's node simulator runs Pod
//! commands as host processes), and delete both at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams};
use serde_json::json;
use stowage_core::storage::{self, Credentials};
use stowage_core::testing::filesystem_spec;
use stowage_core::{Algorithm, BackupRequest, Compression, Recipients};
use stowage_operator::podexec::{ExecPod, ExecPodParams, ExecStdout, PodHandle};
use tokio::io::AsyncReadExt as _;
use tokio::time::Instant;

/// Generous: the test bed is shared, on two cores.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Long enough for 1 GiB at a few MB/s.
const EXEC_DEADLINE: Duration = Duration::from_secs(3600);
const CONTAINER: &str = "main";
const POD: &str = "bench";
/// kubectl's complaint about a WebSocket closed without a status code.
const CLOSE_WITHOUT_STATUS: &str = "websocket: close 1005 (no status)";

#[tokio::main]
async fn main() {
    if let Err(error) = run(std::env::args().skip(1).collect()).await {
        eprintln!("exec_throughput: {error:#}");
        std::process::exit(1);
    }
}

struct Args(Vec<String>);

impl Args {
    fn value(&self, flag: &str) -> anyhow::Result<String> {
        self.optional(flag).with_context(|| format!("{flag} is required"))
    }

    fn optional(&self, flag: &str) -> Option<String> {
        self.0
            .iter()
            .position(|a| a == flag)
            .and_then(|i| self.0.get(i + 1))
            .cloned()
    }
}

/// What one phase measured.
struct Measured {
    bytes: u64,
    seconds: f64,
    /// Peak RSS in KiB, when the phase measured it itself (kubectl's pipeline); else ours.
    peak_rss_kib: Option<u64>,
}

async fn run(argv: Vec<String>) -> anyhow::Result<()> {
    let phase = argv.first().cloned().unwrap_or_default();
    let args = Args(argv);
    let input = PathBuf::from(args.value("--input")?);
    let input = std::fs::canonicalize(&input).with_context(|| format!("reading {}", input.display()))?;
    let size = std::fs::metadata(&input)?.len();
    let measured = match phase.as_str() {
        "core" => core_alone(&input, &args).await?,
        "exec" | "backup" | "kubectl" => in_a_pod(&phase, &input, &args).await?,
        other => bail!("unknown phase {other:?}: core, exec, backup or kubectl"),
    };
    ensure!(
        measured.bytes == size,
        "{phase} moved {} bytes, the input has {size}",
        measured.bytes
    );
    let peak_rss_kib = match measured.peak_rss_kib {
        Some(kib) => kib,
        None => own_peak_rss_kib()?,
    };
    let line = json!({
        "phase": phase,
        "bytes": measured.bytes,
        "seconds": measured.seconds,
        "peak_rss_kib": peak_rss_kib,
    });
    println!("{line}");
    Ok(())
}

/// gzip 6 + age to one recipient (unless told otherwise), the same request for `core` and `backup`.
fn request(args: &Args, key: &str) -> anyhow::Result<BackupRequest> {
    let store = storage::build(
        &filesystem_spec(Path::new(&args.value("--fs")?)),
        &Credentials::default(),
    )?;
    let mut request = BackupRequest::new(store, key, "ExecBackup", "exec_throughput");
    request.compression = match args.optional("--compression").as_deref() {
        None | Some("gzip") => Compression {
            algorithm: Algorithm::Gzip,
            level: Some(6),
            workers: args.optional("--workers").map(|n| n.parse()).transpose()?,
        },
        Some("none") => Compression {
            algorithm: Algorithm::None,
            level: None,
            workers: None,
        },
        Some(other) => bail!("--compression gzip or none, not {other}"),
    };
    request.recipients = Arc::new(Recipients::parse(&[args.value("--recipient")?])?);
    Ok(request)
}

async fn core_alone(input: &Path, args: &Args) -> anyhow::Result<Measured> {
    let request = request(args, "core.gz.age")?;
    let started = Instant::now();
    let file = tokio::fs::File::open(input).await?;
    let artifact = stowage_core::backup(request, file).await?;
    Ok(Measured {
        bytes: artifact.plaintext_bytes,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_kib: None,
    })
}

/// Runs an exec phase in a Pod of a namespace of its own, deleted afterwards either way.
async fn in_a_pod(phase: &str, input: &Path, args: &Args) -> anyhow::Result<Measured> {
    let client = kube::Client::try_default()
        .await
        .context("connecting with KUBECONFIG (is the test bed running? `cargo xtask envtest start`)")?;
    let namespace = stowage_e2e::namespace::create_namespace(&client, "bench-exec").await?;
    let measured = async {
        let params = pod_params(&namespace, input)?;
        let measured = ExecPod::run(&client, &params, |pod| async move {
            pod.wait_running(CONTAINER, START_TIMEOUT).await?;
            match phase {
                "exec" => exec_alone(&pod, input).await,
                "backup" => exec_backup(&pod, input, args).await,
                _ => kubectl(&pod, input, args).await,
            }
        })
        .await?;
        Ok::<_, anyhow::Error>(measured)
    }
    .await;
    let namespaces: Api<Namespace> = Api::all(client);
    if let Err(error) = namespaces.delete(&namespace, &DeleteParams::default()).await {
        eprintln!("exec_throughput: deleting namespace {namespace}: {error}");
    }
    measured.with_context(|| format!("phase {phase} in namespace {namespace}"))
}

/// An idle container (the node runs it as `sleep infinity`) that sees the input's directory at
/// its host path, read-only.
fn pod_params(namespace: &str, input: &Path) -> anyhow::Result<ExecPodParams> {
    let dir = input
        .parent()
        .context("the input has no directory")?
        .display()
        .to_string();
    let template = json!({
        "spec": {
            "containers": [{
                "name": CONTAINER,
                "image": "busybox",
                "volumeMounts": [{ "name": "data", "mountPath": dir, "readOnly": true }],
            }],
            "volumes": [{ "name": "data", "hostPath": { "path": dir, "type": "Directory" } }],
        }
    });
    Ok(ExecPodParams {
        namespace: namespace.into(),
        name: POD.into(),
        template: serde_json::from_value(template)?,
        owner: None,
        labels: BTreeMap::from([("stowage.io/bench".to_string(), "exec".to_string())]),
    })
}

async fn cat(pod: &PodHandle, input: &Path) -> anyhow::Result<ExecStdout> {
    let command = ["cat".to_string(), input.display().to_string()];
    Ok(pod
        .exec_stdout(CONTAINER, command, Instant::now() + EXEC_DEADLINE)
        .await?)
}

async fn exec_alone(pod: &PodHandle, input: &Path) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let mut stdout = cat(pod, input).await?;
    let mut buffer = vec![0_u8; 1 << 20];
    let mut bytes = 0_u64;
    loop {
        let read = stdout.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        bytes += read as u64;
    }
    stdout.finish().await?.check("cat")?;
    Ok(Measured {
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_kib: None,
    })
}

/// What the controller does: stdout into `stream_payload`, the exit code checked, then commit.
async fn exec_backup(pod: &PodHandle, input: &Path, args: &Args) -> anyhow::Result<Measured> {
    let request = request(args, "exec.gz.age")?;
    let started = Instant::now();
    let mut stdout = cat(pod, input).await?;
    let staged = stowage_core::stream_payload(request, &mut stdout).await;
    let finished = stdout.finish().await;
    // The data path's error first: finish() would only say that stdout was abandoned.
    let staged = staged?;
    finished?.check("cat")?;
    let artifact = staged.commit(BTreeMap::new()).await?;
    Ok(Measured {
        bytes: artifact.plaintext_bytes,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_kib: None,
    })
}

/// The stock tools: `kubectl exec … | gzip -6 | age`, under /usr/bin/time for its peak RSS.
async fn kubectl(pod: &PodHandle, input: &Path, args: &Args) -> anyhow::Result<Measured> {
    let output = args.value("--output")?;
    let recipient = args.value("--recipient")?;
    let pipeline = format!(
        "kubectl exec -n {} {} -c {CONTAINER} -- cat {} | gzip -6 | age -r {recipient} > {output}",
        pod.namespace(),
        pod.name(),
        input.display()
    );
    let timing = tempfile::NamedTempFile::new()?;
    let started = Instant::now();
    let run = tokio::process::Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(timing.path())
        .args(["bash", "-o", "pipefail", "-c", &pipeline])
        .output()
        .await
        .context("running /usr/bin/time (apt-get install time)")?;
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&run.stderr);
    if !run.status.success() {
        // The node simulator ends the WebSocket with a close frame without a status code,
        // which kubectl reports as an error (exit code 1) after every byte went through; the
        // plaintext count below checks that they did.
        ensure!(
            stderr.contains(CLOSE_WITHOUT_STATUS),
            "{pipeline} failed: {}: {stderr}",
            run.status
        );
        eprintln!(
            "exec_throughput: kubectl exited with an error at the end ({CLOSE_WITHOUT_STATUS}); checking the bytes"
        );
    }
    let kib = std::fs::read_to_string(timing.path())?
        .lines()
        .last()
        .and_then(|line| line.trim().parse().ok());
    Ok(Measured {
        bytes: plaintext_bytes(&output, &args.value("--identity")?).await?,
        seconds,
        peak_rss_kib: kib,
    })
}

/// The plaintext size of a `.gz.age` file: kubectl does not say how much it moved.
async fn plaintext_bytes(file: &str, identity: &str) -> anyhow::Result<u64> {
    let count = format!("age -d -i {identity} {file} | gzip -dc | wc -c");
    let output = tokio::process::Command::new("bash")
        .args(["-o", "pipefail", "-c", &count])
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "{count} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().parse()?)
}

/// VmHWM: this process's peak resident set size.
fn own_peak_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}
