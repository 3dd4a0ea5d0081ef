//! Artifacts are standard files: stock `age`, `gzip` and `zstd` read what
//! Stowage writes, and Stowage restores what `gzip | age` wrote.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on purpose

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use chrono::Utc;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use stowage_core::record::{Artifact, MANIFEST_FORMAT_VERSION, Manifest};
use stowage_core::testing::{Generated, Pattern};
use stowage_core::{BackupRequest, Compression, Identities, Recipients, RestoreRequest, backup, restore};
use support::{Backends, RecordingSink, age_key, sha256_hex, tool};

fn run(mut command: Command, input: &[u8]) -> Vec<u8> {
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success(), "{command:?} failed");
    output.stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_tools_read_what_stowage_writes() {
    let age = tool("age", "age");
    let backends = Backends::start().await;
    let (identity, recipient) = age_key();
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), &identity).unwrap();
    let mut data = vec![0; 3 << 20];
    Generated::new(Pattern::SqlDump, 5, data.len() as u64).fill(&mut data);

    for (backend, store) in backends.stores() {
        for (compression, decompress) in [
            (Compression::gzip(6), ("gzip", "gzip")),
            (Compression::zstd(3), ("zstd", "zstd")),
        ] {
            let key = format!("interop/{backend}.{}.age", compression.extension());
            let mut request = BackupRequest::new(store.clone(), &key, "Test", "interop");
            request.compression = compression;
            request.recipients = Arc::new(Recipients::parse(std::slice::from_ref(&recipient)).unwrap());
            backup(request, &data[..]).await.unwrap();
            let stored = store
                .get(&Path::parse(&key).unwrap())
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();

            let mut decrypt = Command::new(&age);
            decrypt.arg("-d").arg("-i").arg(key_file.path());
            let compressed = run(decrypt, &stored);
            let mut unpack = Command::new(tool(decompress.0, decompress.1));
            unpack.arg("-d").arg("-c");
            assert_eq!(run(unpack, &compressed), data, "{key}: age -d | {} -d", decompress.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stowage_restores_what_gzip_and_age_wrote() {
    let backends = Backends::start().await;
    let (identity, recipient) = age_key();
    let mut data = vec![0; 2 << 20];
    Generated::new(Pattern::SqlDump, 6, data.len() as u64).fill(&mut data);
    let mut gzip = Command::new(tool("gzip", "gzip"));
    gzip.arg("-6").arg("-c");
    let compressed = run(gzip, &data);
    let mut age = Command::new(tool("age", "age"));
    age.arg("-r").arg(&recipient);
    let encrypted = run(age, &compressed);

    for (backend, store) in backends.stores() {
        let key = format!("stock/{backend}.sql.gz.age");
        store
            .put(&Path::parse(&key).unwrap(), PutPayload::from(encrypted.clone()))
            .await
            .unwrap();
        let manifest = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            kind: "Imported".into(),
            source: "gzip -6 | age -r".into(),
            artifact: Artifact {
                path: key.clone(),
                manifest_path: format!("{key}.manifest.json"),
                stored_bytes: encrypted.len() as u64,
                stored_sha256: sha256_hex(&encrypted),
                plaintext_bytes: data.len() as u64,
                plaintext_sha256: sha256_hex(&data),
                compression: Compression::gzip(6),
                recipients: vec![recipient.clone()],
                started_at: Utc::now(),
                completed_at: Utc::now(),
            },
            details: Default::default(),
        };
        let json = serde_json::to_vec(&manifest).unwrap();
        store
            .put(
                &Path::parse(format!("{key}.manifest.json")).unwrap(),
                PutPayload::from(json),
            )
            .await
            .unwrap();

        let mut sink = RecordingSink::default();
        let request = RestoreRequest {
            identities: Arc::new(Identities::parse(&identity).unwrap()),
            ..RestoreRequest::new(store, &key)
        };
        restore(request, &mut sink).await.unwrap();
        assert_eq!(sink.data, data, "{backend}");
    }
}
