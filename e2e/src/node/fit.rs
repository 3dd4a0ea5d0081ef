//! Whether a Pod fits a Node, and how well: the filter and score plugins of kube-scheduler that
//! decide placement on our nodes (no resource accounting: every simulated node has room).
//!
//! Filters run in kube-scheduler's order and a node fails on the first that rejects it, with
//! that plugin's own reason, so an unschedulable Pod's message reads as a real cluster's does:
//! NodeUnschedulable, TaintToleration (NoSchedule and NoExecute taints), NodeAffinity
//! (`nodeSelector` and required node affinity), VolumeBinding (the node affinity of the
//! PersistentVolumes the Pod's claims are bound to).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};

/// kube-scheduler's reasons, word for word (they end up in the PodScheduled condition).
pub(super) const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub(super) const REASON_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub(super) const REASON_VOLUME_AFFINITY: &str = "node(s) had volume node affinity conflict";

/// The taint kubectl cordon's `spec.unschedulable` stands for; tolerating it lifts the filter.
const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// Why `node` cannot run `pod`, or `Ok` when it can. `volume_affinities` are the required node
/// affinities of the PersistentVolumes bound to the Pod's claims.
pub(super) fn filter(pod: &Pod, node: &Node, volume_affinities: &[&NodeSelector]) -> Result<(), String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let tolerations = spec.tolerations.unwrap_or_default();
    let node_spec = node.spec.clone().unwrap_or_default();
    if node_spec.unschedulable == Some(true) {
        let cordon = Taint {
            key: UNSCHEDULABLE_TAINT.into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        if !tolerations.iter().any(|toleration| tolerates(toleration, &cordon)) {
            return Err(REASON_UNSCHEDULABLE.into());
        }
    }
    let untolerated = node_spec.taints.iter().flatten().find(|taint| {
        matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            && !tolerations.iter().any(|toleration| tolerates(toleration, taint))
    });
    if let Some(taint) = untolerated {
        return Err(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint.key,
            taint.value.as_deref().unwrap_or("")
        ));
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.metadata.name.as_deref().unwrap_or("");
    let selector_matches = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|affinity| affinity.node_affinity.as_ref())
        .and_then(|affinity| affinity.required_during_scheduling_ignored_during_execution.as_ref());
    if !selector_matches || required.is_some_and(|selector| !selector_matches_node(selector, &labels, name)) {
        return Err(REASON_AFFINITY.into());
    }
    if volume_affinities
        .iter()
        .any(|selector| !selector_matches_node(selector, &labels, name))
    {
        return Err(REASON_VOLUME_AFFINITY.into());
    }
    Ok(())
}

/// The sum of the weights of the Pod's preferred node-affinity terms that `node` matches.
pub(super) fn preferred_affinity(pod: &Pod, node: &Node) -> i64 {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.metadata.name.as_deref().unwrap_or("");
    pod.spec
        .as_ref()
        .and_then(|spec| spec.affinity.as_ref())
        .and_then(|affinity| affinity.node_affinity.as_ref())
        .and_then(|affinity| affinity.preferred_during_scheduling_ignored_during_execution.as_ref())
        .into_iter()
        .flatten()
        .filter(|term| term_matches(&term.preference, &labels, name))
        .map(|term| i64::from(term.weight))
        .sum()
}

/// How many PreferNoSchedule taints of `node` the Pod does not tolerate.
pub(super) fn intolerable_preferences(pod: &Pod, node: &Node) -> i64 {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.tolerations.clone())
        .unwrap_or_default();
    let count = node
        .spec
        .as_ref()
        .and_then(|spec| spec.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|taint| taint.effect == "PreferNoSchedule")
        .filter(|taint| {
            !tolerations.iter().any(|toleration| {
                // As kube-scheduler scores: only tolerations for PreferNoSchedule (or any effect) count.
                matches!(toleration.effect.as_deref(), None | Some("" | "PreferNoSchedule"))
                    && tolerates(toleration, taint)
            })
        })
        .count();
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Kubernetes' toleration rule: the effect matches (empty tolerates every effect), the key
/// matches (an empty key with `Exists` tolerates every taint), and the value is equal unless the
/// operator is `Exists`.
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref() {
        Some("Exists") => true,
        _ => !key.is_empty() && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    }
}

/// A NodeSelector matches when any of its terms does.
pub(super) fn selector_matches_node(selector: &NodeSelector, labels: &BTreeMap<String, String>, name: &str) -> bool {
    selector
        .node_selector_terms
        .iter()
        .any(|term| term_matches(term, labels, name))
}

/// A term matches when all its requirements do; a term without requirements matches nothing.
fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, name: &str) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let fields_match = fields.iter().all(|field| {
        // metadata.name is the only field a node selector may name.
        field.key == "metadata.name" && requirement_matches(field, Some(name))
    });
    fields_match
        && expressions
            .iter()
            .all(|expression| requirement_matches(expression, labels.get(&expression.key).map(String::as_str)))
}

fn requirement_matches(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let listed = |value: &str| values.iter().any(|listed| listed == value);
    let compare = |wanted: fn(i64, i64) -> bool| {
        let (Some(value), [bound]) = (value.and_then(|v| v.parse::<i64>().ok()), values) else {
            return false;
        };
        bound.parse::<i64>().is_ok_and(|bound| wanted(value, bound))
    };
    match requirement.operator.as_str() {
        "In" => value.is_some_and(listed),
        "NotIn" => !value.is_some_and(listed),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => compare(|value, bound| value > bound),
        "Lt" => compare(|value, bound| value < bound),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(labels: serde_json::Value, spec: serde_json::Value) -> Node {
        serde_json::from_value(json!({ "metadata": { "name": "n1", "labels": labels }, "spec": spec })).expect("a Node")
    }

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = json!([{ "name": "c" }]);
        serde_json::from_value(json!({ "metadata": { "name": "p" }, "spec": spec })).expect("a Pod")
    }

    fn required(expressions: serde_json::Value) -> serde_json::Value {
        json!({ "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{ "matchExpressions": expressions }] } } } })
    }

    #[test]
    fn affinity_operators_follow_kubernetes() {
        let n = node(json!({ "zone": "a", "cores": "8" }), json!({}));
        let fits = |expressions| filter(&pod(required(expressions)), &n, &[]).is_ok();
        assert!(fits(json!([{ "key": "zone", "operator": "In", "values": ["a", "b"] }])));
        assert!(!fits(json!([{ "key": "zone", "operator": "NotIn", "values": ["a"] }])));
        assert!(fits(json!([{ "key": "disk", "operator": "NotIn", "values": ["ssd"] }])));
        assert!(fits(json!([{ "key": "zone", "operator": "Exists" }])));
        assert!(fits(json!([{ "key": "disk", "operator": "DoesNotExist" }])));
        assert!(fits(json!([{ "key": "cores", "operator": "Gt", "values": ["4"] }])));
        assert!(!fits(json!([{ "key": "cores", "operator": "Lt", "values": ["4"] }])));
        assert!(!fits(json!([{ "key": "zone", "operator": "Gt", "values": ["4"] }])));
        let by_name = |name: &str| {
            let spec = json!({ "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{ "matchFields": [{ "key": "metadata.name", "operator": "In", "values": [name] }] }] } } } });
            filter(&pod(spec), &n, &[]).is_ok()
        };
        assert!(by_name("n1"));
        assert!(!by_name("n2"));
    }

    #[test]
    fn taints_need_tolerations_and_prefer_no_schedule_only_scores() {
        let tainted = node(
            json!({}),
            json!({ "taints": [{ "key": "dedicated", "value": "db", "effect": "NoSchedule" },
                                { "key": "slow", "effect": "PreferNoSchedule" }] }),
        );
        assert_eq!(
            filter(&pod(json!({})), &tainted, &[]),
            Err("node(s) had untolerated taint {dedicated: db}".into())
        );
        let tolerant = pod(json!({ "tolerations": [{ "key": "dedicated", "operator": "Equal", "value": "db" }] }));
        assert_eq!(filter(&tolerant, &tainted, &[]), Ok(()));
        assert_eq!(intolerable_preferences(&tolerant, &tainted), 1);
        let wrong_value = pod(json!({ "tolerations": [{ "key": "dedicated", "value": "web" }] }));
        assert!(filter(&wrong_value, &tainted, &[]).is_err());
        let everything = pod(json!({ "tolerations": [{ "operator": "Exists" }] }));
        assert_eq!(filter(&everything, &tainted, &[]), Ok(()));
        assert_eq!(intolerable_preferences(&everything, &tainted), 0);
    }

    #[test]
    fn a_cordoned_node_takes_only_pods_tolerating_it() {
        let cordoned = node(json!({}), json!({ "unschedulable": true }));
        assert_eq!(
            filter(&pod(json!({})), &cordoned, &[]),
            Err(REASON_UNSCHEDULABLE.into())
        );
        let tolerant = pod(json!({ "tolerations": [{ "key": UNSCHEDULABLE_TAINT, "operator": "Exists" }] }));
        assert_eq!(filter(&tolerant, &cordoned, &[]), Ok(()));
    }
}
