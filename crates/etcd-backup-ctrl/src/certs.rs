//! The control plane's certificate directory as a tar stream. The tar is built on a blocking
//! thread (the tar crate is synchronous) and handed over in chunks through a bounded
//! channel, so nothing is staged on disk or held whole in memory.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

use crate::error::{Error, Result};

const CHUNK: usize = 256 * 1024;

/// Checks that `dir` is a directory we can read, before any byte is streamed.
pub fn check_dir(dir: &Path) -> Result<()> {
    let refuse = |reason: String| Error::CertsDir {
        path: dir.display().to_string(),
        reason,
    };
    if !dir.is_absolute() {
        return Err(refuse("must be an absolute path on the controller's host".into()));
    }
    let metadata = std::fs::metadata(dir).map_err(|e| {
        refuse(if e.kind() == io::ErrorKind::NotFound {
            "does not exist in the controller: mount the host directory into its Pod (the deployment mounts /etc/kubernetes/pki) or fix spec.certsDir".to_string()
        } else {
            format!("cannot be read: {e}")
        })
    })?;
    if !metadata.is_dir() {
        return Err(refuse("is not a directory".into()));
    }
    std::fs::read_dir(dir).map_err(|e| refuse(format!("cannot be listed: {e}")))?;
    Ok(())
}

/// A tar of everything under `dir`, with paths relative to it (`ca.crt`, `etcd/ca.crt`),
/// so `stowctl extract --to /etc/kubernetes/pki` puts every file back where it was.
pub fn tar_stream(dir: PathBuf) -> impl AsyncRead + Send + Unpin + 'static {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut writer = ChunkWriter {
            tx: tx.clone(),
            buffer: Vec::with_capacity(CHUNK),
        };
        let built = (|| {
            let mut builder = tar::Builder::new(&mut writer);
            builder.mode(tar::HeaderMode::Complete);
            builder.append_dir_all(".", &dir)?;
            builder.finish()?;
            drop(builder);
            writer.flush()
        })();
        if let Err(error) = built {
            let _ = tx.blocking_send(Err(io::Error::new(
                error.kind(),
                format!("archiving {}: {error}", dir.display()),
            )));
        }
    });
    StreamReader::new(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })))
}

/// Sends what it is given in chunks of [`CHUNK`] bytes.
struct ChunkWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the reader of the certificate tar went away"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn the_tar_holds_every_file_with_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etcd")).unwrap();
        std::fs::write(dir.path().join("ca.crt"), "CA").unwrap();
        std::fs::write(dir.path().join("etcd/server.key"), vec![b'k'; 300_000]).unwrap();
        check_dir(dir.path()).unwrap();

        let mut tar_bytes = Vec::new();
        tar_stream(dir.path().to_path_buf())
            .read_to_end(&mut tar_bytes)
            .await
            .unwrap();
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert!(names.contains(&"ca.crt".to_string()), "{names:?}");
        assert!(names.contains(&"etcd/server.key".to_string()), "{names:?}");
    }

    #[test]
    fn a_missing_directory_is_refused_clearly() {
        let error = check_dir(Path::new("/nonexistent/pki")).unwrap_err();
        assert_eq!(error.reason(), "CertsDirNotFound");
        assert!(error.to_string().contains("mount the host directory"), "{error}");
        assert!(check_dir(Path::new("relative/pki")).is_err());
    }
}
