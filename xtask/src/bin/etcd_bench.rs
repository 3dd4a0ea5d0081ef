//! `etcd_bench`: what `cargo xtask bench etcd` runs as processes (so that each is timed and its
//! peak RSS measured on its own, side by side with `etcdctl snapshot save`).
//!
//! ```text
//! etcd_bench fill   --endpoint URL --bytes N [--value-size BYTES] [--concurrency N]
//! etcd_bench backup --endpoint URL --fs DIR [--recipient R]... [--level N]
//! ```
//! `fill` puts SQL-dump-like values (distinct per key, compressible like text) with concurrent
//! puts until about N bytes of values are in; `backup` is the controller's own backup path
//! (member choice, the snapshot stream with etcd's checksum verified, core's gzip + age, a
//! Filesystem store, both manifests) and prints its artifact as one JSON line.

use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use stowage_core::testing::{Generated, Pattern, filesystem_spec};
use stowage_core::{Algorithm, Compression, Credentials, Layout, Progress, Recipients};
use stowage_etcd_backup_ctrl::backup::{self, BackupPlan, snapshot_extension};
use stowage_etcd_backup_ctrl::{EtcdTarget, snapshot::install_crypto_provider};
use tokio_util::sync::CancellationToken;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()).await {
        eprintln!("etcd_bench: {e}");
        std::process::exit(1);
    }
}

struct Args(Vec<String>);

impl Args {
    fn value(&self, flag: &str) -> Option<String> {
        self.0
            .iter()
            .position(|a| a == flag)
            .and_then(|i| self.0.get(i + 1))
            .cloned()
    }

    fn values(&self, flag: &str) -> Vec<String> {
        self.0
            .windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    fn number(&self, flag: &str, default: u64) -> Result<u64, AnyError> {
        Ok(self.value(flag).map(|v| v.parse()).transpose()?.unwrap_or(default))
    }
}

async fn run(argv: Vec<String>) -> Result<(), AnyError> {
    let command = argv.first().cloned().unwrap_or_default();
    let args = Args(argv);
    let endpoint = args.value("--endpoint").ok_or("--endpoint is required")?;
    match command.as_str() {
        "fill" => fill(&args, endpoint).await,
        "backup" => backup(&args, endpoint).await,
        other => Err(format!("unknown command {other:?}: fill or backup").into()),
    }
}

/// Concurrent puts of distinct values until `--bytes` of values are in.
async fn fill(args: &Args, endpoint: String) -> Result<(), AnyError> {
    let total = args.number("--bytes", 500_000_000)?;
    let value_size = args.number("--value-size", 100 * 1024)?;
    let concurrency = args.number("--concurrency", 16)?;
    let keys = total.div_ceil(value_size);
    install_crypto_provider();
    let client = etcd_client::Client::connect([endpoint.as_str()], None).await?;
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (mut client, next) = (client.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= keys {
                    return Ok::<(), AnyError>(());
                }
                let mut value = Vec::with_capacity(value_size as usize);
                Generated::new(Pattern::SqlDump, index, value_size).read_to_end(&mut value)?;
                client.put(format!("/bench/value-{index:08}"), value, None).await?;
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let mut client = client;
    let status = client.status().await?;
    println!(
        "{{\"keys\":{keys},\"value_bytes\":{},\"db_size\":{}}}",
        keys * value_size,
        status.db_size()
    );
    Ok(())
}

/// One backup exactly as the controller runs it, into a Filesystem store.
async fn backup(args: &Args, endpoint: String) -> Result<(), AnyError> {
    let dir = args.value("--fs").ok_or("--fs DIR is required")?;
    let store = stowage_core::storage::build(&filesystem_spec(std::path::Path::new(&dir)), &Credentials::default())?;
    let recipients = Recipients::parse(&args.values("--recipient"))?;
    let compression = Compression {
        algorithm: Algorithm::Gzip,
        level: args.value("--level").map(|v| v.parse()).transpose()?,
        workers: args.value("--workers").map(|v| v.parse()).transpose()?,
    };
    let ext = snapshot_extension(&compression, !args.values("--recipient").is_empty());
    let key = Layout::new("")?.default_key(backup::KIND, None, "bench", chrono::Utc::now(), &ext);
    let plan = BackupPlan {
        store,
        snapshot_key: key,
        certs: None,
        compression,
        recipients: Arc::new(recipients),
        source: "EtcdBackup bench".into(),
        progress: Progress::default(),
    };
    let target = EtcdTarget {
        endpoints: vec![endpoint],
        tls: None,
    };
    let outcome = backup::run(plan, &target, "bench", &CancellationToken::new()).await?;
    println!(
        "{}",
        serde_json::json!({
            "path": outcome.snapshot.path,
            "revision": outcome.revision,
            "plaintext_bytes": outcome.snapshot.plaintext_bytes,
            "stored_bytes": outcome.snapshot.stored_bytes,
        })
    );
    Ok(())
}
