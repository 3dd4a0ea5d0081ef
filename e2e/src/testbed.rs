//! The whole test bed as one running thing: the control plane, the simulated nodes and their
//! scheduler, the volume and CSI snapshot simulator, and the project's CRDs. `stowage-testbed` runs one in the
//! foreground; `bed()` runs one in-process when no shared bed is given. Once ready it writes
//! `<dir>/testbed.json` ([`TestBedInfo`]), which is how other processes find and use it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::controlplane::{ControlPlane, ControlPlaneOptions};

/// The name of the first simulated Node.
pub const NODE_NAME: &str = "stowage-node";
/// Every simulated Node and its `topology.kubernetes.io/zone`. One scheduler places Pods on
/// them; Pods of all of them run as host processes of the bed.
pub const NODES: [(&str, &str); 3] = [
    (NODE_NAME, "stowage-zone-a"),
    ("stowage-node-2", "stowage-zone-b"),
    ("stowage-node-3", "stowage-zone-c"),
];
/// The file a ready bed writes into its directory.
pub const INFO_FILE: &str = "testbed.json";

/// What a running bed tells its users, stored as `<dir>/testbed.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestBedInfo {
    /// The bed's directory: state, certificates, logs.
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub apiserver_url: String,
    pub etcd_endpoint: String,
    /// Process ids by name: `testbed` (the owning process), etcd, kube-apiserver, kube-controller-manager.
    pub pids: BTreeMap<String, u32>,
    /// Log files worth showing when a test fails (the node simulator's), by name.
    pub logs: BTreeMap<String, PathBuf>,
}

impl TestBedInfo {
    /// Reads `<dir>/testbed.json`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(INFO_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is a test bed running there? `cargo xtask envtest start`)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes `<dir>/testbed.json` atomically, so readers never see half of it.
    pub fn write(&self) -> anyhow::Result<()> {
        let path = self.dir.join(INFO_FILE);
        let partial = self.dir.join(format!("{INFO_FILE}.partial"));
        std::fs::write(&partial, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// A running bed owned by this process; stops everything when dropped.
pub struct RunningBed {
    info: TestBedInfo,
    // Field order is drop order: simulators before the control plane they talk to.
    cluster: Option<crate::node::ClusterSimulator>,
    nodes: Vec<crate::node::NodeSimulator>,
    csi: Option<crate::csi::CsiSimulator>,
    control_plane: ControlPlane,
}

impl std::fmt::Debug for RunningBed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningBed")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl RunningBed {
    /// Starts the whole bed in `dir`, installing the control-plane binaries first if they are
    /// not cached, and writes `<dir>/testbed.json` when everything is ready.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let binaries_dir = dir.to_path_buf();
        tokio::task::spawn_blocking(crate::envtest::ensure_installed)
            .await
            .context("the install task panicked")?
            .with_context(|| format!("installing the control plane for the bed in {}", binaries_dir.display()))?;
        let _ = std::fs::remove_file(dir.join(INFO_FILE));
        let options = ControlPlaneOptions {
            manifests: crate::crds::bed_manifest_files()?,
        };
        let control_plane = ControlPlane::start_with(dir, &options).await?;
        let client = control_plane.client().await?;

        let mut logs = BTreeMap::new();
        let node_dir = control_plane.dir().join("node");
        let mut nodes = Vec::new();
        for (name, zone) in NODES {
            let node = crate::node::NodeSimulator::start(client.clone(), name, zone, &node_dir)
                .await
                .with_context(|| format!("starting the node simulator {name}"))?;
            logs.insert(format!("node-simulator {name}"), node.log_path().to_path_buf());
            nodes.push(node);
        }
        let cluster = crate::node::ClusterSimulator::start(client.clone(), &node_dir)
            .context("starting the scheduler and attach-detach simulator")?;
        logs.insert("scheduler".to_string(), cluster.log_path().to_path_buf());
        let csi = crate::csi::CsiSimulator::start(client, &control_plane.dir().join("csi"))
            .await
            .context("starting the volume and CSI snapshot simulator")?;
        logs.insert("csi-simulator".to_string(), csi.log_path().to_path_buf());

        let mut pids = control_plane.pids();
        pids.insert("testbed".to_string(), std::process::id());
        let info = TestBedInfo {
            dir: control_plane.dir().to_path_buf(),
            kubeconfig: control_plane.kubeconfig_path().to_path_buf(),
            apiserver_url: control_plane.apiserver_url().to_string(),
            etcd_endpoint: control_plane.etcd_endpoint().to_string(),
            pids,
            logs,
        };
        info.write()?;
        Ok(Self {
            info,
            cluster: Some(cluster),
            nodes,
            csi: Some(csi),
            control_plane,
        })
    }

    pub fn info(&self) -> &TestBedInfo {
        &self.info
    }

    pub fn control_plane(&self) -> &ControlPlane {
        &self.control_plane
    }

    /// Fails if a control-plane process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.control_plane.check_running()
    }

    /// Stops the simulators, then the control plane, and removes testbed.json.
    pub async fn stop(mut self) {
        let _ = std::fs::remove_file(self.info.dir.join(INFO_FILE));
        if let Some(csi) = self.csi.take() {
            csi.stop().await;
        }
        if let Some(cluster) = self.cluster.take() {
            cluster.stop().await;
        }
        for node in self.nodes.drain(..) {
            node.stop().await;
        }
        self.control_plane.stop();
    }
}
