//! The bench's bed: namespaces full of ConfigMaps and Secrets labelled in batches, the
//! storage, the age key and the ResourceSets the runs use; and the clean-up at the end.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use stowage_api::{BackupStorage, ResourceBackup, ResourceRestore, ResourceSet};

use super::{BATCH, Bench, CREATING, LABEL, PREFIX, SYSTEM, Sizes};

impl Bench {
    /// Creates the namespaces and objects the bed lacks, `CREATING` at a time.
    pub(super) async fn populate(&self, client: &kube::Client) -> anyhow::Result<()> {
        let sizes = &self.sizes;
        for i in 0..sizes.namespaces {
            ensure_namespace(client, &format!("{PREFIX}-{i}")).await?;
        }
        // A bed kept by an earlier run (`--keep`) has them already.
        let mut existing = std::collections::HashSet::new();
        let labelled = ListParams::default().labels(LABEL);
        let configmaps = Api::<ConfigMap>::all(client.clone()).list_metadata(&labelled).await?;
        let secrets = Api::<Secret>::all(client.clone()).list_metadata(&labelled).await?;
        let metadata =
            (configmaps.items.into_iter().map(|o| o.metadata)).chain(secrets.items.into_iter().map(|o| o.metadata));
        for object in metadata {
            let batch = object.labels.unwrap_or_default().remove(BATCH);
            existing.insert((object.namespace, object.name, batch));
        }
        // Only where this run would put it (a `--quick` bed spreads and labels them otherwise).
        let missing: Vec<usize> = (0..sizes.all)
            .filter(|&i| {
                let (namespace, name, batch) = placement(i, sizes);
                !existing.contains(&(Some(namespace), Some(name), Some(batch)))
            })
            .collect();
        eprintln!(
            "creating {} ConfigMaps and Secrets ({} are there already)…",
            missing.len(),
            sizes.all - missing.len()
        );
        let started = Instant::now();
        let mut created = futures::stream::iter(missing)
            .map(|i| create_object(client, i, sizes))
            .buffer_unordered(CREATING);
        let mut count = 0;
        while let Some(result) = created.next().await {
            result?;
            count += 1;
            if count % 5_000 == 0 {
                eprintln!(
                    "  {count} objects ({:.0}/s)",
                    count as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        Ok(())
    }

    /// Namespace `{PREFIX}-large` with `sizes.large` Secrets of 512 KiB, the size Helm's
    /// release Secrets reach: the backup of large objects, whose list pages are sized by bytes.
    pub(super) async fn populate_large(&self, client: &kube::Client) -> anyhow::Result<()> {
        let namespace = format!("{PREFIX}-large");
        ensure_namespace(client, &namespace).await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let there = secrets
            .list_metadata(&ListParams::default().labels(LABEL))
            .await?
            .items
            .len();
        eprintln!(
            "creating {} Secrets of 512 KiB…",
            self.sizes.large.saturating_sub(there)
        );
        let apply = PatchParams::apply("stowage-bench").force();
        for i in there..self.sizes.large {
            let name = format!("release-v{i}");
            // Text that compresses as a gzipped, base64-encoded Helm release does: not at all.
            let mut state = i as u64 + 1;
            let value: String = (0..512 * 1024)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    char::from(
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(state % 64) as usize],
                    )
                })
                .collect();
            let secret: Secret = serde_json::from_value(json!({"metadata": {"name": name,
                "labels": {LABEL: "large"}}, "stringData": {"release": value}}))?;
            secrets.patch(&name, &apply, &Patch::Apply(&secret)).await?;
        }
        Ok(())
    }

    /// The storage, the age key Secret and the four ResourceSets.
    pub(super) async fn setup(&self, client: &kube::Client) -> anyhow::Result<()> {
        let sizes = &self.sizes;
        let apply = PatchParams::apply("stowage-bench").force();
        let storage: BackupStorage = serde_json::from_value(json!({
            "apiVersion": "stowage.io/v1alpha1", "kind": "BackupStorage", "metadata": {"name": PREFIX},
            "spec": {"type": "Filesystem", "filesystem": {"path": self.dir.join("store")}},
        }))?;
        Api::<BackupStorage>::all(client.clone())
            .patch(PREFIX, &apply, &Patch::Apply(&storage))
            .await?;
        let secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": "age"}, "stringData": {"key.txt": self.identity}}))?;
        Api::<Secret>::namespaced(client.clone(), SYSTEM)
            .patch("age", &apply, &Patch::Apply(&secret))
            .await?;
        let batches = |objects: usize| {
            (0..objects.div_ceil(sizes.batch))
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
        };
        for (name, objects) in [("small", sizes.batch), ("main", sizes.main), ("all", sizes.all)] {
            let set: ResourceSet = serde_json::from_value(json!({
                "apiVersion": "stowage.io/v1alpha1", "kind": "ResourceSet", "metadata": {"name": format!("{PREFIX}-{name}")},
                "spec": {"resourceSelectors": [{
                    "apiVersion": "v1", "kinds": ["ConfigMap", "Secret"], "namespaceRegexp": format!("^{PREFIX}-[0-9]+$"),
                    "labelSelectors": {"matchExpressions": [{"key": BATCH, "operator": "In", "values": batches(objects)}]},
                }]},
            }))?;
            Api::<ResourceSet>::all(client.clone())
                .patch(&format!("{PREFIX}-{name}"), &apply, &Patch::Apply(&set))
                .await?;
        }
        let large: ResourceSet = serde_json::from_value(json!({
            "apiVersion": "stowage.io/v1alpha1", "kind": "ResourceSet", "metadata": {"name": format!("{PREFIX}-large")},
            "spec": {"resourceSelectors": [{"apiVersion": "v1", "kinds": ["Secret"], "namespaces": [format!("{PREFIX}-large")]}]},
        }))?;
        Api::<ResourceSet>::all(client.clone())
            .patch(&format!("{PREFIX}-large"), &apply, &Patch::Apply(&large))
            .await?;
        Ok(())
    }

    /// Deletes what the runs created, and with `keep` false the namespaces and their objects
    /// (with `keep`, only the namespaces the restore created objects in).
    pub(super) async fn clean_up(&self, client: &kube::Client, keep: bool) -> anyhow::Result<()> {
        let delete = DeleteParams::background();
        let restores: Api<ResourceRestore> = Api::all(client.clone());
        let backups: Api<ResourceBackup> = Api::all(client.clone());
        let sets: Api<ResourceSet> = Api::all(client.clone());
        for list in [
            restores
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .map(|o| o.metadata.name)
                .collect::<Vec<_>>(),
            backups
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .map(|o| o.metadata.name)
                .collect(),
        ] {
            for name in list.into_iter().flatten().filter(|n| n.starts_with(PREFIX)) {
                let _ = restores.delete(&name, &delete).await;
                let _ = backups.delete(&name, &delete).await;
            }
        }
        for name in ["small", "main", "all", "large"] {
            let _ = sets.delete(&format!("{PREFIX}-{name}"), &delete).await;
        }
        let _ = Api::<BackupStorage>::all(client.clone()).delete(PREFIX, &delete).await;
        // The namespace controller deletes the objects in the background. The restore's target
        // namespaces (`…-r`) go even with `keep`: the next run's restore must create every object.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ours = |n: &String| n.starts_with(PREFIX) && (!keep || n.ends_with("-r"));
        for namespace in namespaces.list(&Default::default()).await?.items {
            if let Some(name) = namespace.metadata.name.filter(ours) {
                let _ = namespaces.delete(&name, &delete).await;
            }
        }
        Ok(())
    }
}

/// Creates namespace `name` unless it exists; one still terminating (an earlier run's) is
/// waited for first.
pub(super) async fn ensure_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    loop {
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        match namespaces.create(&PostParams::default(), &namespace).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let terminating = namespaces
                    .get_opt(name)
                    .await?
                    .is_some_and(|n| n.metadata.deletion_timestamp.is_some());
                if !terminating {
                    return Ok(());
                }
                eprintln!("  waiting for namespace {name} of an earlier run to go…");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Object `i`: a ConfigMap (even) or Secret (odd) of 1-4 KiB in namespace `i % namespaces`.
async fn create_object(client: &kube::Client, i: usize, sizes: &Sizes) -> anyhow::Result<()> {
    let (namespace, name, batch) = placement(i, sizes);
    let size = 1024 + (i * 7919) % 3072;
    let mut seed = i as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let text: String = (0..size)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            char::from(b"abcdefghijklmnopqrstuvwxyz0123456789 "[(seed >> 33) as usize % 37])
        })
        .collect();
    let metadata = json!({"name": name, "labels": {LABEL: "resources", BATCH: batch}});
    let created = if i.is_multiple_of(2) {
        let object: ConfigMap = serde_json::from_value(json!({"metadata": metadata, "data": {"value": text}}))?;
        Api::<ConfigMap>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &object)
            .await
            .map(|_| ())
    } else {
        let object: Secret = serde_json::from_value(json!({"metadata": metadata, "stringData": {"value": text}}))?;
        Api::<Secret>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &object)
            .await
            .map(|_| ())
    };
    match created {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(anyhow::Error::from(e).context(format!("creating {namespace}/{name}"))),
    }
}

/// Object `i`'s namespace, name and batch label.
fn placement(i: usize, sizes: &Sizes) -> (String, String, String) {
    (
        format!("{PREFIX}-{}", i % sizes.namespaces),
        format!("obj-{i}"),
        (i / sizes.batch).to_string(),
    )
}
