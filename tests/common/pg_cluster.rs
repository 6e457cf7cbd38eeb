//! A PostgreSQL cluster owned by one test, on a free port, that the test may
//! stop and start (the machine's shared PostgreSQL must never be stopped).
//!
//! PostgreSQL refuses to run as root, so the cluster is created and run as
//! the `postgres` user (through `su`) in a temporary directory handed over
//! to that user. Trust authentication, loopback only, the unix socket kept
//! in the temporary directory. Dropping it stops the cluster (immediate
//! mode) and removes the directory.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgCluster {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    /// Holds the data directory, socket and log; removed on drop.
    dir: tempfile::TempDir,
}

/// The newest installed PostgreSQL's binaries (/usr/lib/postgresql/<v>/bin).
fn pg_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries must be installed under /usr/lib/postgresql")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no /usr/lib/postgresql/<version>/bin/pg_ctl")
        .1
}

/// Runs `cmd` as the postgres user, panicking with its output on failure.
fn as_postgres(cmd: &str) {
    let out = Command::new("su")
        .args(["postgres", "-s", "/bin/sh", "-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("su postgres -c {cmd}: {e}"));
    assert!(
        out.status.success(),
        "su postgres -c {cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgCluster {
    /// Creates (initdb) and starts a cluster on a free port.
    pub fn start() -> Self {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("wp-pg-")
            .tempdir()
            .expect("temporary directory");
        let st = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(st.success(), "chown the cluster directory to postgres");
        let data = dir.path().join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        as_postgres(&format!(
            "{} -D {} -U postgres -A trust --no-sync -E UTF8 >/dev/null",
            bin.join("initdb").display(),
            data.display()
        ));
        // A short-lived test cluster: fsync off is safe because it is only
        // ever stopped by PostgreSQL itself (fast shutdown writes a
        // checkpoint), never by a machine crash.
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nshared_buffers = 32MB\nmax_connections = 50\n",
            dir.path().display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        let c = Self {
            port,
            bin,
            data,
            dir,
        };
        c.start_again();
        c
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// Starts the stopped cluster and waits until it accepts connections.
    pub fn start_again(&self) {
        as_postgres(&format!(
            "{} -D {} -l {} -w -t 30 start >/dev/null",
            self.bin.join("pg_ctl").display(),
            self.data.display(),
            self.log().display()
        ));
    }

    /// Starts the stopped cluster on its unix socket only: TCP clients (the
    /// server under test) still find it down while the test reads what was
    /// committed through [`PgCluster::socket_url`].
    pub fn start_socket_only(&self) {
        as_postgres(&format!(
            "{} -D {} -l {} -o \"-c listen_addresses=''\" -w -t 30 start >/dev/null",
            self.bin.join("pg_ctl").display(),
            self.data.display(),
            self.log().display()
        ));
    }

    /// URL of database `name` through the unix socket.
    pub fn socket_url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@localhost/{name}?host={}&port={}",
            self.dir.path().display(),
            self.port
        )
    }

    /// Stops the cluster the way an operator restarting it would
    /// (`pg_ctl stop -m fast`: open connections are terminated).
    pub fn stop(&self) {
        self.stop_mode("fast");
    }

    fn stop_mode(&self, mode: &str) {
        as_postgres(&format!(
            "{} -D {} -m {mode} -w -t 30 stop >/dev/null",
            self.bin.join("pg_ctl").display(),
            self.data.display()
        ));
    }

    /// The admin database's URL.
    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    /// URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates database `name`.
    pub async fn create_db(&self, name: &str) -> String {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url())
            .await
            .expect("connect the test cluster");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        self.url(name)
    }

    /// Server log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: nothing to keep; ignore a cluster already stopped.
        let _ = Command::new("su")
            .args([
                "postgres",
                "-s",
                "/bin/sh",
                "-c",
                &format!(
                    "{} -D {} -m immediate -w -t 10 stop >/dev/null 2>&1",
                    self.bin.join("pg_ctl").display(),
                    self.data.display()
                ),
            ])
            .status();
    }
}
