//! MQTT over WebSockets on a connection's transport: the HTTP upgrade (`crate::websocket`
//! decides; this reads and writes it), then tungstenite's framing run on our own buffers, so
//! that the connection task reads and writes MQTT bytes as on TCP. A binary message may carry
//! part of a packet or several; every write becomes one binary message.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use super::transport::Transport;
use crate::websocket::{Answer, Settings};

/// Bytes read from the socket at a time, during the upgrade and after it.
const READ_CHUNK_BYTES: usize = 2 << 10;

/// What the bytes under tungstenite are: what the socket gave and it has not read yet, and the
/// frames it wrote and the socket has not taken yet. Reading an empty one is `WouldBlock`,
/// which tungstenite takes as "no more for now".
#[derive(Default)]
struct Buffers {
    incoming: BytesMut,
    outgoing: Vec<u8>,
    /// How much of `outgoing` the socket has taken.
    sent: usize,
}

impl Read for Buffers {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.incoming.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.incoming.len());
        buf[..n].copy_from_slice(&self.incoming[..n]);
        self.incoming.advance(n);
        Ok(n)
    }
}

impl Write for Buffers {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connection after its upgrade.
pub struct WebSocketStream {
    ws: WebSocket<Buffers>,
    inner: Transport,
    /// The rest of the binary message being read.
    message: Bytes,
    /// The peer closed (a Close frame or end of stream), or its frames were refused: tungstenite
    /// is not read from again.
    ended: bool,
}

/// How a connection's upgrade ended when it did not become a WebSocket.
#[derive(Debug)]
pub enum NotUpgraded {
    /// Answered (a file, or a refusal) and closed; `why` is for the log.
    Answered(String),
    Io(io::Error),
}

impl From<io::Error> for NotUpgraded {
    fn from(error: io::Error) -> Self {
        NotUpgraded::Io(error)
    }
}

/// Reads the HTTP request a connection opens with and answers it: a WebSocket carrying MQTT
/// after an upgrade, else the file or refusal it gets, and the connection closed.
/// `max_message_bytes` bounds a message (and a frame) as `max_packet_size` bounds a packet.
pub async fn accept(
    mut inner: Transport,
    settings: &Settings,
    max_message_bytes: usize,
) -> Result<WebSocketStream, NotUpgraded> {
    let mut head = BytesMut::new();
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    let answer = loop {
        match crate::websocket::answer(&head, settings) {
            Answer::Incomplete => {}
            answer => break answer,
        }
        let read = inner.read(&mut chunk).await?;
        if read == 0 {
            return Err(NotUpgraded::Answered("closed before its request ended".into()));
        }
        head.extend_from_slice(&chunk[..read]);
    };
    let (response, why) = match answer {
        Answer::Upgrade { response, head_len } => {
            inner.write_all(&response).await?;
            inner.flush().await?;
            head.advance(head_len);
            let config = WebSocketConfig::default()
                .read_buffer_size(READ_CHUNK_BYTES)
                .write_buffer_size(0)
                .max_message_size(Some(max_message_bytes))
                .max_frame_size(Some(max_message_bytes));
            let buffers = Buffers { incoming: head, ..Buffers::default() };
            let ws = WebSocket::from_raw_socket(buffers, Role::Server, Some(config));
            return Ok(WebSocketStream { ws, inner, message: Bytes::new(), ended: false });
        }
        Answer::File { path, head_only } => {
            let dir = settings.http_dir.clone().unwrap_or_default();
            let shown = path.display().to_string();
            let response = glommio::executor()
                .spawn_blocking(move || crate::websocket::file_response(&dir, &path, head_only))
                .await;
            (response, format!("http_dir file {shown}"))
        }
        Answer::Refuse { response, why } => (response, why),
        Answer::Incomplete => unreachable!("the loop ends on any other answer"),
    };
    inner.write_all(&response).await?;
    let _ = inner.close().await;
    Err(NotUpgraded::Answered(why))
}

fn invalid(error: tungstenite::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl WebSocketStream {
    /// Moves what tungstenite wrote into the socket; `Ready` once all of it is taken.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let buffers = self.ws.get_mut();
        while buffers.sent < buffers.outgoing.len() {
            let rest = &buffers.outgoing[buffers.sent..];
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            buffers.sent += written;
        }
        buffers.outgoing.clear();
        buffers.sent = 0;
        // An outbox of a busy moment is not kept for the connection's life.
        if buffers.outgoing.capacity() > 64 << 10 {
            buffers.outgoing = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Frames tungstenite queued itself (a Pong, the answer to a Close) go out with the next
    /// read or write.
    fn queue_replies(&mut self) -> io::Result<()> {
        match self.ws.flush() {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Ok(()),
            Err(error) => Err(invalid(error)),
        }
    }
}

impl AsyncRead for WebSocketStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if !this.message.is_empty() {
                let n = buf.len().min(this.message.len());
                buf[..n].copy_from_slice(&this.message[..n]);
                this.message.advance(n);
                return Poll::Ready(Ok(n));
            }
            if this.ended {
                let _ = this.poll_send(cx);
                return Poll::Ready(Ok(0));
            }
            match this.ws.read() {
                Ok(Message::Binary(data)) => this.message = data,
                // [MQTT-6.0.0-1]: data in a text frame closes the connection.
                Ok(Message::Text(_)) => {
                    this.ended = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text frame: MQTT over WebSockets is binary",
                    )));
                }
                Ok(Message::Close(_)) => this.ended = true,
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Err(tungstenite::Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    // Replies tungstenite queued go out without holding the read up.
                    if let Poll::Ready(Err(error)) = this.poll_send(cx) {
                        return Poll::Ready(Err(error));
                    }
                    let mut chunk = [0u8; READ_CHUNK_BYTES];
                    match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))? {
                        0 => this.ended = true,
                        read => this.ws.get_mut().incoming.extend_from_slice(&chunk[..read]),
                    }
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    this.ended = true
                }
                // A frame refused (too large, unmasked, malformed): tungstenite's state is
                // not to be read on after an error.
                Err(error) => {
                    this.ended = true;
                    return Poll::Ready(Err(invalid(error)));
                }
            }
            this.queue_replies()?;
        }
    }
}

impl AsyncWrite for WebSocketStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What was framed before goes first: a slow reader holds the writer here.
        ready!(this.poll_send(cx))?;
        this.ws.write(Message::Binary(Bytes::copy_from_slice(buf))).map_err(invalid)?;
        this.queue_replies()?;
        if let Poll::Ready(Err(error)) = this.poll_send(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A Close frame (once), what is left, the peer's Close (RFC 6455 section 7.1.1: the
        // server closes the TCP connection after the handshake; the caller bounds the wait),
        // then the transport's own close.
        match this.ws.close(None) {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {}
            Err(error) => return Poll::Ready(Err(invalid(error))),
        }
        this.queue_replies()?;
        ready!(this.poll_send(cx))?;
        let mut discard = [0u8; READ_CHUNK_BYTES];
        while !this.ended {
            this.message = Bytes::new();
            if ready!(Pin::new(&mut *this).poll_read(cx, &mut discard)).is_err() {
                break;
            }
        }
        Pin::new(&mut this.inner).poll_close(cx)
    }
}
