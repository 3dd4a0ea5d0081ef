//! Backup: discover what the cluster serves, list what the ResourceSet selects page by page,
//! and stream each object into the tar that flows into stowage-core. Nothing touches disk,
//! and memory holds two pages' response bodies (one written, the next being fetched), one
//! parsed object, and one segment of the deflated index: the index's full segments wait in
//! the backup's own storage (segments.rs), so memory does not grow with the object count.
//! Pages are sized by bytes, not only by count, so a type of large objects (Helm release
//! Secrets, dashboards in ConfigMaps) costs no more memory than one of small ones.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::BodyExt as _;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use kube::Resource as _;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, TypeMeta};
use kube::discovery::{Discovery, Scope, verbs};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use stowage_api::resource_set::ResourceSetSpec;
use stowage_core::{Artifact, BackupRequest};

use crate::archive::{self, ArchiveWriter, Summary};
use crate::encryption::EncryptionConfig;
use crate::error::{Error, Result};
use crate::segments::{Cleanup, Segments};
use crate::selector::{ObjectInfo, ResourceType, Selection};

/// Most objects per list call (kubectl's default chunk size).
const PAGE_SIZE: u32 = 500;
/// Objects in a type's first list call, before their size is known: small, because the
/// objects may be up to 1.5 MiB each (etcd's limit), and most types have fewer anyway.
const FIRST_PAGE_SIZE: u32 = 16;
/// The body size the following pages aim at, from the average object of the page before.
const PAGE_BYTES: usize = 1 << 20;
/// A page's body is read no further than this while it holds more than one object: the
/// type's objects turned large (small Secrets, then Helm's releases), and the page is asked
/// for again, one object at a time.
const MAX_PAGE_BYTES: usize = 8 * PAGE_BYTES;
/// Buffer between the tar writer and the data path. Small: the data path reads it in blocks
/// as it fills, and the pipe's buffer, read from the front while written at the back, grows
/// to two or three times this size (1 MiB held 1.7 to 3.4 MB; 64 KiB saves 2-3 MiB of peak
/// RSS at no cost in objects/s).
const PIPE_BYTES: usize = 64 << 10;

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
    let segments = Segments::new(request.store.clone(), &request.path);
    run_with_segments(client, resource_set, encryption, request, progress, segments).await
}

/// [`run`], with the index's segments stored in `segments` (a test makes them small). They
/// are deleted when the run ends, whatever the outcome, also when it is dropped midway.
pub async fn run_with_segments(
    client: &kube::Client,
    resource_set: &ResourceSetSpec,
    encryption: Option<EncryptionConfig>,
    request: BackupRequest,
    progress: &Progress,
    segments: Segments,
) -> Result<BackupOutcome> {
    let selection = Selection::new(resource_set)?;
    let mut served = discover(client).await?;
    // Types in restore order, so that a restore applies the archive in one pass.
    served.sort_by_key(|s| crate::plan::write_rank(&s.resource));
    let cluster_id = cluster_id(client).await?;

    let (pipe_in, pipe_out) = tokio::io::duplex(PIPE_BYTES);
    let write = async {
        let mut writer = ArchiveWriter::new(pipe_in, encryption).spill_index_to(segments.clone());
        for served in served.iter().filter(|s| selection.wants(&s.resource)) {
            write_resource(client, &selection, served, &mut writer, progress).await?;
        }
        writer.finish(resource_set, &cluster_id).await
    };
    let cleanup = Cleanup::new(&segments);
    let (written, staged) = tokio::join!(write, stowage_core::stream_payload(request, pipe_out));
    // The index is in the payload, or the run failed: either way its segments are done with.
    // Left behind they would be no artifact (listings skip them), only space taken.
    match segments.delete().await {
        Ok(()) if segments.count() > 0 => tracing::debug!(segments = segments.count(), "index segments deleted"),
        Ok(()) => {}
        Err(error) => {
            tracing::warn!(%error, "deleting the index segments failed: delete the payload's .scratch/ objects by hand")
        }
    }
    cleanup.disarm();
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

/// One page of a list as the API server sent it. The items stay raw JSON, slices of the
/// response body, and are parsed one at a time as they are written: a page costs its body
/// and one object, not its body and every object parsed (kube's `Api::list` holds both).
#[derive(Deserialize)]
struct Page<'a> {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(borrow, default)]
    items: Vec<&'a RawValue>,
}

/// Lists one resource type page by page and writes what the selection takes.
async fn write_resource<W: tokio::io::AsyncWrite + Unpin>(
    client: &kube::Client,
    selection: &Selection,
    served: &Served,
    writer: &mut ArchiveWriter<W>,
    progress: &Progress,
) -> Result<()> {
    let listing = || format!("listing {}", served.resource.qualified_kind());
    let list = kube::core::Request::new(DynamicObject::url_path(&served.api, None));
    let mut params = ListParams::default().limit(FIRST_PAGE_SIZE);
    // The API server leaves out what the labels exclude (a selective backup of a big cluster
    // reads only its part); the selection below still checks every object.
    if let Some(labels) = selection.server_label_selector(&served.resource) {
        params = params.labels(&labels);
    }
    // The next page is fetched while this one is written: the API server and the data path
    // work at the same time.
    let fetch = |params: &ListParams, expected: usize| -> Result<AbortOnDrop<kube::Result<Fetched>>> {
        let request = list
            .list(params)
            .map_err(|e| Error::kube(listing(), kube::Error::BuildRequest(e)))?;
        let cap = (params.limit != Some(1)).then_some(MAX_PAGE_BYTES);
        Ok(AbortOnDrop(tokio::spawn(fetch_page(
            client.clone(),
            request,
            expected,
            cap,
        ))))
    };
    // After a page outgrew its cap, page sizes start again from one object and at most double
    // from page to page, so that one overflow is the only wasted transfer.
    let mut ceiling: Option<u32> = None;
    let mut next = Some((params.clone(), fetch(&params, 0)?));
    while let Some((asked, mut pending)) = next.take() {
        let fetched = (&mut pending.0)
            .await
            .map_err(|e| Error::Io {
                what: listing(),
                source: std::io::Error::other(e),
            })?
            .map_err(|e| Error::kube(listing(), e))?;
        let Fetched::Page(body) = fetched else {
            // Far larger objects than the page before's: the same page again (its continue
            // token is still good), one object at a time, and sizes learnt from there.
            tracing::debug!(kind = %served.resource.qualified_kind(), "list page over {MAX_PAGE_BYTES} bytes: asking for one object");
            ceiling = Some(1);
            let one = asked.limit(1);
            next = Some((one.clone(), fetch(&one, PAGE_BYTES)?));
            continue;
        };
        let page: Page = serde_json::from_slice(&body).map_err(|source| Error::Json {
            what: listing(),
            source,
        })?;
        if let Some(token) = page.metadata.continue_.as_deref().filter(|token| !token.is_empty()) {
            let limit;
            (limit, ceiling) = next_page_size(body.len(), page.items.len(), ceiling);
            // Objects of a type are alike: room for the next page at this one's average size,
            // and an eighth, makes one allocation.
            let expected = body.len() / page.items.len().max(1) * limit as usize;
            let following = params.clone().limit(limit).continue_token(token);
            next = Some((following.clone(), fetch(&following, expected + expected / 8)?));
        }
        for item in page.items {
            let mut object: DynamicObject = serde_json::from_str(item.get()).map_err(|source| Error::Json {
                what: listing(),
                source,
            })?;
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

/// How many objects the next list call asks for, after a page of `items` objects took
/// `body_bytes`: about [`PAGE_BYTES`] of them, at least one, at most [`PAGE_SIZE`]. After an
/// overflow a `ceiling` (the last page's size) holds: the next page is at most twice as large,
/// so that objects which turned large do not get a page sized for the small ones again. The
/// ceiling lifts once pages reach [`PAGE_SIZE`]. Returns the size and the next ceiling.
fn next_page_size(body_bytes: usize, items: usize, ceiling: Option<u32>) -> (u32, Option<u32>) {
    let fitting = match body_bytes.checked_div(items) {
        Some(average) => u32::try_from(PAGE_BYTES / average.max(1))
            .unwrap_or(PAGE_SIZE)
            .clamp(1, PAGE_SIZE),
        // An empty page that goes on (the API server filtered it out): nothing learnt.
        None => FIRST_PAGE_SIZE,
    };
    match ceiling {
        None => (fitting, None),
        Some(last) => {
            let limit = fitting.min(last.saturating_mul(2));
            (limit, (limit < PAGE_SIZE).then_some(limit))
        }
    }
}

/// A list page's body, or word that it outgrew its cap.
enum Fetched {
    Page(Vec<u8>),
    TooLarge,
}

/// GETs one list page into a buffer with room for `expected` bytes: the body is held once,
/// where `Client::request_text` holds its frames, a joined copy and a `String` copy at once.
/// A successful answer longer than `cap` is dropped unread (its connection closes).
async fn fetch_page(
    client: kube::Client,
    request: http::Request<Vec<u8>>,
    expected: usize,
    cap: Option<usize>,
) -> kube::Result<Fetched> {
    let response = client.send(request.map(kube::client::Body::from)).await?;
    let status = response.status();
    let cap = cap.filter(|_| status.is_success()).unwrap_or(usize::MAX);
    let mut body = response.into_body();
    let mut bytes = Vec::with_capacity(expected.min(cap));
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if bytes.len() + data.len() > cap {
                return Ok(Fetched::TooLarge);
            }
            bytes.extend_from_slice(&data);
        }
    }
    if status.is_client_error() || status.is_server_error() {
        // As kube reports it: the API server's Status, or the text of whatever answered.
        let status = serde_json::from_slice::<kube::core::Status>(&bytes).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(&bytes);
            kube::core::Status::failure(text.trim(), "Failed to parse error data").with_code(status.as_u16())
        });
        return Err(kube::Error::Api(status.boxed()));
    }
    Ok(Fetched::Page(bytes))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_hold_about_a_mebibyte_whatever_the_objects_size() {
        let size = |body_bytes, items| next_page_size(body_bytes, items, None);
        // ConfigMaps of 2 KiB: kubectl's 500 a page.
        assert_eq!(size(16 * 2048, 16), (PAGE_SIZE, None));
        // Helm release Secrets of 200 KiB: five a page, one MiB.
        assert_eq!(size(16 * 200 * 1024, 16), (5, None));
        // Objects at etcd's 1.5 MiB limit: one at a time, never none.
        assert_eq!(size(16 * 1536 * 1024, 16), (1, None));
        // Mid-size objects: as many as fit in a MiB.
        assert_eq!(size(100 * 10_000, 100), (104, None));
        // A page the server left empty teaches nothing: start small again.
        assert_eq!(size(120, 0), (FIRST_PAGE_SIZE, None));
    }

    #[test]
    fn after_an_overflow_pages_at_most_double_until_they_reach_the_largest() {
        // Small Secrets overflowed; from one object a page, sizes double while the objects
        // stay small (what fits in a MiB would be 500 at once).
        let small = 2048;
        let mut ceiling = Some(1);
        let mut sizes = Vec::new();
        let mut items = 1;
        while ceiling.is_some() {
            let limit;
            (limit, ceiling) = next_page_size(items * small, items, ceiling);
            sizes.push(limit);
            items = limit as usize;
        }
        assert_eq!(sizes, [2, 4, 8, 16, 32, 64, 128, 256, PAGE_SIZE]);
        // Objects of 600 KiB under a ceiling of 16: what fits in a MiB, and the ceiling
        // follows it down.
        assert_eq!(next_page_size(16 * 600 * 1024, 16, Some(16)), (1, Some(1)));
        // A page the server left empty under a ceiling: the smaller of a first page and twice
        // the last.
        assert_eq!(next_page_size(120, 0, Some(4)), (8, Some(8)));
        assert_eq!(
            next_page_size(120, 0, Some(64)),
            (FIRST_PAGE_SIZE, Some(FIRST_PAGE_SIZE))
        );
    }
}
