//! volume-snapshot-ctrl: reconciles VolumeBackups and VolumeRestores.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    stowage_operator::runner::main("volume-snapshot-ctrl", stowage_volume_snapshot_ctrl::run).await
}
