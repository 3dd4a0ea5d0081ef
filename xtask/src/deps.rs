//! What the tests, benchmarks and demo need on the machine, installed from the
//! package registries when missing: Debian packages, s3s-fs, and the test
//! bed's control plane binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use stowage_core::testing::{S3S_FS_VERSION, s3s_fs_install_root};

/// Debian packages: (a file that proves it is installed, the package). What the build itself
/// needs (protoc) the `cargo xtask` launcher installs before these tasks are built.
const PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/age", "age"),
    ("/usr/bin/pigz", "pigz"),
    ("/usr/bin/zstd", "zstd"),
    ("/usr/bin/gzip", "gzip"),
    ("/usr/bin/restic", "restic"),
    ("/usr/bin/ssh-keygen", "openssh-client"),
    ("/usr/bin/time", "time"),
    ("/usr/bin/etcd", "etcd-server"),
    ("/usr/bin/etcdctl", "etcd-client"),
    ("/usr/bin/openssl", "openssl"),
    // The pipeline bench's fastest gzip, the ceiling Stowage's gzip is measured against.
    ("/usr/bin/libdeflate-gzip", "libdeflate-tools"),
    // The exec backup tests' database servers (stowage_e2e::databases). The postgresql
    // packages are versionless metapackages: their copyright file proves them installed.
    ("/usr/sbin/mariadbd", "mariadb-server"),
    ("/usr/bin/mariadb-dump", "mariadb-client"),
    ("/usr/share/doc/postgresql/copyright", "postgresql"),
    ("/usr/share/doc/postgresql-client/copyright", "postgresql-client"),
];

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Installs every missing Debian package in one apt-get call.
pub fn ensure_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(file, _)| !Path::new(file).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))
        .context("apt-get update failed: are you root, with Debian's package sources reachable?")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("apt-get install {} failed", missing.join(" ")))
}

/// Installs s3s-fs (the S3 server the tests use) into the cache when missing.
pub fn ensure_s3s_fs() -> anyhow::Result<()> {
    let root = s3s_fs_install_root();
    if root.join("bin/s3s-fs").exists() {
        return Ok(());
    }
    eprintln!(
        "installing s3s-fs {S3S_FS_VERSION} into {} (a few minutes, once)…",
        root.display()
    );
    run(Command::new(env!("CARGO"))
        .args([
            "install",
            "s3s-fs",
            "--version",
            S3S_FS_VERSION,
            "--features",
            "binary",
            "--locked",
            "--root",
        ])
        .arg(&root)
        // The workspace's target dir would be locked by the cargo running xtask.
        .env("CARGO_TARGET_DIR", root.join("build")))
    .context("cargo install s3s-fs failed")
}

/// Everything: packages, s3s-fs, and the control plane binaries.
pub fn ensure_all() -> anyhow::Result<()> {
    ensure_packages()?;
    ensure_s3s_fs()?;
    stowage_e2e::envtest::install().context("installing the test bed's control plane")?;
    Ok(())
}

pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("could not start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} exited with {status}");
    }
    Ok(())
}
