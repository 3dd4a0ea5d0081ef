//! The database fixtures: real PostgreSQL and MariaDB servers accept their user with its
//! password, hold a table, and survive a round trip through their stock dump tools driven only
//! by the environment the fixtures hand out; several run at once; they go away when dropped.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context as _;
use stowage_e2e::databases::{MariaDbServer, PostgresServer, SAMPLE_TABLE};

const ROWS: u32 = 5000;

/// Runs `command` with `stdin` fed in and returns its standard output; fails with its stderr.
fn pipe(command: &mut Command, stdin: &[u8]) -> anyhow::Result<Vec<u8>> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let mut input = child.stdin.take().context("stdin")?;
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&stdin));
    let output = child.wait_with_output()?;
    writer.join().map_err(|_| anyhow::anyhow!("stdin writer panicked"))??;
    anyhow::ensure!(
        output.status.success(),
        "{program} exited with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout)
}

/// The server process's real user id, from /proc.
fn process_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading the server's /proc status");
    let line = status
        .lines()
        .find(|line| line.starts_with("Uid:"))
        .expect("a Uid line");
    line.split_whitespace()
        .nth(1)
        .and_then(|uid| uid.parse().ok())
        .expect("a uid")
}

fn assert_gone(port: u16, dir: &Path) {
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepts connections after drop"
    );
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}

#[test]
fn postgres_round_trip_through_pg_dump() {
    let server = PostgresServer::start().expect("starting PostgreSQL");
    if nix::unistd::Uid::effective().is_root() {
        assert_ne!(process_uid(server.pid()), 0, "postgres runs as root");
    }
    server.fill_table(server.database(), ROWS).expect("filling the table");
    let count = server
        .psql(&format!("SELECT count(*) FROM {SAMPLE_TABLE}"))
        .expect("counting");
    assert_eq!(count, ROWS.to_string());
    let original = server.checksum(server.database()).expect("checksum of the original");
    assert!(original.starts_with(&format!("{ROWS}:")), "{original}");

    // The stock tools from PATH, configured by nothing but the fixture's environment.
    let dump = pipe(
        Command::new("pg_dump")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(server.env()),
        b"",
    )
    .expect("pg_dump");
    assert!(String::from_utf8_lossy(&dump).contains(&format!("CREATE TABLE public.{SAMPLE_TABLE}")));
    server.create_database("restored").expect("creating the restore target");
    pipe(
        Command::new("psql")
            .envs(server.env())
            .env("PGDATABASE", "restored")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]),
        &dump,
    )
    .expect("restoring with psql");
    assert_eq!(server.checksum("restored").expect("checksum of the copy"), original);

    // Tampering shows: the checksum covers every row's content.
    server
        .psql_in(
            "restored",
            &format!("UPDATE {SAMPLE_TABLE} SET label = label || '.' WHERE id = 4321"),
        )
        .expect("changing one row");
    assert_ne!(
        server.checksum("restored").expect("checksum after the change"),
        original
    );
}

#[test]
fn postgres_refuses_wrong_passwords_and_servers_run_side_by_side() {
    let first = PostgresServer::start().expect("starting the first PostgreSQL");
    let second = PostgresServer::start().expect("starting the second PostgreSQL");
    assert_ne!(first.port(), second.port());
    assert_ne!(first.password(), second.password());
    first.fill_table(first.database(), 10).expect("filling the first");
    let missing = second
        .psql(&format!("SELECT count(*) FROM {SAMPLE_TABLE}"))
        .expect_err("the table exists only on the first server");
    assert!(format!("{missing:#}").contains("does not exist"), "{missing:#}");

    let refused = pipe(
        Command::new("psql")
            .envs(second.env())
            .env("PGPASSWORD", first.password())
            .args(["-X", "-c", "SELECT 1"]),
        b"",
    )
    .expect_err("the first server's password must not open the second");
    assert!(
        format!("{refused:#}").contains("password authentication failed"),
        "{refused:#}"
    );

    let (port, dir) = (first.port(), first.dir().to_path_buf());
    drop(first);
    assert_gone(port, &dir);
    assert_eq!(second.psql("SELECT 1").expect("the second server still runs"), "1");
}

#[test]
fn mariadb_round_trip_through_mysqldump() {
    let server = MariaDbServer::start().expect("starting MariaDB");
    if nix::unistd::Uid::effective().is_root() {
        assert_ne!(process_uid(server.pid()), 0, "mariadbd runs as root");
    }
    server.fill_table(server.database(), ROWS).expect("filling the table");
    let count = server
        .mysql(&format!("SELECT COUNT(*) FROM {SAMPLE_TABLE}"))
        .expect("counting");
    assert_eq!(count, ROWS.to_string());
    let original = server.checksum(server.database()).expect("checksum of the original");
    assert!(original.starts_with(&format!("{ROWS}:")), "{original}");
    let label = server
        .mysql(&format!("SELECT HEX(label) FROM {SAMPLE_TABLE} WHERE id = 7"))
        .expect("reading a label");
    assert_eq!(
        label,
        hex_upper("row 7 it's a \"test\"\n\\ Grüße ✓"),
        "stored as UTF-8, unmangled"
    );

    // Dump the way an exec backup's command would spell it out from the variables…
    let dump = pipe(
        Command::new("sh").envs(server.env()).env_remove("MYSQL_HOME").args([
            "-c",
            r#"exec mysqldump --single-transaction -h "$MYSQL_HOST" -P "$MYSQL_TCP_PORT" -u "$MYSQL_USER" "$MYSQL_DATABASE""#,
        ]),
        b"",
    )
    .expect("mysqldump");
    assert!(String::from_utf8_lossy(&dump).contains(&format!("CREATE TABLE `{SAMPLE_TABLE}`")));
    // …and restore with no arguments but the database, through MYSQL_HOME's my.cnf.
    server.create_database("restored").expect("creating the restore target");
    pipe(Command::new("mysql").envs(server.env()).arg("restored"), &dump).expect("restoring with mysql");
    assert_eq!(server.checksum("restored").expect("checksum of the copy"), original);

    server
        .mysql_in(
            "restored",
            &format!("UPDATE {SAMPLE_TABLE} SET amount = amount + 1 WHERE id = 4321"),
        )
        .expect("changing one row");
    assert_ne!(
        server.checksum("restored").expect("checksum after the change"),
        original
    );
}

#[test]
fn mariadb_refuses_wrong_passwords_and_servers_run_side_by_side() {
    let first = MariaDbServer::start().expect("starting the first MariaDB");
    let second = MariaDbServer::start().expect("starting the second MariaDB");
    assert_ne!(first.port(), second.port());
    assert_ne!(first.password(), second.password());
    first.fill_table(first.database(), 10).expect("filling the first");
    let missing = second
        .mysql(&format!("SELECT COUNT(*) FROM {SAMPLE_TABLE}"))
        .expect_err("the table exists only on the first server");
    assert!(format!("{missing:#}").contains("doesn't exist"), "{missing:#}");

    let refused = pipe(
        Command::new("mysql")
            .envs(second.env())
            .env_remove("MYSQL_HOME")
            .env("MYSQL_PWD", first.password())
            .args(["-u", second.user(), "-h", second.host(), "-e", "SELECT 1"]),
        b"",
    )
    .expect_err("the first server's password must not open the second");
    assert!(format!("{refused:#}").contains("Access denied"), "{refused:#}");
    // root has a password and is not reachable over TCP at all.
    let root = pipe(
        Command::new("mysql")
            .envs(second.env())
            .env_remove("MYSQL_HOME")
            .env_remove("MYSQL_PWD")
            .args(["-u", "root", "-h", second.host(), "-e", "SELECT 1"]),
        b"",
    )
    .expect_err("root over TCP without a password must be refused");
    assert!(format!("{root:#}").contains("Access denied"), "{root:#}");

    let (port, dir) = (first.port(), first.dir().to_path_buf());
    drop(first);
    assert_gone(port, &dir);
    assert_eq!(second.mysql("SELECT 1").expect("the second server still runs"), "1");
}

fn hex_upper(text: &str) -> String {
    text.bytes().map(|byte| format!("{byte:02X}")).collect()
}
