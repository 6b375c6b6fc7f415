//! The servers under test as child processes of the real binaries (the sidecar's `threadwarden`
//! and this crate's own `threadwarden-bench echo-server`), and what `/proc` says about them: CPU
//! time (utime + stime) and resident memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the load generator may read of the server under test: its process (CPU, memory) and,
/// for a sidecar, its admin port (the classifier's own timing).
#[derive(Clone, Debug, Default)]
pub struct Probe {
    pub pid: Option<u32>,
    pub admin: Option<String>,
}

/// The executables the servers are started from.
#[derive(Clone, Debug)]
pub struct Bins {
    /// The product's `threadwarden` (run as `serve`).
    pub sidecar: PathBuf,
    /// The echo baseline (`threadwarden-bench echo-server`).
    pub echo: PathBuf,
    /// The baseline is the sidecar itself, started with other flags (`--baseline-sidecar-arg`):
    /// for A/B runs of one binary, e.g. the Redis state backend against the memory one.
    pub baseline_is_sidecar: bool,
}

/// Which server a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sidecar,
    Echo,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sidecar => "sidecar",
            Kind::Echo => "echo",
        }
    }
}

/// A server child process; killed (SIGKILL) and reaped when dropped.
pub struct Server {
    child: Child,
    pub kind: Kind,
    pub addr: String,
    /// The admin HTTP address, when started with one (sidecar only).
    pub admin: Option<String>,
    /// Whether loadgen's `--prime` pass has run against it.
    pub primed: bool,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `threadwarden serve` (the sidecar, decision log off) or `threadwarden-bench
    /// echo-server` on an ephemeral loopback port, with a clean environment, and waits for its
    /// "serving" log line.
    pub fn start(bins: &Bins, kind: Kind, admin: bool, extra: &[String]) -> Result<Server, String> {
        let as_sidecar = kind == Kind::Sidecar || bins.baseline_is_sidecar;
        let bin = if as_sidecar {
            &bins.sidecar
        } else {
            &bins.echo
        };
        let mut cmd = Command::new(bin);
        if as_sidecar {
            cmd.args(["serve", "--listen", "127.0.0.1:0", "--decision-log", "off"]);
            if admin {
                cmd.args(["--admin-listen", "127.0.0.1:0"]);
            }
        } else {
            cmd.args(["echo-server", "--listen", "127.0.0.1:0"]);
        }
        cmd.args(extra)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut stderr_pipe = child.stderr.take().expect("piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr_pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut s = stderr.lock().expect("stderr");
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if s.len() > 16 * 1024 {
                        let cut = s.len() - 8 * 1024;
                        let cut = (cut..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(0);
                        s.drain(..cut);
                    }
                }
            })
        };
        // Read the log until "serving", then keep draining it so that the child never blocks.
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
            for _ in lines {}
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut addr = None;
        let mut admin_addr = None;
        while addr.is_none() || (admin && admin_addr.is_none()) {
            let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => l,
                Err(_) => {
                    // Timed out, or the child closed stdout (it exited). Either way, stop it and
                    // wait for its stderr to be drained to EOF before quoting it: the reader
                    // thread may not have run yet when a child fails fast (a flag it rejects).
                    let _ = child.kill();
                    let status = child.wait();
                    let _ = stderr_reader.join();
                    let err = stderr.lock().expect("stderr").clone();
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    return Err(format!(
                        "{} did not log \"serving\" ({status}): {err}",
                        kind.name()
                    ));
                }
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(a) = v["admin"].as_str() {
                admin_addr = Some(a.to_string());
            }
            if v["message"] == "serving" {
                addr = v["listen"].as_str().map(str::to_string);
            }
        }
        Ok(Server {
            child,
            kind,
            addr: addr.expect("read above"),
            admin: admin_addr,
            primed: false,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The tail of what it wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    /// A Prometheus sample from its admin port's /metrics (HTTP/1.0, no client library).
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric(&scrape(self.admin.as_ref()?)?, name)
    }

    /// What the load generator reads of this server during a run.
    pub fn probe(&self) -> Probe {
        Probe {
            pid: Some(self.pid()),
            admin: self.admin.clone(),
        }
    }
}

/// The Prometheus text of a sidecar's admin port (blocking, loopback).
fn scrape(admin: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(admin).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The value of an unlabelled sample.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The sidecar's classification histogram so far: (sum of seconds, count).
pub fn classification(admin: &str) -> Option<(f64, f64)> {
    let body = scrape(admin)?;
    let name = "threadwarden_classification_duration_seconds";
    Some((
        metric(&body, &format!("{name}_sum"))?,
        metric(&body, &format!("{name}_count"))?,
    ))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t: &u64| *t > 0)
            .unwrap_or(100)
    })
}

/// CPU time (user + system) of a process so far, in microseconds.
pub fn cpu_micros(pid: &str) -> Option<u64> {
    cpu_split(pid).map(|(u, s)| u + s)
}

/// CPU time of a process so far, user and system apart, in microseconds.
pub fn cpu_split(pid: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at state (field 3).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let us = |t: u64| t * 1_000_000 / clock_ticks();
    Some((us(utime), us(stime)))
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

/// The binary to start servers from: `--server-bin`, else this very executable.
/// The sidecar binary (`given`, or `threadwarden` beside this executable, where cargo builds
/// both) and the echo server (this executable).
pub fn server_bins(given: Option<&PathBuf>) -> Result<Bins, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    // Rebuilt while running (a shared target directory): start the new file.
    let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) if !exe.exists() => PathBuf::from(path),
        _ => exe,
    };
    let sidecar = match given {
        Some(p) => p.clone(),
        None => {
            let beside =
                exe.with_file_name(format!("threadwarden{}", std::env::consts::EXE_SUFFIX));
            if !beside.exists() {
                return Err(format!(
                    "no sidecar binary at {} (build it with `cargo build --release`, or pass --server-bin)",
                    beside.display()
                ));
            }
            beside
        }
    };
    Ok(Bins {
        sidecar,
        echo: exe,
        baseline_is_sidecar: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id().to_string();
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_micros(&me).expect("readable") > 0);
        assert!(rss_kib(&me).expect("readable") > 100);
        assert!(cpu_micros("no-such-pid").is_none());
        assert!(loadavg()[0] >= 0.0);
    }
}
