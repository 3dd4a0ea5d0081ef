//! The controller against the real test bed: EtcdBackups of a real etcd (client-certificate
//! TLS and plain http) into a real S3 server, restored with the stock tools; bad inputs fail
//! with clear conditions and Events; retainPolicy Delete removes the data with the object.
//!
//! EtcdBackups are cluster-scoped, so each test names its objects after its namespace and
//! labels them, and its controller only watches that label.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use object_store::ObjectStoreExt as _;
use serde_json::json;
use stowage_api::{BackupStorage, EtcdBackup, EtcdBackupPhase};
use stowage_core::testing::S3Server;
use stowage_core::{Identities, RestoreRequest, read_manifest, restore};
use stowage_e2e::etcd::{EtcdOptions, EtcdServer};
use stowage_e2e::support::{StatusLog, finished_in, wait_uid_events};
use stowage_e2e::{bed, wait_for};
use stowage_etcd_backup_ctrl::EtcdContext;
use stowage_operator::{Context, Metrics};
use support::Stopped;
use tokio_util::sync::CancellationToken;

const TEST_LABEL: &str = "stowage.io/test";

/// The controller under test, reconciling only this test's EtcdBackups; stopped on drop.
struct RunningController {
    ctx: Arc<EtcdContext>,
    shutdown: CancellationToken,
}

impl Drop for RunningController {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn start_controller(client: &kube::Client, namespace: &str, max_attempts: u32) -> RunningController {
    stowage_operator::runner::init_tracing("text");
    let mut kit = Context::new(
        client.clone(),
        "etcd-backup-ctrl",
        namespace,
        None,
        Arc::new(Metrics::new().unwrap()),
    );
    let shutdown = CancellationToken::new();
    kit.shutdown = shutdown.clone();
    let mut ctx = EtcdContext::new(Arc::new(kit)).unwrap();
    ctx.max_attempts = max_attempts;
    ctx.selector = Some(format!("{TEST_LABEL}={namespace}"));
    let ctx = Arc::new(ctx);
    let running = ctx.clone();
    tokio::spawn(async move {
        if let Err(error) = stowage_etcd_backup_ctrl::run(running).await {
            eprintln!("etcd-backup-ctrl stopped: {error:#}");
        }
    });
    RunningController { ctx, shutdown }
}

async fn install_crds(client: &kube::Client) {
    stowage_e2e::crds::apply_crds(client, &stowage_api::crds())
        .await
        .unwrap();
}

async fn create_secret(client: &kube::Client, namespace: &str, name: &str, data: serde_json::Value) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "stringData": data,
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// A BackupStorage `<namespace>-s3` on `s3`, its credentials in a Secret of `namespace`.
async fn create_storage(client: &kube::Client, namespace: &str, s3: &S3Server) -> String {
    let credentials = s3.credentials();
    create_secret(
        client,
        namespace,
        "s3-credentials",
        json!({
            "accessKeyId": credentials.access_key_id,
            "secretAccessKey": credentials.secret_access_key,
        }),
    )
    .await;
    let name = format!("{namespace}-s3");
    let mut spec = serde_json::to_value(s3.spec()).unwrap();
    spec["credentialsSecretRef"] = json!({"namespace": namespace, "name": "s3-credentials"});
    let storage: BackupStorage = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap();
    Api::<BackupStorage>::all(client.clone())
        .create(&PostParams::default(), &storage)
        .await
        .unwrap();
    name
}

async fn create_backup(client: &kube::Client, namespace: &str, name: &str, spec: serde_json::Value) -> String {
    let name = format!("{namespace}-{name}");
    let backup: EtcdBackup = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {TEST_LABEL: namespace}},
        "spec": spec,
    }))
    .unwrap();
    Api::<EtcdBackup>::all(client.clone())
        .create(&PostParams::default(), &backup)
        .await
        .unwrap();
    name
}

async fn wait_for_phase(client: &kube::Client, name: &str, phase: EtcdBackupPhase) -> EtcdBackup {
    let api: Api<EtcdBackup> = Api::all(client.clone());
    wait_for(&format!("EtcdBackup {name} to reach phase {phase:?}"), || async {
        let backup = api.get(name).await?;
        let current = backup.status.as_ref().map(|s| s.phase);
        Ok((current == Some(phase)).then_some(backup))
    })
    .await
    .unwrap()
}

/// Waits until EtcdBackup `name` no longer exists (its finalizer done).
async fn wait_gone(api: &Api<EtcdBackup>, name: &str) {
    wait_for(&format!("EtcdBackup {name} to be gone"), || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await
    .unwrap();
}

/// Waits for the Ready condition to carry `reason`; returns its message.
async fn wait_for_reason(client: &kube::Client, name: &str, reason: &str) -> String {
    let api: Api<EtcdBackup> = Api::all(client.clone());
    wait_for(
        &format!("EtcdBackup {name} Ready condition with reason {reason}"),
        || async {
            let backup = api.get(name).await?;
            let conditions = backup.status.map(|s| s.conditions).unwrap_or_default();
            Ok(conditions
                .into_iter()
                .find(|c| c.type_ == "Ready" && c.reason == reason)
                .map(|c| c.message))
        },
    )
    .await
    .unwrap()
}

/// Waits for an Event with `reason` about EtcdBackup `name` (cluster-scoped objects' Events
/// live in `default`); returns its message.
async fn wait_for_event(client: &kube::Client, name: &str, reason: &str) -> String {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    wait_for(&format!("an Event {reason} about EtcdBackup {name}"), || async {
        let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
        Ok(events
            .list(&params)
            .await?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.message.unwrap_or_default()))
    })
    .await
    .unwrap()
}

fn tls_secret(etcd: &EtcdServer) -> serde_json::Value {
    let tls = etcd.tls().unwrap();
    json!({"ca.crt": tls.ca.cert_pem, "client.crt": tls.client.cert_pem, "client.key": tls.client.key_pem})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_etcd_backup_restores_with_the_stock_tools_and_is_deleted_with_its_object() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await;
    let etcd = EtcdServer::start(EtcdOptions { tls: true }).unwrap();
    let mut etcd_client = etcd.connect().await.unwrap();
    let revision = support::put_keys(&mut etcd_client, 1000).await.unwrap();
    let s3 = S3Server::start("etcd").await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let certs_dir = work.path().join("pki");
    std::fs::create_dir_all(certs_dir.join("etcd")).unwrap();
    std::fs::write(certs_dir.join("ca.crt"), "cluster CA").unwrap();
    std::fs::write(certs_dir.join("etcd/ca.key"), "etcd CA key").unwrap();
    let (key_file, recipient) = support::age_key(work.path());

    bed.with_namespace("etcd-tls", |client, namespace| async move {
        let controller = start_controller(&client, &namespace, 5);
        let storage = create_storage(&client, &namespace, &s3).await;
        create_secret(&client, &namespace, "etcd-client", tls_secret(&etcd)).await;
        let name = create_backup(
            &client,
            &namespace,
            "tls",
            json!({
                "endpoints": [etcd.endpoint()],
                "credentialsSecretRef": {"namespace": namespace, "name": "etcd-client"},
                "certsDir": certs_dir.display().to_string(),
                "storage": {"name": storage},
                "encryption": {"recipients": [recipient]},
                "retainPolicy": "Delete",
            }),
        )
        .await;

        let backup = wait_for_phase(&client, &name, EtcdBackupPhase::Succeeded).await;
        let status = backup.status.unwrap();
        assert_eq!(status.revision, Some(revision));
        assert_eq!(status.etcd_version.as_deref(), Some("3.4.23"));
        assert!(status.cluster_id.is_some() && status.member_id.is_some());
        let artifact = status.artifact.unwrap().artifact;
        assert!(
            artifact.path.starts_with(&format!("etcdbackup/_cluster/{name}/")),
            "{}",
            artifact.path
        );
        assert!(artifact.path.ends_with(".db.gz.age"), "{}", artifact.path);
        let certs = status.certs_artifact.unwrap().artifact;
        assert!(certs.path.ends_with("-certs.tar.gz.age"), "{}", certs.path);
        assert!(
            backup
                .metadata
                .finalizers
                .unwrap()
                .contains(&"stowage.io/delete-data".to_string())
        );
        wait_for_event(&client, &name, "BackupStarted").await;
        let message = wait_for_event(&client, &name, "BackupSucceeded").await;
        assert!(message.contains(&format!("revision {revision}")), "{message}");
        // The gauges are set just after the status and the Event.
        let gauge = format!("stowage_etcd_snapshot_revision{{schedule=\"{name}\"}} {revision}");
        wait_for("the snapshot's revision on /metrics", || async {
            Ok(controller.ctx.kit.metrics.render().contains(&gauge).then_some(()))
        })
        .await
        .unwrap();

        // The stock tools read the artifact: age decrypts, gunzip decompresses, etcdctl accepts it.
        let stored = work.path().join("stored.db.gz.age");
        let bytes = s3
            .store()
            .get(&object_store::path::Path::parse(&artifact.path).unwrap())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        std::fs::write(&stored, &bytes).unwrap();
        let plain = work.path().join("plain.db");
        let pipeline = format!(
            "age -d -i {} {} | gunzip > {}",
            key_file.display(),
            stored.display(),
            plain.display()
        );
        let status = Command::new("sh").args(["-c", &pipeline]).status().unwrap();
        assert!(status.success(), "{pipeline}");
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "status", "-w", "json"])
            .arg(&plain)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let snapshot_status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(snapshot_status["revision"], revision);

        // Restored with the stock tool, a new etcd serves the same keys at the same revision.
        let restore_dir = work.path().join("restore");
        std::fs::create_dir(&restore_dir).unwrap();
        let file = restore_dir.join("snapshot.db");
        let mut sink = tokio::fs::File::create(&file).await.unwrap();
        let mut request = RestoreRequest::new(s3.store(), &artifact.path);
        let identity = std::fs::read_to_string(&key_file).unwrap();
        request.identities = Arc::new(Identities::parse(&identity).unwrap());
        restore(request, &mut sink).await.unwrap();
        let restored = support::restore_and_serve(&file, &restore_dir).unwrap();
        let mut restored_client = support::connect_plain(&restored.endpoint).await.unwrap();
        let (pairs, restored_revision) = support::read_keys(&mut restored_client).await.unwrap();
        assert_eq!((pairs.len(), restored_revision), (1000, revision));

        // retainPolicy Delete: deleting the object deletes the data, then the object goes.
        let api: Api<EtcdBackup> = Api::all(client.clone());
        api.delete(&name, &DeleteParams::default()).await.unwrap();
        wait_gone(&api, &name).await;
        for path in [&artifact.path, &certs.path] {
            let error = read_manifest(s3.store().as_ref(), path).await.unwrap_err();
            assert_eq!(error.reason(), "IntegrityError", "{path}: {error}"); // ManifestMissing
            let payload = s3.store().head(&object_store::path::Path::parse(path).unwrap()).await;
            assert!(payload.is_err(), "{path} is still in storage");
        }
        wait_for_event(&client, &name, "DataDeleted").await;
        anyhow::Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_succeeds_and_bad_inputs_fail_with_clear_conditions_and_events() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await;
    let plain = EtcdServer::start(EtcdOptions::default()).unwrap();
    let tls = EtcdServer::start(EtcdOptions { tls: true }).unwrap();
    let s3 = S3Server::start("etcd").await.unwrap();
    let other_ca_dir = tempfile::tempdir().unwrap();
    let other_ca = stowage_e2e::pki::CertificateAuthority::create(other_ca_dir.path(), "other").unwrap();
    let bed_etcd = bed.info().etcd_endpoint.clone();

    bed.with_namespace("etcd-bad", |client, namespace| async move {
        let _controller = start_controller(&client, &namespace, 2);
        let storage = create_storage(&client, &namespace, &s3).await;

        // Plain http needs no Secret; retainPolicy Retain keeps no finalizer.
        let name = create_backup(
            &client,
            &namespace,
            "plain",
            json!({"endpoints": [plain.endpoint()], "storage": {"name": storage}, "compression": {"algorithm": "zstd"}}),
        )
        .await;
        let backup = wait_for_phase(&client, &name, EtcdBackupPhase::Succeeded).await;
        assert!(backup.metadata.finalizers.unwrap_or_default().is_empty());
        let path = backup.status.unwrap().artifact.unwrap().artifact.path;
        assert!(path.ends_with(".db.zst"), "{path}");

        // The test bed's own etcd (the one its kube-apiserver uses), with a path template.
        let name = create_backup(
            &client,
            &namespace,
            "bed",
            json!({
                "endpoints": [bed_etcd],
                "storage": {"name": storage, "path": "{{ .Name }}/bed-etcd"},
            }),
        )
        .await;
        let status = wait_for_phase(&client, &name, EtcdBackupPhase::Succeeded).await.status.unwrap();
        assert!(status.revision.unwrap() > 1, "{status:?}");
        let path = status.artifact.unwrap().artifact.path;
        assert_eq!(path, format!("etcdbackup/_cluster/{name}/bed-etcd.db.gz"));

        // A Running status the controller does not know was left by a controller that
        // stopped mid-stream: the attempt counts as interrupted and the backup runs again.
        let api: Api<EtcdBackup> = Api::all(client.clone());
        let name = format!("{namespace}-interrupted");
        let orphan: EtcdBackup = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"endpoints": [plain.endpoint()], "storage": {"name": storage}},
        }))
        .unwrap();
        api.create(&PostParams::default(), &orphan).await.unwrap();
        let running = json!({"status": {"phase": "Running"}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&running))
            .await
            .unwrap();
        let label = json!({"metadata": {"labels": {TEST_LABEL: namespace}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&label))
            .await
            .unwrap();
        let status = wait_for_phase(&client, &name, EtcdBackupPhase::Succeeded).await.status.unwrap();
        assert_eq!(status.attempts, Some(1));
        wait_for_event(&client, &name, "Interrupted").await;

        // A wrong CA: a clear TLS reason, retried, then failed for good.
        let mut wrong = tls_secret(&tls);
        wrong["ca.crt"] = json!(other_ca.files.cert_pem);
        create_secret(&client, &namespace, "wrong-ca", wrong).await;
        let name = create_backup(
            &client,
            &namespace,
            "wrong-ca",
            json!({
                "endpoints": [tls.endpoint()],
                "credentialsSecretRef": {"namespace": namespace, "name": "wrong-ca"},
                "storage": {"name": storage},
            }),
        )
        .await;
        let message = wait_for_reason(&client, &name, "EtcdTLSFailed").await;
        assert!(message.contains("UnknownIssuer") || message.contains("certificate"), "{message}");
        wait_for_event(&client, &name, "EtcdTLSFailed").await;
        let failed = wait_for_phase(&client, &name, EtcdBackupPhase::Failed).await;
        assert_eq!(failed.status.unwrap().attempts, Some(2));
        let message = wait_for_event(&client, &name, "BackupFailed").await;
        assert!(message.starts_with("EtcdTLSFailed: "), "{message}");

        // A missing Secret, then a Secret without client.key.
        let name = create_backup(
            &client,
            &namespace,
            "no-secret",
            json!({
                "endpoints": [tls.endpoint()],
                "credentialsSecretRef": {"namespace": namespace, "name": "absent"},
                "storage": {"name": storage},
            }),
        )
        .await;
        let message = wait_for_reason(&client, &name, "SecretNotFound").await;
        assert!(message.contains(&format!("Secret '{namespace}/absent' not found")), "{message}");
        let mut partial = tls_secret(&tls);
        partial.as_object_mut().unwrap().remove("client.key");
        create_secret(&client, &namespace, "partial", partial).await;
        let name = create_backup(
            &client,
            &namespace,
            "no-key",
            json!({
                "endpoints": [tls.endpoint()],
                "credentialsSecretRef": {"namespace": namespace, "name": "partial"},
                "storage": {"name": storage},
            }),
        )
        .await;
        let message = wait_for_reason(&client, &name, "SecretKeyMissing").await;
        assert!(message.contains("client.key"), "{message}");

        // An unreachable endpoint.
        let port = stowage_core::testing::free_port().unwrap();
        let name = create_backup(
            &client,
            &namespace,
            "unreachable",
            json!({"endpoints": [format!("http://127.0.0.1:{port}")], "storage": {"name": storage}}),
        )
        .await;
        let message = wait_for_reason(&client, &name, "EtcdUnreachable").await;
        assert!(message.contains(&port.to_string()), "{message}");
        wait_for_event(&client, &name, "EtcdUnreachable").await;

        // A certsDir that does not exist fails at once: retrying cannot help.
        let name = create_backup(
            &client,
            &namespace,
            "no-certs",
            json!({"endpoints": [plain.endpoint()], "certsDir": "/nonexistent/pki", "storage": {"name": storage}}),
        )
        .await;
        let failed = wait_for_phase(&client, &name, EtcdBackupPhase::Failed).await;
        let status = failed.status.unwrap();
        assert_eq!(status.attempts, Some(1));
        assert_eq!(status.conditions[0].reason, "CertsDirNotFound");
        let message = wait_for_event(&client, &name, "BackupFailed").await;
        assert!(message.contains("/nonexistent/pki"), "{message}");
        anyhow::Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_running_backup_stops_it_and_the_deletion_does_not_wait_for_etcd() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await;
    let etcd = EtcdServer::start(EtcdOptions::default()).unwrap();
    let s3 = S3Server::start("etcd").await.unwrap();

    bed.with_namespace("etcd-cancel", |client, namespace| async move {
        let _controller = start_controller(&client, &namespace, 2);
        let storage = create_storage(&client, &namespace, &s3).await;
        // A member that accepts connections and never answers: the backup waits on it until
        // its object is deleted.
        let frozen = Stopped::stop(etcd.pid());
        let name = create_backup(
            &client,
            &namespace,
            "stuck",
            json!({"endpoints": [etcd.endpoint()], "storage": {"name": storage}, "retainPolicy": "Delete"}),
        )
        .await;
        wait_for_phase(&client, &name, EtcdBackupPhase::Running).await;
        let api: Api<EtcdBackup> = Api::all(client.clone());
        api.delete(&name, &DeleteParams::default()).await.unwrap();
        // Gone while etcd is still frozen: the run was cancelled, not waited for.
        wait_gone(&api, &name).await;
        let message = wait_for_event(&client, &name, "BackupCancelled").await;
        // Stopped by the deletion, not by etcd's request timeout (which would name the failure).
        assert!(
            message.starts_with("the EtcdBackup was deleted during its backup: the snapshot stream was stopped"),
            "{message}"
        );
        drop(frozen);
        let prefix = object_store::path::Path::from(format!("etcdbackup/_cluster/{name}"));
        let stored: Vec<_> = s3.store().list(Some(&prefix)).collect().await;
        assert!(stored.is_empty(), "{stored:?}");

        // The member thawed, the next backup of it succeeds.
        let name = create_backup(
            &client,
            &namespace,
            "after",
            json!({"endpoints": [etcd.endpoint()], "storage": {"name": storage}}),
        )
        .await;
        wait_for_phase(&client, &name, EtcdBackupPhase::Succeeded).await;
        anyhow::Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_backup_deleted_and_created_again_at_once_leaves_the_new_one_to_run() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await;
    let etcd = EtcdServer::start(EtcdOptions::default()).unwrap();
    let s3 = S3Server::start("etcd-replaced").await.unwrap();

    bed.with_namespace("etcd-replaced", |client, namespace| async move {
        // The controller reaches the API server through a gate that the test holds while it
        // replaces the object: the old run learns of the deletion only once the new object
        // exists, as with a quick `kubectl delete -f x.yaml && kubectl apply -f x.yaml`.
        let (gate, gated) = stowage_e2e::gate::gated_client(bed).await?;
        let _controller = start_controller(&gated, &namespace, 2);
        let storage = create_storage(&client, &namespace, &s3).await;
        let spec = json!({"endpoints": [etcd.endpoint()], "storage": {"name": storage}});
        // A frozen member keeps the old run Running until it is cancelled.
        let frozen = Stopped::stop(etcd.pid());
        let name = create_backup(&client, &namespace, "nightly", spec.clone()).await;
        let old = wait_for_phase(&client, &name, EtcdBackupPhase::Running).await;
        let old = old.metadata.uid.unwrap();
        let api: Api<EtcdBackup> = Api::all(client.clone());
        let log = StatusLog::start(api.clone(), &name);
        log.seen(&old).await?;

        gate.hold();
        api.delete(&name, &DeleteParams::default()).await?;
        create_backup(&client, &namespace, "nightly", spec).await;
        let new = api.get(&name).await?.metadata.uid.unwrap();
        gate.release();

        // The old run's end is recorded where it belongs: an Event about the old object.
        wait_uid_events(&client, "default", &old, &["BackupCancelled"]).await?;
        drop(frozen);
        let backup = finished_in(&api, &name).await?;
        assert_eq!(backup.metadata.uid.as_deref(), Some(new.as_str()));
        let status = backup.status.unwrap();
        assert_eq!(status.phase, EtcdBackupPhase::Succeeded, "{status:#?}");
        let artifact = status.artifact.unwrap().artifact;
        read_manifest(s3.store().as_ref(), &artifact.path).await?;
        let reasons = wait_uid_events(&client, "default", &new, &["BackupStarted", "BackupSucceeded"]).await?;
        assert!(!reasons.contains(&"BackupCancelled".into()), "{reasons:?}");
        log.assert_never_ended_badly(&new);
        anyhow::Ok(())
    })
    .await
    .unwrap();
}
