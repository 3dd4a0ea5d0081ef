//! The catalog is what storage alone says was backed up, and `check` proves a
//! storage works before anything relies on it.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on purpose

mod support;

use object_store::ObjectStoreExt as _;
use stowage_core::storage::{self, Credentials};
use stowage_core::testing::{Generated, Pattern};
use stowage_core::{BackupRequest, Compression, Error, Layout, backup, catalog, stream_payload};
use support::Backends;

#[tokio::test(flavor = "multi_thread")]
async fn catalog_lists_complete_and_incomplete_artifacts_newest_first() {
    let backends = Backends::start().await;
    for (backend, store) in backends.stores() {
        let prefix = format!("{backend}/execbackup/db");
        for name in ["a", "b"] {
            let request = BackupRequest::new(store.clone(), format!("{prefix}/{name}.gz"), "ExecBackup", name);
            backup(request, Generated::new(Pattern::SqlDump, 1, 100_000))
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // distinct modification times
        }
        // Uploaded but never committed: a crash between payload and manifest.
        let mut request = BackupRequest::new(store.clone(), format!("{prefix}/c.gz"), "ExecBackup", "c");
        request.compression = Compression::gzip(1);
        let staged = stream_payload(request, Generated::new(Pattern::SqlDump, 2, 1000))
            .await
            .unwrap();
        assert_eq!(staged.artifact().plaintext_bytes, 1000);
        // A run's scratch object (a resource backup's spilled index) is no artifact.
        let scratch = object_store::path::Path::parse(Layout::scratch_key(&format!("{prefix}/c.gz"), 1)).unwrap();
        store.put(&scratch, vec![1u8; 10].into()).await.unwrap();

        let entries = catalog::list(store.as_ref(), &prefix).await.unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                format!("{prefix}/c.gz"),
                format!("{prefix}/b.gz"),
                format!("{prefix}/a.gz")
            ],
            "{backend}"
        );
        assert!(!entries[0].is_complete(), "no manifest, not complete");
        assert!(entries[0].problem.as_deref().unwrap().contains("did not complete"));
        assert!(entries[1].is_complete() && entries[2].is_complete());
        assert_eq!(entries[1].manifest.as_ref().unwrap().source, "b");

        catalog::delete(store.as_ref(), &format!("{prefix}/a.gz"))
            .await
            .unwrap();
        catalog::delete(store.as_ref(), &format!("{prefix}/a.gz"))
            .await
            .unwrap(); // idempotent
        let left: Vec<String> = catalog::list(store.as_ref(), &prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(left, [format!("{prefix}/c.gz"), format!("{prefix}/b.gz")], "{backend}");
        staged.discard().await.unwrap();
        assert_eq!(
            catalog::list(store.as_ref(), &prefix).await.unwrap().len(),
            1,
            "{backend}: discarded"
        );
        // A filesystem storage does not keep the directory a deleted scratch object leaves.
        store.delete(&scratch).await.unwrap();
        let scratch_dir = backends.fs_dir.path().join(format!("{prefix}/c.gz.scratch"));
        assert!(!scratch_dir.exists(), "{backend}: {} is gone", scratch_dir.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_proves_a_storage_works_and_says_why_it_does_not() {
    let backends = Backends::start().await;
    for (backend, store) in backends.stores() {
        storage::check(store.as_ref(), "probe/prefix")
            .await
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
    }
    let wrong_secret = Credentials {
        secret_access_key: Some("not-the-secret".into()),
        ..backends.s3.credentials()
    };
    let store = storage::build(&backends.s3.spec(), &wrong_secret).unwrap();
    let err = storage::check(store.as_ref(), "").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Storage {
                operation: "probe write",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.reason(), "StorageUnavailable");

    // Nothing listens there: an outage, reported as the step that failed.
    let mut spec = backends.s3.spec();
    let port = stowage_core::testing::free_port().unwrap();
    spec.s3.as_mut().unwrap().endpoint = format!("http://127.0.0.1:{port}");
    spec.retry = Some(stowage_core::storage::RetrySpec {
        max_retries: Some(0),
        timeout_seconds: Some(2),
    });
    let store = storage::build(&spec, &backends.s3.credentials()).unwrap();
    let err = storage::check(store.as_ref(), "").await.unwrap_err();
    assert!(err.to_string().contains("probe write") && err.is_transient(), "{err}");

    let err = storage::build(&stowage_core::StorageSpec::default(), &Credentials::default()).unwrap_err();
    assert!(err.to_string().contains("s3 section"), "{err}");
    let half = Credentials {
        access_key_id: Some("id".into()),
        ..Credentials::default()
    };
    let err = storage::build(&backends.s3.spec(), &half).unwrap_err();
    assert!(err.to_string().contains("secretAccessKey"), "{err}");
    assert!(
        !format!("{:?}", backends.s3.credentials()).contains("stowage-test-secret"),
        "Debug never shows secrets"
    );
}
