//! Round trips through the real data path, against s3s-fs and the filesystem.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on purpose

mod support;

use std::sync::Arc;

use object_store::ObjectStoreExt;

use stowage_core::testing::{Generated, Pattern};
use stowage_core::{
    BackupRequest, Compression, Identities, PipelineOptions, Recipients, RestoreRequest, UploadOptions, backup, restore,
};
use support::{Backends, RecordingSink, age_key, sha256_hex, ssh_key};

const AGE_CHUNK: usize = 64 * 1024;

fn sql(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0; len];
    let n = Generated::new(Pattern::SqlDump, seed, len as u64).fill(&mut data);
    assert_eq!(n, len);
    data
}

async fn round_trip(
    store: Arc<dyn object_store::ObjectStore>,
    key: &str,
    data: &[u8],
    compression: Compression,
    recipients: &[String],
    identities: Identities,
) -> (stowage_core::Artifact, Vec<u8>) {
    let mut request = BackupRequest::new(store.clone(), key, "Test", "round trip");
    request.compression = compression;
    request.recipients = Arc::new(Recipients::parse(recipients).unwrap());
    let artifact = backup(request, data)
        .await
        .unwrap_or_else(|e| panic!("backup of {key}: {e}"));
    let mut sink = RecordingSink::default();
    let request = RestoreRequest {
        identities: Arc::new(identities),
        ..RestoreRequest::new(store, key)
    };
    restore(request, &mut sink)
        .await
        .unwrap_or_else(|e| panic!("restore of {key}: {e}"));
    assert!(sink.shut_down, "a verified restore ends the sink's stream");
    (artifact, sink.data)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_size_compression_and_encryption_round_trips_on_both_backends() {
    let backends = Backends::start().await;
    let (identity, recipient) = age_key();
    let sizes = [0, 1, AGE_CHUNK, 5 * AGE_CHUNK + 17];
    for (backend, store) in backends.stores() {
        for (i, &size) in sizes.iter().enumerate() {
            let data = sql(size, i as u64);
            for compression in [Compression::gzip(6), Compression::zstd(3), Compression::none()] {
                for encrypted in [false, true] {
                    let key = format!(
                        "t/{backend}/{size}-{}-{encrypted}.bin",
                        compression.describe().replace(' ', "-")
                    );
                    let (recipients, identities) = if encrypted {
                        (vec![recipient.clone()], Identities::parse(&identity).unwrap())
                    } else {
                        (vec![], Identities::none())
                    };
                    let (artifact, restored) =
                        round_trip(store.clone(), &key, &data, compression.clone(), &recipients, identities).await;
                    assert_eq!(restored, data, "{key}");
                    assert_eq!(artifact.plaintext_bytes, size as u64);
                    assert_eq!(artifact.plaintext_sha256, sha256_hex(&data));
                    assert_eq!(artifact.recipients, recipients);
                    assert_eq!(artifact.manifest_path, format!("{key}.manifest.json"));
                    let stored = store
                        .get(&object_store::path::Path::parse(&key).unwrap())
                        .await
                        .unwrap()
                        .bytes()
                        .await
                        .unwrap();
                    assert_eq!(artifact.stored_bytes, stored.len() as u64);
                    assert_eq!(artifact.stored_sha256, sha256_hex(&stored));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_mib_stream_as_a_multipart_upload_of_many_parts() {
    let backends = Backends::start().await;
    let (identity, recipient) = age_key();
    let len = 200u64 << 20;
    for (backend, store) in backends.stores() {
        // Random data does not compress: 200 MiB stored in 5 MiB parts is 40 parts.
        let key = format!("big/{backend}.gz.age");
        let mut request = BackupRequest::new(store.clone(), &key, "Test", "200 MiB");
        request.recipients = Arc::new(Recipients::parse(std::slice::from_ref(&recipient)).unwrap());
        request.upload = UploadOptions {
            part_size: 5 << 20,
            parts_in_flight: 3,
        };
        let artifact = backup(request, Generated::new(Pattern::Random, 7, len)).await.unwrap();
        assert_eq!(artifact.plaintext_bytes, len);
        assert!(artifact.stored_bytes > 10 * (5 << 20), "{backend}: more than 10 parts");

        let mut sink = stowage_core::testing::HashingSink::default();
        let request = RestoreRequest {
            identities: Arc::new(Identities::parse(&identity).unwrap()),
            ..RestoreRequest::new(store, &key)
        };
        let manifest = restore(request, &mut sink).await.unwrap();
        assert_eq!(sink.bytes(), len);
        assert_eq!(sink.sha256(), manifest.artifact.plaintext_sha256);
        let mut expected = stowage_core::testing::HashingSink::default();
        tokio::io::copy(&mut Generated::new(Pattern::Random, 7, len), &mut expected)
            .await
            .unwrap();
        assert_eq!(
            sink.sha256(),
            expected.sha256(),
            "{backend}: restored bytes equal the source"
        );
    }
}

/// A slow source's pipeline (resource backups use it): 256 KiB blocks, one read ahead, two
/// compressing, behind a multipart upload of one part at a time.
#[tokio::test(flavor = "multi_thread")]
async fn a_shallow_pipeline_round_trips_on_both_backends() {
    let backends = Backends::start().await;
    let (identity, recipient) = age_key();
    // Random data makes three 5 MiB parts; text a single PUT. Not a multiple of the block.
    let len = (12 << 20) + 4099;
    for (backend, store) in backends.stores() {
        for (pattern, compression) in [
            (Pattern::SqlDump, Compression::gzip(6)),
            (Pattern::Random, Compression::gzip(1)),
            (Pattern::SqlDump, Compression::zstd(3)),
        ] {
            let key = format!(
                "shallow/{backend}/{pattern:?}-{}.age",
                compression.describe().replace(' ', "-")
            );
            let mut request = BackupRequest::new(store.clone(), &key, "Test", "shallow pipeline");
            request.compression = compression;
            request.recipients = Arc::new(Recipients::parse(std::slice::from_ref(&recipient)).unwrap());
            request.pipeline = PipelineOptions::shallow();
            request.upload = UploadOptions {
                part_size: 5 << 20,
                parts_in_flight: 1,
            };
            let artifact = backup(request, Generated::new(pattern, 11, len))
                .await
                .unwrap_or_else(|e| panic!("backup of {key}: {e}"));
            assert_eq!(artifact.plaintext_bytes, len, "{key}");

            let mut sink = stowage_core::testing::HashingSink::default();
            let request = RestoreRequest {
                identities: Arc::new(Identities::parse(&identity).unwrap()),
                ..RestoreRequest::new(store.clone(), &key)
            };
            restore(request, &mut sink)
                .await
                .unwrap_or_else(|e| panic!("restore of {key}: {e}"));
            let mut expected = stowage_core::testing::HashingSink::default();
            tokio::io::copy(&mut Generated::new(pattern, 11, len), &mut expected)
                .await
                .unwrap();
            assert_eq!(sink.bytes(), len, "{key}");
            assert_eq!(
                sink.sha256(),
                expected.sha256(),
                "{key}: restored bytes equal the source"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn several_recipients_each_key_alone_decrypts() {
    let backends = Backends::start().await;
    let (age_a, age_a_pub) = age_key();
    let (age_b, age_b_pub) = age_key();
    let (ed, ed_pub) = ssh_key("ed25519");
    let (rsa, rsa_pub) = ssh_key("rsa");
    let data = sql(300_000, 3);
    let store = backends.stores().remove(0).1;
    let recipients = vec![
        age_a_pub,
        age_b_pub,
        ed_pub.trim().to_string(),
        rsa_pub.trim().to_string(),
    ];
    let mut request = BackupRequest::new(store.clone(), "multi/r.gz.age", "Test", "several recipients");
    request.recipients = Arc::new(Recipients::parse(&recipients).unwrap());
    backup(request, &data[..]).await.unwrap();
    for key in [&age_a, &age_b, &ed, &rsa] {
        let mut sink = RecordingSink::default();
        let request = RestoreRequest {
            identities: Arc::new(Identities::parse(key).unwrap()),
            ..RestoreRequest::new(store.clone(), "multi/r.gz.age")
        };
        restore(request, &mut sink).await.unwrap();
        assert_eq!(sink.data, data);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_counts_both_sides_while_streaming() {
    let store = stowage_core::storage::build(
        &stowage_core::testing::filesystem_spec(tempfile::tempdir().unwrap().keep().as_path()),
        &Default::default(),
    )
    .unwrap();
    let mut request = BackupRequest::new(store, "p/x.gz", "Test", "progress");
    let progress = request.progress.clone();
    request.compression = Compression::gzip(1);
    let artifact = backup(request, Generated::new(Pattern::SqlDump, 1, 8 << 20))
        .await
        .unwrap();
    assert_eq!(progress.plaintext.bytes(), 8 << 20);
    assert_eq!(progress.stored.bytes(), artifact.stored_bytes);
    assert!(artifact.stored_bytes < (8 << 20) / 3, "SQL-like text compresses");
}
