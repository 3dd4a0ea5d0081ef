//! `etcd-backup-ctrl`: streams etcd snapshots (and the control plane's certificates) to storage.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    stowage_operator::runner::main(stowage_etcd_backup_ctrl::CONTROLLER, stowage_etcd_backup_ctrl::start).await
}
