//! Support for end-to-end tests: start the real binaries as child processes
//! on ephemeral loopback ports, learn their address from their own log line,
//! collect everything they print, and stop them with real signals.
//!
//! Every wait here is on a condition with a deadline, never a sleep.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint, Uri};

pub mod auth;
pub mod health;
pub mod pgcluster;
pub mod pki;
pub mod prometheus;
pub mod raw;
pub mod stack;

/// How long a service may take to report that it is serving. Generous:
/// it only bounds how long a broken start takes to fail, and a busy
/// 2-core CI machine has once held a Node tool that starts in half a
/// second past 30 s.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// Path of a workspace binary built next to the running executable: beside
/// it (a tool in `target/<profile>/`) or one level up (a test in
/// `target/<profile>/deps/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable has a path");
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .collect();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing beside {}: build the binaries first (`cargo build --workspace --bins`; scripts/test does)",
                exe.display()
            )
        })
}

/// A running service process and everything it has printed so far.
#[derive(Debug)]
pub struct Process {
    child: Child,
    output: Arc<Mutex<String>>,
    /// Lines printed so far, changed with every line.
    printed: watch::Receiver<usize>,
    /// The tasks copying stdout and stderr into `output`.
    readers: Vec<tokio::task::JoinHandle<()>>,
    /// The address it reported in its "serving" log line.
    pub address: String,
}

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Command-line arguments.
    pub args: Vec<String>,
    /// The whole environment of the child (nothing is inherited but PATH).
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }
}

impl Process {
    /// Starts `binary` with JSON logs and waits until it logs the line with
    /// `serving_message`, taking the address from that line's `listen`
    /// field. Panics with the output so far if it exits or times out.
    pub async fn start(binary: &Path, launch: Launch, serving_message: &str) -> Self {
        Self::start_matching(binary, launch, serving_message, true).await
    }

    async fn start_matching(binary: &Path, launch: Launch, text: &str, listen: bool) -> Self {
        let mut child = spawn(binary, &launch);
        let output = Arc::new(Mutex::new(String::new()));
        let (address_tx, mut address_rx) = watch::channel(None::<String>);
        let (printed_tx, printed) = watch::channel(0);
        let readers = collect_output(&mut child, &output, text, listen, address_tx, printed_tx);

        let found = tokio::time::timeout(START_DEADLINE, async {
            loop {
                if let Some(address) = address_rx.borrow_and_update().clone() {
                    return Some(address);
                }
                if address_rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match found {
            Ok(Some(address)) => Self {
                child,
                output,
                printed,
                readers,
                address,
            },
            _ => {
                let state = child.id().map(process_state).unwrap_or_default();
                let _ = child.start_kill();
                let status = child.wait().await;
                let printed = read_to_the_end(readers, &output).await;
                panic!(
                    "{} did not start ({status:?}{state}); it printed:\n{printed}",
                    binary.display()
                );
            }
        }
    }

    /// Starts `binary` and waits until it prints a line containing `text`
    /// (for commands that report progress rather than serve).
    pub async fn start_until(binary: &Path, launch: Launch, text: &str) -> Self {
        Self::start_matching(binary, launch, text, false).await
    }

    /// Runs `binary` to completion (for start-up failures) and returns its
    /// exit status and everything it printed.
    pub async fn run_to_exit(binary: &Path, launch: Launch) -> (ExitStatus, String) {
        let child = spawn(binary, &launch);
        let finished = tokio::time::timeout(START_DEADLINE, child.wait_with_output())
            .await
            .expect("process exits within the deadline")
            .expect("process output");
        let mut printed = String::from_utf8_lossy(&finished.stdout).into_owned();
        printed.push_str(&String::from_utf8_lossy(&finished.stderr));
        (finished.status, printed)
    }

    /// `http://ADDRESS`, for a plaintext TCP client.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A plaintext channel to the service (TCP).
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url())
            .expect("valid url")
            .connect()
            .await
            .expect("connects")
    }

    /// Everything the process printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Waits until `count` JSON log lines carry the message `message`;
    /// panics with the output after [`START_DEADLINE`].
    pub async fn wait_for_log(&self, message: &str, count: usize) {
        let mut printed = self.printed.clone();
        let found = tokio::time::timeout(START_DEADLINE, async {
            loop {
                printed.borrow_and_update();
                if self.log_lines(message) >= count {
                    return true;
                }
                if printed.changed().await.is_err() {
                    return self.log_lines(message) >= count;
                }
            }
        })
        .await;
        assert_eq!(
            found,
            Ok(true),
            "no {count} log lines {message:?}; the process printed:\n{}",
            self.output()
        );
    }

    /// How many JSON log lines carry the message `message`.
    pub fn log_lines(&self, message: &str) -> usize {
        self.output()
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line).is_ok_and(|value| {
                    value.pointer("/fields/message").and_then(|m| m.as_str()) == Some(message)
                })
            })
            .count()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// The `field` of the first JSON log line whose message is `message`.
    pub fn log_field(&self, message: &str, field: &str) -> Option<String> {
        self.output().lines().find_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            (value.pointer("/fields/message")?.as_str()? == message)
                .then(|| {
                    value
                        .pointer(&format!("/fields/{field}"))?
                        .as_str()
                        .map(str::to_owned)
                })
                .flatten()
        })
    }

    /// Sends SIGKILL and waits until the process is gone.
    pub async fn kill(mut self) {
        self.signal("KILL");
        let _ = tokio::time::timeout(START_DEADLINE, self.child.wait())
            .await
            .expect("exits within the deadline after SIGKILL");
    }

    /// Waits for the process to exit on its own.
    pub async fn wait(mut self) -> (ExitStatus, String) {
        let status = tokio::time::timeout(START_DEADLINE, self.child.wait())
            .await
            .expect("exits within the deadline")
            .expect("exit status");
        (status, self.output_to_the_end().await)
    }

    async fn output_to_the_end(&mut self) -> String {
        read_to_the_end(std::mem::take(&mut self.readers), &self.output).await
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> (ExitStatus, String) {
        self.signal("TERM");
        let status = tokio::time::timeout(START_DEADLINE, self.child.wait())
            .await
            .expect("exits within the deadline after SIGTERM")
            .expect("exit status");
        (status, self.output_to_the_end().await)
    }
}

/// Where a live process stands, for a start that timed out: its scheduler
/// state, the CPU time it has used and the kernel function it waits in, so
/// that a failure tells a busy process from a blocked one. Empty when
/// `/proc` cannot say.
fn process_state(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may
    // hold spaces: state is the first, utime and stime the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|t| t.parse::<u64>().ok());
    let (Some(state), Some(user), Some(system)) = (fields.first(), ticks(11), ticks(12)) else {
        return String::new();
    };
    let waiting_in = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    format!(
        "; when the deadline passed it was in state {state}, had used {user} user and \
         {system} system clock ticks, waiting in {waiting_in:?}"
    )
}

fn spawn(binary: &Path, launch: &Launch) -> Child {
    let mut command = Command::new(binary);
    command
        .args(&launch.args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command.spawn().expect("the binary starts")
}

/// Copies stdout and stderr into `output`; the first line that carries
/// `serving_message` sends its `listen` field.
fn collect_output(
    child: &mut Child,
    output: &Arc<Mutex<String>>,
    serving_message: &str,
    listen: bool,
    address_tx: watch::Sender<Option<String>>,
    printed_tx: watch::Sender<usize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let address_tx = Arc::new(address_tx);
    let printed_tx = Arc::new(printed_tx);
    let stdout = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>);
    let stderr = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>);
    let mut readers = Vec::new();
    for stream in [stdout, stderr].into_iter().flatten() {
        let output = Arc::clone(output);
        let address_tx = Arc::clone(&address_tx);
        let printed_tx = Arc::clone(&printed_tx);
        let serving_message = serving_message.to_owned();
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(&serving_message) {
                    let found = if listen {
                        listen_field(&line)
                    } else {
                        Some(line.clone())
                    };
                    if let Some(found) = found {
                        address_tx.send_replace(Some(found));
                    }
                }
                if let Ok(mut all) = output.lock() {
                    all.push_str(&line);
                    all.push('\n');
                }
                printed_tx.send_modify(|lines| *lines += 1);
            }
        }));
    }
    readers
}

/// Everything an exited process printed: the copying tasks may still hold
/// its last lines when the exit status arrives, so this waits until they
/// reach the end of both pipes.
async fn read_to_the_end(
    readers: Vec<tokio::task::JoinHandle<()>>,
    output: &Arc<Mutex<String>>,
) -> String {
    for reader in readers {
        let _ = tokio::time::timeout(START_DEADLINE, reader).await;
    }
    output.lock().map(|o| o.clone()).unwrap_or_default()
}

fn listen_field(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value
        .pointer("/fields/listen")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
}

/// A channel over a unix domain socket.
pub async fn unix_channel(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::from_static("http://unix.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connects over the unix socket")
}

/// GETs `http://address/path` and returns the body (plain HTTP/1.1, for
/// the metrics endpoints).
pub async fn http_get(address: &str, path: &str) -> String {
    http_get_accepting(address, path, None).await.1
}

/// GETs `http://address/path` with `Accept: accept` when given; returns
/// the response's head (status line and headers) and body. Panics unless
/// the status is 200.
pub async fn http_get_accepting(
    address: &str,
    path: &str,
    accept: Option<&str>,
) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let accept = accept.map_or_else(String::new, |accept| format!("Accept: {accept}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{accept}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tokio::time::timeout(START_DEADLINE, stream.read_to_string(&mut response))
        .await
        .expect("response within the deadline")
        .expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (head.to_owned(), body.to_owned())
}

/// Settings by which a launch names crypto-service's callers itself.
const CALLER_SETTINGS: &[&str] = &[
    "--registry-clients",
    "--operator-clients",
    "--allowed-clients",
    "--mesh-mtls",
    "--insecure-dev-callers",
    "CRYPTO_REGISTRY_CLIENTS",
    "CRYPTO_OPERATOR_CLIENTS",
    "CRYPTO_ALLOWED_CLIENTS",
    "CRYPTO_MESH_MTLS",
    "CRYPTO_INSECURE_DEV_CALLERS",
];

/// Starts crypto-service on an ephemeral loopback port with `launch` plus
/// JSON logs. Unless `launch` names the callers itself (a caller list, mesh
/// or development mode), it runs with `--insecure-dev-callers`: every test
/// process on loopback or the socket may call every method, as tests of
/// everything but caller identities need. Use [`start_crypto_as_given`] to
/// start it with exactly `launch`.
pub async fn start_crypto(launch: Launch) -> Process {
    let names_callers = launch
        .args
        .iter()
        .chain(launch.env.iter().map(|(name, _)| name))
        .any(|setting| CALLER_SETTINGS.contains(&setting.as_str()));
    if names_callers {
        start_crypto_as_given(launch).await
    } else {
        start_crypto_as_given(launch.arg("--insecure-dev-callers")).await
    }
}

/// The uid this test process runs as (the owner of `/proc/self`), for
/// crypto-service's `uid:` caller entries.
pub fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .expect("/proc/self exists on Linux")
        .uid()
}

/// Starts crypto-service on an ephemeral loopback port (unless `launch`
/// says `--listen`) with exactly `launch` plus JSON logs.
pub async fn start_crypto_as_given(launch: Launch) -> Process {
    let mut launch = launch.arg("--log-format").arg("json");
    if !launch.args.iter().any(|arg| arg == "--listen") {
        launch = launch.arg("--listen").arg("127.0.0.1:0");
    }
    Process::start(&binary("crypto-service"), launch, "crypto-service serving").await
}

/// The value of the sample `series` (its name and labels, exactly as a
/// Prometheus text exposition writes them) in `exposition`; 0 when absent.
pub fn metric_value(exposition: &str, series: &str) -> u64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_process_is_described_as_sleeping_with_its_cpu_time() {
        // `sleep` waits in the kernel for its whole life once it has
        // started: the description must come to say so (state S).
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep starts");
        let deadline = std::time::Instant::now() + START_DEADLINE;
        let mut described = process_state(child.id());
        while !described.contains("in state S,") && std::time::Instant::now() < deadline {
            std::thread::yield_now();
            described = process_state(child.id());
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(described.contains("in state S,"), "{described}");
        assert!(described.contains("system clock ticks"), "{described}");
        assert!(described.contains("waiting in \""), "{described}");
        assert_eq!(process_state(u32::MAX), "", "no such process");
    }
}
