//! deploy/ and examples/ against the real apiserver: every kustomize base renders offline and
//! its objects pass the apiserver's validation (server-side dry run), every Deployment runs a
//! binary the workspace builds, and every example applies in a fresh namespace, so neither
//! can rot.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use stowage_e2e::bed;
use stowage_e2e::crds::repo_root;

fn dirs_with(root: &Path, file: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let path = entry?.path();
        if path.join(file).is_file() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// The binaries the workspace builds: every crate with a src/main.rs, by directory name.
fn workspace_binaries() -> anyhow::Result<Vec<String>> {
    let crates = repo_root().join("crates");
    Ok(std::fs::read_dir(&crates)?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("src/main.rs").is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect())
}

#[tokio::test]
async fn every_kustomize_base_renders_offline_and_passes_server_validation() -> anyhow::Result<()> {
    let bed = bed().await?;
    let namespaces: Api<Namespace> = Api::all(bed.client());
    if namespaces.get_opt("stowage-system").await?.is_none() {
        let namespace: Namespace =
            serde_json::from_value(serde_json::json!({ "metadata": { "name": "stowage-system" } }))?;
        namespaces.create(&PostParams::default(), &namespace).await?;
    }
    let binaries = workspace_binaries()?;
    // Before 1.25 the API server does no field validation, and kubectl falls back to checking
    // objects against the server's OpenAPI schema, where a CRD's validation rules are unknown
    // fields. The server itself then drops them; it still validates everything else.
    let client_side_check = if stowage_e2e::crds::knows_validation_rules(&bed.client()).await? {
        "--validate=true"
    } else {
        "--validate=false"
    };
    let bases = dirs_with(&repo_root().join("deploy"), "kustomization.yaml")?;
    assert!(
        bases.iter().any(|base| base.ends_with("all")),
        "deploy/all exists: {bases:?}"
    );
    for base in &bases {
        let rendered = bed
            .kubectl(["kustomize".as_ref(), base.as_os_str()])
            .await
            .with_context(|| format!("rendering {}", base.display()))?;
        assert!(rendered.contains("kind:"), "{} rendered nothing", base.display());
        for document in rendered.split("\n---\n") {
            let object: serde_json::Value = serde_saphyr::from_str(document)?;
            if object["kind"] == "Deployment" {
                let command = object["spec"]["template"]["spec"]["containers"][0]["command"][0]
                    .as_str()
                    .unwrap_or("");
                assert!(
                    binaries.iter().any(|binary| binary == command),
                    "{}: the Deployment runs `{command}`, which no crate builds ({binaries:?})",
                    base.display()
                );
            }
        }
        if base.ends_with("all") {
            continue; // its parts are each checked on their own
        }
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), &rendered)?;
        bed.kubectl([
            "apply".as_ref(),
            "--dry-run=server".as_ref(),
            client_side_check.as_ref(),
            "-f".as_ref(),
            file.path().as_os_str(),
        ])
        .await
        .with_context(|| format!("validating {} with the apiserver", base.display()))?;
    }
    Ok(())
}

#[tokio::test]
async fn every_example_applies_in_a_fresh_namespace() -> anyhow::Result<()> {
    let bed = bed().await?;
    stowage_e2e::crds::apply_crds(&bed.client(), &stowage_api::crds()).await?;
    let examples = repo_root().join("examples");
    let scenarios: Vec<PathBuf> = std::fs::read_dir(&examples)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_dir())
        .collect();
    assert!(!scenarios.is_empty(), "examples/ has scenarios");
    for scenario in scenarios {
        let name = scenario.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let prefix: String = format!("example-{name}").chars().take(40).collect();
        bed.with_namespace(&prefix, |_client, namespace| {
            let scenario = scenario.clone();
            async move {
                bed.kubectl([
                    "apply".as_ref(),
                    "-n".as_ref(),
                    namespace.as_ref(),
                    "-f".as_ref(),
                    scenario.as_os_str(),
                ])
                .await
                .with_context(|| format!("applying {}", scenario.display()))?;
                Ok(())
            }
        })
        .await?;
    }
    Ok(())
}
