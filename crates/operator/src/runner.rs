//! The runner each controller's `main` calls: arguments, tracing, the admin server,
//! leader election and graceful shutdown.
//!
//! ```no_run
//! # async fn start(_: std::sync::Arc<stowage_operator::Context>) -> anyhow::Result<()> { Ok(()) }
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     stowage_operator::runner::main("exec-backup-ctrl", start).await
//! }
//! ```
//! `start` runs the controllers until `ctx.shutdown` is cancelled (SIGTERM, SIGINT, or lost
//! leadership) and returns once the reconciles in flight have finished.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Context;
use crate::admin::{self, AdminState};
use crate::leader::LeaderElection;
use crate::metrics::Metrics;

/// Arguments every controller takes (each also from an environment variable).
#[derive(Clone, Debug, Parser)]
#[command(version, about = "A Stowage controller")]
pub struct Args {
    /// Namespace the controller runs in: its Lease and the Secrets of cluster-scoped kinds live here.
    #[arg(long, env = "STOWAGE_NAMESPACE", default_value = "stowage-system")]
    pub namespace: String,
    /// Watch namespaced kinds in this namespace only (default: every namespace).
    #[arg(long, env = "STOWAGE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Address of the admin server (/metrics, /healthz, /readyz).
    #[arg(long, env = "STOWAGE_ADMIN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub admin_address: SocketAddr,
    /// Log format: text or json.
    #[arg(long, env = "STOWAGE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Take part in leader election, so only one replica reconciles at a time.
    #[arg(long, env = "STOWAGE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// How long a leader's Lease stays valid without renewal.
    #[arg(long, env = "STOWAGE_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// This replica's name (the Pod name, from the downward API).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Kubeconfig file; in-cluster configuration when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Requests to the API server awaiting their answer at once; more wait their turn.
    #[arg(long, env = "STOWAGE_MAX_REQUESTS_IN_FLIGHT", default_value_t = DEFAULT_REQUESTS_IN_FLIGHT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub max_requests_in_flight: u16,
}

/// The API server's throughput does not grow with more requests at once (measured: 1,000
/// creates take as long at 8 in flight as at 1,000), but every concurrent HTTP/1.1 request
/// holds its own TLS connection: a scheduler firing 1,000 schedules at once would handshake
/// and keep 1,000 of them, costing both sides CPU at the very moment runs are created.
pub const DEFAULT_REQUESTS_IN_FLIGHT: u16 = 64;

/// Parses the arguments, runs the controller, and maps the outcome to an exit code.
pub async fn main<F, Fut>(controller: &'static str, start: F) -> ExitCode
where
    F: FnOnce(Arc<Context>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let args = Args::parse();
    init_tracing(&args.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match run(controller, args, shutdown, start).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "{controller} stopped");
            ExitCode::FAILURE
        }
    }
}

/// Installs the global tracing subscriber (RUST_LOG filters; default `info`). A second call is a no-op.
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Runs `controller` with `args` until `shutdown` is cancelled or leadership is lost (an error:
/// the process exits and restarts as a standby).
pub async fn run<F, Fut>(
    controller: &'static str,
    args: Args,
    shutdown: CancellationToken,
    start: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Arc<Context>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = config(args.kubeconfig.as_deref()).await?;
    let client = bounded(config.clone(), args.max_requests_in_flight)?;
    // The Lease is renewed over a client of its own: behind a tick's thousands of writes
    // waiting their turn, a renewal could come too late and cost the leadership.
    let lease_client = kube::Client::try_from(config)?;
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let state = Arc::new(AdminState {
        metrics: metrics.clone(),
        ready: false.into(),
    });
    let listener = TcpListener::bind(args.admin_address)
        .await
        .with_context(|| format!("binding the admin server to {}", args.admin_address))?;
    tracing::info!(address = %listener.local_addr()?, "admin server listening");
    let admin = AbortOnDrop(tokio::spawn(admin::serve(
        listener,
        state.clone(),
        shutdown.child_token(),
    )));

    client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    state.ready.store(true, Ordering::Relaxed);

    let identity = format!(
        "{}-{:08x}",
        args.pod_name.clone().unwrap_or_else(|| controller.to_string()),
        rand_suffix()
    );
    let controllers = shutdown.child_token();
    let mut ctx = Context::new(
        client.clone(),
        controller,
        &args.namespace,
        Some(identity.clone()),
        metrics.clone(),
    )
    .watching(args.watch_namespace.clone());
    ctx.shutdown = controllers.clone();
    let ctx = Arc::new(ctx);

    let leadership = if args.leader_elect {
        let election = LeaderElection {
            namespace: args.namespace.clone(),
            lease_name: controller.to_string(),
            identity,
            lease_duration: Duration::from_secs(args.lease_duration_seconds.max(3)),
        };
        tracing::info!(lease = %election.lease_name, namespace = %election.namespace, "waiting for leadership");
        match election.acquire(&lease_client, &shutdown).await? {
            Some(leadership) => Some(leadership),
            None => {
                return Ok(());
            }
        }
    } else {
        None
    };
    metrics.leader.set(1);
    let lost = leadership.as_ref().map(|l| l.lost()).unwrap_or_default();
    let _watchdog = {
        let (lost, controllers) = (lost.clone(), controllers.clone());
        AbortOnDrop(tokio::spawn(async move {
            lost.cancelled().await;
            controllers.cancel();
        }))
    };

    tracing::info!("{controller} started");
    let outcome = start(ctx).await;
    metrics.leader.set(0);
    if let Some(leadership) = leadership {
        leadership.release().await;
    }
    drop(admin);
    outcome?;
    if lost.is_cancelled() {
        anyhow::bail!("lost leadership: exiting so this replica restarts as a standby");
    }
    tracing::info!("{controller} stopped cleanly");
    Ok(())
}

/// A client from `kubeconfig`, else the usual inference (KUBECONFIG, ~/.kube/config, in-cluster),
/// with at most `in_flight` requests awaiting their answer at once.
pub async fn client(kubeconfig: Option<&std::path::Path>, in_flight: u16) -> anyhow::Result<kube::Client> {
    bounded(config(kubeconfig).await?, in_flight)
}

async fn config(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("finding a Kubernetes configuration")?,
    })
}

/// A request holds its place until its answer's headers arrive: watches, log streams and
/// upgraded exec connections then go on without one. The pool opens a few more connections
/// than places (one stays busy while its answer's body is read), but no longer one each.
fn bounded(config: kube::Config, in_flight: u16) -> anyhow::Result<kube::Client> {
    let limit = tower::limit::ConcurrencyLimitLayer::new(usize::from(in_flight));
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&limit)
        .build())
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot listen for SIGTERM/SIGINT");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: finishing the reconciles in flight"),
        _ = interrupt.recv() => tracing::info!("SIGINT: finishing the reconciles in flight"),
    }
    shutdown.cancel();
}

fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

/// A background task that ends with its owner: when `run` is cancelled (a test killing a
/// replica, or a caller dropping it), nothing it started keeps running.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
