//! Copy mode: each snapshot's files off-cluster. A temporary PVC is made from the snapshot and
//! mounted read-only by a temporary Pod; `tar` of the mount runs there, and its stdout streams
//! through the API server's exec into stowage-core (compress, encrypt, upload, manifest last).
//! The Pod and the PVC are deleted afterwards, also on failure (and, should the controller die,
//! by the garbage collector: both are owned by the VolumeBackup).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use stowage_api::volume_backup::VOLUME_BACKUP_LABEL;
use stowage_api::{VolumeBackup, VolumeCopy, VolumeStatus};
use stowage_core::template::{PathTemplate, TemplateVars};
use stowage_core::{Artifact, BackupRequest, Recipients};
use stowage_operator::cancel::RunGuard;
use stowage_operator::podexec::{ExecOutcome, ExecPod, ExecPodParams, reason};
use stowage_operator::{Error, ResolvedStorage, Result};
use tokio::time::Instant;

use crate::names;

/// Kind recorded in manifests and used for the storage layout.
pub const KIND: &str = "VolumeBackup";
/// Where the temporary Pod mounts the snapshot.
const MOUNT_PATH: &str = "/snapshot";
/// Image of the temporary Pod when the spec names none.
const DEFAULT_IMAGE: &str = "busybox:1.36";
/// How long the temporary Pod may take to start (its PVC is provisioned from the snapshot first).
const POD_START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long one volume's tar may run.
const COPY_DEADLINE: Duration = Duration::from_secs(6 * 3600);

/// What every volume's copy shares, checked before the first one starts.
pub struct CopyPlan {
    pub storage: ResolvedStorage,
    pub recipients: Arc<Recipients>,
    pub spec: VolumeCopy,
    /// `<rendered path or name/timestamp>`: each volume's copy is `<base>/<pvc>.tar.<ext>`.
    base: String,
    ext: String,
}

impl CopyPlan {
    /// Checks the copy settings and resolves the storage. `started` fixes the default path's
    /// timestamp, so a resumed backup writes where it began.
    pub async fn prepare(
        ctx: &stowage_operator::Context,
        backup: &VolumeBackup,
        spec: &VolumeCopy,
        started: DateTime<Utc>,
    ) -> Result<CopyPlan> {
        let namespace = backup.namespace().unwrap_or_default();
        spec.compression.validate()?;
        let recipient_list = spec
            .encryption
            .as_ref()
            .map(|e| e.recipients.clone())
            .unwrap_or_default();
        let recipients = Arc::new(Recipients::parse(&recipient_list)?);
        let storage = stowage_operator::resolve_storage(ctx, &spec.storage.name, Some(&namespace)).await?;
        let ext = stowage_core::layout::extension(spec.compression.extension(), !recipients.is_empty())
            .map_err(|error| Error::InvalidSpec(format!("spec.copy: {error}")))?;
        let base = match spec.storage.path.as_deref().filter(|p| !p.trim().is_empty()) {
            Some(source) => {
                let vars = TemplateVars {
                    now: started,
                    name: backup.name_any(),
                    namespace: namespace.clone(),
                    kind: KIND.to_string(),
                    schedule_name: backup.labels().get("stowage.io/schedule").cloned().unwrap_or_default(),
                };
                let invalid =
                    |error: &dyn std::fmt::Display| Error::InvalidSpec(format!("spec.copy.storage.path: {error}"));
                let template = PathTemplate::parse(source).map_err(|error| invalid(&error))?;
                template.render(&vars).map_err(|error| invalid(&error))?
            }
            None => format!("{}/{}", backup.name_any(), started.format("%Y%m%dT%H%M%SZ")),
        };
        let plan = CopyPlan {
            storage,
            recipients,
            spec: spec.clone(),
            base: base.trim_end_matches('/').to_string(),
            ext,
        };
        plan.key(&namespace, "probe")?;
        Ok(plan)
    }

    /// The object key of `pvc`'s copy.
    fn key(&self, namespace: &str, pvc: &str) -> Result<String> {
        self.storage
            .layout
            .templated_key(KIND, Some(namespace), &format!("{}/{pvc}.tar", self.base), &self.ext)
            .map_err(|error| Error::InvalidSpec(format!("spec.copy.storage.path: {error}")))
    }
}

/// Copies one volume's snapshot into storage and returns the committed artifact. The temporary
/// PVC is deleted whatever happened; the Pod is deleted by [`ExecPod::run`]. Once `cancel`
/// fires, each step stops the way it would on a failure (the upload is aborted).
pub async fn copy_volume(
    client: &Client,
    backup: &VolumeBackup,
    plan: &CopyPlan,
    index: usize,
    volume: &VolumeStatus,
    cancel: &RunGuard,
) -> Result<Artifact> {
    let namespace = backup.namespace().unwrap_or_default();
    let temp_name = names::child(&backup.name_any(), &format!("copy-{index}"), 63);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    create_temp_claim(&claims, backup, &temp_name, volume).await?;
    let copied = stream(client, backup, plan, &temp_name, volume, cancel).await;
    let params = DeleteParams::default();
    match claims.delete(&temp_name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => {
            tracing::warn!(%error, claim = %temp_name, "deleting the temporary PVC failed; its owner reference lets the garbage collector finish")
        }
    }
    copied
}

/// The temporary claim holding the snapshot's data (an existing one from an interrupted
/// attempt is reused).
async fn create_temp_claim(
    claims: &Api<PersistentVolumeClaim>,
    backup: &VolumeBackup,
    name: &str,
    volume: &VolumeStatus,
) -> Result<()> {
    let snapshot = volume.volume_snapshot.clone().unwrap_or_default();
    let size = volume
        .restore_size
        .clone()
        .or_else(|| volume.capacity.clone())
        .map(|q| q.0)
        .unwrap_or_else(|| "1Gi".into());
    let mut claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { VOLUME_BACKUP_LABEL: names::label_value(&backup.name_any()) } },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": size } },
            "dataSource": { "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snapshot },
        },
    }))
    .map_err(|error| Error::permanent("CopyFailed", format!("building the temporary PVC: {error}")))?;
    if let Some(spec) = claim.spec.as_mut() {
        spec.storage_class_name = volume.storage_class_name.clone();
    }
    claim.metadata.owner_references = backup.controller_owner_ref(&()).map(|owner| vec![owner]);
    match claims.create(&PostParams::default(), &claim).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Runs `tar` of the read-only mount in a temporary Pod and streams it into storage.
async fn stream(
    client: &Client,
    backup: &VolumeBackup,
    plan: &CopyPlan,
    claim: &str,
    volume: &VolumeStatus,
    cancel: &RunGuard,
) -> Result<Artifact> {
    let namespace = backup.namespace().unwrap_or_default();
    let image = plan.spec.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.to_string());
    let template: PodTemplateSpec = serde_json::from_value(json!({
        "spec": {
            "containers": [{
                "name": "reader",
                "image": image,
                "command": ["sleep", "86400"],
                "volumeMounts": [{ "name": "snapshot", "mountPath": MOUNT_PATH, "readOnly": true }],
            }],
            "volumes": [{ "name": "snapshot", "persistentVolumeClaim": { "claimName": claim, "readOnly": true } }],
        },
    }))
    .map_err(|error| Error::permanent("CopyFailed", format!("building the copy Pod: {error}")))?;
    let params = ExecPodParams {
        namespace: namespace.clone(),
        name: claim.to_string(),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta::default()),
            ..template
        },
        owner: backup.controller_owner_ref(&()),
        labels: BTreeMap::from([(VOLUME_BACKUP_LABEL.to_string(), names::label_value(&backup.name_any()))]),
    };
    let mut request = BackupRequest::new(
        plan.storage.store.clone(),
        plan.key(&namespace, &volume.pvc)?,
        KIND,
        format!(
            "VolumeBackup {namespace}/{}: PVC {} (VolumeSnapshot {})",
            backup.name_any(),
            volume.pvc,
            volume.volume_snapshot.as_deref().unwrap_or("")
        ),
    );
    request.compression = plan.spec.compression.clone();
    request.recipients = plan.recipients.clone();
    let details = BTreeMap::from([
        ("pvc".to_string(), json!(volume.pvc)),
        ("volumeSnapshot".to_string(), json!(volume.volume_snapshot)),
    ]);
    ExecPod::run(client, &params, |pod| async move {
        let command = ["tar", "-C", MOUNT_PATH, "-cf", "-", "."];
        let deadline = Instant::now() + COPY_DEADLINE;
        let (staged, finished) = pod
            .stream_stdout("reader", command, POD_START_TIMEOUT, deadline, request, cancel)
            .await?;
        settle(staged, finished, details).await
    })
    .await
}

/// A copy is committed only when both the data path and `tar` succeeded; otherwise the payload
/// is discarded (no manifest: never a complete-looking partial copy).
async fn settle(
    staged: stowage_core::Result<stowage_core::Staged>,
    finished: Result<ExecOutcome>,
    details: BTreeMap<String, serde_json::Value>,
) -> Result<Artifact> {
    async fn discard(staged: stowage_core::Staged) {
        if let Err(error) = staged.discard().await {
            tracing::warn!(%error, "discarding an unfinished copy failed");
        }
    }
    match (staged, finished) {
        (Ok(staged), Err(error)) => {
            discard(staged).await;
            Err(error)
        }
        (Err(_), Err(error)) if error.reason() == reason::DEADLINE_EXCEEDED => Err(error),
        (Err(error), _) => Err(error.into()),
        (Ok(staged), Ok(outcome)) => match outcome.check("tar of the snapshot") {
            Err(error) => {
                discard(staged).await;
                Err(error)
            }
            Ok(()) => Ok(staged.commit(details).await?),
        },
    }
}
