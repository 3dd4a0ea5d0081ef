//! The backup and restore data flow against the real test bed and a real S3 server, without
//! the reconcilers: back up a namespace, check the archive with stock tools, delete the
//! namespace, restore it, and check every object is back with its owners re-linked.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use common::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use stowage_api::resource_restore::{ExistingResourcePolicy, RestoreFilter};
use stowage_core::testing::S3Server;
use stowage_core::{BackupRequest, Identities};
use stowage_e2e::{bed, wait_for};
use stowage_resource_backup_ctrl::encryption::EncryptionConfig;
use stowage_resource_backup_ctrl::reader::Source;
use stowage_resource_backup_ctrl::{backup, plan, restore};

fn options() -> restore::Options {
    restore::Options {
        delete_timeout: Duration::from_secs(60),
        ..restore::Options::default()
    }
}

#[tokio::test]
async fn back_up_delete_restore_a_namespace_with_owners_relinked_and_secrets_encrypted() -> anyhow::Result<()> {
    let bed = bed().await?;
    let s3 = S3Server::start("backups").await?;
    bed.with_namespace("rbk-flow", |client, ns| async move {
        populate(&client, &ns).await?;
        let set = resource_set(&ns);
        let config = EncryptionConfig::parse("test", &encryption_config(&[("key1", KEY1)]))?;
        let path = format!("flow/{ns}.tar.gz");
        let request = BackupRequest::new(s3.store(), &path, "ResourceBackup", format!("test {ns}"));
        let progress = backup::Progress::default();
        let outcome = backup::run(&client, &set, Some(config), request, &progress).await?;
        assert_eq!(
            progress.objects.load(std::sync::atomic::Ordering::Relaxed),
            outcome.summary.objects
        );
        assert!(outcome.summary.objects >= 10, "{:?}", outcome.summary);
        assert_eq!(
            outcome.summary.kinds["Secret"], 1,
            "the token Secret is not backed up: {:?}",
            outcome.summary
        );
        assert_eq!(outcome.summary.encrypted, 1);
        assert!(!outcome.cluster_id.is_empty());

        // Stock tools read it, and the Secret's value is nowhere in plaintext.
        let file = s3.bucket_dir().join(&path);
        let listing = Command::new("sh")
            .arg("-c")
            .arg(format!("gunzip -c {} | tar -t", file.display()))
            .output()?;
        let listing = String::from_utf8(listing.stdout)?;
        for expected in [
            format!("core/v1/secrets/{ns}/db.json.enc"),
            format!("core/v1/configmaps/{ns}/settings.json"),
            format!("apps/v1/deployments/{ns}/web.json"),
            format!("{WIDGET_GROUP}/v1/widgets/{ns}/w1.json"),
            format!("apiextensions.k8s.io/v1/customresourcedefinitions/_cluster/widgets.{WIDGET_GROUP}.json"),
            "core/v1/namespaces/_cluster/".to_string(),
            "stowage/resourceset.json".into(),
            "stowage/index.json".into(),
        ] {
            assert!(listing.contains(&expected), "{expected} in\n{listing}");
        }
        let plaintext = Command::new("gunzip").arg("-c").arg(&file).output()?.stdout;
        let needle = SECRET_VALUE.as_bytes();
        assert!(
            !plaintext.windows(needle.len()).any(|w| w == needle),
            "the Secret's value is encrypted"
        );
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(SECRET_VALUE);
        assert!(!plaintext.windows(encoded.len()).any(|w| w == encoded.as_bytes()));

        let old_deployment = Api::<Deployment>::namespaced(client.clone(), &ns).get("web").await?;
        delete_namespace(&client, &ns).await?;

        // A rotated configuration (new first key, old key kept) still decrypts.
        let rotated = EncryptionConfig::parse("rotated", &encryption_config(&[("key2", KEY2), ("key1", KEY1)]))?;
        let source = Source::new(s3.store(), &path, Identities::none());
        let progress = restore::Progress::default();
        let report = restore::run(&client, &source, Some(&rotated), &options(), &progress).await?;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(
            report.passes, 2,
            "verified once, applied in one pass: the backup wrote types in restore order"
        );
        let done = progress.done.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(done, progress.total.load(std::sync::atomic::Ordering::Relaxed));
        assert_eq!(done, progress.verified.load(std::sync::atomic::Ordering::Relaxed));
        assert!(report.counts.created >= 9, "{:?}", report.counts);
        assert_restored(&client, &ns).await?;
        let deployment = Api::<Deployment>::namespaced(client.clone(), &ns).get("web").await?;
        assert_ne!(uid(&deployment), uid(&old_deployment));
        assert_eq!(
            deployment.spec.and_then(|s| s.replicas),
            Some(2),
            "scaled back to its replicas"
        );

        // Garbage collection follows the new ownerReferences.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.delete("web", &DeleteParams::background()).await?;
        wait_for(
            "the restored Deployment's ReplicaSets to be garbage-collected",
            || async {
                let left = Api::<ReplicaSet>::namespaced(client.clone(), &ns)
                    .list(&ListParams::default())
                    .await?
                    .items;
                Ok(left.is_empty().then_some(()))
            },
        )
        .await?;

        // A wrong key fails before anything is applied, naming the object and the keys tried.
        let wrong = EncryptionConfig::parse("wrong", &encryption_config(&[("key1", KEY2)]))?;
        let selection = plan::Selection::default();
        let error = restore::verify(&client, &source, Some(&wrong), &selection)
            .await
            .err()
            .context("a wrong key fails")?
            .to_string();
        assert!(
            error.contains(&format!("Secret {ns}/db")) && error.contains("aescbc:key1"),
            "{error}"
        );
        let error = restore::verify(&client, &source, None, &selection)
            .await
            .err()
            .context("no key fails")?
            .to_string();
        assert!(error.contains("encryptionConfigSecretName"), "{error}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn dry_run_skip_update_prune_mapping_and_filters() -> anyhow::Result<()> {
    let bed = bed().await?;
    let s3 = S3Server::start("backups").await?;
    bed.with_namespace("rbk-plan", |client, ns| async move {
        populate(&client, &ns).await?;
        let path = format!("plan/{ns}.tar.gz");
        let request = BackupRequest::new(s3.store(), &path, "ResourceBackup", "test");
        backup::run(&client, &resource_set(&ns), None, request, &backup::Progress::default()).await?;
        let source = Source::new(s3.store(), &path, Identities::none());
        let apply = |options: restore::Options| {
            let (client, source) = (client.clone(), source.clone());
            async move { restore::run(&client, &source, None, &options, &restore::Progress::default()).await }
        };

        // Change one object, add one the backup does not have.
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let changed = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "slow"}});
        config_maps.patch("settings", &PatchParams::apply("rbk-test").force(), &Patch::Apply(&changed)).await?;
        let extra = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "extra"}, "data": {}});
        config_maps.patch("extra", &PatchParams::apply("rbk-test"), &Patch::Apply(&extra)).await?;
        let mode = || async { Ok::<_, anyhow::Error>(config_maps.get("settings").await?.data.unwrap_or_default()["mode"].clone()) };

        // Dry run: the plan names the change and the extra, and nothing moves.
        let dry = restore::Options { dry_run: true, prune: true, ..options() };
        let report = apply(dry).await?;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let settings = format!("ConfigMap {ns}/settings");
        assert!(report.plan.update.iter().any(|u| u.starts_with(&settings) && u.contains("data")), "{:?}", report.plan);
        assert_eq!(report.plan.delete, [format!("ConfigMap {ns}/extra")], "{:?}", report.plan);
        assert!(report.plan.unchanged.iter().any(|u| u.starts_with(&format!("Role.rbac.authorization.k8s.io {ns}/reader"))), "{:?}", report.plan);
        assert_eq!(mode().await?, "slow");
        assert!(config_maps.get_opt("extra").await?.is_some());

        // Skip leaves the changed object alone; Update restores it and prune removes the extra.
        let skip = restore::Options { policy: ExistingResourcePolicy::Skip, ..options() };
        let report = apply(skip).await?;
        assert!(report.counts.skipped >= 8 && report.counts.updated == 0, "{:?}", report.counts);
        assert_eq!(mode().await?, "slow");
        let update = restore::Options { prune: true, ..options() };
        let report = apply(update).await?;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(mode().await?, "fast");
        assert_eq!(report.counts.deleted, 1, "{:?}", report.plan.delete);
        assert!(config_maps.get_opt("extra").await?.is_none());
        assert!(report.counts.unchanged >= 3, "{:?}", report.counts);

        // Namespace mapping with a filter: ConfigMaps and the Namespace land in a new namespace.
        let target = format!("{ns}-copy");
        let mapped = restore::Options {
            selection: plan::Selection {
                namespace_mapping: BTreeMap::from([(ns.clone(), target.clone())]),
                include: Some(RestoreFilter { kinds: vec!["ConfigMap".into(), "Namespace".into()], ..RestoreFilter::default() }),
                exclude: None,
            },
            ..options()
        };
        let report = apply(mapped).await?;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let copies: Api<ConfigMap> = Api::namespaced(client.clone(), &target);
        assert_eq!(copies.get("settings").await?.data.unwrap_or_default()["mode"], "fast");
        assert!(Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &target).get_opt("db").await?.is_none());
        delete_namespace(&client, &target).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn label_selectors_are_applied_by_the_api_server_and_checked_again() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("rbk-labels", |client, ns| async move {
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let labelled = [
            ("taken", json!({"app": "web", "tier": "db", "team": "t"})),
            (
                "taken-too",
                json!({"app": "web", "tier": "web", "team": "t", "env": "prod"}),
            ),
            ("other-app", json!({"app": "api", "tier": "db", "team": "t"})),
            (
                "test-env",
                json!({"app": "web", "tier": "db", "team": "t", "env": "test"}),
            ),
            ("no-team", json!({"app": "web", "tier": "db"})),
            (
                "legacy",
                json!({"app": "web", "tier": "db", "team": "t", "legacy": "yes"}),
            ),
            ("unlabelled", json!({})),
        ];
        for (name, labels) in &labelled {
            let object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}});
            config_maps
                .patch(name, &PatchParams::apply("rbk-test"), &Patch::Apply(&object))
                .await?;
        }
        let set: stowage_api::resource_set::ResourceSetSpec = serde_json::from_value(json!({
            "resourceSelectors": [{
                "namespaces": [ns], "kinds": ["ConfigMap"],
                "labelSelectors": {"matchLabels": {"app": "web"}, "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["db", "web"]},
                    {"key": "env", "operator": "NotIn", "values": ["test"]},
                    {"key": "team", "operator": "Exists"},
                    {"key": "legacy", "operator": "DoesNotExist"},
                ]},
            }],
        }))?;
        let taken = |names: Vec<String>| {
            let mut names = names;
            names.sort();
            names
        };

        // The query the backup lists with, as the API server understands it.
        let selection = stowage_resource_backup_ctrl::selector::Selection::new(&set)?;
        let served = backup::discover(&client).await?;
        let resource = &served
            .iter()
            .find(|s| s.resource.group.is_empty() && s.resource.plural == "configmaps")
            .context("ConfigMaps are served")?
            .resource;
        let query = selection
            .server_label_selector(resource)
            .context("the selector goes to the API server")?;
        let listed = config_maps.list(&ListParams::default().labels(&query)).await?.items;
        assert_eq!(
            taken(listed.into_iter().filter_map(|c| c.metadata.name).collect()),
            ["taken", "taken-too"],
            "{query}"
        );

        // The backup takes those two.
        let store: std::sync::Arc<dyn object_store::ObjectStore> =
            std::sync::Arc::new(object_store::memory::InMemory::new());
        let request = BackupRequest::new(store.clone(), "labels.tar.gz", "ResourceBackup", "test");
        let outcome = backup::run(&client, &set, None, request, &backup::Progress::default()).await?;
        assert_eq!(outcome.summary.objects, 2, "{:?}", outcome.summary);
        let source = Source::new(store, "labels.tar.gz", Identities::none());
        let mut stream = stowage_resource_backup_ctrl::reader::ArchiveStream::open(&source, Default::default());
        let mut paths = Vec::new();
        while let Some(item) = stream.next().await {
            if let stowage_resource_backup_ctrl::reader::Item::Object { path, .. } = item {
                paths.push(path);
            }
        }
        stream.finish().await?;
        assert_eq!(
            taken(paths),
            [
                format!("core/v1/configmaps/{ns}/taken-too.json"),
                format!("core/v1/configmaps/{ns}/taken.json")
            ]
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn large_objects_after_small_ones_are_listed_a_few_a_page_and_all_come_back() -> anyhow::Result<()> {
    let bed = bed().await?;
    let s3 = S3Server::start("backups").await?;
    bed.with_namespace("rbk-large", |client, ns| async move {
        // Forty small ConfigMaps, then twenty of 600 KiB, as Helm releases or dashboards make
        // them: the first page takes 16 small ones, the next one is asked for 500 and outgrows
        // its cap with the large ones, and is asked for again one object at a time.
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let content = |i: usize, bytes: usize| -> String {
            (0..)
                .map(|line| format!("map {i} line {line}\n"))
                .flat_map(|line| line.into_bytes())
                .take(bytes)
                .map(char::from)
                .collect()
        };
        let maps: Vec<(String, String)> = (0..40)
            .map(|i| (format!("a-small-{i:02}"), content(i, 200)))
            .chain((0..20).map(|i| (format!("large-{i:02}"), content(i, 600 << 10))))
            .collect();
        for (name, data) in &maps {
            let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "labels": {"size": "large"}}, "data": {"content": data}});
            config_maps
                .patch(name, &PatchParams::apply("rbk-test"), &Patch::Apply(&object))
                .await?;
        }
        let set: stowage_api::resource_set::ResourceSetSpec = serde_json::from_value(json!({
            "resourceSelectors": [{"namespaces": [ns], "kinds": ["ConfigMap"],
                "labelSelectors": {"matchLabels": {"size": "large"}}}],
        }))?;
        let path = format!("large/{ns}.tar.gz");
        let request = BackupRequest::new(s3.store(), &path, "ResourceBackup", format!("test {ns}"));
        let outcome = backup::run(&client, &set, None, request, &backup::Progress::default()).await?;
        assert_eq!(outcome.summary.objects, 60, "{:?}", outcome.summary);

        config_maps
            .delete_collection(&DeleteParams::default(), &ListParams::default().labels("size=large"))
            .await?;
        wait_for("the large ConfigMaps to be gone", || async {
            let left = config_maps.list(&ListParams::default().labels("size=large")).await?;
            Ok(left.items.is_empty().then_some(()))
        })
        .await?;
        let source = Source::new(s3.store(), &path, Identities::none());
        let report = restore::run(&client, &source, None, &options(), &restore::Progress::default()).await?;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(report.counts.created, 60, "{:?}", report.counts);
        for (name, content) in &maps {
            let restored = config_maps.get(name).await?;
            let data = restored.data.unwrap_or_default();
            assert!(data.get("content") == Some(content), "{name} came back whole");
        }
        Ok(())
    })
    .await
}
