//! Child processes of the test bed (etcd, kube-apiserver, …) that cannot outlive their owner.
//!
//! Each child gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with its owner even when the owner is
//! killed. The kernel ties that signal to the *thread* that forked the child, not the process:
//! a child forked from a tokio worker or a test thread would die when that thread exits. So
//! every child is forked from one spawner thread that lives as long as the process.

use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A child process killed (SIGTERM, then SIGKILL) when dropped, unless detached.
#[derive(Debug)]
pub struct ManagedChild {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl ManagedChild {
    /// Starts `command` with stdout and stderr appended to `log_path`; the child is killed when
    /// this process dies.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> anyhow::Result<Self> {
        output_to_log(&mut command, log_path)?;
        #[allow(unsafe_code)]
        // SAFETY: the closure runs between fork and exec and only makes the prctl system call,
        // which is async-signal-safe; it allocates nothing and takes no locks.
        unsafe {
            command.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from));
        }
        let program = command.get_program().to_string_lossy().into_owned();
        let child = spawn_from_spawner_thread(command).with_context(|| format!("starting {name} ({program})"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log_path: log_path.to_path_buf(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Fails with the tail of the child's log if it has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            anyhow::bail!("{} was stopped", self.name);
        };
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "{} exited with {status}; the end of its log {}:\n{}",
                self.name,
                self.log_path.display(),
                log_tail(&self.log_path, 30)
            );
        }
        Ok(())
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL; reaps the child.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let pid = Pid::from_raw(child.id() as i32);
                let _ = kill(pid, Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(10);
                while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `command` in its own session (so a terminal's Ctrl-C does not reach it) and without
/// a parent-death signal: it outlives this process. Output goes to `log_path`.
pub fn spawn_detached(mut command: Command, log_path: &Path) -> anyhow::Result<u32> {
    output_to_log(&mut command, log_path)?;
    #[allow(unsafe_code)]
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    Ok(child.id())
}

/// Gives `command` no stdin and appends its stdout and stderr to `log_path`.
fn output_to_log(command: &mut Command, log_path: &Path) -> anyhow::Result<()> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    Ok(())
}

/// Whether a process with this pid exists (and is not a zombie we could see).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    if kill(Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    // A zombie still answers kill(0); its /proc state is 'Z'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Sends SIGTERM to `pid`, then SIGKILL after `grace`, and waits until it has gone.
pub fn terminate_pid(pid: u32, grace: Duration) -> anyhow::Result<()> {
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while pid_alive(pid) {
        if Instant::now() >= deadline {
            let _ = kill(target, Signal::SIGKILL);
            let hard_deadline = Instant::now() + Duration::from_secs(10);
            while pid_alive(pid) {
                anyhow::ensure!(Instant::now() < hard_deadline, "process {pid} survived SIGKILL");
                std::thread::sleep(Duration::from_millis(50));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until `child` accepts TCP connections on loopback `port`, failing early if it exits.
pub fn wait_for_port(child: &mut ManagedChild, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        child.check_running()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} did not listen on 127.0.0.1:{port} within {timeout:?}; see {}",
            child.name(),
            child.log_path().display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The last `lines` lines of a log file, or a note saying why there are none.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawn_from_spawner_thread(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("stowage-e2e-spawner".into())
            .spawn(move || {
                // Never returns while the process lives: the sender sits in a static.
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .map(drop)
            .unwrap_or_else(|err| eprintln!("cannot start the spawner thread: {err}"));
        requests
    });
    let (reply, result) = mpsc::channel();
    spawner
        .send((command, reply))
        .map_err(|_| io::Error::other("the spawner thread has gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("the spawner thread has gone"))?
}
