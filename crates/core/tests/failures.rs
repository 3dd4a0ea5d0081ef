//! Every way a backup or restore can go wrong ends in a distinct, clear error,
//! and a restore that fails never hands its sink a clean end of stream.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on purpose

mod support;

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use stowage_core::testing::{Generated, Pattern};
use stowage_core::{
    BackupRequest, Compression, Error, Identities, Recipients, RestoreRequest, UploadOptions, backup, restore,
};
use support::{Backends, RecordingSink, age_key};

async fn stored(store: &Arc<dyn ObjectStore>, key: &str) -> Vec<u8> {
    store
        .get(&Path::parse(key).unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

async fn overwrite(store: &Arc<dyn ObjectStore>, key: &str, bytes: Vec<u8>) {
    store
        .put(&Path::parse(key).unwrap(), PutPayload::from(bytes))
        .await
        .unwrap();
}

async fn backup_to(store: &Arc<dyn ObjectStore>, key: &str, compression: Compression, recipients: &[String]) {
    let mut request = BackupRequest::new(store.clone(), key, "Test", "failure case");
    request.compression = compression;
    request.recipients = Arc::new(Recipients::parse(recipients).unwrap());
    backup(request, Generated::new(Pattern::SqlDump, 9, 2 << 20))
        .await
        .unwrap();
}

async fn restore_err(store: &Arc<dyn ObjectStore>, key: &str, identities: Identities) -> (Error, RecordingSink) {
    let mut sink = RecordingSink::default();
    let request = RestoreRequest {
        identities: Arc::new(identities),
        ..RestoreRequest::new(store.clone(), key)
    };
    let err = restore(request, &mut sink).await.expect_err("the restore must fail");
    assert!(
        !sink.shut_down,
        "a failed restore must not end the sink's stream cleanly ({err})"
    );
    (err, sink)
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_payloads_fail_integrity_for_every_encoding() {
    let backends = Backends::start().await;
    let (identity, recipient) = age_key();
    for (backend, store) in backends.stores() {
        for compression in [Compression::gzip(6), Compression::zstd(3), Compression::none()] {
            for recipients in [vec![], vec![recipient.clone()]] {
                let key = |what: &str| format!("{backend}/{what}-{}-{}.bin", compression.extension(), recipients.len());
                let identities = || {
                    if recipients.is_empty() {
                        Identities::none()
                    } else {
                        Identities::parse(&identity).unwrap()
                    }
                };

                // Truncated: the tail is gone.
                backup_to(&store, &key("truncated"), compression.clone(), &recipients).await;
                let mut bytes = stored(&store, &key("truncated")).await;
                bytes.truncate(bytes.len() - 100);
                overwrite(&store, &key("truncated"), bytes).await;
                let (err, sink) = restore_err(&store, &key("truncated"), identities()).await;
                assert!(matches!(err, Error::Integrity { .. }), "{backend} truncated: {err}");
                assert!(err.to_string().contains("truncated"), "{err}");
                assert!(
                    sink.data.is_empty(),
                    "a size mismatch is caught before any byte is restored"
                );

                // One flipped byte in the middle, size unchanged.
                backup_to(&store, &key("flipped"), compression.clone(), &recipients).await;
                let mut bytes = stored(&store, &key("flipped")).await;
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x01;
                overwrite(&store, &key("flipped"), bytes).await;
                let (err, _) = restore_err(&store, &key("flipped"), identities()).await;
                assert!(matches!(err, Error::Integrity { .. }), "{backend} flipped: {err}");
                assert_eq!(err.reason(), "IntegrityError");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_or_missing_key_is_named_as_such() {
    let backends = Backends::start().await;
    let store = backends.stores().remove(0).1;
    let (_, recipient) = age_key();
    let (other_identity, _) = age_key();
    backup_to(
        &store,
        "keys/x.gz.age",
        Compression::gzip(6),
        std::slice::from_ref(&recipient),
    )
    .await;

    let (err, sink) = restore_err(&store, "keys/x.gz.age", Identities::parse(&other_identity).unwrap()).await;
    assert!(matches!(err, Error::WrongKey { .. }), "{err}");
    assert!(
        err.to_string().contains(&recipient),
        "the error names the artifact's recipients: {err}"
    );
    assert!(sink.data.is_empty());

    let (err, _) = restore_err(&store, "keys/x.gz.age", Identities::none()).await;
    assert!(matches!(err, Error::KeyRequired { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_foreign_manifest_refuses_the_restore() {
    let backends = Backends::start().await;
    for (backend, store) in backends.stores() {
        let a = format!("{backend}/a.gz");
        let b = format!("{backend}/b.gz");
        backup_to(&store, &a, Compression::gzip(6), &[]).await;
        backup_to(&store, &b, Compression::gzip(6), &[]).await;

        let manifest_a = stored(&store, &format!("{a}.manifest.json")).await;
        overwrite(&store, &format!("{b}.manifest.json"), manifest_a).await;
        let (err, _) = restore_err(&store, &b, Identities::none()).await;
        assert!(matches!(err, Error::ManifestInvalid { .. }), "{err}");
        assert!(err.to_string().contains("not this payload"), "{err}");

        store
            .delete(&Path::parse(format!("{a}.manifest.json")).unwrap())
            .await
            .unwrap();
        let (err, _) = restore_err(&store, &a, Identities::none()).await;
        assert!(matches!(err, Error::ManifestMissing { .. }), "{err}");
        assert!(err.to_string().contains("did not complete"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_recipients_fail_before_the_first_byte_is_read() {
    let err = Recipients::parse(&["age1notarealkey", "ssh-ed25519 AAAA"]).unwrap_err();
    assert!(
        matches!(err, Error::InvalidRecipient { ref recipient, .. } if recipient == "age1notarealkey"),
        "{err}"
    );
    let err = Recipients::parse(&["gpg:ABCDEF"]).unwrap_err();
    assert!(
        err.to_string().contains("gpg:ABCDEF") && err.to_string().contains("age1"),
        "{err}"
    );
    let (identity, _) = age_key();
    let err = Recipients::parse(&[identity.lines().last().unwrap()]).unwrap_err();
    assert!(
        !err.to_string().contains("AGE-SECRET-KEY"),
        "a private key given as recipient is never echoed: {err}"
    );
    let err = Compression::gzip(12).validate().unwrap_err();
    assert!(err.to_string().contains("1-9"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_outage_mid_upload_fails_the_backup_and_leaves_no_open_upload() {
    let mut backends = Backends::start().await;
    let store = backends.s3.store();
    let mut request = BackupRequest::new(store.clone(), "outage/x.bin", "Test", "outage");
    request.compression = Compression::none();
    request.upload = UploadOptions {
        part_size: 5 << 20,
        parts_in_flight: 1,
    };
    let progress = request.progress.clone();
    // An endless source: only the outage can end this backup.
    let running = tokio::spawn(backup(request, Generated::new(Pattern::Random, 1, u64::MAX)));
    while progress.stored.bytes() < 30 << 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !backends.s3.open_uploads().is_empty(),
        "a multipart upload is open mid-stream"
    );
    backends.s3.kill();
    // Bring the server back while the backup is retrying its abort.
    tokio::time::sleep(Duration::from_secs(2)).await;
    backends.s3.restart().await.unwrap();
    let err = running.await.unwrap().expect_err("the outage fails the backup");
    assert!(matches!(err, Error::Storage { .. }), "{err}");
    assert!(err.is_transient());
    assert_eq!(
        backends.s3.open_uploads(),
        Vec::<String>::new(),
        "the multipart upload was aborted"
    );
    let listed = stowage_core::catalog::list(store.as_ref(), "outage").await.unwrap();
    assert!(listed.is_empty(), "nothing is left behind: {listed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_dropped_mid_stream_aborts_its_multipart_upload() {
    let backends = Backends::start().await;
    let store = backends.s3.store();
    let mut request = BackupRequest::new(store.clone(), "dropped/x.bin", "Test", "dropped");
    request.compression = Compression::none();
    request.upload = UploadOptions {
        part_size: 5 << 20,
        parts_in_flight: 1,
    };
    let progress = request.progress.clone();
    // An endless source: the backup only ends because its task is aborted, as a
    // controller's run is when the controller shuts down.
    let running = tokio::spawn(backup(request, Generated::new(Pattern::Random, 2, u64::MAX)));
    while progress.stored.bytes() < 20 << 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !backends.s3.open_uploads().is_empty(),
        "a multipart upload is open mid-stream"
    );
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !backends.s3.open_uploads().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        backends.s3.open_uploads(),
        Vec::<String>::new(),
        "the dropped backup's multipart upload was aborted"
    );
    let listed = stowage_core::catalog::list(store.as_ref(), "dropped").await.unwrap();
    assert!(listed.is_empty(), "nothing is left behind: {listed:?}");
}
