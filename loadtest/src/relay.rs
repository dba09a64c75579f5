//! The baseline: the cheapest "broker" that the load generator can run against, in this process,
//! on loopback. It answers CONNECT and SUBSCRIBE, then forwards each publisher's QoS 0 PUBLISH
//! frames, bytes unchanged, to the subscribers whose filters match (one member per message for a
//! `$share` group), with one thread per connection and no queues, sessions or acknowledgements.
//! Against it, what limits the rate is the load generator and loopback TCP: a broker measured
//! well below it is not held back by the load generator.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use culex::protocol::filter_matches;
use culex::protocol::{
    frame, ConnAck, Frame, Packet, Properties, ProtocolVersion, ReasonCode, SubAck, TopicFilter,
    PACKET_SIZE_MAX,
};

/// How often connection threads waiting to read look at the stop flag.
const POLL: Duration = Duration::from_millis(20);

pub struct Relay {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    stop: AtomicBool,
    subscriptions: Mutex<Vec<Subscription>>,
    connections: Mutex<Vec<JoinHandle<()>>>,
    /// CPU time of the connection threads that have ended.
    cpu_ns: AtomicU64,
}

/// One filter of one subscriber connection.
struct Subscription {
    filter: String,
    /// The `$share` group, if it is a shared subscription (`filter` is then without the prefix).
    group: Option<String>,
    sink: Arc<Sink>,
}

/// A subscriber's socket, written by every publisher thread that forwards to it.
struct Sink {
    id: usize,
    stream: Mutex<TcpStream>,
}

/// Where one topic's messages go.
enum Target {
    One(Arc<Sink>),
    /// A shared group: members in turn.
    Group {
        members: Vec<Arc<Sink>>,
        next: usize,
    },
}

impl Relay {
    /// Listens on a free loopback port.
    pub fn start() -> io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let acceptor = {
            let state = state.clone();
            std::thread::spawn(move || accept_loop(&listener, &state))
        };
        Ok(Relay { addr, state, acceptor: Some(acceptor) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, waits for every connection to end, and returns the CPU seconds its
    /// connection threads used.
    pub fn stop(mut self) -> f64 {
        self.state.stop.store(true, Ordering::Release);
        // Wakes the acceptor, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let connections = std::mem::take(&mut *self.state.connections.lock().expect("no panics"));
        for connection in connections {
            let _ = connection.join();
        }
        self.state.cpu_ns.load(Ordering::Acquire) as f64 / 1e9
    }
}

fn accept_loop(listener: &TcpListener, state: &Arc<State>) {
    loop {
        let accepted = listener.accept();
        if state.stop.load(Ordering::Acquire) {
            return;
        }
        match accepted {
            Ok((stream, _)) => {
                let state_for_thread = state.clone();
                let thread = std::thread::spawn(move || {
                    if let Err(error) = serve(stream, &state_for_thread) {
                        if error.kind() != io::ErrorKind::ConnectionReset {
                            eprintln!("relay: connection ended: {error}");
                        }
                    }
                    state_for_thread.cpu_ns.fetch_add(thread_cpu_ns(), Ordering::AcqRel);
                });
                state.connections.lock().expect("no panics").push(thread);
            }
            Err(e) => {
                eprintln!("relay: accept failed: {e}");
                return;
            }
        }
    }
}

/// One connection: the handshake, then subscriptions (a subscriber) or forwarding (a publisher,
/// from its first PUBLISH on).
fn serve(stream: TcpStream, state: &State) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    let mut reader = FrameReader { stream: stream.try_clone()?, buf: BytesMut::new() };
    let Some(Packet::Connect(connect)) = reader.packet(ProtocolVersion::V5, state)? else {
        return Ok(());
    };
    let version = connect.protocol;
    let mut reply = BytesMut::new();
    let accepted = ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    };
    Packet::ConnAck(accepted).encode(version, &mut reply);
    let sink = Arc::new(Sink { id: next_sink_id(), stream: Mutex::new(stream) });
    sink.stream.lock().expect("no panics").write_all(&reply)?;
    loop {
        if !reader.fill_until_frame(state)? {
            return Ok(());
        }
        if reader.buf[0] >> 4 == 3 {
            return forward(&mut reader, state);
        }
        match reader.packet(version, state)? {
            Some(Packet::Subscribe(subscribe)) => {
                let mut subscriptions = state.subscriptions.lock().expect("no panics");
                for (filter, _) in &subscribe.filters {
                    subscriptions.push(subscription(filter, sink.clone()));
                }
                drop(subscriptions);
                let reasons = subscribe.filters.iter().map(|_| ReasonCode::Success).collect();
                reply.clear();
                let properties = Properties::default();
                Packet::SubAck(SubAck { packet_id: subscribe.packet_id, properties, reasons })
                    .encode(version, &mut reply);
                sink.stream.lock().expect("no panics").write_all(&reply)?;
            }
            Some(Packet::PingReq) => {
                reply.clear();
                Packet::PingResp.encode(version, &mut reply);
                sink.stream.lock().expect("no panics").write_all(&reply)?;
            }
            Some(Packet::Disconnect(_)) | None => return Ok(()),
            Some(_) => {}
        }
    }
}

fn subscription(filter: &TopicFilter, sink: Arc<Sink>) -> Subscription {
    match filter.shared() {
        Some(shared) => Subscription {
            filter: shared.filter.to_string(),
            group: Some(shared.group.to_string()),
            sink,
        },
        None => Subscription { filter: filter.as_str().to_string(), group: None, sink },
    }
}

fn next_sink_id() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) as usize
}

/// A publisher: forwards every PUBLISH frame unchanged, batching what one read brought for each
/// subscriber into one write.
fn forward(reader: &mut FrameReader, state: &State) -> io::Result<()> {
    let mut routes: HashMap<Vec<u8>, Vec<Target>> = HashMap::new();
    let mut pending: HashMap<usize, (Arc<Sink>, BytesMut)> = HashMap::new();
    let mut ended = false;
    while !ended {
        while let Some(found) = complete_frame(&reader.buf)? {
            let frame = reader.buf.split_to(found.total_len);
            match frame[0] >> 4 {
                3 if frame[0] & 0b0110 != 0 => {
                    return Err(io::Error::other("the relay forwards QoS 0 only"));
                }
                3 => {
                    let topic = publish_topic(&frame, found)?;
                    let targets =
                        routes.entry(topic.to_vec()).or_insert_with(|| route(state, topic));
                    for target in targets.iter_mut() {
                        let sink = match target {
                            Target::One(sink) => sink,
                            Target::Group { members, next } => {
                                *next = (*next + 1) % members.len();
                                &members[*next]
                            }
                        };
                        let (_, out) = pending
                            .entry(sink.id)
                            .or_insert_with(|| (sink.clone(), BytesMut::new()));
                        out.extend_from_slice(&frame);
                    }
                }
                14 => {
                    ended = true;
                    break;
                }
                _ => {}
            }
        }
        for (sink, out) in pending.values_mut().filter(|(_, out)| !out.is_empty()) {
            sink.stream.lock().expect("no panics").write_all(out)?;
            out.clear();
        }
        ended = ended || !reader.fill(state)?;
    }
    Ok(())
}

/// The subscribers of `topic`, read once per topic and publisher.
fn route(state: &State, topic: &[u8]) -> Vec<Target> {
    let topic = String::from_utf8_lossy(topic);
    let subscriptions = state.subscriptions.lock().expect("no panics");
    let mut targets = Vec::new();
    let mut groups: HashMap<&str, Vec<Arc<Sink>>> = HashMap::new();
    for subscription in subscriptions.iter().filter(|s| filter_matches(&s.filter, &topic)) {
        match &subscription.group {
            Some(group) => groups.entry(group).or_default().push(subscription.sink.clone()),
            None => targets.push(Target::One(subscription.sink.clone())),
        }
    }
    targets.extend(groups.into_values().map(|members| Target::Group { members, next: 0 }));
    targets
}

/// The first frame in `buf`, if it is complete: its length and that of its fixed header.
fn complete_frame(buf: &[u8]) -> io::Result<Option<Frame>> {
    let frame =
        frame(buf, PACKET_SIZE_MAX).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(frame.filter(|f| buf.len() >= f.total_len))
}

/// The topic of a PUBLISH frame.
fn publish_topic(bytes: &[u8], frame: Frame) -> io::Result<&[u8]> {
    let mut rest = &bytes[frame.header_len..];
    if rest.len() < 2 {
        return Err(io::Error::other("PUBLISH without a topic"));
    }
    let len = usize::from(rest.get_u16());
    rest.get(..len).ok_or_else(|| io::Error::other("PUBLISH topic past its end"))
}

struct FrameReader {
    stream: TcpStream,
    buf: BytesMut,
}

impl FrameReader {
    /// Reads once (retrying timeouts until the relay stops); false at end of stream or stop.
    fn fill(&mut self, state: &State) -> io::Result<bool> {
        let mut chunk = [0u8; 64 << 10];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    if state.stop.load(Ordering::Acquire) {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads until a whole frame is buffered; false if the connection ends first.
    fn fill_until_frame(&mut self, state: &State) -> io::Result<bool> {
        while complete_frame(&self.buf)?.is_none() {
            if !self.fill(state)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next packet, decoded; None if the connection ends first.
    fn packet(&mut self, version: ProtocolVersion, state: &State) -> io::Result<Option<Packet>> {
        if !self.fill_until_frame(state)? {
            return Ok(None);
        }
        Packet::decode(&mut self.buf, version, PACKET_SIZE_MAX)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// CPU time the calling thread has used.
fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_found_and_topics_read() {
        // PUBLISH QoS 0, remaining length 9: topic "a/b" (2 + 3 bytes), payload "ping".
        let bytes = [0x30, 9, 0, 3, b'a', b'/', b'b', b'p', b'i', b'n', b'g'];
        let found = complete_frame(&bytes).unwrap().expect("complete");
        assert_eq!(found.total_len, 11);
        assert_eq!(publish_topic(&bytes, found).unwrap(), b"a/b");
        assert!(complete_frame(&bytes[..10]).unwrap().is_none(), "one byte short");
    }
}
