//! Startup, readiness and liveness probes, run as a kubelet's prober runs them.
//!
//! Each probe of a running container ticks every `periodSeconds` from the container's start,
//! skipping ticks before `initialDelaySeconds`; one attempt may take `timeoutSeconds`. A result
//! counts once it repeats `successThreshold` or `failureThreshold` times in a row. Until the
//! startup probe succeeds the others do not run and the container is neither started nor ready;
//! a failed startup or liveness probe kills the container (which then restarts as the Pod's
//! restartPolicy says); readiness drives the container's `ready`. A readiness probe starts
//! from "not ready", a liveness probe from "alive". Handlers: `exec` (in the container's mount
//! namespace and environment), `httpGet` (plain HTTP; 200-399 is a success) and `tcpSocket`.
//! HTTPS and gRPC probes always fail, with a message saying they are not simulated.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};

use super::NodeContext;
use super::containers::{ContainerRun, ContainerRuntime, KillRequest};
use super::pod_status::ContainerEvent;
use super::process::{Stdios, exit_code};

/// Starts the probes of a run that just started; `None` if the container has none.
pub(crate) fn start(run: &ContainerRun, kill: mpsc::Sender<KillRequest>) -> Option<JoinHandle<()>> {
    let spec = &run.spec;
    if spec.startup_probe.is_none() && spec.readiness_probe.is_none() && spec.liveness_probe.is_none() {
        return None;
    }
    let prober = Prober {
        node: run.node.clone(),
        runtime: run.runtime.clone(),
        spec: spec.clone(),
        pod: run.pod.clone(),
        events: run.events.clone(),
        kill,
        began: Instant::now(),
        pod_grace_seconds: run.pod_grace_seconds,
    };
    Some(tokio::spawn(prober.run()))
}

struct Prober {
    node: Arc<NodeContext>,
    runtime: Arc<ContainerRuntime>,
    spec: Container,
    pod: String,
    events: mpsc::Sender<ContainerEvent>,
    kill: mpsc::Sender<KillRequest>,
    /// When the container's process started.
    began: Instant,
    pod_grace_seconds: u64,
}

impl Prober {
    async fn run(self) {
        let (started, started_rx) = watch::channel(self.spec.startup_probe.is_none());
        tokio::join!(
            self.startup(started),
            self.readiness(started_rx.clone()),
            self.liveness(started_rx),
        );
    }

    async fn startup(&self, started: watch::Sender<bool>) {
        let Some(probe) = &self.spec.startup_probe else { return };
        let mut schedule = Schedule::new(probe, "Startup", None);
        if schedule.next_change(self).await {
            started.send_replace(true);
            let name = self.spec.name.clone();
            let _ = self.events.send(ContainerEvent::StartupSucceeded { name }).await;
        } else {
            self.request_kill(probe, "startup").await;
        }
    }

    async fn readiness(&self, mut started: watch::Receiver<bool>) {
        let Some(probe) = &self.spec.readiness_probe else {
            return;
        };
        if started.wait_for(|started| *started).await.is_err() {
            return;
        }
        let mut schedule = Schedule::new(probe, "Readiness", Some(false));
        loop {
            let ready = schedule.next_change(self).await;
            let name = self.spec.name.clone();
            let _ = self.events.send(ContainerEvent::ReadinessChanged { name, ready }).await;
        }
    }

    async fn liveness(&self, mut started: watch::Receiver<bool>) {
        let Some(probe) = &self.spec.liveness_probe else { return };
        if started.wait_for(|started| *started).await.is_err() {
            return;
        }
        let mut schedule = Schedule::new(probe, "Liveness", Some(true));
        if !schedule.next_change(self).await {
            self.request_kill(probe, "liveness").await;
        }
    }

    async fn request_kill(&self, probe: &Probe, kind: &str) {
        let grace = probe
            .termination_grace_period_seconds
            .and_then(|seconds| u64::try_from(seconds).ok())
            .unwrap_or(self.pod_grace_seconds);
        let request = KillRequest {
            reason: format!("Container {} failed {kind} probe, will be restarted", self.spec.name),
            grace: Duration::from_secs(grace),
        };
        let _ = self.kill.send(request).await;
    }

    /// One attempt: success, and what failed otherwise.
    async fn probe_once(&self, probe: &Probe) -> Result<(), String> {
        let timeout = seconds(probe.timeout_seconds, 1);
        if let Some(exec) = &probe.exec {
            let command = exec.command.clone().unwrap_or_default();
            return match exec_in_container(&self.node, &self.runtime, &command, timeout).await? {
                0 => Ok(()),
                code => Err(format!("command {command:?} exited with {code}")),
            };
        }
        if let Some(http) = &probe.http_get {
            let port = self.port(&http.port)?;
            let status = tokio::time::timeout(timeout, http_get(http, port))
                .await
                .map_err(|_| format!("no HTTP response within {timeout:?}"))??;
            return if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {status}"))
            };
        }
        if let Some(tcp) = &probe.tcp_socket {
            let port = self.port(&tcp.port)?;
            let host = tcp.host.clone().filter(|host| !host.is_empty());
            let host = host.unwrap_or_else(|| "127.0.0.1".to_owned());
            return match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(format!("dial tcp {host}:{port}: {error}")),
                Err(_) => Err(format!("dial tcp {host}:{port}: timed out")),
            };
        }
        Err("the node simulator runs exec, httpGet and tcpSocket probes only".to_owned())
    }

    /// A probe's port: a number, or the name of one of the container's ports.
    fn port(&self, port: &IntOrString) -> Result<u16, String> {
        let number = match port {
            IntOrString::Int(number) => Some(*number),
            IntOrString::String(name) => self
                .spec
                .ports
                .iter()
                .flatten()
                .find(|port| port.name.as_deref() == Some(name.as_str()))
                .map(|port| port.container_port),
        };
        number
            .and_then(|number| u16::try_from(number).ok())
            .ok_or_else(|| format!("invalid probe port {port:?}"))
    }
}

/// One probe's ticks and the results that count.
struct Schedule<'a> {
    probe: &'a Probe,
    kind: &'static str,
    ticker: Interval,
    /// The result that counts now (`None`: unknown yet).
    settled: Option<bool>,
    last: Option<bool>,
    streak: i32,
}

impl<'a> Schedule<'a> {
    fn new(probe: &'a Probe, kind: &'static str, initial: Option<bool>) -> Self {
        let mut ticker = tokio::time::interval(seconds(probe.period_seconds, 10));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Schedule {
            probe,
            kind,
            ticker,
            settled: initial,
            last: None,
            streak: 0,
        }
    }

    /// Probes on every tick until the result that counts changes; returns the new result.
    async fn next_change(&mut self, prober: &Prober) -> bool {
        let initial_delay = seconds(self.probe.initial_delay_seconds, 0);
        loop {
            self.ticker.tick().await;
            if prober.began.elapsed() < initial_delay {
                continue;
            }
            let outcome = prober.probe_once(self.probe).await;
            if let Err(message) = &outcome {
                prober.node.log.line(format_args!(
                    "{} probe of container {} of pod {} failed: {message}",
                    self.kind, prober.spec.name, prober.pod
                ));
            }
            let success = outcome.is_ok();
            if self.last == Some(success) {
                self.streak += 1;
            } else {
                self.last = Some(success);
                self.streak = 1;
            }
            let threshold = if success {
                self.probe.success_threshold.unwrap_or(1)
            } else {
                self.probe.failure_threshold.unwrap_or(3)
            };
            if self.streak >= threshold && self.settled != Some(success) {
                self.settled = Some(success);
                return success;
            }
        }
    }
}

fn seconds(value: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(value.and_then(|value| u64::try_from(value).ok()).unwrap_or(default))
}

/// Runs `command` in the container (as an exec probe or a preStop hook does) and returns its
/// exit code; kills it when `timeout` has passed.
pub(crate) async fn exec_in_container(
    node: &NodeContext,
    runtime: &ContainerRuntime,
    command: &[String],
    timeout: Duration,
) -> Result<i32, String> {
    let stdios = Stdios {
        stdin: std::process::Stdio::null(),
        stdout: std::process::Stdio::null(),
        stderr: std::process::Stdio::null(),
    };
    let mut process = runtime
        .context
        .spawn(node, command, stdios)
        .map_err(|error| format!("{error:#}"))?;
    match tokio::time::timeout(timeout, process.child.wait()).await {
        Ok(status) => {
            process.reap_group(node);
            status
                .map(|status| exit_code(&status))
                .map_err(|error| error.to_string())
        }
        Err(_) => {
            let _ = process.terminate(node, Duration::ZERO).await;
            Err(format!("command {command:?} timed out after {timeout:?}"))
        }
    }
}

/// A plain HTTP/1.1 GET as a kubelet's prober sends it; returns the response's status code.
async fn http_get(action: &HTTPGetAction, port: u16) -> Result<u16, String> {
    if action.scheme.as_deref() == Some("HTTPS") {
        return Err("the node simulator does not run HTTPS probes".to_owned());
    }
    let host = action.host.clone().filter(|host| !host.is_empty());
    let host = host.unwrap_or_else(|| "127.0.0.1".to_owned());
    let path = action
        .path
        .as_deref()
        .filter(|path| path.starts_with('/'))
        .unwrap_or("/");
    let failed = |error: std::io::Error| format!("GET http://{host}:{port}{path}: {error}");
    let mut stream = TcpStream::connect((host.as_str(), port)).await.map_err(failed)?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for header in action.http_headers.iter().flatten() {
        request.push_str(&format!("{}: {}\r\n", header.name, header.value));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.map_err(failed)?;
    let mut status_line = String::new();
    BufReader::new(stream)
        .read_line(&mut status_line)
        .await
        .map_err(failed)?;
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("GET http://{host}:{port}{path}: malformed response {status_line:?}"))
}
