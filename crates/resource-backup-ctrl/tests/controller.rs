//! The controllers in-process against the test bed and a real S3 server: what a user does
//! with ResourceSet, ResourceBackup and ResourceRestore objects, and what bad input gives.

mod common;

use std::process::Command;
use std::sync::Arc;

use anyhow::Context as _;
use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use stowage_api::{BackupStorage, ResourceBackup, ResourceRestore, ResourceSet};
use stowage_core::testing::S3Server;
use stowage_e2e::{bed, wait_for};
use stowage_operator::{Context, Metrics};

const TEST_LABEL: &str = "stowage.io/e2e-test";

/// The controllers, reconciling only this test's objects; stopped on drop.
struct Controllers {
    ctx: Arc<Context>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Controllers {
    fn drop(&mut self) {
        self.ctx.shutdown.cancel();
        self.task.abort();
    }
}

async fn start(client: &kube::Client, config_namespace: &str, test: &str) -> anyhow::Result<Controllers> {
    stowage_operator::runner::init_tracing("text");
    stowage_e2e::crds::apply_crds(client, &stowage_api::crds()).await?;
    let ctx = Arc::new(Context::new(
        client.clone(),
        "resource-backup-ctrl",
        config_namespace,
        Some(format!("e2e-{test}")),
        Arc::new(Metrics::new()?),
    ));
    let selector = format!("{TEST_LABEL}={test}");
    let task = {
        let ctx = ctx.clone();
        tokio::spawn(async move { stowage_resource_backup_ctrl::run_selected(ctx, Some(&selector)).await })
    };
    Ok(Controllers { ctx, task })
}

/// Creates a cluster-scoped Stowage object labelled for this test.
async fn create<K>(client: &kube::Client, test: &str, kind: &str, name: &str, spec: Value) -> anyhow::Result<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(json!({
        "apiVersion": "stowage.io/v1alpha1", "kind": kind,
        "metadata": {"name": name, "labels": {TEST_LABEL: test}}, "spec": spec,
    }))?;
    Api::<K>::all(client.clone())
        .create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating {kind} {name}"))?;
    Ok(())
}

async fn secret(client: &kube::Client, namespace: &str, name: &str, data: Value) -> anyhow::Result<()> {
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))?;
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

/// An S3 BackupStorage with its credentials Secret in `namespace`.
async fn s3_storage(client: &kube::Client, s3: &S3Server, namespace: &str, name: &str) -> anyhow::Result<()> {
    let credentials = s3.credentials();
    secret(
        client,
        namespace,
        "s3",
        json!({"accessKeyId": credentials.access_key_id, "secretAccessKey": credentials.secret_access_key}),
    )
    .await?;
    let mut spec = serde_json::to_value(s3.spec())?;
    spec["credentialsSecretRef"] = json!({"namespace": namespace, "name": "s3"});
    let storage: BackupStorage = serde_json::from_value(
        json!({"apiVersion": "stowage.io/v1alpha1", "kind": "BackupStorage", "metadata": {"name": name}, "spec": spec}),
    )?;
    Api::<BackupStorage>::all(client.clone())
        .create(&PostParams::default(), &storage)
        .await?;
    Ok(())
}

/// Waits until `name`'s status.phase is one of `phases`; returns its status.
async fn phase<K>(client: &kube::Client, name: &str, phases: &[&str]) -> anyhow::Result<Value>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let found = wait_for(
        &format!("{} {name} to reach phase {phases:?}", K::kind(&())),
        || async {
            let object = serde_json::to_value(api.get(name).await?)?;
            Ok(phases
                .contains(&object["status"]["phase"].as_str().unwrap_or(""))
                .then(|| object["status"].clone()))
        },
    )
    .await;
    match found {
        Ok(status) => Ok(status),
        Err(error) => {
            let last = serde_json::to_value(api.get(name).await?)?["status"].clone();
            Err(error.context(format!("last status: {last}")))
        }
    }
}

/// Waits for an Event with `reason` about cluster-scoped object `name` (they land in
/// `default`); Events follow the status update that the test waited for. Returns its message.
async fn wait_event(client: &kube::Client, name: &str, reason: &str) -> anyhow::Result<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    wait_for(&format!("an Event {reason} about {name}"), || async {
        // Filtered here: the field selector does not see Events written through events.k8s.io/v1.
        let list = events.list(&ListParams::default()).await?;
        let found = list.items.into_iter().find(|e| {
            e.involved_object.name.as_deref() == Some(name)
                && (reason.is_empty() || e.reason.as_deref() == Some(reason))
        });
        Ok(found.map(|e| e.message.unwrap_or_default()))
    })
    .await
}

fn age_keygen() -> anyhow::Result<(String, String)> {
    let output = Command::new("age-keygen")
        .output()
        .context("running age-keygen (install it: apt-get install age)")?;
    let text = String::from_utf8(output.stdout)?;
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .context("no public key")?
        .to_string();
    Ok((text, public))
}

#[tokio::test]
async fn resource_backup_and_restores_through_the_controllers() -> anyhow::Result<()> {
    let bed = bed().await?;
    let s3 = S3Server::start("backups").await?;
    bed.with_namespace("rbk-ctl", |client, ns| async move {
        let config_ns = stowage_e2e::namespace::create_namespace(&client, "rbk-ctl-config").await?;
        let _controllers = start(&client, &config_ns, &ns).await?;
        populate(&client, &ns).await?;
        let storage = format!("{ns}-s3");
        s3_storage(&client, &s3, &config_ns, &storage).await?;
        let (identity, recipient) = age_keygen()?;
        secret(&client, &config_ns, "age", json!({"key.txt": identity})).await?;
        secret(
            &client,
            &config_ns,
            "etcd-keys",
            json!({"encryption-provider-config.yaml": encryption_config(&[("key1", KEY1)])}),
        )
        .await?;

        create::<ResourceSet>(
            &client,
            &ns,
            "ResourceSet",
            &ns,
            serde_json::to_value(resource_set(&ns))?,
        )
        .await?;
        create::<ResourceBackup>(
            &client,
            &ns,
            "ResourceBackup",
            &ns,
            json!({
                "resourceSetName": ns, "storage": {"name": storage},
                "encryption": {"recipients": [recipient], "decryptionKey": {"name": "age", "key": "key.txt"}},
                "encryptionConfigSecretName": "etcd-keys", "retainPolicy": "Delete",
            }),
        )
        .await?;
        let status = phase::<ResourceBackup>(&client, &ns, &["Succeeded", "Failed"]).await?;
        assert_eq!(status["phase"], "Succeeded", "{status}");
        assert!(status["objectCount"].as_u64().unwrap_or(0) >= 10, "{status}");
        assert_eq!(status["encryptedObjects"], 1, "{status}");
        assert_eq!(status["progress"]["objects"], status["objectCount"], "{status}");
        assert!(status["progress"]["storedBytes"].as_u64().unwrap_or(0) > 0, "{status}");
        assert_eq!(status["kinds"]["Deployment.apps"], 1, "{status}");
        assert!(
            status["clusterId"].as_str().is_some_and(|id| !id.is_empty()),
            "{status}"
        );
        let path = status["artifact"]["path"]
            .as_str()
            .context("artifact path")?
            .to_string();
        assert!(path.ends_with(".tar.gz.age"), "{path}");
        wait_event(&client, &ns, "BackupStarted").await?;
        wait_event(&client, &ns, "BackupSucceeded").await?;

        // age -d | gunzip | tar -t lists the layout.
        let key_file = tempfile::NamedTempFile::new()?;
        std::fs::write(key_file.path(), &identity)?;
        let listing = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "age -d -i {} {} | gunzip | tar -t",
                key_file.path().display(),
                s3.bucket_dir().join(&path).display()
            ))
            .output()?;
        let listing = String::from_utf8(listing.stdout)?;
        assert!(
            listing.contains(&format!("core/v1/secrets/{ns}/db.json.enc")) && listing.contains("stowage/index.json"),
            "{listing}"
        );

        delete_namespace(&client, &ns).await?;

        // A dry run plans and changes nothing.
        let dry = format!("{ns}-dry");
        create::<ResourceRestore>(
            &client,
            &ns,
            "ResourceRestore",
            &dry,
            json!({"backupName": ns, "dryRun": true, "encryptionConfigSecretName": "etcd-keys"}),
        )
        .await?;
        let status = phase::<ResourceRestore>(&client, &dry, &["Succeeded", "PartiallyFailed", "Failed"]).await?;
        assert_eq!(status["phase"], "Succeeded", "{status}");
        let create_plan: Vec<String> = serde_json::from_value(status["plan"]["create"].clone())?;
        assert!(
            create_plan.contains(&format!("ConfigMap {ns}/settings"))
                && create_plan.contains(&format!("Namespace {ns}")),
            "{create_plan:?}"
        );
        assert!(
            Api::<Namespace>::all(client.clone()).get_opt(&ns).await?.is_none(),
            "a dry run creates nothing"
        );

        // The restore brings everything back with owners re-linked.
        let real = format!("{ns}-restore");
        create::<ResourceRestore>(
            &client,
            &ns,
            "ResourceRestore",
            &real,
            json!({"backupName": ns, "encryptionConfigSecretName": "etcd-keys"}),
        )
        .await?;
        let status = phase::<ResourceRestore>(&client, &real, &["Succeeded", "PartiallyFailed", "Failed"]).await?;
        assert_eq!(status["phase"], "Succeeded", "{status}");
        assert!(status["counts"]["created"].as_u64().unwrap_or(0) >= 9, "{status}");
        let progress = &status["progress"];
        assert!(
            progress["objects"] == progress["total"]
                && progress["verifiedObjects"].as_u64() >= progress["total"].as_u64(),
            "{status}"
        );
        assert_restored(&client, &ns).await?;

        // From storage and path, into another namespace, ConfigMaps only.
        let copy = format!("{ns}-copy");
        let mapped = format!("{ns}-mapped");
        create::<ResourceRestore>(
            &client,
            &ns,
            "ResourceRestore",
            &mapped,
            json!({
                "storage": {"name": storage, "path": path}, "decryptionKeySecretRef": {"name": "age", "key": "key.txt"},
                "encryptionConfigSecretName": "etcd-keys", "namespaceMapping": {ns.clone(): copy.clone()},
                "include": {"kinds": ["ConfigMap", "Namespace"]},
            }),
        )
        .await?;
        let status = phase::<ResourceRestore>(&client, &mapped, &["Succeeded", "PartiallyFailed", "Failed"]).await?;
        assert_eq!(status["phase"], "Succeeded", "{status}");
        let settings = Api::<ConfigMap>::namespaced(client.clone(), &copy)
            .get("settings")
            .await?;
        assert_eq!(settings.data.unwrap_or_default()["mode"], "fast");
        delete_namespace(&client, &copy).await?;

        // retainPolicy Delete: deleting the backup deletes its archive first.
        Api::<ResourceBackup>::all(client.clone())
            .delete(&ns, &Default::default())
            .await?;
        wait_for("the archive to be deleted with its ResourceBackup", || async {
            Ok((!s3.bucket_dir().join(&path).exists()).then_some(()))
        })
        .await?;
        for name in [dry, real, mapped] {
            Api::<ResourceRestore>::all(client.clone())
                .delete(&name, &Default::default())
                .await?;
        }
        Api::<ResourceSet>::all(client.clone())
            .delete(&ns, &Default::default())
            .await?;
        Api::<Namespace>::all(client.clone())
            .delete(&config_ns, &Default::default())
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn bad_input_ends_with_a_clear_condition_and_an_event_and_applies_nothing() -> anyhow::Result<()> {
    let bed = bed().await?;
    let s3 = S3Server::start("backups").await?;
    bed.with_namespace("rbk-bad", |client, ns| async move {
        let config_ns = stowage_e2e::namespace::create_namespace(&client, "rbk-bad-config").await?;
        let _controllers = start(&client, &config_ns, &ns).await?;
        let storage = format!("{ns}-s3");
        s3_storage(&client, &s3, &config_ns, &storage).await?;
        secret(&client, &config_ns, "malformed", json!({"encryption-provider-config.yaml": "kind: Nonsense"})).await?;
        let reason = |status: &Value| status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready")).map(|c| c["reason"].as_str().unwrap_or("").to_string()).unwrap_or_default();

        let good_set = format!("{ns}-set");
        create::<ResourceSet>(&client, &ns, "ResourceSet", &good_set, json!({"resourceSelectors": [{"namespaces": [ns]}]})).await?;
        let bad_set = format!("{ns}-badset");
        create::<ResourceSet>(&client, &ns, "ResourceSet", &bad_set, json!({"resourceSelectors": [{"resourceNameRegexp": "([a-z"}]})).await?;

        let cases = [
            (format!("{ns}-regex"), json!({"resourceSetName": bad_set, "storage": {"name": storage}}), "Failed", "InvalidSpec", "resourceNameRegexp"),
            (format!("{ns}-enc"), json!({"resourceSetName": good_set, "storage": {"name": storage}, "encryptionConfigSecretName": "malformed"}), "Failed", "InvalidEncryptionConfig", "expected apiVersion apiserver.config.k8s.io/v1"),
            (format!("{ns}-noset"), json!({"resourceSetName": "absent", "storage": {"name": storage}}), "Pending", "ResourceSetNotFound", "ResourceSet 'absent' not found"),
            (format!("{ns}-nostore"), json!({"resourceSetName": good_set, "storage": {"name": "absent"}}), "Pending", "StorageNotFound", "BackupStorage 'absent' not found"),
            (format!("{ns}-nokeys"), json!({"resourceSetName": good_set, "storage": {"name": storage}, "encryptionConfigSecretName": "absent"}), "Pending", "SecretNotFound", "absent"),
        ];
        for (name, spec, _, _, _) in &cases {
            create::<ResourceBackup>(&client, &ns, "ResourceBackup", name, spec.clone()).await?;
        }
        for (name, _, expected_phase, expected_reason, expected_message) in &cases {
            let api: Api<ResourceBackup> = Api::all(client.clone());
            let status = wait_for(&format!("ResourceBackup {name} to report {expected_reason}"), || async {
                let status = serde_json::to_value(api.get(name).await?)?["status"].clone();
                Ok((reason(&status) == *expected_reason).then_some(status))
            })
            .await?;
            assert_eq!(status["phase"], *expected_phase, "{name}: {status}");
            assert!(status.to_string().contains(expected_message), "{name}: {status}");
            wait_event(&client, name, "").await?;
        }

        // A good backup, then a corrupted archive and a wrong age key: Failed, nothing applied.
        Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "keep"}, "data": {"v": "1"}}))?)
            .await?;
        let good = format!("{ns}-good");
        create::<ResourceBackup>(&client, &ns, "ResourceBackup", &good, json!({"resourceSetName": good_set, "storage": {"name": storage}})).await?;
        let status = phase::<ResourceBackup>(&client, &good, &["Succeeded", "Failed"]).await?;
        let path = status["artifact"]["path"].as_str().context("path")?.to_string();
        Api::<ConfigMap>::namespaced(client.clone(), &ns).delete("keep", &Default::default()).await?;
        let file = s3.bucket_dir().join(&path);
        let mut bytes = std::fs::read(&file)?;
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&file, bytes)?;
        let corrupt = format!("{ns}-corrupt");
        create::<ResourceRestore>(&client, &ns, "ResourceRestore", &corrupt, json!({"backupName": good})).await?;
        let status = phase::<ResourceRestore>(&client, &corrupt, &["Succeeded", "PartiallyFailed", "Failed"]).await?;
        assert_eq!(status["phase"], "Failed", "{status}");
        assert_eq!(reason(&status), "IntegrityError", "{status}");
        wait_event(&client, &corrupt, "RestoreFailed").await?;
        assert!(Api::<ConfigMap>::namespaced(client.clone(), &ns).get_opt("keep").await?.is_none(), "nothing applied");

        let (_, recipient) = age_keygen()?;
        let (other_identity, _) = age_keygen()?;
        secret(&client, &config_ns, "other-age", json!({"key.txt": other_identity})).await?;
        let sealed = format!("{ns}-sealed");
        create::<ResourceBackup>(&client, &ns, "ResourceBackup", &sealed, json!({"resourceSetName": good_set, "storage": {"name": storage}, "encryption": {"recipients": [recipient]}})).await?;
        phase::<ResourceBackup>(&client, &sealed, &["Succeeded"]).await?;
        let wrong = format!("{ns}-wrongkey");
        create::<ResourceRestore>(&client, &ns, "ResourceRestore", &wrong, json!({"backupName": sealed, "decryptionKeySecretRef": {"name": "other-age", "key": "key.txt"}})).await?;
        let status = phase::<ResourceRestore>(&client, &wrong, &["Succeeded", "PartiallyFailed", "Failed"]).await?;
        assert_eq!(status["phase"], "Failed", "{status}");
        assert_eq!(reason(&status), "DecryptionFailed", "{status}");

        for (name, ..) in &cases {
            Api::<ResourceBackup>::all(client.clone()).delete(name, &Default::default()).await?;
        }
        for name in [good, sealed] {
            Api::<ResourceBackup>::all(client.clone()).delete(&name, &Default::default()).await?;
        }
        for name in [corrupt, wrong] {
            Api::<ResourceRestore>::all(client.clone()).delete(&name, &Default::default()).await?;
        }
        for name in [good_set, bad_set] {
            Api::<ResourceSet>::all(client.clone()).delete(&name, &Default::default()).await?;
        }
        Api::<Namespace>::all(client.clone()).delete(&config_ns, &Default::default()).await?;
        Ok(())
    })
    .await
}

/// A CRD `<plural>.<group>` of kind Gadget. Two of one group: the apiserver accepts the names
/// of the first, and refuses the second's (KindConflict), which is then never Established.
fn gadget_crd(group: &str, plural: &str) -> anyhow::Result<CustomResourceDefinition> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"kind": "Gadget", "plural": plural, "listKind": "GadgetList"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
    }))?)
}

#[tokio::test]
async fn deleting_a_running_restore_cancels_it_between_objects_and_scales_its_workload_back() -> anyhow::Result<()> {
    let bed = bed().await?;
    let s3 = S3Server::start("backups").await?;
    bed.with_namespace("rbk-cancel", |client, ns| async move {
        let config_ns = stowage_e2e::namespace::create_namespace(&client, "rbk-cancel-config").await?;
        let _controllers = start(&client, &config_ns, &ns).await?;
        populate(&client, &ns).await?;
        let storage = format!("{ns}-s3");
        s3_storage(&client, &s3, &config_ns, &storage).await?;

        // A restore applies its CRDs first and waits until they are Established (a minute at
        // most each) before anything else: three that never are hold the restore there, with
        // only its CRDs applied, for three minutes. A cancellation that did not end the wait
        // would be recorded after the Event wait below gave up.
        let group = format!("{ns}.stowage.io");
        let accepted = format!("gadgets.{group}");
        let refused: Vec<String> = ["doubles", "triples", "quads"].map(|p| format!("{p}.{group}")).into();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        stowage_e2e::crds::apply_crds(&client, &[gadget_crd(&group, "gadgets")?]).await?;
        for plural in ["doubles", "triples", "quads"] {
            crds.create(&PostParams::default(), &gadget_crd(&group, plural)?)
                .await?;
        }
        for name in &refused {
            wait_for(&format!("CRD {name} to be refused its names"), || async {
                let conditions = crds
                    .get(name)
                    .await?
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default();
                let names_refused = conditions
                    .iter()
                    .any(|c| c.type_ == "NamesAccepted" && c.status == "False");
                Ok(names_refused.then_some(()))
            })
            .await?;
        }

        let mut set = serde_json::to_value(resource_set(&ns))?;
        let mut names = refused.clone();
        names.push(accepted.clone());
        set["resourceSelectors"][1]["resourceNames"] = json!(names);
        create::<ResourceSet>(&client, &ns, "ResourceSet", &ns, set).await?;
        create::<ResourceBackup>(
            &client,
            &ns,
            "ResourceBackup",
            &ns,
            json!({"resourceSetName": ns, "storage": {"name": storage}, "retainPolicy": "Delete"}),
        )
        .await?;
        let status = phase::<ResourceBackup>(&client, &ns, &["Succeeded", "Failed"]).await?;
        assert_eq!(status["phase"], "Succeeded", "{status}");
        // Lost since the backup: a restore that ran to the end would bring it back.
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        config_maps.delete("settings", &Default::default()).await?;

        let restore = format!("{ns}-restore");
        create::<ResourceRestore>(&client, &ns, "ResourceRestore", &restore, json!({"backupName": ns})).await?;
        // The Deployment (a controllerReference) held at zero: the archive is verified and
        // being applied, and the restore is kept waiting for the refused CRD.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let replicas = || async { anyhow::Ok(deployments.get("web").await?.spec.and_then(|s| s.replicas)) };
        wait_for("the restore to hold Deployment web at zero replicas", || async {
            Ok((replicas().await? == Some(0)).then_some(()))
        })
        .await?;
        let restores: Api<ResourceRestore> = Api::all(client.clone());
        restores.delete(&restore, &Default::default()).await?;
        wait_for(&format!("ResourceRestore {restore} to be gone"), || async {
            Ok(restores.get_opt(&restore).await?.is_none().then_some(()))
        })
        .await?;

        // Recorded as cancelled, not as a restore that ran on after its object was deleted.
        let message = wait_event(&client, &restore, "RestoreCancelled").await?;
        assert!(
            message.starts_with("the ResourceRestore was deleted during its restore of")
                && message.contains("what was applied stays applied, nothing is rolled back")
                && message.contains("the 1 workload(s) held at zero replicas were scaled back"),
            "{message}"
        );
        let counted = message
            .split_once("stopped after ")
            .and_then(|(_, rest)| rest.split_once(" objects"))
            .and_then(|(counts, _)| counts.split_once(" of "))
            .and_then(|(done, total)| Some((done.parse::<u64>().ok()?, total.parse::<u64>().ok()?)));
        assert!(
            counted.is_some_and(|(done, total)| done < total),
            "fewer than all objects: {message}"
        );
        assert_eq!(
            replicas().await?,
            Some(2),
            "scaled back to its replicas before the restore"
        );
        assert!(
            config_maps.get_opt("settings").await?.is_none(),
            "the restore stopped before the namespace's objects"
        );

        Api::<ResourceBackup>::all(client.clone())
            .delete(&ns, &Default::default())
            .await?;
        Api::<ResourceSet>::all(client.clone())
            .delete(&ns, &Default::default())
            .await?;
        // The refused CRDs first, so that none takes the names the other one gives up.
        for name in refused.iter().chain([&accepted]) {
            crds.delete(name, &Default::default()).await?;
        }
        Api::<Namespace>::all(client.clone())
            .delete(&config_ns, &Default::default())
            .await?;
        Ok(())
    })
    .await
}
