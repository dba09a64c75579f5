//! The byte stream under a connection: TCP or a Unix socket, TLS over either, and WebSockets
//! over any of those, accepted from a client or dialled by a bridge. Everything above
//! (`connection`, bridges) reads and writes MQTT bytes and never knows which.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::{TcpStream, UnixStream};

use super::websocket::{NotUpgraded, WebSocketStream};
use crate::broker::counters::ShardCounters;
use crate::tls::ServerTls;

pub enum Transport {
    Tcp(TcpStream),
    /// A client of a Unix socket listener (`listener 0 PATH`).
    Unix(UnixStream),
    /// A client's TLS session, accepted. Boxed: a TLS session's state is some kilobytes, and
    /// most connections are plain.
    Tls(Box<futures_rustls::server::TlsStream<Transport>>),
    /// A bridge's TLS session to its peer.
    TlsDialled(Box<futures_rustls::client::TlsStream<Transport>>),
    /// A client's WebSocket, over TCP or TLS.
    WebSocket(Box<WebSocketStream>),
    /// What was read past a PROXY header, handed out before the rest.
    Prefixed(Box<Prefixed>),
}

pub struct Prefixed {
    rest: bytes::Bytes,
    inner: Transport,
}

/// What `Transport::open` made of an accepted socket.
pub struct Opened {
    pub transport: Transport,
    /// The client's address as a PROXY header gave it (else the socket's is right).
    pub proxied_peer: Option<String>,
    /// The name a client certificate gives, for listeners that take user names from them.
    pub certificate_name: Option<String>,
}

/// What a listener puts under its connections besides TCP.
#[derive(Clone, Copy)]
pub struct Layers<'a> {
    /// `enable_proxy_protocol`: the PROXY header first, and what it must say.
    pub proxy: Option<crate::proxy::Policy>,
    pub tls: Option<&'a ServerTls>,
    pub websocket: Option<&'a crate::websocket::Settings>,
    /// The largest WebSocket message taken: the listener's largest packet.
    pub max_message_bytes: usize,
    /// The shard's counters: TLS handshakes done and failed.
    pub counters: &'a ShardCounters,
}

/// Why a connection never carried MQTT.
#[derive(Debug)]
pub enum OpenError {
    /// The TLS handshake failed (a client trusting another CA, a certificate refused or
    /// revoked, a plaintext client on a TLS port, ...).
    Handshake(io::Error),
    /// The HTTP request was not a WebSocket upgrade (answered: a file, or a refusal), or
    /// reading it failed.
    NotUpgraded(NotUpgraded),
    /// No PROXY header, a malformed one, or one the listener's policy refuses.
    Proxy(String),
    Io(io::Error),
}

/// The most bytes read at a time while looking for the PROXY header.
const PROXY_READ_BYTES: usize = 512;

/// Reads the PROXY header at the start of `stream`: the header, and the transport with
/// whatever was read past it put back in front.
async fn read_proxy_header(
    mut stream: Transport,
    version: crate::proxy::Version,
) -> Result<(crate::proxy::Header, Transport), OpenError> {
    use futures_lite::AsyncReadExt;
    let mut read = Vec::new();
    let mut chunk = [0u8; PROXY_READ_BYTES];
    loop {
        match crate::proxy::parse(&read, version) {
            Ok(Some((header, used))) => {
                let rest = bytes::Bytes::copy_from_slice(&read[used..]);
                let stream = match rest.is_empty() {
                    true => stream,
                    false => Transport::Prefixed(Box::new(Prefixed { rest, inner: stream })),
                };
                return Ok((header, stream));
            }
            Ok(None) => {}
            Err(error) => return Err(OpenError::Proxy(error.to_string())),
        }
        let n = stream.read(&mut chunk).await.map_err(OpenError::Io)?;
        if n == 0 {
            return Err(OpenError::Proxy("closed before its PROXY header ended".into()));
        }
        read.extend_from_slice(&chunk[..n]);
    }
}

impl Transport {
    /// The transport an accepted socket gives: TLS once its handshake is done, with the name
    /// its client certificate gives when the listener takes user names from certificates; a
    /// WebSocket once its upgrade is done. Each layer's state is boxed while it runs: inline,
    /// a plain TCP connection waiting for its CONNECT kept room for a TLS handshake and a
    /// WebSocket upgrade (12 KiB per silent socket, `tests/hostile.rs`).
    pub async fn open(stream: Transport, layers: Layers<'_>) -> Result<Opened, OpenError> {
        let (stream, proxied_peer, proxied_name) = match layers.proxy {
            None => (stream, None, None),
            Some(policy) => {
                let (header, stream) = Box::pin(read_proxy_header(stream, policy.version)).await?;
                let name = policy.admit(&header).map_err(|why| {
                    OpenError::Proxy(format!("{why} (PROXY header from {})", header.source))
                })?;
                (stream, Some(header.source), name)
            }
        };
        let (transport, name) = match layers.tls {
            None => (stream, proxied_name),
            Some(tls) => {
                let acceptor = futures_rustls::TlsAcceptor::from(tls.config());
                let stream = Box::pin(acceptor.accept(stream)).await.map_err(|error| {
                    layers.counters.tls_handshake_failures.add(1);
                    OpenError::Handshake(error)
                })?;
                layers.counters.tls_handshakes.add(1);
                let name = tls.settings().username_from_certificate.and_then(|name| {
                    let certificate = stream.get_ref().1.peer_certificates()?.first()?;
                    name.of(certificate)
                });
                (Transport::Tls(Box::new(stream)), name)
            }
        };
        let transport = match layers.websocket {
            None => transport,
            Some(settings) => {
                let upgrading =
                    super::websocket::accept(transport, settings, layers.max_message_bytes);
                let upgraded = Box::pin(upgrading).await.map_err(OpenError::NotUpgraded)?;
                Transport::WebSocket(Box::new(upgraded))
            }
        };
        Ok(Opened { transport, proxied_peer, certificate_name: name })
    }

    /// A bridge's transport to `host`: TLS over `stream` when `tls` is given, checking the
    /// peer's certificate against `host` (unless `bridge_insecure`) and naming it in SNI when
    /// it is a host name.
    pub async fn dial(
        stream: TcpStream,
        host: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> io::Result<Transport> {
        let Some(config) = tls else {
            return Ok(Transport::Tcp(stream));
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let connector = futures_rustls::TlsConnector::from(config);
        let stream = connector.connect(name, Transport::Tcp(stream)).await?;
        Ok(Transport::TlsDialled(Box::new(stream)))
    }
}

impl Transport {
    /// Sends the TCP acknowledgement of what was read now, rather than when the kernel's
    /// delayed-ACK timer fires (40 ms on Linux). For a turn that read packets and has nothing
    /// to answer (a PUBACK, a QoS 0 PUBLISH): a client that leaves Nagle's algorithm on (paho's
    /// Python client, libmosquitto's default) holds its next small packet until that ACK
    /// comes, so without this a QoS 1 round trip through the broker took 44 ms.
    pub fn acknowledge_now(&self) {
        match self {
            Transport::Tcp(stream) => {
                use std::os::fd::{AsRawFd, BorrowedFd};
                // SAFETY: the descriptor is the stream's, open for as long as it is borrowed.
                let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
                // TCP_QUICKACK sends an ACK the kernel has scheduled at once; it is no lasting
                // mode, hence once per quiet turn. A failure costs only the wait.
                let _ = socket2::SockRef::from(&fd).set_quickack(true);
            }
            Transport::Unix(_) => {}
            Transport::Tls(stream) => stream.get_ref().0.acknowledge_now(),
            Transport::TlsDialled(stream) => stream.get_ref().0.acknowledge_now(),
            Transport::WebSocket(stream) => stream.inner().acknowledge_now(),
            Transport::Prefixed(prefixed) => prefixed.inner.acknowledge_now(),
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Prefixed(prefixed) if !prefixed.rest.is_empty() => {
                let n = buf.len().min(prefixed.rest.len());
                buf[..n].copy_from_slice(&prefixed.rest.split_to(n));
                Poll::Ready(Ok(n))
            }
            Transport::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Unix(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Transport::TlsDialled(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Transport::WebSocket(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Transport::Prefixed(prefixed) => Pin::new(&mut prefixed.inner).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Unix(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            Transport::TlsDialled(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            Transport::WebSocket(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            Transport::Prefixed(prefixed) => Pin::new(&mut prefixed.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Unix(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Transport::TlsDialled(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Transport::WebSocket(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Transport::Prefixed(prefixed) => Pin::new(&mut prefixed.inner).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(stream) => Pin::new(stream).poll_close(cx),
            Transport::Unix(stream) => Pin::new(stream).poll_close(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_close(cx),
            Transport::TlsDialled(stream) => Pin::new(stream.as_mut()).poll_close(cx),
            Transport::WebSocket(stream) => Pin::new(stream.as_mut()).poll_close(cx),
            Transport::Prefixed(prefixed) => Pin::new(&mut prefixed.inner).poll_close(cx),
        }
    }
}
