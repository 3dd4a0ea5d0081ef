//! A Pod's volumes as host directories.
//!
//! emptyDir, Secret, ConfigMap, downwardAPI and projected volumes (with ServiceAccount tokens
//! from the TokenRequest API, as the admission-injected `kube-api-access-*` volume asks) become
//! directories under the Pod's own directory; a PVC resolves through its bound PersistentVolume
//! to the PV's hostPath (the CSI simulator provisions those) once the volume is attached to the
//! Pod's node; hostPath is used as is.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, Node, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount,
    ServiceAccountTokenProjection, Volume,
};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use super::attach;
use super::env::{config_map_data, field_value, resource_value, secret_data};
use super::process::BindMount;

/// Where each of the Pod's volumes lives on the host, by volume name.
pub(crate) struct PodVolumes {
    paths: HashMap<String, VolumePath>,
}

struct VolumePath {
    path: PathBuf,
    /// Secret, ConfigMap, downwardAPI and projected volumes are always read-only.
    read_only: bool,
}

/// Makes every volume of `pod` exist on the host. Fails (to be retried) while a referenced
/// Secret, ConfigMap or PVC is missing or unbound.
pub(crate) async fn prepare(client: &kube::Client, pod: &Pod, pod_dir: &Path) -> anyhow::Result<PodVolumes> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut paths = HashMap::new();
    for volume in pod.spec.iter().flat_map(|spec| spec.volumes.iter().flatten()) {
        let dir = pod_dir.join("volumes").join(&volume.name);
        let path = prepare_one(client, pod, namespace, volume, &dir)
            .await
            .with_context(|| format!("preparing volume {:?}", volume.name))?;
        paths.insert(volume.name.clone(), path);
    }
    Ok(PodVolumes { paths })
}

async fn prepare_one(
    client: &kube::Client,
    pod: &Pod,
    namespace: &str,
    volume: &Volume,
    dir: &Path,
) -> anyhow::Result<VolumePath> {
    let owned = |path: &Path, read_only| VolumePath {
        path: path.to_owned(),
        read_only,
    };
    if volume.empty_dir.is_some() {
        std::fs::create_dir_all(dir)?;
        // An emptyDir is world-writable, whatever user the container runs as.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
        return Ok(owned(dir, false));
    }
    if let Some(host_path) = &volume.host_path {
        let path = PathBuf::from(&host_path.path);
        if matches!(
            host_path.type_.as_deref(),
            None | Some("" | "DirectoryOrCreate" | "Directory")
        ) && !path.exists()
        {
            std::fs::create_dir_all(&path)?;
        }
        return Ok(owned(&path, false));
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        let node = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.node_name.as_deref())
            .unwrap_or_default();
        let path = claim_path(client, namespace, &claim.claim_name, node).await?;
        return Ok(owned(&path, claim.read_only == Some(true)));
    }
    let mut files = Files::default();
    if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().unwrap_or_default();
        let data = secret_data(client, namespace, &name).await?;
        files.add_keys(
            data,
            secret.items.as_deref(),
            secret.optional,
            &format!("Secret {name}"),
        )?;
        files.write(dir, secret.default_mode.unwrap_or(0o644))?;
    } else if let Some(config_map) = &volume.config_map {
        let data = config_map_data(client, namespace, &config_map.name).await?;
        let what = format!("ConfigMap {}", config_map.name);
        files.add_keys(data, config_map.items.as_deref(), config_map.optional, &what)?;
        files.write(dir, config_map.default_mode.unwrap_or(0o644))?;
    } else if let Some(downward) = &volume.downward_api {
        files.add_downward(pod, downward.items.as_deref())?;
        files.write(dir, downward.default_mode.unwrap_or(0o644))?;
    } else if let Some(projected) = &volume.projected {
        for source in projected.sources.iter().flatten() {
            if let Some(secret) = &source.secret {
                let data = secret_data(client, namespace, &secret.name).await?;
                files.add_keys(
                    data,
                    secret.items.as_deref(),
                    secret.optional,
                    &format!("Secret {}", secret.name),
                )?;
            } else if let Some(config_map) = &source.config_map {
                let data = config_map_data(client, namespace, &config_map.name).await?;
                let what = format!("ConfigMap {}", config_map.name);
                files.add_keys(data, config_map.items.as_deref(), config_map.optional, &what)?;
            } else if let Some(downward) = &source.downward_api {
                files.add_downward(pod, downward.items.as_deref())?;
            } else if let Some(token) = &source.service_account_token {
                let value = service_account_token(client, pod, token).await?;
                files.add(&token.path, value.into_bytes(), None)?;
            }
            // clusterTrustBundle sources are left out: that API is alpha/beta everywhere.
        }
        files.write(dir, projected.default_mode.unwrap_or(0o644))?;
    } else {
        bail!(
            "this volume type is not supported by the node simulator (emptyDir, hostPath, persistentVolumeClaim, secret, configMap, downwardAPI and projected are)"
        );
    }
    Ok(owned(dir, true))
}

/// PVC → bound PV → the PV's host directory, once the attach-detach controller has attached the
/// volume to `node` (for volumes that attach to one node at a time; see [`super::attach`]).
async fn claim_path(client: &kube::Client, namespace: &str, claim_name: &str, node: &str) -> anyhow::Result<PathBuf> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let claim = claims
        .get_opt(claim_name)
        .await?
        .with_context(|| format!("PersistentVolumeClaim {claim_name} does not exist"))?;
    let volume_name = claim
        .spec
        .and_then(|spec| spec.volume_name)
        .filter(|name| !name.is_empty())
        .with_context(|| format!("PersistentVolumeClaim {claim_name} is not bound yet"))?;
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let volume = volumes
        .get(&volume_name)
        .await
        .with_context(|| format!("reading PersistentVolume {volume_name}"))?;
    if let Some(attachment) = attach::attachment_name(&volume) {
        let node_object = Api::<Node>::all(client.clone())
            .get(node)
            .await
            .with_context(|| format!("reading Node {node}"))?;
        if !attach::is_attached(&node_object, &attachment) {
            bail!(
                "volume {volume_name} is not attached to node {node} yet (the attach-detach controller's Events on the Pod say why)"
            );
        }
    }
    let spec = volume.spec.unwrap_or_default();
    let path = spec
        .host_path
        .map(|host_path| host_path.path)
        .or(spec.local.map(|local| local.path))
        .with_context(|| format!("PersistentVolume {volume_name} has neither hostPath nor local path"))?;
    let path = PathBuf::from(path);
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(path)
}

/// A token for the Pod's ServiceAccount from the TokenRequest API, bound to the Pod (it stops
/// working when the Pod is deleted), with the projection's audience and lifetime, as a kubelet
/// requests it. Tokens are not refreshed: the lifetime (at least 10 minutes, an hour by default,
/// extended by the API server for the admission-injected volume) must cover the Pod's life.
async fn service_account_token(
    client: &kube::Client,
    pod: &Pod,
    projection: &ServiceAccountTokenProjection,
) -> anyhow::Result<String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.as_deref())
        .filter(|name| !name.is_empty())
        .unwrap_or("default");
    let audiences: Vec<&str> = projection
        .audience
        .as_deref()
        .filter(|a| !a.is_empty())
        .into_iter()
        .collect();
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": audiences,
            "expirationSeconds": projection.expiration_seconds.unwrap_or(3600),
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod.metadata.name,
                "uid": pod.metadata.uid,
            },
        },
    });
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let response: serde_json::Value = accounts
        .create_subresource("token", account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{account}"))?;
    response["status"]["token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("the TokenRequest for ServiceAccount {namespace}/{account} returned no token"))
}

/// Files of a Secret, ConfigMap or downwardAPI volume before they are written: relative path →
/// (content, mode).
#[derive(Default)]
struct Files {
    files: BTreeMap<PathBuf, (Vec<u8>, Option<i32>)>,
}

impl Files {
    fn add_keys(
        &mut self,
        data: Option<BTreeMap<String, Vec<u8>>>,
        items: Option<&[KeyToPath]>,
        optional: Option<bool>,
        what: &str,
    ) -> anyhow::Result<()> {
        let Some(mut data) = data else {
            if optional == Some(true) {
                return Ok(());
            }
            bail!("{what} does not exist");
        };
        match items {
            None => {
                for (key, value) in data {
                    self.add(&key, value, None)?;
                }
            }
            Some(items) => {
                for item in items {
                    match data.remove(&item.key) {
                        Some(value) => self.add(&item.path, value, item.mode)?,
                        None if optional == Some(true) => {}
                        None => bail!("{what} has no key {:?}", item.key),
                    }
                }
            }
        }
        Ok(())
    }

    fn add_downward(&mut self, pod: &Pod, items: Option<&[DownwardAPIVolumeFile]>) -> anyhow::Result<()> {
        for item in items.into_iter().flatten() {
            let value = if let Some(field) = &item.field_ref {
                field_value(pod, field)?
            } else if let Some(resource) = &item.resource_field_ref {
                let spec = pod.spec.as_ref();
                let container = spec
                    .and_then(|spec| {
                        spec.containers
                            .iter()
                            .find(|c| Some(&c.name) == resource.container_name.as_ref())
                    })
                    .cloned()
                    .unwrap_or_else(Container::default);
                resource_value(&container, resource)
            } else {
                continue;
            };
            self.add(&item.path, value.into_bytes(), item.mode)?;
        }
        Ok(())
    }

    fn add(&mut self, relative: &str, content: Vec<u8>, mode: Option<i32>) -> anyhow::Result<()> {
        let path = PathBuf::from(relative);
        if path.components().any(|c| !matches!(c, Component::Normal(_))) {
            bail!("volume file path {relative:?} must be relative and must not contain '..'");
        }
        self.files.insert(path, (content, mode));
        Ok(())
    }

    /// Writes the files into a fresh `dir` (replacing what an earlier attempt wrote).
    fn write(self, dir: &Path, default_mode: i32) -> anyhow::Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        for (relative, (content, mode)) in self.files {
            let path = dir.join(relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
            let mode = u32::try_from(mode.unwrap_or(default_mode)).unwrap_or(0o644);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }
}

impl PodVolumes {
    /// The bind mounts of one container, from its volumeMounts (subPath included).
    pub(crate) fn mounts_for(&self, container: &Container) -> anyhow::Result<Vec<BindMount>> {
        let mut mounts = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let volume = self
                .paths
                .get(&mount.name)
                .with_context(|| format!("volumeMount {:?} names no volume of the Pod", mount.name))?;
            let mut source = volume.path.clone();
            if let Some(sub_path) = mount.sub_path.as_deref().filter(|sub| !sub.is_empty()) {
                let sub = Path::new(sub_path);
                if sub.components().any(|c| !matches!(c, Component::Normal(_))) {
                    bail!("subPath {sub_path:?} must be relative and must not contain '..'");
                }
                source = source.join(sub);
                if !source.exists() {
                    std::fs::create_dir_all(&source)?;
                }
            }
            mounts.push(BindMount {
                source,
                target: PathBuf::from(&mount.mount_path),
                read_only: volume.read_only || mount.read_only == Some(true),
            });
        }
        Ok(mounts)
    }
}
