//! Applying the project's manifests to the test bed: every CustomResourceDefinition first
//! (waiting until each is Established), then any other objects in the same files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::discovery::Discovery;

const FIELD_MANAGER: &str = "stowage-testbed";
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository root (this crate's parent directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Every YAML file in `deploy/crds/` and `e2e/manifests/`, sorted; missing directories are empty.
pub fn bed_manifest_files() -> anyhow::Result<Vec<PathBuf>> {
    let root = repo_root();
    let mut files = Vec::new();
    for dir in [root.join("deploy/crds"), root.join("e2e/manifests")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
            let is_yaml = path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml");
            // A kustomization lists the manifests; it is not one.
            let is_kustomization = path.file_name().is_some_and(|name| name == "kustomization.yaml");
            if is_yaml && !is_kustomization && path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Server-side applies every document of `files`: CRDs first, waiting until they are
/// Established, then the rest (which may be custom resources of those CRDs).
pub async fn apply_files(client: &kube::Client, files: &[PathBuf]) -> anyhow::Result<()> {
    let mut crds = Vec::new();
    let mut others = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let documents = serde_saphyr::from_multiple::<serde_json::Value>(&text)
            .with_context(|| format!("parsing {}", file.display()))?;
        for value in documents {
            if value.is_null() {
                continue;
            }
            if value["kind"] == "CustomResourceDefinition" {
                let crd: CustomResourceDefinition = serde_json::from_value(value)
                    .with_context(|| format!("a CustomResourceDefinition in {}", file.display()))?;
                crds.push(crd);
            } else {
                let object: DynamicObject =
                    serde_json::from_value(value).with_context(|| format!("an object in {}", file.display()))?;
                others.push((file.clone(), object));
            }
        }
    }
    apply_crds(client, &crds).await?;
    if others.is_empty() {
        return Ok(());
    }
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .context("discovering API resources")?;
    for (file, object) in others {
        apply_object(client, &discovery, &object)
            .await
            .with_context(|| format!("applying {}", file.display()))?;
    }
    Ok(())
}

/// Applies the CRDs and waits until each is Established.
pub async fn apply_crds(client: &kube::Client, crds: &[CustomResourceDefinition]) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let knows_rules = knows_validation_rules(client).await?;
    for crd in crds {
        let name = crd
            .metadata
            .name
            .as_deref()
            .context("a CustomResourceDefinition without a name")?;
        let crd = if knows_rules {
            crd.clone()
        } else {
            without_validation_rules(crd)?
        };
        api.patch(name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
    }
    for crd in crds {
        let name = crd.metadata.name.as_deref().unwrap_or_default();
        wait_established(client, name).await?;
    }
    Ok(())
}

/// Whether the API server knows CRD validation rules (`x-kubernetes-validations`, 1.25 on).
/// An older one (the bed's 1.20) refuses a server-side apply that has them ("field not
/// declared in schema"), where a client-side apply would see them silently dropped.
pub async fn knows_validation_rules(client: &kube::Client) -> anyhow::Result<bool> {
    let version = client
        .apiserver_version()
        .await
        .context("asking the API server its version")?;
    let minor: u32 = version
        .minor
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .with_context(|| format!("the API server's minor version {:?}", version.minor))?;
    Ok(version.major != "1" || minor >= 25)
}

/// `crd` without its validation rules, as an API server that does not know them stores it.
/// The controllers check the same rules themselves.
fn without_validation_rules(crd: &CustomResourceDefinition) -> anyhow::Result<CustomResourceDefinition> {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("x-kubernetes-validations");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(crd)?;
    strip(&mut value["spec"]);
    Ok(serde_json::from_value(value)?)
}

async fn wait_established(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + ESTABLISH_TIMEOUT;
    loop {
        let crd = api.get(name).await.with_context(|| format!("reading CRD {name}"))?;
        let established = crd
            .status
            .as_ref()
            .and_then(|status| status.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|condition| condition.type_ == "Established" && condition.status == "True")
            });
        if established && serves_every_version(client, &crd).await {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "CRD {name} not Established and served after {ESTABLISH_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Established can precede the resource's REST handler by a moment (a create then gets 404):
/// list each served version once to be sure.
async fn serves_every_version(client: &kube::Client, crd: &CustomResourceDefinition) -> bool {
    let spec = &crd.spec;
    for version in spec.versions.iter().filter(|version| version.served) {
        let gvk = GroupVersionKind::gvk(&spec.group, &version.name, &spec.names.kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, &spec.names.plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        if api.list(&ListParams::default().limit(1)).await.is_err() {
            return false;
        }
    }
    true
}

async fn apply_object(client: &kube::Client, discovery: &Discovery, object: &DynamicObject) -> anyhow::Result<()> {
    let types = object.types.as_ref().context("an object without apiVersion and kind")?;
    let gvk = GroupVersionKind::try_from(types)?;
    let (resource, capabilities) = discovery
        .resolve_gvk(&gvk)
        .with_context(|| format!("the API server does not serve {}/{}", types.api_version, types.kind))?;
    let name = object.metadata.name.as_deref().context("an object without a name")?;
    let api: Api<DynamicObject> = match (capabilities.scope, object.metadata.namespace.as_deref()) {
        (kube::discovery::Scope::Namespaced, Some(namespace)) => {
            Api::namespaced_with(client.clone(), namespace, &resource)
        }
        (kube::discovery::Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &resource),
        (kube::discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
    };
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
        .await
        .with_context(|| format!("applying {} {name}", types.kind))?;
    Ok(())
}
