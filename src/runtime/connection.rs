//! The task that owns one client's socket: the only code that reads or writes it. It reads
//! packets into one growing buffer, hands each to its shard, and writes what the shard put in
//! the connection's outbox, one write per turn.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::flow;
use super::transport::{Layers, OpenError, Opened, Transport};
use super::websocket::NotUpgraded;
use crate::broker::counters::ShardCounters;
use crate::broker::outbox::{refusal, Close, ConnHandle, OUTBOX_FIRST_BYTES};
use crate::broker::{Origin, PendingClaim, Shard};
use crate::protocol::{DecodeError, Packet, ProtocolVersion, ReasonCode};

/// A client that opens a connection must have finished its TLS handshake, if any, and sent
/// CONNECT within this time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a closing connection waits for its peer's half of a closing handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Bytes read from the socket per call at first: enough for a CONNECT and an idle client's
/// traffic. Reads that fill it double it, up to `READ_CHUNK_MAX_BYTES`, so only busy connections
/// hold large buffers (a fixed 16 KiB made an idle connection cost 45 KiB of resident memory,
/// 13 KiB with 1 KiB: `loadtest compare --scenario connections --clients 5000`).
const READ_CHUNK_MIN_BYTES: usize = 1 << 10;
const READ_CHUNK_MAX_BYTES: usize = 16 << 10;

/// Reads packets from a socket into one growing buffer, so decoded PUBLISH payloads are slices
/// of it. The socket reads straight into the buffer's tail: no second buffer per connection
/// and no copy of every byte read. An empty buffer is given back while the socket has nothing
/// to read.
pub struct PacketReader {
    buf: BytesMut,
    /// Bytes asked of the socket per read.
    read_size: usize,
    max_packet_size: u32,
    /// The shard's `$SYS` counters: packets and bytes received.
    counters: Arc<ShardCounters>,
}

impl PacketReader {
    pub fn new(max_packet_size: u32, counters: Arc<ShardCounters>) -> Self {
        PacketReader {
            buf: BytesMut::new(),
            read_size: READ_CHUNK_MIN_BYTES,
            max_packet_size,
            counters,
        }
    }

    pub fn decode(&mut self, version: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
        let packet = Packet::decode(&mut self.buf, version, self.max_packet_size)
            .inspect_err(|_| self.counters.packets_malformed.add(1))?;
        self.counters.packets_received.add(u64::from(packet.is_some()));
        Ok(packet)
    }

    /// Reads once; `Ok(false)` at end of stream.
    pub async fn fill(&mut self, stream: &mut (impl AsyncRead + Unpin)) -> io::Result<bool> {
        let want = self.read_size;
        // The buffer grows by `want` only within a poll and is cut back to what was read
        // before the poll returns, so a read dropped while pending (the connection woken to
        // write instead) leaves no bytes behind.
        let read = std::future::poll_fn(|cx| {
            let len = self.buf.len();
            if self.buf.capacity() == 0 {
                self.buf = BytesMut::with_capacity(want);
            }
            self.buf.resize(len + want, 0);
            let tail = self.buf.get_mut(len..).unwrap_or_default();
            let polled = Pin::new(&mut *stream).poll_read(cx, tail);
            let got = match &polled {
                Poll::Ready(Ok(read)) => *read,
                _ => 0,
            };
            self.buf.truncate(len + got);
            if polled.is_pending() && len == 0 {
                // Nothing to keep while the socket has nothing: sockets are read once ready
                // (glommio tries the read, then waits for readiness), so an idle connection
                // holds no read buffer.
                self.buf = BytesMut::new();
            }
            polled
        })
        .await
        .inspect_err(|_| {
            self.counters.read_errors.add(1);
        })?;
        self.counters.bytes_received.add(read as u64);
        if read == want && want < READ_CHUNK_MAX_BYTES {
            let larger = want * 2;
            self.read_size = larger;
            // A BytesMut that must reallocate (decoded payloads still share its memory) takes
            // its first capacity as the least it allocates: a buffer made small stayed small
            // and cost busy connections 14% of pairs QoS 0 throughput.
            let mut buf = BytesMut::with_capacity(larger);
            buf.extend_from_slice(&self.buf);
            self.buf = buf;
        }
        Ok(read > 0)
    }

    /// The next packet, or `Ok(None)` when the stream ends first.
    pub async fn next(
        &mut self,
        stream: &mut (impl AsyncRead + Unpin),
        version: ProtocolVersion,
    ) -> Result<Option<Packet>, ReadError> {
        loop {
            if let Some(packet) = self.decode(version).map_err(ReadError::Malformed)? {
                return Ok(Some(packet));
            }
            if !self.fill(stream).await.map_err(ReadError::Io)? {
                return Ok(None);
            }
        }
    }
}

/// Why `PacketReader::next` gave no packet (both counted in the shard's counters).
#[derive(Debug)]
pub enum ReadError {
    Malformed(DecodeError),
    Io(io::Error),
}

/// Serves one accepted connection (`socket`, TCP or Unix, from `peer`) until it closes; `slot`
/// is its place under its listener's `max_connections`.
///
/// The opening (PROXY header, TLS handshake, WebSocket upgrade, CONNECT) runs boxed and is
/// freed once done: inline, its state (kilobytes) stayed in every connection's task for the
/// connection's whole life. What the task keeps is what a connected client needs.
pub fn serve(
    shard: Rc<RefCell<Shard>>,
    socket: Transport,
    peer: String,
    listening: super::Listening,
    slot: super::ConnectionSlot,
) -> impl Future<Output = ()> {
    let (max_packet_size, counters) = {
        let shard = shard.borrow();
        (shard.config().max_packet_size, shard.counters.clone())
    };
    counters.sockets.add(1);
    let reader = PacketReader::new(max_packet_size, counters.clone());
    let super::Listening { context: listener, tls, websocket, proxy } = listening;
    let opening = Box::pin(async move {
        let layers = Layers {
            proxy,
            tls: tls.as_deref(),
            websocket: websocket.as_deref(),
            max_message_bytes: usize::try_from(max_packet_size).unwrap_or(usize::MAX),
            counters: &counters,
        };
        open(socket, peer, layers, reader).await
    });
    async move {
        // Awaited by value: the box is freed here. Taken apart where it is matched: bound whole
        // first, its 240 bytes stayed in every connection's task beside its fields (the task's
        // future: 968 -> 720 bytes).
        let Some(Accepted { mut stream, peer, certificate_name, connect, mut reader }) =
            opening.await
        else {
            return;
        };
        let begun = {
            let certificate_name = certificate_name.as_deref();
            let origin = Origin::Network { peer: &peer, listener: &listener, certificate_name };
            shard.borrow_mut().begin_connect(&connect, origin)
        };
        let (conn, claim) = match begun {
            Ok(pending) => pending,
            Err(refusal) => {
                send_last(&mut stream, &refusal).await;
                return;
            }
        };
        claim_answered(&claim).await;
        shard.borrow_mut().finish_connect(&conn, unboxed(connect), claim.clone());
        claim_connected(&claim).await;
        // Its last holder: kept to the end of the scope, it was 72 bytes of every connection.
        drop(claim);

        let close = run(&shard, &conn, &mut stream, &mut reader).await;
        send_last(&mut stream, &conn.take_outbox()).await;
        shard.borrow_mut().connection_closed(&conn, close);
        drop(slot);
    }
}

/// The value out of its box, and the box freed now: a box whose value is moved out with `*`
/// keeps its allocation until its variable goes out of scope, which in `serve` is the end of
/// the connection (a CONNECT's 945 bytes held by every connection, found with heaptrack).
#[expect(clippy::boxed_local, reason = "taking the box is the point: it is freed here")]
fn unboxed<T>(boxed: Box<T>) -> T {
    *boxed
}

/// A connection past its opening: its transport, its peer as the logs name it, the name in its
/// client certificate, its CONNECT, and the reader that read it.
struct Accepted {
    stream: Transport,
    peer: String,
    certificate_name: Option<String>,
    connect: Box<crate::protocol::Connect>,
    reader: PacketReader,
}

/// The opening of a connection, within `CONNECT_TIMEOUT`: its PROXY header, TLS handshake and
/// WebSocket upgrade, as its listener has them, then its first packet, which must be CONNECT.
/// `None`: the connection ended there (logged, and answered where MQTT says so).
async fn open(
    socket: Transport,
    peer: String,
    layers: Layers<'_>,
    mut reader: PacketReader,
) -> Option<Accepted> {
    let first = glommio::timer::timeout(CONNECT_TIMEOUT, async {
        Ok(match Transport::open(socket, layers).await {
            Ok(mut opened) => {
                let read = reader.next(&mut opened.transport, ProtocolVersion::V5).await;
                Ok((opened, read))
            }
            Err(error) => Err(error),
        })
    })
    .await;
    let (opened, first) = match first {
        Ok(Ok(opened)) => opened,
        Ok(Err(OpenError::Proxy(why))) => {
            tracing::info!(%peer, why, "closed: PROXY protocol");
            return None;
        }
        Ok(Err(OpenError::Io(error))) => {
            tracing::info!(%peer, %error, "closed: read failed before the PROXY header");
            return None;
        }
        Ok(Err(OpenError::Handshake(error))) => {
            tracing::info!(%peer, %error, "closed: TLS handshake failed");
            return None;
        }
        Ok(Err(OpenError::NotUpgraded(NotUpgraded::Answered(why)))) => {
            tracing::info!(%peer, why, "closed: HTTP request answered, no WebSocket upgrade");
            return None;
        }
        Ok(Err(OpenError::NotUpgraded(NotUpgraded::Io(error)))) => {
            tracing::info!(%peer, %error, "closed: read failed before the WebSocket upgrade");
            return None;
        }
        Err(_) => {
            tracing::info!(%peer, "closed: no CONNECT in time");
            return None;
        }
    };
    let Opened { transport: mut stream, proxied_peer, certificate_name } = opened;
    let peer = proxied_peer.unwrap_or(peer);
    let connect = match first {
        Ok(Some(Packet::Connect(connect))) => connect,
        Err(ReadError::Malformed(DecodeError::UnsupportedProtocolVersion(level))) => {
            layers.counters.count_refusal(crate::broker::counters::Refusal::ProtocolVersion);
            // [MQTT-3.1.2-2]: answer with return code 0x01 in the 3.1.1 format, then close.
            let refused = refusal(
                ProtocolVersion::V311,
                ReasonCode::UnsupportedProtocolVersion,
                u32::MAX,
                false,
            );
            send_last(&mut stream, &refused).await;
            tracing::info!(%peer, level, "refused: unsupported protocol version");
            return None;
        }
        Ok(_) => {
            tracing::info!(%peer, "closed: first packet was not CONNECT");
            return None;
        }
        Err(ReadError::Malformed(error)) => {
            tracing::info!(%peer, %error, "closed: malformed CONNECT");
            return None;
        }
        Err(ReadError::Io(error)) => {
            tracing::info!(%peer, %error, "closed: read failed before CONNECT");
            return None;
        }
    };

    Some(Accepted { stream, peer, certificate_name, connect, reader })
}

/// Writes what a connection says last (a refusal, a DISCONNECT) and closes it; a peer that is
/// already gone is no error, and one that never answers a closing handshake (TLS, WebSocket)
/// is left after `CLOSE_GRACE`.
/// Boxed: it runs once, at the end, and its state (a timer, a TLS or WebSocket close) inline
/// made every connection's task keep room for it all its life (3.1 KB tasks).
fn send_last<'a>(
    stream: &'a mut Transport,
    bytes: &'a [u8],
) -> Pin<Box<dyn Future<Output = ()> + 'a>> {
    Box::pin(async move {
        if !bytes.is_empty() {
            let _ = stream.write_all(bytes).await;
        }
        let _ = glommio::timer::timeout(CLOSE_GRACE, async { Ok(stream.close().await) }).await;
    })
}

async fn run(
    shard: &Rc<RefCell<Shard>>,
    conn: &Rc<ConnHandle>,
    stream: &mut Transport,
    reader: &mut PacketReader,
) -> Close {
    // What the packets of the last turn congested; only a turn that published waits.
    let mut congested = Vec::new();
    let mut published = false;
    // Whether the socket gave bytes since the connection last wrote.
    let mut read = false;
    loop {
        let out = conn.take_outbox();
        let wrote = out.len();
        if !out.is_empty() {
            if write_out(conn, stream, &out).await.is_err() {
                return Close::ConnectionLost;
            }
            read = false;
        }
        // Written: the outbox's allocation must not live on in `out` while the connection
        // waits (it did: 4 KiB held by every idle connection, found with heaptrack).
        drop(out);
        if let Some(close) = conn.close_reason() {
            return close;
        }
        // What this connection published last turn must have room before it reads more. A
        // connection that did not publish (a subscriber) never waits: it must keep writing.
        if std::mem::take(&mut published) {
            flow::wait_after_publishing(shard, std::mem::take(&mut congested), conn.id).await;
        }
        // Acknowledgements waiting for the store past their bound: nothing more is read until
        // the store releases some (each release wakes the connection to send it).
        if conn.holds_too_many_acks() {
            conn.wake().wait().await;
            continue;
        }
        // A busy socket never makes `read` wait, so without this a flat-out publisher would
        // keep the shard from its other connections (measured: seconds of tail latency).
        glommio::yield_if_needed().await;
        // Packets already buffered are handled before waiting again.
        loop {
            match reader.decode(conn.version) {
                Ok(Some(packet)) => {
                    conn.last_seen.set(Instant::now());
                    published |= matches!(packet, Packet::Publish(_));
                    if let Err(close) = shard.borrow_mut().handle_packet(conn, packet) {
                        conn.close(close);
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(client_id = %conn.client_id, %error, "malformed packet");
                    conn.close_explained(
                        Close::ProtocolError(error.reason_code()),
                        &error.to_string(),
                    );
                    break;
                }
            }
        }
        // Taken with no await since the deliveries: the list is this turn's and no other's.
        congested = shard.borrow_mut().take_congested();
        if conn.close_reason().is_some() || conn.has_outbox() {
            continue;
        }
        // A connection that writes little gives its outbox back before it waits, so an idle
        // one holds none; one that writes more keeps it for its next turn (regrowing it on
        // every turn cost a fan-in subscriber 15%), until the sweep finds it empty.
        if wrote < OUTBOX_FIRST_BYTES {
            conn.release_idle_outbox();
        }
        // What was read gets no answer to carry its TCP acknowledgement.
        if std::mem::take(&mut read) {
            stream.acknowledge_now();
        }
        // The read made inside the call, not bound first: bound, it kept room of its own in
        // every connection's task beside the copy moved into `or` (`size_of_val` of the task's
        // future: 720 -> 600 bytes).
        let waited = futures_lite::future::or(async { Some(reader.fill(stream).await) }, async {
            conn.wake().wait().await;
            None
        });
        match waited.await {
            Some(Ok(true)) => read = true,
            None => {}
            Some(Ok(false)) | Some(Err(_)) => return Close::ConnectionLost,
        }
    }
}

/// Waits until the registry has answered a CONNECT's claim.
pub async fn claim_answered(claim: &PendingClaim) {
    while !claim.is_answered() {
        claim.progressed().wait().await;
    }
}

/// Waits until the CONNACK of a claimed CONNECT has gone out.
pub async fn claim_connected(claim: &PendingClaim) {
    while !claim.is_connected() {
        claim.progressed().wait().await;
    }
}

/// Writes `out` (what `conn`'s outbox held, or what a bridge made of it) to `stream`, counting
/// every partial write as progress (publishers waiting for `conn` judge it by that), then tells
/// `conn` it wrote.
pub async fn write_out(
    conn: &ConnHandle,
    stream: &mut (impl AsyncWrite + Unpin),
    out: &[u8],
) -> io::Result<()> {
    let mut rest = out;
    while !rest.is_empty() {
        let written = stream.write(rest).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        conn.progressed(written);
        rest = rest.get(written..).unwrap_or_default();
    }
    // TLS holds what it encrypted until flushed; plain TCP has nothing to flush.
    stream.flush().await?;
    conn.wrote();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::net::TcpStream;
    use std::io::Write;

    /// Runs `test` on a glommio executor sized as a shard's, with the accepted end of a loopback
    /// connection whose other end `peer` drives from a plain thread.
    fn with_connection(
        peer: impl FnOnce(std::net::TcpStream) + Send + 'static,
        test: impl FnOnce(TcpStream) -> futures_lite::future::BoxedLocal<()> + Send + 'static,
    ) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(super::super::IO_MEMORY_BYTES)
            .ring_depth(super::super::ring_depth())
            .spawn(move || async move {
                let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let client = std::thread::spawn(move || {
                    peer(std::net::TcpStream::connect(addr).unwrap());
                });
                let stream = listener.accept().await.unwrap();
                test(stream).await;
                client.join().unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_malformed_packet_is_an_error_and_counted() {
        with_connection(
            |mut peer| {
                // PUBLISH whose topic length runs past the packet.
                peer.write_all(b"\x30\x03\x00\x09a").unwrap();
                std::thread::sleep(Duration::from_millis(200));
            },
            |mut stream| {
                Box::pin(async move {
                    let counters = Arc::new(ShardCounters::default());
                    let mut reader = PacketReader::new(1 << 20, counters.clone());
                    let read = reader.next(&mut stream, ProtocolVersion::V311).await;
                    assert!(matches!(read, Err(ReadError::Malformed(_))), "{read:?}");
                    assert_eq!(counters.packets_malformed.get(), 1);
                })
            },
        );
    }

    #[test]
    fn a_reset_is_an_error_and_counted_an_orderly_end_is_not() {
        for reset in [true, false] {
            with_connection(
                move |peer| {
                    let peer = socket2::Socket::from(peer);
                    if reset {
                        // Closed with linger 0: the other end gets a reset, not an end.
                        peer.set_linger(Some(Duration::ZERO)).unwrap();
                    }
                    drop(peer);
                },
                move |mut stream| {
                    Box::pin(async move {
                        let counters = Arc::new(ShardCounters::default());
                        let mut reader = PacketReader::new(1 << 20, counters.clone());
                        let read = reader.next(&mut stream, ProtocolVersion::V311).await;
                        if reset {
                            assert!(matches!(read, Err(ReadError::Io(_))), "{read:?}");
                        } else {
                            assert!(matches!(read, Ok(None)), "{read:?}");
                        }
                        assert_eq!(counters.read_errors.get(), u64::from(reset));
                    })
                },
            );
        }
    }
}
