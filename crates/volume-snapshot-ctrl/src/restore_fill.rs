//! Source Copy: an empty claim filled from a copy in storage. A Pod mounts the claim, and the
//! copy streams, verified, through the API server into `tar -x` in it.
//!
//! The data path ends tar's input only after every check passed; when a check fails midway
//! the Pod is deleted at once, so tar never takes a cut-off archive for a complete one. Files an
//! earlier interrupted attempt left are removed first, so the claim ends up holding exactly the
//! copy.
//!
//! A cancelled restore (its object deleted, the controller stopping) stops the fill where it
//! is: the wait for the Pod, or the stream, whose download is dropped and whose tar is killed
//! the way a failed check kills it, so the half-filled claim never looks complete.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::{Resource, ResourceExt};
use stowage_api::VolumeRestore;
use stowage_core::{Identities, RestoreRequest};
use stowage_operator::cancel::RunGuard;
use stowage_operator::podexec::{ExecPod, ExecPodParams};
use stowage_operator::{Context, Error, ResolvedStorage, Result};
use tokio::time::Instant;

use crate::restore_cancel::{stopped, until_cancelled};
use crate::restore_checks::RESTORE_LABEL;

/// How long the fill Pod may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one copy may take to stream in.
const FILL_DEADLINE: Duration = Duration::from_secs(6 * 3600);
/// Where the Pod mounts the claim.
const MOUNT: &str = "/restore";
const CONTAINER: &str = "fill";

/// What to fill a claim with.
pub struct Fill<'a> {
    pub storage: &'a ResolvedStorage,
    pub identities: Arc<Identities>,
    pub path: &'a str,
    pub image: &'a str,
    pub pvc: &'a str,
    /// Tells the Pods of one restore apart (the volume's position).
    pub index: usize,
}

/// Fills the claim from the copy; the Pod is deleted whatever happens. Once `cancel` fires,
/// the fill stops with [`stopped`].
pub async fn fill(restore: &VolumeRestore, fill: Fill<'_>, ctx: &Context, cancel: &RunGuard) -> Result<()> {
    let params = pod_params(restore, &fill)?;
    let mut request = RestoreRequest::new(fill.storage.store.clone(), fill.path.to_string());
    request.identities = fill.identities.clone();
    // Empties the volume first, then reads the archive from stdin.
    let command = [
        "sh".to_string(),
        "-c".to_string(),
        format!("cd {MOUNT} && find . -mindepth 1 -delete && exec tar -x -f -"),
    ];
    ExecPod::run(&ctx.client, &params, |pod| async move {
        let started = async {
            pod.wait_running(CONTAINER, START_TIMEOUT).await?;
            pod.exec_stdin(CONTAINER, command, Instant::now() + FILL_DEADLINE).await
        };
        let mut stdin = until_cancelled(cancel, started).await?;
        // The sink is tar's stdin, so there is no source to fail: core's restore is dropped
        // instead, which ends its download, and tar is killed before it sees an end of input.
        let restored = tokio::select! {
            restored = stowage_core::restore(request, &mut stdin) => Some(restored),
            () = cancel.cancelled() => None,
        };
        match restored {
            None => {
                if let Err(error) = stdin.kill().await {
                    tracing::warn!(%error, "killing tar in the fill Pod failed");
                }
                Err(stopped())
            }
            Some(Ok(_)) => until_cancelled(cancel, stdin.finish())
                .await?
                .check("tar -x in the fill Pod"),
            // tar broke the pipe: its exit code and stderr say why.
            Some(Err(data_error)) if data_error.reason() == "SinkFailed" => {
                let outcome = stdin.finish().await?;
                outcome.check("tar -x in the fill Pod")?;
                Err(data_error.into())
            }
            Some(Err(data_error)) => {
                if let Err(error) = stdin.kill().await {
                    tracing::warn!(%error, "killing tar in the fill Pod failed");
                }
                Err(data_error.into())
            }
        }
    })
    .await
}

fn pod_params(restore: &VolumeRestore, fill: &Fill<'_>) -> Result<ExecPodParams> {
    let name = restore.name_any();
    let pod_name = crate::restore_checks::child_name(&name, &format!("fill-{}", fill.index));
    let template: PodTemplateSpec = serde_json::from_value(serde_json::json!({
        "spec": {
            "containers": [{
                "name": CONTAINER,
                "image": fill.image,
                "command": ["sleep", "86400"],
                "volumeMounts": [{ "name": "target", "mountPath": MOUNT }],
            }],
            "volumes": [{ "name": "target", "persistentVolumeClaim": { "claimName": fill.pvc } }],
        }
    }))
    .map_err(|error| Error::permanent("FillFailed", format!("the fill Pod: {error}")))?;
    Ok(ExecPodParams {
        namespace: restore.namespace().unwrap_or_default(),
        name: pod_name,
        template,
        owner: restore.controller_owner_ref(&()),
        labels: BTreeMap::from([(RESTORE_LABEL.to_string(), crate::restore_checks::label_value(&name))]),
    })
}
