#![allow(clippy::unwrap_used)]
//! ExecBackup and ExecRestore end to end: the controller in-process against the real
//! apiserver, commands run by the node simulator and reached through the apiserver's exec,
//! artifacts in a Filesystem BackupStorage checked with the stock `age` and `gzip` CLIs.
//! Formats, failures and restore checks; what happens around a run is in `lifecycle.rs`.

mod support;

use kube::api::{Api, ListParams};
use serde_json::json;
use stowage_api::{ExecBackup, ExecPhase};
use stowage_e2e::{bed, wait_for};
use support::*;

const ROWS: &str = "seq 1 200000";

#[tokio::test]
async fn a_command_is_streamed_through_gzip_and_age_and_restored_into_stdin() {
    let bed = bed().await.unwrap();
    bed.with_namespace("exec-roundtrip", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let dir = tempfile::tempdir()?;
        let (store, out) = (dir.path().join("store"), dir.path().join("out"));
        std::fs::create_dir_all(&out)?;
        let storage = filesystem_storage(&client, &ns, &store).await?;
        let (identity, public) = age_keygen()?;
        let (second_identity, second_public) = age_keygen()?;
        secret(&client, &ns, "backup-key", json!({ "key.txt": identity })).await?;
        create_backup(
            &client,
            &ns,
            "nightly",
            json!({
                "backup": { "command": ["sh", "-c", ROWS] },
                "restore": { "command": ["sh", "-c", "cat > /out/restored"] },
                "storage": { "name": storage },
                "compression": { "algorithm": "gzip", "level": 6 },
                "encryption": {
                    "recipients": [public, second_public],
                    "decryptionKey": { "name": "backup-key", "key": "key.txt" },
                },
                "template": idle_template(Some(&out), json!([])),
            }),
        )
        .await?;
        let backup = finished_backup(&client, &ns, "nightly").await?;
        let status = backup.status.clone().unwrap();
        assert_eq!(status.phase, ExecPhase::Succeeded, "{status:#?}");
        let expected = sh(ROWS)?;
        let artifact = status.artifact.clone().unwrap();
        assert_eq!(artifact.storage, storage);
        assert!(
            artifact
                .artifact
                .path
                .starts_with(&format!("backups/execbackup/{ns}/nightly/")),
            "{}",
            artifact.artifact.path
        );
        assert!(
            artifact.artifact.path.ends_with(".gz.age"),
            "{}",
            artifact.artifact.path
        );
        assert_eq!(artifact.artifact.plaintext_bytes, expected.len() as u64);
        assert!(!artifact.size.is_empty());
        let (encrypted, _, recipients) = condition(&status.conditions, "Encrypted");
        assert_eq!(encrypted, "True");
        assert!(
            recipients.contains(&public) && recipients.contains(&second_public),
            "{recipients}"
        );
        assert_eq!(condition(&status.conditions, "Compressed").2, "gzip level 6");
        assert_eq!(condition(&status.conditions, "Restorable").0, "True");
        assert_eq!(condition(&status.conditions, "Successful").0, "True");
        assert_eq!(condition(&status.conditions, "Ready").0, "True");

        // Readable without Stowage, with either recipient's key.
        let key_file = dir.path().join("second.txt");
        std::fs::write(&key_file, &second_identity)?;
        let stored = store.join(&artifact.artifact.path);
        let plain = sh(&format!(
            "age -d -i {} {} | gzip -d",
            key_file.display(),
            stored.display()
        ))?;
        assert_eq!(plain, expected);
        assert!(store.join(&artifact.artifact.manifest_path).exists());

        wait_events(&client, &ns, "nightly", &["BackupStarted", "BackupSucceeded"]).await?;
        wait_for("the backup's Pod to be deleted", || async {
            let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
            Ok(pods
                .list(&ListParams::default().labels("stowage.io/backup=nightly"))
                .await?
                .items
                .is_empty()
                .then_some(()))
        })
        .await?;

        create_restore(
            &client,
            &ns,
            "from-nightly",
            json!({ "backupRef": { "name": "nightly" } }),
        )
        .await?;
        let restore = finished_restore(&client, &ns, "from-nightly").await?;
        let status = restore.status.unwrap();
        assert_eq!(status.phase, ExecPhase::Succeeded, "{status:#?}");
        assert_eq!(std::fs::read(out.join("restored"))?, expected);
        assert_eq!(status.bytes_transferred, Some(expected.len() as u64));
        wait_events(&client, &ns, "from-nightly", &["RestoreSucceeded"]).await?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn zstd_uncompressed_and_ssh_encrypted_backups_restore_from_a_storage_path() {
    let bed = bed().await.unwrap();
    bed.with_namespace("exec-formats", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let dir = tempfile::tempdir()?;
        let (store, out) = (dir.path().join("store"), dir.path().join("out"));
        std::fs::create_dir_all(&out)?;
        let storage = filesystem_storage(&client, &ns, &store).await?;
        let (ssh_private, ssh_public) = ssh_keygen(dir.path())?;
        let template = idle_template(Some(&out), json!([]));
        let backup = |compression: serde_json::Value, encryption: serde_json::Value| {
            json!({
                "backup": { "command": ["sh", "-c", ROWS] },
                "storage": { "name": storage, "path": "{{ .Name }}/{{ now | date \"20060102\" }}.txt" },
                "compression": compression,
                "encryption": encryption,
                "template": template,
            })
        };
        create_backup(
            &client,
            &ns,
            "zstd",
            backup(json!({ "algorithm": "zstd", "level": 3 }), json!(null)),
        )
        .await?;
        create_backup(
            &client,
            &ns,
            "plain",
            backup(json!({ "algorithm": "none" }), json!(null)),
        )
        .await?;
        create_backup(
            &client,
            &ns,
            "ssh",
            backup(
                json!({ "algorithm": "gzip", "level": 1 }),
                json!({ "recipients": [ssh_public] }),
            ),
        )
        .await?;
        let expected = sh(ROWS)?;

        let zstd = finished_backup(&client, &ns, "zstd").await?.status.unwrap();
        assert_eq!(zstd.phase, ExecPhase::Succeeded, "{zstd:#?}");
        let path = zstd.artifact.unwrap().artifact.path;
        assert!(path.ends_with(".txt.zst"), "{path}");
        assert_eq!(sh(&format!("zstd -dc {}", store.join(&path).display()))?, expected);
        assert_eq!(condition(&zstd.conditions, "Encrypted").0, "False");
        // No restore command and no key: restorable only by an ExecRestore that brings one.
        assert_eq!(condition(&zstd.conditions, "Restorable").1, "NoRestoreCommand");

        let plain = finished_backup(&client, &ns, "plain").await?.status.unwrap();
        let artifact = plain.artifact.unwrap().artifact;
        assert_eq!(artifact.stored_bytes, artifact.plaintext_bytes);
        assert_eq!(std::fs::read(store.join(&artifact.path))?, expected);
        assert_eq!(condition(&plain.conditions, "Compressed").0, "False");

        let ssh = finished_backup(&client, &ns, "ssh").await?.status.unwrap();
        assert_eq!(ssh.phase, ExecPhase::Succeeded, "{ssh:#?}");
        let (restorable, reason, _) = condition(&ssh.conditions, "Restorable");
        assert_eq!((restorable.as_str(), reason.as_str()), ("False", "NoRestoreCommand"));
        let ssh_path = ssh.artifact.unwrap().artifact.path;
        let key_file = dir.path().join("id_ed25519");
        assert_eq!(
            sh(&format!(
                "age -d -i {} {} | gzip -d",
                key_file.display(),
                store.join(&ssh_path).display()
            ))?,
            expected
        );

        // A restore by path (e.g. another cluster's backup), with the SSH private key.
        secret(&client, &ns, "ssh-key", json!({ "id": ssh_private })).await?;
        create_restore(
            &client,
            &ns,
            "by-path",
            json!({
                "storage": { "name": storage, "path": ssh_path },
                "restore": { "command": ["sh", "-c", "cat > /out/from-ssh"] },
                "template": template,
                "decryptionKey": { "name": "ssh-key", "key": "id" },
            }),
        )
        .await?;
        let restore = finished_restore(&client, &ns, "by-path").await?.status.unwrap();
        assert_eq!(restore.phase, ExecPhase::Succeeded, "{restore:#?}");
        assert_eq!(std::fs::read(out.join("from-ssh"))?, expected);
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn failing_commands_deadlines_and_bad_specs_fail_with_their_reason_and_leave_nothing() {
    let bed = bed().await.unwrap();
    bed.with_namespace("exec-failures", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store");
        let storage = filesystem_storage(&client, &ns, &store).await?;
        let template = idle_template(None, json!([]));
        let run = |command: &str, extra: serde_json::Value| {
            let mut spec = json!({
                "backup": { "command": ["sh", "-c", command] },
                "storage": { "name": storage },
                "template": template,
            });
            for (key, value) in extra.as_object().cloned().unwrap_or_default() {
                spec[key] = value;
            }
            spec
        };
        create_backup(
            &client,
            &ns,
            "exits-1",
            run("seq 1 1000; echo 'access denied for user' >&2; exit 1", json!({})),
        )
        .await?;
        create_backup(
            &client,
            &ns,
            "too-slow",
            run(
                "echo started; sleep 60",
                json!({ "backup": { "command": ["sh", "-c", "echo started; sleep 60"], "deadlineSeconds": 2 } }),
            ),
        )
        .await?;
        create_backup(
            &client,
            &ns,
            "escapes",
            run(
                "echo hi",
                json!({ "storage": { "name": storage, "path": "../../other-namespace/x" } }),
            ),
        )
        .await?;
        create_backup(
            &client,
            &ns,
            "bad-recipient",
            run("echo hi", json!({ "encryption": { "recipients": ["age1notakey"] } })),
        )
        .await?;
        create_backup(
            &client,
            &ns,
            "no-storage-yet",
            run("echo late", json!({ "storage": { "name": format!("{ns}-later") } })),
        )
        .await?;

        let failed = finished_backup(&client, &ns, "exits-1").await?.status.unwrap();
        assert_eq!(failed.phase, ExecPhase::Failed);
        assert_eq!(condition(&failed.conditions, "Failed").1, "CommandFailed");
        assert!(
            condition(&failed.conditions, "Failed").2.contains("exited with code 1"),
            "{failed:#?}"
        );
        assert!(
            failed
                .stderr_tail
                .as_deref()
                .unwrap_or("")
                .contains("access denied for user"),
            "{failed:#?}"
        );
        assert!(failed.artifact.is_none());
        wait_events(&client, &ns, "exits-1", &["BackupFailed"]).await?;

        let slow = finished_backup(&client, &ns, "too-slow").await?.status.unwrap();
        assert_eq!(condition(&slow.conditions, "Failed").1, "DeadlineExceeded", "{slow:#?}");

        let escapes = finished_backup(&client, &ns, "escapes").await?.status.unwrap();
        assert_eq!(
            condition(&escapes.conditions, "Failed").1,
            "InvalidSpec",
            "{escapes:#?}"
        );
        assert!(escapes.pod_name.is_none(), "refused before any Pod was made");

        let bad = finished_backup(&client, &ns, "bad-recipient").await?.status.unwrap();
        assert_eq!(condition(&bad.conditions, "Failed").1, "InvalidSpec");
        assert!(
            condition(&bad.conditions, "Failed").2.contains("age1notakey"),
            "{bad:#?}"
        );

        // Nothing was stored by any failed run: no payload, no manifest.
        assert_eq!(files_under(&store), Vec::<std::path::PathBuf>::new());

        // A missing BackupStorage keeps the run Pending with the reason, until it exists.
        let api: Api<ExecBackup> = Api::namespaced(client.clone(), &ns);
        let waiting = wait_for("no-storage-yet to report the missing storage", || async {
            let backup = api.get("no-storage-yet").await?;
            let status = backup.status.unwrap_or_default();
            Ok((condition(&status.conditions, "Ready").1 == "StorageNotFound").then_some(status))
        })
        .await?;
        assert_eq!(waiting.phase, ExecPhase::Pending);
        create_storage(
            &client,
            &format!("{ns}-later"),
            json!({ "type": "Filesystem", "filesystem": { "path": dir.path().join("later") } }),
        )
        .await?;
        let late = finished_backup(&client, &ns, "no-storage-yet").await?.status.unwrap();
        assert_eq!(late.phase, ExecPhase::Succeeded, "{late:#?}");
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn restores_refuse_wrong_keys_tampered_payloads_and_foreign_paths() {
    let bed = bed().await.unwrap();
    bed.with_namespace("exec-restore-checks", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let dir = tempfile::tempdir()?;
        let (store, out) = (dir.path().join("store"), dir.path().join("out"));
        std::fs::create_dir_all(&out)?;
        let storage = filesystem_storage(&client, &ns, &store).await?;
        let (_identity, public) = age_keygen()?;
        let (wrong_identity, _) = age_keygen()?;
        secret(&client, &ns, "wrong-key", json!({ "key.txt": wrong_identity })).await?;
        let template = idle_template(Some(&out), json!([]));
        create_backup(
            &client,
            &ns,
            "sealed",
            json!({
                "backup": { "command": ["sh", "-c", "seq 1 300000"] },
                "restore": { "command": ["sh", "-c", "cat > /out/partial && mv /out/partial /out/complete"] },
                "storage": { "name": storage },
                "encryption": { "recipients": [public] },
                "template": template,
            }),
        )
        .await?;
        let sealed = finished_backup(&client, &ns, "sealed").await?.status.unwrap();
        assert_eq!(sealed.phase, ExecPhase::Succeeded, "{sealed:#?}");
        let (restorable, reason, message) = condition(&sealed.conditions, "Restorable");
        assert_eq!(
            (restorable.as_str(), reason.as_str()),
            ("False", "NoDecryptionKey"),
            "{message}"
        );
        let path = sealed.artifact.unwrap().artifact.path;

        create_restore(&client, &ns, "no-key", json!({ "backupRef": { "name": "sealed" } })).await?;
        let no_key = finished_restore(&client, &ns, "no-key").await?.status.unwrap();
        assert_eq!(condition(&no_key.conditions, "Failed").1, "InvalidSpec", "{no_key:#?}");

        create_restore(
            &client,
            &ns,
            "wrong-key",
            json!({
                "backupRef": { "name": "sealed" },
                "decryptionKey": { "name": "wrong-key", "key": "key.txt" },
            }),
        )
        .await?;
        let wrong = finished_restore(&client, &ns, "wrong-key").await?.status.unwrap();
        assert_eq!(wrong.phase, ExecPhase::Failed);
        assert_eq!(
            condition(&wrong.conditions, "Failed").1,
            "DecryptionFailed",
            "{wrong:#?}"
        );

        // Tamper with the stored payload in its middle: the restore fails its integrity check
        // and the command is killed before it sees the end of its input.
        let (good_identity, good_public) = age_keygen()?;
        secret(&client, &ns, "good-key", json!({ "key.txt": good_identity })).await?;
        create_backup(&client, &ns, "tampered", json!({
            "backup": { "command": ["sh", "-c", "seq 1 3000000"] },
            "restore": { "command": ["sh", "-c", "cat > /out/partial && mv /out/partial /out/complete"] },
            "storage": { "name": storage },
            "encryption": { "recipients": [good_public], "decryptionKey": { "name": "good-key", "key": "key.txt" } },
            "template": template,
        }))
        .await?;
        let tampered = finished_backup(&client, &ns, "tampered").await?.status.unwrap();

        // A restore command that gives up (a SQL error, say) fails the run with its exit code
        // and the tail of its stderr.
        create_restore(&client, &ns, "command-fails", json!({
            "backupRef": { "name": "tampered" },
            "restore": { "command": ["sh", "-c", "head -c 1000 > /dev/null; echo 'ERROR: syntax error at line 1' >&2; exit 2"] },
        }))
        .await?;
        let gave_up = finished_restore(&client, &ns, "command-fails").await?.status.unwrap();
        assert_eq!(gave_up.phase, ExecPhase::Failed);
        assert_eq!(condition(&gave_up.conditions, "Failed").1, "CommandFailed", "{gave_up:#?}");
        assert!(condition(&gave_up.conditions, "Failed").2.contains("exited with code 2"), "{gave_up:#?}");
        assert!(gave_up.stderr_tail.as_deref().unwrap_or("").contains("syntax error at line 1"), "{gave_up:#?}");

        let tampered_path = store.join(tampered.artifact.unwrap().artifact.path);
        let mut bytes = std::fs::read(&tampered_path)?;
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&tampered_path, bytes)?;
        create_restore(
            &client,
            &ns,
            "from-tampered",
            json!({ "backupRef": { "name": "tampered" } }),
        )
        .await?;
        let failed = finished_restore(&client, &ns, "from-tampered").await?.status.unwrap();
        assert_eq!(failed.phase, ExecPhase::Failed);
        assert_eq!(
            condition(&failed.conditions, "Failed").1,
            "IntegrityError",
            "{failed:#?}"
        );
        assert!(
            !out.join("complete").exists(),
            "the restore command must not finish on a tampered input"
        );

        // A restore by path may only read its own namespace's area of the storage.
        let foreign = path.replace(&format!("/{ns}/"), "/someone-else/");
        create_restore(
            &client,
            &ns,
            "foreign",
            json!({
                "storage": { "name": storage, "path": foreign },
                "restore": { "command": ["cat"] },
                "template": template,
            }),
        )
        .await?;
        let refused = finished_restore(&client, &ns, "foreign").await?.status.unwrap();
        assert_eq!(condition(&refused.conditions, "Failed").1, "Forbidden", "{refused:#?}");
        Ok(())
    })
    .await
    .unwrap();
}
