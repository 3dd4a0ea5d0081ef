//! The resources step: a sample application in namespace `shop` (a Deployment whose
//! ReplicaSet and Pods the bed's controller-manager creates, a ConfigMap, a Secret, RBAC),
//! resource-backup-ctrl in-process, and the files of `examples/resource-backup` applied with the
//! demo's own age key and storage directory: the ResourceSets, a ResourceBackup (Secrets
//! encrypted inside the archive as the API server encrypts them at rest, the whole archive
//! with age), then, after the namespace drifted, a dry-run ResourceRestore whose plan says what
//! a restore would create, update and delete.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::discovery::Discovery;
use serde_json::{Value, json};
use stowage_api::{ResourceBackup, ResourceBackupPhase, ResourceRestore, ResourceRestorePhase};
use stowage_core::human_bytes;
use stowage_e2e::bed::{TestBed, wait_for};
use stowage_e2e::support::finished_in;

use super::{Demo, apply, create_secret, file_name, fresh_namespace, scenario_files};

/// The controller's namespace (its Secrets live here).
const SYSTEM: &str = "stowage-demo";
/// The sample application's namespace, as the example's ResourceSet names it.
const APP: &str = "shop";
const SCENARIO: &str = "examples/resource-backup";
/// An aescbc key for the EncryptionConfiguration (32 bytes, base64).
const AESCBC_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub async fn tour(bed: &TestBed, demo: &Demo) -> anyhow::Result<()> {
    let client = bed.client();
    eprintln!("==> the sample application in namespace {APP}");
    fresh_namespace(&client, SYSTEM).await?;
    fresh_namespace(&client, APP).await?;
    populate(&client).await?;

    eprintln!("==> resource-backup-ctrl, with its Secrets in {SYSTEM}");
    let metrics = Arc::new(stowage_operator::Metrics::new()?);
    let ctx = Arc::new(stowage_operator::Context::new(
        client.clone(),
        "resource-backup-ctrl",
        SYSTEM,
        None,
        metrics.clone(),
    ));
    let controller = tokio::spawn(stowage_resource_backup_ctrl::run(ctx.clone()));
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let identity_text = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_string();
    let key_file = demo.dir.join("resources-key.txt");
    std::fs::write(&key_file, format!("{identity_text}\n"))?;
    create_secret(&client, SYSTEM, "shop-age", json!({ "key.txt": identity_text })).await?;
    let encryption_config = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys: [{{name: key1, secret: \"{AESCBC_KEY}\"}}]\n  - identity: {{}}\n"
    );
    create_secret(
        &client,
        SYSTEM,
        "shop-encryption",
        json!({ "encryption-provider-config.yaml": encryption_config }),
    )
    .await?;

    eprintln!("==> applying {SCENARIO}: storage, ResourceSets, the backup");
    let files = scenario_files(&demo.root.join(SCENARIO))?;
    let discovery = Discovery::new(client.clone()).run().await?;
    // Earlier demo runs left their objects behind: start from fresh ones.
    let _ = Api::<ResourceBackup>::all(client.clone())
        .delete("shop-manual", &DeleteParams::default())
        .await;
    let _ = Api::<ResourceRestore>::all(client.clone())
        .delete("shop-plan", &DeleteParams::default())
        .await;
    let started = Instant::now();
    for file in files.iter().filter(|f| file_name(f).as_str() < "30") {
        apply(&client, &discovery, file, SYSTEM, &demo.store_dir, &recipient).await?;
    }
    let backup: ResourceBackup = finished_in(&Api::all(client.clone()), "shop-manual").await?;
    let backup_time = started.elapsed();
    let status = backup.status.clone().unwrap_or_default();
    anyhow::ensure!(
        status.phase == ResourceBackupPhase::Succeeded,
        "the backup failed: {status:#?}"
    );
    let artifact = status
        .artifact
        .clone()
        .context("a succeeded backup has an artifact")?
        .artifact;
    println!("{}", bed.kubectl(["get", "resourcebackups", "-o", "wide"]).await?);
    let archive = demo.store_dir.join(&artifact.path);
    let listing = Command::new("bash")
        .args([
            "-o",
            "pipefail",
            "-c",
            &format!(
                "age -d -i {} {} | gunzip | tar -t",
                key_file.display(),
                archive.display()
            ),
        ])
        .output()?;
    anyhow::ensure!(listing.status.success(), "age -d | gunzip | tar -t failed");
    println!("age -d | gunzip | tar -t:");
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        println!("  {line}");
    }

    eprintln!("==> the namespace drifts: a ConfigMap deleted, one added, the Deployment scaled");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), APP);
    config_maps.delete("settings", &DeleteParams::default()).await?;
    let extra: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "added-later"}, "data": {"x": "1"}}))?;
    config_maps.create(&PostParams::default(), &extra).await?;
    Api::<Deployment>::namespaced(client.clone(), APP)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await?;

    eprintln!("==> the dry-run restore: its plan, nothing changed");
    let started = Instant::now();
    for file in files.iter().filter(|f| file_name(f).starts_with("30-")) {
        apply(&client, &discovery, file, SYSTEM, &demo.store_dir, &recipient).await?;
    }
    let restore: ResourceRestore = finished_in(&Api::all(client.clone()), "shop-plan").await?;
    let plan_time = started.elapsed();
    let planned = restore.status.unwrap_or_default();
    anyhow::ensure!(
        planned.phase == ResourceRestorePhase::Succeeded,
        "the dry run failed: {planned:#?}"
    );
    anyhow::ensure!(
        config_maps.get_opt("settings").await?.is_none(),
        "a dry run changes nothing"
    );
    println!("{}", bed.kubectl(["get", "resourcerestores"]).await?);
    let plan = planned.plan.unwrap_or_default();

    println!("| step | result |");
    println!("|---|---|");
    println!(
        "| backup | ResourceBackup `shop-manual` of ResourceSet `shop`: {} objects ({} Secrets encrypted with aescbc inside the archive) in {:.1} s |",
        status.object_count.unwrap_or(0),
        status.encrypted_objects.unwrap_or(0),
        backup_time.as_secs_f64()
    );
    println!(
        "| kinds | {} |",
        status
            .kinds
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| archive | {} ({} stored, {} tar), age-encrypted |",
        artifact.path,
        human_bytes(artifact.stored_bytes),
        human_bytes(artifact.plaintext_bytes)
    );
    println!(
        "| dry-run restore | ResourceRestore `shop-plan` (prune), {:.1} s: {} |",
        plan_time.as_secs_f64(),
        counts(&planned.counts)
    );
    println!("| would create | {} |", plan.create.join(", "));
    println!("| would update | {} |", plan.update.join(", "));
    println!("| would delete | {} |", plan.delete.join(", "));
    println!("| unchanged | {} objects |", plan.unchanged.len());
    println!();
    println!(
        "Read it without Stowage: age -d -i {} {} | gunzip | tar -x",
        key_file.display(),
        archive.display()
    );
    let metrics_text = metrics.render();
    for line in metrics_text.lines().filter(|l| l.starts_with("stowage_resource_")) {
        println!("  {line}");
    }
    ctx.shutdown.cancel();
    let _ = controller.await;
    Ok(())
}

fn counts(counts: &stowage_api::resource_restore::RestoreCounts) -> String {
    format!(
        "{} create, {} update, {} unchanged, {} delete",
        counts.created, counts.updated, counts.unchanged, counts.deleted
    )
}

/// The application: a Deployment (its ReplicaSet and Pods follow), a ConfigMap, a Secret, a
/// ServiceAccount with a Role and RoleBinding, and a ClusterRole labelled as part of it.
async fn populate(client: &kube::Client) -> anyhow::Result<()> {
    let objects: Vec<Value> = vec![
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": APP}, "data": {"mode": "fast"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": APP}, "stringData": {"password": "correct-horse-battery-staple"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": APP}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "web", "namespace": APP},
               "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "web", "namespace": APP},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "web"},
               "subjects": [{"kind": "ServiceAccount", "name": "web", "namespace": APP}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "shop-reader", "labels": {"app.kubernetes.io/part-of": "shop"}},
               "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}]}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": APP},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "nginx:1.25"}]}}}}),
    ];
    let discovery = Discovery::new(client.clone()).run().await?;
    let params = PatchParams::apply("stowage-demo").force();
    for object in objects {
        let object: kube::core::DynamicObject = serde_json::from_value(object)?;
        let gvk = kube::core::GroupVersionKind::try_from(object.types.as_ref().context("typed")?)?;
        let (resource, capabilities) = discovery.resolve_gvk(&gvk).context("served")?;
        let name = object.metadata.name.clone().context("named")?;
        let api: Api<kube::core::DynamicObject> = match capabilities.scope {
            kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
            kube::discovery::Scope::Namespaced => Api::namespaced_with(client.clone(), APP, &resource),
        };
        api.patch(&name, &params, &Patch::Apply(&object)).await?;
    }
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), APP);
    wait_for(
        "the Deployment's Pods (kube-controller-manager creates them)",
        || async { Ok((pods.list(&Default::default()).await?.items.len() >= 2).then_some(())) },
    )
    .await
}
