//! What a shard's event loop costs per message, apart from any MQTT: one thread echoes 64-byte
//! messages on N connections at a modest, steady rate, and its CPU per message is measured for
//! three loops in turn:
//!
//! - `glommio`: a glommio executor with a task per connection (as each Culex shard runs);
//! - `uring`: one io_uring with a multishot poll per socket, reads and writes as system calls;
//! - `epoll`: one level-triggered epoll set, as Mosquitto waits.
//!
//! The server runs on CPU 0 and the client on CPU 1, each a process of its own (this example
//! runs itself as the server). Loopback only; every run ends after `--seconds`.
//!
//!   cargo run --release -p culex-loadtest --example runtime_echo -- [CONNECTIONS] [RATE] [SECONDS]
//!
//! docs/ARCHITECTURE.md ("The fleet's targets") gives the figures it measured.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const LOOPS: [&str; 3] = ["glommio", "uring", "epoll"];
const MESSAGE: [u8; 64] = [7; 64];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        let port = args[2].parse().expect("port");
        return match args[1].as_str() {
            "glommio" => serve_glommio(port),
            "uring" => serve_uring(port),
            "epoll" => serve_epoll(port),
            other => panic!("no loop called {other}"),
        };
    }
    let number =
        |i: usize, default: u64| args.get(i).map_or(default, |a| a.parse().expect("a number"));
    let (connections, rate, seconds) = (number(0, 2000) as usize, number(1, 10_000), number(2, 5));
    println!("{connections} connections, {rate} messages/s in all, {seconds} s per loop");
    println!("{:<8} {:>10} {:>10} {:>12}", "loop", "sent", "echoed", "cpu us/msg");
    for (i, name) in LOOPS.iter().enumerate() {
        let port = free_port();
        let server = Server::start(name, port);
        let outcome = drive(port, connections, rate, Duration::from_secs(seconds), server.0.id());
        println!(
            "{name:<8} {:>10} {:>10} {:>12.1}",
            outcome.sent,
            outcome.echoed,
            1e6 * outcome.server_cpu_s / outcome.sent as f64
        );
        drop(server);
        if i + 1 < LOOPS.len() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The server process, killed when dropped.
struct Server(Child);

impl Server {
    fn start(name: &str, port: u16) -> Server {
        let exe = std::env::current_exe().expect("this example's path");
        let child = Command::new(exe)
            .args(["serve", name, &port.to_string()])
            .spawn()
            .expect("the server process");
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{name} did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).expect("a free port").port()
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and the call only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// User and system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the server's stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a stat line") + 2..].split(' ').collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

struct Outcome {
    sent: u64,
    echoed: u64,
    server_cpu_s: f64,
}

/// Sends one message every 1/`rate` s, to each connection in turn, and reads echoes as they
/// come back (each connection is read once a round, before its buffer could fill).
fn drive(port: u16, connections: usize, rate: u64, span: Duration, server: u32) -> Outcome {
    pin_to(1);
    let mut streams: Vec<TcpStream> = (0..connections)
        .map(|_| {
            let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            stream.set_nodelay(true).expect("TCP_NODELAY");
            stream.set_nonblocking(true).expect("non-blocking");
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let gap = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut buf = [0u8; 4096];
    let cpu_before = cpu_seconds(server);
    let start = Instant::now();
    let (mut sent, mut echoed, mut next) = (0u64, 0u64, start);
    while start.elapsed() < span {
        let i = sent as usize % connections;
        streams[i].write_all(&MESSAGE).expect("a send");
        sent += 1;
        if let Ok(n) = streams[(i + connections / 2) % connections].read(&mut buf) {
            echoed += (n / MESSAGE.len()) as u64;
        }
        next += gap;
        while Instant::now() < next {
            std::hint::spin_loop();
        }
    }
    let server_cpu_s = cpu_seconds(server) - cpu_before;
    Outcome { sent, echoed, server_cpu_s }
}

/// Echoes what one readiness brought; `false` once the peer is gone.
fn echo_once(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) => false,
        Ok(n) => stream.write_all(&buf[..n]).is_ok(),
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

fn accept_all(listener: &TcpListener, mut each: impl FnMut(TcpStream)) {
    while let Ok((stream, _)) = listener.accept() {
        stream.set_nonblocking(true).expect("non-blocking");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        each(stream);
    }
}

fn listen(port: u16) -> TcpListener {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    listener
}

fn serve_glommio(port: u16) {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    // Ring depth and I/O memory as a Culex shard run by root has them (`runtime::ring_depth`).
    glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
        .ring_depth(4096)
        .io_memory(64 << 10)
        .spawn(move || async move {
            let listener = glommio::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
            while let Ok(mut stream) = listener.accept().await {
                stream.set_nodelay(true).expect("TCP_NODELAY");
                glommio::spawn_local(async move {
                    let mut buf = [0u8; 256];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                })
                .detach();
            }
        })
        .expect("an executor")
        .join()
        .expect("the executor's end");
}

fn serve_uring(port: u16) {
    use io_uring::{cqueue, opcode, types, IoUring};
    pin_to(0);
    let listener = listen(port);
    let mut ring = IoUring::new(4096).expect("an io_uring");
    let poll = |fd: RawFd| {
        opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(fd as u64)
    };
    let arm = |ring: &mut IoUring, fd: RawFd| {
        // SAFETY: the entry refers to no buffer, only to a descriptor that outlives it.
        unsafe { ring.submission().push(&poll(fd)).expect("room in the ring") }
    };
    arm(&mut ring, listener.as_raw_fd());
    let mut streams = HashMap::new();
    let mut ready = Vec::new();
    loop {
        ring.submit_and_wait(1).expect("io_uring_enter");
        ready.extend(ring.completion().map(|c| (c.user_data() as RawFd, cqueue::more(c.flags()))));
        for (fd, more) in ready.drain(..) {
            if fd == listener.as_raw_fd() {
                accept_all(&listener, |s| {
                    arm(&mut ring, s.as_raw_fd());
                    streams.insert(s.as_raw_fd(), s);
                });
            } else if let Some(stream) = streams.get_mut(&fd) {
                if !echo_once(stream) {
                    streams.remove(&fd);
                    continue;
                }
            }
            // A multishot poll ends on an error or when the ring's completions overflow.
            if !more && (fd == listener.as_raw_fd() || streams.contains_key(&fd)) {
                arm(&mut ring, fd);
            }
        }
    }
}

fn serve_epoll(port: u16) {
    pin_to(0);
    let listener = listen(port);
    // SAFETY: plain system calls on descriptors this function owns.
    let epoll = unsafe { libc::epoll_create1(0) };
    let watch = |fd: RawFd| unsafe {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: fd as u64 };
        libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event);
    };
    watch(listener.as_raw_fd());
    let mut streams = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        // SAFETY: `events` has room for the 256 entries the call may write.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 256, -1) };
        for event in &events[..n.max(0) as usize] {
            let fd = event.u64 as RawFd;
            if fd == listener.as_raw_fd() {
                accept_all(&listener, |s| {
                    watch(s.as_raw_fd());
                    streams.insert(s.as_raw_fd(), s);
                });
            } else if let Some(stream) = streams.get_mut(&fd) {
                if !echo_once(stream) {
                    streams.remove(&fd);
                }
            }
        }
    }
}
