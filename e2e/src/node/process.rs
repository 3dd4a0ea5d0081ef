//! Running a container's command as a host process.
//!
//! Each process gets a private mount namespace in which the Pod's volumes are bind-mounted at
//! the container's mount paths, so a command sees the paths its manifest promises while the
//! rest of the host filesystem stays visible (the image is ignored). Every process leads its own
//! process group, so that killing a container also kills what its shell started.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Gid, Pid, Uid};
use tokio::process::{Child, Command};

use super::{NodeContext, lock};

/// The search path of a container's environment unless it sets its own.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything needed to start a process "inside" a container: the container's processes and
/// every exec into it share this.
#[derive(Debug, Clone)]
pub(crate) struct ContainerContext {
    pub(crate) env: Vec<(String, String)>,
    pub(crate) mounts: Vec<BindMount>,
    pub(crate) working_dir: Option<PathBuf>,
    pub(crate) run_as_user: Option<u32>,
    pub(crate) run_as_group: Option<u32>,
}

/// A host path made visible at `target` inside the container.
#[derive(Debug, Clone)]
pub(crate) struct BindMount {
    pub(crate) source: PathBuf,
    pub(crate) target: PathBuf,
    pub(crate) read_only: bool,
}

/// Where each of the process's standard streams goes.
pub(crate) struct Stdios {
    pub(crate) stdin: Stdio,
    pub(crate) stdout: Stdio,
    pub(crate) stderr: Stdio,
}

/// A started process and the process group it leads.
pub(crate) struct Process {
    pub(crate) child: Child,
    pub(crate) pgid: i32,
}

impl ContainerContext {
    /// Starts `argv` in this container's mount namespace and environment. The process group is
    /// registered with the node, which kills it when the node stops.
    pub(crate) fn spawn(&self, node: &NodeContext, argv: &[String], stdios: Stdios) -> anyhow::Result<Process> {
        let (program, args) = argv.split_first().context("the command is empty")?;
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdin(stdios.stdin)
            .stdout(stdios.stdout)
            .stderr(stdios.stderr)
            .process_group(0);
        let entry = self.prepare_entry()?;
        // SAFETY: `enter` runs in the forked child before exec. It only makes system calls
        // (prctl, unshare, mount, chdir, setgid, setuid) with arguments prepared before the fork, and
        // does not allocate or take locks.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || entry.enter());
        }
        let child = command.spawn().with_context(|| format!("starting {program:?}"))?;
        let pid = child.id().context("the process exited before its id was read")?;
        let pgid = i32::try_from(pid).context("process id out of range")?;
        lock(&node.process_groups).insert(pgid);
        Ok(Process { child, pgid })
    }

    /// Creates the mount points and converts every path to a C string before the fork.
    fn prepare_entry(&self) -> anyhow::Result<NamespaceEntry> {
        let mut mounts = Vec::with_capacity(self.mounts.len());
        // Parents before children, so that a volume mounted inside another lands on top of it.
        let mut ordered: Vec<&BindMount> = self.mounts.iter().collect();
        ordered.sort_by_key(|mount| mount.target.components().count());
        for (index, bind) in ordered.iter().enumerate() {
            create_mount_point(&bind.source, &host_path_of(&bind.target, &ordered[..index]))?;
            mounts.push((c_path(&bind.source)?, c_path(&bind.target)?, bind.read_only));
        }
        let working_dir = match &self.working_dir {
            Some(dir) => {
                std::fs::create_dir_all(host_path_of(dir, &ordered))
                    .with_context(|| format!("creating working directory {}", dir.display()))?;
                Some(c_path(dir)?)
            }
            None => None,
        };
        Ok(NamespaceEntry {
            mounts,
            working_dir,
            uid: self.run_as_user,
            gid: self.run_as_group,
        })
    }
}

/// The part of the container setup that must happen in the child, between fork and exec.
struct NamespaceEntry {
    mounts: Vec<(CString, CString, bool)>,
    working_dir: Option<CString>,
    uid: Option<u32>,
    gid: Option<u32>,
}

impl NamespaceEntry {
    fn enter(&self) -> std::io::Result<()> {
        let none: Option<&'static [u8]> = None;
        unshare(CloneFlags::CLONE_NEWNS)?;
        // Without this, our bind mounts would propagate back into the host's namespace.
        mount(none, c"/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
        for (source, target, read_only) in &self.mounts {
            mount(
                Some(source.as_c_str()),
                target.as_c_str(),
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            )?;
            if *read_only {
                let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                mount(none, target.as_c_str(), none, flags, none)?;
            }
        }
        if let Some(dir) = &self.working_dir {
            nix::unistd::chdir(dir.as_c_str())?;
        }
        if let Some(gid) = self.gid.or(self.uid) {
            nix::unistd::setgroups(&[])?;
            nix::unistd::setgid(Gid::from_raw(gid))?;
        }
        if let Some(uid) = self.uid {
            nix::unistd::setuid(Uid::from_raw(uid))?;
        }
        // If the node's process dies without stopping its Pods, their processes die too (the
        // spawning thread is a runtime worker, which lives as long as the node's runtime).
        // Set last: changing credentials clears it.
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
        Ok(())
    }
}

/// Where `target` lives on the host before our mounts: inside an earlier mount's source if it is
/// below that mount's target, so that nested mount points are created in the outer volume.
fn host_path_of(target: &Path, earlier: &[&BindMount]) -> PathBuf {
    for bind in earlier.iter().rev() {
        if let Ok(rest) = target.strip_prefix(&bind.target) {
            return bind.source.join(rest);
        }
    }
    target.to_owned()
}

/// A bind mount needs a target of the same kind as its source: a directory or a file.
fn create_mount_point(source: &Path, target: &Path) -> anyhow::Result<()> {
    let is_dir = source.is_dir();
    if target.exists() {
        return Ok(());
    }
    let context = || format!("creating mount point {}", target.display());
    if is_dir {
        std::fs::create_dir_all(target).with_context(context)?;
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(context)?;
        }
        std::fs::File::create(target).with_context(context)?;
    }
    Ok(())
}

fn c_path(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).with_context(|| format!("path {} contains a NUL byte", path.display()))
}

impl Process {
    /// Stops the process group: SIGTERM, then SIGKILL once `grace` has passed. Returns the exit
    /// status of the group leader.
    pub(crate) async fn terminate(
        &mut self,
        node: &NodeContext,
        grace: Duration,
    ) -> std::io::Result<std::process::ExitStatus> {
        signal_group(self.pgid, Signal::SIGTERM);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status,
            Err(_elapsed) => {
                signal_group(self.pgid, Signal::SIGKILL);
                self.child.wait().await
            }
        };
        self.reap_group(node);
        status
    }

    /// Kills whatever the leader left running in its group (a container's processes die with
    /// it), and forgets the group.
    pub(crate) fn reap_group(&self, node: &NodeContext) {
        signal_group(self.pgid, Signal::SIGKILL);
        lock(&node.process_groups).remove(&self.pgid);
    }
}

fn signal_group(pgid: i32, signal: Signal) {
    // ESRCH (the group is already gone) is the expected failure; nothing else can be done.
    let _ = killpg(Pid::from_raw(pgid), signal);
}

/// The exit code a shell would report: the code, or 128 + the signal number.
pub(crate) fn exit_code(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
