//! The snapshot data path against a real etcd (Debian's etcd-server) and a real S3 server
//! (s3s-fs): a backup restores with the stock `etcdctl snapshot restore` into an etcd that
//! serves the same keys at the same revision; certificates come back as a tar; a damaged
//! stream never gets a manifest; bad credentials and endpoints fail clearly.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use futures::StreamExt as _;
use object_store::ObjectStore;
use stowage_core::testing::S3Server;
use stowage_core::{Compression, Identities, Progress, Recipients, RestoreRequest, catalog, read_manifest, restore};
use stowage_e2e::etcd::{EtcdOptions, EtcdServer};
use stowage_etcd_backup_ctrl::backup::{self, BackupPlan, EtcdDetails};
use stowage_etcd_backup_ctrl::{EtcdTarget, TlsPem};
use tokio_util::sync::CancellationToken;

/// A backup outside any controller: nothing cancels it.
fn never() -> CancellationToken {
    CancellationToken::new()
}

const KEYS: usize = 1000;

fn plan(store: Arc<dyn ObjectStore>, key: &str, certs: Option<(&Path, &str)>, recipients: Recipients) -> BackupPlan {
    BackupPlan {
        store,
        snapshot_key: key.to_string(),
        certs: certs.map(|(dir, key)| (dir.to_path_buf(), key.to_string())),
        compression: Compression::default(),
        recipients: Arc::new(recipients),
        source: "EtcdBackup test".into(),
        progress: Progress::default(),
    }
}

fn tls_of(etcd: &EtcdServer) -> TlsPem {
    let tls = etcd.tls().expect("started with TLS");
    TlsPem {
        ca: tls.ca.cert_pem.clone(),
        client: Some((tls.client.cert_pem.clone(), tls.client.key_pem.clone())),
    }
}

/// An age key made by the stock `age-keygen`: (identity file text, recipient).
fn age_key() -> (String, String) {
    let output = Command::new("age-keygen")
        .output()
        .expect("age-keygen not found: apt-get install age");
    assert!(output.status.success());
    let identity = String::from_utf8(output.stdout).unwrap();
    let recipient = identity
        .lines()
        .find_map(|line| line.strip_prefix("# public key: "))
        .expect("age-keygen prints the public key")
        .to_string();
    (identity, recipient)
}

/// Restores `key` through core into `<dir>/snapshot.db`.
async fn restore_file(
    store: Arc<dyn ObjectStore>,
    key: &str,
    identities: Identities,
    dir: &Path,
) -> std::path::PathBuf {
    let file = dir.join("snapshot.db");
    let mut sink = tokio::fs::File::create(&file).await.unwrap();
    let mut request = RestoreRequest::new(store, key);
    request.identities = Arc::new(identities);
    restore(request, &mut sink).await.unwrap();
    file
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_http_snapshot_restores_with_the_stock_tool_at_the_same_revision() {
    let etcd = EtcdServer::start(EtcdOptions::default()).unwrap();
    let mut client = etcd.connect().await.unwrap();
    let revision = support::put_keys(&mut client, KEYS).await.unwrap();
    let s3 = S3Server::start("backups").await.unwrap();
    let key = "etcdbackup/_cluster/plain/20260101T000000Z.db.gz";
    let target = EtcdTarget {
        endpoints: vec![etcd.endpoint().to_string()],
        tls: None,
    };

    let outcome = backup::run(
        plan(s3.store(), key, None, Recipients::default()),
        &target,
        "plain",
        &never(),
    )
    .await
    .unwrap();
    assert_eq!(outcome.revision, revision);
    assert!(outcome.certs.is_none());
    let manifest = read_manifest(s3.store().as_ref(), key).await.unwrap();
    let details = EtcdDetails::from_map(&manifest.details).unwrap();
    assert_eq!(details.revision, Some(revision));
    assert_eq!(details.content, "snapshot");
    assert_eq!(details.etcd_version, outcome.member.version);
    assert!(!details.cluster_id.is_empty() && !details.member_id.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let file = restore_file(s3.store(), key, Identities::none(), dir.path()).await;
    let restored = support::restore_and_serve(&file, dir.path()).unwrap();
    let mut restored_client = support::connect_plain(&restored.endpoint).await.unwrap();
    let (pairs, restored_revision) = support::read_keys(&mut restored_client).await.unwrap();
    assert_eq!(pairs.len(), KEYS);
    assert_eq!(
        pairs[999],
        ("/stowage-test/key-0999".to_string(), "value-0999".to_string())
    );
    assert_eq!(restored_revision, revision);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_snapshot_with_certificates_is_encrypted_and_restores() {
    let etcd = EtcdServer::start(EtcdOptions { tls: true }).unwrap();
    let mut client = etcd.connect().await.unwrap();
    let revision = support::put_keys(&mut client, KEYS).await.unwrap();
    let s3 = S3Server::start("backups").await.unwrap();
    let certs_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(certs_dir.path().join("etcd")).unwrap();
    std::fs::write(certs_dir.path().join("ca.crt"), "the cluster CA").unwrap();
    std::fs::write(certs_dir.path().join("etcd/ca.key"), "the etcd CA key").unwrap();
    let (identity, recipient) = age_key();
    let key = "etcdbackup/_cluster/tls/20260101T000000Z.db.gz.age";
    let certs_key = backup::certs_key(key, &Compression::default(), true);
    assert_eq!(certs_key, "etcdbackup/_cluster/tls/20260101T000000Z-certs.tar.gz.age");
    let target = EtcdTarget {
        endpoints: vec![etcd.endpoint().to_string()],
        tls: Some(tls_of(&etcd)),
    };

    let recipients = Recipients::parse(&[&recipient]).unwrap();
    let plan = plan(s3.store(), key, Some((certs_dir.path(), &certs_key)), recipients);
    let outcome = backup::run(plan, &target, "tls", &never()).await.unwrap();
    assert_eq!(outcome.revision, revision);
    assert_eq!(outcome.snapshot.recipients, vec![recipient.clone()]);
    let certs = outcome.certs.expect("a certificates artifact");
    let certs_manifest = read_manifest(s3.store().as_ref(), &certs.path).await.unwrap();
    let certs_details = EtcdDetails::from_map(&certs_manifest.details).unwrap();
    assert_eq!(certs_details.content, "certificates");
    assert_eq!(certs_details.snapshot_path.as_deref(), Some(key));

    // The certificates come back as a tar with the directory's files.
    let mut tar_bytes = Vec::new();
    let mut request = RestoreRequest::new(s3.store(), &certs.path);
    request.identities = Arc::new(Identities::parse(&identity).unwrap());
    restore(request, &mut tar_bytes).await.unwrap();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut files = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            files.push((entry.path().unwrap().display().to_string(), text));
        }
    }
    files.sort();
    assert_eq!(
        files,
        vec![
            ("ca.crt".to_string(), "the cluster CA".to_string()),
            ("etcd/ca.key".to_string(), "the etcd CA key".to_string())
        ]
    );

    // The snapshot decrypts with the key and restores with the stock tool.
    let dir = tempfile::tempdir().unwrap();
    let file = restore_file(s3.store(), key, Identities::parse(&identity).unwrap(), dir.path()).await;
    let restored = support::restore_and_serve(&file, dir.path()).unwrap();
    let mut restored_client = support::connect_plain(&restored.endpoint).await.unwrap();
    let (pairs, restored_revision) = support::read_keys(&mut restored_client).await.unwrap();
    assert_eq!((pairs.len(), restored_revision), (KEYS, revision));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_byte_flipped_in_the_stream_fails_the_integrity_check_and_leaves_no_manifest() {
    let etcd = EtcdServer::start(EtcdOptions::default()).unwrap();
    let mut client = etcd.connect().await.unwrap();
    support::put_keys(&mut client, 100).await.unwrap();
    let s3 = S3Server::start("backups").await.unwrap();
    let key = "etcdbackup/_cluster/tampered/20260101T000000Z.db.gz";
    let target = EtcdTarget {
        endpoints: vec![etcd.endpoint().to_string()],
        tls: None,
    };

    let member = target.choose_member().await.unwrap();
    let mut snapshot = target.snapshot(member).await.unwrap();
    let mut first = true;
    snapshot.stream = snapshot
        .stream
        .map(move |chunk| {
            let mut bytes = chunk?.to_vec();
            if std::mem::take(&mut first) {
                bytes[4100] ^= 0x20; // inside the first bbolt data page
            }
            Ok(bytes::Bytes::from(bytes))
        })
        .boxed();
    let error = backup::store(
        plan(s3.store(), key, None, Recipients::default()),
        snapshot,
        "tampered",
        &never(),
    )
    .await
    .unwrap_err();
    assert_eq!(error.reason(), "IntegrityError", "{error}");
    assert!(error.to_string().contains("integrity check failed"), "{error}");

    let entries = catalog::list(s3.store().as_ref(), "").await.unwrap();
    assert!(entries.iter().all(|entry| !entry.is_complete()), "{entries:?}");
    assert!(
        read_manifest(s3.store().as_ref(), key).await.is_err(),
        "a damaged snapshot must never be committed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_ca_unreachable_endpoints_and_missing_certs_dirs_fail_clearly() {
    let etcd = EtcdServer::start(EtcdOptions { tls: true }).unwrap();
    let other = tempfile::tempdir().unwrap();
    let wrong_ca = stowage_e2e::pki::CertificateAuthority::create(other.path(), "other-ca").unwrap();
    let mut tls = tls_of(&etcd);
    tls.ca = wrong_ca.files.cert_pem.clone();
    let wrong = EtcdTarget {
        endpoints: vec![etcd.endpoint().to_string()],
        tls: Some(tls),
    };
    let error = wrong.choose_member().await.unwrap_err();
    assert_eq!(error.reason(), "EtcdTLSFailed", "{error}");
    assert!(error.is_transient());

    let port = stowage_core::testing::free_port().unwrap();
    let unreachable = EtcdTarget {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        tls: None,
    };
    let error = unreachable.choose_member().await.unwrap_err();
    assert_eq!(error.reason(), "EtcdUnreachable", "{error}");
    assert!(error.to_string().contains(&port.to_string()), "{error}");

    let no_credentials = EtcdTarget {
        endpoints: vec![etcd.endpoint().to_string()],
        tls: None,
    };
    let error = no_credentials.choose_member().await.unwrap_err();
    assert_eq!(error.reason(), "InvalidCredentials", "{error}");

    let s3 = S3Server::start("backups").await.unwrap();
    let good = EtcdTarget {
        endpoints: vec![etcd.endpoint().to_string()],
        tls: Some(tls_of(&etcd)),
    };
    let key = "etcdbackup/_cluster/nocerts/x.db.gz";
    let plan = plan(
        s3.store(),
        key,
        Some((
            Path::new("/nonexistent/pki"),
            "etcdbackup/_cluster/nocerts/x-certs.tar.gz",
        )),
        Recipients::default(),
    );
    let error = backup::run(plan, &good, "nocerts", &never()).await.unwrap_err();
    assert_eq!(error.reason(), "CertsDirNotFound", "{error}");
    assert!(!error.is_transient());
}
