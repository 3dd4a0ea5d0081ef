//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager running every default controller, with fresh certificates, an admin
//! token and a kubeconfig, all in one directory. The recipe is ../shared/envtest.md's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;

use crate::envtest::{self, Binaries};
use crate::pki::{self, CertificateAuthority};
use crate::process::{ManagedChild, free_port, wait_for_port};

/// How long to wait for each component to come up before failing with its log.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// What to do between the apiserver becoming ready and the controller manager starting.
#[derive(Debug, Default, Clone)]
pub struct ControlPlaneOptions {
    /// YAML files whose CustomResourceDefinitions (and other objects) are applied before the
    /// controller manager starts: its garbage collector only notices new CRDs every 30 s.
    pub manifests: Vec<PathBuf>,
}

/// A running control plane; its processes stop when it is dropped or this process dies.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    kubeconfig_path: PathBuf,
    apiserver_url: String,
    etcd_endpoint: String,
    ca_path: PathBuf,
    // Stopped in reverse order of start by `stop`.
    children: Vec<ManagedChild>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager with their state, certificates,
    /// logs and kubeconfig in `dir` (created if missing); returns once `/readyz` answers `ok`
    /// and the `default` namespace exists.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, &ControlPlaneOptions::default()).await
    }

    pub async fn start_with(dir: &Path, options: &ControlPlaneOptions) -> anyhow::Result<Self> {
        let binaries = envtest::locate()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = std::fs::canonicalize(dir)?;
        let mut plane = Self {
            kubeconfig_path: dir.join("kubeconfig"),
            apiserver_url: String::new(),
            etcd_endpoint: String::new(),
            ca_path: dir.join("ca.crt"),
            dir,
            children: Vec::new(),
        };
        plane.start_etcd(&binaries)?;
        plane.start_apiserver(&binaries).await?;
        if !options.manifests.is_empty() {
            let client = plane.client().await?;
            crate::crds::apply_files(&client, &options.manifests).await?;
        }
        plane.start_controller_manager(&binaries)?;
        Ok(plane)
    }

    fn start_etcd(&mut self, binaries: &Binaries) -> anyhow::Result<()> {
        let client_port = free_port()?;
        let peer_port = free_port()?;
        self.etcd_endpoint = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(&binaries.etcd);
        command
            .arg("--name=envtest")
            .arg(format!("--data-dir={}", self.dir.join("etcd").display()))
            .arg("--unsafe-no-fsync")
            .arg(format!("--listen-client-urls={}", self.etcd_endpoint))
            .arg(format!("--advertise-client-urls={}", self.etcd_endpoint))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=envtest={peer_url}"));
        let mut etcd = ManagedChild::spawn("etcd", command, &self.dir.join("etcd.log"))?;
        wait_for_port(&mut etcd, client_port, STARTUP_TIMEOUT)?;
        self.children.push(etcd);
        Ok(())
    }

    async fn start_apiserver(&mut self, binaries: &Binaries) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        let ca = CertificateAuthority::create(&dir, "ca")?;
        let serving = ca.issue_server(&dir, "apiserver")?;
        let (sa_key, sa_pub) = pki::write_signing_key(&dir, "service-account")?;
        let token = random_token()?;
        let tokens = dir.join("tokens.csv");
        std::fs::write(&tokens, format!("{token},admin,admin-uid,\"system:masters\"\n"))?;

        let port = free_port()?;
        self.apiserver_url = format!("https://127.0.0.1:{port}");
        write_kubeconfig(&self.kubeconfig_path, &self.apiserver_url, &ca.files.cert_path, &token)?;

        let minor = minor_version(&binaries.kube_apiserver)?;
        let mut command = Command::new(&binaries.kube_apiserver);
        command
            .arg(format!("--etcd-servers={}", self.etcd_endpoint))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={port}"));
        if minor < 24 {
            // Removed in 1.24, where no insecure port exists any more.
            command.arg("--insecure-port=0");
        }
        if minor < 21 {
            // Pods get a projected `kube-api-access-*` volume (a TokenRequest token, the
            // `kube-root-ca.crt` ConfigMap the controller manager publishes, the namespace)
            // instead of the account's token Secret, as on every server since 1.21; the
            // ServiceAccount admission then no longer waits for a token Secret, which servers
            // since 1.24 never create. Needs the issuer and signing key set below.
            command.arg("--feature-gates=BoundServiceAccountTokenVolume=true");
        }
        command
            .arg(format!("--tls-cert-file={}", serving.cert_path.display()))
            .arg(format!("--tls-private-key-file={}", serving.key_path.display()))
            .arg(format!("--cert-dir={}", dir.join("apiserver-certs").display()))
            .arg(format!("--client-ca-file={}", ca.files.cert_path.display()))
            .arg(format!("--token-auth-file={}", tokens.display()))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", sa_pub.display()))
            .arg(format!("--service-account-signing-key-file={}", sa_key.display()))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--allow-privileged=true");
        let apiserver = ManagedChild::spawn("kube-apiserver", command, &dir.join("kube-apiserver.log"))?;
        self.children.push(apiserver);
        self.wait_ready().await
    }

    fn start_controller_manager(&mut self, binaries: &Binaries) -> anyhow::Result<()> {
        let dir = &self.dir;
        let minor = minor_version(&binaries.kube_controller_manager)?;
        let mut command = Command::new(&binaries.kube_controller_manager);
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig_path.display()))
            .arg("--controllers=*")
            .args(["--leader-elect=false", "--secure-port=0"]);
        if minor < 24 {
            // Removed in 1.24 with the insecure port it turned off.
            command.arg("--port=0");
        }
        command
            .arg("--use-service-account-credentials=false")
            .arg(format!(
                "--service-account-private-key-file={}",
                dir.join("service-account.key").display()
            ))
            .arg(format!("--root-ca-file={}", self.ca_path.display()))
            .arg(format!("--cluster-signing-cert-file={}", self.ca_path.display()))
            .arg(format!("--cluster-signing-key-file={}", dir.join("ca.key").display()));
        let manager = ManagedChild::spawn(
            "kube-controller-manager",
            command,
            &dir.join("kube-controller-manager.log"),
        )?;
        self.children.push(manager);
        Ok(())
    }

    /// Polls `/readyz` until it answers `ok` and the `default` namespace exists, failing early
    /// if a component exits.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut last_error;
        loop {
            for child in &mut self.children {
                child.check_running()?;
            }
            let request = http::Request::get("/readyz").body(Vec::new())?;
            match client.request_text(request).await {
                // The apiserver's bootstrap controller creates the `default` namespace a
                // moment after /readyz first says ok; tests expect it.
                Ok(body) if body.trim() == "ok" => {
                    let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
                    match namespaces.get_opt("default").await {
                        Ok(Some(_)) => return Ok(()),
                        Ok(None) => last_error = "no default namespace yet".to_string(),
                        Err(err) => last_error = err.to_string(),
                    }
                }
                Ok(body) => last_error = body,
                Err(err) => last_error = err.to_string(),
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "kube-apiserver at {} not ready after {STARTUP_TIMEOUT:?} (last answer: {last_error}); \
                     the end of its log:\n{}",
                    self.apiserver_url,
                    crate::process::log_tail(&self.dir.join("kube-apiserver.log"), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The kube client configuration for the admin user.
    pub async fn config(&self) -> anyhow::Result<kube::Config> {
        kube_config(&self.kubeconfig_path).await
    }

    /// A new admin client (create one per tokio runtime: a client dies with its runtime).
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        Ok(kube::Client::try_from(self.config().await?)?)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    pub fn apiserver_url(&self) -> &str {
        &self.apiserver_url
    }

    pub fn etcd_endpoint(&self) -> &str {
        &self.etcd_endpoint
    }

    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// Process ids by component name (etcd, kube-apiserver, kube-controller-manager).
    pub fn pids(&self) -> BTreeMap<String, u32> {
        self.children
            .iter()
            .map(|child| (child.name().to_string(), child.pid()))
            .collect()
    }

    /// Log files by component name.
    pub fn log_paths(&self) -> BTreeMap<String, PathBuf> {
        self.children
            .iter()
            .map(|child| (child.name().to_string(), child.log_path().to_path_buf()))
            .collect()
    }

    /// Fails with the component's log tail if any component has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.children.iter_mut().try_for_each(ManagedChild::check_running)
    }

    /// Stops the controller manager, the apiserver and etcd, in that order.
    pub fn stop(&mut self) {
        while let Some(mut child) = self.children.pop() {
            child.stop();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads a kubeconfig file into a kube client configuration.
pub async fn kube_config(kubeconfig_path: &Path) -> anyhow::Result<kube::Config> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig_path)
        .with_context(|| format!("reading {}", kubeconfig_path.display()))?;
    let options = kube::config::KubeConfigOptions::default();
    kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .with_context(|| format!("loading {}", kubeconfig_path.display()))
}

fn write_kubeconfig(path: &Path, server: &str, ca: &Path, token: &str) -> anyhow::Result<()> {
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stowage-testbed", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "stowage-testbed", "context": {"cluster": "stowage-testbed", "user": "admin"}}],
        "current-context": "stowage-testbed",
    });
    std::fs::write(path, serde_saphyr::to_string(&kubeconfig)?).with_context(|| format!("writing {}", path.display()))
}

/// The minor version of a Kubernetes binary, from its `--version` ("Kubernetes v1.20.2"):
/// flags come and go between versions, and the bed must start on old and current ones alike.
fn minor_version(binary: &Path) -> anyhow::Result<u32> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_minor_version(&text)
        .with_context(|| format!("{} --version said {text:?}, not `Kubernetes v1.N.P`", binary.display()))
}

fn parse_minor_version(text: &str) -> Option<u32> {
    let version = text.split_whitespace().find_map(|word| word.strip_prefix("v1."))?;
    version.split(['.', '-', '+']).next()?.parse().ok()
}

/// 32 random bytes as hex, from the kernel.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut urandom| std::io::Read::read_exact(&mut urandom, &mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::parse_minor_version;

    #[test]
    fn the_minor_version_comes_from_the_version_line() {
        assert_eq!(parse_minor_version("Kubernetes v1.20.2\n"), Some(20));
        assert_eq!(parse_minor_version("Kubernetes v1.35.0-alpha.1+abc"), Some(35));
        assert_eq!(parse_minor_version("something else"), None);
    }
}
