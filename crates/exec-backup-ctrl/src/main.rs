//! exec-backup-ctrl: reconciles ExecBackups and ExecRestores.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    stowage_operator::runner::main("exec-backup-ctrl", stowage_exec_backup_ctrl::run).await
}
