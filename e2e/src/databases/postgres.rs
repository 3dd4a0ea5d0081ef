//! A throwaway PostgreSQL server (Debian's `postgresql`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{
    SAMPLE_TABLE, ServerHome, password_for, quote_identifier, require_binary, run_client, run_logged,
    wait_until_accepting,
};
use crate::process::{ManagedChild, free_port};

const INSTALL_HINT: &str = "apt-get install postgresql postgresql-client";
/// Debian installs each major version's binaries here, e.g. `/usr/lib/postgresql/15/bin`.
const VERSIONS_DIR: &str = "/usr/lib/postgresql";
const HOST: &str = "127.0.0.1";
const SUPERUSER: &str = "postgres";
const USER: &str = "stowage";
const DATABASE: &str = "stowage";

/// A running PostgreSQL on `127.0.0.1:<port>` with password (SCRAM) authentication for every
/// connection. It has a superuser `postgres` (used only to set it up) and the account the tests
/// use: user [`user()`](Self::user), a normal role with `CREATEDB` that owns the database
/// [`database()`](Self::database). Stopped (fast shutdown) and its directory removed on drop.
#[derive(Debug)]
pub struct PostgresServer {
    // Field order is drop order: the server stops before its directory is removed.
    process: ManagedChild,
    client: Psql,
    home: ServerHome,
}

impl PostgresServer {
    /// Initialises a cluster in a new temporary directory, starts it on a free loopback port,
    /// creates the user and its database, and returns once that user can connect.
    pub fn start() -> anyhow::Result<Self> {
        let bin_dir = newest_bin_dir()?;
        for tool in ["initdb", "postgres", "psql"] {
            require_binary(&bin_dir.join(tool), INSTALL_HINT)?;
        }
        let home = ServerHome::create("stowage-postgres-", "postgres", "postgresql-common")?;
        let log = home.path().join("postgres.log");
        let port = free_port()?;
        let password = password_for("pg", port);
        let superuser_password = format!("{password}su");

        // initdb reads the superuser's password from a file; it runs as the server's account,
        // which can read this root-owned file in the world-readable top directory.
        let password_file = home.path().join("superuser-password");
        std::fs::write(&password_file, &superuser_password)?;
        let mut initdb = home.server_command(&bin_dir.join("initdb"));
        initdb
            .arg("--pgdata")
            .arg(home.data_dir())
            .args([
                "--username",
                SUPERUSER,
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .args(["--no-sync", "--no-instructions"])
            .arg("--pwfile")
            .arg(&password_file);
        run_logged("initdb", initdb, &log)?;
        std::fs::remove_file(&password_file)?;

        let mut postgres = home.server_command(&bin_dir.join("postgres"));
        postgres
            .arg("-D")
            .arg(home.data_dir())
            .arg("-p")
            .arg(port.to_string())
            .arg("-c")
            .arg(format!("listen_addresses={HOST}"))
            .arg("-c")
            .arg(format!("unix_socket_directories={}", home.run_dir().display()))
            // A test server's data is thrown away: durability only costs time.
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        let mut process = ManagedChild::spawn("postgres", postgres, &log)?;

        let superuser = Psql {
            bin_dir: bin_dir.clone(),
            port,
            user: SUPERUSER.to_string(),
            password: superuser_password,
        };
        wait_until_accepting(&mut process, || superuser.run("postgres", "SELECT 1").map(drop))?;
        superuser
            .run(
                "postgres",
                &format!("CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{password}'"),
            )
            .context("creating the test user")?;
        superuser
            .run("postgres", &format!("CREATE DATABASE {DATABASE} OWNER {USER}"))
            .context("creating the test database")?;
        let client = Psql {
            bin_dir,
            port,
            user: USER.to_string(),
            password,
        };
        Ok(Self { process, client, home })
    }

    /// `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    pub fn port(&self) -> u16 {
        self.client.port
    }

    /// The test user (`stowage`): owns [`database()`](Self::database), may create databases.
    pub fn user(&self) -> &str {
        &self.client.user
    }

    pub fn password(&self) -> &str {
        &self.client.password
    }

    /// The user's database (`stowage`).
    pub fn database(&self) -> &str {
        DATABASE
    }

    /// What libpq-based tools (`psql`, `pg_dump`, `pg_restore`, `createdb`) need to reach the
    /// user's database with no arguments: `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`,
    /// `PGDATABASE`. Another database: override `PGDATABASE` or pass `-d`.
    pub fn env(&self) -> Vec<(String, String)> {
        self.client.env(DATABASE)
    }

    /// Runs `sql` (one or more statements) with `psql` as the user in the user's database and
    /// returns what it printed: unaligned, tuples only (`-At`), so `SELECT count(*) FROM t`
    /// gives `"5000"` and rows come one per line with `|` between columns. Stops at the first
    /// error and fails with psql's message.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        self.client.run(DATABASE, sql)
    }

    /// [`psql`](Self::psql) in another database.
    pub fn psql_in(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        self.client.run(database, sql)
    }

    /// Creates an empty database owned by the user, e.g. a restore target.
    pub fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let sql = format!("CREATE DATABASE {}", quote_identifier(name, '"'));
        self.client.run(DATABASE, &sql).map(drop)
    }

    /// Creates [`SAMPLE_TABLE`](super::SAMPLE_TABLE) in `database` with `rows` rows (ids 1 to
    /// `rows`) whose text has quotes, a newline, a backslash and non-ASCII letters, and binary
    /// bytes, so a dump that mangles any of them changes [`checksum`](Self::checksum).
    pub fn fill_table(&self, database: &str, rows: u32) -> anyhow::Result<()> {
        let sql = format!(
            "CREATE TABLE {SAMPLE_TABLE} (id bigint PRIMARY KEY, label text NOT NULL, \
               amount numeric(12,2) NOT NULL, payload bytea NOT NULL); \
             INSERT INTO {SAMPLE_TABLE} \
               SELECT i, 'row ' || i || E' it''s a \"test\"\\n\\\\ Grüße ✓', i * 1.25, \
                      decode(md5(i::text), 'hex') \
               FROM generate_series(1, {rows}) AS i;"
        );
        self.client.run(database, &sql).map(drop)
    }

    /// `"<rows>:<md5>"` of [`SAMPLE_TABLE`](super::SAMPLE_TABLE) in `database`: the row count
    /// and the MD5 of every row's text form in id order. Equal after a faithful restore.
    pub fn checksum(&self, database: &str) -> anyhow::Result<String> {
        let sql = format!(
            "SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, E'\\n' ORDER BY id), '')) \
             FROM {SAMPLE_TABLE} AS t"
        );
        self.client.run(database, &sql)
    }

    /// The directory holding the data, the socket and the log.
    pub fn dir(&self) -> &Path {
        self.home.path()
    }

    /// initdb's and the server's output.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The postmaster's process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// This server's `bin` directory, e.g. `/usr/lib/postgresql/15/bin` (pg_dump, pg_restore…).
    pub fn bin_dir(&self) -> &Path {
        &self.client.bin_dir
    }

    /// Stops the server now (fast shutdown: sessions are cut); later connections are refused.
    pub fn stop(&mut self) {
        let pid = self.process.pid();
        if pid != 0 {
            // SIGINT is PostgreSQL's fast shutdown; ManagedChild's SIGTERM would be a smart
            // shutdown, which waits for every client to leave.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
        }
        self.process.stop();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How to run psql as one user of one server.
#[derive(Debug)]
struct Psql {
    bin_dir: PathBuf,
    port: u16,
    user: String,
    password: String,
}

impl Psql {
    fn env(&self, database: &str) -> Vec<(String, String)> {
        [
            ("PGHOST", HOST.to_string()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGPASSWORD", self.password.clone()),
            ("PGDATABASE", database.to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
    }

    fn run(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let mut command = Command::new(self.bin_dir.join("psql"));
        command
            .envs(self.env(database))
            // -X: no ~/.psqlrc; -q -At: just the values.
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        run_client(&mut command).with_context(|| format!("psql as {} in {database}", self.user))
    }
}

/// The `bin` directory of the newest PostgreSQL major version installed.
fn newest_bin_dir() -> anyhow::Result<PathBuf> {
    let entries = std::fs::read_dir(VERSIONS_DIR)
        .with_context(|| format!("PostgreSQL not found ({VERSIONS_DIR} is missing): {INSTALL_HINT}"))?;
    let mut versions: Vec<(u32, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(major) = name.to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("postgres").is_file() {
            versions.push((major, bin));
        }
    }
    versions
        .into_iter()
        .max()
        .map(|(_, bin)| bin)
        .with_context(|| format!("postgres not found under {VERSIONS_DIR}/*/bin: {INSTALL_HINT}"))
}
