#![allow(clippy::unwrap_used)]
//! The life of a run beyond its command: retainPolicy when its ExecBackup is deleted, a Pod
//! or the storage lost mid-run, and a run cancelled by deleting its object while it runs
//! (by a user, or a schedule's `concurrencyPolicy: Replace`): the command stops with its Pod,
//! the multipart upload is aborted, and the object goes; a new object of the same name created
//! at once runs on its own, untouched by the old run's end.

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use stowage_api::{ExecBackup, ExecPhase, ExecRestore};
use stowage_core::testing::S3Server;
use stowage_e2e::{bed, wait_for};
use support::*;

/// A BackupStorage on `s3` named after the namespace, with its credentials Secret.
async fn s3_storage(client: &kube::Client, ns: &str, s3: &S3Server) -> anyhow::Result<String> {
    let credentials = s3.credentials();
    secret(
        client,
        ns,
        "s3",
        json!({
            "accessKeyId": credentials.access_key_id,
            "secretAccessKey": credentials.secret_access_key,
        }),
    )
    .await?;
    let storage = format!("{ns}-s3");
    create_storage(
        client,
        &storage,
        json!({
            "type": "S3",
            "s3": s3.spec().s3,
            "retry": { "maxRetries": 1, "timeoutSeconds": 5 },
            "credentialsSecretRef": { "namespace": ns, "name": "s3" },
        }),
    )
    .await?;
    Ok(storage)
}

/// Waits until run `name` is Running.
async fn running<K>(api: &Api<K>, name: &str) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    wait_for(&format!("{name} to run"), || async {
        let object = serde_json::to_value(api.get(name).await?)?;
        Ok((object["status"]["phase"] == "Running").then_some(()))
    })
    .await
}

/// Waits until no Pod in `ns` carries `label` (e.g. `stowage.io/backup=nightly`).
async fn pods_gone(client: &kube::Client, ns: &str, label: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("the Pods with {label} to be gone"), || async {
        Ok(pods
            .list(&ListParams::default().labels(label))
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await
}

#[tokio::test]
async fn retain_policy_delete_removes_the_artifact_with_the_object_and_retain_keeps_it() {
    let bed = bed().await.unwrap();
    bed.with_namespace("exec-retain", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store");
        let storage = filesystem_storage(&client, &ns, &store).await?;
        for (name, policy) in [("deleted", "Delete"), ("kept", "Retain")] {
            create_backup(
                &client,
                &ns,
                name,
                json!({
                    "backup": { "command": ["sh", "-c", "seq 1 1000"] },
                    "storage": { "name": storage },
                    "retainPolicy": policy,
                    "template": idle_template(None, json!([])),
                }),
            )
            .await?;
        }
        let deleted = finished_backup(&client, &ns, "deleted").await?;
        let kept = finished_backup(&client, &ns, "kept").await?;
        assert!(
            deleted
                .metadata
                .finalizers
                .unwrap_or_default()
                .contains(&stowage_exec_backup_ctrl::FINALIZER.to_string())
        );
        let deleted_path = deleted.status.unwrap().artifact.unwrap().artifact.path;
        let kept_path = kept.status.unwrap().artifact.unwrap().artifact.path;
        assert!(store.join(&deleted_path).exists() && store.join(&kept_path).exists());

        let api: Api<ExecBackup> = Api::namespaced(client.clone(), &ns);
        for name in ["deleted", "kept"] {
            api.delete(name, &DeleteParams::default()).await?;
        }
        wait_for("both ExecBackups to be gone", || async {
            Ok(api.list(&ListParams::default()).await?.items.is_empty().then_some(()))
        })
        .await?;
        assert!(
            !store.join(&deleted_path).exists(),
            "retainPolicy Delete removes the payload"
        );
        assert!(
            !store.join(format!("{deleted_path}.manifest.json")).exists(),
            "and its manifest"
        );
        assert!(store.join(&kept_path).exists(), "retainPolicy Retain keeps the data");
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_lost_pod_or_a_storage_outage_fails_the_run_and_commits_nothing() {
    let bed = bed().await.unwrap();
    let mut s3 = stowage_core::testing::S3Server::start("exec-outage").await.unwrap();
    bed.with_namespace("exec-lost", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let storage = s3_storage(&client, &ns, &s3).await?;
        let api: Api<ExecBackup> = Api::namespaced(client.clone(), &ns);

        // The Pod disappears mid-run (evicted, its node lost).
        create_backup(
            &client,
            &ns,
            "lost-pod",
            json!({
                "backup": { "command": ["sh", "-c", "seq 1 100000; sleep 600"] },
                "storage": { "name": storage },
                "template": idle_template(None, json!([])),
            }),
        )
        .await?;
        running(&api, "lost-pod").await?;
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
        pods.delete("lost-pod-backup", &DeleteParams::default().grace_period(0))
            .await?;
        let lost = finished_backup(&client, &ns, "lost-pod").await?.status.unwrap();
        assert_eq!(lost.phase, ExecPhase::Failed, "{lost:#?}");
        assert!(lost.artifact.is_none());

        // The storage goes down while the command is still dumping.
        create_backup(
            &client,
            &ns,
            "outage",
            json!({
                "backup": { "command": ["sh", "-c", "seq 1 100000; sleep 3; seq 1 100000"] },
                "storage": { "name": storage },
                "template": idle_template(None, json!([])),
            }),
        )
        .await?;
        running(&api, "outage").await?;
        s3.kill();
        let outage = finished_backup(&client, &ns, "outage").await?.status.unwrap();
        assert_eq!(outage.phase, ExecPhase::Failed, "{outage:#?}");
        assert_eq!(
            condition(&outage.conditions, "Failed").1,
            "StorageUnavailable",
            "{outage:#?}"
        );

        // Back up again: neither failed run left an object or an open upload behind.
        s3.restart().await?;
        assert_eq!(s3.open_uploads(), Vec::<String>::new(), "no multipart upload left open");
        let objects = files_under(&s3.bucket_dir());
        assert!(
            objects
                .iter()
                .all(|o| !o.to_string_lossy().contains("lost-pod") && !o.to_string_lossy().contains("outage")),
            "{objects:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn deleting_a_running_backup_cancels_it_and_leaves_nothing_in_the_storage() {
    let bed = bed().await.unwrap();
    let s3 = S3Server::start("exec-cancel").await.unwrap();
    bed.with_namespace("exec-cancel", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let storage = s3_storage(&client, &ns, &s3).await?;
        // 24 MB that do not compress, then a command that takes its time: the upload is a
        // multipart one with parts stored when the run is deleted. With retainPolicy Delete
        // the finalizer holds the object until the run is cancelled; with Retain it goes at
        // once and the run notices it gone.
        let runs = [("held", "Delete"), ("unheld", "Retain")];
        for (name, policy) in runs {
            create_backup(
                &client,
                &ns,
                name,
                json!({
                    "backup": { "command": ["sh", "-c", "head -c 24000000 /dev/urandom; sleep 600"] },
                    "storage": { "name": storage },
                    "compression": { "algorithm": "none" },
                    "retainPolicy": policy,
                    "template": idle_template(None, json!([])),
                }),
            )
            .await?;
        }
        let api: Api<ExecBackup> = Api::namespaced(client.clone(), &ns);
        for (name, _) in runs {
            running(&api, name).await?;
        }
        wait_for("both runs' multipart uploads to hold parts", || async {
            let open = s3.open_uploads();
            let uploads = open.iter().filter(|n| n.ends_with(".json")).count();
            let parts = open.iter().filter(|n| n.contains(".part-")).count();
            Ok((uploads == 2 && parts >= 2).then_some(()))
        })
        .await?;

        for (name, _) in runs {
            api.delete(name, &DeleteParams::default()).await?;
        }
        wait_for("both ExecBackups to be gone", || async {
            Ok(api.list(&ListParams::default()).await?.items.is_empty().then_some(()))
        })
        .await?;
        for (name, _) in runs {
            pods_gone(&client, &ns, &format!("stowage.io/backup={name}")).await?;
            // The Event follows the Pod's deletion and the final status write.
            let reasons = wait_for("a BackupCancelled Event", || async {
                let reasons = event_reasons(&client, &ns, name).await?;
                Ok(reasons.contains(&"BackupCancelled".into()).then_some(reasons))
            })
            .await?;
            assert!(!reasons.contains(&"BackupSucceeded".into()), "{name}: {reasons:?}");
        }
        wait_for("no multipart upload left open", || async {
            Ok(s3.open_uploads().is_empty().then_some(()))
        })
        .await?;
        assert_eq!(
            files_under(&s3.bucket_dir()),
            Vec::<std::path::PathBuf>::new(),
            "no payload and no manifest"
        );
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_running_backup_deleted_and_created_again_at_once_leaves_the_new_one_to_run() {
    let bed = bed().await.unwrap();
    bed.with_namespace("exec-replaced", |client, ns| async move {
        // The controller reaches the API server through a gate that the test holds while it
        // replaces the object: the old run learns of the deletion only once the new object
        // exists, as with a quick `kubectl delete -f x.yaml && kubectl apply -f x.yaml`.
        let (gate, gated) = stowage_e2e::gate::gated_client(bed).await?;
        let _controller = start_controller(&gated, &ns).await?;
        let dir = tempfile::tempdir()?;
        let storage = filesystem_storage(&client, &ns, dir.path()).await?;
        let spec = |script: &str| {
            json!({
                "backup": { "command": ["sh", "-c", script] },
                "storage": { "name": storage },
                "compression": { "algorithm": "none" },
                "template": idle_template(None, json!([])),
            })
        };
        let api: Api<ExecBackup> = Api::namespaced(client.clone(), &ns);
        create_backup(&client, &ns, "nightly", spec("echo old; sleep 600")).await?;
        running(&api, "nightly").await?;
        let old = api.get("nightly").await?.metadata.uid.unwrap();
        let log = StatusLog::start(api.clone(), "nightly");
        log.seen(&old).await?;

        gate.hold();
        api.delete("nightly", &DeleteParams::default()).await?;
        create_backup(&client, &ns, "nightly", spec("echo new")).await?;
        let new = api.get("nightly").await?.metadata.uid.unwrap();
        gate.release();

        let backup = finished_backup(&client, &ns, "nightly").await?;
        assert_eq!(backup.metadata.uid.as_deref(), Some(new.as_str()));
        let status = backup.status.unwrap();
        assert_eq!(status.phase, ExecPhase::Succeeded, "{status:#?}");
        let artifact = status.artifact.unwrap().artifact;
        assert_eq!(std::fs::read(dir.path().join(&artifact.path))?, b"new\n");
        // The old run's end is recorded where it belongs: an Event about the old object.
        wait_uid_events(&client, &ns, &old, &["BackupCancelled"]).await?;
        let reasons = wait_uid_events(&client, &ns, &new, &["BackupStarted", "BackupSucceeded"]).await?;
        assert!(!reasons.contains(&"BackupCancelled".into()), "{reasons:?}");
        log.assert_never_ended_badly(&new);
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn deleting_a_running_restore_kills_its_command_before_the_end_of_its_input() {
    let bed = bed().await.unwrap();
    bed.with_namespace("exec-cancel-restore", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let dir = tempfile::tempdir()?;
        let (store, out) = (dir.path().join("store"), dir.path().join("out"));
        std::fs::create_dir_all(&out)?;
        let storage = filesystem_storage(&client, &ns, &store).await?;
        let template = idle_template(Some(&out), json!([]));
        create_backup(
            &client,
            &ns,
            "source",
            json!({
                "backup": { "command": ["sh", "-c", "seq 1 3000000"] },
                "storage": { "name": storage },
                "template": template,
            }),
        )
        .await?;
        let source = finished_backup(&client, &ns, "source").await?.status.unwrap();
        assert_eq!(source.phase, ExecPhase::Succeeded, "{source:#?}");

        // A restore command that takes its time before it reads its input.
        create_restore(
            &client,
            &ns,
            "slow",
            json!({
                "backupRef": { "name": "source" },
                "restore": { "command": ["sh", "-c", "touch /out/started; sleep 600; cat > /dev/null; touch /out/complete"] },
            }),
        )
        .await?;
        // Someone else's finalizer holds the deleted object, so its Pod is not garbage
        // collected: only the controller's watch of the deletion can stop the run.
        let api: Api<ExecRestore> = Api::namespaced(client.clone(), &ns);
        let hold = |finalizers: serde_json::Value| json!({ "metadata": { "finalizers": finalizers } });
        api.patch("slow", &PatchParams::default(), &Patch::Merge(hold(json!(["test.stowage.io/hold"]))))
            .await?;
        running(&api, "slow").await?;
        wait_for("the restore command to start", || async {
            Ok(out.join("started").exists().then_some(()))
        })
        .await?;
        api.delete("slow", &DeleteParams::default()).await?;
        pods_gone(&client, &ns, "stowage.io/restore=slow").await?;
        wait_for("a RestoreCancelled Event", || async {
            let reasons = event_reasons(&client, &ns, "slow").await?;
            Ok(reasons.contains(&"RestoreCancelled".into()).then_some(reasons))
        })
        .await?;
        assert!(
            !out.join("complete").exists(),
            "the restore command must not finish"
        );
        let held = api.get("slow").await?.status.unwrap();
        assert_eq!(held.phase, ExecPhase::Failed, "{held:#?}");
        assert_eq!(condition(&held.conditions, "Failed").1, "Cancelled", "{held:#?}");
        api.patch("slow", &PatchParams::default(), &Patch::Merge(hold(json!(null))))
            .await?;
        wait_for("the released ExecRestore to be gone", || async {
            Ok(api.get_opt("slow").await?.is_none().then_some(()))
        })
        .await?;
        Ok(())
    })
    .await
    .unwrap();
}
