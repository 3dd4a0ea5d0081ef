//! What a VolumeBackup covers: its PersistentVolumeClaims (from an application, names or a
//! selector) and the running Pods that mount them, whose annotations carry the hooks.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use stowage_api::volume_backup::{HOOK_CONTAINER_ANNOTATION, POST_HOOK_ANNOTATION, PRE_HOOK_ANNOTATION};
use stowage_api::{ApplicationKind, ApplicationRef, PodHookStatus, VolumeBackupSpec};
use stowage_operator::{Error, Result};

/// The claims to snapshot (bound, in name order) and the Pods to freeze.
#[derive(Debug)]
pub struct Targets {
    pub claims: Vec<PersistentVolumeClaim>,
    pub pods: Vec<PodHookStatus>,
}

/// Resolves the spec's target in `namespace`. Everything wrong with it is permanent for this
/// one-shot backup: a bad spec, a missing application, no claims, a claim not bound.
pub async fn resolve(client: &Client, namespace: &str, spec: &VolumeBackupSpec) -> Result<Targets> {
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let names = match (&spec.application_ref, spec.pvc_names.is_empty(), &spec.pvc_selector) {
        (Some(app), true, None) => application_claims(client, namespace, app).await?,
        (None, false, None) => spec.pvc_names.iter().cloned().collect(),
        (None, true, Some(selector)) => {
            let params = ListParams::default().labels(&selector_string(selector)?);
            let listed = claims_api.list(&params).await?;
            listed.items.iter().map(ResourceExt::name_any).collect()
        }
        _ => {
            return Err(Error::InvalidSpec(
                "give exactly one of spec.applicationRef, spec.pvcNames and spec.pvcSelector".into(),
            ));
        }
    };
    if names.is_empty() {
        return Err(Error::permanent(
            "NoVolumes",
            "the target has no PersistentVolumeClaims to snapshot: check spec.applicationRef, spec.pvcNames or spec.pvcSelector",
        ));
    }
    let mut claims = Vec::new();
    for name in &names {
        let claim = claims_api.get_opt(name).await?.ok_or_else(|| {
            Error::permanent(
                "PVCNotFound",
                format!("PersistentVolumeClaim '{name}' not found in namespace '{namespace}'"),
            )
        })?;
        let phase = claim
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        if phase != "Bound" {
            return Err(Error::permanent(
                "PVCNotBound",
                format!("PersistentVolumeClaim '{name}' is {phase}, not Bound: only bound claims can be snapshotted"),
            ));
        }
        claims.push(claim);
    }
    let pods = mounting_pods(client, namespace, &names).await?;
    Ok(Targets { claims, pods })
}

/// The claims an application's Pods mount: a Deployment's template volumes; a StatefulSet's
/// template volumes plus `<template>-<name>-<ordinal>` for each replica.
async fn application_claims(client: &Client, namespace: &str, app: &ApplicationRef) -> Result<BTreeSet<String>> {
    let not_found = || {
        Error::permanent(
            "ApplicationNotFound",
            format!(
                "{} '{}' not found in namespace '{namespace}': create it or fix spec.applicationRef",
                app.kind, app.name
            ),
        )
    };
    let mut names = BTreeSet::new();
    let template_claims = |spec: Option<&k8s_openapi::api::core::v1::PodSpec>| -> Vec<String> {
        spec.into_iter()
            .flat_map(|spec| spec.volumes.iter().flatten())
            .filter_map(|volume| volume.persistent_volume_claim.as_ref())
            .map(|claim| claim.claim_name.clone())
            .collect()
    };
    match app.kind {
        ApplicationKind::Deployment => {
            let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
            let deployment = api.get_opt(&app.name).await?.ok_or_else(not_found)?;
            let spec = deployment.spec.as_ref().and_then(|s| s.template.spec.as_ref());
            names.extend(template_claims(spec));
        }
        ApplicationKind::StatefulSet => {
            let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
            let set = api.get_opt(&app.name).await?.ok_or_else(not_found)?;
            let Some(spec) = set.spec.as_ref() else {
                return Ok(names);
            };
            names.extend(template_claims(spec.template.spec.as_ref()));
            let replicas = spec.replicas.unwrap_or(1).max(0);
            for template in spec.volume_claim_templates.iter().flatten() {
                let template_name = template.metadata.name.clone().unwrap_or_default();
                for ordinal in 0..replicas {
                    names.insert(format!("{template_name}-{}-{ordinal}", app.name));
                }
            }
        }
    }
    Ok(names)
}

/// The running Pods that mount any of `claims`, with their hooks.
async fn mounting_pods(client: &Client, namespace: &str, claims: &BTreeSet<String>) -> Result<Vec<PodHookStatus>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut pods = Vec::new();
    for pod in api.list(&ListParams::default()).await?.items {
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if !running || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(spec) = pod.spec.as_ref() else { continue };
        let mounts = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|volume| volume.persistent_volume_claim.as_ref())
            .any(|claim| claims.contains(&claim.claim_name));
        if mounts {
            pods.push(hooks_of(&pod)?);
        }
    }
    Ok(pods)
}

/// A Pod's hooks from its annotations; the hook container must exist.
pub fn hooks_of(pod: &Pod) -> Result<PodHookStatus> {
    let name = pod.name_any();
    let annotations = pod.annotations();
    let hook = |key: &str| {
        annotations
            .get(key)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let containers: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|spec| spec.containers.iter().map(|c| c.name.clone()))
        .collect();
    let container = match annotations.get(HOOK_CONTAINER_ANNOTATION) {
        Some(wanted) if containers.contains(wanted) => wanted.clone(),
        Some(wanted) => {
            return Err(Error::permanent(
                "HookContainerNotFound",
                format!(
                    "Pod '{name}' names container '{wanted}' in {HOOK_CONTAINER_ANNOTATION}, but its containers are: {}",
                    containers.join(", ")
                ),
            ));
        }
        None => containers.first().cloned().unwrap_or_default(),
    };
    Ok(PodHookStatus {
        pod: name,
        container,
        pre_hook: hook(PRE_HOOK_ANNOTATION),
        post_hook: hook(POST_HOOK_ANNOTATION),
        frozen: false,
        thawed: false,
    })
}

/// A label selector as the `labelSelector` query parameter.
fn selector_string(selector: &LabelSelector) -> Result<String> {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    for expression in selector.match_expressions.iter().flatten() {
        let values = expression.values.clone().unwrap_or_default().join(",");
        let key = &expression.key;
        parts.push(match expression.operator.as_str() {
            "In" => format!("{key} in ({values})"),
            "NotIn" => format!("{key} notin ({values})"),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            other => {
                return Err(Error::InvalidSpec(format!(
                    "spec.pvcSelector: unknown operator '{other}' (In, NotIn, Exists, DoesNotExist)"
                )));
            }
        });
    }
    if parts.is_empty() {
        return Err(Error::InvalidSpec(
            "spec.pvcSelector is empty: it would select every claim in the namespace; give labels".into(),
        ));
    }
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn selectors_become_query_strings() {
        let selector: LabelSelector = serde_saphyr::from_str(
            "matchLabels: {app: db}\nmatchExpressions:\n- {key: tier, operator: In, values: [a, b]}\n- {key: tmp, operator: DoesNotExist}\n",
        )
        .unwrap();
        assert_eq!(selector_string(&selector).unwrap(), "app=db,tier in (a,b),!tmp");
        assert!(selector_string(&LabelSelector::default()).is_err());
    }

    #[test]
    fn hooks_come_from_annotations_and_default_to_the_first_container() {
        let pod: Pod = serde_saphyr::from_str(
            "metadata:\n  name: db-0\n  annotations: {stowage.io/pre-hook: ' sync ', stowage.io/post-hook: ''}\nspec:\n  containers: [{name: db}, {name: side}]\n",
        )
        .unwrap();
        let hooks = hooks_of(&pod).unwrap();
        assert_eq!(
            (hooks.container.as_str(), hooks.pre_hook.as_deref(), hooks.post_hook),
            ("db", Some("sync"), None)
        );
        let mut other = pod.clone();
        other
            .annotations_mut()
            .insert(HOOK_CONTAINER_ANNOTATION.into(), "nope".into());
        assert_eq!(hooks_of(&other).unwrap_err().reason(), "HookContainerNotFound");
    }
}
