//! The simulator's "storage system": plain host directories. A volume is
//! `volumes/<pv>`, a snapshot is `snapshots/<content>`, and taking a snapshot
//! or restoring one is a copy that keeps contents, modes, owners, times and
//! symlinks.

use std::path::Path;

use anyhow::{Context as _, bail};

/// Creates an empty volume directory, world-writable like the upstream hostpath
/// provisioner's so that pods running as any user can write to it.
pub async fn create_empty(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("create volume directory {}", dir.display()))?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .await
        .with_context(|| format!("make {} writable", dir.display()))
}

/// Copies the directory `from` to `to`, which must not exist yet. The copy is
/// made beside `to` and renamed into place, so `to` either holds a complete copy
/// or does not exist, even if the simulator dies half way.
pub async fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    let partial = to.with_extension("partial");
    remove_tree(&partial).await?;
    if let Some(parent) = to.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .with_context(|| format!("create {}", parent.display()))?;
    }
    // `cp -a` keeps everything a volume snapshot must keep (modes, owners,
    // times, symlinks, hard links, sparse files) and is always present on the
    // Debian hosts the test bed runs on.
    let output = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("--no-target-directory")
        .arg(from)
        .arg(&partial)
        .output()
        .await
        .context("run cp (coreutils) to copy a volume")?;
    if !output.status.success() {
        bail!(
            "copying {} to {} failed ({}): {}",
            from.display(),
            partial.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    tokio::fs::rename(&partial, to)
        .await
        .with_context(|| format!("rename {} to {}", partial.display(), to.display()))
}

/// Removes a directory tree; a tree that is already gone is fine.
pub async fn remove_tree(dir: &Path) -> anyhow::Result<()> {
    match tokio::fs::remove_dir_all(dir).await {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// The number of bytes a Kubernetes quantity (`1Gi`, `500M`, `1e9`, `1.5Ki`)
/// stands for, rounded up.
pub fn quantity_bytes(quantity: &str) -> anyhow::Result<i64> {
    let quantity = quantity.trim();
    let number_end = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(number_end);
    let number: f64 = number
        .parse()
        .with_context(|| format!("'{quantity}' is not a Kubernetes quantity"))?;
    let multiplier = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..]
                .parse()
                .with_context(|| format!("'{quantity}' has a bad exponent"))?;
            10f64.powi(power)
        }
        _ => bail!("'{quantity}' has an unknown suffix '{suffix}'"),
    };
    // Quantities used for volumes stay far below 2^53 bytes, where f64 is exact.
    Ok((number * multiplier).ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_become_bytes() {
        assert_eq!(quantity_bytes("1Gi").expect("1Gi"), 1 << 30);
        assert_eq!(quantity_bytes("10Mi").expect("10Mi"), 10 << 20);
        assert_eq!(quantity_bytes("2G").expect("2G"), 2_000_000_000);
        assert_eq!(quantity_bytes("1e3").expect("1e3"), 1000);
        assert_eq!(quantity_bytes("1.5Ki").expect("1.5Ki"), 1536);
        assert_eq!(quantity_bytes("123").expect("123"), 123);
        assert!(quantity_bytes("12Q").is_err());
        assert!(quantity_bytes("Gi").is_err());
    }

    #[tokio::test]
    async fn copy_keeps_contents_modes_and_symlinks() {
        use std::os::unix::fs::PermissionsExt as _;
        let scratch = tempfile::tempdir().expect("tempdir");
        let from = scratch.path().join("from");
        std::fs::create_dir_all(from.join("sub")).expect("mkdir");
        std::fs::write(from.join("sub/data"), b"records").expect("write");
        std::fs::set_permissions(from.join("sub/data"), std::fs::Permissions::from_mode(0o640)).expect("chmod");
        std::os::unix::fs::symlink("sub/data", from.join("link")).expect("symlink");

        let to = scratch.path().join("snapshots/copy");
        copy_tree(&from, &to).await.expect("copy");

        assert_eq!(std::fs::read(to.join("sub/data")).expect("read"), b"records");
        let mode = std::fs::metadata(to.join("sub/data"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(
            std::fs::read_link(to.join("link")).expect("readlink"),
            Path::new("sub/data")
        );
        assert!(!to.with_extension("partial").exists());
        assert!(
            copy_tree(&scratch.path().join("missing"), &scratch.path().join("x"))
                .await
                .is_err()
        );
    }
}
