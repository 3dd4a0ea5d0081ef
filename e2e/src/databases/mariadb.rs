//! A throwaway MariaDB server (Debian's `mariadb-server`).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use super::{
    SAMPLE_TABLE, ServerHome, password_for, quote_identifier, require_binary, run_client, run_logged,
    wait_until_accepting,
};
use crate::process::{ManagedChild, free_port};

const SERVER: &str = "/usr/sbin/mariadbd";
const INSTALL_DB: &str = "/usr/bin/mariadb-install-db";
const SERVER_HINT: &str = "apt-get install mariadb-server";
const CLIENT: &str = "/usr/bin/mariadb";
const CLIENT_HINT: &str = "apt-get install mariadb-client";
const HOST: &str = "127.0.0.1";
const USER: &str = "stowage";
const DATABASE: &str = "stowage";

/// Server options shared by mariadb-install-db and mariadbd. `--no-defaults` (which must come
/// first) keeps Debian's /etc/mysql configuration out; the rest trades durability, which a
/// test server does not need, for speed and a small footprint.
const SERVER_OPTIONS: &[&str] = &[
    "--no-defaults",
    "--skip-name-resolve",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=16M",
    "--innodb-flush-log-at-trx-commit=0",
    "--skip-innodb-doublewrite",
];

/// A running MariaDB on `127.0.0.1:<port>` (and a unix socket in its directory). `root` may
/// only connect through the socket with its password; the account the tests use is user
/// [`user()`](Self::user) from any host with a password, with every privilege on every
/// database (so it can create restore targets) but no GRANT OPTION. Its database is
/// [`database()`](Self::database). Stopped and its directory removed on drop.
#[derive(Debug)]
pub struct MariaDbServer {
    // Field order is drop order: the server stops before its directory is removed.
    process: ManagedChild,
    port: u16,
    password: String,
    home: ServerHome,
}

impl MariaDbServer {
    /// Creates the system tables in a new temporary directory, starts the server on a free
    /// loopback port, creates the user and its database, and returns once that user can connect.
    pub fn start() -> anyhow::Result<Self> {
        require_binary(Path::new(SERVER), SERVER_HINT)?;
        require_binary(Path::new(INSTALL_DB), SERVER_HINT)?;
        require_binary(Path::new(CLIENT), CLIENT_HINT)?;
        let home = ServerHome::create("stowage-mariadb-", "mysql", "mariadb-server")?;
        let log = home.path().join("mariadb.log");
        let socket = home.run_dir().join("mariadbd.sock");

        // `normal` root authentication: root@localhost with an empty password (set below),
        // rather than unix_socket authentication, which works only for the OS user root.
        let mut install = home.server_command(Path::new(INSTALL_DB));
        install
            .args(SERVER_OPTIONS)
            .arg(format!("--datadir={}", home.data_dir().display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        run_logged("mariadb-install-db", install, &log)?;

        let port = free_port()?;
        let password = password_for("mdb", port);
        let mut mariadbd = home.server_command(Path::new(SERVER));
        mariadbd
            .args(SERVER_OPTIONS)
            .arg(format!("--datadir={}", home.data_dir().display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", home.run_dir().join("mariadbd.pid").display()))
            .arg(format!("--tmpdir={}", home.run_dir().display()))
            .arg(format!("--bind-address={HOST}"))
            .arg(format!("--port={port}"));
        // Without --log-error, mariadbd writes its log to stderr, which ManagedChild appends to
        // the same file as mariadb-install-db's output.
        let mut process = ManagedChild::spawn("mariadbd", mariadbd, &log)?;

        let root = |sql: &str| {
            let mut command = Command::new(CLIENT);
            command
                .arg("--no-defaults")
                .arg(format!("--socket={}", socket.display()))
                .args(["--user=root", "--batch", "--skip-column-names", "--execute", sql]);
            run_client(&mut command).context("mariadb as root over the socket")
        };
        wait_until_accepting(&mut process, || root("SELECT 1").map(drop))?;
        // mariadb-install-db also made root@127.0.0.1, root@::1 and root@<hostname>, all with
        // empty passwords: only root@localhost (the socket) stays.
        let other_roots = root("SELECT Host FROM mysql.user WHERE User = 'root' AND Host <> 'localhost'")?;
        let mut setup: Vec<String> = other_roots
            .lines()
            .map(|host| format!("DROP USER 'root'@'{}';", host.replace('\'', "''")))
            .collect();
        setup.push(format!("ALTER USER 'root'@'localhost' IDENTIFIED BY '{password}root';"));
        setup.push(format!("CREATE USER '{USER}'@'%' IDENTIFIED BY '{password}';"));
        setup.push(format!("GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%';"));
        setup.push(format!("CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4;"));
        root(&setup.join(" ")).context("creating the test user and database")?;

        let server = Self {
            process,
            port,
            password,
            home,
        };
        server.write_client_config()?;
        server.mysql("SELECT 1").context("connecting as the test user")?;
        Ok(server)
    }

    /// `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The test user (`stowage`).
    pub fn user(&self) -> &str {
        USER
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The user's database (`stowage`).
    pub fn database(&self) -> &str {
        DATABASE
    }

    /// The environment for the stock clients (`mariadb`/`mysql`, `mariadb-dump`/`mysqldump`,
    /// `mysqlimport`…):
    /// - `MYSQL_HOME`: a directory whose `my.cnf` has a `[client]` group with host, port, user
    ///   and password, so `mysqldump stowage` and `mysql stowage < dump.sql` need nothing else;
    /// - `MYSQL_HOST`, `MYSQL_TCP_PORT`, `MYSQL_PWD`: read by the clients themselves (only
    ///   `mariadb` reads `MYSQL_HOST`; `MYSQL_PWD` is the password for all of them);
    /// - `MYSQL_USER`, `MYSQL_DATABASE`: read by no client (the user otherwise defaults to the
    ///   login name), for commands that spell the rest out:
    ///   `mysqldump -h "$MYSQL_HOST" -P "$MYSQL_TCP_PORT" -u "$MYSQL_USER" "$MYSQL_DATABASE"`.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("MYSQL_HOME", self.client_config_dir().display().to_string()),
            ("MYSQL_HOST", HOST.to_string()),
            ("MYSQL_TCP_PORT", self.port.to_string()),
            ("MYSQL_PWD", self.password.clone()),
            ("MYSQL_USER", USER.to_string()),
            ("MYSQL_DATABASE", DATABASE.to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
    }

    /// Runs `sql` (one or more statements) with the `mariadb` client as the user in the user's
    /// database and returns what it printed in batch mode without column names: one row per
    /// line, tabs between columns, newlines inside values written as `\n`. Fails with the
    /// client's message at the first error.
    pub fn mysql(&self, sql: &str) -> anyhow::Result<String> {
        self.mysql_in(DATABASE, sql)
    }

    /// [`mysql`](Self::mysql) in another database.
    pub fn mysql_in(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let mut command = Command::new(CLIENT);
        command
            .arg("--no-defaults")
            .arg(format!("--host={HOST}"))
            .arg(format!("--port={}", self.port))
            .arg(format!("--user={USER}"))
            .arg(format!("--database={database}"))
            // Not the locale's charset, which may be latin1 and would double-encode UTF-8.
            .arg("--default-character-set=utf8mb4")
            .args(["--batch", "--skip-column-names", "--execute", sql])
            .env("MYSQL_PWD", &self.password);
        run_client(&mut command).with_context(|| format!("mariadb as {USER} in {database}"))
    }

    /// Creates an empty utf8mb4 database, e.g. a restore target.
    pub fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let sql = format!("CREATE DATABASE {} CHARACTER SET utf8mb4", quote_identifier(name, '`'));
        self.mysql(&sql).map(drop)
    }

    /// Creates [`SAMPLE_TABLE`](super::SAMPLE_TABLE) in `database` with `rows` rows (ids 1 to
    /// `rows`) whose text has quotes, a newline, a backslash and non-ASCII letters, and binary
    /// bytes, so a dump that mangles any of them changes [`checksum`](Self::checksum).
    pub fn fill_table(&self, database: &str, rows: u32) -> anyhow::Result<()> {
        let sql = format!(
            "CREATE TABLE {SAMPLE_TABLE} (id BIGINT PRIMARY KEY, label VARCHAR(100) NOT NULL, \
               amount DECIMAL(12,2) NOT NULL, payload VARBINARY(16) NOT NULL) \
               ENGINE=InnoDB DEFAULT CHARSET=utf8mb4; \
             SET SESSION max_recursive_iterations = {rows}; \
             INSERT INTO {SAMPLE_TABLE} \
               WITH RECURSIVE seq (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {rows}) \
               SELECT i, CONCAT('row ', i, ' it''s a \"test\"\\n\\\\ Grüße ✓'), i * 1.25, UNHEX(MD5(i)) \
               FROM seq;"
        );
        self.mysql_in(database, &sql).map(drop)
    }

    /// `"<rows>:<md5>"` of [`SAMPLE_TABLE`](super::SAMPLE_TABLE) in `database`: the row count
    /// and the MD5 of every row's columns in id order. Equal after a faithful restore.
    pub fn checksum(&self, database: &str) -> anyhow::Result<String> {
        let sql = format!(
            "SET SESSION group_concat_max_len = 1073741824; \
             SELECT CONCAT(COUNT(*), ':', MD5(COALESCE(GROUP_CONCAT( \
               CONCAT_WS('|', id, label, amount, HEX(payload)) ORDER BY id SEPARATOR '\\n'), ''))) \
             FROM {SAMPLE_TABLE}"
        );
        self.mysql_in(database, &sql)
    }

    /// The directory holding the data, the socket, the client configuration and the log.
    pub fn dir(&self) -> &Path {
        self.home.path()
    }

    /// mariadb-install-db's and the server's output.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The server's process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops the server now (a normal shutdown); later connections are refused.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    fn client_config_dir(&self) -> PathBuf {
        self.home.path().join("client")
    }

    /// Writes `client/my.cnf`, readable by every user (a container may run as any user); the
    /// clients ignore it only if it is world-writable.
    fn write_client_config(&self) -> anyhow::Result<()> {
        let dir = self.client_config_dir();
        std::fs::create_dir(&dir)?;
        let path = dir.join("my.cnf");
        let config = format!(
            "[client]\nhost={HOST}\nport={}\nuser={USER}\npassword={}\n",
            self.port, self.password
        );
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        Ok(())
    }
}
