//! The target workload of a restore: read it, scale it, wait for its Pods to go or to be ready,
//! and re-point it at other claims.
//!
//! Every operation is idempotent, so a restore interrupted by a controller restart simply runs
//! its steps again. Re-pointing a StatefulSet means recreating it (its claim templates cannot
//! change); the StatefulSet as it was is saved first in a ConfigMap owned by the restore, so a
//! restart between the deletion and the creation still finds what to create.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Client, ResourceExt};
use stowage_api::ApplicationKind;
use stowage_operator::{Error, Result};

use crate::restore_plan as plan;

/// How often a wait looks again.
const POLL: Duration = Duration::from_secs(1);
/// Key of the saved StatefulSet in its ConfigMap.
const SAVED_KEY: &str = "statefulset.json";

/// A Deployment or a StatefulSet, as read from the API server.
#[derive(Debug, Clone)]
pub enum Workload {
    Deployment(Deployment),
    StatefulSet(StatefulSet),
}

impl Workload {
    /// The workload `kind`/`name`, or None when it does not exist.
    pub async fn get(client: &Client, namespace: &str, kind: ApplicationKind, name: &str) -> Result<Option<Workload>> {
        Ok(match kind {
            ApplicationKind::Deployment => Api::<Deployment>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await?
                .map(Workload::Deployment),
            ApplicationKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await?
                .map(Workload::StatefulSet),
        })
    }

    /// Its desired replicas (Kubernetes' default is 1).
    pub fn replicas(&self) -> i32 {
        match self {
            Workload::Deployment(d) => d.spec.as_ref().and_then(|s| s.replicas),
            Workload::StatefulSet(s) => s.spec.as_ref().and_then(|s| s.replicas),
        }
        .unwrap_or(1)
    }

    /// The label query of its Pods.
    pub fn pod_selector(&self) -> Result<String> {
        let selector = match self {
            Workload::Deployment(d) => d.spec.as_ref().map(|s| s.selector.clone()),
            Workload::StatefulSet(s) => s.spec.as_ref().map(|s| s.selector.clone()),
        }
        .unwrap_or_default();
        plan::selector_query(&selector).map_err(Error::InvalidSpec)
    }

    fn ready(&self, replicas: i32) -> bool {
        match self {
            Workload::Deployment(d) => plan::deployment_ready(d, replicas),
            Workload::StatefulSet(s) => plan::statefulset_ready(s, replicas),
        }
    }
}

/// The workload a restore works on.
pub struct TargetWorkload {
    pub client: Client,
    pub namespace: String,
    pub kind: ApplicationKind,
    pub name: String,
}

impl TargetWorkload {
    async fn get(&self) -> Result<Workload> {
        Workload::get(&self.client, &self.namespace, self.kind, &self.name)
            .await?
            .ok_or_else(|| {
                Error::permanent(
                    "TargetNotFound",
                    format!("{} '{}' was deleted during the restore", self.kind, self.name),
                )
            })
    }

    /// The workload, or None while it is missing (a StatefulSet being recreated).
    pub async fn get_opt(&self) -> Result<Option<Workload>> {
        Workload::get(&self.client, &self.namespace, self.kind, &self.name).await
    }

    /// Sets its replicas.
    pub async fn scale(&self, replicas: i32) -> Result<()> {
        let patch = Patch::Merge(serde_json::json!({ "spec": { "replicas": replicas } }));
        let params = PatchParams::default();
        match self.kind {
            ApplicationKind::Deployment => {
                Api::<Deployment>::namespaced(self.client.clone(), &self.namespace)
                    .patch(&self.name, &params, &patch)
                    .await?;
            }
            ApplicationKind::StatefulSet => {
                Api::<StatefulSet>::namespaced(self.client.clone(), &self.namespace)
                    .patch(&self.name, &params, &patch)
                    .await?;
            }
        }
        Ok(())
    }

    /// Waits until no Pod of the workload exists any more (their processes stopped).
    pub async fn wait_pods_gone(&self, timeout: Duration) -> Result<()> {
        let selector = self.get().await?.pod_selector()?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut left = Vec::new();
        let gone = async {
            loop {
                left = pods
                    .list(&ListParams::default().labels(&selector))
                    .await?
                    .items
                    .iter()
                    .map(|p| p.name_any())
                    .collect();
                if left.is_empty() {
                    return Ok::<(), Error>(());
                }
                tokio::time::sleep(POLL).await;
            }
        };
        match tokio::time::timeout(timeout, gone).await {
            Ok(result) => result,
            Err(_) => Err(Error::permanent(
                "ScaleDownTimeout",
                format!(
                    "the Pods of {} '{}' were still there {}s after it was scaled to zero: {}",
                    self.kind,
                    self.name,
                    timeout.as_secs(),
                    left.join(", ")
                ),
            )),
        }
    }

    /// Waits until the workload runs `replicas` ready Pods of its current spec.
    pub async fn wait_ready(&self, replicas: i32, timeout: Duration) -> Result<()> {
        let ready = async {
            loop {
                if self.get().await?.ready(replicas) {
                    return Ok::<(), Error>(());
                }
                tokio::time::sleep(POLL).await;
            }
        };
        tokio::time::timeout(timeout, ready).await.unwrap_or_else(|_| {
            Err(Error::permanent(
                "NotReady",
                format!(
                    "{} '{}' did not have {replicas} ready Pods within {}s",
                    self.kind,
                    self.name,
                    timeout.as_secs()
                ),
            ))
        })
    }

    /// Points a Deployment's volumes at other claims (`claims`: old → new).
    pub async fn repoint_deployment(&self, claims: &BTreeMap<String, String>) -> Result<()> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        loop {
            // A Deployment deleted meanwhile has nothing left to re-point.
            let Some(mut deployment) = api.get_opt(&self.name).await? else {
                return Ok(());
            };
            let Some(pod) = deployment.spec.as_mut().and_then(|s| s.template.spec.as_mut()) else {
                return Ok(());
            };
            if plan::repoint_pod_spec(pod, claims) == 0 {
                return Ok(());
            }
            match api.replace(&self.name, &PostParams::default(), &deployment).await {
                Ok(_) => return Ok(()),
                // Someone else changed it in between: read it again.
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Makes the StatefulSet use its original claim templates renamed by `templates` (old → new)
    /// when `renamed`, or the original ones when not, with zero replicas: saves it as it was
    /// (once), deletes it leaving its Pods and revisions alone, and creates it again. Returns
    /// the original. `known` is the original as the run read it before: the saved ConfigMap is
    /// owned by the restore, so the garbage collector deletes it with a deleted restore that is
    /// still rolling back.
    pub async fn recreate_statefulset(
        &self,
        templates: &BTreeMap<String, String>,
        renamed: bool,
        saved: &str,
        owner: Option<OwnerReference>,
        known: Option<&StatefulSet>,
    ) -> Result<StatefulSet> {
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.namespace);
        let configmaps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let current = api.get_opt(&self.name).await?;
        let original = match (configmaps.get_opt(saved).await?, known) {
            (Some(configmap), _) => saved_statefulset(&configmap)?,
            (None, Some(known)) => known.clone(),
            (None, None) => {
                let current = current.clone().ok_or_else(|| {
                    Error::permanent(
                        "TargetNotFound",
                        format!("StatefulSet '{}' was deleted during the restore", self.name),
                    )
                })?;
                save_statefulset(&configmaps, saved, &current, owner).await?;
                current
            }
        };
        let mut desired = original.clone();
        if renamed && let Some(spec) = desired.spec.as_mut() {
            plan::rename_claim_templates(spec, templates);
        }
        let templates_of = |s: &StatefulSet| plan::claim_templates(&s.spec.clone().unwrap_or_default());
        if let Some(current) = &current {
            if templates_of(current) == templates_of(&desired) {
                return Ok(original);
            }
            let params = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Orphan),
                ..DeleteParams::default()
            };
            match api.delete(&self.name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error.into()),
            }
            self.wait_statefulset_gone(&api).await?;
        }
        api.create(&PostParams::default(), &plan::statefulset_to_recreate(&desired, 0))
            .await?;
        Ok(original)
    }

    async fn wait_statefulset_gone(&self, api: &Api<StatefulSet>) -> Result<()> {
        let gone = async {
            while api.get_opt(&self.name).await?.is_some() {
                tokio::time::sleep(POLL).await;
            }
            Ok::<(), Error>(())
        };
        tokio::time::timeout(Duration::from_secs(120), gone)
            .await
            .unwrap_or_else(|_| {
                Err(Error::permanent(
                    "RepointFailed",
                    format!("StatefulSet '{}' was still being deleted after 120s", self.name),
                ))
            })
    }
}

/// The StatefulSet saved in ConfigMap `name`, if there is one.
pub async fn saved(client: &Client, namespace: &str, name: &str) -> Result<Option<StatefulSet>> {
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match configmaps.get_opt(name).await? {
        Some(configmap) => Ok(Some(saved_statefulset(&configmap)?)),
        None => Ok(None),
    }
}

fn saved_statefulset(configmap: &ConfigMap) -> Result<StatefulSet> {
    let text = configmap.data.as_ref().and_then(|d| d.get(SAVED_KEY)).ok_or_else(|| {
        Error::permanent(
            "RepointFailed",
            format!("ConfigMap '{}' holds no {SAVED_KEY}", configmap.name_any()),
        )
    })?;
    serde_json::from_str(text).map_err(|error| {
        Error::permanent(
            "RepointFailed",
            format!("ConfigMap '{}': {error}", configmap.name_any()),
        )
    })
}

async fn save_statefulset(
    configmaps: &Api<ConfigMap>,
    name: &str,
    statefulset: &StatefulSet,
    owner: Option<OwnerReference>,
) -> Result<()> {
    let text = serde_json::to_string(&plan::statefulset_to_recreate(statefulset, 0))
        .map_err(|error| Error::permanent("RepointFailed", format!("saving StatefulSet: {error}")))?;
    let configmap = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(SAVED_KEY.to_string(), text)])),
        ..ConfigMap::default()
    };
    match configmaps.create(&PostParams::default(), &configmap).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error.into()),
    }
}
