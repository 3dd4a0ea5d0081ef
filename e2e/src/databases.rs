//! Throwaway database servers for the exec backup tests: a real PostgreSQL and a real MariaDB
//! from Debian's packages, each initialised in its own temporary directory, listening on a free
//! loopback port with password authentication, and stopped (directory removed) when dropped.
//! Any number of them can run at once, in one test process or in parallel ones.
//!
//! Both servers refuse to run as root, and the tests run as root here and in CI, so a server
//! started by root runs as the system account its Debian package created (`postgres`, `mysql`);
//! started by anyone else, it runs as that user.
//!
//! Every call blocks (it runs the server or its command-line client); from async code they are
//! quick enough (a start takes a few seconds) not to need `spawn_blocking`.
//!
//! Directory layout, the same for both: `<dir>/data` (the server's, mode 0700), `<dir>/run`
//! (its unix socket), `<dir>/<name>.log` (initialisation and server output), and for MariaDB
//! `<dir>/client/my.cnf`. The top directory is world-readable so that a client running as any
//! user (a container with `runAsUser`) can read the client configuration.

mod mariadb;
mod postgres;

use std::fs::{File, Permissions};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::unistd::{Uid, User, chown};
use tempfile::TempDir;

pub use mariadb::MariaDbServer;
pub use postgres::PostgresServer;

use crate::process::{ManagedChild, log_tail};

/// How long a server may take to accept its first connection. Generous: two cores are shared
/// by every test running in parallel.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// The name of the table [`PostgresServer::fill_table`] and [`MariaDbServer::fill_table`] create.
pub const SAMPLE_TABLE: &str = "stowage_sample";

/// Where a server lives on disk, and the account it runs as.
#[derive(Debug)]
struct ServerHome {
    dir: TempDir,
    /// `None` when this process is not root: the server then runs as this process's user.
    account: Option<User>,
}

impl ServerHome {
    /// Creates the directory tree; `data` and `run` belong to `account_name` when we are root.
    fn create(prefix: &str, account_name: &str, package: &str) -> anyhow::Result<Self> {
        let account = if Uid::effective().is_root() {
            let user = User::from_name(account_name)
                .with_context(|| format!("looking up the system user {account_name}"))?
                .with_context(|| {
                    format!(
                        "the system user {account_name} does not exist; Debian's {package} package creates it: \
                         apt-get install --reinstall {package}"
                    )
                })?;
            Some(user)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .with_context(|| format!("creating a temporary directory for {prefix}"))?;
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o755))?;
        let home = Self { dir, account };
        for owned in [home.data_dir(), home.run_dir()] {
            std::fs::create_dir(&owned).with_context(|| format!("creating {}", owned.display()))?;
            std::fs::set_permissions(&owned, Permissions::from_mode(0o700))?;
            if let Some(user) = &home.account {
                chown(&owned, Some(user.uid), Some(user.gid))
                    .with_context(|| format!("giving {} to {}", owned.display(), user.name))?;
            }
        }
        Ok(home)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    fn run_dir(&self) -> PathBuf {
        self.path().join("run")
    }

    /// A command for the server's own binaries: runs as the server's account, in its directory.
    fn server_command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command.current_dir(self.path());
        if let Some(user) = &self.account {
            // std drops supplementary groups, then sets the group and user in the child before
            // exec, and before ManagedChild's pre_exec sets the parent-death signal (which a
            // later credential change would clear).
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        command
    }
}

/// Fails with an installation hint when `path` is missing.
fn require_binary(path: &Path, install_hint: &str) -> anyhow::Result<()> {
    anyhow::ensure!(path.is_file(), "{} not found: {install_hint}", path.display());
    Ok(())
}

/// Runs an initialisation step (initdb, mariadb-install-db) to completion with its output
/// appended to `log`; a failure carries the end of the log.
fn run_logged(step: &str, mut command: Command, log: &Path) -> anyhow::Result<()> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let status = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("starting {step} ({})", command.get_program().to_string_lossy()))?;
    anyhow::ensure!(
        status.success(),
        "{step} exited with {status}; the end of its log {}:\n{}",
        log.display(),
        log_tail(log, 30)
    );
    Ok(())
}

/// Runs a command-line client and returns its standard output without the final newline;
/// a failure carries its standard error.
fn run_client(command: &mut Command) -> anyhow::Result<String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {program}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{program} exited with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let mut stdout = String::from_utf8(output.stdout).with_context(|| format!("{program} printed non-UTF-8"))?;
    if stdout.ends_with('\n') {
        stdout.pop();
    }
    Ok(stdout)
}

/// Polls `probe` until it succeeds; fails early if the server exits, and after
/// [`STARTUP_TIMEOUT`] with the probe's last error and the end of the server's log.
fn wait_until_accepting(
    server: &mut ManagedChild,
    mut probe: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let last_error = match probe() {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        server.check_running()?;
        if Instant::now() >= deadline {
            anyhow::bail!(
                "{} did not accept connections within {STARTUP_TIMEOUT:?} (last attempt: {last_error:#}); \
                 the end of its log {}:\n{}",
                server.name(),
                server.log_path().display(),
                log_tail(server.log_path(), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A password unique to one server, so a client cannot reach the wrong one by accident. Plain
/// letters and digits: it goes into SQL literals, option files and shell commands unquoted.
fn password_for(kind: &str, port: u16) -> String {
    format!("{kind}{port}x{}", std::process::id())
}

/// A quoted SQL identifier (`"name"` in PostgreSQL, `` `name` `` in MariaDB).
fn quote_identifier(name: &str, quote: char) -> String {
    let doubled = name.replace(quote, &format!("{quote}{quote}"));
    format!("{quote}{doubled}{quote}")
}
