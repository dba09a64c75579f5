//! Brokers started by `compare`: the same configuration and port for each, one after the other,
//! with their CPU time and peak memory read from /proc.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct BrokerProcess {
    child: Child,
    /// The configuration file given with `-c`, removed with the process.
    _config: Option<tempfile::NamedTempFile>,
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
        let mut file = tempfile::NamedTempFile::new()?;
        std::io::Write::write_all(&mut file, config.as_bytes())?;
        let mut cmd = under_taskset(command.as_os_str(), cpus);
        cmd.arg("-c").arg(file.path());
        Self::launch(cmd, &command.display().to_string(), addr, Some(file))
    }

    /// Starts a broker from a whole command line, run by `sh` (so it may quote its
    /// arguments), with `{port}` in it replaced by `addr`'s port, and waits until `addr`
    /// accepts connections. The broker configures itself: it is given nothing else.
    pub fn start_command_line(
        command_line: &str,
        addr: SocketAddr,
        cpus: Option<&str>,
    ) -> anyhow::Result<BrokerProcess> {
        let line = command_line.replace("{port}", &addr.port().to_string());
        // `exec`: the broker replaces the shell, so its pid is the one watched and killed.
        let mut cmd = under_taskset("sh".as_ref(), cpus);
        cmd.arg("-c").arg(format!("exec {line}"));
        Self::launch(cmd, &line, addr, None)
    }

    /// Spawns `cmd` (its output discarded) and waits up to 10 s for `addr` to accept.
    fn launch(
        mut cmd: Command,
        name: &str,
        addr: SocketAddr,
        config: Option<tempfile::NamedTempFile>,
    ) -> anyhow::Result<BrokerProcess> {
        if TcpStream::connect(addr).is_ok() {
            bail!("{addr} is already in use: stop the broker there first");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut broker = BrokerProcess { child, _config: config };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = broker.child.try_wait()? {
                bail!("{name} exited at start ({status})");
            }
            if Instant::now() > deadline {
                bail!("{name} did not listen on {addr}");
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

/// `program`, under `taskset -c cpus` when given.
fn under_taskset(program: &std::ffi::OsStr, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", cpus]).arg(program);
            cmd
        }
        None => Command::new(program),
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
