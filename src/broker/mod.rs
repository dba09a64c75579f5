//! The thread-per-core broker: one glommio executor per shard, each with its own listeners
//! (SO_REUSEPORT), connections, sessions and subscription trie, joined by a mesh of bounded SPSC
//! queues. This module only starts and wires shards; what a shard decides is in `shard`.

mod connection;
mod mesh;
mod session;
mod shard;
mod signal;
pub mod topic;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use thiserror::Error;

use crate::config::Config;
pub use mesh::SHARDS_MAX;
use mesh::{Batch, BATCHES_IN_FLIGHT_MAX};
use shard::Shard;

/// io_uring memory per executor. glommio's default (10 MiB in three rings) exceeds the 8 MiB
/// memlock limit that unprivileged users and containers get; 64 KiB with 128-entry rings
/// started 48 executors in 16 processes on our machines (docs/ARCHITECTURE.md, glommio).
const IO_MEMORY_BYTES: usize = 64 << 10;
const RING_DEPTH: usize = 128;

/// How often each shard checks keep-alive deadlines.
const KEEP_ALIVE_SWEEP: Duration = Duration::from_millis(500);

#[derive(Debug, Error)]
pub enum StartError {
    #[error("address {0} is already in use (is another broker running?)")]
    AddressInUse(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("{0} shards requested; at most {SHARDS_MAX} are supported")]
    TooManyShards(usize),
    #[error("cannot start shard executor: {0}")]
    Executor(String),
}

/// Starts every shard and blocks until they stop (they stop only with the process).
pub fn run(config: Config) -> Result<(), StartError> {
    let cpus = allowed_cpus();
    let shard_count = config.shards.unwrap_or(cpus.len().max(1));
    if shard_count > SHARDS_MAX {
        return Err(StartError::TooManyShards(shard_count));
    }
    let addrs: Vec<SocketAddr> =
        config.listeners.iter().flat_map(|l| l.socket_addrs(config.local_only)).collect();
    for addr in &addrs {
        probe_free(*addr)?;
    }
    let pin = shard_count <= cpus.len();
    if !pin {
        tracing::warn!(shard_count, cpus = cpus.len(), "more shards than usable CPUs: not pinning");
    }
    tracing::info!(
        shards = shard_count,
        cpus = cpus.len(),
        listeners = ?addrs,
        "culex {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let mesh = MeshBuilder::<Batch, _>::full(shard_count, BATCHES_IN_FLIGHT_MAX);
    let mut handles = Vec::with_capacity(shard_count);
    for index in 0..shard_count {
        let placement = match cpus.get(index) {
            Some(cpu) if pin => Placement::Fixed(*cpu),
            _ => Placement::Unbound,
        };
        let config = config.clone();
        let addrs = addrs.clone();
        let mesh = mesh.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("culex-shard-{index}"))
            .io_memory(IO_MEMORY_BYTES)
            .ring_depth(RING_DEPTH)
            .spawn(move || run_shard(config, addrs, mesh, shard_count))
            .map_err(|e| StartError::Executor(e.to_string()))?;
        handles.push(handle);
    }
    for handle in handles {
        if let Ok(Err(error)) = handle.join() {
            return Err(error);
        }
    }
    Ok(())
}

async fn run_shard(
    config: Config,
    addrs: Vec<SocketAddr>,
    mesh: MeshBuilder<Batch, glommio::channels::channel_mesh::Full>,
    shard_count: usize,
) -> Result<(), StartError> {
    let (senders, receivers) =
        mesh.join().await.map_err(|_| StartError::Executor("mesh join failed".into()))?;
    // Shard ids are mesh peer ids, so every shard agrees on who is who.
    let id = senders.peer_id();
    let shard = Rc::new(RefCell::new(Shard::new(id, shard_count, Rc::new(config))));
    mesh::spawn_receivers(&shard, receivers);
    glommio::spawn_local(mesh::run_flusher(shard.clone(), senders)).detach();
    glommio::spawn_local(sweep_keep_alives(shard.clone())).detach();
    let mut accepting = Vec::new();
    for addr in addrs {
        let listener =
            TcpListener::bind(addr).map_err(|e| StartError::Listen { addr, source: e.into() })?;
        accepting.push(glommio::spawn_local(accept(shard.clone(), listener)));
    }
    for task in accepting {
        task.await;
    }
    Ok(())
}

async fn accept(shard: Rc<RefCell<Shard>>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                glommio::spawn_local(connection::serve(shard.clone(), stream)).detach();
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn sweep_keep_alives(shard: Rc<RefCell<Shard>>) {
    loop {
        glommio::timer::sleep(KEEP_ALIVE_SWEEP).await;
        shard.borrow_mut().expire_keep_alives(Instant::now());
    }
}

/// glommio binds every listener with SO_REUSEPORT, so a second broker would silently share the
/// port. A plain bind first (no SO_REUSEPORT) refuses a port that is taken, as Mosquitto does.
fn probe_free(addr: SocketAddr) -> Result<(), StartError> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(StartError::AddressInUse(addr)),
        Err(source) => Err(StartError::Listen { addr, source }),
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
