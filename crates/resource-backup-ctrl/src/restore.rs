//! Restore: fetch and verify the whole archive (nothing is applied before its checksum
//! passed), then apply the plan object by object with server-side apply. One object's
//! failure is recorded and the rest go on; the run ends PartiallyFailed with the list.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use stowage_api::resource_restore::{ExistingResourcePolicy, MAX_LISTED, ObjectFailure, RestoreCounts, RestorePlan};
use stowage_core::{Identities, RestoreRequest};

use crate::archive::{self, Archive};
use crate::backup::{Served, discover};
use crate::encryption::EncryptionConfig;
use crate::error::{Error, Result};
use crate::plan::{self, Step, Tier};
use crate::selector::ResourceType;

/// The field manager of everything a restore writes.
pub const FIELD_MANAGER: &str = "stowage-restore";
const PIPE_BYTES: usize = 1 << 20;
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);
const ATTEMPTS: u32 = 4;

/// Downloads, verifies and reads the archive at `path`. Any integrity, key or format
/// problem fails here, before a single object is applied.
pub async fn fetch(
    store: Arc<dyn object_store::ObjectStore>,
    path: &str,
    identities: Identities,
    encryption: Option<&EncryptionConfig>,
) -> Result<Archive> {
    let mut request = RestoreRequest::new(store, path);
    request.identities = Arc::new(identities);
    let (sink, source) = tokio::io::duplex(PIPE_BYTES);
    let restore = async move {
        let mut sink = sink;
        stowage_core::restore(request, &mut sink).await
        // The sink drops here: on failure the reader sees the stream end early.
    };
    let (restored, read) = tokio::join!(restore, archive::read(path, source, encryption));
    restored?;
    read
}

/// How to restore.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub selection: plan::Selection,
    pub policy: ExistingResourcePolicy,
    pub prune: bool,
    pub dry_run: bool,
    pub delete_timeout: Duration,
}

/// What a restore did, or would do.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub counts: RestoreCounts,
    pub failures: Vec<ObjectFailure>,
    pub plan: RestorePlan,
    /// Objects restored without an owner that is neither in the archive nor in the cluster.
    pub orphaned: Vec<String>,
}

impl Report {
    pub(crate) fn fail(&mut self, object: String, reason: String) {
        self.counts.failed += 1;
        if self.failures.len() < MAX_LISTED {
            self.failures.push(ObjectFailure { object, reason });
        }
    }

    pub(crate) fn list(&mut self, which: fn(&mut RestorePlan) -> &mut Vec<String>, entry: String) {
        let list = which(&mut self.plan);
        if list.len() < MAX_LISTED {
            list.push(entry);
        } else {
            self.plan.truncated = true;
        }
    }
}

enum Outcome {
    Created,
    Updated,
    Unchanged,
    Skipped,
}

/// Applies `archive` to the cluster (or plans it, for a dry run).
pub async fn apply(client: &kube::Client, archive: &Archive, options: &Options) -> Result<Report> {
    options
        .selection
        .validate()
        .map_err(|reason| Error::invalid("spec", reason))?;
    if options.prune && !options.selection.namespace_mapping.is_empty() {
        return Err(Error::invalid(
            "spec.prune",
            "prune compares the backup's own namespaces with the archive and cannot be combined with namespaceMapping",
        ));
    }
    let served = discover(client).await?;
    let mut run = Run {
        client: client.clone(),
        options: options.clone(),
        served,
        index: archive
            .objects
            .iter()
            .map(|(e, _)| (e.uid.clone(), e.clone()))
            .collect(),
        new_uids: HashMap::new(),
        status_kinds: status_kinds(client, archive).await,
        scaled_names: HashSet::new(),
        report: Report::default(),
    };
    let (steps, filtered) = plan::order(&archive.objects, &options.selection);
    run.report.counts.skipped += filtered;

    let scaled = if options.dry_run {
        Vec::new()
    } else {
        run.scale_down(archive).await
    };
    run.apply_steps(&steps).await;
    let pruned = if options.prune {
        crate::prune::run(client, archive, &run.served, options, &mut run.report).await
    } else {
        Ok(())
    };
    run.scale_back(scaled).await;
    pruned.map(|()| run.report)
}

/// A workload scaled down for the restore, and its replicas before.
struct Scaled {
    api: Api<DynamicObject>,
    label: String,
    name: String,
    replicas: i64,
}

struct Run {
    client: kube::Client,
    options: Options,
    served: Vec<Served>,
    /// Archive entries by their old UID.
    index: HashMap<String, archive::IndexEntry>,
    /// Old UID → UID in this cluster, for objects restored in this run.
    new_uids: HashMap<String, String>,
    /// `group/plural` of custom resources with a status subresource.
    status_kinds: HashSet<String>,
    /// Workloads held at zero replicas during the restore: (plural, namespace, name).
    scaled_names: HashSet<(String, String, String)>,
    report: Report,
}

impl Run {
    async fn apply_steps(&mut self, steps: &[Step]) {
        let mut crds = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            match self.restore_one(step).await {
                Ok(outcome) => {
                    let counts = &mut self.report.counts;
                    match outcome {
                        Outcome::Created => counts.created += 1,
                        Outcome::Updated => counts.updated += 1,
                        Outcome::Unchanged => counts.unchanged += 1,
                        Outcome::Skipped => counts.skipped += 1,
                    }
                    if step.tier == Tier::CustomResourceDefinitions {
                        crds.push(step);
                    }
                }
                Err(error) => self.report.fail(step.label(), error.to_string()),
            }
            let last_crd = step.tier == Tier::CustomResourceDefinitions
                && steps
                    .get(i + 1)
                    .is_none_or(|next| next.tier != Tier::CustomResourceDefinitions);
            if last_crd && !self.options.dry_run {
                for crd in std::mem::take(&mut crds) {
                    if let Err(reason) = wait_established(&self.client, &crd.name).await {
                        self.report.fail(crd.label(), reason);
                    }
                }
            }
        }
    }

    async fn restore_one(&mut self, step: &Step) -> Result<Outcome> {
        let label = step.label();
        let api = api_for(&self.client, &step.entry.resource, step.namespace.as_deref());
        let live = retry(&step.entry.resource, || api.get_opt(&step.name))
            .await
            .map_err(|e| Error::kube(format!("reading {label}"), e))?;
        if live.is_some() && self.options.policy == ExistingResourcePolicy::Skip {
            self.report.list(|p| &mut p.skip, label);
            return Ok(Outcome::Skipped);
        }
        let owners = self.resolve_owners(step).await;
        let (mut desired, dropped) = plan::desired(
            step,
            |r| owners.get(r["uid"].as_str()?).cloned(),
            &self.options.selection,
        );
        for owner in dropped {
            self.report.orphaned.push(format!(
                "{label}: owner {owner} is neither in the archive nor in the cluster"
            ));
        }
        if self.is_scaled_workload(step) {
            desired["spec"]["replicas"] = json!(0);
        }
        if self.options.dry_run {
            return self.plan_one(&api, step, live, &desired).await;
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let patch = Patch::Apply(&desired);
        let applied = retry(&step.entry.resource, || api.patch(&step.name, &params, &patch))
            .await
            .map_err(|e| Error::kube(format!("applying {label}"), e))?;
        if let Some(uid) = &applied.metadata.uid {
            self.new_uids.insert(step.entry.uid.clone(), uid.clone());
        }
        let status = &step.object["status"];
        let resource = &step.entry.resource;
        let status_changed = if status.is_object()
            && self
                .status_kinds
                .contains(&format!("{}/{}", resource.group, resource.plural))
        {
            let patch = Patch::Merge(json!({ "status": status }));
            let status_params = PatchParams::default();
            let patched = retry(resource, || api.patch_status(&step.name, &status_params, &patch))
                .await
                .map_err(|e| Error::kube(format!("restoring the status of {label}"), e))?;
            patched.data.get("status") != live.as_ref().and_then(|l| l.data.get("status"))
        } else {
            false
        };
        // Compared field by field: taking over field ownership alone bumps resourceVersion.
        let json = |o: &DynamicObject| serde_json::to_value(o).unwrap_or_default();
        Ok(match live {
            None => Outcome::Created,
            Some(live) if plan::changed_fields(&json(&live), &json(&applied)).is_empty() && !status_changed => {
                Outcome::Unchanged
            }
            Some(_) => Outcome::Updated,
        })
    }

    async fn plan_one(
        &mut self,
        api: &Api<DynamicObject>,
        step: &Step,
        live: Option<DynamicObject>,
        desired: &Value,
    ) -> Result<Outcome> {
        let label = step.label();
        let Some(live) = live else {
            self.report.list(|p| &mut p.create, label);
            return Ok(Outcome::Created);
        };
        let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
        let patch = Patch::Apply(desired);
        let after = retry(&step.entry.resource, || api.patch(&step.name, &params, &patch))
            .await
            .map_err(|e| Error::kube(format!("dry-run applying {label}"), e))?;
        let json = |o: &DynamicObject| serde_json::to_value(o).unwrap_or_default();
        let fields = plan::changed_fields(&json(&live), &json(&after));
        if fields.is_empty() {
            self.report.list(|p| &mut p.unchanged, label);
            Ok(Outcome::Unchanged)
        } else {
            self.report
                .list(|p| &mut p.update, format!("{label} ({})", fields.join(", ")));
            Ok(Outcome::Updated)
        }
    }

    /// New UIDs of the owners of `step`'s object, by old UID: restored in this run, or found
    /// live by kind, namespace and name. Owners found nowhere are left out (and dropped).
    async fn resolve_owners(&self, step: &Step) -> HashMap<String, String> {
        let mut found = HashMap::new();
        for reference in step.object["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(old_uid) = reference["uid"].as_str() else {
                continue;
            };
            if let Some(uid) = self.new_uids.get(old_uid) {
                found.insert(old_uid.to_string(), uid.clone());
                continue;
            }
            let (resource, namespace, name) = match self.index.get(old_uid) {
                Some(entry) => (
                    Some(entry.resource.clone()),
                    entry
                        .namespace
                        .as_deref()
                        .map(|ns| self.options.selection.map_namespace(ns)),
                    if entry.resource.group.is_empty() && entry.resource.plural == "namespaces" {
                        self.options.selection.map_namespace(&entry.name)
                    } else {
                        entry.name.clone()
                    },
                ),
                None => {
                    let api_version = reference["apiVersion"].as_str().unwrap_or_default();
                    let group = api_version.split_once('/').map_or("", |(g, _)| g);
                    let kind = reference["kind"].as_str().unwrap_or_default();
                    let resource = self
                        .served
                        .iter()
                        .find(|s| s.resource.group == group && s.resource.kind == kind)
                        .map(|s| s.resource.clone());
                    let namespace = resource.as_ref().filter(|r| r.namespaced).and(step.namespace.clone());
                    (
                        resource,
                        namespace,
                        reference["name"].as_str().unwrap_or_default().to_string(),
                    )
                }
            };
            let Some(resource) = resource else { continue };
            let api = api_for(&self.client, &resource, namespace.as_deref());
            if let Ok(Some(owner)) = api.get_opt(&name).await
                && let Some(uid) = owner.metadata.uid
            {
                found.insert(old_uid.to_string(), uid);
            }
        }
        found
    }

    /// Scales the ResourceSet's controllerReferences to zero; returns what to scale back.
    /// A workload that does not exist yet comes back at its archived replicas.
    async fn scale_down(&mut self, archive: &Archive) -> Vec<Scaled> {
        let mut scaled = Vec::new();
        for reference in &archive.resource_set.controller_references {
            let group = reference.api_version.split_once('/').map_or("", |(g, _)| g);
            let namespace = self.options.selection.map_namespace(&reference.namespace);
            let label = format!("{} {}/{}", reference.resource, namespace, reference.name);
            let Some(served) = self
                .served
                .iter()
                .find(|s| s.resource.group == group && s.resource.plural == reference.resource)
            else {
                self.report
                    .fail(label, "controllerReference: the cluster serves no such resource".into());
                continue;
            };
            let api = api_for(&self.client, &served.resource, Some(&namespace));
            self.scaled_names
                .insert((reference.resource.clone(), namespace.clone(), reference.name.clone()));
            let archived = archive.objects.iter().find(|(e, _)| {
                e.resource.plural == reference.resource
                    && e.namespace.as_deref() == Some(reference.namespace.as_str())
                    && e.name == reference.name
            });
            let replicas = match api.get_scale(&reference.name).await {
                Ok(scale) => {
                    let zero = Patch::Merge(json!({"spec": {"replicas": 0}}));
                    if let Err(e) = api.patch_scale(&reference.name, &PatchParams::default(), &zero).await {
                        self.report.fail(label, format!("scaling down before the restore: {e}"));
                        continue;
                    }
                    scale.spec.and_then(|s| s.replicas).map(i64::from).unwrap_or(0)
                }
                Err(kube::Error::Api(status)) if status.code == 404 => match archived {
                    Some((_, object)) => object["spec"]["replicas"].as_i64().unwrap_or(1),
                    None => continue,
                },
                Err(e) => {
                    self.report
                        .fail(label, format!("reading its scale before the restore: {e}"));
                    continue;
                }
            };
            scaled.push(Scaled {
                api,
                label,
                name: reference.name.clone(),
                replicas,
            });
        }
        scaled
    }

    /// Gives every scaled workload its replicas back, whatever happened in between.
    async fn scale_back(&mut self, scaled: Vec<Scaled>) {
        for workload in scaled {
            let patch = Patch::Merge(json!({"spec": {"replicas": workload.replicas}}));
            match workload
                .api
                .patch_scale(&workload.name, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => {}
                // Not restored (filtered out, or it failed and is listed already): nothing to scale.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => self.report.fail(
                    workload.label,
                    format!("scaling back to {} replicas after the restore: {e}", workload.replicas),
                ),
            }
        }
    }

    fn is_scaled_workload(&self, step: &Step) -> bool {
        let key = (
            step.entry.resource.plural.clone(),
            step.namespace.clone().unwrap_or_default(),
            step.name.clone(),
        );
        self.scaled_names.contains(&key)
    }
}

/// Custom resource types (`group/plural`) with a status subresource, from the archive's CRDs
/// and the cluster's.
async fn status_kinds(client: &kube::Client, archive: &Archive) -> HashSet<String> {
    let mut crds: Vec<Value> = archive
        .objects
        .iter()
        .filter(|(e, _)| e.resource.plural == "customresourcedefinitions")
        .map(|(_, o)| o.clone())
        .collect();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    if let Ok(list) = api.list(&ListParams::default()).await {
        crds.extend(list.items.iter().filter_map(|crd| serde_json::to_value(crd).ok()));
    }
    crds.iter()
        .filter(|crd| {
            crd["spec"]["versions"]
                .as_array()
                .is_some_and(|versions| versions.iter().any(|v| v["subresources"]["status"].is_object()))
        })
        .map(|crd| {
            format!(
                "{}/{}",
                crd["spec"]["group"].as_str().unwrap_or_default(),
                crd["spec"]["names"]["plural"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// An API for `resource`, in `namespace` when it is namespaced.
pub fn api_for(client: &kube::Client, resource: &ResourceType, namespace: Option<&str>) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(&resource.group, &resource.version, &resource.kind);
    let api_resource = ApiResource::from_gvk_with_plural(&gvk, &resource.plural);
    match namespace.filter(|_| resource.namespaced) {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &api_resource),
        None => Api::all_with(client.clone(), &api_resource),
    }
}

/// Retries transient API errors (throttling, server errors, conflicts, and a custom resource
/// type not served yet right after its CRD) a few times with growing pauses.
async fn retry<T, F, Fut>(resource: &ResourceType, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let custom = resource.group.contains('.') && !resource.group.ends_with("k8s.io");
    let mut attempt = 1;
    loop {
        match call().await {
            Err(kube::Error::Api(status))
                if attempt < ATTEMPTS
                    && (matches!(status.code, 409 | 429 | 500 | 502 | 503 | 504) || (custom && status.code == 404)) =>
            {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn wait_established(client: &kube::Client, name: &str) -> Result<(), String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + ESTABLISH_TIMEOUT;
    loop {
        let established = api.get_opt(name).await.ok().flatten().is_some_and(|crd| {
            crd.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "not Established after {ESTABLISH_TIMEOUT:?}: its custom resources may fail"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
