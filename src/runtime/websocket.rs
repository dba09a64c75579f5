//! MQTT over WebSockets on a connection's transport: the HTTP upgrade (`crate::websocket`
//! decides; this reads and writes it), then the frames (`crate::websocket::Framing`) between the
//! socket and the connection task, which reads and writes MQTT bytes as on TCP.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::transport::Transport;
use crate::websocket::{Answer, Framing, Payload, Settings};

/// Bytes read from the socket at a time, during the upgrade and after it.
const READ_CHUNK_BYTES: usize = 2 << 10;

/// A connection after its upgrade.
pub struct WebSocketStream {
    framing: Framing,
    inner: Transport,
    /// The rest of the binary message being read.
    message: Bytes,
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
            let framing = Framing::server(head, max_message_bytes);
            return Ok(WebSocketStream { framing, inner, message: Bytes::new() });
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

impl WebSocketStream {
    /// The transport the frames travel on.
    pub fn inner(&self) -> &Transport {
        &self.inner
    }

    /// Moves what the framing wrote into the socket; `Ready` once all of it is taken.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.framing.outgoing().is_empty() {
            let written =
                ready!(Pin::new(&mut self.inner).poll_write(cx, self.framing.outgoing()))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.framing.sent(written);
        }
        Poll::Ready(Ok(()))
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
            match this.framing.read()? {
                Payload::Data(data) => this.message = data,
                Payload::Ended => {
                    let _ = this.poll_send(cx);
                    return Poll::Ready(Ok(0));
                }
                Payload::NeedBytes => {
                    // Replies the framing queued go out without holding the read up.
                    if let Poll::Ready(Err(error)) = this.poll_send(cx) {
                        return Poll::Ready(Err(error));
                    }
                    let mut chunk = [0u8; READ_CHUNK_BYTES];
                    match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))? {
                        0 => this.framing.end_of_stream(),
                        read => this.framing.feed(&chunk[..read]),
                    }
                }
            }
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
        this.framing.write(buf)?;
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
        this.framing.close()?;
        ready!(this.poll_send(cx))?;
        let mut discard = [0u8; READ_CHUNK_BYTES];
        while !this.framing.is_ended() {
            this.message = Bytes::new();
            if ready!(Pin::new(&mut *this).poll_read(cx, &mut discard)).is_err() {
                break;
            }
        }
        Pin::new(&mut this.inner).poll_close(cx)
    }
}
