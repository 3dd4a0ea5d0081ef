#![allow(clippy::unwrap_used)]
//! The controller kit against the real test bed: BackupStorage resolution (missing
//! storage, Secret or key, allowedNamespaces, a real S3 server), Events, the error policy
//! in a running controller, status conditions written through the status subresource, and
//! status writes bound to their object rather than its name.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use serde_json::json;
use stowage_api::{BackupStorage, ExecBackup, ExecPhase};
use stowage_core::BackupRequest;
use stowage_core::testing::S3Server;
use stowage_e2e::{bed, wait_for};
use stowage_operator::{Context, Error, Metrics, resolve_storage, status};
use tokio_util::sync::CancellationToken;

fn context(client: &kube::Client, namespace: &str) -> Context {
    Context::new(
        client.clone(),
        "kit-test",
        namespace,
        None,
        Arc::new(Metrics::new().unwrap()),
    )
}

async fn install_crds(client: &kube::Client) {
    stowage_e2e::crds::apply_crds(client, &stowage_api::crds())
        .await
        .unwrap();
}

async fn create_storage(client: &kube::Client, name: &str, spec: serde_json::Value) {
    let storages: Api<BackupStorage> = Api::all(client.clone());
    let storage: BackupStorage = serde_json::from_value(json!({
        "apiVersion": "stowage.io/v1alpha1", "kind": "BackupStorage",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    let _ = storages.delete(name, &Default::default()).await;
    wait_for(&format!("BackupStorage {name} to be gone"), || async {
        Ok(storages.get_opt(name).await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    storages.create(&PostParams::default(), &storage).await.unwrap();
}

#[tokio::test]
async fn backup_storage_resolution_reports_each_mistake_and_reaches_real_s3() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await;
    let s3 = S3Server::start("kit").await.unwrap();
    bed.with_namespace("kit-storage", |client, namespace| async move {
        let ctx = context(&client, &namespace);
        let name = format!("{namespace}-s3");

        let missing = resolve_storage(&ctx, &name, Some(&namespace)).await.unwrap_err();
        assert_eq!(missing.reason(), "StorageNotFound");
        assert!(
            !missing.awaits_change(),
            "a missing storage may be created later: retried"
        );
        assert!(
            missing
                .to_string()
                .contains(&format!("BackupStorage '{name}' not found")),
            "{missing}"
        );

        let spec = s3.spec();
        create_storage(
            &client,
            &name,
            json!({
                "type": "S3",
                "s3": spec.s3,
                "prefix": "kit",
                "credentialsSecretRef": {"namespace": namespace, "name": "s3-credentials"},
                "allowedNamespaces": [namespace],
            }),
        )
        .await;

        let forbidden = resolve_storage(&ctx, &name, Some("someone-else")).await.unwrap_err();
        assert_eq!(forbidden.reason(), "Forbidden");
        assert!(forbidden.awaits_change());
        assert!(
            forbidden
                .to_string()
                .contains("does not allow namespace 'someone-else'"),
            "{forbidden}"
        );

        let no_secret = resolve_storage(&ctx, &name, Some(&namespace)).await.unwrap_err();
        assert_eq!(no_secret.reason(), "SecretNotFound", "{no_secret}");

        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let credentials = s3.credentials();
        let wrong: Secret = serde_json::from_value(json!({
            "metadata": {"name": "s3-credentials"},
            "stringData": {"unrelated": "x"},
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &wrong).await.unwrap();
        let no_key = resolve_storage(&ctx, &name, Some(&namespace)).await.unwrap_err();
        assert_eq!(no_key.reason(), "SecretKeyMissing", "{no_key}");

        secrets.delete("s3-credentials", &Default::default()).await.unwrap();
        let right: Secret = serde_json::from_value(json!({
            "metadata": {"name": "s3-credentials"},
            "stringData": {
                "accessKeyId": credentials.access_key_id,
                "secretAccessKey": credentials.secret_access_key,
            },
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &right).await.unwrap();
        let storage = resolve_storage(&ctx, &name, Some(&namespace)).await.unwrap();
        assert!(!format!("{storage:?}").contains(credentials.secret_access_key.as_deref().unwrap()));

        // The resolved store is the real S3 server: a backup lands under the namespace's scope.
        let vars = stowage_core::template::TemplateVars {
            now: chrono::Utc::now(),
            name: "db".into(),
            namespace: namespace.clone(),
            kind: "ExecBackup".into(),
            schedule_name: String::new(),
        };
        let key = storage.key_for(&vars, Some("{{ .Name }}/dump.sql"), "gz").unwrap();
        assert_eq!(key, format!("kit/execbackup/{namespace}/db/dump.sql.gz"));
        let request = BackupRequest::new(storage.store.clone(), key.clone(), "ExecBackup", "test");
        let artifact = stowage_core::backup(request, &b"select 1;\n"[..]).await.unwrap();
        assert_eq!(artifact.plaintext_bytes, 10);
        let manifest = stowage_core::read_manifest(s3.store().as_ref(), &key).await.unwrap();
        assert_eq!(manifest.artifact.stored_sha256, artifact.stored_sha256);
        storage.check_readable("ExecBackup", Some(&namespace), &key).unwrap();
        let escape = storage.check_readable("ExecBackup", Some("other"), &key).unwrap_err();
        assert_eq!(escape.reason(), "Forbidden");

        let bad_template = storage.key_for(&vars, Some("../../etc/passwd"), "gz").unwrap_err();
        assert_eq!(bad_template.reason(), "InvalidSpec");
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn events_carry_stable_reasons_and_are_counted() {
    let bed = bed().await.unwrap();
    bed.with_namespace("kit-events", |client, namespace| async move {
        let ctx = context(&client, &namespace);
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        let map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "subject"}})).unwrap();
        let map = maps.create(&PostParams::default(), &map).await.unwrap();
        ctx.warning(&map, "StorageUnavailable", "storage 'minio' did not answer: will retry")
            .await;
        ctx.normal(&map, "BackupSucceeded", "stored 1.5 KiB").await;
        let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
        let seen = wait_for("both Events to be listed", || async {
            let list = events.list(&ListParams::default()).await?;
            let reasons: Vec<(String, String)> = list
                .items
                .iter()
                .filter(|event| event.involved_object.name.as_deref() == Some("subject"))
                .map(|event| {
                    (
                        event.type_.clone().unwrap_or_default(),
                        event.reason.clone().unwrap_or_default(),
                    )
                })
                .collect();
            Ok((reasons.len() >= 2).then_some(reasons))
        })
        .await?;
        assert!(
            seen.contains(&("Warning".into(), "StorageUnavailable".into())),
            "{seen:?}"
        );
        assert!(seen.contains(&("Normal".into(), "BackupSucceeded".into())), "{seen:?}");
        let metrics = ctx.metrics.render();
        assert!(
            metrics.contains(r#"stowage_events_total{kind="ConfigMap",reason="StorageUnavailable",type="Warning"} 1"#),
            "{metrics}"
        );
        Ok(())
    })
    .await
    .unwrap();
}

/// What `kubectl get events` and `kubectl describe` show of an object's Events (core/v1):
/// reason, count and message, sorted by reason.
async fn described(events: &Api<Event>, name: &str) -> anyhow::Result<Vec<(String, i32, String)>> {
    let list = events.list(&ListParams::default()).await?;
    let mut seen: Vec<_> = list
        .items
        .into_iter()
        .filter(|event| event.involved_object.name.as_deref() == Some(name))
        .map(|event| {
            (
                event.reason.unwrap_or_default(),
                event.count.unwrap_or(1),
                event.message.unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    Ok(seen)
}

/// The same Events read through events.k8s.io/v1 (as `kubectl events` and kube's clients
/// read them): reason, count (a series' count, else the core count) and note.
async fn described_v1(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<(String, i32, String)>> {
    use k8s_openapi::api::events::v1::Event as EventV1;
    let events: Api<EventV1> = Api::namespaced(client.clone(), namespace);
    let list = events.list(&ListParams::default()).await?;
    let mut seen: Vec<_> = list
        .items
        .into_iter()
        .filter(|event| event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|event| {
            (
                event.reason.unwrap_or_default(),
                event
                    .series
                    .map(|series| series.count)
                    .or(event.deprecated_count)
                    .unwrap_or(1),
                event.note.unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    Ok(seen)
}

/// A schedule says "created run X" at every tick: the user must see the latest run, counted,
/// not the first one (kube's recorder kept the first note of a series), and one Event rather
/// than one per tick.
#[tokio::test]
async fn a_repeated_event_shows_its_latest_message_and_count() {
    let bed = bed().await.unwrap();
    bed.with_namespace("kit-series", |client, namespace| async move {
        let ctx = context(&client, &namespace);
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        let map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "nightly"}})).unwrap();
        let map = maps.create(&PostParams::default(), &map).await.unwrap();
        for run in ["nightly-1", "nightly-2", "nightly-3"] {
            ctx.normal(&map, "RunCreated", format!("created ExecBackup {run}"))
                .await;
        }
        ctx.warning(&map, "RunFailed", "ExecBackup nightly-2 Failed").await;
        let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
        let expected = vec![
            ("RunCreated".to_string(), 3, "created ExecBackup nightly-3".to_string()),
            ("RunFailed".to_string(), 1, "ExecBackup nightly-2 Failed".to_string()),
        ];
        assert_eq!(described(&events, "nightly").await?, expected);
        assert_eq!(described_v1(&client, &namespace, "nightly").await?, expected);

        // A cluster-scoped object's Events land in `default` and fold the same way.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let own = namespaces.get(&namespace).await?;
        for probe in ["first", "second"] {
            ctx.normal(&own, "Probed", format!("{probe} probe")).await;
        }
        assert_eq!(
            described(&Api::namespaced(client.clone(), "default"), &namespace).await?,
            vec![("Probed".to_string(), 2, "second probe".to_string())]
        );

        // The API server drops Events after an hour: a repeat after that starts a new one.
        events
            .delete_collection(&Default::default(), &ListParams::default())
            .await?;
        wait_for("the Events to be gone", || async {
            Ok(described(&events, "nightly").await?.is_empty().then_some(()))
        })
        .await?;
        ctx.normal(&map, "RunCreated", "created ExecBackup nightly-4").await;
        assert_eq!(
            described(&events, "nightly").await?,
            vec![("RunCreated".to_string(), 1, "created ExecBackup nightly-4".to_string())]
        );
        Ok(())
    })
    .await
    .unwrap();
}

/// A controller whose reconcile fails transiently three times and then succeeds, and one
/// whose spec is invalid: the first is retried until it succeeds, the second is not retried.
#[tokio::test]
async fn the_error_policy_retries_transient_failures_and_waits_on_invalid_specs() {
    let bed = bed().await.unwrap();
    bed.with_namespace("kit-policy", |client, namespace| async move {
        let ctx = Arc::new(context(&client, &namespace));
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        for name in ["flaky", "invalid"] {
            let map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
            maps.create(&PostParams::default(), &map).await.unwrap();
        }
        let flaky = Arc::new(AtomicU32::new(0));
        let invalid = Arc::new(AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let controller = Controller::new(maps.clone(), watcher::Config::default());
        let running = tokio::spawn(stowage_operator::run_controller(
            controller,
            ctx.clone(),
            shutdown.clone(),
            {
                let (flaky, invalid) = (flaky.clone(), invalid.clone());
                move |map: Arc<ConfigMap>, _ctx: Arc<Context>| {
                    let (flaky, invalid) = (flaky.clone(), invalid.clone());
                    async move {
                        match map.metadata.name.as_deref() {
                            Some("flaky") if flaky.fetch_add(1, Ordering::SeqCst) < 3 => {
                                Err(Error::transient("StorageUnavailable", "not yet"))
                            }
                            Some("invalid") => {
                                invalid.fetch_add(1, Ordering::SeqCst);
                                Err(Error::InvalidSpec("spec.schedule: not a cron expression".into()))
                            }
                            _ => Ok(Action::await_change()),
                        }
                    }
                }
            },
        ));
        wait_for("the flaky object to succeed after three retries", || async {
            Ok((flaky.load(Ordering::SeqCst) >= 4).then_some(()))
        })
        .await?;
        assert_eq!(
            invalid.load(Ordering::SeqCst),
            1,
            "an invalid spec is not retried until it changes"
        );
        let metrics = ctx.metrics.render();
        assert!(
            metrics.contains(r#"stowage_reconciles_total{kind="ConfigMap",result="StorageUnavailable"} 3"#),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"stowage_reconciles_total{kind="ConfigMap",result="InvalidSpec"} 1"#),
            "{metrics}"
        );

        // Changing the invalid object triggers exactly the reconcile the user expects.
        let mut map = maps.get("invalid").await?;
        map.data = Some([("fixed".to_string(), "yes".to_string())].into());
        maps.replace("invalid", &PostParams::default(), &map).await?;
        wait_for("the changed object to be reconciled again", || async {
            Ok((invalid.load(Ordering::SeqCst) >= 2).then_some(()))
        })
        .await?;
        shutdown.cancel();
        running.await?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn backup_storages_are_probed_and_report_ready_or_why_not() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await;
    bed.with_namespace("kit-probe", |client, namespace| async move {
        let ctx = Arc::new(context(&client, &namespace));
        let dir = tempfile::tempdir()?;
        let working = format!("{namespace}-works");
        let broken = format!("{namespace}-broken");
        create_storage(&client, &working, json!({ "type": "Filesystem", "filesystem": { "path": dir.path() } })).await;
        create_storage(
            &client,
            &broken,
            json!({
                "type": "S3",
                "s3": { "bucket": "nowhere", "endpoint": format!("http://127.0.0.1:{}", stowage_core::testing::free_port()?), "allowHttp": true, "forcePathStyle": true },
                "credentialsSecretRef": { "namespace": namespace, "name": "absent" },
            }),
        )
        .await;
        let probing = tokio::spawn(stowage_operator::storage_status::run(ctx.clone()));
        let storages: Api<BackupStorage> = Api::all(client.clone());
        let ready = |name: String| {
            let storages = storages.clone();
            async move {
                wait_for(&format!("BackupStorage {name} to report Ready"), || async {
                    let storage = storages.get(&name).await?;
                    Ok(storage
                        .status
                        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
                        .map(|c| (c.status, c.reason)))
                })
                .await
            }
        };
        assert_eq!(ready(working.clone()).await?, ("True".to_string(), "ProbeSucceeded".to_string()));
        assert_eq!(ready(broken.clone()).await?, ("False".to_string(), "SecretNotFound".to_string()));
        ctx.shutdown.cancel();
        probing.await?;
        for name in [working, broken] {
            storages.delete(&name, &Default::default()).await?;
        }
        Ok(())
    })
    .await
    .unwrap();
}

/// A run's status writes are bound to its object: once the object is deleted and another is
/// created under its name, a write from the old run is refused as "gone", whatever copy of the
/// object the run holds, and the new object's status stays as it was.
#[tokio::test]
async fn a_status_write_for_a_replaced_object_is_refused_and_leaves_the_new_object_alone() {
    let bed = bed().await.unwrap();
    install_crds(&bed.client()).await;
    bed.with_namespace("kit-status", |client, namespace| async move {
        let api: Api<ExecBackup> = Api::namespaced(client.clone(), &namespace);
        let run = || -> ExecBackup {
            serde_json::from_value(json!({
                "apiVersion": "stowage.io/v1alpha1", "kind": "ExecBackup",
                "metadata": {"name": "run"},
                "spec": {
                    "storage": {"name": "nowhere"},
                    "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}},
                    "backup": {"command": ["true"]},
                },
            }))
            .unwrap()
        };
        let old = api.create(&PostParams::default(), &run()).await?;
        let running = status::patch(&api, &old, &json!({"phase": "Running"})).await?;
        assert_eq!(running.status.map(|s| s.phase), Some(ExecPhase::Running));
        // A stale copy of the same object is fine: the write is refused, then made again.
        let written = status::patch(&api, &old, &json!({"podName": "run-backup"})).await?;
        assert_eq!(written.status.and_then(|s| s.pod_name).as_deref(), Some("run-backup"));

        api.delete("run", &DeleteParams::default()).await?;
        let new = api.create(&PostParams::default(), &run()).await?;
        // The copy a run holds is refused by its resourceVersion; a copy without one is read
        // again and found to be another object.
        let mut unversioned = old.clone();
        unversioned.metadata.resource_version = None;
        for copy in [&old, &unversioned] {
            let failed = json!({"phase": "Failed", "podName": "run-backup"});
            let refused = status::patch(&api, copy, &failed).await.unwrap_err();
            assert!(refused.is_not_found(), "{refused}");
            assert_eq!(refused.reason(), "ObjectGone");
            let refused = status::patch_final(&api, copy, &failed).await.unwrap_err();
            assert!(refused.is_not_found(), "{refused}");
        }
        assert!(status::latest(&api, &old).await?.is_none(), "the old object is gone");
        let current = api.get("run").await?;
        assert_eq!(current.metadata.uid, new.metadata.uid);
        assert_eq!(current.status, None, "the new object's status is untouched");
        assert_eq!(current.metadata.resource_version, new.metadata.resource_version);

        // The new object's own writes go through, and a deleted object is gone too.
        status::patch(&api, &new, &json!({"phase": "Running"})).await?;
        api.delete("run", &DeleteParams::default()).await?;
        assert!(status::patch(&api, &new, &json!({})).await.unwrap_err().is_not_found());
        Ok(())
    })
    .await
    .unwrap();
}
