#![allow(clippy::unwrap_used)]
//! VolumeBackup end to end: the controller in-process against the real apiserver and
//! controller-manager, the application's Pods run by the node simulator (hooks reach them
//! through the apiserver's exec), snapshots by the CSI simulator, copies in a Filesystem
//! BackupStorage checked with the stock `age`, `gunzip` and `tar`.

mod support;

use kube::api::{Api, DeleteParams};
use serde_json::json;
use stowage_api::{VolumeBackup, VolumeBackupPhase};
use stowage_e2e::csi::{FAIL_SNAPSHOT_ANNOTATION, READY_DELAY_ANNOTATION};
use stowage_e2e::support::{age_keygen, sh};
use stowage_e2e::{bed, wait_for};
use support::writer::*;
use support::*;

const MAX_FREEZE_SECONDS: i64 = 30;

#[tokio::test]
async fn a_deployment_is_snapshotted_between_its_freeze_and_thaw_hooks() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vb-cut", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let live = writer_deployment(&client, &ns, "app", "data", hooks(PRE_HOOK, POST_HOOK)).await?;
        create::<VolumeBackup>(
            &client,
            &ns,
            "cut",
            json!({
                "applicationRef": { "kind": "Deployment", "name": "app" },
                "maxFreezeSeconds": MAX_FREEZE_SECONDS,
                "hookTimeoutSeconds": 20,
            }),
        )
        .await?;
        let backup = finished::<VolumeBackup>(&client, &ns, "cut").await?;
        let status = backup.status.clone().unwrap();
        assert_eq!(status.phase, VolumeBackupPhase::Succeeded, "{status:#?}");
        assert_eq!(status.volumes.len(), 1);
        let volume = &status.volumes[0];
        assert_eq!(volume.pvc, "data");
        assert!(volume.ready_to_use && volume.restore_size.is_some(), "{volume:#?}");
        assert_eq!(status.pods.len(), 1);
        assert!(status.pods[0].frozen && status.pods[0].thawed, "{:#?}", status.pods);

        // The snapshot holds exactly the records written up to the freeze, and the freeze
        // marker; the thaw marker came after the cut.
        let snapshot = volume.volume_snapshot.clone().unwrap();
        let (copy, cut_ns) = snapshot_content(&client, &ns, &snapshot).await?;
        let frozen = marker(&copy, "freeze-marker")?;
        let (freeze_ns, frozen_count) = (frozen[0], frozen[1] as usize);
        let in_snapshot = records(&copy)?;
        assert_eq!(
            in_snapshot.len(),
            frozen_count,
            "the snapshot holds the records at the freeze"
        );
        assert_eq!(in_snapshot, (1..=frozen_count as u64).collect::<Vec<_>>());
        assert!(!copy.join("thaw-marker").exists(), "the thaw came after the cut");
        let thaw_ns = marker(&live, "thaw-marker")?[0];
        assert!(freeze_ns < cut_ns, "freeze {freeze_ns} precedes the cut {cut_ns}");
        assert!(cut_ns < thaw_ns, "the cut {cut_ns} precedes the thaw {thaw_ns}");
        assert!(
            thaw_ns - freeze_ns < MAX_FREEZE_SECONDS * 1_000_000_000,
            "frozen for {} ns",
            thaw_ns - freeze_ns
        );
        let frozen_ms = status.frozen_milliseconds.unwrap();
        assert!(frozen_ms < MAX_FREEZE_SECONDS as u64 * 1000, "{frozen_ms} ms");
        // The application went on after the thaw.
        records_at_least(&live, frozen_count + 5).await?;

        for (type_, value) in [
            ("Frozen", "False"),
            ("SnapshotsCreated", "True"),
            ("Thawed", "True"),
            ("SnapshotsReady", "True"),
            ("Ready", "True"),
        ] {
            assert_eq!(condition(&status.conditions, type_).0, value, "{type_}: {status:#?}");
        }
        wait_events(
            &client,
            &ns,
            "cut",
            &[
                "BackupStarted",
                "Frozen",
                "SnapshotsCreated",
                "Thawed",
                "SnapshotsReady",
                "BackupSucceeded",
            ],
        )
        .await?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_copy_untars_with_the_stock_tools_to_the_snapshots_files_and_goes_with_retain_policy_delete() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vb-copy", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let live = writer_deployment(&client, &ns, "app", "data", hooks(PRE_HOOK, POST_HOOK)).await?;
        std::fs::create_dir_all(live.join("nested/deeper"))?;
        std::fs::write(live.join("nested/deeper/blob"), vec![7u8; 300_000])?;
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store");
        let storage = filesystem_storage(&client, &ns, &store).await?;
        let (identity, public) = age_keygen()?;
        create::<VolumeBackup>(
            &client,
            &ns,
            "copied",
            json!({
                "pvcNames": ["data"],
                "copy": {
                    "storage": { "name": storage },
                    "encryption": { "recipients": [public] },
                },
                "retainPolicy": "Delete",
            }),
        )
        .await?;
        let backup = finished::<VolumeBackup>(&client, &ns, "copied").await?;
        let status = backup.status.clone().unwrap();
        assert_eq!(status.phase, VolumeBackupPhase::Succeeded, "{status:#?}");
        assert_eq!(condition(&status.conditions, "Copied").0, "True", "{status:#?}");
        let volume = &status.volumes[0];
        let artifact = volume.artifact.clone().unwrap();
        let path = &artifact.artifact.path;
        assert!(
            path.starts_with(&format!("backups/volumebackup/{ns}/copied/")),
            "{path}"
        );
        assert!(path.ends_with("/data.tar.gz.age"), "{path}");
        assert!(store.join(format!("{path}.manifest.json")).exists());

        // Without Stowage: age -d | gunzip | tar -x gives exactly the snapshot's files.
        let key = dir.path().join("key.txt");
        std::fs::write(&key, identity)?;
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out)?;
        sh(&format!(
            "age -d -i {} {} | gunzip | tar -x -C {}",
            key.display(),
            store.join(path).display(),
            out.display()
        ))?;
        let (copy, _) = snapshot_content(&client, &ns, volume.volume_snapshot.as_deref().unwrap()).await?;
        let expected = tree(&copy);
        assert!(expected.contains_key("nested/deeper/blob"));
        assert_eq!(tree(&out), expected, "the copy holds exactly the snapshot's files");

        // The temporary Pod and PVC are gone.
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
        let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        wait_for("the temporary Pod and PVC to go", || async {
            let gone =
                pods.get_opt("copied-copy-0").await?.is_none() && claims.get_opt("copied-copy-0").await?.is_none();
            Ok(gone.then_some(()))
        })
        .await?;

        // retainPolicy Delete: the copy and the snapshot go before the object.
        let api: Api<VolumeBackup> = Api::namespaced(client.clone(), &ns);
        api.delete("copied", &DeleteParams::default()).await?;
        wait_for("the VolumeBackup to be deleted", || async {
            Ok(api.get_opt("copied").await?.is_none().then_some(()))
        })
        .await?;
        assert!(!store.join(path).exists(), "the copy was deleted");
        assert!(!store.join(format!("{path}.manifest.json")).exists());
        assert!(snapshots(&client, &ns).await?.is_empty(), "the snapshot was deleted");
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failed_snapshot_thaws_the_application_and_fails_the_backup() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vb-snapfail", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let live = writer_deployment(&client, &ns, "app", "data", hooks(PRE_HOOK, POST_HOOK)).await?;
        annotate_claim(
            &client,
            &ns,
            "data",
            FAIL_SNAPSHOT_ANNOTATION,
            "the disk array is on fire",
        )
        .await?;
        create::<VolumeBackup>(&client, &ns, "doomed", json!({ "pvcNames": ["data"] })).await?;
        let backup = finished::<VolumeBackup>(&client, &ns, "doomed").await?;
        let status = backup.status.clone().unwrap();
        assert_eq!(status.phase, VolumeBackupPhase::Failed, "{status:#?}");
        let (_, reason, message) = condition(&status.conditions, "Failed");
        assert_eq!(reason, "SnapshotFailed");
        assert!(message.contains("the disk array is on fire"), "{message}");
        assert_eq!(condition(&status.conditions, "SnapshotsCreated").0, "False");
        assert_eq!(condition(&status.conditions, "Thawed").0, "True");
        assert!(live.join("thaw-marker").exists(), "the application was thawed");
        assert!(!live.join("frozen").exists());
        wait_for("the failed snapshot to be deleted", || async {
            Ok(snapshots(&client, &ns).await?.is_empty().then_some(()))
        })
        .await?;
        wait_events(&client, &ns, "doomed", &["BackupFailed"]).await?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn deleting_a_backup_waiting_for_its_snapshots_cancels_it_after_the_thaw() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vb-cancel", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let live = writer_deployment(&client, &ns, "app", "data", hooks(PRE_HOOK, POST_HOOK)).await?;
        // Snapshots of this claim become ready to use after a day: the backup waits on them.
        annotate_claim(&client, &ns, "data", READY_DELAY_ANNOTATION, "86400").await?;
        create::<VolumeBackup>(
            &client,
            &ns,
            "waiting",
            json!({ "pvcNames": ["data"], "retainPolicy": "Delete" }),
        )
        .await?;
        let api: Api<VolumeBackup> = Api::namespaced(client.clone(), &ns);
        wait_for("the snapshot to be cut and the application thawed", || async {
            let conditions = api.get("waiting").await?.status.unwrap_or_default().conditions;
            let done = |type_| condition(&conditions, type_).0 == "True";
            Ok((done("SnapshotsCreated") && done("Thawed")).then_some(()))
        })
        .await?;
        api.delete("waiting", &DeleteParams::default()).await?;
        // Gone long before the snapshot is ready: the wait was cancelled, and the finalizer
        // deleted the snapshot.
        wait_for("the VolumeBackup to be deleted", || async {
            Ok(api.get_opt("waiting").await?.is_none().then_some(()))
        })
        .await?;
        wait_events(&client, &ns, "waiting", &["BackupCancelled"]).await?;
        wait_for("the snapshot to be deleted", || async {
            Ok(snapshots(&client, &ns).await?.is_empty().then_some(()))
        })
        .await?;
        assert!(live.join("thaw-marker").exists(), "the application was thawed");
        assert!(!live.join("frozen").exists());
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failing_pre_hook_takes_no_snapshot_and_thaws_anyway() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vb-prehook", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let pre = "touch /data/frozen; echo cannot lock >&2; exit 1";
        let live = writer_deployment(&client, &ns, "app", "data", hooks(pre, POST_HOOK)).await?;
        create::<VolumeBackup>(
            &client,
            &ns,
            "locked",
            json!({ "applicationRef": { "kind": "Deployment", "name": "app" } }),
        )
        .await?;
        let backup = finished::<VolumeBackup>(&client, &ns, "locked").await?;
        let status = backup.status.clone().unwrap();
        assert_eq!(status.phase, VolumeBackupPhase::Failed, "{status:#?}");
        let (_, reason, message) = condition(&status.conditions, "Failed");
        assert_eq!(reason, "PreHookFailed");
        assert!(
            message.contains("exited with code 1") && message.contains("cannot lock"),
            "{message}"
        );
        assert!(snapshots(&client, &ns).await?.is_empty(), "no snapshot was taken");
        assert!(
            status.volumes.iter().all(|v| v.volume_snapshot.is_none()),
            "{status:#?}"
        );
        assert!(live.join("thaw-marker").exists(), "the application was thawed");
        assert_eq!(condition(&status.conditions, "Thawed").0, "True");
        wait_events(&client, &ns, "locked", &["PreHookFailed"]).await?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_freeze_longer_than_max_freeze_seconds_is_cut_short_and_thawed() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vb-maxfreeze", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let pre = "touch /data/frozen; sleep 30; echo late > /data/late";
        let live = writer_deployment(&client, &ns, "app", "data", hooks(pre, POST_HOOK)).await?;
        create::<VolumeBackup>(
            &client,
            &ns,
            "slow",
            json!({
                "applicationRef": { "kind": "Deployment", "name": "app" },
                "maxFreezeSeconds": 2,
                "hookTimeoutSeconds": 60,
            }),
        )
        .await?;
        let backup = finished::<VolumeBackup>(&client, &ns, "slow").await?;
        let status = backup.status.clone().unwrap();
        assert_eq!(status.phase, VolumeBackupPhase::Failed, "{status:#?}");
        let (_, reason, message) = condition(&status.conditions, "Failed");
        assert_eq!(reason, "FreezeTimeout");
        assert!(message.contains("maxFreezeSeconds (2s)"), "{message}");
        assert_eq!(condition(&status.conditions, "Thawed").0, "True");
        assert!(live.join("thaw-marker").exists(), "the application was thawed");
        let before = records(&live)?.len();
        records_at_least(&live, before + 5).await?;
        assert!(snapshots(&client, &ns).await?.is_empty());
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_controller_stopped_while_the_application_is_frozen_thaws_it_after_restart() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vb-restart", |client, ns| async move {
        let controller = start_controller(&client, &ns).await?;
        // The freeze takes long enough for the controller to be stopped in the middle of it.
        let pre = format!("{PRE_HOOK} && sleep 5");
        let live = writer_deployment(&client, &ns, "app", "data", hooks(&pre, POST_HOOK)).await?;
        create::<VolumeBackup>(
            &client,
            &ns,
            "interrupted",
            json!({ "applicationRef": { "kind": "Deployment", "name": "app" } }),
        )
        .await?;
        let api: Api<VolumeBackup> = Api::namespaced(client.clone(), &ns);
        wait_for("the backup to freeze the application", || async {
            let backup = api.get("interrupted").await?;
            let conditions = backup.status.map(|s| s.conditions).unwrap_or_default();
            Ok((condition(&conditions, "Frozen").0 == "True").then_some(()))
        })
        .await?;
        // The node simulator ends an exec whose connection closed: stop the controller only
        // once the hook has frozen the writer.
        wait_for("the pre-hook to have frozen the writer", || async {
            Ok(live.join("freeze-marker").exists().then_some(()))
        })
        .await?;
        drop(controller);
        assert!(!live.join("thaw-marker").exists());

        let _controller = start_controller(&client, &ns).await?;
        let backup = finished::<VolumeBackup>(&client, &ns, "interrupted").await?;
        let status = backup.status.clone().unwrap();
        assert_eq!(status.phase, VolumeBackupPhase::Failed, "{status:#?}");
        assert_eq!(condition(&status.conditions, "Failed").1, "Interrupted");
        assert_eq!(condition(&status.conditions, "Thawed").0, "True");
        assert!(
            live.join("thaw-marker").exists(),
            "the restarted controller thawed the application"
        );
        let before = records(&live)?.len();
        records_at_least(&live, before + 5).await?;
        assert!(
            snapshots(&client, &ns).await?.is_empty(),
            "{:?}",
            snapshots(&client, &ns).await?.keys()
        );
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_statefulset_with_two_replicas_gets_one_snapshot_per_claim() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vb-sts", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        apply(
            &client,
            &ns,
            json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": { "name": "db" },
                "spec": {
                    "replicas": 2,
                    "serviceName": "db",
                    "selector": { "matchLabels": { "app": "db" } },
                    "template": writer_template("db", None, hooks(PRE_HOOK, POST_HOOK)),
                    "volumeClaimTemplates": [{
                        "metadata": { "name": "data" },
                        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "64Mi" } } },
                    }],
                },
            }),
        )
        .await?;
        running_pods(&client, &ns, "db", 2).await?;
        let dirs = [volume_dir(&client, &ns, "data-db-0").await?, volume_dir(&client, &ns, "data-db-1").await?];
        for dir in &dirs {
            records_at_least(dir, 5).await?;
        }
        create::<VolumeBackup>(&client, &ns, "both", json!({ "applicationRef": { "kind": "StatefulSet", "name": "db" } })).await?;
        let backup = finished::<VolumeBackup>(&client, &ns, "both").await?;
        let status = backup.status.clone().unwrap();
        assert_eq!(status.phase, VolumeBackupPhase::Succeeded, "{status:#?}");
        let pvcs: Vec<&str> = status.volumes.iter().map(|v| v.pvc.as_str()).collect();
        assert_eq!(pvcs, ["data-db-0", "data-db-1"]);
        assert_eq!(status.pods.len(), 2);
        assert!(status.pods.iter().all(|p| p.frozen && p.thawed), "{:#?}", status.pods);
        for volume in &status.volumes {
            let (copy, _) = snapshot_content(&client, &ns, volume.volume_snapshot.as_deref().unwrap()).await?;
            let frozen_count = marker(&copy, "freeze-marker")?[1] as usize;
            assert_eq!(records(&copy)?.len(), frozen_count, "{}", volume.pvc);
        }
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn bad_targets_fail_with_a_clear_condition_and_event() {
    let bed = bed().await.unwrap();
    bed.with_namespace("vb-bad", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let cases = [
            (
                "no-app",
                json!({ "applicationRef": { "kind": "Deployment", "name": "ghost" } }),
                "ApplicationNotFound",
                "Deployment 'ghost' not found",
            ),
            (
                "no-pvcs",
                json!({ "pvcSelector": { "matchLabels": { "nothing": "here" } } }),
                "NoVolumes",
                "no PersistentVolumeClaims",
            ),
            (
                "no-claim",
                json!({ "pvcNames": ["missing"] }),
                "PVCNotFound",
                "'missing' not found",
            ),
        ];
        for (name, spec, _, _) in &cases {
            create::<VolumeBackup>(&client, &ns, name, spec.clone()).await?;
        }
        // Two targets: an API server that enforces the CRD's validation rules (1.25 on)
        // refuses the object; an older one stores it, and the controller must fail it.
        let two_targets = json!({ "pvcNames": ["a"], "applicationRef": { "kind": "StatefulSet", "name": "b" } });
        let cases = match create::<VolumeBackup>(&client, &ns, "two-targets", two_targets).await {
            Err(refused) => {
                let refused = format!("{refused:#}");
                assert!(
                    refused.contains("give exactly one of applicationRef, pvcNames, pvcSelector"),
                    "{refused}"
                );
                cases.to_vec()
            }
            Ok(_) => [
                &cases[..],
                &[("two-targets", json!({}), "InvalidSpec", "exactly one of")],
            ]
            .concat(),
        };
        for (name, _, reason, words) in cases {
            let backup = finished::<VolumeBackup>(&client, &ns, name).await?;
            let status = backup.status.clone().unwrap();
            assert_eq!(status.phase, VolumeBackupPhase::Failed, "{name}: {status:#?}");
            let (failed, got, message) = condition(&status.conditions, "Failed");
            assert_eq!((failed.as_str(), got.as_str()), ("True", reason), "{name}: {message}");
            assert!(message.contains(words), "{name}: {message}");
            // The Event is written after the status: wait for it rather than read once.
            wait_events(&client, &ns, name, &[reason]).await?;
        }
        Ok(())
    })
    .await
    .unwrap();
}
