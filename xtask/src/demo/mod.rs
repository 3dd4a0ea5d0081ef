//! `cargo xtask demo [--keep] [--only STEP]`: the main jobs on a local test bed and a local
//! Filesystem storage, with no cloud account and no existing cluster.
//!
//! It starts the test bed (building the control plane the first time, ~12 minutes), then runs
//! each step in its own namespace with its controller in-process, and prints what happened.
//! `--only exec` (or another step's name) runs one step; `--keep` leaves the bed running.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::discovery::Discovery;
use serde_json::json;
use stowage_e2e::bed::{TestBed, wait_for};

mod etcd;
mod exec;
mod resources;
mod schedule;
mod volumes;

/// The steps, in the order the tour runs them (each is also a `--only` name).
const STEPS: &[&str] = &["exec", "resources", "schedule", "etcd", "volumes"];

/// What every step shares: the workspace and the demo's Filesystem store.
pub struct Demo {
    pub root: PathBuf,
    /// `target/stowage-demo`: keys and other files the demo prints paths to.
    pub dir: PathBuf,
    /// The directory behind the demo's Filesystem BackupStorage.
    pub store_dir: PathBuf,
}

pub fn run(args: Vec<String>) -> anyhow::Result<()> {
    let keep = args.iter().any(|a| a == "--keep");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .map(|i| args.get(i + 1).cloned().context("--only needs a step name"))
        .transpose()?;
    if let Some(step) = &only {
        anyhow::ensure!(
            STEPS.contains(&step.as_str()),
            "unknown step {step}; the steps: {STEPS:?}"
        );
    }
    crate::deps::ensure_packages()?;
    eprintln!("==> starting the test bed (the first run builds kube-apiserver from Debian sources: ~12 minutes)");
    let info = crate::envtest::start()?;
    let result = tokio::runtime::Runtime::new()?.block_on(async {
        let bed = TestBed::connect(info.clone()).await?;
        let root = crate::deps::workspace_root();
        let dir = root.join("target/stowage-demo");
        let demo = Demo {
            store_dir: dir.join("store"),
            dir,
            root,
        };
        std::fs::create_dir_all(&demo.store_dir)?;
        for step in STEPS.iter().filter(|s| only.as_deref().is_none_or(|o| o == **s)) {
            eprintln!("\n######## {step}");
            match *step {
                "exec" => exec::tour(&bed, &demo).await,
                "resources" => resources::tour(&bed, &demo).await,
                "etcd" => etcd::tour(&bed, &demo).await,
                "schedule" => schedule::tour(&bed, &demo).await,
                "volumes" => volumes::tour(&bed, &demo).await,
                other => Err(anyhow::anyhow!("no step named {other}")),
            }
            .with_context(|| format!("demo step {step}"))?;
        }
        anyhow::Ok(())
    });
    if keep {
        eprintln!(
            "the test bed keeps running: export KUBECONFIG={}; stop it with `cargo xtask envtest stop`",
            info.kubeconfig.display()
        );
        result
    } else {
        let stopped = crate::envtest::stop();
        result.and(stopped)
    }
}

/// Recreates a demo namespace and waits for its `default` ServiceAccount (Pods need it; no
/// token Secret is awaited: servers since 1.24 create none).
pub async fn fresh_namespace(client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(namespace).await?.is_some() {
        namespaces.delete(namespace, &DeleteParams::default()).await?;
        wait_for("the previous demo namespace to go", || async {
            Ok(namespaces.get_opt(namespace).await?.is_none().then_some(()))
        })
        .await?;
    }
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}}))?,
        )
        .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    wait_for("the namespace's default ServiceAccount", || async {
        Ok(accounts.get_opt("default").await?.map(|_| ()))
    })
    .await
}

pub async fn create_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    data: serde_json::Value,
) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret: Secret = serde_json::from_value(json!({ "metadata": { "name": name }, "stringData": data }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    Ok(())
}

pub fn scenario_files(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

pub fn file_name(path: &Path) -> String {
    path.file_name().unwrap_or_default().to_string_lossy().into_owned()
}

/// Server-side applies every object of `file` (namespaced ones in `namespace`), with the
/// storage path and the encryption recipients replaced by the demo's own.
pub async fn apply(
    client: &kube::Client,
    discovery: &Discovery,
    file: &Path,
    namespace: &str,
    store_dir: &Path,
    recipient: &str,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)?;
    for mut value in serde_saphyr::from_multiple::<serde_json::Value>(&text)? {
        if value.is_null() {
            continue;
        }
        if value["kind"] == "BackupStorage" {
            value["spec"]["filesystem"]["path"] = json!(store_dir);
        }
        if value["spec"]["encryption"]["recipients"].is_array() {
            value["spec"]["encryption"]["recipients"] = json!([recipient]);
        }
        let object: DynamicObject = serde_json::from_value(value)?;
        let gvk = object.types.as_ref().context("an object without apiVersion/kind")?;
        let gvk = kube::core::GroupVersionKind::try_from(gvk)?;
        let (resource, capabilities) = discovery
            .resolve_gvk(&gvk)
            .with_context(|| format!("{gvk:?} is not served"))?;
        let name = object.metadata.name.clone().context("an object without a name")?;
        let api: Api<DynamicObject> = match capabilities.scope {
            kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
            kube::discovery::Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
        };
        api.patch(
            &name,
            &PatchParams::apply("stowage-demo").force(),
            &Patch::Apply(&object),
        )
        .await?;
        eprintln!("    applied {} {name} from {}", gvk.kind, file_name(file));
    }
    Ok(())
}
