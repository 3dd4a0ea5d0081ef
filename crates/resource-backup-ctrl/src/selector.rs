//! Which objects a ResourceSet selects: its selectors compiled once (regexes checked up
//! front, so an invalid one is an InvalidSpec before anything is listed), then matched
//! against resource types and objects. Pure logic, tested from YAML fixtures.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use regex::Regex;
use serde::{Deserialize, Serialize};
use stowage_api::resource_set::{ResourceSelector, ResourceSetSpec};

use crate::error::{Error, Result};

/// A resource type as discovery reports it, at its preferred version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceType {
    /// API group, "" for the core group.
    #[serde(default)]
    pub group: String,
    pub version: String,
    pub kind: String,
    /// Plural resource name, e.g. `deployments`.
    pub plural: String,
    pub namespaced: bool,
}

impl ResourceType {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `Deployment.apps`, or `ConfigMap` for the core group: how people name a kind.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// True when `name` (a kind, a plural, or either qualified with the group) names this type.
    pub fn is_named(&self, name: &str) -> bool {
        let (base, group) = match name.split_once('.') {
            Some((base, group)) => (base, Some(group)),
            None => (name, None),
        };
        let base_matches = base.eq_ignore_ascii_case(&self.kind) || base.eq_ignore_ascii_case(&self.plural);
        base_matches && group.is_none_or(|group| group.eq_ignore_ascii_case(&self.group))
    }
}

/// The parts of an object a selector looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Kinds never backed up: they describe the past, not the desired state.
const NEVER: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];

/// A ResourceSet's selectors, compiled.
#[derive(Debug)]
pub struct Selection {
    selectors: Vec<Compiled>,
}

#[derive(Debug)]
struct Compiled {
    group: Option<String>,
    kinds: Vec<String>,
    kinds_regexp: Option<Regex>,
    names: Vec<String>,
    name_regexp: Option<Regex>,
    namespaces: Vec<String>,
    namespace_regexp: Option<Regex>,
    labels: Option<LabelSelector>,
    exclude_kinds: Vec<String>,
    exclude_name_regexp: Option<Regex>,
}

impl Selection {
    /// Compiles every selector of `spec`; an invalid regex or label selector names its field.
    pub fn new(spec: &ResourceSetSpec) -> Result<Selection> {
        let selectors = spec
            .resource_selectors
            .iter()
            .enumerate()
            .map(|(index, selector)| Compiled::new(index, selector))
            .collect::<Result<Vec<_>>>()?;
        Ok(Selection { selectors })
    }

    /// True when some object of `resource` may be selected: worth listing.
    pub fn wants(&self, resource: &ResourceType) -> bool {
        !NEVER.contains(&(resource.group.as_str(), resource.plural.as_str()))
            && self.selectors.iter().any(|s| s.wants(resource))
    }

    /// True when `object` of `resource` is selected.
    pub fn matches(&self, resource: &ResourceType, object: &ObjectInfo) -> bool {
        self.wants(resource)
            && self
                .selectors
                .iter()
                .any(|s| s.wants(resource) && s.matches(resource, object))
    }

    /// A `labelSelector` query that lets the API server leave out, when listing `resource`,
    /// objects no selector takes: the label selector every selector wanting `resource`
    /// shares. None when one of them takes objects whatever their labels, when they differ
    /// (the API has no "or"), or when the selector cannot be written in the query syntax.
    /// Listing with it is an optimisation only: [`Selection::matches`] still decides.
    pub fn server_label_selector(&self, resource: &ResourceType) -> Option<String> {
        let mut wanting = self.selectors.iter().filter(|s| s.wants(resource));
        let shared = wanting.next()?.labels.as_ref()?;
        if !wanting.all(|s| s.labels.as_ref() == Some(shared)) {
            return None;
        }
        label_selector_query(shared)
    }
}

impl Compiled {
    fn new(index: usize, selector: &ResourceSelector) -> Result<Compiled> {
        let field = |name: &str| format!("spec.resourceSelectors[{index}].{name}");
        let regex = |name: &str, source: &Option<String>| -> Result<Option<Regex>> {
            source
                .as_deref()
                .map(|source| {
                    Regex::new(source).map_err(|e| {
                        Error::invalid(field(name), format!("{source:?} is not a regular expression: {e}"))
                    })
                })
                .transpose()
        };
        let group = match selector.api_version.as_deref() {
            None | Some("") => None,
            Some(api_version) => match api_version.split('/').collect::<Vec<_>>()[..] {
                [_version] => Some(String::new()),
                [group, _version] if !group.is_empty() => Some(group.to_string()),
                _ => {
                    return Err(Error::invalid(
                        field("apiVersion"),
                        format!("{api_version:?} is not `v1` or `<group>/<version>`"),
                    ));
                }
            },
        };
        if let Some(labels) = &selector.label_selectors {
            check_label_selector(labels).map_err(|reason| Error::invalid(field("labelSelectors"), reason))?;
        }
        Ok(Compiled {
            group,
            kinds: selector.kinds.clone(),
            kinds_regexp: regex("kindsRegexp", &selector.kinds_regexp)?,
            names: selector.resource_names.clone(),
            name_regexp: regex("resourceNameRegexp", &selector.resource_name_regexp)?,
            namespaces: selector.namespaces.clone(),
            namespace_regexp: regex("namespaceRegexp", &selector.namespace_regexp)?,
            labels: selector.label_selectors.clone(),
            exclude_kinds: selector.exclude_kinds.clone(),
            exclude_name_regexp: regex("excludeResourceNameRegexp", &selector.exclude_resource_name_regexp)?,
        })
    }

    fn by_namespace(&self) -> bool {
        !self.namespaces.is_empty() || self.namespace_regexp.is_some()
    }

    fn namespace_selected(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|n| n == namespace)
            || self.namespace_regexp.as_ref().is_some_and(|r| r.is_match(namespace))
    }

    fn is_namespace_kind(resource: &ResourceType) -> bool {
        resource.group.is_empty() && resource.plural == "namespaces"
    }

    fn wants(&self, resource: &ResourceType) -> bool {
        if self.group.as_ref().is_some_and(|group| *group != resource.group) {
            return false;
        }
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| resource.is_named(k)) {
            return false;
        }
        if self.kinds_regexp.as_ref().is_some_and(|r| !r.is_match(&resource.kind)) {
            return false;
        }
        if self.exclude_kinds.iter().any(|k| resource.is_named(k)) {
            return false;
        }
        // Selecting by namespace takes namespaced objects and the Namespaces themselves.
        !self.by_namespace() || resource.namespaced || Self::is_namespace_kind(resource)
    }

    fn matches(&self, resource: &ResourceType, object: &ObjectInfo) -> bool {
        if !self.names.is_empty() && !self.names.contains(&object.name) {
            return false;
        }
        if self.name_regexp.as_ref().is_some_and(|r| !r.is_match(&object.name)) {
            return false;
        }
        if self
            .exclude_name_regexp
            .as_ref()
            .is_some_and(|r| r.is_match(&object.name))
        {
            return false;
        }
        if self.by_namespace() {
            let namespace = if Self::is_namespace_kind(resource) {
                Some(object.name.as_str())
            } else {
                object.namespace.as_deref()
            };
            if !namespace.is_some_and(|ns| self.namespace_selected(ns)) {
                return false;
            }
        }
        self.labels
            .as_ref()
            .is_none_or(|labels| label_selector_matches(labels, &object.labels))
    }
}

/// Checks a label selector's operators and values the way the API server does.
pub fn check_label_selector(selector: &LabelSelector) -> Result<(), String> {
    for requirement in selector.match_expressions.iter().flatten() {
        let values = requirement.values.as_deref().unwrap_or_default();
        match requirement.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!(
                    "operator {} on {:?} needs values",
                    requirement.operator, requirement.key
                ));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!(
                    "operator {} on {:?} takes no values",
                    requirement.operator, requirement.key
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(format!(
                    "unknown operator {other:?}: expected In, NotIn, Exists or DoesNotExist"
                ));
            }
        }
    }
    Ok(())
}

/// `selector` in the API server's query syntax (`app=shop,tier in (web,db),!legacy`), or
/// None when it selects everything or holds a key or value the syntax cannot carry (the
/// API server validates label keys and values, so such a selector is left to the client).
pub fn label_selector_query(selector: &LabelSelector) -> Option<String> {
    let mut terms = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        if !is_label_key(key) || !is_label_value(value) {
            return None;
        }
        terms.push(format!("{key}={value}"));
    }
    for requirement in selector.match_expressions.iter().flatten() {
        let key = &requirement.key;
        let values = requirement.values.as_deref().unwrap_or_default();
        if !is_label_key(key) || !values.iter().all(|v| is_label_value(v)) {
            return None;
        }
        terms.push(match requirement.operator.as_str() {
            "In" if !values.is_empty() => format!("{key} in ({})", values.join(",")),
            "NotIn" if !values.is_empty() => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            _ => return None,
        });
    }
    (!terms.is_empty()).then(|| terms.join(","))
}

/// `[prefix/]name`: a DNS subdomain prefix, and a name as [`is_label_value`] (not empty).
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_valid = prefix.is_none_or(|prefix| {
        prefix.len() <= 253
            && prefix.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    });
    prefix_valid && is_label_value(name)
}

/// Up to 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit.
/// Empty values are valid labels but left to the client, where no syntax question arises.
fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    let alphanumeric = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    value.len() <= 63
        && alphanumeric(bytes.first())
        && alphanumeric(bytes.last())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// True when `labels` satisfy `selector` (an empty selector matches everything).
pub fn label_selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    by_label
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, labels))
}

fn requirement_matches(requirement: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&requirement.key);
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// One fixture case: a ResourceSet, and objects it must or must not select.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Case {
        name: String,
        resource_set: ResourceSetSpec,
        #[serde(default)]
        selected: Vec<Probe>,
        #[serde(default)]
        not_selected: Vec<Probe>,
        #[serde(default)]
        invalid: Option<String>,
        /// The `labelSelector` query a list of each resource carries (null: none).
        #[serde(default)]
        server_queries: Vec<ServerQuery>,
    }

    #[derive(Deserialize)]
    struct ServerQuery {
        resource: ResourceType,
        query: Option<String>,
    }

    #[derive(Deserialize)]
    struct Probe {
        resource: ResourceType,
        object: ObjectInfo,
    }

    #[test]
    fn selector_fixtures() {
        let cases: Vec<Case> = serde_saphyr::from_str(include_str!("../fixtures/selectors.yaml")).unwrap();
        assert!(cases.len() >= 8);
        for case in cases {
            let selection = Selection::new(&case.resource_set);
            if let Some(expected) = case.invalid {
                let error = selection.expect_err(&case.name).to_string();
                assert!(error.contains(&expected), "{}: {error}", case.name);
                continue;
            }
            let selection = selection.unwrap();
            for probe in &case.selected {
                assert!(
                    selection.matches(&probe.resource, &probe.object),
                    "{}: {} {:?} should be selected",
                    case.name,
                    probe.resource.kind,
                    probe.object
                );
            }
            for probe in &case.not_selected {
                assert!(
                    !selection.matches(&probe.resource, &probe.object),
                    "{}: {} {:?} should not be selected",
                    case.name,
                    probe.resource.kind,
                    probe.object
                );
            }
            for expected in &case.server_queries {
                assert_eq!(
                    selection.server_label_selector(&expected.resource),
                    expected.query,
                    "{}: the query listing {}",
                    case.name,
                    expected.resource.plural
                );
            }
        }
    }

    #[test]
    fn label_keys_and_values_follow_the_api_rules() {
        for key in ["app", "stowage.io/bench-batch", "a.b-c/x_y.z", "A1"] {
            assert!(is_label_key(key), "{key}");
        }
        for key in ["", "/a", "a/", "-a", "a b", "Bad.Prefix/a", "a/b/c", &"k".repeat(64)] {
            assert!(!is_label_key(key), "{key}");
        }
        for value in ["0", "web", "a-b_c.d"] {
            assert!(is_label_value(value), "{value}");
        }
        for value in ["", "a,b", "a)", "-a", "a b", &"v".repeat(64)] {
            assert!(!is_label_value(value), "{value}");
        }
    }
}
