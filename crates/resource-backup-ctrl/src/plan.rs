//! The restore plan, pure logic: which archive objects to restore (include/exclude), where
//! (namespaceMapping), in which order (CRDs, Namespaces, other cluster-scoped, namespaced;
//! owners before dependents), and what exactly to send (server fields dropped, ownerReferences
//! re-linked to the owners' new UIDs).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;
use stowage_api::resource_restore::RestoreFilter;

use crate::archive::{IndexEntry, describe};
use crate::selector::{ResourceType, check_label_selector, label_selector_matches};

/// Restore tiers, applied in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
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

fn is_namespace(resource: &ResourceType) -> bool {
    resource.group.is_empty() && resource.plural == "namespaces"
}

fn is_crd(resource: &ResourceType) -> bool {
    resource.group == "apiextensions.k8s.io" && resource.plural == "customresourcedefinitions"
}

/// The objects to restore, in order, and how many the filters left out.
pub fn order(objects: &[(IndexEntry, Value)], selection: &Selection) -> (Vec<Step>, u64) {
    let by_uid: HashMap<&str, usize> = objects
        .iter()
        .enumerate()
        .filter(|(_, (entry, _))| !entry.uid.is_empty())
        .map(|(i, (entry, _))| (entry.uid.as_str(), i))
        .collect();
    let mut depths: Vec<Option<usize>> = vec![None; objects.len()];
    let mut steps = Vec::new();
    let mut filtered = 0;
    for (i, (entry, object)) in objects.iter().enumerate() {
        if !selection.admits(entry, object) {
            filtered += 1;
            continue;
        }
        let tier = if is_crd(&entry.resource) {
            Tier::CustomResourceDefinitions
        } else if is_namespace(&entry.resource) {
            Tier::Namespaces
        } else if entry.namespace.is_none() {
            Tier::ClusterScoped
        } else {
            Tier::Namespaced
        };
        let name = if is_namespace(&entry.resource) {
            selection.map_namespace(&entry.name)
        } else {
            entry.name.clone()
        };
        let depth = depth(i, objects, &by_uid, &mut depths, 0);
        steps.push((
            depth,
            Step {
                entry: entry.clone(),
                object: object.clone(),
                tier,
                name,
                namespace: entry.namespace.as_deref().map(|ns| selection.map_namespace(ns)),
            },
        ));
    }
    steps.sort_by(|(da, a), (db, b)| {
        (
            a.tier,
            *da,
            &a.entry.resource.group,
            &a.entry.resource.kind,
            &a.namespace,
            &a.name,
        )
            .cmp(&(
                b.tier,
                *db,
                &b.entry.resource.group,
                &b.entry.resource.kind,
                &b.namespace,
                &b.name,
            ))
    });
    (steps.into_iter().map(|(_, step)| step).collect(), filtered)
}

/// How many owners deep an object sits (0: no owner in the archive). Cycles, which the API
/// server allows but garbage collection never resolves, are cut at the archive's size.
fn depth(
    i: usize,
    objects: &[(IndexEntry, Value)],
    by_uid: &HashMap<&str, usize>,
    memo: &mut Vec<Option<usize>>,
    level: usize,
) -> usize {
    if let Some(known) = memo[i] {
        return known;
    }
    if level > objects.len() {
        return 0;
    }
    let owners: Vec<usize> = objects[i]
        .0
        .owner_uids
        .iter()
        .filter_map(|uid| by_uid.get(uid.as_str()).copied())
        .collect();
    let found = owners
        .into_iter()
        .map(|owner| depth(owner, objects, by_uid, memo, level + 1) + 1)
        .max()
        .unwrap_or(0);
    memo[i] = Some(found);
    found
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
        order: Vec<String>,
        filtered: u64,
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
        let fixture: Fixture = serde_yaml::from_str(include_str!("../fixtures/restore-plan.yaml")).unwrap();
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
            let (steps, filtered) = order(&objects, &selection);
            let labels: Vec<String> = steps.iter().map(Step::label).collect();
            assert_eq!(labels, case.order, "{}", case.name);
            assert_eq!(filtered, case.filtered, "{}", case.name);
        }
    }

    #[test]
    fn desired_objects_relink_owners_and_drop_what_the_server_owns() {
        let (objects, _) = fixture();
        let selection = Selection {
            namespace_mapping: BTreeMap::from([("shop".into(), "shop-copy".into())]),
            ..Selection::default()
        };
        let (steps, _) = order(&objects, &selection);
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
