//! `pipe`: the data path as a command, for `cargo xtask bench` (which measures
//! it as a process, side by side with stock tools) and for trying things out.
//!
//! ```text
//! pipe backup  (--fs DIR | --s3 URL/BUCKET) --key KEY [--compression gzip|zstd|none] [--level N]
//!              [--workers N] [--recipient R]... (--input FILE | --generate sql|random:BYTES)
//! pipe restore (--fs DIR | --s3 URL/BUCKET) --key KEY [--identity FILE] [--output FILE]
//! ```
//! S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.

use std::sync::Arc;

use stowage_core::storage::{self, Credentials, S3Spec, StorageSpec, StorageType};
use stowage_core::testing::{Generated, Pattern, filesystem_spec};
use stowage_core::{Algorithm, BackupRequest, Compression, Identities, Recipients, RestoreRequest, backup, restore};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()).await {
        eprintln!("pipe: {e}");
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
}

async fn run(argv: Vec<String>) -> Result<(), AnyError> {
    let command = argv.first().cloned().unwrap_or_default();
    let args = Args(argv);
    let (spec, credentials) = storage_from(&args)?;
    let store = storage::build(&spec, &credentials)?;
    let key = args.value("--key").ok_or("--key is required")?;
    match command.as_str() {
        "backup" => {
            let mut request = BackupRequest::new(store, &key, "Bench", "pipe");
            let algorithm = match args.value("--compression").as_deref().unwrap_or("gzip") {
                "gzip" => Algorithm::Gzip,
                "zstd" => Algorithm::Zstd,
                "none" => Algorithm::None,
                other => return Err(format!("unknown compression {other}").into()),
            };
            let parse = |flag: &str| args.value(flag).map(|v| v.parse::<u32>()).transpose();
            request.compression = Compression {
                algorithm,
                level: parse("--level")?,
                workers: parse("--workers")?,
            };
            request.recipients = Arc::new(Recipients::parse(&args.values("--recipient"))?);
            let artifact = if let Some(spec) = args.value("--generate") {
                let (pattern, len) = spec.split_once(':').ok_or("--generate sql:BYTES or random:BYTES")?;
                let pattern = if pattern == "sql" {
                    Pattern::SqlDump
                } else {
                    Pattern::Random
                };
                backup(request, Generated::new(pattern, 1, len.parse()?)).await?
            } else {
                let input = args.value("--input").ok_or("--input or --generate is required")?;
                backup(request, tokio::fs::File::open(input).await?).await?
            };
            println!("{}", serde_json::to_string(&artifact)?);
        }
        "restore" => {
            let mut identities = Identities::none();
            if let Some(file) = args.value("--identity") {
                identities.add(&std::fs::read_to_string(file)?)?;
            }
            let request = RestoreRequest {
                identities: Arc::new(identities),
                ..RestoreRequest::new(store, &key)
            };
            let mut output =
                tokio::fs::File::create(args.value("--output").unwrap_or_else(|| "/dev/null".into())).await?;
            let manifest = restore(request, &mut output).await?;
            println!("{}", serde_json::to_string(&manifest.artifact)?);
        }
        other => return Err(format!("unknown command {other:?}: backup or restore").into()),
    }
    Ok(())
}

fn storage_from(args: &Args) -> Result<(StorageSpec, Credentials), AnyError> {
    if let Some(dir) = args.value("--fs") {
        return Ok((filesystem_spec(std::path::Path::new(&dir)), Credentials::default()));
    }
    let url = args.value("--s3").ok_or("--fs DIR or --s3 URL/BUCKET is required")?;
    let (endpoint, bucket) = url.rsplit_once('/').ok_or("--s3 takes http://HOST:PORT/BUCKET")?;
    let spec = StorageSpec {
        storage_type: StorageType::S3,
        s3: Some(S3Spec {
            bucket: bucket.into(),
            endpoint: endpoint.into(),
            region: "us-east-1".into(),
            allow_http: true,
            force_path_style: true,
        }),
        ..StorageSpec::default()
    };
    let credentials = Credentials {
        access_key_id: std::env::var("AWS_ACCESS_KEY_ID").ok(),
        secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
        ..Credentials::default()
    };
    Ok((spec, credentials))
}
