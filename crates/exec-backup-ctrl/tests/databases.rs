#![allow(clippy::unwrap_used)]
//! The seed's own scenario with real databases: PostgreSQL and MariaDB servers started by the
//! test bed, dumped by `pg_dump` / `mysqldump` in an ExecBackup's Pod (credentials from a
//! Secret through env), the table dropped, and restored by an ExecRestore through `psql` /
//! `mysql`: the rows are identical.

mod support;

use serde_json::json;
use stowage_api::ExecPhase;
use stowage_e2e::bed;
use stowage_e2e::databases::{MariaDbServer, PostgresServer, SAMPLE_TABLE};
use support::*;

const ROWS: u32 = 5000;

/// A Pod template whose container gets every variable of Secret `secret` (the database
/// client's connection settings).
fn client_template(secret: &str) -> serde_json::Value {
    json!({
        "spec": {
            "containers": [{
                "name": "client",
                "image": "postgres:16",
                "command": ["sleep", "infinity"],
                "envFrom": [{ "secretRef": { "name": secret } }],
            }],
        },
    })
}

fn env_secret(env: Vec<(String, String)>) -> serde_json::Value {
    serde_json::Value::Object(env.into_iter().map(|(key, value)| (key, value.into())).collect())
}

#[tokio::test]
async fn postgres_dumped_by_pg_dump_and_restored_by_psql_has_identical_rows() {
    let bed = bed().await.unwrap();
    let server = PostgresServer::start().unwrap();
    server.fill_table(server.database(), ROWS).unwrap();
    let before = server.checksum(server.database()).unwrap();
    bed.with_namespace("exec-postgres", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let dir = tempfile::tempdir()?;
        let storage = filesystem_storage(&client, &ns, &dir.path().join("store")).await?;
        let (identity, public) = age_keygen()?;
        secret(&client, &ns, "backup-key", json!({ "key.txt": identity })).await?;
        secret(&client, &ns, "postgres", env_secret(server.env())).await?;
        create_backup(
            &client,
            &ns,
            "shop",
            json!({
                "backup": { "command": ["pg_dump", "--clean", "--if-exists", "--no-owner"] },
                "restore": { "command": ["psql", "--set", "ON_ERROR_STOP=1", "--quiet"] },
                "storage": { "name": storage },
                "encryption": { "recipients": [public], "decryptionKey": { "name": "backup-key", "key": "key.txt" } },
                "template": client_template("postgres"),
            }),
        )
        .await?;
        let backup = finished_backup(&client, &ns, "shop").await?.status.unwrap();
        assert_eq!(backup.phase, ExecPhase::Succeeded, "{backup:#?}");
        assert!(backup.artifact.unwrap().artifact.plaintext_bytes > u64::from(ROWS) * 20);

        server.psql(&format!("DROP TABLE {SAMPLE_TABLE}"))?;
        assert!(server.checksum(server.database()).is_err(), "the table is gone");
        create_restore(&client, &ns, "shop-restore", json!({ "backupRef": { "name": "shop" } })).await?;
        let restore = finished_restore(&client, &ns, "shop-restore").await?.status.unwrap();
        assert_eq!(restore.phase, ExecPhase::Succeeded, "{restore:#?}");
        assert_eq!(server.checksum(server.database())?, before);
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn mariadb_dumped_by_mysqldump_and_restored_by_mysql_has_identical_rows() {
    let bed = bed().await.unwrap();
    let server = MariaDbServer::start().unwrap();
    server.fill_table(server.database(), ROWS).unwrap();
    let before = server.checksum(server.database()).unwrap();
    bed.with_namespace("exec-mariadb", |client, ns| async move {
        let _controller = start_controller(&client, &ns).await?;
        let dir = tempfile::tempdir()?;
        let storage = filesystem_storage(&client, &ns, &dir.path().join("store")).await?;
        secret(&client, &ns, "mariadb", env_secret(server.env())).await?;
        // The seed's example: mysqldump of "$DATABASE", restored with mysql "$DATABASE".
        create_backup(
            &client,
            &ns,
            "shop",
            json!({
                "backup": { "command": ["sh", "-c"], "args": ["mysqldump --single-transaction \"$MYSQL_DATABASE\""] },
                "restore": { "command": ["sh", "-c"], "args": ["mysql \"$MYSQL_DATABASE\""] },
                "storage": { "name": storage },
                "compression": { "algorithm": "zstd" },
                "template": client_template("mariadb"),
            }),
        )
        .await?;
        let backup = finished_backup(&client, &ns, "shop").await?.status.unwrap();
        assert_eq!(backup.phase, ExecPhase::Succeeded, "{backup:#?}");

        server.mysql(&format!("DROP TABLE {SAMPLE_TABLE}"))?;
        assert!(server.checksum(server.database()).is_err(), "the table is gone");
        create_restore(&client, &ns, "shop-restore", json!({ "backupRef": { "name": "shop" } })).await?;
        let restore = finished_restore(&client, &ns, "shop-restore").await?.status.unwrap();
        assert_eq!(restore.phase, ExecPhase::Succeeded, "{restore:#?}");
        assert_eq!(server.checksum(server.database())?, before);
        Ok(())
    })
    .await
    .unwrap();
}
