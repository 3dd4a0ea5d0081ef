//! The apply passes of a restore (the design is in restore.rs): stream the verified archive,
//! dispatch each ready object (up to [`CONCURRENCY`] at a time) to be applied with server-side
//! apply, or planned for a dry run, and fold the outcomes into the report. Workloads named by
//! the ResourceSet's controllerReferences are held at zero replicas meanwhile and always
//! scaled back (after a failure or a cancellation too); prune runs last. A cancelled restore
//! stops between objects (see restore.rs).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;
use stowage_api::resource_restore::ExistingResourcePolicy;
use stowage_api::resource_set::ResourceSetSpec;

use crate::backup::Served;
use crate::encryption::EncryptionConfig;
use crate::error::{Error, Result};
use crate::plan::{self, Step, Tier};
use crate::reader::{ArchiveStream, Item, Source};
use crate::restore::{FIELD_MANAGER, Options, PlanList, Progress, Report, Verified, read_object};
use crate::selector::ResourceType;
use crate::waits::{self, retry};

/// Objects applied at once (objects of one level do not depend on each other).
const CONCURRENCY: usize = 8;

/// What every in-flight object reads.
struct Shared {
    client: kube::Client,
    options: Options,
    served: Vec<Served>,
    /// `group/plural` of custom resources with a status subresource.
    status_kinds: HashSet<String>,
}

/// One object on its way: what it needs, decided when it was dispatched.
struct Job {
    position: usize,
    step: Step,
    /// Owners restored in this run: old UID → new UID.
    known_owners: HashMap<String, String>,
    /// Held at zero replicas for the restore.
    scaled: bool,
}

enum Outcome {
    Created,
    Updated,
    Unchanged,
    Skipped,
}

/// What came of one object.
struct Done {
    position: usize,
    label: String,
    /// The CRD's name, when the object is a CRD.
    crd: Option<String>,
    old_uid: String,
    result: Result<(Outcome, Option<String>)>,
    orphaned: Vec<String>,
    listed: Option<(PlanList, String)>,
}

/// A workload scaled down for the restore, and its replicas before (None: it did not exist,
/// it comes back at its archived replicas, learnt when it is applied).
struct Scaled {
    api: Api<DynamicObject>,
    label: String,
    key: (String, String, String),
    replicas: Option<i64>,
}

/// Applies a verified archive (or plans it, for a dry run).
pub(crate) async fn run(
    client: &kube::Client,
    served: Vec<Served>,
    source: &Source,
    encryption: Option<&EncryptionConfig>,
    mut verified: Verified,
    options: &Options,
    progress: &Progress,
) -> Result<Report> {
    crate::restore::cluster_status_kinds(client, &mut verified.status_kinds).await;
    let shared = Arc::new(Shared {
        client: client.clone(),
        options: options.clone(),
        served,
        status_kinds: std::mem::take(&mut verified.status_kinds),
    });
    let mut report = Report {
        passes: 1,
        ..Report::default()
    };
    report.counts.skipped += verified.schedule.filtered();
    let mut scaled = if options.dry_run {
        Vec::new()
    } else {
        scale_down(&shared, &verified.resource_set, &mut report).await
    };
    let mut passes = Passes {
        shared: shared.clone(),
        verified: &mut verified,
        new_uids: HashMap::new(),
        pending_crds: Vec::new(),
        scaled: &mut scaled,
        report: &mut report,
        progress,
    };
    let applied = passes.run(source, encryption).await;
    let pruned = match applied {
        Ok(()) if options.prune => {
            let archived = &verified.archived;
            crate::prune::run(
                client,
                &verified.resource_set,
                |group: &str, plural: &str, namespace: Option<&str>, name: &str| {
                    archived.contains(group, plural, namespace, name)
                },
                &shared.served,
                options,
                &mut report,
            )
            .await
        }
        other => other,
    };
    scale_back(scaled, &mut report).await;
    match pruned {
        Ok(()) => Ok(report),
        Err(Error::Cancelled) => {
            report.cancelled = true;
            Ok(report)
        }
        Err(error) => Err(error),
    }
}

struct Passes<'a> {
    shared: Arc<Shared>,
    verified: &'a mut Verified,
    /// Old UID → UID in this cluster, for restored objects that own others.
    new_uids: HashMap<String, String>,
    /// CRDs applied in this run whose Established condition is still to be seen: (label, name).
    pending_crds: Vec<(String, String)>,
    scaled: &'a mut Vec<Scaled>,
    report: &'a mut Report,
    progress: &'a Progress,
}

impl Passes<'_> {
    async fn run(&mut self, source: &Source, encryption: Option<&EncryptionConfig>) -> Result<()> {
        let cancel = self.shared.options.cancel.clone();
        while !self.verified.schedule.is_complete() {
            self.report.passes += 1;
            let mut stream = ArchiveStream::open_until(source, stowage_core::Progress::default(), cancel.clone());
            let mut in_flight = FuturesUnordered::new();
            let mut dispatched = 0;
            while let Some(item) = stream.next().await {
                let Item::Object { position, path, data } = item else {
                    continue;
                };
                let (tier, after_lower_levels) = match self.verified.schedule.decide(position) {
                    crate::schedule::Decision::Ready {
                        tier,
                        after_lower_levels,
                    } => (tier, after_lower_levels),
                    _ => continue,
                };
                if self.verified.schedule.digest(position) != Some(self.verified.archived.digest(&path, &data)) {
                    self.drain(&mut in_flight).await;
                    return Err(Error::Archive {
                        path: source.path.clone(),
                        reason: format!("{path} changed since the archive was verified: was it replaced?"),
                    });
                }
                let crds_first = tier != Tier::CustomResourceDefinitions && !self.pending_crds.is_empty();
                if after_lower_levels || crds_first {
                    self.drain(&mut in_flight).await;
                }
                if crds_first {
                    self.wait_for_crds().await?;
                }
                while in_flight.len() >= CONCURRENCY {
                    if let Some(done) = in_flight.next().await {
                        self.fold(done);
                    }
                }
                // Between objects: the ones in flight finish, no other starts.
                if cancel.is_cancelled() {
                    break;
                }
                let (entry, object) = read_object(&source.path, &self.shared.served, encryption, path, &data)?;
                let step = Step::new(entry, object, &self.shared.options.selection);
                let job = self.prepare(position, step);
                self.verified.schedule.dispatched(position);
                dispatched += 1;
                in_flight.push(apply_one(self.shared.clone(), job));
                if self.verified.schedule.all_dispatched() {
                    break;
                }
            }
            self.drain(&mut in_flight).await;
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            // Done early: the rest of the archive need not be downloaded (this pass's objects
            // were checked against the verified digests one by one).
            if self.verified.schedule.is_complete() {
                break;
            }
            stream.finish().await?;
            if dispatched == 0 {
                // Cannot happen with a verified archive; never loop on one that misbehaves.
                return Err(Error::Archive {
                    path: source.path.clone(),
                    reason: "a pass over the archive found no object left to restore".into(),
                });
            }
        }
        self.wait_for_crds().await
    }

    async fn drain<F: Future<Output = Done>>(&mut self, in_flight: &mut FuturesUnordered<F>) {
        while let Some(done) = in_flight.next().await {
            self.fold(done);
        }
    }

    async fn wait_for_crds(&mut self) -> Result<()> {
        if self.shared.options.dry_run {
            self.pending_crds.clear();
        }
        let cancel = &self.shared.options.cancel;
        for (label, name) in std::mem::take(&mut self.pending_crds) {
            if !waits::established(&self.shared.client, &name, cancel).await? {
                self.report.fail(label, waits::not_established());
            }
        }
        Ok(())
    }

    /// What `step` needs from the run so far: its owners' new UIDs and whether it is held at
    /// zero replicas (a workload absent before the restore comes back at its archived ones).
    fn prepare(&mut self, position: usize, step: Step) -> Job {
        let known_owners = step.object["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["uid"].as_str())
            .filter_map(|old| Some((old.to_string(), self.new_uids.get(old)?.clone())))
            .collect();
        let key = (
            step.entry.resource.plural.clone(),
            step.namespace.clone().unwrap_or_default(),
            step.name.clone(),
        );
        let scaled = match self.scaled.iter_mut().find(|s| s.key == key) {
            Some(workload) => {
                if workload.replicas.is_none() {
                    workload.replicas = Some(step.object["spec"]["replicas"].as_i64().unwrap_or(1));
                }
                true
            }
            None => false,
        };
        Job {
            position,
            step,
            known_owners,
            scaled,
        }
    }

    fn fold(&mut self, done: Done) {
        self.verified.schedule.finished(done.position);
        self.report.orphaned.extend(done.orphaned);
        if let Some((which, entry)) = done.listed {
            self.report.list(which, entry);
        }
        let counts = &mut self.report.counts;
        let outcome = match done.result {
            Ok((outcome, new_uid)) => {
                if let Some(uid) = new_uid
                    && self.verified.schedule.owns_others(&done.old_uid)
                {
                    self.new_uids.insert(done.old_uid, uid);
                }
                if let Some(name) = done.crd
                    && !matches!(outcome, Outcome::Skipped)
                {
                    self.pending_crds.push((done.label.clone(), name));
                }
                match outcome {
                    Outcome::Created => {
                        counts.created += 1;
                        "Created"
                    }
                    Outcome::Updated => {
                        counts.updated += 1;
                        "Updated"
                    }
                    Outcome::Unchanged => {
                        counts.unchanged += 1;
                        "Unchanged"
                    }
                    Outcome::Skipped => {
                        counts.skipped += 1;
                        "Skipped"
                    }
                }
            }
            Err(error) => {
                self.report.fail(done.label, error.to_string());
                "Failed"
            }
        };
        if self.shared.options.dry_run {
            self.progress.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.progress.outcome(outcome);
        }
    }
}

/// Applies (or plans) one object; never fails the run, only this object.
async fn apply_one(shared: Arc<Shared>, job: Job) -> Done {
    let Job {
        position,
        step,
        known_owners,
        scaled,
    } = job;
    let mut done = Done {
        position,
        label: step.label(),
        crd: (step.tier == Tier::CustomResourceDefinitions).then(|| step.name.clone()),
        old_uid: step.entry.uid.clone(),
        result: Ok((Outcome::Skipped, None)),
        orphaned: Vec::new(),
        listed: None,
    };
    done.result = restore_one(&shared, &step, known_owners, scaled, &mut done).await;
    done
}

async fn restore_one(
    shared: &Shared,
    step: &Step,
    mut owners: HashMap<String, String>,
    scaled: bool,
    done: &mut Done,
) -> Result<(Outcome, Option<String>)> {
    let label = step.label();
    let resource = &step.entry.resource;
    let api = api_for(&shared.client, resource, step.namespace.as_deref());
    let live = retry(resource, &shared.options.cancel, || api.get_opt(&step.name))
        .await
        .map_err(|e| Error::kube(format!("reading {label}"), e))?;
    if live.is_some() && shared.options.policy == ExistingResourcePolicy::Skip {
        done.listed = Some((|p| &mut p.skip, label));
        return Ok((Outcome::Skipped, None));
    }
    resolve_owners(shared, step, &mut owners).await;
    let (mut desired, dropped) = plan::desired(
        step,
        |r| owners.get(r["uid"].as_str()?).cloned(),
        &shared.options.selection,
    );
    for owner in dropped {
        done.orphaned.push(format!(
            "{label}: owner {owner} is neither in the archive nor in the cluster"
        ));
    }
    if scaled {
        desired["spec"]["replicas"] = json!(0);
    }
    let json = |o: &DynamicObject| serde_json::to_value(o).unwrap_or_default();
    if shared.options.dry_run {
        let Some(live) = live else {
            done.listed = Some((|p| &mut p.create, label));
            return Ok((Outcome::Created, None));
        };
        let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
        let patch = Patch::Apply(&desired);
        let after = retry(resource, &shared.options.cancel, || {
            api.patch(&step.name, &params, &patch)
        })
        .await
        .map_err(|e| Error::kube(format!("dry-run applying {label}"), e))?;
        let fields = plan::changed_fields(&json(&live), &json(&after));
        return Ok(if fields.is_empty() {
            done.listed = Some((|p| &mut p.unchanged, label));
            (Outcome::Unchanged, None)
        } else {
            done.listed = Some((|p| &mut p.update, format!("{label} ({})", fields.join(", "))));
            (Outcome::Updated, None)
        });
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let patch = Patch::Apply(&desired);
    let applied = retry(resource, &shared.options.cancel, || {
        api.patch(&step.name, &params, &patch)
    })
    .await
    .map_err(|e| Error::kube(format!("applying {label}"), e))?;
    let status = &step.object["status"];
    let status_changed = if status.is_object()
        && shared
            .status_kinds
            .contains(&format!("{}/{}", resource.group, resource.plural))
    {
        let patch = Patch::Merge(json!({ "status": status }));
        let status_params = PatchParams::default();
        let patched = retry(resource, &shared.options.cancel, || {
            api.patch_status(&step.name, &status_params, &patch)
        })
        .await
        .map_err(|e| Error::kube(format!("restoring the status of {label}"), e))?;
        patched.data.get("status") != live.as_ref().and_then(|l| l.data.get("status"))
    } else {
        false
    };
    // Compared field by field: taking over field ownership alone bumps resourceVersion.
    let outcome = match live {
        None => Outcome::Created,
        Some(live) if plan::changed_fields(&json(&live), &json(&applied)).is_empty() && !status_changed => {
            Outcome::Unchanged
        }
        Some(_) => Outcome::Updated,
    };
    Ok((outcome, applied.metadata.uid))
}

/// Adds to `found` the live UIDs of the owners not restored in this run, looked up by the
/// reference's kind and name (in the object's namespace when the owner is namespaced).
/// Owners found nowhere are left out, and so dropped from the object.
async fn resolve_owners(shared: &Shared, step: &Step, found: &mut HashMap<String, String>) {
    for reference in step.object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(old_uid) = reference["uid"].as_str() else {
            continue;
        };
        if found.contains_key(old_uid) {
            continue;
        }
        let api_version = reference["apiVersion"].as_str().unwrap_or_default();
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        let kind = reference["kind"].as_str().unwrap_or_default();
        let Some(served) = shared
            .served
            .iter()
            .find(|s| s.resource.group == group && s.resource.kind == kind)
        else {
            continue;
        };
        let mut name = reference["name"].as_str().unwrap_or_default().to_string();
        if plan::is_namespace(&served.resource) {
            name = shared.options.selection.map_namespace(&name);
        }
        let namespace = step.namespace.as_deref().filter(|_| served.resource.namespaced);
        let api = api_for(&shared.client, &served.resource, namespace);
        if let Ok(Some(owner)) = api.get_opt(&name).await
            && let Some(uid) = owner.metadata.uid
        {
            found.insert(old_uid.to_string(), uid);
        }
    }
}

/// Scales the ResourceSet's controllerReferences to zero; returns what to scale back.
async fn scale_down(shared: &Shared, resource_set: &ResourceSetSpec, report: &mut Report) -> Vec<Scaled> {
    let mut scaled = Vec::new();
    for reference in &resource_set.controller_references {
        let group = reference.api_version.split_once('/').map_or("", |(g, _)| g);
        let namespace = shared.options.selection.map_namespace(&reference.namespace);
        let label = format!("{} {}/{}", reference.resource, namespace, reference.name);
        let Some(served) = shared
            .served
            .iter()
            .find(|s| s.resource.group == group && s.resource.plural == reference.resource)
        else {
            report.fail(label, "controllerReference: the cluster serves no such resource".into());
            continue;
        };
        let api = api_for(&shared.client, &served.resource, Some(&namespace));
        let key = (reference.resource.clone(), namespace.clone(), reference.name.clone());
        let replicas = match api.get_scale(&reference.name).await {
            Ok(scale) => {
                let zero = Patch::Merge(json!({"spec": {"replicas": 0}}));
                if let Err(e) = api.patch_scale(&reference.name, &PatchParams::default(), &zero).await {
                    report.fail(label, format!("scaling down before the restore: {e}"));
                    continue;
                }
                Some(scale.spec.and_then(|s| s.replicas).map(i64::from).unwrap_or(0))
            }
            Err(kube::Error::Api(status)) if status.code == 404 => None,
            Err(e) => {
                report.fail(label, format!("reading its scale before the restore: {e}"));
                continue;
            }
        };
        scaled.push(Scaled {
            api,
            label,
            key,
            replicas,
        });
    }
    scaled
}

/// Gives every scaled workload its replicas back, whatever happened in between.
async fn scale_back(scaled: Vec<Scaled>, report: &mut Report) {
    for workload in scaled {
        // Absent before and not restored (filtered out, or failed and listed already).
        let Some(replicas) = workload.replicas else {
            continue;
        };
        let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
        let name = &workload.key.2;
        match workload.api.patch_scale(name, &PatchParams::default(), &patch).await {
            Ok(_) => report.scaled_back += 1,
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => report.fail(
                workload.label,
                format!("scaling back to {replicas} replicas after the restore: {e}"),
            ),
        }
    }
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
