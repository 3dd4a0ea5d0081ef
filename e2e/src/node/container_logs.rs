//! `pods/log`: a container's output, read from its CRI log files as a kubelet reads them.
//!
//! Options as a kubelet honours them: `previous` (the run in the container's lastState),
//! `tailLines` (the last records of the file), `sinceSeconds`/`sinceTime` (records written from
//! then on), `timestamps` (each record prefixed with its time), `limitBytes` (the output cut
//! after that many bytes) and `follow`, which ends once the followed run has exited and its
//! output is drained (a restarted container's new run is not followed, as on a real node).
//! Memory stays bounded: files are read in chunks, never whole.

use std::io::SeekFrom;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::fs::File;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};
use tokio::sync::mpsc;

use super::NodeContext;
use super::containers::{ContainerRuntime, RunState};
use super::cri_log;
use super::kubelet_api::{Body, Query, find_container, text};

const CHUNK: usize = 64 * 1024;
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The query options of one `pods/log` request.
struct LogOptions {
    follow: bool,
    previous: bool,
    timestamps: bool,
    tail_lines: Option<u64>,
    limit_bytes: Option<u64>,
    since: Option<Timestamp>,
}

impl LogOptions {
    fn parse(query: &Query) -> Result<Self, String> {
        let number = |key: &str| -> Result<Option<u64>, String> {
            query
                .get(key)
                .map(|value| value.parse::<u64>().map_err(|_| format!("invalid {key}: {value:?}")))
                .transpose()
        };
        let since = match (query.get("sinceTime"), number("sinceSeconds")?) {
            (Some(time), _) => Some(
                time.parse::<Timestamp>()
                    .map_err(|error| format!("invalid sinceTime {time:?}: {error}"))?,
            ),
            (None, Some(seconds)) => {
                let seconds = i64::try_from(seconds).map_err(|_| "sinceSeconds out of range".to_owned())?;
                Timestamp::now().checked_sub(SignedDuration::from_secs(seconds)).ok()
            }
            (None, None) => None,
        };
        Ok(LogOptions {
            follow: query.flag("follow"),
            previous: query.flag("previous"),
            timestamps: query.flag("timestamps"),
            tail_lines: number("tailLines")?,
            limit_bytes: number("limitBytes")?,
            since,
        })
    }
}

pub(super) async fn handle(
    ctx: &Arc<NodeContext>,
    namespace: &str,
    pod: &str,
    container: &str,
    query: &Query,
) -> Response<Body> {
    let (_pod_runtime, runtime) = match find_container(ctx, namespace, pod, container) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let options = match LogOptions::parse(query) {
        Ok(options) => options,
        Err(message) => return text(StatusCode::BAD_REQUEST, &message),
    };
    let run = match run_to_show(&runtime, pod, options.previous) {
        Ok(run) => run,
        Err(message) => return text(StatusCode::BAD_REQUEST, &message),
    };
    let internal_error = |error: std::io::Error| {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("reading the log of container {container}: {error}"),
        )
    };
    let mut file = match File::open(runtime.log_file(run)).await {
        Ok(file) => file,
        Err(error) => return internal_error(error),
    };
    if let Some(lines) = options.tail_lines {
        let start = match start_of_last_lines(&mut file, lines).await {
            Ok(start) => start,
            Err(error) => return internal_error(error),
        };
        if let Err(error) = file.seek(SeekFrom::Start(start)).await {
            return internal_error(error);
        }
    }
    let (chunks_tx, chunks) = mpsc::channel(4);
    tokio::spawn(stream_log(file, runtime, run, options, chunks_tx));
    let stream = futures::stream::unfold(chunks, |mut chunks| async move {
        chunks.recv().await.map(|chunk| (chunk, chunks))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// The run whose log a request shows, or the error a kubelet answers (400) when there is none.
/// The container's lastState is the run before the latest, or the latest while the container
/// waits to be restarted; that is also what a waiting container's current log shows.
fn run_to_show(runtime: &ContainerRuntime, pod: &str, previous: bool) -> Result<u32, String> {
    let state = *runtime.runs.borrow();
    let name = &runtime.name;
    if previous {
        let last_state = if state.restarting {
            state.started.checked_sub(1)
        } else {
            state.started.checked_sub(2)
        };
        last_state.ok_or_else(|| format!("previous terminated container \"{name}\" in pod \"{pod}\" not found"))
    } else {
        state.started.checked_sub(1).ok_or_else(|| {
            format!(
                "container \"{name}\" in pod \"{pod}\" is waiting to start: {}",
                runtime.first_waiting_reason
            )
        })
    }
}

/// Run `run` will write nothing more.
fn finished(state: &RunState, run: u32) -> bool {
    run + 1 < state.started || state.ended
}

type Chunk = Result<Frame<Bytes>, std::io::Error>;

async fn stream_log(
    file: File,
    runtime: Arc<ContainerRuntime>,
    run: u32,
    options: LogOptions,
    chunks: mpsc::Sender<Chunk>,
) {
    let mut runs = runtime.runs.subscribe();
    let mut reader = BufReader::with_capacity(CHUNK, file);
    let mut limit = options.limit_bytes.unwrap_or(u64::MAX);
    let mut record = Vec::new();
    let mut out = Vec::with_capacity(CHUNK);
    // Set once the run ended: one more pass reads what it wrote last.
    let mut draining = false;
    loop {
        if let Err(error) = reader.read_until(b'\n', &mut record).await {
            let _ = chunks.send(Err(error)).await;
            return;
        }
        if let Some(line) = record.strip_suffix(b"\n") {
            if let Some(parsed) = cri_log::parse(line)
                && options.since.is_none_or(|since| parsed.time >= since)
            {
                parsed.render(options.timestamps, &mut out);
            }
            record.clear();
            if out.len() >= CHUNK && !send(&chunks, &mut out, &mut limit).await {
                return;
            }
            continue;
        }
        // At the end of what is written so far (`record` may hold the start of one).
        if !send(&chunks, &mut out, &mut limit).await || !options.follow || draining {
            return;
        }
        if finished(&runs.borrow_and_update(), run) {
            draining = true;
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = runs.changed() => {}
            () = chunks.closed() => return,
        }
    }
}

/// Sends what is rendered, cut at the byte limit. False when the response must end.
async fn send(chunks: &mpsc::Sender<Chunk>, out: &mut Vec<u8>, limit: &mut u64) -> bool {
    if !out.is_empty() {
        let take = usize::try_from(*limit).unwrap_or(usize::MAX).min(out.len());
        let data = Bytes::copy_from_slice(&out[..take]);
        out.clear();
        *limit -= take as u64;
        if chunks.send(Ok(Frame::data(data))).await.is_err() {
            return false;
        }
    }
    *limit > 0
}

/// The output of a log file's last `lines` records, at most its last `max_bytes` bytes, as
/// `FallbackToLogsOnError` takes it.
pub(crate) async fn last_output(path: &Path, lines: u64, max_bytes: usize) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(path).await?;
    let start = start_of_last_lines(&mut file, lines).await?;
    file.seek(SeekFrom::Start(start)).await?;
    let mut reader = BufReader::new(file);
    let mut record = Vec::new();
    let mut out = Vec::new();
    while reader.read_until(b'\n', &mut record).await? > 0 {
        if let Some(parsed) = record.strip_suffix(b"\n").and_then(cri_log::parse) {
            parsed.render(false, &mut out);
        }
        record.clear();
    }
    Ok(out.split_off(out.len().saturating_sub(max_bytes)))
}

/// The offset where the last `lines` lines of the file begin (a final newline ends the last
/// line rather than starting an empty one).
async fn start_of_last_lines(file: &mut File, lines: u64) -> std::io::Result<u64> {
    let length = file.seek(SeekFrom::End(0)).await?;
    if lines == 0 {
        return Ok(length);
    }
    let mut buffer = vec![0_u8; CHUNK];
    let mut end = length;
    let mut newlines = 0;
    let mut skip_final_newline = true;
    while end > 0 {
        let start = end.saturating_sub(CHUNK as u64);
        let size = usize::try_from(end - start).unwrap_or(CHUNK);
        file.seek(SeekFrom::Start(start)).await?;
        file.read_exact(&mut buffer[..size]).await?;
        for (index, byte) in buffer[..size].iter().enumerate().rev() {
            if skip_final_newline {
                skip_final_newline = false;
                if *byte == b'\n' {
                    continue;
                }
            }
            if *byte == b'\n' {
                newlines += 1;
                if newlines == lines {
                    return Ok(start + index as u64 + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}
