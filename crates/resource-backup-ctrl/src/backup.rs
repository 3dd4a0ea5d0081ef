//! Backup: discover what the cluster serves, list what the ResourceSet selects page by page,
//! and stream each object into the tar that flows into stowage-core. Nothing touches disk,
//! and memory holds two pages of objects (one written, the next being fetched) plus the
//! deflated index: a few dozen bytes per object.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, TypeMeta};
use kube::discovery::{Discovery, Scope, verbs};
use serde_json::Value;
use stowage_api::resource_set::ResourceSetSpec;
use stowage_core::{Artifact, BackupRequest};

use crate::archive::{self, ArchiveWriter, Summary};
use crate::encryption::EncryptionConfig;
use crate::error::{Error, Result};
use crate::selector::{ObjectInfo, ResourceType, Selection};

/// Objects per list call (kubectl's default chunk size).
const PAGE_SIZE: u32 = 500;
/// Buffer between the tar writer and the data path.
const PIPE_BYTES: usize = 1 << 20;

/// A resource type the cluster serves, with what kube needs to call it.
#[derive(Clone, Debug)]
pub struct Served {
    pub resource: ResourceType,
    pub api: ApiResource,
    /// True when the type has a `status` subresource.
    pub has_status: bool,
}

/// Every listable resource type at its group's preferred version.
pub async fn discover(client: &kube::Client) -> Result<Vec<Served>> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(|e| Error::kube("discovering the API resources", e))?;
    let mut served = Vec::new();
    for group in discovery.groups() {
        for (api, capabilities) in group.recommended_resources() {
            if !capabilities.supports_operation(verbs::LIST) || api.plural.contains('/') {
                continue;
            }
            served.push(Served {
                resource: ResourceType {
                    group: api.group.clone(),
                    version: api.version.clone(),
                    kind: api.kind.clone(),
                    plural: api.plural.clone(),
                    namespaced: capabilities.scope == Scope::Namespaced,
                },
                has_status: capabilities.subresources.iter().any(|(sub, _)| sub.plural == "status"),
                api,
            });
        }
    }
    Ok(served)
}

/// The cluster's id: the UID of its kube-system namespace.
pub async fn cluster_id(client: &kube::Client) -> Result<String> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = namespaces
        .get("kube-system")
        .await
        .map_err(|e| Error::kube("reading namespace kube-system (the cluster id)", e))?;
    Ok(namespace.metadata.uid.unwrap_or_default())
}

/// Live counts of a running backup, for status and metrics.
#[derive(Clone, Default)]
pub struct Progress {
    /// Objects written to the archive so far.
    pub objects: Arc<AtomicU64>,
    /// Counts each object written, when set.
    pub counter: Option<prometheus::IntCounter>,
}

/// What a backup stored.
#[derive(Clone, Debug)]
pub struct BackupOutcome {
    pub artifact: Artifact,
    pub summary: Summary,
    pub cluster_id: String,
}

/// Streams the objects `resource_set` selects into storage as `request` says, and commits
/// the artifact (its manifest carries the counts) only when every object was written.
pub async fn run(
    client: &kube::Client,
    resource_set: &ResourceSetSpec,
    encryption: Option<EncryptionConfig>,
    request: BackupRequest,
    progress: &Progress,
) -> Result<BackupOutcome> {
    let selection = Selection::new(resource_set)?;
    let mut served = discover(client).await?;
    // Types in restore order, so that a restore applies the archive in one pass.
    served.sort_by_key(|s| crate::plan::write_rank(&s.resource));
    let cluster_id = cluster_id(client).await?;

    let (pipe_in, pipe_out) = tokio::io::duplex(PIPE_BYTES);
    let write = async {
        let mut writer = ArchiveWriter::new(pipe_in, encryption);
        for served in served.iter().filter(|s| selection.wants(&s.resource)) {
            write_resource(client, &selection, served, &mut writer, progress).await?;
        }
        writer.finish(resource_set, &cluster_id).await
    };
    let (written, staged) = tokio::join!(write, stowage_core::stream_payload(request, pipe_out));
    let staged = staged?;
    let summary = match written {
        Ok(summary) => summary,
        Err(error) => {
            // The payload ends where the failure happened: never let it look complete.
            if let Err(discard) = staged.discard().await {
                tracing::warn!(%discard, "discarding the incomplete archive failed");
            }
            return Err(error);
        }
    };
    let details = BTreeMap::from([
        ("objectCount".to_string(), Value::from(summary.objects)),
        ("encryptedObjects".to_string(), Value::from(summary.encrypted)),
        (
            "kinds".to_string(),
            serde_json::to_value(&summary.kinds).unwrap_or_default(),
        ),
        ("clusterId".to_string(), Value::from(cluster_id.clone())),
        (
            "archiveFormatVersion".to_string(),
            Value::from(crate::index::FORMAT_VERSION),
        ),
    ]);
    let artifact = staged.commit(details).await?;
    Ok(BackupOutcome {
        artifact,
        summary,
        cluster_id,
    })
}

/// Lists one resource type page by page and writes what the selection takes.
async fn write_resource<W: tokio::io::AsyncWrite + Unpin>(
    client: &kube::Client,
    selection: &Selection,
    served: &Served,
    writer: &mut ArchiveWriter<W>,
    progress: &Progress,
) -> Result<()> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &served.api);
    let mut params = ListParams::default().limit(PAGE_SIZE);
    // The API server leaves out what the labels exclude (a selective backup of a big cluster
    // reads only its part); the selection below still checks every object.
    if let Some(labels) = selection.server_label_selector(&served.resource) {
        params = params.labels(&labels);
    }
    // The next page is fetched while this one is written: the API server and the data path
    // work at the same time.
    let fetch = |params: ListParams| {
        let api = api.clone();
        tokio::spawn(async move { api.list(&params).await })
    };
    let mut next = Some(AbortOnDrop(fetch(params.clone())));
    while let Some(mut pending) = next.take() {
        let page = (&mut pending.0)
            .await
            .map_err(|e| Error::Io {
                what: format!("listing {}", served.resource.qualified_kind()),
                source: std::io::Error::other(e),
            })?
            .map_err(|e| Error::kube(format!("listing {}", served.resource.qualified_kind()), e))?;
        if let Some(token) = page.metadata.continue_.as_deref().filter(|token| !token.is_empty()) {
            next = Some(AbortOnDrop(fetch(params.clone().continue_token(token))));
        }
        for mut object in page.items {
            let info = ObjectInfo {
                name: object.metadata.name.clone().unwrap_or_default(),
                namespace: object.metadata.namespace.clone(),
                labels: object.metadata.labels.clone().unwrap_or_default(),
            };
            if !selection.matches(&served.resource, &info) || is_generated(&served.resource, &object) {
                continue;
            }
            // List items carry no apiVersion and kind of their own (and these must appear once).
            if let Some(fields) = object.data.as_object_mut() {
                fields.remove("apiVersion");
                fields.remove("kind");
            }
            object.types = Some(TypeMeta {
                api_version: served.resource.api_version(),
                kind: served.resource.kind.clone(),
            });
            archive::strip_server_metadata(&mut object.metadata);
            writer.add(&served.resource, &object).await?;
            progress.objects.fetch_add(1, Ordering::Relaxed);
            if let Some(counter) = &progress.counter {
                counter.inc();
            }
        }
    }
    Ok(())
}

/// A page being fetched; the fetch stops when the backup does.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Objects the cluster recreates by itself and a restore must not bring back: ServiceAccount
/// token Secrets (bound to the old ServiceAccount's UID, the token controller deletes them).
pub(crate) fn is_generated(resource: &ResourceType, object: &DynamicObject) -> bool {
    resource.group.is_empty()
        && resource.plural == "secrets"
        && object.data["type"].as_str() == Some("kubernetes.io/service-account-token")
}
