//! The controller under test: resource-backup-ctrl's release binary as a process of its
//! own, started fresh for each memory measurement, and its peak RSS read from /proc.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::SYSTEM;

/// The controller process; killed when dropped.
pub(super) struct Controller {
    child: Child,
}

impl Controller {
    /// Starts `binary` against the bed of `kubeconfig`, logging to `log`, and waits until its
    /// admin server says it is ready.
    pub(super) fn start(binary: &Path, kubeconfig: &Path, log: &Path) -> anyhow::Result<Controller> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log_file = std::fs::File::create(log)?;
        let child = Command::new(binary)
            .args(["--namespace", SYSTEM, "--leader-elect=false"])
            .arg(format!("--admin-address=127.0.0.1:{port}"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            // As deploy/resource-backup-ctrl runs it.
            .env("MALLOC_ARENA_MAX", "2")
            .env("MALLOC_MMAP_THRESHOLD_", "131072")
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting resource-backup-ctrl")?;
        // Killed when dropped, also when it never gets ready.
        let controller = Controller { child };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready(port) {
            if Instant::now() > deadline {
                bail!("resource-backup-ctrl not ready after 120 s; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(controller)
    }

    /// Resets the process's peak RSS (VmHWM) to its current RSS.
    pub(super) fn reset_peak(&self) -> anyhow::Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").context("resetting VmHWM")
    }

    pub(super) fn peak_rss_kib(&self) -> anyhow::Result<u64> {
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

pub(super) fn stop(controller: &mut Controller) {
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
