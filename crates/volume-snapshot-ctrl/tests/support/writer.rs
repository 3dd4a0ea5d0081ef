//! The application of the VolumeBackup tests: a writer that appends numbered records to its
//! volume and honours freeze and thaw hooks, which leave markers with their times.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::json;

use stowage_e2e::wait_for;

use super::{apply, pvc, running_pods};

/// The writer: every 20 ms, unless `/data/frozen` exists, appends the next number to
/// `/data/records` (restarting from the last one written, so a restarted container goes on).
pub const WRITER: &str = "i=$(tail -n 1 /data/records 2>/dev/null || echo 0); \
    while true; do if [ ! -e /data/frozen ]; then i=$((i+1)); echo $i >> /data/records; fi; sleep 0.02; done";
/// Freeze: stop the writer, give it time to finish a write, then note the time (ns) and the
/// number of records.
pub const PRE_HOOK: &str =
    "touch /data/frozen && sleep 0.2 && echo \"$(date +%s%N) $(wc -l < /data/records)\" > /data/freeze-marker";
/// Thaw: note the time (ns), then let the writer go on.
pub const POST_HOOK: &str = "date +%s%N > /data/thaw-marker && rm -f /data/frozen";

/// A Pod template of the writer mounting `claim` at /data, with the hooks in `annotations`.
pub fn writer_template(app: &str, claim: Option<&str>, annotations: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "containers": [{
            "name": "writer",
            "image": "busybox",
            "command": ["sh", "-c", WRITER],
            "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
        }],
    });
    if let Some(claim) = claim {
        spec["volumes"] = json!([{ "name": "data", "persistentVolumeClaim": { "claimName": claim } }]);
    }
    json!({ "metadata": { "labels": { "app": app }, "annotations": annotations }, "spec": spec })
}

/// The hooks as Pod annotations.
pub fn hooks(pre: &str, post: &str) -> serde_json::Value {
    json!({ "stowage.io/pre-hook": pre, "stowage.io/post-hook": post })
}

/// A Deployment `name` of one writer Pod on a new PVC `claim_name`, with the given hooks; waits
/// until its Pod runs and has written a few records. Returns the claim's host directory.
pub async fn writer_deployment(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    claim_name: &str,
    annotations: serde_json::Value,
) -> anyhow::Result<PathBuf> {
    let dir = pvc(client, namespace, claim_name).await?;
    apply(
        client,
        namespace,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": name },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": { "app": name } },
                "template": writer_template(name, Some(claim_name), annotations),
            },
        }),
    )
    .await?;
    running_pods(client, namespace, name, 1).await?;
    records_at_least(&dir, 5).await?;
    Ok(dir)
}

/// Waits until `dir/records` holds at least `count` lines.
pub async fn records_at_least(dir: &Path, count: usize) -> anyhow::Result<Vec<u64>> {
    wait_for(&format!("{count} records in {}", dir.display()), || async {
        let records = records(dir)?;
        Ok((records.len() >= count).then_some(records))
    })
    .await
}

/// The numbers in `dir/records` (none if there is no such file).
pub fn records(dir: &Path) -> anyhow::Result<Vec<u64>> {
    let text = std::fs::read_to_string(dir.join("records")).unwrap_or_default();
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| line.trim().parse().with_context(|| format!("record {line:?}")))
        .collect()
}

/// The numbers in `dir/name` (a marker file written by a hook).
pub fn marker(dir: &Path, name: &str) -> anyhow::Result<Vec<i64>> {
    let text = std::fs::read_to_string(dir.join(name)).with_context(|| format!("reading {name}"))?;
    text.split_whitespace()
        .map(|word| word.parse().with_context(|| format!("{name}: {text:?}")))
        .collect()
}
