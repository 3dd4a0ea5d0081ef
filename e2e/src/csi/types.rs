//! The CSI snapshot API (`snapshot.storage.k8s.io/v1`) the simulator serves. The types live in
//! `stowage_api::snapshot_storage` so the volume controller and the simulator share one
//! definition; `e2e/manifests/volumesnapshot-crds.yaml` is generated from them and a unit test
//! fails when the two disagree.

use kube::CustomResourceExt as _;

pub use stowage_api::snapshot_storage::*;

/// The three CRDs as one multi-document YAML file, as committed in
/// `e2e/manifests/volumesnapshot-crds.yaml`.
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::from(
        "# CSI snapshot CRDs (snapshot.storage.k8s.io/v1), generated from crates/api/src/snapshot_storage.rs.\n\
         # Do not edit: change the types and run\n\
         #   STOWAGE_BLESS=1 cargo test -p stowage-e2e --lib csi::types\n",
    );
    for crd in [
        VolumeSnapshot::crd(),
        VolumeSnapshotContent::crd(),
        VolumeSnapshotClass::crd(),
    ] {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/volumesnapshot-crds.yaml");

    /// The committed manifest is what the types generate; `STOWAGE_BLESS=1`
    /// rewrites it.
    #[test]
    fn manifest_matches_types() {
        let generated = crds_yaml().expect("CRDs serialise to YAML");
        if std::env::var_os("STOWAGE_BLESS").is_some() {
            std::fs::write(MANIFEST, &generated).expect("write the manifest");
        }
        let committed = std::fs::read_to_string(MANIFEST).unwrap_or_default();
        assert!(
            committed == generated,
            "{MANIFEST} is stale: run `STOWAGE_BLESS=1 cargo test -p stowage-e2e --lib csi::types`"
        );
    }

    #[test]
    fn snapshot_round_trips_in_upstream_shape() {
        let yaml = r#"
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: data, namespace: app}
spec:
  volumeSnapshotClassName: stowage-sim
  source: {persistentVolumeClaimName: data}
status:
  boundVolumeSnapshotContentName: snapcontent-1
  creationTime: "2024-01-02T03:04:05Z"
  readyToUse: true
  restoreSize: 1Gi
"#;
        let snapshot: VolumeSnapshot = serde_saphyr::from_str(yaml).expect("parse");
        assert_eq!(
            snapshot.spec.source.persistent_volume_claim_name.as_deref(),
            Some("data")
        );
        let status = snapshot.status.expect("status");
        assert_eq!(status.ready_to_use, Some(true));
        assert_eq!(status.restore_size, Some(Quantity("1Gi".into())));

        let class: VolumeSnapshotClass = serde_saphyr::from_str(
            "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\n\
             metadata: {name: c}\ndriver: d\ndeletionPolicy: Retain\n",
        )
        .expect("parse class");
        assert_eq!(class.spec.deletion_policy, DeletionPolicy::Retain);
        let back = serde_json::to_value(&class).expect("serialise class");
        assert_eq!(back["driver"], "d");
    }
}
