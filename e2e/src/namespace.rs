//! One namespace per test, and what a failing test prints about it (after linkerd2's
//! policy-test `with_temp_ns`): every object in the namespace, its Events in time order, and
//! the logs of the node simulator and of the controllers under test.

use std::fmt::Write as _;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::FutureExt as _;
use k8s_openapi::api::core::v1::{Event, Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};

use crate::bed::TestBed;

const SERVICE_ACCOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of each log a failure report shows.
const LOG_LINES: usize = 200;

/// Creates a namespace named `<prefix>-xxxxx`, waits for its `default` ServiceAccount (Pods
/// are refused without it), runs `body`, and deletes the namespace. If `body` fails or panics, the
/// namespace's report is printed to stderr first, then the failure propagates.
pub async fn with_namespace<F, Fut, T>(bed: &TestBed, prefix: &str, body: F) -> anyhow::Result<T>
where
    F: FnOnce(kube::Client, String) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let client = bed.client();
    let name = create_namespace(&client, prefix).await?;
    let outcome = AssertUnwindSafe(body(client.clone(), name.clone()))
        .catch_unwind()
        .await;
    let failed = !matches!(outcome, Ok(Ok(_)));
    if failed {
        eprintln!("{}", dump(&client, &name, &bed.logs()).await);
    }
    let namespaces: Api<Namespace> = Api::all(client);
    if let Err(err) = namespaces.delete(&name, &DeleteParams::default()).await {
        eprintln!("deleting namespace {name}: {err}");
    }
    match outcome {
        Ok(result) => result.with_context(|| format!("in namespace {name}")),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Creates a uniquely named namespace (the apiserver picks the suffix) and waits until its
/// `default` ServiceAccount exists.
pub async fn create_namespace(client: &kube::Client, prefix: &str) -> anyhow::Result<String> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut namespace = Namespace::default();
    namespace.metadata.generate_name = Some(format!("{}-", prefix.trim_end_matches('-')));
    let created = namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("creating a namespace named {prefix}-…"))?;
    let name = created
        .metadata
        .name
        .context("the apiserver returned a namespace without a name")?;

    // The ServiceAccount admission refuses Pods until the account exists. Nothing waits for a
    // token Secret: API servers since 1.24 never create one, and the test bed's 1.20 server
    // runs with bound token volumes (see controlplane.rs), so its Pods need none either.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    let deadline = Instant::now() + SERVICE_ACCOUNT_TIMEOUT;
    while accounts.get_opt("default").await?.is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "namespace {name} has no `default` ServiceAccount after {SERVICE_ACCOUNT_TIMEOUT:?}: \
             is kube-controller-manager running?"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(name)
}

/// The failure report of `namespace`: every object of every listable namespaced resource
/// (Secret values left out), the Events sorted by time, and the end of each log.
pub async fn dump(client: &kube::Client, namespace: &str, logs: &[(String, PathBuf)]) -> String {
    let mut report = format!("======== test failed: the state of namespace {namespace} ========\n");
    if let Err(err) = dump_objects(client, namespace, &mut report).await {
        let _ = writeln!(report, "(listing objects failed: {err:#})");
    }
    let _ = writeln!(report, "======== Events in {namespace} ========");
    match events(client, namespace).await {
        Ok(lines) if lines.is_empty() => report.push_str("(none)\n"),
        Ok(lines) => lines.iter().for_each(|line| report.push_str(line)),
        Err(err) => {
            let _ = writeln!(report, "(listing Events failed: {err:#})");
        }
    }
    for (name, path) in logs {
        let _ = writeln!(
            report,
            "======== log {name}: last {LOG_LINES} lines of {} ========",
            path.display()
        );
        report.push_str(&crate::process::log_tail(path, LOG_LINES));
        report.push('\n');
    }
    let _ = writeln!(report, "======== end of the state of namespace {namespace} ========");
    report
}

async fn dump_objects(client: &kube::Client, namespace: &str, report: &mut String) -> anyhow::Result<()> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .context("discovering API resources")?;
    for group in discovery.groups() {
        for (resource, capabilities) in group.recommended_resources() {
            let skip = capabilities.scope != Scope::Namespaced
                || !capabilities.supports_operation(verbs::LIST)
                || resource.plural == "events";
            if skip {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
            let objects = match api.list(&ListParams::default()).await {
                Ok(list) => list.items,
                Err(err) => {
                    let _ = writeln!(report, "--- {}: cannot list: {err}", resource.plural);
                    continue;
                }
            };
            for mut object in objects {
                object.metadata.managed_fields = None;
                if resource.kind == "Secret" {
                    redact_secret(&mut object);
                }
                let name = object.metadata.name.clone().unwrap_or_default();
                let _ = writeln!(report, "--- {} {name} ({})", resource.kind, resource.api_version);
                match serde_saphyr::to_string(&object) {
                    Ok(yaml) => report.push_str(&yaml),
                    Err(err) => {
                        let _ = writeln!(report, "(cannot print: {err})");
                    }
                }
            }
        }
    }
    Ok(())
}

/// Secret values never appear in test output; their keys do.
fn redact_secret(object: &mut DynamicObject) {
    for field in ["data", "stringData"] {
        if let Some(values) = object.data.get_mut(field).and_then(|values| values.as_object_mut()) {
            values
                .values_mut()
                .for_each(|value| *value = serde_json::Value::from("(redacted)"));
        }
    }
}

/// One line per Event, oldest first: time, type, reason, object, count, message.
async fn events(client: &kube::Client, namespace: &str) -> anyhow::Result<Vec<String>> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let mut events = api.list(&ListParams::default()).await?.items;
    let time = |event: &Event| {
        event
            .last_timestamp
            .as_ref()
            .map(|time| time.0)
            .or_else(|| event.event_time.as_ref().map(|time| time.0))
            .or_else(|| event.first_timestamp.as_ref().map(|time| time.0))
            .or_else(|| event.metadata.creation_timestamp.as_ref().map(|time| time.0))
    };
    events.sort_by_key(|event| time(event));
    Ok(events
        .iter()
        .map(|event| {
            let object = &event.involved_object;
            format!(
                "{} {} {} {}/{} (x{}): {}\n",
                time(event).map_or_else(|| "-".to_string(), |time| time.to_string()),
                event.type_.as_deref().unwrap_or("-"),
                event.reason.as_deref().unwrap_or("-"),
                object.kind.as_deref().unwrap_or("-"),
                object.name.as_deref().unwrap_or("-"),
                event.count.unwrap_or(1),
                event.message.as_deref().unwrap_or(""),
            )
        })
        .collect())
}
