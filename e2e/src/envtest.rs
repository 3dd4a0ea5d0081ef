//! The control plane's binaries: etcd from Debian's `etcd-server`, and kube-apiserver and
//! kube-controller-manager v1.20.2 built from Debian bookworm's `kubernetes` source package
//! (../shared/envtest.md explains why and how). The two built binaries are cached under
//! `${XDG_CACHE_HOME:-$HOME/.cache}/stowage/envtest/<debian source version>/bin/`, so only the
//! first install on a machine pays for the build (about 12 minutes on 2 cores).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The source version the recipe was verified with; used when apt cannot tell.
pub const FALLBACK_SOURCE_VERSION: &str = "1.20.5+really1.20.2-1.1+deb12u1";

/// Overrides the cache: a directory holding kube-apiserver and kube-controller-manager.
pub const BIN_DIR_ENV: &str = "STOWAGE_ENVTEST_BIN_DIR";

const BUILT_BINARIES: [&str; 2] = ["kube-apiserver", "kube-controller-manager"];
const ETCD: &str = "/usr/bin/etcd";
/// What running the control plane needs (etcdctl helps when debugging a bed).
const RUNTIME_PACKAGES: [&str; 2] = ["etcd-server", "etcd-client"];
/// What building kube-apiserver and kube-controller-manager needs.
const BUILD_PACKAGES: [&str; 8] = [
    "golang-go",
    "golang-github-modern-go-reflect2-dev",
    "dpkg-dev",
    "rsync",
    "make",
    "gcc",
    "openssl",
    "ca-certificates",
];
const REFLECT2_SOURCE: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";

/// Paths of the three control-plane binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/stowage/envtest`.
pub fn cache_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache")
        });
    base.join("stowage").join("envtest")
}

/// The version of the `kubernetes` source package apt would fetch, or the verified fallback.
pub fn source_version() -> String {
    apt_source_version().unwrap_or_else(|| FALLBACK_SOURCE_VERSION.to_string())
}

fn apt_source_version() -> Option<String> {
    let output = Command::new("apt-cache")
        .args(["showsrc", "kubernetes"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("Version:"))
        .map(|version| version.trim().to_string())
}

/// The cached binaries, without building anything.
pub fn locate() -> anyhow::Result<Binaries> {
    let bin_dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => cache_root().join(source_version()).join("bin"),
    };
    let binaries = Binaries {
        etcd: PathBuf::from(ETCD),
        kube_apiserver: bin_dir.join("kube-apiserver"),
        kube_controller_manager: bin_dir.join("kube-controller-manager"),
    };
    for path in [&binaries.kube_apiserver, &binaries.kube_controller_manager] {
        if !path.is_file() {
            bail!(
                "{} not found: run `cargo xtask envtest install` (builds it from Debian's kubernetes \
                 source package in about 12 minutes)",
                path.display()
            );
        }
    }
    if !binaries.etcd.is_file() {
        bail!("etcd not found at {ETCD}: run `cargo xtask envtest install` or `apt-get install etcd-server`");
    }
    Ok(binaries)
}

/// The cached binaries, installing them first if they are missing. Several processes may call
/// this at once: a file lock makes the others wait for the one that builds.
pub fn ensure_installed() -> anyhow::Result<Binaries> {
    if let Ok(binaries) = locate() {
        return Ok(binaries);
    }
    install()
}

/// Installs etcd and builds the Kubernetes binaries unless they are cached. Idempotent.
pub fn install() -> anyhow::Result<Binaries> {
    let root = cache_root();
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let lock_path = root.join("install.lock");
    let lock_file = std::fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    eprintln!("envtest: waiting for the install lock {}", lock_path.display());
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| anyhow::anyhow!("locking {}: {errno}", lock_path.display()))?;

    ensure_packages(&RUNTIME_PACKAGES)?;
    ensure_kubectl()?;
    debian_kubectl()?;
    if let Ok(binaries) = locate() {
        eprintln!(
            "envtest: cached binaries found in {}",
            binaries.kube_apiserver.parent().map_or(root.display(), Path::display)
        );
        return Ok(binaries);
    }
    ensure_packages(&BUILD_PACKAGES)?;
    let version = ensure_source_available()?;
    let bin_dir = root.join(&version).join("bin");
    build(&root, &bin_dir)?;
    locate()
}

/// Installs the Debian packages that are not installed yet.
fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !package_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("envtest: apt-get install {}", missing.join(" "));
    let mut command = Command::new("apt-get");
    command
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing);
    command.env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut command).with_context(|| {
        format!(
            "installing {} with apt-get (run as root, with Debian's package archive reachable)",
            missing.join(" ")
        )
    })
}

/// Tests call kubectl; any kubectl on PATH will do (machines with the Google Cloud SDK's
/// `kubectl` package cannot install Debian's `kubernetes-client`: both own /usr/bin/kubectl).
fn ensure_kubectl() -> anyhow::Result<()> {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("kubectl").is_file()));
    if on_path {
        return Ok(());
    }
    ensure_packages(&["kubernetes-client"])
}

/// Debian's own `kubectl` (1.20, from `kubernetes-client`), which speaks exec and attach only over
/// SPDY: the node simulator's tests need a real SPDY client. Machines whose /usr/bin/kubectl comes
/// from another package cannot install `kubernetes-client`, so its package is unpacked into
/// `${XDG_CACHE_HOME:-$HOME/.cache}/stowage/kubectl-debian/` instead of being installed.
pub fn debian_kubectl() -> anyhow::Result<PathBuf> {
    let root = cache_root()
        .parent()
        .map_or_else(cache_root, Path::to_path_buf)
        .join("kubectl-debian");
    let kubectl = root.join("usr/bin/kubectl");
    if kubectl.is_file() {
        return Ok(kubectl);
    }
    let parent = root.parent().context("the kubectl cache has no parent directory")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("kubectl-debian-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a scratch directory in {}", parent.display()))?;
    let how = "Debian's kubernetes-client package could not be unpacked; on Debian 12 run \
               `apt-get update && cd /tmp && apt-get download kubernetes-client && \
               dpkg-deb -x kubernetes-client_*.deb ~/.cache/stowage/kubectl-debian`";
    run(Command::new("apt-get")
        .args(["download", "kubernetes-client"])
        .current_dir(scratch.path()))
    .context(how)?;
    let package = std::fs::read_dir(scratch.path())?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .context(how)?;
    let unpacked = scratch.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&package).arg(&unpacked)).context(how)?;
    anyhow::ensure!(
        unpacked.join("usr/bin/kubectl").is_file(),
        "{how}: the package holds no usr/bin/kubectl"
    );
    // Another process may have unpacked it meanwhile; either copy will do.
    if std::fs::rename(&unpacked, &root).is_err() && !kubectl.is_file() {
        bail!("moving Debian's kubectl into {}", root.display());
    }
    Ok(kubectl)
}

fn package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", package])
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains("install ok installed"))
}

/// Makes `apt-get source kubernetes` possible: adds a deb-src entry mirroring the binary entry
/// for bookworm if apt knows no source package, then updates the index. Returns its version.
fn ensure_source_available() -> anyhow::Result<String> {
    if let Some(version) = apt_source_version() {
        return Ok(version);
    }
    let sources_dir = Path::new("/etc/apt/sources.list.d");
    let binary_entry = sources_dir.join("debian.sources");
    let entry = std::fs::read_to_string(&binary_entry)
        .with_context(|| format!("reading {} to derive a deb-src entry", binary_entry.display()))?;
    let stanza = deb_src_stanza(&entry).with_context(|| {
        format!(
            "{} has no entry for the bookworm suite to mirror as deb-src",
            binary_entry.display()
        )
    })?;
    let target = sources_dir.join("stowage-deb-src.sources");
    eprintln!("envtest: writing {} and running apt-get update", target.display());
    std::fs::write(&target, stanza).with_context(|| format!("writing {} (run as root)", target.display()))?;
    run(Command::new("apt-get").arg("update")).context("apt-get update")?;
    apt_source_version().context(
        "apt knows no `kubernetes` source package even with a deb-src entry for bookworm: \
         is this Debian 12 with its package archive reachable?",
    )
}

/// A deb822 stanza of type deb-src with the URIs and Signed-By of the entry listing `bookworm`.
fn deb_src_stanza(sources: &str) -> Option<String> {
    sources.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
        };
        let suites = field("Suites")?;
        suites
            .split_whitespace()
            .any(|suite| suite == "bookworm")
            .then_some(())?;
        let uris = field("URIs")?;
        let mut stanza = format!("Types: deb-src\nURIs: {uris}\nSuites: bookworm bookworm-updates\nComponents: main\n");
        if let Some(signed_by) = field("Signed-By") {
            stanza.push_str(&format!("Signed-By: {signed_by}\n"));
        }
        Some(stanza)
    })
}

/// apt-get source, the reflect2 fix, make; then copies the two binaries into `bin_dir`.
fn build(root: &Path, bin_dir: &Path) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(root)
        .with_context(|| format!("creating a scratch directory in {}", root.display()))?;
    eprintln!("envtest: apt-get source kubernetes in {}", scratch.path().display());
    run(Command::new("apt-get")
        .args(["source", "kubernetes"])
        .current_dir(scratch.path()))
    .context("apt-get source kubernetes")?;
    let source = find_source_dir(scratch.path())?;

    // The vendored reflect2 v1.0.1 segfaults under Go >= 1.18; Debian ships 1.0.2.
    let vendored = source.join("vendor/github.com/modern-go/reflect2");
    eprintln!("envtest: replacing {} with {REFLECT2_SOURCE}", vendored.display());
    if vendored.exists() {
        std::fs::remove_dir_all(&vendored).with_context(|| format!("removing {}", vendored.display()))?;
    }
    copy_dir(Path::new(REFLECT2_SOURCE), &vendored)?;
    let _ = std::fs::remove_file(vendored.join("go.mod"));

    let log_path = root.join("build.log");
    eprintln!(
        "envtest: building {} (about 12 minutes on 2 cores; log: {})",
        BUILT_BINARIES.join(" and "),
        log_path.display()
    );
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut make = Command::new("make");
    make.arg(format!(
        "WHAT={}",
        BUILT_BINARIES.map(|name| format!("cmd/{name}")).join(" ")
    ))
    .current_dir(&source)
    .env_remove("GOFLAGS")
    .env("GOPROXY", "off")
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log);
    let mut child = make.spawn().context("starting make (is `make` installed?)")?;
    let started = Instant::now();
    let mut next_report = started + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_secs(1));
        if Instant::now() >= next_report {
            eprintln!("envtest: still building ({} min)", started.elapsed().as_secs() / 60);
            next_report += Duration::from_secs(60);
        }
    };
    if !status.success() {
        bail!(
            "make failed ({status}); the end of {}:\n{}",
            log_path.display(),
            crate::process::log_tail(&log_path, 40)
        );
    }

    let staging = bin_dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    for name in BUILT_BINARIES {
        let built = source.join("_output/bin").join(name);
        std::fs::copy(&built, staging.join(name))
            .with_context(|| format!("copying {} into the cache", built.display()))?;
    }
    let _ = std::fs::remove_dir_all(bin_dir);
    std::fs::rename(&staging, bin_dir).with_context(|| format!("moving binaries to {}", bin_dir.display()))?;
    eprintln!(
        "envtest: cached {} in {}",
        BUILT_BINARIES.join(" and "),
        bin_dir.display()
    );
    Ok(())
}

fn find_source_dir(scratch: &Path) -> anyhow::Result<PathBuf> {
    for entry in std::fs::read_dir(scratch)? {
        let path = entry?.path();
        let is_source = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("kubernetes-1.20"));
        if is_source && path.is_dir() {
            return Ok(path);
        }
    }
    bail!(
        "apt-get source unpacked no kubernetes-1.20.* directory in {}",
        scratch.display()
    )
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| {
        format!(
            "reading {} (apt-get install golang-github-modern-go-reflect2-dev)",
            from.display()
        )
    })? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    anyhow::ensure!(status.success(), "{:?} failed: {status}", command);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::deb_src_stanza;

    const SOURCES: &str = "Types: deb\n\
        URIs: http://mirror.invalid/debian\n\
        Suites: bookworm bookworm-updates\n\
        Components: main\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
        \n\
        Types: deb\n\
        URIs: http://mirror.invalid/debian-security\n\
        Suites: bookworm-security\n\
        Components: main\n";

    #[test]
    fn the_deb_src_entry_mirrors_the_bookworm_entry() {
        let stanza = deb_src_stanza(SOURCES).expect("a bookworm entry exists");
        assert_eq!(
            stanza,
            "Types: deb-src\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
    }

    #[test]
    fn no_bookworm_entry_means_no_deb_src_entry() {
        let security_only = SOURCES.split("\n\n").nth(1).expect("two stanzas");
        assert_eq!(deb_src_stanza(security_only), None);
    }
}
