//! The pure part of a VolumeRestore: new claim names, what re-pointing a workload changes in
//! its spec, when a workload counts as ready, and volume sizes. No API calls here, so all of it
//! is unit-tested.
//!
//! A Deployment names its claims in its Pod template, so re-pointing it swaps `claimName`s. A
//! StatefulSet's claims come from its `volumeClaimTemplates` (one per ordinal, named
//! `<template>-<statefulset>-<ordinal>`), which Kubernetes does not let anyone change; so the
//! restore renames each template (the name template applied to the template's name), creates
//! the claims the StatefulSet will look for under the new name, and recreates the StatefulSet.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The name template used when the spec gives none.
pub const DEFAULT_NAME_TEMPLATE: &str = "<pvc>-restored-<short id>";
/// The placeholders a name template may use.
const PVC_PLACEHOLDER: &str = "<pvc>";
const SHORT_ID_PLACEHOLDER: &str = "<short id>";

/// The restore's short id: the first five characters of its UID, so that two restores of the
/// same backup get different names.
pub fn short_id(uid: &str) -> String {
    uid.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(5)
        .collect::<String>()
        .to_lowercase()
}

/// Renders `template` (default [`DEFAULT_NAME_TEMPLATE`]) for claim `pvc`. The result must be a
/// valid object name; `max_len` is 253 for a claim, 63 where it also names a Pod volume.
pub fn render_name(template: Option<&str>, pvc: &str, short_id: &str, max_len: usize) -> Result<String, String> {
    let template = template
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or(DEFAULT_NAME_TEMPLATE);
    if !template.contains(PVC_PLACEHOLDER) {
        return Err(format!(
            "spec.pvcNameTemplate '{template}' has no {PVC_PLACEHOLDER}: every restored claim would get the same name"
        ));
    }
    let name = template
        .replace(PVC_PLACEHOLDER, pvc)
        .replace(SHORT_ID_PLACEHOLDER, short_id);
    check_name(&name, max_len)
        .map_err(|why| format!("spec.pvcNameTemplate '{template}' gives '{name}' for {pvc}: {why}"))?;
    Ok(name)
}

/// Checks a DNS-1123 name: lowercase letters, digits, '-' and '.', alphanumeric at both ends.
fn check_name(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max_len {
        return Err(format!("a name must have 1 to {max_len} characters"));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (c == '.' && max_len > 63);
    if !name.chars().all(allowed) {
        return Err("only lowercase letters, digits and '-' are allowed".into());
    }
    let alphanumeric = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alphanumeric(name.chars().next()) || !alphanumeric(name.chars().last()) {
        return Err("a name must start and end with a letter or digit".into());
    }
    Ok(())
}

/// The claims a Pod spec mounts, in order, without repeats.
pub fn claims_of(spec: &PodSpec) -> Vec<String> {
    let mut claims = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        if let Some(claim) = &volume.persistent_volume_claim
            && !claims.contains(&claim.claim_name)
        {
            claims.push(claim.claim_name.clone());
        }
    }
    claims
}

/// Points every volume of `spec` that mounts a key of `renames` at its value. Returns how many
/// volumes changed; applying it twice changes nothing the second time.
pub fn repoint_pod_spec(spec: &mut PodSpec, renames: &BTreeMap<String, String>) -> usize {
    let mut changed = 0;
    for volume in spec.volumes.iter_mut().flatten() {
        if let Some(claim) = &mut volume.persistent_volume_claim
            && let Some(new) = renames.get(&claim.claim_name)
        {
            claim.claim_name = new.clone();
            changed += 1;
        }
    }
    changed
}

/// A StatefulSet claim `<template>-<statefulset>-<ordinal>`: its template and ordinal.
pub fn statefulset_claim(pvc: &str, statefulset: &str, templates: &[String]) -> Option<(String, u32)> {
    templates.iter().find_map(|template| {
        let rest = pvc.strip_prefix(template.as_str())?.strip_prefix('-')?;
        let ordinal = rest.strip_prefix(statefulset)?.strip_prefix('-')?;
        let ordinal: u32 = ordinal.parse().ok()?;
        Some((template.clone(), ordinal))
    })
}

/// The claim a StatefulSet creates for `template` and `ordinal`.
pub fn statefulset_claim_name(template: &str, statefulset: &str, ordinal: u32) -> String {
    format!("{template}-{statefulset}-{ordinal}")
}

/// The names of a StatefulSet's claim templates.
pub fn claim_templates(spec: &StatefulSetSpec) -> Vec<String> {
    spec.volume_claim_templates
        .iter()
        .flatten()
        .filter_map(|template| template.metadata.name.clone())
        .collect()
}

/// Renames claim templates (and the volume mounts that use them) as `renames` says; applying it
/// twice changes nothing the second time. Returns how many templates changed.
pub fn rename_claim_templates(spec: &mut StatefulSetSpec, renames: &BTreeMap<String, String>) -> usize {
    let mut changed = 0;
    for template in spec.volume_claim_templates.iter_mut().flatten() {
        if let Some(name) = &mut template.metadata.name
            && let Some(new) = renames.get(name.as_str())
        {
            *name = new.clone();
            changed += 1;
        }
    }
    if let Some(pod) = &mut spec.template.spec {
        let containers = pod
            .containers
            .iter_mut()
            .chain(pod.init_containers.iter_mut().flatten());
        for container in containers {
            for mount in container.volume_mounts.iter_mut().flatten() {
                if let Some(new) = renames.get(&mount.name) {
                    mount.name = new.clone();
                }
            }
        }
    }
    changed
}

/// The StatefulSet as it must be created again: same name, labels, annotations and spec (with
/// `replicas`), none of the server's fields.
pub fn statefulset_to_recreate(current: &StatefulSet, replicas: i32) -> StatefulSet {
    let mut spec = current.spec.clone().unwrap_or_default();
    spec.replicas = Some(replicas);
    StatefulSet {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: current.metadata.name.clone(),
            namespace: current.metadata.namespace.clone(),
            labels: current.metadata.labels.clone(),
            annotations: current.metadata.annotations.clone().map(|mut annotations| {
                annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
                annotations
            }),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// A label selector as a query string (`app=web,tier in (db)`).
pub fn selector_query(selector: &LabelSelector) -> Result<String, String> {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    for expression in selector.match_expressions.iter().flatten() {
        let values = expression.values.clone().unwrap_or_default().join(",");
        parts.push(match expression.operator.as_str() {
            "In" => format!("{} in ({values})", expression.key),
            "NotIn" => format!("{} notin ({values})", expression.key),
            "Exists" => expression.key.clone(),
            "DoesNotExist" => format!("!{}", expression.key),
            other => return Err(format!("unknown selector operator '{other}'")),
        });
    }
    if parts.is_empty() {
        return Err("the workload's selector is empty".into());
    }
    Ok(parts.join(","))
}

/// True when the Deployment has rolled out `replicas` ready Pods of its current template and no
/// others.
pub fn deployment_ready(deployment: &Deployment, replicas: i32) -> bool {
    let generation = deployment.metadata.generation.unwrap_or(0);
    let Some(status) = &deployment.status else {
        return false;
    };
    status.observed_generation.unwrap_or(0) >= generation
        && status.updated_replicas.unwrap_or(0) == replicas
        && status.ready_replicas.unwrap_or(0) == replicas
        && status.replicas.unwrap_or(0) == replicas
}

/// True when the StatefulSet runs `replicas` ready Pods of its current spec.
pub fn statefulset_ready(statefulset: &StatefulSet, replicas: i32) -> bool {
    let generation = statefulset.metadata.generation.unwrap_or(0);
    let Some(status) = &statefulset.status else {
        return false;
    };
    status.observed_generation.unwrap_or(0) >= generation
        && status.ready_replicas.unwrap_or(0) == replicas
        && status.replicas == replicas
}

/// Bytes of a Kubernetes quantity ("10Gi", "500M", "1.5e9"), rounded up; None when it is not one.
pub fn quantity_bytes(quantity: &str) -> Option<u64> {
    let quantity = quantity.trim();
    let end = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(end);
    let number: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => 10f64.powi(exponent[1..].parse().ok()?),
        _ => return None,
    };
    let bytes = (number * multiplier).ceil();
    (bytes >= 0.0 && bytes.is_finite()).then_some(bytes as u64)
}

/// The larger of two quantities (a quantity that does not parse counts as zero).
pub fn larger_quantity(a: Option<&str>, b: Option<&str>) -> Option<String> {
    let size = |q: Option<&str>| q.and_then(quantity_bytes).unwrap_or(0);
    match (a, b) {
        (Some(a), Some(b)) => Some(if size(Some(b)) > size(Some(a)) { b } else { a }.to_string()),
        (a, b) => a.or(b).map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_saphyr::from_str(text).unwrap()
    }

    #[test]
    fn names_follow_the_template_and_are_checked() {
        assert_eq!(short_id("3F2a9c1e-77aa-4b3c"), "3f2a9");
        assert_eq!(render_name(None, "data", "3f2a9", 253).unwrap(), "data-restored-3f2a9");
        assert_eq!(
            render_name(Some("monday-<pvc>"), "data", "3f2a9", 253).unwrap(),
            "monday-data"
        );
        let no_pvc = render_name(Some("fixed"), "data", "3f2a9", 253).unwrap_err();
        assert!(no_pvc.contains("has no <pvc>"), "{no_pvc}");
        let bad = render_name(Some("<pvc>_copy"), "data", "3f2a9", 253).unwrap_err();
        assert!(bad.contains("only lowercase"), "{bad}");
        let long = "x".repeat(60);
        assert!(render_name(None, &long, "3f2a9", 63).is_err());
        assert!(render_name(None, &long, "3f2a9", 253).is_ok());
    }

    #[test]
    fn a_deployment_is_repointed_once() {
        let mut spec: PodSpec = yaml(
            r#"
containers: [{name: app, image: x}]
volumes:
  - {name: data, persistentVolumeClaim: {claimName: data}}
  - {name: logs, persistentVolumeClaim: {claimName: logs}}
  - {name: tmp, emptyDir: {}}
"#,
        );
        assert_eq!(claims_of(&spec), ["data", "logs"]);
        let renames = BTreeMap::from([("data".to_string(), "data-restored-1".to_string())]);
        assert_eq!(repoint_pod_spec(&mut spec, &renames), 1);
        assert_eq!(repoint_pod_spec(&mut spec, &renames), 0);
        assert_eq!(claims_of(&spec), ["data-restored-1", "logs"]);
    }

    #[test]
    fn statefulset_claims_map_to_templates_and_ordinals() {
        let templates = vec!["data".to_string(), "data-wal".to_string()];
        assert_eq!(
            statefulset_claim("data-db-1", "db", &templates),
            Some(("data".into(), 1))
        );
        assert_eq!(
            statefulset_claim("data-wal-db-0", "db", &templates),
            Some(("data-wal".into(), 0))
        );
        assert_eq!(statefulset_claim("data-other-0", "db", &templates), None);
        assert_eq!(statefulset_claim("data-db-x", "db", &templates), None);
        assert_eq!(statefulset_claim_name("data-r", "db", 1), "data-r-db-1");
    }

    #[test]
    fn claim_templates_are_renamed_with_their_mounts() {
        let mut statefulset: StatefulSet = yaml(
            r#"
metadata: {name: db, namespace: ns, uid: u, resourceVersion: "7", annotations: {kubectl.kubernetes.io/last-applied-configuration: "{}", keep: "1"}}
spec:
  replicas: 0
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      initContainers: [{name: init, volumeMounts: [{name: data, mountPath: /data}]}]
      containers: [{name: db, volumeMounts: [{name: data, mountPath: /data}, {name: cfg, mountPath: /cfg}]}]
  volumeClaimTemplates:
    - metadata: {name: data}
      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
status: {replicas: 0}
"#,
        );
        let spec = statefulset.spec.as_mut().unwrap();
        let renames = BTreeMap::from([("data".to_string(), "data-restored-1".to_string())]);
        assert_eq!(rename_claim_templates(spec, &renames), 1);
        assert_eq!(rename_claim_templates(spec, &renames), 0);
        assert_eq!(claim_templates(spec), ["data-restored-1"]);
        let pod = spec.template.spec.as_ref().unwrap();
        let mounts = |c: &k8s_openapi::api::core::v1::Container| {
            c.volume_mounts
                .iter()
                .flatten()
                .map(|m| m.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(mounts(&pod.containers[0]), ["data-restored-1", "cfg"]);
        assert_eq!(mounts(&pod.init_containers.as_ref().unwrap()[0]), ["data-restored-1"]);
        let again = statefulset_to_recreate(&statefulset, 2);
        assert_eq!(again.metadata.resource_version, None);
        assert_eq!(again.metadata.uid, None);
        assert_eq!(again.status, None);
        assert_eq!(again.spec.as_ref().unwrap().replicas, Some(2));
        assert_eq!(again.metadata.annotations.unwrap().keys().collect::<Vec<_>>(), ["keep"]);
    }

    #[test]
    fn selectors_become_queries() {
        let selector: LabelSelector = yaml(
            "{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: In, values: [a, b]}, {key: canary, operator: DoesNotExist}]}",
        );
        assert_eq!(selector_query(&selector).unwrap(), "app=web,tier in (a,b),!canary");
        assert!(selector_query(&LabelSelector::default()).is_err());
    }

    #[test]
    fn readiness_needs_the_current_generation_and_every_replica() {
        let ready: Deployment = yaml(
            "{metadata: {generation: 3}, status: {observedGeneration: 3, replicas: 2, updatedReplicas: 2, readyReplicas: 2}}",
        );
        assert!(deployment_ready(&ready, 2));
        assert!(!deployment_ready(&ready, 3));
        let stale: Deployment = yaml(
            "{metadata: {generation: 4}, status: {observedGeneration: 3, replicas: 2, updatedReplicas: 2, readyReplicas: 2}}",
        );
        assert!(!deployment_ready(&stale, 2));
        let old_pods_left: Deployment = yaml(
            "{metadata: {generation: 3}, status: {observedGeneration: 3, replicas: 3, updatedReplicas: 2, readyReplicas: 2}}",
        );
        assert!(!deployment_ready(&old_pods_left, 2));
        let statefulset: StatefulSet = yaml(
            "{metadata: {generation: 2}, spec: {serviceName: db, selector: {}, template: {}}, status: {observedGeneration: 2, replicas: 2, readyReplicas: 2}}",
        );
        assert!(statefulset_ready(&statefulset, 2));
        assert!(!statefulset_ready(&statefulset, 1));
    }

    #[test]
    fn quantities_compare_by_bytes() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("1.5Ki"), Some(1536));
        assert_eq!(quantity_bytes("2e3"), Some(2000));
        assert_eq!(quantity_bytes("lots"), None);
        assert_eq!(larger_quantity(Some("1Gi"), Some("2G")), Some("2G".into()));
        assert_eq!(larger_quantity(Some("2Gi"), Some("2G")), Some("2Gi".into()));
        assert_eq!(larger_quantity(None, Some("1Mi")), Some("1Mi".into()));
        assert_eq!(larger_quantity(None, None), None);
    }
}
