//! The restore plan, pure logic: which archive objects to restore (include/exclude), where
//! (namespaceMapping), in which order (CRDs, Namespaces, other cluster-scoped, namespaced;
//! owners before dependents), and what exactly to send (server fields dropped, ownerReferences
//! re-linked to the owners' new UIDs).

use std::collections::BTreeMap;

use serde_json::Value;
use stowage_api::resource_restore::RestoreFilter;

use crate::index::{IndexEntry, describe};
use crate::selector::{ResourceType, check_label_selector, label_selector_matches};

/// Restore tiers, applied in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    CustomResourceDefinitions,
    Namespaces,
    ClusterScoped,
    Namespaced,
}

/// One object to restore.
#[derive(Clone, Debug)]
pub struct Step {
    pub entry: IndexEntry,
    /// The object as archived.
    pub object: Value,
    pub tier: Tier,
    /// Its name in this cluster (a mapped Namespace gets its new name).
    pub name: String,
    /// Its namespace in this cluster, after namespaceMapping.
    pub namespace: Option<String>,
}

impl Step {
    /// `Deployment.apps shop/web`, with the target namespace.
    pub fn label(&self) -> String {
        let mut entry = self.entry.clone();
        entry.namespace.clone_from(&self.namespace);
        entry.name.clone_from(&self.name);
        describe(&entry)
    }
}

/// Which objects go where.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub namespace_mapping: BTreeMap<String, String>,
    pub include: Option<RestoreFilter>,
    pub exclude: Option<RestoreFilter>,
}

impl Selection {
    /// Checks the filters' label selectors; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (field, filter) in [("include", &self.include), ("exclude", &self.exclude)] {
            if let Some(selector) = filter.as_ref().and_then(|f| f.label_selector.as_ref()) {
                check_label_selector(selector).map_err(|reason| format!("spec.{field}.labelSelector: {reason}"))?;
            }
        }
        Ok(())
    }

    /// The namespace objects of `namespace` (as archived) land in.
    pub fn map_namespace(&self, namespace: &str) -> String {
        self.namespace_mapping
            .get(namespace)
            .cloned()
            .unwrap_or_else(|| namespace.to_string())
    }

    /// True when the filters let an archived object through.
    pub fn admits(&self, entry: &IndexEntry, object: &Value) -> bool {
        let included = self
            .include
            .as_ref()
            .is_none_or(|f| filter_matches(f, entry, object, true));
        let excluded = self
            .exclude
            .as_ref()
            .is_some_and(|f| filter_matches(f, entry, object, false));
        included && !excluded
    }
}

/// A filter matches when every field given matches. In an include filter, `namespaces` also
/// admits the Namespace objects of those names, and keeps out other cluster-scoped objects.
fn filter_matches(filter: &RestoreFilter, entry: &IndexEntry, object: &Value, include: bool) -> bool {
    let kind_ok = filter.kinds.is_empty() || filter.kinds.iter().any(|k| entry.resource.is_named(k));
    let namespace_ok = filter.namespaces.is_empty() || {
        let namespace = if is_namespace(&entry.resource) {
            Some(&entry.name)
        } else {
            entry.namespace.as_ref()
        };
        match namespace {
            Some(namespace) => filter.namespaces.contains(namespace),
            None => !include,
        }
    };
    let labels_ok = filter.label_selector.as_ref().is_none_or(|selector| {
        let labels: BTreeMap<String, String> =
            serde_json::from_value(object["metadata"]["labels"].clone()).unwrap_or_default();
        label_selector_matches(selector, &labels)
    });
    kind_ok && namespace_ok && labels_ok
}

pub fn is_namespace(resource: &ResourceType) -> bool {
    resource.group.is_empty() && resource.plural == "namespaces"
}

pub fn is_crd(resource: &ResourceType) -> bool {
    resource.group == "apiextensions.k8s.io" && resource.plural == "customresourcedefinitions"
}

/// The tier an object of `resource` is restored in.
pub fn tier(resource: &ResourceType, namespace: Option<&str>) -> Tier {
    if is_crd(resource) {
        Tier::CustomResourceDefinitions
    } else if is_namespace(resource) {
        Tier::Namespaces
    } else if namespace.is_none() {
        Tier::ClusterScoped
    } else {
        Tier::Namespaced
    }
}

/// Where a backup puts a resource type's objects in the archive: in restore order (CRDs,
/// Namespaces, other cluster-scoped, namespaced), and among namespaced types the usual owners
/// (custom resources, then workload controllers) before what they own (ReplicaSets, Jobs,
/// then Pods), so that a restore applies most archives in a single pass.
pub fn write_rank(resource: &ResourceType) -> (Tier, u8) {
    let namespaced = if resource.namespaced { Some("") } else { None };
    let tier = tier(resource, namespaced);
    let builtin = !resource.group.contains('.') || resource.group.ends_with(".k8s.io");
    let rank = match (resource.group.as_str(), resource.plural.as_str()) {
        _ if tier != Tier::Namespaced => 0,
        _ if !builtin => 0,
        ("apps", "deployments" | "statefulsets" | "daemonsets") | ("batch", "cronjobs") => 1,
        ("apps", "replicasets" | "controllerrevisions") | ("batch", "jobs") => 3,
        ("", "pods") => 4,
        _ => 2,
    };
    (tier, rank)
}

impl Step {
    /// The step for an archived object: its tier, and its name and namespace in this cluster.
    pub fn new(entry: IndexEntry, object: Value, selection: &Selection) -> Step {
        let name = if is_namespace(&entry.resource) {
            selection.map_namespace(&entry.name)
        } else {
            entry.name.clone()
        };
        Step {
            tier: tier(&entry.resource, entry.namespace.as_deref()),
            namespace: entry.namespace.as_deref().map(|ns| selection.map_namespace(ns)),
            name,
            entry,
            object,
        }
    }
}

/// The object to apply for `step`: no UID, no status, server fields gone, the target name
/// and namespace, and each ownerReference pointed at `owner_uid(reference)` or dropped when
/// that gives None. Returns the object and the references it dropped.
pub fn desired(
    step: &Step,
    mut owner_uid: impl FnMut(&Value) -> Option<String>,
    mapping: &Selection,
) -> (Value, Vec<String>) {
    let mut object = step.object.clone();
    crate::archive::strip_server_fields(&mut object);
    let mut dropped = Vec::new();
    if let Some(object) = object.as_object_mut() {
        object.remove("status");
    }
    let metadata = &mut object["metadata"];
    if let Some(metadata) = metadata.as_object_mut() {
        metadata.remove("uid");
        metadata.insert("name".into(), Value::from(step.name.clone()));
        match &step.namespace {
            Some(namespace) => metadata.insert("namespace".into(), Value::from(namespace.clone())),
            None => metadata.remove("namespace"),
        };
        if let Some(owners) = metadata.get_mut("ownerReferences").and_then(Value::as_array_mut) {
            owners.retain_mut(|reference| match owner_uid(reference) {
                Some(uid) => {
                    reference["uid"] = Value::from(uid);
                    true
                }
                None => {
                    dropped.push(format!(
                        "{} {}",
                        reference["kind"].as_str().unwrap_or("?"),
                        reference["name"].as_str().unwrap_or("?")
                    ));
                    false
                }
            });
            if owners.is_empty() {
                metadata.remove("ownerReferences");
            }
        }
    }
    adjust_for_kind(&step.entry.resource, &mut object, mapping);
    (object, dropped)
}

/// Per-kind fixes so an object applies in a new place.
fn adjust_for_kind(resource: &ResourceType, object: &mut Value, mapping: &Selection) {
    match (resource.group.as_str(), resource.plural.as_str()) {
        // Cluster IPs are allocated per cluster; the old one may be taken or out of range.
        ("", "services") => {
            if let Some(spec) = object["spec"].as_object_mut()
                && spec.get("clusterIP").and_then(Value::as_str) != Some("None")
            {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        }
        // Token Secrets are regenerated for the new ServiceAccount.
        ("", "serviceaccounts") => {
            if let Some(object) = object.as_object_mut() {
                object.remove("secrets");
            }
        }
        // Bindings follow their ServiceAccounts into mapped namespaces.
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            for subject in object["subjects"].as_array_mut().into_iter().flatten() {
                if subject["kind"] == "ServiceAccount"
                    && let Some(namespace) = subject["namespace"].as_str().map(String::from)
                {
                    subject["namespace"] = Value::from(mapping.map_namespace(&namespace));
                }
            }
        }
        _ => {}
    }
}

/// The top-level fields (and metadata fields) in which `after` (the live object as a
/// dry-run apply returns it) differs from `before` (the live object), for the plan.
pub fn changed_fields(before: &Value, after: &Value) -> Vec<String> {
    const BOOKKEEPING: &[&str] = &[
        "resourceVersion",
        "managedFields",
        "generation",
        "creationTimestamp",
        "uid",
        "selfLink",
    ];
    let mut changed = Vec::new();
    let empty = serde_json::Map::new();
    let metadata = |v: &Value| v["metadata"].as_object().cloned().unwrap_or_default();
    let (meta_before, meta_after) = (metadata(before), metadata(after));
    let mut keys: Vec<&String> = meta_before.keys().chain(meta_after.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        if !BOOKKEEPING.contains(&key.as_str()) && meta_before.get(key) != meta_after.get(key) {
            changed.push(format!("metadata.{key}"));
        }
    }
    let (top_before, top_after) = (
        before.as_object().unwrap_or(&empty),
        after.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = top_before.keys().chain(top_after.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        if key != "metadata" && top_before.get(key) != top_after.get(key) {
            changed.push(key.clone());
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde::Deserialize;
    use std::collections::HashMap;

    /// The fixture: archived objects, then restore cases against them.
    #[derive(Deserialize)]
    struct Fixture {
        objects: Vec<Value>,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Case {
        name: String,
        #[serde(default)]
        namespace_mapping: BTreeMap<String, String>,
        #[serde(default)]
        include: Option<RestoreFilter>,
        #[serde(default)]
        exclude: Option<RestoreFilter>,
        /// Objects in the order the archive holds them: `listed` (the fixture's order) or
        /// `backup` (sorted by type as a backup writes them).
        #[serde(default)]
        archive_order: ArchiveOrder,
        order: Vec<String>,
        filtered: u64,
        passes: u32,
    }

    #[derive(Deserialize, Default, PartialEq)]
    #[serde(rename_all = "camelCase")]
    enum ArchiveOrder {
        #[default]
        Listed,
        Backup,
    }

    /// Streams `objects` through a schedule the way a restore does, pass after pass: the
    /// labels in apply order, the count filtered out and the passes it took.
    fn stream(objects: &[(IndexEntry, Value)], selection: &Selection) -> (Vec<String>, u64, u32) {
        let mut survey = crate::schedule::Survey::default();
        for (entry, object) in objects {
            let tier = tier(&entry.resource, entry.namespace.as_deref());
            survey.add(tier, selection.admits(entry, object), 0, &entry.uid, &entry.owner_uids);
        }
        let mut schedule = survey.finish();
        let (mut labels, mut passes) = (Vec::new(), 0);
        while !schedule.is_complete() {
            passes += 1;
            assert!(passes < 20, "the schedule makes progress");
            for (position, (entry, object)) in objects.iter().enumerate() {
                if let crate::schedule::Decision::Ready { .. } = schedule.decide(position) {
                    schedule.dispatched(position);
                    schedule.finished(position);
                    labels.push(Step::new(entry.clone(), object.clone(), selection).label());
                }
            }
        }
        (labels, schedule.filtered(), passes)
    }

    /// An index entry as the archive writer would make it, from the object itself.
    fn entry(object: &Value) -> IndexEntry {
        let api_version = object["apiVersion"].as_str().unwrap();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let kind = object["kind"].as_str().unwrap().to_string();
        let namespace = object["metadata"]["namespace"].as_str().map(String::from);
        let plural = format!("{}s", kind.to_lowercase());
        let resource = ResourceType {
            group: group.into(),
            version: version.into(),
            kind,
            plural,
            namespaced: namespace.is_some(),
        };
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        IndexEntry {
            path: crate::archive::entry_path(&resource, namespace.as_deref(), &name, false),
            resource,
            namespace,
            name,
            uid: object["metadata"]["uid"].as_str().unwrap_or_default().into(),
            owner_uids: crate::archive::owner_uids(object),
            encrypted: false,
        }
    }

    fn fixture() -> (Vec<(IndexEntry, Value)>, Vec<Case>) {
        let fixture: Fixture = serde_saphyr::from_str(include_str!("../fixtures/restore-plan.yaml")).unwrap();
        (
            fixture.objects.into_iter().map(|o| (entry(&o), o)).collect(),
            fixture.cases,
        )
    }

    #[test]
    fn plan_fixtures() {
        let (objects, cases) = fixture();
        for case in cases {
            let selection = Selection {
                namespace_mapping: case.namespace_mapping,
                include: case.include,
                exclude: case.exclude,
            };
            selection.validate().unwrap();
            let mut objects = objects.clone();
            if case.archive_order == ArchiveOrder::Backup {
                objects.sort_by_key(|(entry, _)| write_rank(&entry.resource));
            }
            let (labels, filtered, passes) = stream(&objects, &selection);
            assert_eq!(labels, case.order, "{}", case.name);
            assert_eq!(filtered, case.filtered, "{}", case.name);
            assert_eq!(passes, case.passes, "{}", case.name);
        }
    }

    #[test]
    fn desired_objects_relink_owners_and_drop_what_the_server_owns() {
        let (objects, _) = fixture();
        let selection = Selection {
            namespace_mapping: BTreeMap::from([("shop".into(), "shop-copy".into())]),
            ..Selection::default()
        };
        let steps: Vec<Step> = objects
            .iter()
            .map(|(entry, object)| Step::new(entry.clone(), object.clone(), &selection))
            .collect();
        let pod = steps.iter().find(|s| s.entry.resource.kind == "Pod").unwrap();
        let new_uids = HashMap::from([("rs-uid", "new-rs-uid")]);
        let (object, dropped) = desired(
            pod,
            |r| new_uids.get(r["uid"].as_str().unwrap()).map(|u| u.to_string()),
            &selection,
        );
        assert_eq!(object["metadata"]["namespace"], "shop-copy");
        assert_eq!(object["metadata"]["ownerReferences"][0]["uid"], "new-rs-uid");
        assert!(object["metadata"].get("uid").is_none() && object.get("status").is_none());
        assert!(dropped.is_empty());
        let (object, dropped) = desired(pod, |_| None, &selection);
        assert!(object["metadata"].get("ownerReferences").is_none());
        assert_eq!(dropped, ["ReplicaSet web-5d4f"]);

        let service = steps.iter().find(|s| s.entry.resource.kind == "Service").unwrap();
        let (object, _) = desired(service, |_| None, &selection);
        assert!(object["spec"].get("clusterIP").is_none() && object["spec"]["ports"].is_array());
        let binding = steps.iter().find(|s| s.entry.resource.kind == "RoleBinding").unwrap();
        let (object, _) = desired(binding, |_| None, &selection);
        assert_eq!(object["subjects"][0]["namespace"], "shop-copy");
        let namespace = steps.iter().find(|s| s.entry.resource.kind == "Namespace").unwrap();
        let (object, _) = desired(namespace, |_| None, &selection);
        assert_eq!(object["metadata"]["name"], "shop-copy");
        assert!(object["metadata"].get("namespace").is_none());
    }

    #[test]
    fn changed_fields_ignore_bookkeeping() {
        let before = serde_json::json!({"metadata": {"name": "a", "resourceVersion": "1", "labels": {"a": "1"}}, "data": {"k": "v"}});
        let after = serde_json::json!({"metadata": {"name": "a", "resourceVersion": "2", "labels": {"a": "2"}}, "data": {"k": "v"}});
        assert_eq!(changed_fields(&before, &after), ["metadata.labels"]);
        assert!(changed_fields(&before, &before).is_empty());
        let grown = serde_json::json!({"metadata": {"name": "a", "resourceVersion": "1", "labels": {"a": "1"}}, "data": {"k": "w"}, "immutable": true});
        assert_eq!(changed_fields(&before, &grown), ["data", "immutable"]);
    }
}
