//! Commands for any artifact: inspect (the manifest), verify (hashes, and with a key the whole
//! decode), extract (to files; tar payloads unpacked, never outside the target) and cat.
//! Every read goes through core's restore, which checks sizes and SHA-256 against the manifest.

use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt as _;
use object_store::ObjectStoreExt as _;
use sha2::{Digest as _, Sha256};
use stowage_core::layout::object_path;
use stowage_core::{Algorithm, Identities, Manifest, RestoreRequest, human_bytes, read_manifest, restore};

use crate::error::{Error, Result};
use crate::storage::OpenedStorage;

/// Reads private keys (age identity files or unencrypted OpenSSH keys).
pub fn identities(files: &[PathBuf]) -> Result<Identities> {
    let mut identities = Identities::none();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(Error::io(format!("reading key {}", file.display())))?;
        identities.add(&text)?;
    }
    Ok(identities)
}

/// The manifest, for people (or as JSON).
pub async fn inspect(storage: &OpenedStorage, path: &str, json: bool, out: &mut dyn std::io::Write) -> Result<()> {
    let manifest = read_manifest(storage.store.as_ref(), path).await?;
    let write =
        |out: &mut dyn std::io::Write, text: String| out.write_all(text.as_bytes()).map_err(Error::io("writing"));
    if json {
        let text = serde_json::to_string_pretty(&manifest).map_err(stowage_core::Error::from)?;
        return write(out, format!("{text}\n"));
    }
    let artifact = &manifest.artifact;
    let mut text = format!(
        "Path:        {}\nManifest:    {}\nKind:        {}\nSource:      {}\nStarted:     {}\nCompleted:   {}\nStored:      {} ({} bytes), SHA-256 {}\nPlaintext:   {} ({} bytes), SHA-256 {}\nCompression: {}\nEncrypted:   {}\n",
        artifact.path,
        artifact.manifest_path,
        manifest.kind,
        manifest.source,
        artifact.started_at.to_rfc3339(),
        artifact.completed_at.to_rfc3339(),
        human_bytes(artifact.stored_bytes),
        artifact.stored_bytes,
        artifact.stored_sha256,
        human_bytes(artifact.plaintext_bytes),
        artifact.plaintext_bytes,
        artifact.plaintext_sha256,
        artifact.compression.describe(),
        if artifact.encrypted() {
            format!("yes, with age, to {}", artifact.recipients.join(", "))
        } else {
            "no".to_string()
        },
    );
    if !manifest.details.is_empty() {
        text.push_str("Details:\n");
        for (key, value) in &manifest.details {
            let value = value.as_str().map_or_else(|| value.to_string(), str::to_string);
            text.push_str(&format!("  {key}: {value}\n"));
        }
    }
    write(out, text)
}

/// Checks an artifact. Without a key, an encrypted artifact's stored bytes are checked against
/// the manifest; with one (or when it is not encrypted) the whole artifact is decrypted and
/// decompressed and the plaintext checked too.
pub async fn verify(storage: &OpenedStorage, path: &str, identities: Identities) -> Result<String> {
    let manifest = read_manifest(storage.store.as_ref(), path).await?;
    let artifact = &manifest.artifact;
    if artifact.encrypted() && identities.is_empty() {
        let (bytes, sha256) = hash_stored(storage, path).await?;
        if (bytes, sha256.as_str()) != (artifact.stored_bytes, artifact.stored_sha256.as_str()) {
            return Err(stowage_core::Error::Integrity {
                path: path.to_string(),
                detail: format!(
                    "stored SHA-256 {sha256} ({bytes} bytes) differs from the manifest's {} ({} bytes)",
                    artifact.stored_sha256, artifact.stored_bytes
                ),
            }
            .into());
        }
        return Ok(format!(
            "OK: {path}: the stored bytes match the manifest ({}, SHA-256 {sha256}). Pass --identity to also check that it decrypts and decompresses.",
            human_bytes(bytes)
        ));
    }
    let mut request = RestoreRequest::new(storage.store.clone(), path);
    request.identities = Arc::new(identities);
    restore(request, &mut tokio::io::sink()).await?;
    Ok(format!(
        "OK: {path}: stored bytes ({}) and plaintext ({}, SHA-256 {}) match the manifest",
        human_bytes(artifact.stored_bytes),
        human_bytes(artifact.plaintext_bytes),
        artifact.plaintext_sha256
    ))
}

async fn hash_stored(storage: &OpenedStorage, path: &str) -> Result<(u64, String)> {
    let location = object_path(path).map_err(stowage_core::Error::from)?;
    let storage_error =
        |e: object_store::Error| Error::Refused(format!("reading {path} from storage {}: {e}", storage.name));
    let mut stream = storage.store.get(&location).await.map_err(storage_error)?.into_stream();
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(storage_error)?;
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// Restores the artifact at `path` into the new file `file`, verified; the file only appears
/// (renamed from a temporary one beside it) when every check passed.
pub async fn restore_to_file(
    storage: &OpenedStorage,
    path: &str,
    identities: Identities,
    file: &Path,
) -> Result<Manifest> {
    if file.exists() {
        return Err(Error::Refused(format!(
            "{} already exists: choose another file",
            file.display()
        )));
    }
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temporary = tempfile::Builder::new()
        .prefix(".stowctl-")
        .tempfile_in(dir)
        .map_err(Error::io(format!("creating a temporary file in {}", dir.display())))?;
    let mut sink = tokio::fs::File::from_std(
        temporary
            .reopen()
            .map_err(Error::io(format!("opening {}", temporary.path().display())))?,
    );
    let mut request = RestoreRequest::new(storage.store.clone(), path);
    request.identities = Arc::new(identities);
    let manifest = restore(request, &mut sink).await?;
    sink.sync_all()
        .await
        .map_err(Error::io(format!("writing {}", file.display())))?;
    temporary.persist_noclobber(file).map_err(|e| Error::Io {
        what: format!("moving the restored data to {}", file.display()),
        source: e.error,
    })?;
    Ok(manifest)
}

/// The plaintext's file name: the payload's name without its compression and age extensions.
pub fn plaintext_name(manifest: &Manifest) -> String {
    let artifact = &manifest.artifact;
    let mut name = artifact.path.rsplit('/').next().unwrap_or(&artifact.path).to_string();
    if artifact.encrypted()
        && let Some(stripped) = name.strip_suffix(".age")
    {
        name = stripped.to_string();
    }
    let ext = match artifact.compression.algorithm {
        Algorithm::Gzip => ".gz",
        Algorithm::Zstd => ".zst",
        Algorithm::None => "",
    };
    if !ext.is_empty()
        && let Some(stripped) = name.strip_suffix(ext)
    {
        name = stripped.to_string();
    }
    name
}

/// Extracts an artifact into directory `to`: a tar payload is unpacked (refusing entries that
/// would land outside `to`), anything else is written as one file. Returns what was written.
pub async fn extract(storage: &OpenedStorage, path: &str, identities: Identities, to: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(to).map_err(Error::io(format!("creating {}", to.display())))?;
    let manifest = read_manifest(storage.store.as_ref(), path).await?;
    let name = plaintext_name(&manifest);
    let is_tar = name.ends_with(".tar");
    let target = if is_tar {
        to.join(format!(".stowctl-{name}"))
    } else {
        to.join(&name)
    };
    restore_to_file(storage, path, identities, &target).await?;
    if !is_tar {
        return Ok(vec![target]);
    }
    let unpacked = unpack(&target, to);
    let _ = std::fs::remove_file(&target);
    unpacked
}

/// Unpacks the tar `file` into `to`, entry by entry, refusing absolute paths, `..`, and links
/// pointing outside.
fn unpack(file: &Path, to: &Path) -> Result<Vec<PathBuf>> {
    let reader = std::fs::File::open(file).map_err(Error::io(format!("opening {}", file.display())))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(reader));
    let mut written = Vec::new();
    let tar_error = Error::io("reading the tar");
    for entry in archive.entries().map_err(tar_error)? {
        let mut entry = entry.map_err(Error::io("reading the tar"))?;
        let entry_path = entry.path().map_err(Error::io("reading the tar"))?.into_owned();
        if !stays_inside(&entry_path) {
            return Err(Error::Refused(format!(
                "tar entry {} would be written outside {}: refused",
                entry_path.display(),
                to.display()
            )));
        }
        if let Some(link) = entry.link_name().map_err(Error::io("reading the tar"))? {
            let resolved = entry_path.parent().unwrap_or(Path::new("")).join(&link);
            if !stays_inside(&resolved) {
                return Err(Error::Refused(format!(
                    "tar entry {} links to {}, outside {}: refused",
                    entry_path.display(),
                    link.display(),
                    to.display()
                )));
            }
        }
        let unpacked = entry
            .unpack_in(to)
            .map_err(Error::io(format!("writing {}", to.join(&entry_path).display())))?;
        if !unpacked {
            return Err(Error::Refused(format!(
                "tar entry {} was refused",
                entry_path.display()
            )));
        }
        if entry.header().entry_type().is_file() {
            written.push(to.join(&entry_path));
        }
    }
    Ok(written)
}

/// True when `path` is relative and never climbs above where it starts.
fn stays_inside(path: &Path) -> bool {
    let mut depth = 0i32;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Writes the plaintext to stdout.
pub async fn cat(storage: &OpenedStorage, path: &str, identities: Identities) -> Result<()> {
    let mut request = RestoreRequest::new(storage.store.clone(), path);
    request.identities = Arc::new(identities);
    let mut stdout = tokio::io::stdout();
    restore(request, &mut stdout).await?;
    std::io::stdout().flush().map_err(Error::io("writing to stdout"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_inside_the_target_are_accepted() {
        assert!(stays_inside(Path::new("ca.crt")));
        assert!(stays_inside(Path::new("./etcd/ca.key")));
        assert!(stays_inside(Path::new("etcd/../ca.crt")));
        assert!(!stays_inside(Path::new("../evil")));
        assert!(!stays_inside(Path::new("etcd/../../evil")));
        assert!(!stays_inside(Path::new("/etc/passwd")));
    }
}
