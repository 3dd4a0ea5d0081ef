//! One exec of a command in a container: its streams, its deadline and its exit status.
//!
//! kube-rs runs the WebSocket in a background task that writes stdout and stderr into bounded
//! in-memory pipes and, when the command ends, hands the final `Status` (with the exit code) to
//! a oneshot channel. That task stops at the first pipe that nobody reads, so stderr is always
//! drained here by a task of our own into a bounded tail, and stdout is either the caller's to
//! read ([`ExecStdout`]) or drained the same way.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams, AttachedProcess, DeleteParams};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, SimplexStream, WriteHalf};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

use super::reason;
use crate::{Error, Result};

/// Bytes of stderr kept for error messages: the end is where commands say what went wrong.
pub const STDERR_TAIL_BYTES: usize = 4 * 1024;
/// Bytes of stdout kept by [`super::exec_in_pod`].
pub const STDOUT_TAIL_BYTES: usize = 64 * 1024;
/// How long [`ExecStdin::kill`] waits for the killed command's exec to end.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// kube-rs buffers 1 KiB per stream by default, which caps throughput at a few MB/s.
const PIPE_BYTES: usize = 1 << 20;

/// How an exec'd command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// The command's exit code (0: success).
    pub exit_code: i32,
    /// The last [`STDERR_TAIL_BYTES`] of its stderr, lossily decoded as UTF-8.
    pub stderr_tail: String,
}

impl ExecOutcome {
    /// Ok for exit code 0; otherwise an [`Error::Exec`] with reason `CommandFailed` whose
    /// message carries the exit code and the stderr tail. `what` names the command for users,
    /// e.g. "backup command".
    pub fn check(&self, what: &str) -> Result<()> {
        if self.exit_code == 0 {
            return Ok(());
        }
        Err(Error::Exec {
            reason: reason::COMMAND_FAILED,
            message: format!(
                "{what} exited with code {}{}",
                self.exit_code,
                stderr_suffix(&self.stderr_tail)
            ),
        })
    }
}

/// The stdout of a running command, as an [`AsyncRead`] (hand `&mut` of it to the data path).
///
/// Reads fail with [`io::ErrorKind::TimedOut`] once the deadline passes, and the exec is then
/// abandoned. Read to the end, then call [`ExecStdout::finish`] for the exit code.
pub struct ExecStdout {
    stdout: ReadHalf<SimplexStream>,
    at_eof: bool,
    guard: DeadlineGuard,
    session: Session,
}

/// The stdin of a running command, as an [`AsyncWrite`] (hand `&mut` of it to the data path).
///
/// Writes fail with [`io::ErrorKind::TimedOut`] once the deadline passes, and fail with
/// [`io::ErrorKind::BrokenPipe`] if the command ended early; [`ExecStdin::finish`] then says why.
/// End it with `finish` (end of input, exit code) or, when the input is incomplete, with
/// [`ExecStdin::kill`].
pub struct ExecStdin {
    stdin: WriteHalf<SimplexStream>,
    guard: DeadlineGuard,
    session: Session,
}

/// What the streams of one exec share: the kube-rs task, the status, the stderr drain.
pub(super) struct Session {
    api: Api<Pod>,
    pod: String,
    what: String,
    started: Instant,
    deadline: Instant,
    attached: AttachedProcess,
    status: Pin<Box<dyn Future<Output = Option<Status>> + Send>>,
    /// The status, once a writer's poll saw it arrive (`Some(None)`: the exec ended without one).
    ended: Option<Option<Status>>,
    stderr: JoinHandle<Vec<u8>>,
    stdout: Option<JoinHandle<Vec<u8>>>,
}

/// What [`Session::finish`] learned.
pub(super) struct Ended {
    pub(super) exit_code: i32,
    pub(super) stdout_tail: Vec<u8>,
    pub(super) stderr_tail: String,
}

/// Which streams an exec wires up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Streams {
    /// stdout to the caller, stderr drained.
    Stdout,
    /// stdin from the caller, stdout discarded by the node, stderr drained.
    Stdin,
    /// stdout and stderr both drained into tails.
    Captured,
}

impl Session {
    /// Starts `command` in `container` of Pod `pod` (`api` is the Pod's namespace).
    pub(super) async fn start(
        api: &Api<Pod>,
        pod: &str,
        container: &str,
        command: Vec<String>,
        streams: Streams,
        deadline: Instant,
    ) -> Result<(
        Session,
        Option<ReadHalf<SimplexStream>>,
        Option<WriteHalf<SimplexStream>>,
    )> {
        let namespace = api.namespace().unwrap_or_default().to_owned();
        let what = format!("command {command:?} in container {container} of Pod {namespace}/{pod}");
        let params = AttachParams::default()
            .container(container)
            .stdin(streams == Streams::Stdin)
            .stdout(streams != Streams::Stdin)
            .stderr(true)
            .max_stdin_buf_size(PIPE_BYTES)
            .max_stdout_buf_size(PIPE_BYTES)
            .max_stderr_buf_size(PIPE_BYTES);
        let started = Instant::now();
        let mut attached = match tokio::time::timeout_at(deadline, api.exec(pod, command, &params)).await {
            Err(_) => return Err(deadline_exceeded(&what, deadline - started)),
            Ok(Err(err)) => {
                return Err(Error::Exec {
                    reason: reason::EXEC_FAILED,
                    message: format!("starting {what} failed: {err}"),
                });
            }
            Ok(Ok(attached)) => attached,
        };
        let missing = |stream: &str| Error::Exec {
            reason: reason::EXEC_FAILED,
            message: format!("the exec of {what} has no {stream}"),
        };
        let status = Box::pin(attached.take_status().ok_or_else(|| missing("status"))?);
        let stderr = tokio::spawn(tail(
            attached.stderr().ok_or_else(|| missing("stderr"))?,
            STDERR_TAIL_BYTES,
        ));
        let (stdout, drained, stdin) = match streams {
            Streams::Stdout => (attached.stdout(), None, None),
            Streams::Captured => {
                let stdout = attached.stdout().ok_or_else(|| missing("stdout"))?;
                (None, Some(tokio::spawn(tail(stdout, STDOUT_TAIL_BYTES))), None)
            }
            Streams::Stdin => (None, None, attached.stdin()),
        };
        let session = Session {
            api: api.clone(),
            pod: pod.to_owned(),
            what,
            started,
            deadline,
            attached,
            status,
            ended: None,
            stderr,
            stdout: drained,
        };
        Ok((session, stdout, stdin))
    }

    /// Waits for the exit status until the deadline; past it, abandons the command.
    pub(super) async fn finish(self) -> Result<Ended> {
        let Session {
            api: _,
            pod: _,
            what,
            started,
            deadline,
            attached,
            status,
            ended,
            stderr,
            stdout,
        } = self;
        let status = match ended {
            Some(status) => Ok(status),
            None => tokio::time::timeout_at(deadline, status).await,
        };
        let Ok(status) = status else {
            attached.abort();
            stderr.abort();
            return Err(deadline_exceeded(&what, deadline - started));
        };
        // The kube-rs task closes both pipes once the status is in (or it failed): the drains
        // end promptly. Bounded anyway, so that a surprise cannot hang a reconcile.
        let drained = |task: JoinHandle<Vec<u8>>| async move {
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(bytes)) => bytes,
                _ => Vec::new(),
            }
        };
        let stderr_tail = String::from_utf8_lossy(&drained(stderr).await).into_owned();
        let stdout_tail = match stdout {
            Some(task) => drained(task).await,
            None => Vec::new(),
        };
        let Some(status) = status else {
            // No status: the connection ended first. The kube-rs task knows why.
            let why = match tokio::time::timeout(Duration::from_secs(10), attached.join()).await {
                Ok(Err(err)) => err.to_string(),
                _ => "the connection closed".into(),
            };
            return Err(Error::Exec {
                reason: reason::EXEC_FAILED,
                message: format!(
                    "{what} ended without an exit status: {why}{}",
                    stderr_suffix(&stderr_tail)
                ),
            });
        };
        match exit_code(&status) {
            Ok(exit_code) => Ok(Ended {
                exit_code,
                stdout_tail,
                stderr_tail,
            }),
            Err(message) => Err(Error::Exec {
                reason: reason::EXEC_FAILED,
                message: format!("{what} failed: {message}{}", stderr_suffix(&stderr_tail)),
            }),
        }
    }

    /// True once the exec has ended (its status arrived or the connection closed); keeps the
    /// status for [`Session::finish`] and wakes the caller when it comes.
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> bool {
        if self.ended.is_none()
            && let Poll::Ready(status) = self.status.as_mut().poll(cx)
        {
            self.ended = Some(status);
        }
        self.ended.is_some()
    }

    fn deadline_error(&self) -> Error {
        deadline_exceeded(&self.what, self.deadline - self.started)
    }
}

impl ExecStdout {
    pub(super) fn new(session: Session, stdout: ReadHalf<SimplexStream>) -> Self {
        ExecStdout {
            stdout,
            at_eof: false,
            guard: DeadlineGuard::new(session.deadline),
            session,
        }
    }

    /// The command's exit code and stderr tail, once stdout has been read to its end.
    ///
    /// Errors: `DeadlineExceeded` when the deadline passed (the command was abandoned),
    /// `ExecFailed` when stdout was not read to its end (the command is abandoned: the caller
    /// stopped reading, usually because the data path failed, whose error is then the one to
    /// report) or when the exec ended without an exit code. A non-zero exit code is not an
    /// error here: see [`ExecOutcome::check`].
    pub async fn finish(self) -> Result<ExecOutcome> {
        if self.guard.expired {
            self.session.attached.abort();
            return Err(self.session.deadline_error());
        }
        if !self.at_eof {
            self.session.attached.abort();
            return Err(Error::Exec {
                reason: reason::EXEC_FAILED,
                message: format!(
                    "the stdout of {} was not read to its end; the command was abandoned",
                    self.session.what
                ),
            });
        }
        let ended = self.session.finish().await?;
        Ok(ExecOutcome {
            exit_code: ended.exit_code,
            stderr_tail: ended.stderr_tail,
        })
    }
}

impl AsyncRead for ExecStdout {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.guard.poll_expired(cx) {
            this.session.attached.abort();
            return Poll::Ready(Err(timed_out(&this.session)));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stdout).poll_read(cx, buf))?;
        if buf.filled().len() == before && buf.remaining() > 0 {
            this.at_eof = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl ExecStdin {
    pub(super) fn new(session: Session, stdin: WriteHalf<SimplexStream>) -> Self {
        ExecStdin {
            stdin,
            guard: DeadlineGuard::new(session.deadline),
            session,
        }
    }

    /// Closes stdin (the command sees end of input) and waits for its exit code until the
    /// deadline. Call it even when writing failed: a command that exits early breaks the pipe,
    /// and its exit code and stderr are the explanation to report.
    ///
    /// Errors: `DeadlineExceeded` (the command was abandoned), `ExecFailed` when the exec ended
    /// without an exit code. A non-zero exit code is not an error here: see [`ExecOutcome::check`].
    pub async fn finish(mut self) -> Result<ExecOutcome> {
        if self.guard.expired {
            self.session.attached.abort();
            return Err(self.session.deadline_error());
        }
        // Fails harmlessly when the command already ended; its status says how.
        let _ = tokio::time::timeout_at(self.session.deadline, self.stdin.shutdown()).await;
        let ended = self.session.finish().await?;
        Ok(ExecOutcome {
            exit_code: ended.exit_code,
            stderr_tail: ended.stderr_tail,
        })
    }
}

impl ExecStdin {
    /// Kills the command without letting it see the end of its input, for when the data path
    /// failed midway: closing stdin would hand a restore command a cut-off input as if it were
    /// complete, and closing the connection does too (a kubelet closes the command's stdin and
    /// lets it run). So the whole Pod is deleted at once (grace period 0), which kills the
    /// command with it; then the exec is awaited (bounded) and dropped. Only for Pods of this
    /// transport, never for an application's Pod.
    pub async fn kill(self) -> Result<()> {
        let ExecStdin { stdin, mut session, .. } = self;
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        let deleted = match session.api.delete(&session.pod, &now).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => Err(Error::from(err)),
        };
        if deleted.is_ok() && session.ended.is_none() {
            let limit = session.deadline.min(Instant::now() + KILL_WAIT);
            if let Ok(status) = tokio::time::timeout_at(limit, session.status.as_mut()).await {
                session.ended = Some(status);
            }
        }
        session.attached.abort();
        drop(stdin);
        deleted
    }
}

impl AsyncWrite for ExecStdin {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.guard.poll_expired(cx) {
            this.session.attached.abort();
            return Poll::Ready(Err(timed_out(&this.session)));
        }
        match Pin::new(&mut this.stdin).poll_write(cx, buf) {
            // Nothing reads the pipe once the exec has ended: fail instead of waiting forever.
            Poll::Pending if this.session.poll_ended(cx) => Poll::Ready(Err(ended_early(&this.session))),
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.guard.poll_expired(cx) {
            this.session.attached.abort();
            return Poll::Ready(Err(timed_out(&this.session)));
        }
        match Pin::new(&mut this.stdin).poll_flush(cx) {
            Poll::Pending if this.session.poll_ended(cx) => Poll::Ready(Err(ended_early(&this.session))),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.guard.poll_expired(cx) {
            this.session.attached.abort();
            return Poll::Ready(Err(timed_out(&this.session)));
        }
        Pin::new(&mut this.stdin).poll_shutdown(cx)
    }
}

/// A timer polled alongside every read or write, so that a stream blocked on a silent command
/// still wakes up and fails when the deadline passes.
struct DeadlineGuard {
    timer: Pin<Box<Sleep>>,
    expired: bool,
}

impl DeadlineGuard {
    fn new(deadline: Instant) -> Self {
        DeadlineGuard {
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            expired: false,
        }
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.expired && self.timer.as_mut().poll(cx).is_ready() {
            self.expired = true;
        }
        self.expired
    }
}

fn ended_early(session: &Session) -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        format!("{} ended before it read all of its input", session.what),
    )
}

fn timed_out(session: &Session) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, session.deadline_error().to_string())
}

pub(super) fn deadline_exceeded(what: &str, allowed: Duration) -> Error {
    Error::Exec {
        reason: reason::DEADLINE_EXCEEDED,
        message: format!(
            "{what} did not finish within its deadline ({}s); it was abandoned",
            allowed.as_secs()
        ),
    }
}

fn stderr_suffix(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

/// The exit code in an exec's final status: `Success` is 0, `NonZeroExitCode` carries it as the
/// message of its `ExitCode` cause. Anything else (the command could not start, the container
/// went away) is the status message as an error.
pub(super) fn exit_code(status: &Status) -> Result<i32, String> {
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    if status.reason.as_deref() == Some("NonZeroExitCode") {
        let code = status
            .details
            .as_ref()
            .and_then(|details| details.causes.as_ref())
            .into_iter()
            .flatten()
            .find(|cause| cause.reason.as_deref() == Some("ExitCode"))
            .and_then(|cause| cause.message.as_deref())
            .and_then(|code| code.trim().parse().ok());
        if let Some(code) = code {
            return Ok(code);
        }
    }
    Err(status
        .message
        .clone()
        .or_else(|| status.reason.clone())
        .unwrap_or_else(|| "the exec failed without a message".into()))
}

/// Reads `reader` to its end, keeping only its last `limit` bytes.
async fn tail(mut reader: impl AsyncRead + Unpin, limit: usize) -> Vec<u8> {
    let mut kept = Vec::with_capacity(limit.min(4096));
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return kept,
            Ok(read) => keep_tail(&mut kept, &buffer[..read], limit),
        }
    }
}

fn keep_tail(kept: &mut Vec<u8>, new: &[u8], limit: usize) {
    let new = &new[new.len().saturating_sub(limit)..];
    let overflow = (kept.len() + new.len()).saturating_sub(limit);
    kept.drain(..overflow);
    kept.extend_from_slice(new);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status(value: serde_json::Value) -> Status {
        serde_json::from_value(value).expect("a valid Status")
    }

    #[test]
    fn exit_codes_come_from_the_status_channel() {
        assert_eq!(exit_code(&status(json!({ "status": "Success" }))), Ok(0));
        let failed = status(json!({
            "status": "Failure",
            "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code: exit code 3",
            "details": { "causes": [{ "reason": "ExitCode", "message": "3" }] },
        }));
        assert_eq!(exit_code(&failed), Ok(3));
        let internal = status(json!({
            "status": "Failure",
            "reason": "InternalError",
            "message": "executable file not found in $PATH",
        }));
        assert_eq!(exit_code(&internal), Err("executable file not found in $PATH".into()));
    }

    #[test]
    fn the_tail_keeps_the_last_bytes() {
        let mut kept = Vec::new();
        keep_tail(&mut kept, b"abcdef", 4);
        assert_eq!(kept, b"cdef");
        keep_tail(&mut kept, b"gh", 4);
        assert_eq!(kept, b"efgh");
        keep_tail(&mut kept, b"i", 4);
        assert_eq!(kept, b"fghi");
    }

    #[test]
    fn a_non_zero_exit_code_is_a_command_failure_with_stderr() {
        let outcome = ExecOutcome {
            exit_code: 2,
            stderr_tail: "pg_dump: error: connection refused\n".into(),
        };
        let err = outcome.check("backup command").expect_err("exit code 2 fails");
        assert_eq!(err.reason(), "CommandFailed");
        assert_eq!(
            err.to_string(),
            "backup command exited with code 2; stderr: pg_dump: error: connection refused"
        );
        let ok = ExecOutcome {
            exit_code: 0,
            stderr_tail: String::new(),
        };
        assert!(ok.check("backup command").is_ok());
    }
}
