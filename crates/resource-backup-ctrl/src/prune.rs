//! Prune: after a restore, delete the objects the backup's ResourceSet selects in this
//! cluster but the archive does not hold, then wait (up to deleteTimeoutSeconds) until they
//! are gone. Dry runs only list them. Objects with a controller (a ReplicaSet's Pods, a
//! Deployment's ReplicaSets) are left to that controller: they come and go with it.

use std::collections::HashSet;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use serde_json::Value;

use crate::archive::{Archive, IndexEntry, describe};
use crate::backup::{Served, is_generated};
use crate::error::{Error, Result};
use crate::restore::{Options, Report, api_for};
use crate::selector::{ObjectInfo, Selection};

/// Objects per list call.
const PAGE_SIZE: u32 = 250;

type Identity = (String, String, Option<String>, String);

/// Deletes (or, for a dry run, lists) what the archive's ResourceSet selects but the archive
/// lacks, leaving alone what the restore's include/exclude filters keep out.
pub async fn run(
    client: &kube::Client,
    archive: &Archive,
    served: &[Served],
    options: &Options,
    report: &mut Report,
) -> Result<()> {
    let selection = Selection::new(&archive.resource_set)?;
    let archived: HashSet<Identity> = archive
        .objects
        .iter()
        .map(|(e, _)| {
            (
                e.resource.group.clone(),
                e.resource.plural.clone(),
                e.namespace.clone(),
                e.name.clone(),
            )
        })
        .collect();
    let mut deleting = Vec::new();
    for served in served.iter().filter(|s| selection.wants(&s.resource)) {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &served.api);
        let mut params = ListParams::default().limit(PAGE_SIZE);
        loop {
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
                let identity = (
                    served.resource.group.clone(),
                    served.resource.plural.clone(),
                    info.namespace.clone(),
                    info.name.clone(),
                );
                if !selection.matches(&served.resource, &info)
                    || is_generated(&served.resource, &object)
                    || archived.contains(&identity)
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
        loop {
            match api.get_opt(&name).await {
                Ok(None) => break,
                Ok(Some(_)) | Err(_) if tokio::time::Instant::now() >= deadline => {
                    report.fail(
                        label,
                        format!(
                            "pruned but still present after {:?} (finalizers?)",
                            options.delete_timeout
                        ),
                    );
                    break;
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
            }
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
