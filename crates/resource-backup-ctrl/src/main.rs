//! resource-backup-ctrl: reconciles ResourceBackups and ResourceRestores.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    stowage_operator::runner::main("resource-backup-ctrl", stowage_resource_backup_ctrl::run).await
}
