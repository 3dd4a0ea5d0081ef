//! `scheduler-ctrl`: creates backup runs from BackupSchedules.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    use stowage_operator::runner::{Transport, main_over};
    // The scheduler never execs into a pod, and a thousand schedules ticking together put a
    // thousand requests in flight: one HTTP/2 connection carries them all.
    main_over(
        stowage_scheduler_ctrl::CONTROLLER,
        Transport::Http2,
        stowage_scheduler_ctrl::start,
    )
    .await
}
