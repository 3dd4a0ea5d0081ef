//! What the etcd tests share: filling an etcd with keys, restoring a snapshot file with the
//! stock `etcdctl snapshot restore`, serving the restored data with a new etcd, and freezing a
//! member.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use stowage_e2e::process::{ManagedChild, free_port, wait_for_port};

/// An age key made by the stock `age-keygen`, written to `dir/key.txt`: (key file, recipient).
pub fn age_key(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("key.txt");
    let status = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .status()
        .expect("age-keygen not found: apt-get install age");
    assert!(status.success(), "age-keygen failed");
    let text = std::fs::read_to_string(&path).expect("reading the key age-keygen wrote");
    let recipient = text
        .lines()
        .find_map(|line| line.strip_prefix("# public key: "))
        .expect("age-keygen writes the public key as a comment")
        .to_string();
    (path, recipient)
}

/// Puts `count` keys `/stowage-test/key-NNNN` = `value-NNNN`; returns the revision after the last.
pub async fn put_keys(client: &mut etcd_client::Client, count: usize) -> anyhow::Result<i64> {
    let mut revision = 0;
    for i in 0..count {
        let response = client
            .put(format!("/stowage-test/key-{i:04}"), format!("value-{i:04}"), None)
            .await?;
        revision = response.header().map_or(0, |h| h.revision());
    }
    Ok(revision)
}

/// The test keys and the store revision, as `client` sees them.
pub async fn read_keys(client: &mut etcd_client::Client) -> anyhow::Result<(Vec<(String, String)>, i64)> {
    let response = client
        .get("/stowage-test/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await?;
    let revision = response.header().map_or(0, |h| h.revision());
    let pairs = response
        .kvs()
        .iter()
        .map(|kv| Ok((kv.key_str()?.to_string(), kv.value_str()?.to_string())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((pairs, revision))
}

/// etcd's restore tool: `etcdutl` on 3.5+, `etcdctl snapshot restore` on 3.4.
pub fn restore_command() -> anyhow::Result<Command> {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let etcdutl = Path::new(dir).join("etcdutl");
        if etcdutl.is_file() {
            let mut command = Command::new(etcdutl);
            command.args(["snapshot", "restore"]);
            return Ok(command);
        }
    }
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let etcdctl = Path::new(dir).join("etcdctl");
        if etcdctl.is_file() {
            let mut command = Command::new(etcdctl);
            command.env("ETCDCTL_API", "3").args(["snapshot", "restore"]);
            return Ok(command);
        }
    }
    anyhow::bail!("neither etcdutl nor etcdctl found: run `apt-get install etcd-client`")
}

/// An etcd member serving a restored data directory; killed when dropped.
pub struct RestoredEtcd {
    pub endpoint: String,
    _process: ManagedChild,
}

/// Restores `snapshot` with the stock tool into `<dir>/data` and starts etcd on it.
pub fn restore_and_serve(snapshot: &Path, dir: &Path) -> anyhow::Result<RestoredEtcd> {
    let data_dir = dir.join("data");
    let peer = format!("http://127.0.0.1:{}", free_port()?);
    let output = restore_command()?
        .arg(snapshot)
        .arg(format!("--data-dir={}", data_dir.display()))
        .args(["--name=restored", &format!("--initial-cluster=restored={peer}")])
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .output()
        .context("running the snapshot restore tool")?;
    anyhow::ensure!(
        output.status.success(),
        "snapshot restore failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serve(&data_dir, dir, &peer)
}

/// Starts etcd on an existing (restored) data directory as member `restored`.
pub fn serve(data_dir: &Path, dir: &Path, peer: &str) -> anyhow::Result<RestoredEtcd> {
    let port = free_port()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut command = Command::new("/usr/bin/etcd");
    command
        .arg("--name=restored")
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg("--unsafe-no-fsync")
        .arg(format!("--listen-client-urls={endpoint}"))
        .arg(format!("--advertise-client-urls={endpoint}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=restored={peer}"));
    let mut process = ManagedChild::spawn("restored etcd", command, &dir.join("restored-etcd.log"))?;
    wait_for_port(&mut process, port, Duration::from_secs(60))?;
    Ok(RestoredEtcd {
        endpoint,
        _process: process,
    })
}

/// A client of a plain-http etcd, retried until it answers (a fresh member needs a moment to
/// elect itself leader).
pub async fn connect_plain(endpoint: &str) -> anyhow::Result<etcd_client::Client> {
    let mut last = None;
    for _ in 0..300 {
        match etcd_client::Client::connect([endpoint], None).await {
            Ok(mut client) => match client.status().await {
                Ok(_) => return Ok(client),
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("waiting 60 s for etcd at {endpoint} to answer: {last:?}")
}

/// Sends SIGCONT to a process stopped with SIGSTOP when dropped, so that a failing test
/// leaves no frozen etcd behind.
pub struct Stopped(u32);

impl Stopped {
    pub fn stop(pid: u32) -> Stopped {
        signal(pid, "STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}
