//! Prometheus's own tools against our `/metrics`: `promtool check metrics`
//! on a scrape, and a real Prometheus server (Debian's `prometheus`
//! package; `scripts/test` installs it) scraping the services and
//! answering PromQL over its HTTP API.
//!
//! The server listens on an ephemeral loopback port of its own choosing;
//! its address is read from `/proc` (its listening socket), so no port is
//! picked here and bound again later.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::START_DEADLINE;

/// How often a condition on Prometheus is checked again (it scrapes every
/// [`SCRAPE_INTERVAL`], so asking more often finds nothing new).
const POLL: Duration = Duration::from_millis(250);

/// The scrape interval of the test server.
pub const SCRAPE_INTERVAL: &str = "1s";

/// Runs `promtool check metrics` on `exposition` (on its stdin); returns
/// whether it exited 0, and everything it printed.
pub async fn promtool_check_metrics(exposition: &str) -> (bool, String) {
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool runs (Debian package `prometheus`; scripts/test installs it)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(exposition.as_bytes())
        .await
        .expect("write to promtool");
    drop(stdin);
    let output = tokio::time::timeout(START_DEADLINE, child.wait_with_output())
        .await
        .expect("promtool finishes")
        .expect("promtool output");
    let mut printed = String::from_utf8_lossy(&output.stdout).into_owned();
    printed.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), printed)
}

/// A Prometheus server scraping some targets, stopped when dropped.
#[derive(Debug)]
pub struct Server {
    child: tokio::process::Child,
    /// Its HTTP API.
    pub address: SocketAddr,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts Prometheus scraping each `(job, host:port)` in `targets` at
    /// `/metrics` every [`SCRAPE_INTERVAL`], with its data in a temporary
    /// directory; returns once its HTTP API answers `/-/ready`.
    pub async fn start(targets: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = format!(
            "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\nscrape_configs:\n"
        );
        for (job, address) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{address}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write the config");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus runs (Debian package `prometheus`; scripts/test installs it)");
        let pid = child.id().expect("running");
        let mut server = Self {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
        };
        let found = tokio::time::timeout(START_DEADLINE, async {
            let mut poll = tokio::time::interval(POLL);
            loop {
                poll.tick().await;
                if let Some(address) = listening_address(pid) {
                    return address;
                }
            }
        })
        .await;
        server.address =
            found.unwrap_or_else(|_| panic!("prometheus never listened:\n{}", server.log()));
        let ready = server
            .wait_for(|| async {
                let probe = tokio::net::TcpStream::connect(server.address).await;
                probe.is_ok() && server.get("/-/ready").await.is_some_and(|(ok, _)| ok)
            })
            .await;
        assert!(ready, "prometheus never became ready:\n{}", server.log());
        server
    }

    /// Evaluates `promql` now (`/api/v1/query`); returns `data.result`.
    pub async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (ok, body) = self
            .get(&path)
            .await
            .unwrap_or_else(|| panic!("no answer to {promql}:\n{}", self.log()));
        let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert!(ok && value["status"] == "success", "{promql}: {body}");
        value["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Evaluates `promql` every [`POLL`] until `done` holds for its result,
    /// for at most `deadline`; returns the last result and whether it did.
    pub async fn query_until(
        &self,
        promql: &str,
        deadline: Duration,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> (Vec<serde_json::Value>, bool) {
        let mut last = Vec::new();
        let reached = tokio::time::timeout(deadline, async {
            let mut poll = tokio::time::interval(POLL);
            loop {
                poll.tick().await;
                last = self.query(promql).await;
                if done(&last) {
                    return;
                }
            }
        })
        .await
        .is_ok();
        (last, reached)
    }

    /// What Prometheus logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Stops it (SIGKILL: its data is thrown away).
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(START_DEADLINE, self.child.wait()).await;
    }

    async fn wait_for<F, Fut>(&self, condition: F) -> bool
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        tokio::time::timeout(START_DEADLINE, async {
            let mut poll = tokio::time::interval(POLL);
            loop {
                poll.tick().await;
                if condition().await {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    /// GETs `path`: whether the status was 200, and the body; `None` when
    /// the connection fails.
    async fn get(&self, path: &str) -> Option<(bool, String)> {
        use tokio::io::AsyncReadExt;
        let mut stream = tokio::net::TcpStream::connect(self.address).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.address
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        tokio::time::timeout(START_DEADLINE, stream.read_to_string(&mut response))
            .await
            .ok()?
            .ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        Some((head.contains(" 200 "), body.to_owned()))
    }
}

/// The TCP address process `pid` listens on, from its socket descriptors
/// and `/proc/<pid>/net/tcp`; `None` until it listens.
pub fn listening_address(pid: u32) -> Option<SocketAddr> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // local_address, st (0A = LISTEN), inode.
        let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        if *state != "0A" || !inodes.iter().any(|i| i == inode) {
            return None;
        }
        let (ip, port) = local.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // The address is the kernel's word, in host (little-endian) order.
        Some(SocketAddr::from((ip.to_le_bytes(), port)))
    })
}

/// `text` with everything but unreserved characters percent-encoded (RFC
/// 3986), for a query parameter.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
