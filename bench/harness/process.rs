//! The hookbridge process under test: started from the binary next to this one, measured
//! through /proc (CPU seconds, peak RSS).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Hookbridge {
    child: Child,
    pub ingress: String,
    /// The admin listener, `http://host:port`.
    pub admin: String,
}

impl Hookbridge {
    pub fn start(dir: &Path, config: &str) -> anyhow::Result<Hookbridge> {
        Hookbridge::start_logged(dir, config, None)
    }

    /// [`Hookbridge::start`], and every line the process logs (JSON) written to `log`.
    pub fn start_logged(
        dir: &Path,
        config: &str,
        log: Option<&Path>,
    ) -> anyhow::Result<Hookbridge> {
        let path = dir.join("bench.yaml");
        std::fs::write(&path, config)?;
        // HOOKBRIDGE_BENCH_LOG sets the service's RUST_LOG and prints every line it logs,
        // for finding out what a latency spike coincided with.
        let verbose = std::env::var("HOOKBRIDGE_BENCH_LOG").ok();
        let mut child = Command::new(binary()?)
            .args(["serve", "--log-format", "json", "--config"])
            .arg(&path)
            .env(
                "RUST_LOG",
                // `info`, not `warn,hookbridge::server=info`: under the latter, on Kafka, the
                // line the harness waits for was seen dropped (a per-layer filter's state
                // left behind by librdkafka's `log_enabled!` checks on the same thread).
                verbose.as_deref().unwrap_or("info"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().expect("piped");
        let mut log = log.map(std::fs::File::create).transpose()?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(file) = log.as_mut() {
                    let _ = writeln!(file, "{line}");
                }
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                    if event["message"] == "hookbridge is serving" {
                        let field =
                            |name: &str| event[name].as_str().unwrap_or_default().to_string();
                        let _ = tx.send((field("ingress"), field("admin")));
                    } else if verbose.is_some()
                        || event["level"] == "ERROR"
                        || event["level"] == "WARN"
                    {
                        eprintln!("hookbridge: {line}");
                    }
                }
            }
        });
        let Ok((ingress, admin)) = rx.recv_timeout(Duration::from_secs(30)) else {
            // Not left running behind the next scenario.
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("hookbridge did not start (config {})", path.display());
        };
        Ok(Hookbridge {
            child,
            ingress: format!("http://{ingress}"),
            admin: format!("http://{admin}"),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// A counter or gauge of the process's `/metrics` (summed over its labels); 0 when it
    /// has none.
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        use std::io::{Read, Write};
        let address = self.admin.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address)?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("hookbridge");
    anyhow::ensure!(
        path.exists(),
        "{} not found: build it with `cargo build --release --bins`",
        path.display()
    );
    Ok(path)
}

pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the ')'.
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

pub fn rss_mib(pid: u32) -> f64 {
    kib_field_mib(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// A `Name:   1234 kB` line of a /proc file, in MiB; 0 if the file or line is missing.
pub fn kib_field_mib(path: &str, field: &str) -> f64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// A private server process (nats-server) for the run, on a free port.
pub struct Server {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start(
        program: &str,
        args: impl Fn(u16, &Path) -> Vec<String>,
    ) -> anyhow::Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let child = Command::new(program)
            .args(args(port, dir.path()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {program}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{program} did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Server {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
