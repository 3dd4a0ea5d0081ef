//! `pods/log`: a container's stdout and stderr, as captured in its log file.
//!
//! Supports `tailLines`, `limitBytes` and `follow` (which ends once the container's process has
//! exited and its output is drained).

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::NodeContext;
use super::containers::ContainerRuntime;
use super::kubelet_api::{Body, Query, find_container, text};

const CHUNK: usize = 64 * 1024;
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub(super) async fn handle(
    ctx: &Arc<NodeContext>,
    namespace: &str,
    pod: &str,
    container: &str,
    query: &Query,
) -> Response<Body> {
    let (pod_runtime, runtime) = match find_container(ctx, namespace, pod, container) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let mut file = match File::open(&runtime.log_path).await {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("container {container} in pod {namespace}/{pod} is waiting to start"),
            );
        }
        Err(error) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("reading the container log: {error}"),
            );
        }
    };
    if let Some(lines) = query.get("tailLines").and_then(|lines| lines.parse::<u64>().ok()) {
        let start = match start_of_last_lines(&mut file, lines).await {
            Ok(start) => start,
            Err(error) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("reading the container log: {error}"),
                );
            }
        };
        if let Err(error) = file.seek(SeekFrom::Start(start)).await {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("reading the container log: {error}"),
            );
        }
    }
    let limit = query
        .get("limitBytes")
        .and_then(|limit| limit.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    let (chunks_tx, chunks) = mpsc::channel(4);
    tokio::spawn(stream_log(
        file,
        runtime,
        pod_runtime.stop.clone(),
        query.flag("follow"),
        limit,
        chunks_tx,
    ));
    let stream = futures::stream::unfold(chunks, |mut chunks| async move {
        chunks.recv().await.map(|chunk| (chunk, chunks))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

type Chunk = Result<Frame<Bytes>, std::io::Error>;

async fn stream_log(
    mut file: File,
    runtime: Arc<ContainerRuntime>,
    pod_stop: tokio_util::sync::CancellationToken,
    follow: bool,
    mut limit: u64,
    chunks: mpsc::Sender<Chunk>,
) {
    let mut running = runtime.running.subscribe();
    let mut buffer = vec![0_u8; CHUNK];
    // Set once the container stopped: one more read drains what it wrote last.
    let mut draining = false;
    while limit > 0 {
        let want = usize::try_from(limit.min(CHUNK as u64)).unwrap_or(CHUNK);
        let read = match file.read(&mut buffer[..want]).await {
            Ok(read) => read,
            Err(error) => {
                let _ = chunks.send(Err(error)).await;
                return;
            }
        };
        if read > 0 {
            limit -= read as u64;
            if chunks
                .send(Ok(Frame::data(Bytes::copy_from_slice(&buffer[..read]))))
                .await
                .is_err()
            {
                return; // the client went away
            }
            continue;
        }
        if !follow || draining {
            return;
        }
        if !*running.borrow_and_update() || pod_stop.is_cancelled() {
            draining = true;
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = running.changed() => {}
            () = pod_stop.cancelled() => {}
            () = chunks.closed() => return,
        }
    }
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
