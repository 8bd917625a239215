//! A private, throw-away PostgreSQL cluster for tests that stop and start
//! the database server itself (the shared `TEST_POSTGRES_URL` server cannot
//! be restarted under the other tests). It is built with the system's
//! `initdb` and `pg_ctl` in a temporary directory, listens on loopback only,
//! trusts the `postgres` user, and is stopped (`-m immediate`) when dropped,
//! so no postmaster outlives a test, even one that panics.
//!
//! PostgreSQL refuses to run as root: when the tests run as uid 0 every
//! `initdb`/`pg_ctl` runs as the `postgres` OS user through `runuser`, in a
//! directory handed over to that user.

use std::path::{Path, PathBuf};

use tokio::process::Command;

/// A running private PostgreSQL cluster.
#[derive(Debug)]
pub struct PgCluster {
    /// Holds the data directory, the socket and the server log.
    dir: tempfile::TempDir,
    /// The folder holding `initdb` and `pg_ctl`.
    bin: PathBuf,
    /// The loopback TCP port the server listens on.
    port: u16,
    /// Whether commands must run as the `postgres` OS user (we are root).
    as_postgres: bool,
}

impl PgCluster {
    /// Creates (initdb) and starts a cluster on a free loopback port. An
    /// error says what failed, with the tool's output.
    pub async fn start() -> Result<Self, String> {
        let bin = find_bin()?;
        let as_postgres = running_as_root().await?;
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        if as_postgres {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()))
            .await?;
        }
        let mut cluster = Self {
            dir,
            bin,
            port: 0,
            as_postgres,
        };
        cluster
            .pg("initdb")
            .arg("-D")
            .arg(cluster.data())
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output()
            .await
            .map_err(|e| format!("initdb: {e}"))
            .and_then(|out| checked("initdb", out))?;
        // A free port is only free until someone else binds it: if the
        // server cannot bind the one we picked, pick another.
        let mut last_error = String::new();
        for _ in 0..3 {
            cluster.port = free_port()?;
            match cluster.pg_ctl(&["start"]).await {
                Ok(()) => return Ok(cluster),
                Err(error) => last_error = error,
            }
        }
        Err(format!(
            "{last_error}\nserver log:\n{}",
            cluster.server_log()
        ))
    }

    /// The URL of `database` on this cluster, as user `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server with `mode` (`smart`, `fast` or `immediate`) and
    /// waits until it is gone.
    pub async fn stop(&self, mode: &str) -> Result<(), String> {
        self.pg_ctl(&["-m", mode, "stop"]).await
    }

    /// Starts the stopped server again on the same port and waits until it
    /// accepts connections.
    pub async fn start_again(&self) -> Result<(), String> {
        self.pg_ctl(&["start"]).await
    }

    /// Everything the server logged so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `pg_ctl -w -D data <options> -l server.log <action…>`.
    async fn pg_ctl(&self, action: &[&str]) -> Result<(), String> {
        let output = self
            .pg("pg_ctl")
            .args(self.pg_ctl_args(action))
            .output()
            .await
            .map_err(|e| format!("pg_ctl: {e}"))?;
        checked(&format!("pg_ctl {}", action.join(" ")), output)
    }

    fn pg_ctl_args(&self, action: &[&str]) -> Vec<String> {
        let mut args = vec![
            "-w".to_owned(),
            "-D".to_owned(),
            self.data().display().to_string(),
            "-o".to_owned(),
            format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                self.port,
                self.dir.path().display()
            ),
            "-l".to_owned(),
            self.dir.path().join("server.log").display().to_string(),
        ];
        args.extend(action.iter().map(|a| (*a).to_owned()));
        args
    }

    /// A command for the PostgreSQL tool `tool`, as the `postgres` user when
    /// needed.
    fn pg(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.current_dir(self.dir.path()).kill_on_drop(true);
        command
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Synchronous on purpose: Drop cannot await, and this must finish
        // before the data directory is removed.
        let program = self.bin.join("pg_ctl");
        let args = self.pg_ctl_args(&["-m", "immediate", "stop"]);
        let mut command = if self.as_postgres {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            std::process::Command::new(program)
        };
        // Already stopped is fine; anything else we can only report.
        if let Ok(output) = command.args(args).output()
            && !output.status.success()
            && self.data().join("postmaster.pid").exists()
        {
            eprintln!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding initdb and pg_ctl.
fn find_bin() -> Result<PathBuf, String> {
    let root = Path::new("/usr/lib/postgresql");
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .map_err(|e| format!("{}: {e} (is PostgreSQL installed?)", root.display()))?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| format!("no initdb and pg_ctl under {}/*/bin", root.display()))
}

async fn running_as_root() -> Result<bool, String> {
    let output = Command::new("id")
        .arg("-u")
        .output()
        .await
        .map_err(|e| format!("id -u: {e}"))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|e| format!("local_addr: {e}"))
}

async fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().await.map_err(|e| format!("{e}"))?;
    checked("command", output)
}

fn checked(what: &str, output: std::process::Output) -> Result<(), String> {
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
