//! A blocking MQTT connection for load generation, built on Culex's codec: publishers write in
//! batches and keep a window of unacknowledged messages; subscribers acknowledge as their QoS
//! requires. One thread per connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use culex::protocol::{
    Ack, Connect, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions, TopicFilter, TopicName, PACKET_SIZE_MAX,
};

/// Where clients connect, and through what: TLS, WebSockets, or both.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub websockets: bool,
}

impl Target {
    pub fn plain(addr: SocketAddr) -> Target {
        Target { addr, tls: None, websockets: false }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    /// MQTT over a WebSocket (over TCP or TLS): every flush one binary message.
    WebSocket(Box<WebSocketStream>),
}

struct WebSocketStream {
    ws: tungstenite::WebSocket<Stream>,
    /// The rest of the binary message being read.
    message: Bytes,
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(stream) => stream,
            Stream::Tls(stream) => &stream.sock,
            Stream::WebSocket(stream) => stream.ws.get_ref().tcp(),
        }
    }

    /// The HTTP upgrade to the `mqtt` subprotocol, then tungstenite's framing over `self`.
    fn upgrade(mut self, addr: SocketAddr) -> anyhow::Result<Stream> {
        let request = format!(
            "GET /mqtt HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: bG9hZHRlc3QgY2xpZW50IQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        self.write_all(request.as_bytes())?;
        self.flush()?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.read_exact(&mut byte).context("reading the upgrade's answer")?;
            head.push(byte[0]);
            if head.len() > 4096 {
                bail!("the upgrade's answer never ended");
            }
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            bail!("upgrade refused: {}", String::from_utf8_lossy(&head));
        }
        let ws = tungstenite::WebSocket::from_raw_socket(
            self,
            tungstenite::protocol::Role::Client,
            None,
        );
        Ok(Stream::WebSocket(Box::new(WebSocketStream { ws, message: Bytes::new() })))
    }
}

fn ws_error(error: tungstenite::Error) -> io::Error {
    match error {
        tungstenite::Error::Io(error) => error,
        other => io::Error::other(other),
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.read(buf),
            Stream::Tls(stream) => stream.read(buf),
            Stream::WebSocket(stream) => loop {
                if !stream.message.is_empty() {
                    let n = buf.len().min(stream.message.len());
                    buf[..n].copy_from_slice(&stream.message.split_to(n));
                    return Ok(n);
                }
                match stream.ws.read() {
                    Ok(tungstenite::Message::Binary(data)) => stream.message = data,
                    Ok(tungstenite::Message::Close(_))
                    | Err(tungstenite::Error::ConnectionClosed) => return Ok(0),
                    Ok(_) => {}
                    Err(error) => return Err(ws_error(error)),
                }
            },
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.write(buf),
            Stream::Tls(stream) => stream.write(buf),
            Stream::WebSocket(stream) => {
                let message = tungstenite::Message::Binary(Bytes::copy_from_slice(buf));
                stream.ws.send(message).map_err(ws_error)?;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(stream) => stream.flush(),
            Stream::Tls(stream) => stream.flush(),
            Stream::WebSocket(stream) => stream.ws.flush().map_err(ws_error),
        }
    }
}

pub struct Connection {
    stream: Stream,
    read_buf: BytesMut,
    /// Where each read lands: allocated once, since zeroing a fresh 64 KiB per read made the
    /// subscribers, not the broker, the bottleneck of fan-out runs.
    chunk: Box<[u8]>,
    pub write_buf: BytesMut,
    pub version: ProtocolVersion,
    /// The broker's Receive Maximum (5.0): unacknowledged QoS 1/2 messages it accepts.
    pub receive_maximum: usize,
    last_packet_id: u16,
}

impl Connection {
    /// Connects; with `persistent`, the broker keeps the session (and what it queues for it)
    /// after the connection: 3.1.1 clean session 0, 5.0 a session expiry of an hour.
    pub fn open(
        target: &Target,
        client_id: &str,
        version: ProtocolVersion,
        persistent: bool,
    ) -> anyhow::Result<Connection> {
        Self::open_buffered(target, client_id, version, persistent, 64 << 10)
    }

    /// A connection that carries little more than its handshake (idle and churning clients):
    /// small buffers, so that ten thousand of them fit in the load generator.
    pub fn open_light(
        target: &Target,
        client_id: &str,
        version: ProtocolVersion,
    ) -> anyhow::Result<Connection> {
        Self::open_buffered(target, client_id, version, false, 512)
    }

    fn open_buffered(
        target: &Target,
        client_id: &str,
        version: ProtocolVersion,
        persistent: bool,
        buffer_bytes: usize,
    ) -> anyhow::Result<Connection> {
        let addr = target.addr;
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let stream = match &target.tls {
            Some(config) => Stream::Tls(Box::new(crate::tls::wrap(config, addr, stream)?)),
            None => Stream::Plain(stream),
        };
        let stream = if target.websockets { stream.upgrade(addr)? } else { stream };
        let mut connection = Connection {
            stream,
            read_buf: BytesMut::with_capacity(buffer_bytes),
            chunk: vec![0; buffer_bytes].into_boxed_slice(),
            write_buf: BytesMut::with_capacity(buffer_bytes),
            version,
            receive_maximum: usize::from(u16::MAX),
            last_packet_id: 0,
        };
        connection.queue(&Packet::Connect(Box::new(Connect {
            protocol: version,
            bridge: false,
            clean_start: !persistent,
            keep_alive_secs: 60,
            properties: Properties {
                session_expiry_interval: persistent.then_some(3600),
                ..Properties::default()
            },
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        })));
        connection.flush()?;
        connection.set_read_timeout(Some(Duration::from_secs(10)))?;
        match connection.read_packet()? {
            Some(Packet::ConnAck(ack)) if !ack.reason.is_error() => {
                if let Some(maximum) = ack.properties.receive_maximum {
                    connection.receive_maximum = usize::from(maximum.get());
                }
                Ok(connection)
            }
            other => bail!("{client_id}: CONNECT refused: {other:?}"),
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.tcp().set_read_timeout(timeout)
    }

    /// Subscribes to every filter (up to 64 per SUBSCRIBE), waiting for each SUBACK.
    pub fn subscribe(&mut self, filters: &[String], qos: QoS) -> anyhow::Result<()> {
        let options = SubscriptionOptions { qos, ..Default::default() };
        for chunk in filters.chunks(64) {
            let packet_id = self.next_packet_id();
            self.queue(&Packet::Subscribe(Subscribe {
                packet_id,
                properties: Properties::default(),
                filters: chunk
                    .iter()
                    .map(|filter| Ok((TopicFilter::new(filter.clone())?, options)))
                    .collect::<anyhow::Result<_>>()?,
            }));
            self.flush()?;
            loop {
                match self.read_packet()? {
                    Some(Packet::SubAck(ack)) if ack.packet_id == packet_id => {
                        if ack.reasons.iter().any(|r| r.is_error()) {
                            bail!("subscription to {chunk:?} refused: {:?}", ack.reasons);
                        }
                        break;
                    }
                    Some(_) => continue,
                    None => bail!("connection closed before SUBACK"),
                }
            }
        }
        Ok(())
    }

    pub fn next_packet_id(&mut self) -> PacketId {
        self.last_packet_id = self.last_packet_id.wrapping_add(1);
        if self.last_packet_id == 0 {
            self.last_packet_id = 1;
        }
        NonZeroU16::new(self.last_packet_id).unwrap_or(NonZeroU16::MIN)
    }

    pub fn queue(&mut self, packet: &Packet) {
        packet.encode(self.version, &mut self.write_buf);
    }

    pub fn queue_publish(
        &mut self,
        topic: &TopicName,
        payload: Bytes,
        qos: QoS,
        packet_id: Option<PacketId>,
    ) {
        self.queue(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.clone(),
            packet_id,
            properties: Properties::default(),
            payload,
        }));
    }

    pub fn queue_ack(&mut self, packet: fn(Ack) -> Packet, packet_id: PacketId) {
        self.queue(&packet(Ack::new(packet_id)));
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if !self.write_buf.is_empty() {
            self.stream.write_all(&self.write_buf)?;
            self.stream.flush()?;
            self.write_buf.clear();
        }
        Ok(())
    }

    /// The next packet; `Ok(None)` at end of stream; a timeout is an `Err` of kind WouldBlock.
    pub fn read_packet(&mut self) -> io::Result<Option<Packet>> {
        loop {
            if let Some(packet) = self.decode()? {
                return Ok(Some(packet));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Decodes a packet already buffered.
    pub fn decode(&mut self) -> io::Result<Option<Packet>> {
        Packet::decode(&mut self.read_buf, self.version, PACKET_SIZE_MAX)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Reads once into the buffer; false at end of stream.
    pub fn fill(&mut self) -> io::Result<bool> {
        let read = self.stream.read(&mut self.chunk)?;
        self.read_buf.extend_from_slice(&self.chunk[..read]);
        Ok(read > 0)
    }

    pub fn disconnect(mut self) {
        self.queue(&Packet::Disconnect(Default::default()));
        let _ = self.flush();
    }
}
