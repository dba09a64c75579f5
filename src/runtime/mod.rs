//! Everything that awaits: one glommio executor per shard, each with its own listeners
//! (SO_REUSEPORT) and the tasks that serve its connections, carry its messages to other shards,
//! write its store and sweep its timers. What a shard decides is in `crate::broker`, which
//! never awaits.

#[cfg(feature = "bench")]
pub mod bench;
mod connection;
pub mod flow;
mod mesh;
pub mod notify;
mod recovery;
pub mod reload;
#[cfg(test)]
mod session_moves;
mod transport;
mod websocket;

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use std::os::fd::{FromRawFd, IntoRawFd};
use thiserror::Error;

use crate::auth::Credentials;
use crate::broker::counters::{self, BridgeCounters, ShardCounters};
use crate::broker::journal::{Journal, SharedJournal};
use crate::broker::messages::{Batch, ShardId, BATCHES_IN_FLIGHT_MAX, SHARDS_MAX};
use crate::broker::outbox::{Close, ListenerContext};
use crate::broker::Shard;
use crate::config::{BindAddress, Config, Listener, PersistenceSync};
use crate::store::ShardStore;
use crate::tls::ServerTls;
pub use connection::{claim_answered, claim_connected, write_out, PacketReader};
use recovery::ShardRecovery;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
pub use transport::Transport;

/// io_uring memory per executor. glommio's default (10 MiB in three rings) exceeds the 8 MiB
/// memlock limit that unprivileged users and containers get; 64 KiB with 128-entry rings
/// started 48 executors in 16 processes on our machines (docs/ARCHITECTURE.md, glommio).
const IO_MEMORY_BYTES: usize = 64 << 10;
/// The ring depth where memory is no object (root, or an unlimited memlock as the systemd unit
/// gives), and the least. Deep rings matter with many connections: each keeps a poll armed in
/// the kernel's table of the executor's main ring, which every cancel searches (glommio cancels
/// and re-arms a timer on each wake-up), and that table has a bucket per 32 completion entries
/// (8 buckets at 128 entries, 256 from 4096). 4,000 connections at one message a second each
/// (`loadtest compare --scenario pairs --clients 2000 --qos 1 --rate 4000`, three runs each,
/// interleaved): 86.7 µs of CPU per message at 128, of which 9% in that search (perf), 80.1 µs
/// at 4096; the search grows with the connections.
const RING_DEPTH: usize = 4096;
const RING_DEPTH_MIN: usize = 128;

/// The ring depth for this process's executors: `RING_DEPTH` when ring memory is not charged
/// to memlock (root) or memlock is unlimited (the systemd unit), else `RING_DEPTH_MIN`, as
/// before: an unprivileged user's 8 MiB is shared by every process of the user, and 4096-deep
/// rings for two shards took half of it (two brokers of one user did not start, where 128 let
/// 48 executors in 16 processes start).
fn ring_depth() -> usize {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let unlimited = memlock_limit().is_some_and(|limit| limit.rlim_cur == libc::RLIM_INFINITY);
    if root || unlimited {
        RING_DEPTH
    } else {
        RING_DEPTH_MIN
    }
}

/// The start-up check for a broker already on a port: how long each attempt waits, and how many
/// attempts must all be answered.
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
const PROBE_ATTEMPTS: usize = 10;

/// Pending connections per listener per shard (glommio's own default).
const LISTEN_BACKLOG: i32 = 1024;

/// How often each shard checks keep-alive deadlines, session expiry and shutdown.
const KEEP_ALIVE_SWEEP_MS: u64 = 500;
const KEEP_ALIVE_SWEEP: Duration = Duration::from_millis(KEEP_ALIVE_SWEEP_MS);

#[derive(Debug, Error)]
pub enum StartError {
    #[error("address {0} is already in use (is another broker running?)")]
    AddressInUse(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen on Unix socket {}: {source}", path.display())]
    ListenUnix { path: std::path::PathBuf, source: std::io::Error },
    #[error("{0} shards requested; at most {SHARDS_MAX} are supported")]
    TooManyShards(usize),
    #[error("cannot start shard executor: {0}")]
    Executor(String),
    #[error("{0}")]
    AuthFile(#[from] crate::auth::AuthFileError),
    #[error("listener {port}: {source}")]
    Tls { port: u16, source: crate::tls::TlsError },
    #[error("connection {name}: {source}")]
    BridgeTls { name: String, source: crate::tls::TlsError },
    #[error(
        "io_uring is not available ({0}): Culex needs it. Check `sysctl kernel.io_uring_disabled` \
         (0 enables it for everyone) and, in a container, a seccomp profile that allows \
         io_uring_setup; `tuning/check` reports what a host lacks"
    )]
    IoUringUnavailable(std::io::Error),
    #[error(
        "the locked-memory limit (memlock) is {soft_kib} KiB and cannot be raised (hard limit \
         {hard_kib} KiB); Culex needs {needed_kib} KiB: raise it with `ulimit -l`, \
         LimitMEMLOCK= in the systemd unit, or tuning/limits.conf"
    )]
    MemlockTooLow { soft_kib: u64, hard_kib: u64, needed_kib: u64 },
    #[error("{0}")]
    Store(String),
    #[error("cannot drop privileges: {0}")]
    User(String),
}

static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// What each listener applies to its clients, in `config.listeners` order: its mount point, its
/// access rules (one set shared by all unless `per_listener_settings true`) and its TLS, its
/// files read now so that a bad one stops the start. With them, for SIGHUP to reload, each set
/// of credentials and each TLS configuration.
fn listener_contexts(config: &Config) -> Result<ListenerContexts, StartError> {
    let mut server_tls = Vec::new();
    let mut everyones = None;
    let mut all = Vec::new();
    let mut contexts = Vec::new();
    for listener in &config.listeners {
        let credentials = match &everyones {
            Some(shared) if !config.per_listener_settings => Arc::clone(shared),
            _ => {
                let (credentials, warnings) = Credentials::load(config.auth_for(listener))?;
                for warning in warnings {
                    tracing::warn!(port = listener.port, "{warning}");
                }
                all.push(credentials.clone());
                everyones = Some(credentials.clone());
                credentials
            }
        };
        // Behind the PROXY protocol the proxy terminates TLS: its options apply to the header.
        let tls = match &listener.tls {
            Some(settings) if listener.proxy_protocol.is_none() => {
                let loaded = ServerTls::load(settings.clone())
                    .map_err(|source| StartError::Tls { port: listener.port, source })?;
                let loaded = Arc::new(loaded);
                server_tls.push(loaded.clone());
                Some(loaded)
            }
            _ => None,
        };
        let mount_point = listener.mount_point.as_deref().map(ByteString::from);
        let context = Arc::new(ListenerContext {
            mount_point,
            credentials,
            topic_alias_maximum: listener.max_topic_alias,
            topic_aliases_sent_max: listener.max_topic_alias_broker,
            username_from_certificate: listener
                .tls
                .as_ref()
                .is_some_and(|tls| tls.username_from_certificate.is_some()),
            protocol_levels: listener.protocol_levels.clone(),
        });
        let websocket = listener.websockets.then(|| {
            Arc::new(crate::websocket::Settings {
                headers_size_max: config.websockets_headers_size,
                http_dir: listener.http_dir.clone(),
                origins: listener.websockets_origins.clone(),
            })
        });
        contexts.push(Listening { context, tls, websocket, proxy: listener.proxy_policy() });
    }
    Ok(ListenerContexts { contexts, credentials: all, server_tls })
}

struct ListenerContexts {
    contexts: Vec<Listening>,
    credentials: Vec<Arc<Credentials>>,
    server_tls: Vec<Arc<ServerTls>>,
}

/// What one listener gives the connections it accepts.
#[derive(Clone)]
struct Listening {
    context: Arc<ListenerContext>,
    tls: Option<Arc<ServerTls>>,
    /// `protocol websockets`.
    websocket: Option<Arc<crate::websocket::Settings>>,
    /// `enable_proxy_protocol`.
    proxy: Option<crate::proxy::Policy>,
}

/// How long `shutdown` leaves the shards to tell their clients: two sweeps.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(2 * KEEP_ALIVE_SWEEP_MS);

/// Asks every shard to close its connections (5.0 clients get DISCONNECT 0x8B) at its next
/// sweep. Safe from any thread.
pub fn request_shutdown() {
    SHUTTING_DOWN.store(true, Ordering::Relaxed);
}

pub fn is_shutting_down() -> bool {
    SHUTTING_DOWN.load(Ordering::Relaxed)
}

/// What an executor runs besides its share of the mesh.
enum Role {
    /// Accepts clients on every listener, through its own sockets (bound before the executors
    /// start, so that privileges can be dropped first); the first worker also on every Unix
    /// socket listener.
    Worker(Vec<(Endpoint, Socket)>),
    /// Runs these bridges (`bridge_shards`): no listener, so their traffic does not compete
    /// with clients' on a worker's core.
    Bridges(Vec<(crate::config::Bridge, Arc<BridgeCounters>)>),
}

/// glommio refuses to create an executor below this memlock limit (its `MIN_MEMLOCK_LIMIT`).
const MEMLOCK_NEEDED_BYTES: u64 = 512 << 10;

/// What starts one bridge's task on the shard given (`crate::bridge::spawn`): the runtime runs
/// bridge shards without knowing what a bridge is.
pub type SpawnBridge = fn(Rc<RefCell<Shard>>, Rc<crate::config::Bridge>, Arc<BridgeCounters>);

/// Starts every shard and blocks until they stop (they stop only with the process).
pub fn run(config: Config, spawn_bridge: SpawnBridge) -> Result<(), StartError> {
    // memlock first: below it, creating a ring fails too (ENOMEM), with a less helpful message.
    ensure_memlock()?;
    check_io_uring()?;
    let cpus = allowed_cpus();
    let worker_count = config.shards.unwrap_or(cpus.len().max(1));
    let bridge_shard_count = config.bridge_shards.min(config.bridges.len());
    let shard_count = worker_count + bridge_shard_count;
    if shard_count > SHARDS_MAX {
        return Err(StartError::TooManyShards(shard_count));
    }
    let ListenerContexts { contexts, credentials, server_tls } = listener_contexts(&config)?;
    let limits: Vec<Arc<ConnectionLimit>> =
        config.listeners.iter().map(|l| Arc::new(ConnectionLimit::new(l))).collect();
    let endpoints = endpoints(&config, &contexts, &limits);
    let unix_endpoints = unix_endpoints(&config, &contexts, &limits);
    // A bridge reads its TLS files again at each connection (a renewed certificate is used
    // at the next reconnect); a file that cannot be used stops the start.
    for bridge in &config.bridges {
        if let Some(tls) = &bridge.tls {
            crate::tls::client_config(tls)
                .map_err(|source| StartError::BridgeTls { name: bridge.name.clone(), source })?;
            if tls.insecure {
                tracing::warn!(
                    bridge = %bridge.name,
                    "bridge_insecure true: the peer's certificate is not checked against the \
                     host name dialled; anyone holding a certificate from the CA can pose as it"
                );
            }
        }
    }
    for endpoint in &endpoints {
        probe_free(endpoint.tcp_addr())?;
    }
    let addrs: Vec<String> = endpoints.iter().chain(&unix_endpoints).map(Endpoint::name).collect();
    let pin = worker_count <= cpus.len();
    if !pin {
        tracing::warn!(
            worker_count,
            cpus = cpus.len(),
            "more shards than usable CPUs: not pinning"
        );
    }
    tracing::info!(
        shards = worker_count,
        bridge_shards = bridge_shard_count,
        cpus = cpus.len(),
        listeners = ?addrs,
        "culex {} starting",
        env!("CARGO_PKG_VERSION")
    );
    // Every worker binds its own socket per address (SO_REUSEPORT spreads connections).
    let mut sockets = Vec::with_capacity(worker_count);
    for worker in 0..worker_count {
        sockets.push(bind_all(&endpoints, worker == 0)?);
    }
    // A Unix socket has no SO_REUSEPORT: one socket, accepted on by the first worker.
    for endpoint in unix_endpoints {
        let Bind::Unix(path) = &endpoint.bind else { continue };
        let socket = listen_unix(path)?;
        if let Some(first) = sockets.first_mut() {
            first.push((endpoint, socket));
        }
    }
    // Shard ids are only known once the mesh is joined: each executor takes its own part.
    let recoveries: Arc<Mutex<Vec<Option<ShardRecovery>>>> =
        Arc::new(Mutex::new(if config.persistence {
            recovery::recover(&config, shard_count)?.into_iter().map(Some).collect()
        } else {
            Vec::new()
        }));
    let metrics = match config.metrics_listener {
        Some(addr) => Some(
            crate::sys::metrics::bind(addr)
                .map_err(|source| StartError::Listen { addr, source })?,
        ),
        None => None,
    };
    // As Mosquitto: sockets, store and log files are open; now give root up.
    if let Some(user) = &config.user {
        drop_privileges(user)?;
    }
    let mut sockets = sockets.into_iter();
    let depth = ring_depth();
    if depth < RING_DEPTH {
        tracing::info!(
            depth,
            "the memlock limit keeps io_uring rings small, which costs CPU with many \
             connections (LimitMEMLOCK=infinity in the systemd unit lifts it)"
        );
    }
    let counters: Arc<[Arc<ShardCounters>]> = (0..shard_count).map(|_| Arc::default()).collect();
    let bridge_homes: Vec<reload::BridgeHome> = config
        .bridges
        .iter()
        .enumerate()
        .map(|(nth, b)| reload::BridgeHome {
            name: b.name.clone(),
            shard: worker_count + nth % bridge_shard_count.max(1),
            counters: Arc::new(BridgeCounters::new(&b.name)),
        })
        .collect();
    let (senders, inboxes) = reload::inboxes(shard_count);
    let mesh = MeshBuilder::<Batch, _>::full(shard_count, BATCHES_IN_FLIGHT_MAX);
    let mut handles = Vec::with_capacity(shard_count);
    let mut inboxes = inboxes.into_iter();
    for index in 0..shard_count {
        // Bridge shards get CPUs the workers left free, else run where the kernel puts them.
        let placement = match cpus.get(index) {
            Some(cpu) if pin => Placement::Fixed(*cpu),
            _ => Placement::Unbound,
        };
        let role = if index < worker_count {
            Role::Worker(sockets.next().unwrap_or_default())
        } else {
            let bridges = config.bridges.iter().zip(&bridge_homes);
            let here = bridges.filter(|(_, home)| home.shard == index);
            Role::Bridges(here.map(|(b, home)| (b.clone(), home.counters.clone())).collect())
        };
        let inbox = inboxes.next().unwrap_or_else(|| crossbeam_channel::unbounded().1);
        let config = config.clone();
        let mesh = mesh.clone();
        let recoveries = recoveries.clone();
        let counters = counters.clone();
        let name = match role {
            Role::Worker { .. } => format!("culex-shard-{index}"),
            Role::Bridges(_) => format!("culex-bridge-{}", index - worker_count),
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&name)
            .io_memory(IO_MEMORY_BYTES)
            .ring_depth(depth)
            .spawn(move || {
                let started = Started { inbox, spawn_bridge };
                run_shard(config, role, mesh, shard_count, recoveries, counters, started)
            })
            .map_err(|e| StartError::Executor(e.to_string()))?;
        handles.push(handle);
    }
    reload::install(reload::Running {
        config,
        worker_count,
        inboxes: senders,
        bridges: bridge_homes,
        credentials,
        server_tls,
        connection_limits: limits,
    });
    if let Some(listener) = metrics {
        crate::sys::metrics::serve(
            listener,
            counters.clone(),
            reload::bridge_counters,
            notify::all_serving,
        )
        .map_err(|e| StartError::Executor(format!("metrics listener: {e}")))?;
    }
    notify::supervise(counters);
    // An executor that fails leaves the others waiting for it in the mesh, so wait for the
    // first one to end, whichever it is, rather than for each in turn.
    let (ended, first_end) = std::sync::mpsc::channel();
    for handle in handles {
        let ended = ended.clone();
        std::thread::spawn(move || {
            let result = match handle.join() {
                Ok(result) => result,
                Err(error) => Err(StartError::Executor(error.to_string())),
            };
            let _ = ended.send(result);
        });
    }
    first_end.recv().unwrap_or(Ok(()))
}

/// Creates and closes one small io_uring: the kernel may lack it, forbid it
/// (`kernel.io_uring_disabled`), or a seccomp profile may refuse it.
fn check_io_uring() -> Result<(), StartError> {
    // struct io_uring_params is 120 bytes; zeroed asks for nothing special.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(2) with a valid pointer to a zeroed params struct.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        if let (Some(libc::ENOMEM), Some(limit)) = (error.raw_os_error(), memlock_limit()) {
            return Err(memlock_too_low(limit));
        }
        return Err(StartError::IoUringUnavailable(error));
    }
    // SAFETY: `fd` is the ring just created, owned here.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Raises the soft memlock limit to the hard one: glommio refuses an executor below 512 KiB,
/// and registering its buffers needs more (at 512 KiB exactly, two shards could not register
/// theirs). Refuses to start, naming the fix, when even the hard limit is below the minimum.
fn ensure_memlock() -> Result<(), StartError> {
    let Some(limit) = memlock_limit() else {
        return Ok(()); // glommio will say what it finds
    };
    if limit.rlim_max < MEMLOCK_NEEDED_BYTES {
        return Err(memlock_too_low(limit));
    }
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(());
    }
    let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
    // SAFETY: setrlimit(2) with the soft limit equal to the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } != 0 {
        if limit.rlim_cur >= MEMLOCK_NEEDED_BYTES {
            return Ok(());
        }
        return Err(memlock_too_low(limit));
    }
    tracing::info!(
        from_kib = limit.rlim_cur / 1024,
        to_kib = limit.rlim_max / 1024,
        "raised the soft memlock limit to the hard limit"
    );
    Ok(())
}

/// What a shard gets besides its configuration and role: its inbox of reload orders, and how
/// to start a bridge.
struct Started {
    inbox: crossbeam_channel::Receiver<reload::Order>,
    spawn_bridge: SpawnBridge,
}

async fn run_shard(
    config: Config,
    role: Role,
    mesh: MeshBuilder<Batch, glommio::channels::channel_mesh::Full>,
    shard_count: usize,
    recoveries: Arc<Mutex<Vec<Option<ShardRecovery>>>>,
    counters: Arc<[Arc<ShardCounters>]>,
    started: Started,
) -> Result<(), StartError> {
    let (senders, receivers) =
        mesh.join().await.map_err(|_| StartError::Executor("mesh join failed".into()))?;
    // Shard ids are mesh peer ids, so every shard agrees on who is who.
    let id = ShardId::new(senders.peer_id());
    let recovery = recoveries.lock().ok().and_then(|mut all| all.get_mut(id.index())?.take());
    let holds = config.persistence_sync == PersistenceSync::Ack;
    let journal = recovery.as_ref().map(|r| Journal::new(r.journal, holds));
    // `persistence_sync interval`: a durable commit at least this often, the others not synced.
    let sync_every = (!holds).then_some(config.autosave_interval);
    // The sweep samples levels for whoever reads them: `$SYS` (while `sys_interval` is not
    // 0), the metrics listener, systemd's STATUS lines.
    let levels_read = config.metrics_listener.is_some() || notify::Notifier::from_env().is_some();
    let shard =
        Shard::new(id, shard_count, Rc::new(config), journal.clone(), counters[id.index()].clone());
    let shard = Rc::new(RefCell::new(shard));
    if let (Some(recovery), Some(journal)) = (recovery, journal) {
        shard.borrow_mut().restore(recovery.restored);
        let store = recovery.store;
        glommio::spawn_local(persist(shard.clone(), journal, store, sync_every)).detach();
    }
    mesh::spawn_receivers(&shard, receivers);
    glommio::spawn_local(mesh::run_flusher(shard.clone(), senders)).detach();
    let Started { inbox, spawn_bridge } = started;
    glommio::spawn_local(sweep(shard.clone(), levels_read, inbox, spawn_bridge)).detach();
    if id.index() == 0 {
        glommio::spawn_local(crate::sys::publish_periodically(shard.clone(), counters)).detach();
        if let Some(lines) = crate::logging::topic_lines() {
            glommio::spawn_local(crate::sys::publish_log_lines(shard.clone(), lines)).detach();
        }
    }
    let endpoints = match role {
        Role::Worker(endpoints) => endpoints,
        Role::Bridges(bridges) => {
            for (bridge, counters) in bridges {
                spawn_bridge(shard.clone(), Rc::new(bridge), counters);
            }
            notify::shard_serving();
            // The shard stays in the mesh for the process's life, whatever its bridges do.
            futures_lite::future::pending::<()>().await;
            return Ok(());
        }
    };
    let mut accepting = Vec::new();
    for (endpoint, socket) in endpoints {
        // SAFETY: a bound, listening socket whose ownership moves to glommio. For a Unix
        // socket listener too: glommio's `UnixListener` can only bind itself (after `user` has
        // dropped root), and its TCP listener's accept is io_uring's accept, which takes any
        // listening stream socket; `accept` makes each accepted one a `UnixStream`.
        let listener = unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) };
        accepting.push(glommio::spawn_local(accept(shard.clone(), listener, endpoint)));
    }
    notify::shard_serving();
    for task in accepting {
        task.await;
    }
    Ok(())
}

/// The shard's store task: commits what the journal collected, one transaction per batch on
/// the shard's blocking thread (the executor never waits on the disk), then releases what
/// waited for it. Every commit is durable, or with `sync_every` (`persistence_sync interval`)
/// only one at least that often. A commit that fails stops the broker: acknowledging what
/// cannot be stored would break the promise persistence makes.
async fn persist(
    shard: Rc<RefCell<Shard>>,
    journal: SharedJournal,
    store: Arc<ShardStore>,
    sync_every: Option<Duration>,
) {
    let wake = journal.borrow().wake();
    // Since when changes are written but not synced (`persistence_sync interval` only).
    let mut unsynced_since: Option<Instant> = None;
    // Released by the next durable commit.
    let mut waiting = Vec::new();
    loop {
        match (sync_every, unsynced_since) {
            (Some(every), Some(since)) => {
                let left = (since + every).saturating_duration_since(Instant::now());
                futures_lite::future::or(wake.wait(), glommio::timer::sleep(left)).await;
            }
            _ => wake.wait().await,
        }
        let (ops, waiters) = journal.borrow_mut().take();
        waiting.extend(waiters);
        let durable = match sync_every {
            None => true,
            Some(every) => unsynced_since.is_some_and(|since| since.elapsed() >= every),
        };
        if !ops.is_empty() || (durable && unsynced_since.is_some()) {
            let store = store.clone();
            let changes = ops.len() as u64;
            let began = Instant::now();
            let written =
                glommio::executor().spawn_blocking(move || store.apply(ops, durable)).await;
            let counters = &shard.borrow().counters;
            counters.commit_micros.observe(began.elapsed().as_micros() as u64);
            counters.commit_changes.observe(changes);
            if let Err(error) = written {
                tracing::error!("{error}: stopping, since nothing unstored may be acknowledged");
                std::process::exit(1);
            }
            if !durable && unsynced_since.is_none() {
                unsynced_since = Some(Instant::now());
            }
        }
        if durable {
            unsynced_since = None;
            shard.borrow_mut().committed(std::mem::take(&mut waiting));
        } else if !waiting.is_empty() && unsynced_since.is_none() {
            unsynced_since = Some(Instant::now());
        }
    }
}

/// One socket every worker shard opens (a Unix socket: the first worker), with what its
/// listener asks of it.
#[derive(Clone)]
struct Endpoint {
    bind: Bind,
    /// `bind_interface`.
    interface: Option<String>,
    /// `max_connections` and `max_connection_rate`, counted across shards and the listener's
    /// addresses.
    limit: Arc<ConnectionLimit>,
    /// `set_tcp_nodelay`.
    nodelay: bool,
    /// What the listener applies to the clients it accepts, and its TLS.
    listening: Listening,
}

/// The sockets of every listener; `limits` are the listeners' `max_connections`, in order.
fn endpoints(
    config: &Config,
    contexts: &[Listening],
    limits: &[Arc<ConnectionLimit>],
) -> Vec<Endpoint> {
    let mut endpoints = Vec::new();
    let listeners = config.listeners.iter().zip(contexts).zip(limits);
    for ((listener, context), limit) in listeners {
        for bind in listener.bind_addresses(config.local_only) {
            endpoints.push(Endpoint {
                bind: Bind::Tcp(bind),
                interface: listener.bind_interface.clone(),
                limit: limit.clone(),
                nodelay: config.tcp_nodelay,
                listening: context.clone(),
            });
        }
    }
    endpoints
}

/// The Unix socket listeners (`listener 0 PATH`).
fn unix_endpoints(
    config: &Config,
    contexts: &[Listening],
    limits: &[Arc<ConnectionLimit>],
) -> Vec<Endpoint> {
    let listeners = config.listeners.iter().zip(contexts).zip(limits);
    let unix =
        listeners.filter_map(|((l, context), limit)| Some((l.unix_path.clone()?, context, limit)));
    unix.map(|(path, context, limit)| Endpoint {
        bind: Bind::Unix(path),
        interface: None,
        limit: limit.clone(),
        nodelay: false,
        listening: context.clone(),
    })
    .collect()
}

/// Where an endpoint listens.
#[derive(Clone)]
enum Bind {
    Tcp(BindAddress),
    /// `listener 0 PATH`.
    Unix(std::path::PathBuf),
}

impl Endpoint {
    /// The TCP address it binds; for a Unix socket, none (0.0.0.0:0).
    fn tcp_addr(&self) -> SocketAddr {
        match &self.bind {
            Bind::Tcp(bind) => bind.addr,
            Bind::Unix(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    /// As the start-up line shows it.
    fn name(&self) -> String {
        match &self.bind {
            Bind::Tcp(bind) => bind.addr.to_string(),
            Bind::Unix(path) => format!("unix:{}", path.display()),
        }
    }
}

/// Binds a Unix socket listener. A socket file left by a broker that is gone is replaced;
/// one that a live process answers on, or a file that is not a socket, stops the start.
fn listen_unix(path: &std::path::Path) -> Result<Socket, StartError> {
    use std::os::unix::fs::FileTypeExt;
    let failed = |source: std::io::Error| StartError::ListenUnix { path: path.into(), source };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(failed(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(failed(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process accepts connections on it (is another broker running?)",
            )));
        }
        std::fs::remove_file(path).map_err(failed)?;
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(failed)?;
    let addr = socket2::SockAddr::unix(path).map_err(failed)?;
    socket.bind(&addr).map_err(failed)?;
    socket.listen(LISTEN_BACKLOG).map_err(failed)?;
    Ok(socket)
}

/// Mosquitto's `max_connections` and Culex's `max_connection_rate` for one listener, shared by
/// every shard that accepts for it (atomics: no lock on the accept path).
pub(crate) struct ConnectionLimit {
    max: AtomicUsize,
    open: AtomicUsize,
    /// Nanoseconds between connections at the `max_connection_rate` (0: no rate limit).
    interval_ns: AtomicU64,
    /// When the listener's allowance is whole again, in nanoseconds since `epoch`: each
    /// connection moves it `interval_ns` on (a generic cell rate algorithm), and a connection
    /// that would move it more than a second ahead of now is refused. So a second's worth of
    /// connections may come at once, and then one every interval.
    whole_at_ns: AtomicU64,
    epoch: Instant,
}

/// Why a listener turned a connection away.
enum Denied {
    /// `max_connections`.
    Full,
    /// `max_connection_rate`.
    TooFast,
}

impl ConnectionLimit {
    /// The connections are counted even without a limit, so that a reload may set one.
    fn new(listener: &Listener) -> Self {
        let limit = ConnectionLimit {
            max: AtomicUsize::new(usize::MAX),
            open: AtomicUsize::new(0),
            interval_ns: AtomicU64::new(0),
            whole_at_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        };
        limit.set(listener);
        limit
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// A reload's new limits: connections beyond `max_connections` stay, new ones wait for
    /// room.
    pub(crate) fn set(&self, listener: &Listener) {
        self.max.store(listener.max_connections.unwrap_or(usize::MAX), Ordering::Relaxed);
        let interval = match listener.max_connection_rate {
            0 => 0,
            rate => (NANOS_PER_SECOND / u64::from(rate)).max(1),
        };
        self.interval_ns.store(interval, Ordering::Relaxed);
    }

    /// A place for one more connection, held until dropped.
    fn admit(self: &Arc<Self>) -> Result<ConnectionSlot, Denied> {
        if !self.within_rate() {
            return Err(Denied::TooFast);
        }
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max() {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Denied::Full);
        }
        Ok(ConnectionSlot(self.clone()))
    }

    /// Takes one connection's share of the rate, if the last second's burst left one.
    fn within_rate(&self) -> bool {
        let interval = self.interval_ns.load(Ordering::Relaxed);
        if interval == 0 {
            return true;
        }
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut whole_at = self.whole_at_ns.load(Ordering::Relaxed);
        loop {
            let next = whole_at.max(now).saturating_add(interval);
            if next - now > NANOS_PER_SECOND {
                return false;
            }
            match self.whole_at_ns.compare_exchange_weak(
                whole_at,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => whole_at = current,
            }
        }
    }
}

const NANOS_PER_SECOND: u64 = 1_000_000_000;

struct ConnectionSlot(Arc<ConnectionLimit>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker's listening sockets. An optional address that cannot be bound (IPv6 on a host
/// without it) is left out, with a warning when `report`.
fn bind_all(endpoints: &[Endpoint], report: bool) -> Result<Vec<(Endpoint, Socket)>, StartError> {
    let mut sockets = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let addr = endpoint.tcp_addr();
        let optional = matches!(&endpoint.bind, Bind::Tcp(bind) if bind.optional);
        match listen(endpoint) {
            Ok(socket) => sockets.push((endpoint.clone(), socket)),
            Err(error) if optional => {
                if report {
                    tracing::warn!(%addr, %error, "IPv6 unavailable; listening on IPv4 only");
                }
            }
            Err(error) => return Err(StartError::Listen { addr, source: error }),
        }
    }
    Ok(sockets)
}

/// Mosquitto's `user`: started as root, the broker continues as this user (its group, and its
/// supplementary groups). Not root: nothing to do, as in Mosquitto.
fn drop_privileges(user: &str) -> Result<(), StartError> {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 || user == "root" {
        return Ok(());
    }
    let failed = |what: &str| {
        StartError::User(format!("{what} for user `{user}`: {}", std::io::Error::last_os_error()))
    };
    let name = std::ffi::CString::new(user)
        .map_err(|_| StartError::User(format!("invalid user `{user}`")))?;
    // SAFETY: getpwnam(3) with a valid C string; the record is read before any other call to it
    // (start-up is single-threaded here).
    let passwd = unsafe { libc::getpwnam(name.as_ptr()) };
    if passwd.is_null() {
        return Err(StartError::User(format!("user `{user}` does not exist")));
    }
    // SAFETY: non-null, as just checked.
    let (uid, gid) = unsafe { ((*passwd).pw_uid, (*passwd).pw_gid) };
    // SAFETY: plain system calls with values from the password database. The group goes
    // first: once the user id changes, changing groups is no longer allowed. glibc applies
    // them to every thread of the process.
    unsafe {
        if libc::setgid(gid) != 0 {
            return Err(failed("setgid"));
        }
        if libc::initgroups(name.as_ptr(), gid) != 0 {
            return Err(failed("initgroups"));
        }
        if libc::setuid(uid) != 0 {
            return Err(failed("setuid"));
        }
    }
    tracing::info!(user, uid, gid, "dropped root privileges");
    Ok(())
}

/// Binds a listening socket. glommio's own `bind` sets SO_REUSEPORT only; without
/// SO_REUSEADDR too, the TIME_WAIT sockets Culex leaves behind would stop a Mosquitto (or any
/// SO_REUSEADDR server) started on the same port right after it, which is what a migration does.
fn listen(endpoint: &Endpoint) -> std::io::Result<Socket> {
    let addr = endpoint.tcp_addr();
    let domain = if addr.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if let Some(interface) = &endpoint.interface {
        socket.bind_device(Some(interface.as_bytes())).map_err(|error| {
            std::io::Error::new(error.kind(), format!("bind_interface {interface}: {error}"))
        })?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

async fn accept(shard: Rc<RefCell<Shard>>, listener: TcpListener, endpoint: Endpoint) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let (stream, peer) = match &endpoint.bind {
                    Bind::Tcp(_) => {
                        let _ = stream.set_nodelay(endpoint.nodelay);
                        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                        (transport::Transport::Tcp(stream), peer)
                    }
                    Bind::Unix(path) => match unix_stream(stream) {
                        Ok(stream) => {
                            (transport::Transport::Unix(stream), format!("unix:{}", path.display()))
                        }
                        Err(error) => {
                            tracing::warn!(%error, "accept on a Unix socket failed");
                            continue;
                        }
                    },
                };
                let slot = match endpoint.limit.admit() {
                    Ok(slot) => slot,
                    // As Mosquitto: closed at once, before any MQTT.
                    Err(Denied::Full) => {
                        let refusal = crate::broker::counters::Refusal::MaxConnections;
                        shard.borrow().counters.count_refusal(refusal);
                        let max = endpoint.limit.max();
                        tracing::info!(%peer, max, "denied: max_connections exceeded");
                        continue;
                    }
                    // A storm is refused as cheaply as it can be: no log line each (the
                    // refusals are counted, `culex_connections_refused_total`).
                    Err(Denied::TooFast) => {
                        let refusal = crate::broker::counters::Refusal::ConnectionRate;
                        shard.borrow().counters.count_refusal(refusal);
                        tracing::debug!(%peer, "denied: max_connection_rate exceeded");
                        continue;
                    }
                };
                let listening = endpoint.listening.clone();
                glommio::spawn_local(connection::serve(
                    shard.clone(),
                    stream,
                    peer,
                    listening,
                    slot,
                ))
                .detach();
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The connection a Unix socket listener accepted, as what it is: accepted through glommio's
/// TCP listener (see `run_shard`), its descriptor is handed to a `UnixStream`.
fn unix_stream(accepted: glommio::net::TcpStream) -> std::io::Result<glommio::net::UnixStream> {
    use std::os::fd::AsRawFd;
    // SAFETY: dup(2) of a descriptor `accepted` owns; the copy is owned by the UnixStream, and
    // `accepted` closes only its own when dropped.
    let fd = unsafe { libc::dup(accepted.as_raw_fd()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(accepted);
    // SAFETY: `fd` is a connected Unix stream socket owned from here on.
    Ok(unsafe { glommio::net::UnixStream::from_raw_fd(fd) })
}

/// The shard's periodic chores: shutdown, keep alives, session expiry, and with `$SYS` its
/// levels (sampled here so that shard 0's publication is at most a sweep behind).
async fn sweep(
    shard: Rc<RefCell<Shard>>,
    levels_read: bool,
    inbox: crossbeam_channel::Receiver<reload::Order>,
    spawn_bridge: SpawnBridge,
) {
    loop {
        glommio::timer::sleep(KEEP_ALIVE_SWEEP).await;
        for order in inbox.try_iter() {
            match order {
                reload::Order::Configure(config) => {
                    shard.borrow_mut().reconfigure(Rc::new(Config::clone(&config)));
                }
                reload::Order::StopBridge { local_id, how } => {
                    shard.borrow_mut().stop_bridge(&local_id, how);
                }
                reload::Order::StartBridge(bridge, counters) => {
                    spawn_bridge(shard.clone(), Rc::new(*bridge), counters);
                }
            }
        }
        let mut shard = shard.borrow_mut();
        if SHUTTING_DOWN.load(Ordering::Relaxed) {
            shard.close_all(Close::ServerShuttingDown);
            return;
        }
        shard.counters.sweeps.add(1);
        let now = Instant::now();
        shard.tend_connections(now);
        shard.expire_sessions(now);
        if levels_read || shard.config().sys_interval > 0 {
            shard.sample_levels();
        }
        counters::give_back_free_pages();
        if let Some(limit) = shard.config().memory_limit {
            counters::check_memory_limit(limit);
        }
    }
}

/// glommio binds every listener with SO_REUSEPORT, so a second broker of the same user would
/// silently share the port. Refuse to start when something keeps accepting connections there,
/// as Mosquitto does. Two things that are not a live broker are let through: TIME_WAIT sockets
/// of a broker just restarted (a plain probe bind trips over those an older glommio listener
/// left without SO_REUSEADDR), and the listener of a broker just killed, which lives on for a
/// moment while the kernel tears its io_uring rings down.
fn probe_free(addr: SocketAddr) -> Result<(), StartError> {
    for _ in 0..PROBE_ATTEMPTS {
        if !accepts_connections(addr) {
            return Ok(());
        }
        std::thread::sleep(PROBE_TIMEOUT);
    }
    Err(StartError::AddressInUse(addr))
}

fn accepts_connections(addr: SocketAddr) -> bool {
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    std::net::TcpStream::connect_timeout(&target, PROBE_TIMEOUT).is_ok()
}

fn memlock_limit() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes into `limit`.
    (unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0).then_some(limit)
}

fn memlock_too_low(limit: libc::rlimit) -> StartError {
    StartError::MemlockTooLow {
        soft_kib: limit.rlim_cur / 1024,
        hard_kib: limit.rlim_max / 1024,
        needed_kib: MEMLOCK_NEEDED_BYTES / 1024,
    }
}

/// CPUs this process may run on. `Placement::Fixed` panics for a CPU outside the affinity mask
/// (cgroups, taskset), so shards are pinned only to these.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is valid for `size` bytes; pid 0 is this thread.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    // SAFETY: CPU_ISSET reads the set within CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|cpu| unsafe { libc::CPU_ISSET(*cpu, &set) }).collect()
}
