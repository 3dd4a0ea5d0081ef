//! ResourceSet (cluster-scoped): which Kubernetes objects a ResourceBackup takes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A set of Kubernetes objects to back up: every object matched by at least one selector.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stowage.io",
    version = "v1alpha1",
    kind = "ResourceSet",
    doc = "Which Kubernetes objects a ResourceBackup takes: selectors by API group, kind, name, namespace and labels, and the workloads to scale down while a restore runs.",
    plural = "resourcesets",
    shortname = "rset",
    category = "stowage",
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSetSpec {
    /// Selectors; an object is in the set when any one of them matches it.
    #[serde(default)]
    pub resource_selectors: Vec<ResourceSelector>,
    /// Workloads (Deployments, StatefulSets, …) scaled to zero replicas while a restore of a
    /// backup of this set runs, and scaled back to their former replicas afterwards, also
    /// when the restore fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controller_references: Vec<ControllerReference>,
}

/// One selector. All fields given must match; a field left out matches everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSelector {
    /// API group and version, e.g. `v1`, `apps/v1` or `example.com/v1beta1`. Without it every
    /// group matches (each at its preferred version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kinds to take, e.g. `ConfigMap`, `Deployment` (case-insensitive; plural resource names
    /// such as `configmaps` are accepted too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// A regular expression a kind must match, e.g. `^(Role|RoleBinding)$`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds_regexp: Option<String>,
    /// Object names to take.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    /// A regular expression an object's name must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name_regexp: Option<String>,
    /// Namespaces to take objects from. With `namespaces` or `namespaceRegexp` set, only
    /// namespaced objects match, and the Namespace objects themselves are taken too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// A regular expression a namespace must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_regexp: Option<String>,
    /// A label selector objects must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selectors: Option<LabelSelector>,
    /// Kinds never to take, even when the other fields match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_kinds: Vec<String>,
    /// A regular expression of object names never to take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_resource_name_regexp: Option<String>,
}

/// A workload that has a `scale` subresource.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControllerReference {
    /// API group and version, e.g. `apps/v1`.
    pub api_version: String,
    /// Plural resource name, e.g. `deployments`.
    pub resource: String,
    /// Namespace of the workload.
    pub namespace: String,
    /// Name of the workload.
    pub name: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_user_manifest_parses() {
        let yaml = r#"
resourceSelectors:
- namespaces: [shop]
- apiVersion: rbac.authorization.k8s.io/v1
  kindsRegexp: "^Cluster"
  labelSelectors: {matchLabels: {app: shop}}
  excludeResourceNameRegexp: "^system:"
controllerReferences:
- {apiVersion: apps/v1, resource: deployments, namespace: shop, name: web}
"#;
        let spec: ResourceSetSpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(spec.resource_selectors.len(), 2);
        assert_eq!(spec.resource_selectors[0].namespaces, ["shop"]);
        assert_eq!(spec.resource_selectors[1].kinds_regexp.as_deref(), Some("^Cluster"));
        assert_eq!(spec.controller_references[0].resource, "deployments");
    }
}
