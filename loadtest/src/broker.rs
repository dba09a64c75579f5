//! Brokers started by `compare`: the same configuration and port for each, one after the other,
//! with their CPU time and peak memory read from /proc.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct BrokerProcess {
    child: Child,
    _config: tempfile::NamedTempFile,
}

/// CPU time and peak resident memory of a process so far.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
}

impl BrokerProcess {
    /// Starts `command` with `config` as its `-c` file (optionally under `taskset -c cpus`) and
    /// waits until `addr` accepts connections.
    pub fn start(
        command: &Path,
        config: &str,
        addr: SocketAddr,
        cpus: Option<&str>,
    ) -> anyhow::Result<BrokerProcess> {
        if TcpStream::connect(addr).is_ok() {
            bail!("{addr} is already in use: stop the broker there first");
        }
        let mut file = tempfile::NamedTempFile::new()?;
        std::io::Write::write_all(&mut file, config.as_bytes())?;
        let mut cmd = match cpus {
            Some(cpus) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", cpus]).arg(command);
                cmd
            }
            None => Command::new(command),
        };
        let child = cmd
            .arg("-c")
            .arg(file.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", command.display()))?;
        let mut broker = BrokerProcess { child, _config: file };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = broker.child.try_wait()? {
                bail!("{} exited at start ({status})", command.display());
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on {addr}", command.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(broker)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn usage(&self) -> Option<Usage> {
        usage_of(self.child.id())
    }
}

impl BrokerProcess {
    /// Stops the broker and waits until its port refuses connections: an io_uring broker's
    /// listener outlives the process for a moment while the kernel tears its rings down.
    pub fn stop(mut self, addr: SocketAddr) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads utime+stime (fields 14 and 15 of /proc/PID/stat) and VmHWM.
pub fn usage_of(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: count fields after it.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let peak_kb = status_kb(pid, "VmHWM:")?;
    Some(Usage { cpu_seconds: ticks / ticks_per_second, peak_rss_mb: peak_kb as f64 / 1024.0 })
}

/// The process's resident memory now (VmRSS), in KiB.
pub fn resident_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS:")
}

/// A "kB" field of /proc/PID/status.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// `culex` next to this binary (a cargo build puts both in target/<profile>), else on PATH.
pub fn default_culex() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("culex")))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("culex"))
}

pub fn default_mosquitto() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mosquitto"))
}
