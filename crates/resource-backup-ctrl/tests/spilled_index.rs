//! A backup whose index outgrows one segment stores the segments next to its payload while
//! it runs, and leaves none behind: the archive's index.json is the one a backup holding
//! its index writes, byte for byte, the archive restores, and the segments are gone after
//! the backup succeeds, fails, or is dropped midway. Segments are made small (4 KiB of JSON)
//! so that a few hundred objects make a dozen of them.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};
use serde_json::json;
use stowage_api::resource_set::ResourceSetSpec;
use stowage_core::testing::S3Server;
use stowage_core::{BackupRequest, Identities, Layout};
use stowage_e2e::{bed, wait_for};
use stowage_resource_backup_ctrl::index::Index;
use stowage_resource_backup_ctrl::reader::Source;
use stowage_resource_backup_ctrl::segments::Segments;
use stowage_resource_backup_ctrl::{backup, restore};
use tokio::sync::Notify;

/// ConfigMaps in the namespace: about 60 KB of index JSON.
const MAPS: usize = 300;
/// Index JSON per segment in these tests: a dozen segments or so.
const SEGMENT_JSON: usize = 4 << 10;

#[tokio::test]
async fn a_spilled_index_is_the_same_restores_and_leaves_no_segments() -> anyhow::Result<()> {
    let bed = bed().await?;
    let s3 = S3Server::start("backups").await?;
    bed.with_namespace("rbk-spill", |client, ns| async move {
        create_maps(&client, &ns).await?;
        let set = maps_of(&ns)?;
        let run = |path: String, segments: Option<Segments>| {
            let (client, set, store) = (client.clone(), set.clone(), s3.store());
            async move {
                let request = BackupRequest::new(store, &path, "ResourceBackup", "test");
                let progress = backup::Progress::default();
                match segments {
                    Some(segments) => {
                        backup::run_with_segments(&client, &set, None, request, &progress, segments).await
                    }
                    None => backup::run(&client, &set, None, request, &progress).await,
                }
            }
        };

        // Held: far below a segment of the default size, the store never sees the index.
        let held_path = format!("spill/{ns}/held.tar.gz");
        run(held_path.clone(), None).await?;
        assert_eq!(
            keys(&s3, &format!("spill/{ns}")).await?.len(),
            2,
            "the payload and its manifest"
        );

        let path = format!("spill/{ns}/spilled.tar.gz");
        let segments = Segments::new(s3.store(), &path).with_json_bytes(SEGMENT_JSON);
        let outcome = run(path.clone(), Some(segments.clone())).await?;
        assert!(outcome.summary.objects > MAPS as u64, "{:?}", outcome.summary);
        assert!(segments.count() >= 10, "{} segments stored", segments.count());
        assert_eq!(
            keys(&s3, &format!("spill/{ns}")).await?,
            [
                held_path.clone(),
                Layout::manifest_key(&held_path),
                path.clone(),
                Layout::manifest_key(&path)
            ],
            "the segments are gone"
        );

        // Stock tools read both indexes, and they are the same bytes.
        let index_json = |path: &str| {
            let file = s3.bucket_dir().join(path);
            let output = Command::new("sh")
                .arg("-c")
                .arg(format!("gunzip -c {} | tar -xO stowage/index.json", file.display()))
                .output()?;
            anyhow::ensure!(
                output.status.success(),
                "tar: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            Ok(output.stdout)
        };
        let spilled = index_json(&path)?;
        assert!(spilled == index_json(&held_path)?, "the same index.json, byte for byte");
        let index: Index = serde_json::from_slice(&spilled)?;
        assert_eq!(index.entries.len() as u64, outcome.summary.objects);

        // It restores: every ConfigMap comes back.
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let spilled_maps = ListParams::default().labels("spill=yes");
        config_maps
            .delete_collection(&DeleteParams::default(), &spilled_maps)
            .await?;
        wait_for("the ConfigMaps to be gone", || async {
            Ok(config_maps.list(&spilled_maps).await?.items.is_empty().then_some(()))
        })
        .await?;
        let source = Source::new(s3.store(), &path, Identities::none());
        let options = restore::Options {
            delete_timeout: Duration::from_secs(60),
            ..restore::Options::default()
        };
        let report = restore::run(&client, &source, None, &options, &restore::Progress::default()).await?;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(report.counts.created, MAPS as u64, "{:?}", report.counts);
        let restored = config_maps.get("map-123").await?;
        assert_eq!(restored.data.unwrap_or_default()["n"], "123");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_failed_or_dropped_backup_leaves_no_segments() -> anyhow::Result<()> {
    let bed = bed().await?;
    let s3 = S3Server::start("backups").await?;
    bed.with_namespace("rbk-spill-fail", |client, ns| async move {
        create_maps(&client, &ns).await?;
        let set = maps_of(&ns)?;

        // The payload's upload fails at the end, after every segment was stored and read back.
        let failing = Arc::new(Hooked::new(s3.store(), Hook::FailPayload));
        let path = format!("failed/{ns}.tar.gz");
        let segments = Segments::new(failing.clone(), &path).with_json_bytes(SEGMENT_JSON);
        let request = BackupRequest::new(failing.clone(), &path, "ResourceBackup", "test");
        let progress = backup::Progress::default();
        let result = backup::run_with_segments(&client, &set, None, request, &progress, segments.clone()).await;
        let error = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("refused"), "the payload's upload failed: {error:?}");
        assert!(segments.count() >= 10, "{} segments stored", segments.count());
        assert_eq!(keys(&s3, "failed").await?, Vec::<String>::new(), "nothing is left");

        // Dropped while segment 2 is being stored (a controller shutting down): segment 1 and,
        // once its upload is in, segment 2 are deleted.
        let holding = Arc::new(Hooked::new(s3.store(), Hook::Hold(Arc::default(), Arc::default())));
        let Hook::Hold(started, release) = &holding.hook else {
            unreachable!("a holding store")
        };
        let path = format!("dropped/{ns}.tar.gz");
        let segments = Segments::new(holding.clone(), &path).with_json_bytes(SEGMENT_JSON);
        let request = BackupRequest::new(holding.clone(), &path, "ResourceBackup", "test");
        let running = tokio::spawn({
            let (client, set, segments) = (client.clone(), set.clone(), segments.clone());
            async move {
                let progress = backup::Progress::default();
                backup::run_with_segments(&client, &set, None, request, &progress, segments).await
            }
        });
        started.notified().await;
        assert_eq!(keys(&s3, "dropped").await?, [Layout::scratch_key(&path, 1)]);
        running.abort();
        assert!(running.await.err().is_some_and(|e| e.is_cancelled()));
        release.notify_one();
        wait_for("the dropped backup's segments to be deleted", || async {
            Ok(keys(&s3, "dropped").await?.is_empty().then_some(()))
        })
        .await?;
        assert_eq!(segments.count(), 2);
        Ok(())
    })
    .await
}

/// `MAPS` small ConfigMaps labelled `spill=yes`.
async fn create_maps(client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    futures::stream::iter(0..MAPS)
        .map(|i| {
            let config_maps = config_maps.clone();
            async move {
                let name = format!("map-{i}");
                let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "labels": {"spill": "yes"}}, "data": {"n": i.to_string()}});
                config_maps
                    .patch(&name, &PatchParams::apply("rbk-test"), &Patch::Apply(&object))
                    .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// The ConfigMaps of `namespace`.
fn maps_of(namespace: &str) -> anyhow::Result<ResourceSetSpec> {
    Ok(serde_json::from_value(
        json!({"resourceSelectors": [{"namespaces": [namespace], "kinds": ["ConfigMap"]}]}),
    )?)
}

/// Every key under `prefix` in the bucket, in order.
async fn keys(s3: &S3Server, prefix: &str) -> anyhow::Result<Vec<String>> {
    let store = s3.store();
    let listed: Vec<ObjectMeta> = store.list(Some(&Path::parse(prefix)?)).try_collect().await?;
    let mut keys: Vec<String> = listed.into_iter().map(|o| o.location.to_string()).collect();
    keys.sort();
    Ok(keys)
}

/// What a [`Hooked`] store does besides storing.
#[derive(Debug)]
enum Hook {
    /// Refuses every upload but the scratch objects'.
    FailPayload,
    /// Holds the upload of scratch object 2: says when it starts, finishes it when released.
    Hold(Arc<Notify>, Arc<Notify>),
}

/// The test's S3 with a [`Hook`] on uploads.
#[derive(Debug)]
struct Hooked {
    inner: Arc<dyn ObjectStore>,
    hook: Hook,
}

impl Hooked {
    fn new(inner: Arc<dyn ObjectStore>, hook: Hook) -> Hooked {
        Hooked { inner, hook }
    }

    fn refuses(&self, location: &Path) -> object_store::Result<()> {
        match self.hook {
            Hook::FailPayload if !Layout::is_scratch_key(location.as_ref()) => Err(object_store::Error::Generic {
                store: "test",
                source: format!("upload of {location} refused").into(),
            }),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hooked({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Hooked {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.refuses(location)?;
        if let Hook::Hold(started, release) = &self.hook
            && location.as_ref().ends_with(".scratch/00002")
        {
            started.notify_one();
            release.notified().await;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.refuses(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
