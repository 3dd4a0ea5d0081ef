//! What the controllers' end-to-end tests share: a controller running in-process against the
//! bed and confined to the test's namespace, objects made from the JSON a user would write, a
//! Filesystem BackupStorage, waits for an object's state and for its Events, a log of the
//! statuses an object showed, keys made with the stock CLIs, and the host directory behind a
//! PVC of the CSI simulator.

use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use stowage_api::BackupStorage;
use stowage_operator::{Context, Metrics};

use crate::wait_for;

/// A controller running in-process; stopped when dropped (a test that drops it mid-run plays a
/// controller that died).
pub struct InProcess {
    pub ctx: Arc<Context>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.ctx.shutdown.cancel();
        self.task.abort();
    }
}

/// Installs Stowage's CRDs, then runs controller `name` (its library's `run`) in-process,
/// watching only `namespace`, as it would run installed in that namespace.
pub async fn start_controller<F, Fut>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    run: F,
) -> anyhow::Result<InProcess>
where
    F: FnOnce(Arc<Context>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    crate::crds::apply_crds(client, &stowage_api::crds()).await?;
    let ctx = Context::new(client.clone(), name, namespace, None, Arc::new(Metrics::new()?))
        .watching(Some(namespace.to_string()));
    let ctx = Arc::new(ctx);
    let task = tokio::spawn(run(ctx.clone()));
    Ok(InProcess { ctx, task })
}

/// Creates the `K` named `name` in `namespace` with `spec` (JSON, as a user writes it).
pub async fn create<K>(client: &kube::Client, namespace: &str, name: &str, spec: serde_json::Value) -> anyhow::Result<K>
where
    K: kube::Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + Serialize + DeserializeOwned,
{
    let kind = K::kind(&());
    let object: K = serde_json::from_value(json!({
        "apiVersion": K::api_version(&()), "kind": kind,
        "metadata": { "name": name }, "spec": spec,
    }))
    .with_context(|| format!("a {kind} from the test's JSON"))?;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating {kind} {name}"))
}

/// Server-side applies `manifest` (any namespaced kind) in `namespace`.
pub async fn apply(client: &kube::Client, namespace: &str, manifest: serde_json::Value) -> anyhow::Result<()> {
    let api_version = manifest["apiVersion"].as_str().context("apiVersion")?;
    let kind = manifest["kind"].as_str().context("kind")?;
    let name = manifest["metadata"]["name"].as_str().context("metadata.name")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    api.patch(
        name,
        &PatchParams::apply("stowage-test").force(),
        &Patch::Apply(&manifest),
    )
    .await
    .with_context(|| format!("applying {kind} {name}"))?;
    Ok(())
}

/// Waits until the `K` named `name` in `namespace` satisfies `done`, and returns it; `what` says
/// what was awaited ("to finish") when the wait times out.
pub async fn wait_until<K>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    what: &str,
    done: impl Fn(&K) -> bool,
) -> anyhow::Result<K>
where
    K: kube::Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + DeserializeOwned,
{
    wait_until_in(&Api::namespaced(client.clone(), namespace), name, what, done).await
}

/// [`wait_until`] for an object of `api`, namespaced or cluster-scoped (`Api::all`).
pub async fn wait_until_in<K>(api: &Api<K>, name: &str, what: &str, done: impl Fn(&K) -> bool) -> anyhow::Result<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    wait_for(&format!("{} {name} {what}", K::kind(&())), || async {
        let object = api.get(name).await?;
        Ok(done(&object).then_some(object))
    })
    .await
}

/// Waits until the run `K` named `name` (a backup or restore) is in a final phase — Succeeded,
/// Failed or PartiallyFailed — and returns it.
pub async fn finished<K>(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<K>
where
    K: kube::Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + Serialize + DeserializeOwned,
{
    finished_in(&Api::namespaced(client.clone(), namespace), name).await
}

/// [`finished`] for a run of `api`, namespaced or cluster-scoped (`Api::all`: ResourceBackup,
/// EtcdBackup…).
pub async fn finished_in<K>(api: &Api<K>, name: &str) -> anyhow::Result<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    wait_until_in(api, name, "to finish", |run: &K| {
        let phase = serde_json::to_value(run).map(|run| run["status"]["phase"].clone());
        matches!(
            phase.as_ref().ok().and_then(|p| p.as_str()),
            Some("Succeeded" | "Failed" | "PartiallyFailed")
        )
    })
    .await
}

/// The condition `type_` of a status: (status, reason, message); empty strings when unset.
pub fn condition(conditions: &[Condition], type_: &str) -> (String, String, String) {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// The Events about object `name` in `namespace`, as (reason, message).
pub async fn events(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<Vec<(String, String)>> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect())
}

/// Reasons of the Events about object `name` in `namespace`.
pub async fn event_reasons(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<Vec<String>> {
    let events = events(client, namespace, name).await?;
    Ok(events.into_iter().map(|(reason, _)| reason).collect())
}

/// Waits until Events with every one of the `expected` reasons were written about object
/// `name` (a controller writes its Events after the status, so a test that saw the status must
/// still wait for them); returns every reason seen. A timeout says which reasons came.
pub async fn wait_events(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    expected: &[&str],
) -> anyhow::Result<Vec<String>> {
    let waited = wait_for(&format!("Events {expected:?} about {name}"), || async {
        let reasons = event_reasons(client, namespace, name).await?;
        let all = expected.iter().all(|wanted| reasons.iter().any(|r| r == wanted));
        Ok(all.then_some(reasons))
    })
    .await;
    match waited {
        Ok(reasons) => Ok(reasons),
        Err(error) => {
            let seen = event_reasons(client, namespace, name).await.unwrap_or_default();
            Err(error.context(format!("the Events about {name} have the reasons {seen:?}")))
        }
    }
}

/// Waits until Events with every one of the `expected` reasons were written about the object
/// with `uid` (in `namespace`; `default` for a cluster-scoped object), and returns every reason
/// seen about it. Unlike [`wait_events`] it tells apart objects of one name: a run deleted and
/// its namesake created again.
pub async fn wait_uid_events(
    client: &kube::Client,
    namespace: &str,
    uid: &str,
    expected: &[&str],
) -> anyhow::Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    wait_for(
        &format!("Events {expected:?} about the object with UID {uid}"),
        || async {
            let reasons: Vec<String> = events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|e| e.involved_object.uid.as_deref() == Some(uid))
                .map(|e| e.reason.unwrap_or_default())
                .collect();
            let all = expected.iter().all(|wanted| reasons.iter().any(|r| r == wanted));
            Ok(all.then_some(reasons))
        },
    )
    .await
}

/// Every status that objects named `name` show from its start on, as a watch delivers them,
/// with the UID of the object that showed it: what `kubectl get -w` would have shown a user.
/// Stops when dropped.
pub struct StatusLog {
    seen: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusLog {
    /// Watches the objects of `api` named `name`.
    pub fn start<K>(api: Api<K>, name: &str) -> StatusLog
    where
        K: kube::Resource + Clone + Debug + Serialize + DeserializeOwned + Send + 'static,
    {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let objects = watcher(api, config).default_backoff().applied_objects();
            let mut objects = std::pin::pin!(objects);
            while let Some(object) = objects.next().await {
                let Ok(object) = object else { continue };
                let uid = object.meta().uid.clone().unwrap_or_default();
                let status = serde_json::to_value(&object)
                    .map(|o| o["status"].clone())
                    .unwrap_or_default();
                log.lock().unwrap_or_else(PoisonError::into_inner).push((uid, status));
            }
        });
        StatusLog { seen, task }
    }

    /// The statuses the object with `uid` showed, in order.
    pub fn of(&self, uid: &str) -> Vec<serde_json::Value> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.iter()
            .filter(|(u, _)| u == uid)
            .map(|(_, status)| status.clone())
            .collect()
    }

    /// Asserts that the object with `uid` never showed a run's end, Failed or Cancelled, not even
    /// for a moment: what an object replacing a cancelled namesake must never inherit.
    pub fn assert_never_ended_badly(&self, uid: &str) {
        let shown = self.of(uid);
        assert!(
            shown
                .iter()
                .all(|s| s["phase"] != "Failed" && !s.to_string().contains("Cancelled")),
            "{shown:#?}"
        );
    }

    /// Waits until the log has seen the object with `uid` (so that it misses nothing after).
    pub async fn seen(&self, uid: &str) -> anyhow::Result<()> {
        wait_for(&format!("the status log to see UID {uid}"), || async {
            Ok((!self.of(uid).is_empty()).then_some(()))
        })
        .await
    }
}

impl Drop for StatusLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Filesystem BackupStorage named after the namespace, in `dir` (a directory of the test's).
pub async fn filesystem_storage(client: &kube::Client, namespace: &str, dir: &Path) -> anyhow::Result<String> {
    let name = format!("{namespace}-fs");
    create_storage(
        client,
        &name,
        json!({ "type": "Filesystem", "filesystem": { "path": dir }, "prefix": "backups" }),
    )
    .await?;
    Ok(name)
}

/// Creates BackupStorage `name` (cluster-wide) with `spec`.
pub async fn create_storage(client: &kube::Client, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
    let storages: Api<BackupStorage> = Api::all(client.clone());
    let storage: BackupStorage = serde_json::from_value(json!({
        "apiVersion": "stowage.io/v1alpha1", "kind": "BackupStorage",
        "metadata": { "name": name }, "spec": spec,
    }))?;
    storages
        .create(&PostParams::default(), &storage)
        .await
        .with_context(|| format!("creating BackupStorage {name}"))?;
    Ok(())
}

/// An age key pair made by `age-keygen`: (identity file text, public key).
pub fn age_keygen() -> anyhow::Result<(String, String)> {
    let output = Command::new("age-keygen")
        .output()
        .context("running age-keygen (install it: apt-get install age)")?;
    anyhow::ensure!(output.status.success(), "age-keygen failed");
    let text = String::from_utf8(output.stdout)?;
    let public = String::from_utf8(output.stderr)?
        .lines()
        .chain(text.lines())
        .find_map(|line| line.split("public key: ").nth(1).map(str::to_string))
        .context("age-keygen printed no public key")?;
    Ok((text, public.trim().to_string()))
}

/// Runs `sh -c script` on the host and returns its stdout.
pub fn sh(script: &str) -> anyhow::Result<Vec<u8>> {
    let output = Command::new("sh").arg("-c").arg(script).output()?;
    anyhow::ensure!(
        output.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout)
}

/// The host directory behind PVC `name` (a volume of the CSI simulator), once it is bound.
pub async fn volume_dir(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<PathBuf> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    wait_for(&format!("PVC {name} to be bound to a host directory"), || async {
        let claim = claims.get(name).await?;
        let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let Some(volume) = claim.spec.and_then(|s| s.volume_name).filter(|_| bound) else {
            return Ok(None);
        };
        let volume = volumes.get(&volume).await?;
        Ok(volume.spec.and_then(|s| s.host_path).map(|h| PathBuf::from(h.path)))
    })
    .await
}
