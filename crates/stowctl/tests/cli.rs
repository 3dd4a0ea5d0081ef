//! The stowctl binary end to end, against a real etcd (Debian's etcd-server), a real S3
//! server (s3s-fs) and, for `--storage <name>`, the real test bed: list and restore etcd
//! backups from storage alone, inspect, verify, extract and cat artifacts, and refuse what
//! must be refused (a non-empty data dir, a missing key, tampered data, escaping tar paths).

#![allow(clippy::unwrap_used)]

#[path = "../../etcd-backup-ctrl/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use object_store::{ObjectStoreExt as _, PutPayload};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use stowage_core::etcd_details::{self, EtcdDetails};
use stowage_core::testing::S3Server;
use stowage_core::{Artifact, BackupRequest, Compression, Recipients, backup, stream_payload};
use stowage_e2e::etcd::{EtcdOptions, EtcdServer};
use stowage_e2e::process::free_port;

const KEYS: usize = 1000;

fn stowctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stowctl"))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

fn succeeds(args: &[&str]) -> String {
    let output = stowctl(args);
    assert!(
        output.status.success(),
        "stowctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let output = stowctl(args);
    assert!(!output.status.success(), "stowctl {args:?} should have failed");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A storage configuration file for `s3`: its spec with a prefix, and inline credentials.
fn storage_file(s3: &S3Server, dir: &Path) -> PathBuf {
    let credentials = s3.credentials();
    let mut config = serde_json::to_value(s3.spec()).unwrap();
    config["prefix"] = json!("clusters/prod");
    config["credentials"] = json!({
        "accessKeyId": credentials.access_key_id,
        "secretAccessKey": credentials.secret_access_key,
    });
    let path = dir.join("storage.yaml");
    std::fs::write(&path, serde_saphyr::to_string(&config).unwrap()).unwrap();
    path
}

/// What [`backed_up`] wrote: the snapshot and the certificates' tar.
struct EtcdArtifacts {
    snapshot: Artifact,
    certs: Artifact,
}

/// A real etcd with 1,000 keys backed up in the layout etcd-backup-ctrl writes, under the
/// storage's `clusters/prod` prefix: the stock `etcdctl snapshot save`, then the snapshot and a
/// tar of a certificates directory through core (encrypted), each committed with the manifest
/// details stowctl reads. stowctl must read any artifact of that format, whoever wrote it; the
/// controller's own backups are read by stowctl in etcd-backup-ctrl's tests.
async fn backed_up(s3: &S3Server, etcd: &EtcdServer, dir: &Path, recipient: &str) -> (EtcdArtifacts, i64) {
    let mut client = etcd.connect().await.unwrap();
    let revision = support::put_keys(&mut client, KEYS).await.unwrap();
    let snapshot_file = dir.join("saved.db");
    let saved = Command::new("etcdctl")
        .args(["--endpoints", etcd.endpoint(), "snapshot", "save"])
        .arg(&snapshot_file)
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl not found: apt-get install etcd-client");
    assert!(saved.status.success(), "{}", String::from_utf8_lossy(&saved.stderr));
    let mut certs_tar = tar::Builder::new(Vec::new());
    for (path, content) in [("ca.crt", "cluster CA"), ("etcd/ca.key", "etcd CA key")] {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o600);
        certs_tar.append_data(&mut header, path, content.as_bytes()).unwrap();
    }
    let certs_tar = certs_tar.into_inner().unwrap();

    let snapshot = "clusters/prod/etcdbackup/_cluster/nightly/20260101T020000Z.db.gz.age".to_string();
    let certs = "clusters/prod/etcdbackup/_cluster/nightly/20260101T020000Z-certs.tar.gz.age".to_string();
    let recipients = Arc::new(Recipients::parse(&[recipient]).unwrap());
    let request = |key: &str| BackupRequest {
        recipients: recipients.clone(),
        ..BackupRequest::new(s3.store(), key, etcd_details::KIND, "EtcdBackup nightly")
    };
    let details = EtcdDetails {
        content: etcd_details::SNAPSHOT.into(),
        backup: "nightly".into(),
        revision: Some(revision),
        endpoint: etcd.endpoint().to_string(),
        certs_path: Some(certs.clone()),
        ..EtcdDetails::default()
    };
    let certs_details = EtcdDetails {
        content: etcd_details::CERTIFICATES.into(),
        certs_path: None,
        snapshot_path: Some(snapshot.clone()),
        ..details.clone()
    };
    let staged = stream_payload(request(&certs), std::io::Cursor::new(certs_tar))
        .await
        .unwrap();
    let certs = staged.commit(certs_details.to_map()).await.unwrap();
    let file = tokio::fs::File::open(&snapshot_file).await.unwrap();
    let staged = stream_payload(request(&snapshot), file).await.unwrap();
    let snapshot = staged.commit(details.to_map()).await.unwrap();
    std::fs::remove_file(&snapshot_file).unwrap();
    (EtcdArtifacts { snapshot, certs }, revision)
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_backups_are_listed_and_restored_from_storage_alone() {
    let etcd = EtcdServer::start(EtcdOptions::default()).unwrap();
    let s3 = S3Server::start("backups").await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let (key_file, recipient) = support::age_key(work.path());
    let (outcome, revision) = backed_up(&s3, &etcd, work.path(), &recipient).await;
    let storage = storage_file(&s3, work.path());
    let storage = storage.to_str().unwrap();
    let key = key_file.to_str().unwrap();
    let snapshot = outcome.snapshot.path.as_str();
    let certs = outcome.certs.path.as_str();

    // A payload that never got its manifest is not a backup.
    let incomplete = "clusters/prod/etcdbackup/_cluster/nightly/20260102T020000Z.db.gz.age";
    s3.store()
        .put(
            &object_store::path::Path::parse(incomplete).unwrap(),
            PutPayload::from_static(b"partial"),
        )
        .await
        .unwrap();

    let table = succeeds(&["etcd", "list", "--storage", storage]);
    assert!(table.starts_with("COMPLETED"), "{table}");
    assert!(
        table.contains(snapshot) && table.contains(&revision.to_string()),
        "{table}"
    );
    assert!(!table.contains(incomplete) && !table.contains("-certs.tar"), "{table}");
    assert!(succeeds(&["etcd", "list", "--storage", storage, "--all"]).contains("INCOMPLETE"));
    let listed: serde_json::Value =
        serde_json::from_str(&succeeds(&["etcd", "list", "--storage", storage, "--json"])).unwrap();
    assert_eq!(listed[0]["details"]["revision"], revision);
    assert_eq!(listed[0]["details"]["certsPath"], certs);

    // Restores refuse a non-empty data dir and a missing key.
    let data_dir = work.path().join("restored");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("keep-me"), "live data").unwrap();
    let data = data_dir.to_str().unwrap();
    let error = fails(&[
        "etcd",
        "restore",
        "--storage",
        storage,
        "--path",
        snapshot,
        "-i",
        key,
        "--data-dir",
        data,
    ]);
    assert!(error.contains("is not empty"), "{error}");
    std::fs::remove_dir_all(&data_dir).unwrap();
    let error = fails(&[
        "etcd",
        "restore",
        "--storage",
        storage,
        "--path",
        snapshot,
        "--data-dir",
        data,
    ]);
    assert!(error.contains("decryption key is needed"), "{error}");
    let error = fails(&[
        "etcd",
        "restore",
        "--storage",
        storage,
        "--path",
        certs,
        "-i",
        key,
        "--data-dir",
        data,
    ]);
    assert!(error.contains("stowctl extract"), "{error}");

    // The restore: a new etcd on the data dir serves the same keys at the same revision.
    let peer = format!("http://127.0.0.1:{}", free_port().unwrap());
    let initial_cluster = format!("restored={peer}");
    let steps = succeeds(&[
        "etcd",
        "restore",
        "--storage",
        storage,
        "--path",
        snapshot,
        "--identity",
        key,
        "--data-dir",
        data,
        "--name",
        "restored",
        "--initial-cluster",
        &initial_cluster,
        "--initial-advertise-peer-urls",
        &peer,
    ]);
    assert!(steps.contains(&format!("revision {revision}")), "{steps}");
    assert!(
        steps.contains("Next steps") && steps.contains(&format!("--path {certs}")),
        "{steps}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("snapshot"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "the decrypted snapshot was left behind: {leftovers:?}"
    );
    let restored = support::serve(&data_dir, work.path(), &peer).unwrap();
    let mut client = support::connect_plain(&restored.endpoint).await.unwrap();
    let (pairs, restored_revision) = support::read_keys(&mut client).await.unwrap();
    assert_eq!((pairs.len(), restored_revision), (KEYS, revision));

    // The certificates come back with `extract`.
    let pki = work.path().join("restored-pki");
    let written = succeeds(&[
        "extract",
        "--storage",
        storage,
        "--path",
        certs,
        "-i",
        key,
        "--to",
        pki.to_str().unwrap(),
    ]);
    assert!(written.contains("ca.crt"), "{written}");
    assert_eq!(std::fs::read_to_string(pki.join("etcd/ca.key")).unwrap(), "etcd CA key");
    assert_eq!(
        std::fs::read_dir(&pki).unwrap().count(),
        2,
        "only the tar's entries, no temporary files"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_verify_cat_and_extract_check_what_they_read() {
    let etcd = EtcdServer::start(EtcdOptions::default()).unwrap();
    let s3 = S3Server::start("backups").await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let (key_file, recipient) = support::age_key(work.path());
    let (outcome, revision) = backed_up(&s3, &etcd, work.path(), &recipient).await;
    let storage = storage_file(&s3, work.path());
    let storage = storage.to_str().unwrap();
    let key = key_file.to_str().unwrap();
    let snapshot = outcome.snapshot.path.as_str();

    let inspected = succeeds(&["inspect", "--storage", storage, "--path", snapshot]);
    assert!(inspected.contains("Kind:        EtcdBackup"), "{inspected}");
    assert!(
        inspected.contains(&format!("yes, with age, to {recipient}")),
        "{inspected}"
    );
    assert!(inspected.contains(&format!("revision: {revision}")), "{inspected}");
    let manifest: serde_json::Value = serde_json::from_str(&succeeds(&[
        "inspect",
        "--storage",
        storage,
        "--path",
        snapshot,
        "--json",
    ]))
    .unwrap();
    assert_eq!(manifest["storedSha256"], outcome.snapshot.stored_sha256);

    let verified = succeeds(&["verify", "--storage", storage, "--path", snapshot]);
    assert!(
        verified.starts_with("OK") && verified.contains("Pass --identity"),
        "{verified}"
    );
    let verified = succeeds(&["verify", "--storage", storage, "--path", snapshot, "-i", key]);
    assert!(verified.contains(&outcome.snapshot.plaintext_sha256), "{verified}");

    // cat writes exactly the plaintext the manifest recorded: etcd's snapshot, trailer included.
    let plaintext = stowctl(&["cat", "--storage", storage, "--path", snapshot, "-i", key]);
    assert!(plaintext.status.success());
    assert_eq!(
        hex::encode(Sha256::digest(&plaintext.stdout)),
        outcome.snapshot.plaintext_sha256
    );

    // One flipped byte in storage: verify fails, with or without the key.
    let location = object_store::path::Path::parse(snapshot).unwrap();
    let mut stored = s3.store().get(&location).await.unwrap().bytes().await.unwrap().to_vec();
    let middle = stored.len() / 2;
    stored[middle] ^= 0x01;
    s3.store().put(&location, PutPayload::from(stored)).await.unwrap();
    let error = fails(&["verify", "--storage", storage, "--path", snapshot]);
    assert!(error.contains("integrity check failed"), "{error}");
    let error = fails(&["verify", "--storage", storage, "--path", snapshot, "-i", key]);
    assert!(
        error.contains("integrity check failed") || error.contains("does not decode"),
        "{error}"
    );
    let target = work.path().join("from-tampered");
    fails(&[
        "extract",
        "--storage",
        storage,
        "--path",
        snapshot,
        "-i",
        key,
        "--to",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "nothing written from damaged data"
    );

    // A tar whose entry climbs out of the target is refused.
    let evil = "clusters/prod/etcdbackup/_cluster/evil/20260101T000000Z-certs.tar";
    let mut request = BackupRequest::new(s3.store(), evil, "EtcdBackup", "a hostile tar");
    request.compression = Compression::none();
    backup(request, &escaping_tar()[..]).await.unwrap();
    let target = work.path().join("extract-here");
    let error = fails(&[
        "extract",
        "--storage",
        storage,
        "--path",
        evil,
        "--to",
        target.to_str().unwrap(),
    ]);
    assert!(error.contains("outside") && error.contains("refused"), "{error}");
    assert!(!work.path().join("evil.txt").exists());
}

/// A tar with one entry named `../evil.txt` (written by hand: the tar crate refuses to).
fn escaping_tar() -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header.as_old_mut().name[..11].copy_from_slice(b"../evil.txt");
    header.set_size(4);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut data = header.as_bytes().to_vec();
    data.extend_from_slice(b"evil");
    data.resize(data.len() + 508, 0);
    data.extend_from_slice(&[0; 1024]);
    data
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_storage_of_the_cluster_is_found_by_name() {
    let bed = stowage_e2e::bed().await.unwrap();
    stowage_e2e::crds::apply_crds(&bed.client(), &stowage_api::crds())
        .await
        .unwrap();
    let etcd = EtcdServer::start(EtcdOptions::default()).unwrap();
    let s3 = S3Server::start("backups").await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let (_key, recipient) = support::age_key(work.path());
    let (outcome, revision) = backed_up(&s3, &etcd, work.path(), &recipient).await;
    let kubeconfig = bed.kubeconfig_path().to_str().unwrap().to_string();

    bed.with_namespace("stowctl", |client, namespace| async move {
        use k8s_openapi::api::core::v1::Secret;
        use kube::api::{Api, PostParams};
        let credentials = s3.credentials();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "s3"},
            "stringData": {"accessKeyId": credentials.access_key_id, "secretAccessKey": credentials.secret_access_key},
        }))?;
        Api::<Secret>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &secret)
            .await?;
        let mut spec = serde_json::to_value(s3.spec())?;
        spec["prefix"] = json!("clusters/prod");
        spec["credentialsSecretRef"] = json!({"namespace": namespace, "name": "s3"});
        let name = format!("{namespace}-s3");
        let storage: stowage_api::BackupStorage =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?;
        Api::<stowage_api::BackupStorage>::all(client.clone())
            .create(&PostParams::default(), &storage)
            .await?;

        let table = succeeds(&["--kubeconfig", &kubeconfig, "etcd", "list", "--storage", &name]);
        assert!(table.contains(&outcome.snapshot.path), "{table}");
        assert!(table.contains(&revision.to_string()), "{table}");
        let error = fails(&["--kubeconfig", &kubeconfig, "etcd", "list", "--storage", "absent"]);
        assert!(error.contains("BackupStorage 'absent' not found"), "{error}");
        Ok(())
    })
    .await
    .unwrap();
}
