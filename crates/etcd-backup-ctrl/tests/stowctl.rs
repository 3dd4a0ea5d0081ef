//! The administrator's story across two tools: an EtcdBackup run by this controller, then
//! `stowctl etcd list` and `stowctl etcd restore` from the BackupStorage's name alone. stowctl
//! depends on no controller, so the pair is tested here, through stowctl's library (its binary's
//! arguments are tested in stowctl's own tests).

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use stowage_core::testing::S3Server;
use stowage_e2e::etcd::{EtcdOptions, EtcdServer};
use stowage_e2e::process::free_port;
use stowctl::storage::StorageArg;

const KEYS: usize = 1000;

/// The administrator's whole story on the real bed: an EtcdBackup of a client-certificate TLS
/// etcd through a Secret, run by etcd-backup-ctrl; then, from the BackupStorage's name alone,
/// `stowctl etcd list` and `stowctl etcd restore`; a new etcd on the restored data dir serves
/// the same 1,000 keys at the same revision.
#[tokio::test(flavor = "multi_thread")]
async fn an_etcd_backup_made_by_the_controller_restores_with_stowctl() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};
    use stowage_api::{BackupStorage, EtcdBackup, EtcdBackupPhase};

    let bed = stowage_e2e::bed().await.unwrap();
    stowage_e2e::crds::apply_crds(&bed.client(), &stowage_api::crds())
        .await
        .unwrap();
    let etcd = EtcdServer::start(EtcdOptions { tls: true }).unwrap();
    let mut etcd_client = etcd.connect().await.unwrap();
    let revision = support::put_keys(&mut etcd_client, KEYS).await.unwrap();
    let s3 = S3Server::start("backups").await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let (key_file, recipient) = support::age_key(work.path());
    let kubeconfig = bed.kubeconfig_path().to_str().unwrap().to_string();

    bed.with_namespace("stowctl-ctrl", |client, namespace| async move {
        let create_secret = |name: &'static str, data: serde_json::Value| {
            let client = client.clone();
            let namespace = namespace.clone();
            async move {
                let secret: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))?;
                Api::<Secret>::namespaced(client, &namespace)
                    .create(&PostParams::default(), &secret)
                    .await?;
                anyhow::Ok(())
            }
        };
        let credentials = s3.credentials();
        create_secret(
            "s3",
            json!({"accessKeyId": credentials.access_key_id, "secretAccessKey": credentials.secret_access_key}),
        )
        .await?;
        let tls = etcd.tls().unwrap();
        create_secret(
            "etcd-client",
            json!({"ca.crt": tls.ca.cert_pem, "client.crt": tls.client.cert_pem, "client.key": tls.client.key_pem}),
        )
        .await?;
        let mut spec = serde_json::to_value(s3.spec())?;
        spec["credentialsSecretRef"] = json!({"namespace": namespace, "name": "s3"});
        let storage = format!("{namespace}-s3");
        let object: BackupStorage = serde_json::from_value(json!({"metadata": {"name": storage}, "spec": spec}))?;
        Api::<BackupStorage>::all(client.clone())
            .create(&PostParams::default(), &object)
            .await?;

        // The controller, in-process, watching only this test's EtcdBackups.
        let mut kit = stowage_operator::Context::new(
            client.clone(),
            "etcd-backup-ctrl",
            &namespace,
            None,
            Arc::new(stowage_operator::Metrics::new()?),
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        kit.shutdown = shutdown.clone();
        let mut ctx = stowage_etcd_backup_ctrl::EtcdContext::new(Arc::new(kit))?;
        ctx.selector = Some(format!("stowage.io/test={namespace}"));
        let controller = tokio::spawn(stowage_etcd_backup_ctrl::run(Arc::new(ctx)));

        let name = format!("{namespace}-backup");
        let backup: EtcdBackup = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"stowage.io/test": namespace}},
            "spec": {
                "endpoints": [etcd.endpoint()],
                "credentialsSecretRef": {"namespace": namespace, "name": "etcd-client"},
                "storage": {"name": storage},
                "encryption": {"recipients": [recipient]},
            },
        }))?;
        let backups: Api<EtcdBackup> = Api::all(client.clone());
        backups.create(&PostParams::default(), &backup).await?;
        let done = stowage_e2e::wait_for(&format!("EtcdBackup {name} Succeeded"), || async {
            let backup = backups.get(&name).await?;
            let status = backup.status.unwrap_or_default();
            Ok((status.phase == EtcdBackupPhase::Succeeded).then_some(status))
        })
        .await?;
        shutdown.cancel();
        let _ = controller.await;
        let path = done.artifact.unwrap().artifact.path;

        // What `stowctl --kubeconfig K etcd list --storage NAME` prints, through its library.
        let opened =
            stowctl::storage::open(&StorageArg::Cluster(storage.clone()), Some(Path::new(&kubeconfig))).await?;
        let table = stowctl::etcd::table(&stowctl::etcd::list(&opened, false).await?);
        assert!(
            table.contains(&path) && table.contains(&revision.to_string()),
            "{table}"
        );

        let data_dir = work.path().join("restored");
        let peer = format!("http://127.0.0.1:{}", free_port()?);
        let initial_cluster = format!("restored={peer}");
        let options = stowctl::etcd::RestoreOptions {
            path: path.clone(),
            data_dir: data_dir.clone(),
            identities: vec![key_file.clone()],
            name: Some("restored".into()),
            initial_cluster: Some(initial_cluster),
            initial_advertise_peer_urls: Some(peer.clone()),
            initial_cluster_token: None,
            keep_snapshot: None,
            tool: None,
        };
        let steps = stowctl::etcd::restore(&opened, &storage, &options).await?;
        assert!(steps.contains("Next steps"), "{steps}");
        let restored = support::serve(&data_dir, work.path(), &peer)?;
        let mut restored_client = support::connect_plain(&restored.endpoint).await?;
        let (pairs, restored_revision) = support::read_keys(&mut restored_client).await?;
        assert_eq!((pairs.len(), restored_revision), (KEYS, revision));
        Ok(())
    })
    .await
    .unwrap();
}
