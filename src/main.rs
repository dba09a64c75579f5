//! The `culex` command: Mosquitto's flags, Mosquitto's configuration file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use culex::config::{Config, Listener};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// No transparent huge pages for this process. mimalloc asks for them on its arenas
/// (`MADV_HUGEPAGE`), so where THP is `madvise` or `always` (most distributions) a 2 MiB page
/// became resident where a few of its 4 KiB pages were in use: measured on two shards, 3.07
/// against 2.44 KiB per idle connection, and a 5,000-device fleet's peak 66-76 against 37 MB,
/// with flat-out throughput and CPU per message unchanged. Set before the heap grows: the
/// kernel checks it when it faults a page in.
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and no pointers.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        eprintln!("warning: transparent huge pages left on: {}", std::io::Error::last_os_error());
    }
}

/// An MQTT broker, drop-in for Mosquitto 2.x, one shard per core.
#[derive(Parser, Debug, Clone)]
#[command(name = "culex", version)]
struct Args {
    /// Read the configuration from FILE (mosquitto.conf syntax).
    #[arg(short = 'c', long = "config-file", value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Listen on PORT (instead of 1883, or in addition to the configured listeners).
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    port: Option<u16>,
    /// Verbose logging (all log types), as Mosquitto's -v.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Run in the background.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Check the configuration, print what would run, and exit.
    #[arg(long = "test-config")]
    test_config: bool,
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let args = Args::parse();
    let (config, warnings) = match configure(&args) {
        Ok(configured) => configured,
        Err(error) => {
            eprintln!("Error: {error}");
            return ExitCode::FAILURE;
        }
    };
    if args.test_config {
        for warning in &warnings {
            println!("warning: {warning}");
        }
        // Every listener's files (its own with `per_listener_settings true`), each once.
        let mut password_files: Vec<std::path::PathBuf> = Vec::new();
        let mut acl_files: Vec<std::path::PathBuf> = Vec::new();
        for auth in config.listeners.iter().map(|l| config.auth_for(l)) {
            password_files.extend(auth.password_file.filter(|p| !password_files.contains(p)));
            acl_files.extend(auth.acl_file.filter(|p| !acl_files.contains(p)));
        }
        for path in &password_files {
            match culex::auth::PasswordFile::load(path) {
                Ok((passwords, warnings)) => {
                    for warning in warnings {
                        println!("warning: {warning}");
                    }
                    println!("password file {}: {} users", path.display(), passwords.len());
                }
                Err(error) => {
                    eprintln!("Error: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
        for path in &acl_files {
            if let Err(error) = culex::auth::AclFile::load(path) {
                eprintln!("Error: {error}");
                return ExitCode::FAILURE;
            }
            println!("acl file {}: OK", path.display());
        }
        for listener in config.listeners.iter().filter(|l| l.proxy_protocol.is_none()) {
            let Some(tls) = &listener.tls else { continue };
            if let Err(error) = culex::tls::server_config(tls) {
                eprintln!("Error: listener {}: {error}", listener.port);
                return ExitCode::FAILURE;
            }
            println!("listener {}: TLS certificate, key and CAs OK", listener.port);
        }
        for bridge in &config.bridges {
            let Some(tls) = &bridge.tls else { continue };
            if let Err(error) = culex::tls::client_config(tls) {
                eprintln!("Error: connection {}: {error}", bridge.name);
                return ExitCode::FAILURE;
            }
            println!("connection {}: TLS CAs and certificate OK", bridge.name);
        }
        println!("configuration OK: {}", describe(&config));
        return ExitCode::SUCCESS;
    }
    if let Err(error) = culex::logging::init(&config.logging, config.verbose) {
        eprintln!("Error: {error}");
        return ExitCode::FAILURE;
    }
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    if args.daemon {
        // SAFETY: called before any thread is started; daemon(3) forks and detaches.
        if unsafe { libc::daemon(1, 0) } != 0 {
            eprintln!("Error: cannot run in the background: {}", std::io::Error::last_os_error());
            return ExitCode::FAILURE;
        }
    }
    // As Mosquitto: written whether or not in the background, and a pid file that cannot be
    // written stops the broker.
    if let Some(path) = &config.pid_file {
        if let Err(error) = std::fs::write(path, format!("{}\n", std::process::id())) {
            eprintln!("Error: cannot write pid file {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let pid_file = config.pid_file.clone();
    exit_on_signals(args, pid_file.clone());
    let result = culex::runtime::run(config, culex::bridge::spawn);
    remove_pid_file(pid_file.as_deref());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("Error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration file (or Mosquitto's defaults without one) with the flags applied: at
/// start, and again at each SIGHUP.
fn configure(args: &Args) -> Result<(Config, Vec<String>), String> {
    let (mut config, warnings) = match &args.config_file {
        Some(path) => Config::from_file(path).map_err(|error| error.to_string())?,
        None => (Config::default(), Vec::new()),
    };
    config.verbose |= args.verbose;
    if let Some(port) = args.port {
        if config.local_only {
            // Like Mosquitto 2.0: `-p` without a config changes the port, still loopback only.
            config.listeners = vec![Listener::new(port, Vec::new())];
        } else {
            config.listeners.push(Listener::new(port, Vec::new()));
        }
    }
    Ok((config, warnings))
}

fn remove_pid_file(path: Option<&std::path::Path>) {
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
}

/// One line saying what would run.
fn describe(config: &Config) -> String {
    let listeners: Vec<String> =
        config
            .listeners
            .iter()
            .flat_map(|l| l.bind_addresses(config.local_only))
            .map(|bind| bind.addr.to_string())
            .chain(config.listeners.iter().filter_map(|l| {
                l.unix_path.as_ref().map(|path| format!("unix:{}", path.display()))
            }))
            .collect();
    let shards = config.shards.map_or_else(|| "one per CPU".to_string(), |n| n.to_string());
    let bridges: Vec<String> = config
        .bridges
        .iter()
        .map(|b| {
            let addresses: Vec<String> = b.addresses.iter().map(|a| a.to_string()).collect();
            format!("{} -> {} ({} topics)", b.name, addresses.join(" "), b.topics.len())
        })
        .collect();
    let persistence = if config.persistence {
        format!("persistence {}", config.store_path(0).with_extension("shardN").display())
    } else {
        "no persistence".to_string()
    };
    let allowed = |yes: bool| if yes { "allowed" } else { "refused" };
    let anonymous = if config.per_listener_settings {
        let per_port: Vec<String> = config
            .listeners
            .iter()
            .map(|l| format!("{} on {}", allowed(config.auth_for(l).allow_anonymous), l.port))
            .collect();
        per_port.join(", ")
    } else {
        allowed(config.allow_anonymous).to_string()
    };
    format!(
        "listeners {}; anonymous {anonymous}; shards {shards}; {persistence}; \
         max_inflight_messages {}; max_queued_messages {}; max_packet_size {}; bridges: {}",
        listeners.join(", "),
        config.max_inflight_messages,
        config.max_queued_messages,
        config.max_packet_size,
        if bridges.is_empty() { "none".to_string() } else { bridges.join(", ") },
    )
}

/// SIGINT and SIGTERM tell clients the server is shutting down (5.0: DISCONNECT 0x8B), then end
/// the process. SIGHUP reopens log files and reads the configuration file again, with the
/// TLS, password and ACL files, applying what needs no restart (`culex::runtime::reload`;
/// connected clients stay); `systemctl reload` sends it.
fn exit_on_signals(args: Args, pid_file: Option<PathBuf>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("Warning: cannot handle signals: {error}");
            return;
        }
    };
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == SIGHUP {
                culex::logging::reopen_files();
                let read = args.config_file.is_some().then(|| configure(&args));
                culex::runtime::reload::reload(read);
                continue;
            }
            tracing::info!(signal, "shutting down");
            culex::runtime::notify::stopping();
            culex::runtime::request_shutdown();
            std::thread::sleep(culex::runtime::SHUTDOWN_GRACE);
            remove_pid_file(pid_file.as_deref());
            std::process::exit(0);
        }
    });
}
