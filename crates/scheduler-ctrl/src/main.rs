//! `scheduler-ctrl`: creates backup runs from BackupSchedules.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    stowage_operator::runner::main(stowage_scheduler_ctrl::CONTROLLER, stowage_scheduler_ctrl::start).await
}
