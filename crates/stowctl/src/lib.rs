//! stowctl: Stowage's command line. Every command works from storage alone (a storage
//! configuration file: a BackupStorage spec plus credentials), so backups can be listed,
//! checked and restored when the cluster is gone; with a kubeconfig, `--storage` may also name
//! a BackupStorage of the cluster.

pub mod artifact;
pub mod error;
pub mod etcd;
pub mod storage;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use error::{Error, Result};

use crate::storage::StorageArg;

/// Stowage's command line: list, inspect, verify, extract and restore backups.
#[derive(Debug, Parser)]
#[command(name = "stowctl", version)]
pub struct Cli {
    /// Kubeconfig for `--storage <BackupStorage name>` (default: KUBECONFIG, ~/.kube/config).
    #[arg(long, global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Commands,
}

/// Which storage and artifact a command reads.
#[derive(Debug, Args)]
pub struct Target {
    /// A storage configuration file (YAML: a BackupStorage spec, optionally with a `credentials`
    /// section; else credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and friends),
    /// or the name of a BackupStorage in the cluster.
    #[arg(long)]
    pub storage: String,
    /// Object key of the artifact (as `stowctl etcd list` or an object's status shows it).
    #[arg(long)]
    pub path: String,
}

/// Private keys for encrypted artifacts.
#[derive(Debug, Args)]
pub struct Keys {
    /// age identity file or unencrypted OpenSSH private key; repeat for several.
    #[arg(long = "identity", short = 'i')]
    pub identities: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// etcd backups: list them, restore one.
    #[command(subcommand)]
    Etcd(EtcdCommands),
    /// Show an artifact's manifest: sizes, hashes, compression, recipients, details.
    Inspect {
        #[command(flatten)]
        target: Target,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download an artifact and check it against its manifest; with a key, also that it
    /// decrypts and decompresses to the recorded plaintext.
    Verify {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        keys: Keys,
    },
    /// Decrypt and decompress an artifact into a directory; tar payloads are unpacked
    /// (entries that would land outside the directory are refused).
    Extract {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        keys: Keys,
        /// The directory to write into (created if missing).
        #[arg(long)]
        to: PathBuf,
    },
    /// Write an artifact's plaintext to stdout, verified.
    Cat {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        keys: Keys,
    },
}

#[derive(Debug, Subcommand)]
pub enum EtcdCommands {
    /// List the etcd snapshots in a storage, newest first.
    List {
        /// A storage configuration file, or the name of a BackupStorage in the cluster.
        #[arg(long)]
        storage: String,
        /// Also list payloads without a manifest (backups that never completed).
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot into a new etcd data directory with etcdutl (or etcdctl on 3.4).
    Restore(Box<RestoreArgs>),
}

/// Arguments of `stowctl etcd restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub keys: Keys,
    /// The new data directory; must not exist or be empty.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The member's name (passed to the restore tool).
    #[arg(long)]
    pub name: Option<String>,
    /// The cluster's members, e.g. `m1=https://10.0.0.1:2380,m2=…` (passed to the restore tool).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// This member's peer URLs (passed to the restore tool).
    #[arg(long)]
    pub initial_advertise_peer_urls: Option<String>,
    /// A new cluster token (passed to the restore tool).
    #[arg(long)]
    pub initial_cluster_token: Option<String>,
    /// Keep the decrypted snapshot at this path (it holds every Secret: protect it).
    #[arg(long)]
    pub keep_snapshot: Option<PathBuf>,
    /// The restore tool to run (default: etcdutl, else etcdctl, from PATH).
    #[arg(long)]
    pub tool: Option<PathBuf>,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let kubeconfig = cli.kubeconfig.as_deref();
    let open = |storage: &str| {
        let arg = StorageArg::parse(storage);
        async move { storage::open(&arg, kubeconfig).await }
    };
    let mut stdout = std::io::stdout();
    let print = |text: &str| {
        use std::io::Write as _;
        std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(Error::io("writing to stdout"))
    };
    match cli.command {
        Commands::Etcd(EtcdCommands::List { storage, all, json }) => {
            let opened = open(&storage).await?;
            let entries = etcd::list(&opened, all).await?;
            if json {
                let text = serde_json::to_string_pretty(&entries).map_err(stowage_core::Error::from)?;
                print(&format!("{text}\n"))
            } else if entries.is_empty() {
                print(&format!(
                    "No etcd backups under {}/ in {}\n",
                    opened.layout.scope(stowage_core::etcd_details::KIND, None),
                    opened.name
                ))
            } else {
                print(&etcd::table(&entries))
            }
        }
        Commands::Etcd(EtcdCommands::Restore(arguments)) => {
            let RestoreArgs {
                target,
                keys,
                data_dir,
                name,
                initial_cluster,
                initial_advertise_peer_urls,
                initial_cluster_token,
                keep_snapshot,
                tool,
            } = *arguments;
            let opened = open(&target.storage).await?;
            let options = etcd::RestoreOptions {
                path: target.path,
                data_dir,
                identities: keys.identities,
                name,
                initial_cluster,
                initial_advertise_peer_urls,
                initial_cluster_token,
                keep_snapshot,
                tool,
            };
            let steps = etcd::restore(&opened, &target.storage, &options).await?;
            print(&steps)
        }
        Commands::Inspect { target, json } => {
            let opened = open(&target.storage).await?;
            artifact::inspect(&opened, &target.path, json, &mut stdout).await
        }
        Commands::Verify { target, keys } => {
            let opened = open(&target.storage).await?;
            let message = artifact::verify(&opened, &target.path, artifact::identities(&keys.identities)?).await?;
            print(&format!("{message}\n"))
        }
        Commands::Extract { target, keys, to } => {
            let opened = open(&target.storage).await?;
            let written =
                artifact::extract(&opened, &target.path, artifact::identities(&keys.identities)?, &to).await?;
            let list: String = written.iter().map(|p| format!("{}\n", p.display())).collect();
            print(&list)
        }
        Commands::Cat { target, keys } => {
            let opened = open(&target.storage).await?;
            artifact::cat(&opened, &target.path, artifact::identities(&keys.identities)?).await
        }
    }
}
