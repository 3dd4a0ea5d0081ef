//! Prune: after a restore, delete the objects the backup's ResourceSet selects in this
//! cluster but the archive does not hold, then wait (up to deleteTimeoutSeconds) until they
//! are gone. Dry runs only list them. Objects with a controller (a ReplicaSet's Pods, a
//! Deployment's ReplicaSets) are left to that controller: they come and go with it. A
//! cancelled restore deletes nothing more and stops waiting (`Error::Cancelled`).

use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use serde_json::Value;
use stowage_api::resource_set::ResourceSetSpec;

use crate::apply::api_for;
use crate::backup::{Served, is_generated};
use crate::error::{Error, Result};
use crate::index::{IndexEntry, describe};
use crate::restore::{Options, Report};
use crate::selector::{ObjectInfo, Selection};

/// Objects per list call.
const PAGE_SIZE: u32 = 250;

/// Deletes (or, for a dry run, lists) what the archive's ResourceSet selects but the archive
/// lacks (`archived(group, plural, namespace, name)` says what it holds), leaving alone what
/// the restore's include/exclude filters keep out.
pub async fn run(
    client: &kube::Client,
    resource_set: &ResourceSetSpec,
    archived: impl Fn(&str, &str, Option<&str>, &str) -> bool,
    served: &[Served],
    options: &Options,
    report: &mut Report,
) -> Result<()> {
    let selection = Selection::new(resource_set)?;
    let mut deleting = Vec::new();
    for served in served.iter().filter(|s| selection.wants(&s.resource)) {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &served.api);
        let mut params = ListParams::default().limit(PAGE_SIZE);
        if let Some(labels) = selection.server_label_selector(&served.resource) {
            params = params.labels(&labels);
        }
        loop {
            if options.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let page = api
                .list(&params)
                .await
                .map_err(|e| Error::kube(format!("listing {} to prune", served.resource.qualified_kind()), e))?;
            for object in page.items {
                let info = ObjectInfo {
                    name: object.metadata.name.clone().unwrap_or_default(),
                    namespace: object.metadata.namespace.clone(),
                    labels: object.metadata.labels.clone().unwrap_or_default(),
                };
                if !selection.matches(&served.resource, &info)
                    || is_generated(&served.resource, &object)
                    || archived(
                        &served.resource.group,
                        &served.resource.plural,
                        info.namespace.as_deref(),
                        &info.name,
                    )
                    || object.metadata.deletion_timestamp.is_some()
                    || has_controller(&object)
                {
                    continue;
                }
                let entry = IndexEntry {
                    path: String::new(),
                    resource: served.resource.clone(),
                    namespace: info.namespace.clone(),
                    name: info.name.clone(),
                    uid: String::new(),
                    owner_uids: Vec::new(),
                    encrypted: false,
                };
                let value = serde_json::to_value(&object).unwrap_or(Value::Null);
                if !options.selection.admits(&entry, &value) {
                    continue;
                }
                let label = describe(&entry);
                if options.dry_run {
                    report.counts.deleted += 1;
                    report.list(|p| &mut p.delete, label);
                    continue;
                }
                // Between objects: what was deleted stays deleted (and counted), nothing more is.
                if options.cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let target = api_for(client, &served.resource, info.namespace.as_deref());
                let outcome = target.delete(&info.name, &DeleteParams::background()).await;
                match outcome {
                    Ok(_) => {
                        report.counts.deleted += 1;
                        report.list(|p| &mut p.delete, label.clone());
                        deleting.push((target, info.name, label));
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(e) => report.fail(label, format!("pruning: {e}")),
                }
            }
            match page.metadata.continue_.filter(|token| !token.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
    let deadline = tokio::time::Instant::now() + options.delete_timeout;
    for (api, name, label) in deleting {
        if !crate::waits::gone(&api, &name, deadline, &options.cancel).await? {
            report.fail(
                label,
                format!(
                    "pruned but still present after {:?} (finalizers?)",
                    options.delete_timeout
                ),
            );
        }
    }
    Ok(())
}

fn has_controller(object: &DynamicObject) -> bool {
    object
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true))
}
