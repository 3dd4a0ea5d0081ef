//! One etcd backup, without Kubernetes: choose a member, stream its snapshot through core
//! (verified against etcd's own checksum), stream the certificate directory as a tar, then
//! commit both manifests, the snapshot's last, so a catalog entry is never half there.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use object_store::ObjectStore;
use stowage_core::{Artifact, BackupRequest, Compression, Progress, Recipients, Staged, stream_payload};
use stowage_operator::cancel::CancellableRead;
use tokio_util::sync::CancellationToken;

use crate::certs;
use crate::error::{Error, Result};
use crate::snapshot::{EtcdTarget, MemberStatus, Snapshot, SnapshotReader};

// The manifests' etcd metadata is core's, so that stowctl reads it without this crate.
pub use stowage_core::etcd_details::{CERTIFICATES, EtcdDetails, KIND, SNAPSHOT};

/// What to back up where.
#[derive(Clone)]
pub struct BackupPlan {
    /// The store to write to.
    pub store: Arc<dyn ObjectStore>,
    /// Object key of the snapshot (see [`snapshot_extension`]).
    pub snapshot_key: String,
    /// The certificate directory and the object key of its tar, when asked for.
    pub certs: Option<(PathBuf, String)>,
    pub compression: Compression,
    pub recipients: Arc<Recipients>,
    /// What is backed up, in words, for the manifests (e.g. "EtcdBackup nightly").
    pub source: String,
    /// Live byte counts of the snapshot, for status and metrics.
    pub progress: Progress,
}

impl std::fmt::Debug for BackupPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupPlan")
            .field("snapshot_key", &self.snapshot_key)
            .field("certs", &self.certs)
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

/// What a finished backup produced.
#[derive(Clone, Debug)]
pub struct BackupOutcome {
    pub snapshot: Artifact,
    pub certs: Option<Artifact>,
    pub member: MemberStatus,
    /// The revision of the snapshot.
    pub revision: i64,
}

/// The extension of a snapshot key: `db` then the compression's and age's, e.g. `db.gz.age`.
pub fn snapshot_extension(compression: &Compression, encrypted: bool) -> String {
    ["db", compression.extension(), if encrypted { "age" } else { "" }]
        .iter()
        .filter(|part| !part.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(".")
}

/// The key of the certificates' tar next to `snapshot_key`: `…/20260101T000000Z.db.gz.age`
/// gives `…/20260101T000000Z-certs.tar.gz.age`.
pub fn certs_key(snapshot_key: &str, compression: &Compression, encrypted: bool) -> String {
    let ext = snapshot_extension(compression, encrypted);
    let rest = ext.strip_prefix("db").unwrap_or(&ext);
    let base = snapshot_key
        .strip_suffix(&format!(".{ext}"))
        .or_else(|| snapshot_key.strip_suffix(rest).filter(|_| !rest.is_empty()))
        .unwrap_or(snapshot_key);
    format!("{base}-certs.tar{rest}")
}

/// Checks the certificate directory, chooses a member, and stores its snapshot (and the
/// certificates). Once `cancel` fires (the EtcdBackup was deleted, the controller stops) the
/// backup stops where it is: the streams fail, core aborts their uploads, nothing is committed.
pub async fn run(
    plan: BackupPlan,
    target: &EtcdTarget,
    name: &str,
    cancel: &CancellationToken,
) -> Result<BackupOutcome> {
    if let Some((dir, _)) = &plan.certs {
        certs::check_dir(dir)?;
    }
    let snapshot = tokio::select! {
        snapshot = async {
            let member = target.choose_member().await?;
            tracing::info!(endpoint = %member.endpoint, revision = member.revision, "snapshotting etcd member");
            target.snapshot(member).await
        } => snapshot?,
        () = cancel.cancelled() => return Err(Error::Cancelled),
    };
    store(plan, snapshot, name, cancel).await
}

/// Stores an open snapshot (and the certificates): both payloads first, then the manifests.
/// A snapshot whose checksum does not match is never committed, nor one cancelled before its
/// manifest.
pub async fn store(
    plan: BackupPlan,
    snapshot: Snapshot,
    name: &str,
    cancel: &CancellationToken,
) -> Result<BackupOutcome> {
    let reader = SnapshotReader::new(snapshot.stream);
    let verified = reader.verified();
    let snapshot_request = request(&plan, &plan.snapshot_key, plan.progress.clone());
    let staged = stream_payload(snapshot_request, CancellableRead::new(reader, cancel.clone())).await;
    let staged = match staged {
        Err(_) if cancel.is_cancelled() => return Err(Error::Cancelled),
        staged => staged?,
    };
    if !verified.load(Ordering::Acquire) {
        discard(staged).await;
        return Err(Error::Integrity(
            "the snapshot stream was not read to its end; no manifest was written".into(),
        ));
    }

    let member = snapshot.member;
    let certs = match &plan.certs {
        Some((dir, key)) => {
            let tar = CancellableRead::new(certs::tar_stream(dir.clone()), cancel.clone());
            match stream_payload(request(&plan, key, Progress::default()), tar).await {
                Ok(certs) => Some(certs),
                Err(error) => {
                    discard(staged).await;
                    return Err(if cancel.is_cancelled() {
                        Error::Cancelled
                    } else {
                        error.into()
                    });
                }
            }
        }
        None => None,
    };
    // Deleted while the payloads were staged: nothing is committed (a manifest would make a
    // catalog entry of a backup its user no longer wants).
    if cancel.is_cancelled() {
        discard(staged).await;
        if let Some(certs) = certs {
            discard(certs).await;
        }
        return Err(Error::Cancelled);
    }
    let details = EtcdDetails {
        content: SNAPSHOT.into(),
        backup: name.to_string(),
        revision: Some(snapshot.revision),
        cluster_id: member.cluster_id_hex(),
        member_id: member.member_id_hex(),
        etcd_version: member.version.clone(),
        endpoint: member.endpoint.clone(),
        certs_path: plan.certs.as_ref().map(|(_, key)| key.clone()),
        snapshot_path: None,
    };
    let certs = match certs {
        Some(staged_certs) => {
            let certs_details = EtcdDetails {
                content: CERTIFICATES.into(),
                certs_path: None,
                snapshot_path: Some(plan.snapshot_key.clone()),
                ..details.clone()
            };
            match staged_certs.commit(certs_details.to_map()).await {
                Ok(artifact) => Some(artifact),
                Err(error) => {
                    discard(staged).await;
                    return Err(error.into());
                }
            }
        }
        None => None,
    };
    let snapshot_artifact = staged.commit(details.to_map()).await?;
    Ok(BackupOutcome {
        snapshot: snapshot_artifact,
        certs,
        member,
        revision: snapshot.revision,
    })
}

fn request(plan: &BackupPlan, key: &str, progress: Progress) -> BackupRequest {
    BackupRequest {
        compression: plan.compression.clone(),
        recipients: plan.recipients.clone(),
        progress,
        ..BackupRequest::new(plan.store.clone(), key, KIND, plan.source.clone())
    }
}

async fn discard(staged: Staged) {
    let path = staged.artifact().path.clone();
    if let Err(error) = staged.discard().await {
        tracing::warn!(%path, %error, "deleting an uncommitted payload failed; it has no manifest, so nothing reads it");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn keys_and_extensions() {
        let gzip = Compression::default();
        assert_eq!(snapshot_extension(&gzip, true), "db.gz.age");
        assert_eq!(snapshot_extension(&Compression::none(), false), "db");
        assert_eq!(
            certs_key("p/etcdbackup/_cluster/n/20260101T000000Z.db.gz.age", &gzip, true),
            "p/etcdbackup/_cluster/n/20260101T000000Z-certs.tar.gz.age"
        );
        assert_eq!(certs_key("a/b.db", &Compression::none(), false), "a/b-certs.tar");
        // A template that named its file without `.db` keeps its name.
        assert_eq!(certs_key("a/snap.gz", &gzip, false), "a/snap-certs.tar.gz");
    }

    #[test]
    fn details_round_trip_through_a_manifest_map() {
        let details = EtcdDetails {
            content: SNAPSHOT.into(),
            backup: "nightly".into(),
            revision: Some(1042),
            cluster_id: "cdf818194e3a8c32".into(),
            ..EtcdDetails::default()
        };
        let map = details.to_map();
        assert_eq!(map["revision"], 1042);
        assert_eq!(EtcdDetails::from_map(&map), Some(details));
        assert_eq!(EtcdDetails::from_map(&BTreeMap::new()), None);
    }
}
