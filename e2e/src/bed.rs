//! What a test uses: [`bed()`] hands out the test bed of this process.
//!
//! With `STOWAGE_TESTBED_DIR` set (as `cargo xtask test` does after `cargo xtask envtest start`)
//! tests connect to that running bed. Otherwise the first call starts a whole bed in-process
//! (about 5-10 s with cached binaries), so `cargo nextest run -p stowage-e2e` works on its own.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::OnceCell;

use crate::testbed::{RunningBed, TestBedInfo};

/// Names the directory of a running bed to connect to instead of starting one.
pub const TESTBED_DIR_ENV: &str = "STOWAGE_TESTBED_DIR";

/// A running test bed: a client factory, its kubeconfig, per-test namespaces.
#[derive(Debug)]
pub struct TestBed {
    info: TestBedInfo,
    config: kube::Config,
    /// Logs printed when a test fails: the bed's own plus those registered by tests.
    logs: Mutex<Vec<(String, PathBuf)>>,
}

/// The test bed of this process, connected or started on first use.
pub async fn bed() -> anyhow::Result<&'static TestBed> {
    static BED: OnceCell<TestBed> = OnceCell::const_new();
    BED.get_or_try_init(|| async {
        let info = match std::env::var_os(TESTBED_DIR_ENV) {
            Some(dir) => TestBedInfo::read(Path::new(&dir))?,
            None => start_in_process().await?,
        };
        TestBed::connect(info).await
    })
    .await
}

impl TestBed {
    /// Connects to the bed that `info` describes and checks that its apiserver answers.
    pub async fn connect(info: TestBedInfo) -> anyhow::Result<Self> {
        let config = crate::controlplane::kube_config(&info.kubeconfig).await?;
        let client = kube::Client::try_from(config.clone())?;
        let request = http::Request::get("/readyz").body(Vec::new())?;
        client.request_text(request).await.with_context(|| {
            format!(
                "the test bed's apiserver {} does not answer: restart it with `cargo xtask envtest stop` \
                 and `cargo xtask envtest start`, or unset {TESTBED_DIR_ENV}",
                info.apiserver_url
            )
        })?;
        let logs = info
            .logs
            .iter()
            .map(|(name, path)| (name.clone(), path.clone()))
            .collect();
        Ok(Self {
            info,
            config,
            logs: Mutex::new(logs),
        })
    }

    /// A new admin client bound to the calling tokio runtime (a client stops working when the
    /// runtime it was created in ends, and each test has its own runtime).
    pub fn client(&self) -> kube::Client {
        // try_from only fails for TLS configuration errors, which connect() already ruled out.
        kube::Client::try_from(self.config.clone()).unwrap_or_else(|err| panic!("building a kube client: {err}"))
    }

    /// The admin client configuration, e.g. for controllers under test.
    pub fn config(&self) -> &kube::Config {
        &self.config
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.info.kubeconfig
    }

    pub fn info(&self) -> &TestBedInfo {
        &self.info
    }

    /// Adds a log file (e.g. a controller under test) to what failing tests print.
    pub fn register_log(&self, name: &str, path: &Path) {
        if let Ok(mut logs) = self.logs.lock() {
            logs.push((name.to_string(), path.to_path_buf()));
        }
    }

    /// The log files failing tests print, by name.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        self.logs.lock().map(|logs| logs.clone()).unwrap_or_default()
    }

    /// Runs the system kubectl against the bed; returns its stdout, or fails with its stderr.
    pub async fn kubectl<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let output = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.info.kubeconfig)
            .args(args)
            .output()
            .await
            .context("running kubectl (install it with `apt-get install kubernetes-client`)")?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        anyhow::ensure!(
            output.status.success(),
            "kubectl failed ({}): {}{stdout}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(stdout)
    }

    /// Runs `body` in a fresh namespace named `<prefix>-xxxxx`; see [`crate::namespace`].
    pub async fn with_namespace<F, Fut, T>(&self, prefix: &str, body: F) -> anyhow::Result<T>
    where
        F: FnOnce(kube::Client, String) -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        crate::namespace::with_namespace(self, prefix, body).await
    }

    /// The failure report of a namespace: its objects, its Events and the registered logs.
    pub async fn dump_namespace(&self, namespace: &str) -> String {
        crate::namespace::dump(&self.client(), namespace, &self.logs()).await
    }
}

/// Starts a bed on a runtime of its own in a thread that lives as long as the process, so the
/// bed outlives the runtime of the test that asked first.
async fn start_in_process() -> anyhow::Result<TestBedInfo> {
    remove_stale_beds();
    let dir = tempfile::Builder::new()
        .prefix(&format!("stowage-bed-{}-", std::process::id()))
        .tempdir()
        .context("creating the test bed directory")?
        .keep();
    let (ready, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("stowage-testbed".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = ready.send(Err(anyhow::Error::new(err).context("building the test bed's runtime")));
                    return;
                }
            };
            runtime.block_on(async move {
                match RunningBed::start(&dir).await {
                    Ok(bed) => {
                        let _ = ready.send(Ok(bed.info().clone()));
                        // Runs until the process exits; the children die with it (PDEATHSIG).
                        std::future::pending::<()>().await;
                        drop(bed);
                    }
                    Err(err) => {
                        let _ = ready.send(Err(err));
                    }
                }
            });
        })?;
    result
        .await
        .context("the test bed thread ended before the bed was ready")?
}

/// Removes the directories of in-process beds whose process has exited.
fn remove_stale_beds() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("stowage-bed-") else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !crate::process::pid_alive(pid)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// How long waits inside tests may take before failing with what they awaited.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Polls `check` every 200 ms until it yields a value, failing after [`WAIT_TIMEOUT`] with
/// `what` (phrase it as the awaited condition: "ReplicaSet of Deployment web") and the last
/// error `check` returned.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + WAIT_TIMEOUT;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        if tokio::time::Instant::now() >= deadline {
            let cause = last_error.map_or_else(String::new, |err| format!(" (last error: {err:#})"));
            anyhow::bail!("timed out after {WAIT_TIMEOUT:?} waiting for {what}{cause}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
