//! The frames after the upgrade, without I/O: tungstenite's codec run on buffers. The socket's
//! bytes go in (`feed`), the payloads of binary messages come out (`read`: MQTT bytes, part of
//! a packet or several); what the codec writes (our MQTT bytes framed, Pongs, the closing
//! handshake) waits in `outgoing` until the socket takes it (`sent`).

use std::io::{self, Read, Write};

use bytes::{Buf, Bytes, BytesMut};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// What tungstenite reads from at a time.
const READ_BUFFER_BYTES: usize = 2 << 10;

/// A written-out buffer larger than this is freed once the socket took it all: the outbox of a
/// busy moment is not kept for the connection's life.
const OUTGOING_KEPT_BYTES: usize = 64 << 10;

/// The bytes under tungstenite. Reading an empty one is `WouldBlock`, which tungstenite takes
/// as "no more for now".
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

/// What `Framing::read` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload {
    /// A binary message's payload.
    Data(Bytes),
    /// Nothing complete: the socket's next bytes are needed.
    NeedBytes,
    /// The peer closed (a Close frame, or the end of its stream): nothing more comes.
    Ended,
}

/// One connection's WebSocket, server side.
pub struct Framing {
    ws: WebSocket<Buffers>,
    /// The peer closed, or its frames were refused: tungstenite is not read from again.
    ended: bool,
}

fn invalid(error: tungstenite::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl Framing {
    /// After the upgrade: `already_read` is what the socket gave beyond the request head.
    /// `max_message_bytes` bounds a message, and a frame, as `max_packet_size` bounds a packet.
    pub fn server(already_read: BytesMut, max_message_bytes: usize) -> Framing {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(0)
            .max_message_size(Some(max_message_bytes))
            .max_frame_size(Some(max_message_bytes));
        let buffers = Buffers { incoming: already_read, ..Buffers::default() };
        let ws = WebSocket::from_raw_socket(buffers, Role::Server, Some(config));
        Framing { ws, ended: false }
    }

    /// Bytes the socket gave.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.ws.get_mut().incoming.extend_from_slice(bytes);
    }

    /// The socket's stream ended.
    pub fn end_of_stream(&mut self) {
        self.ended = true;
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The next payload. Ping and Pong are answered or skipped; a refused frame (too large,
    /// unmasked, malformed) or a text frame is an error, after which nothing is read.
    pub fn read(&mut self) -> io::Result<Payload> {
        loop {
            if self.ended {
                return Ok(Payload::Ended);
            }
            let payload = match self.ws.read() {
                Ok(Message::Binary(data)) => Payload::Data(data),
                // [MQTT-6.0.0-1]: data in a text frame closes the connection.
                Ok(Message::Text(_)) => {
                    self.ended = true;
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text frame: MQTT over WebSockets is binary",
                    ));
                }
                Ok(Message::Close(_)) => {
                    self.ended = true;
                    Payload::Ended
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Err(tungstenite::Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    Payload::NeedBytes
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.ended = true;
                    Payload::Ended
                }
                // tungstenite's state is not to be read on after an error.
                Err(error) => {
                    self.ended = true;
                    return Err(invalid(error));
                }
            };
            // Replies tungstenite queued (a Pong, the answer to a Close) join `outgoing`.
            self.queue_replies()?;
            return Ok(payload);
        }
    }

    /// Frames `payload` as one binary message.
    pub fn write(&mut self, payload: &[u8]) -> io::Result<()> {
        self.ws.write(Message::Binary(Bytes::copy_from_slice(payload))).map_err(invalid)?;
        self.queue_replies()
    }

    /// Starts the closing handshake: a Close frame, once.
    pub fn close(&mut self) -> io::Result<()> {
        match self.ws.close(None) {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {}
            Err(error) => return Err(invalid(error)),
        }
        self.queue_replies()
    }

    /// What the socket is to take next.
    pub fn outgoing(&self) -> &[u8] {
        let buffers = self.ws.get_ref();
        &buffers.outgoing[buffers.sent..]
    }

    /// The socket took `n` bytes of `outgoing`.
    pub fn sent(&mut self, n: usize) {
        let buffers = self.ws.get_mut();
        buffers.sent += n;
        if buffers.sent >= buffers.outgoing.len() {
            buffers.outgoing.clear();
            buffers.sent = 0;
            if buffers.outgoing.capacity() > OUTGOING_KEPT_BYTES {
                buffers.outgoing = Vec::new();
            }
        }
    }

    fn queue_replies(&mut self) -> io::Result<()> {
        match self.ws.flush() {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Ok(()),
            Err(error) => Err(invalid(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: FIN, `opcode`, masked with a fixed key (RFC 6455 section 5.3).
    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        frame
    }

    #[test]
    fn binary_payloads_come_out_whatever_the_chunks_and_pings_are_answered() {
        let mut bytes = client_frame(0x2, b"\x10\x0c");
        bytes.extend(client_frame(0x9, b"hi"));
        bytes.extend(client_frame(0x2, b"rest"));
        let mut framing = Framing::server(BytesMut::new(), 1 << 10);
        let mut payloads = Vec::new();
        for chunk in bytes.chunks(3) {
            framing.feed(chunk);
            while let Payload::Data(data) = framing.read().unwrap() {
                payloads.push(data);
            }
        }
        assert_eq!(payloads, [Bytes::from_static(b"\x10\x0c"), Bytes::from_static(b"rest")]);
        // The Pong: FIN and opcode 0xA, unmasked, the Ping's payload.
        assert_eq!(framing.outgoing(), b"\x8a\x02hi");
        framing.sent(4);
        assert!(framing.outgoing().is_empty());
    }

    #[test]
    fn text_frames_oversized_messages_and_unmasked_frames_are_refused() {
        let unmasked = {
            let mut frame = client_frame(0x2, b"x");
            frame[1] &= 0x7f;
            frame.drain(2..6);
            frame
        };
        for bytes in [client_frame(0x1, b"text"), client_frame(0x2, &[0; 200]), unmasked] {
            let mut framing = Framing::server(BytesMut::from(&bytes[..]), 100);
            assert!(framing.read().is_err());
            assert_eq!(framing.read().unwrap(), Payload::Ended, "nothing is read after");
        }
    }

    #[test]
    fn a_close_frame_ends_the_stream_and_is_answered() {
        let mut framing = Framing::server(BytesMut::from(&client_frame(0x8, b"")[..]), 100);
        assert_eq!(framing.read().unwrap(), Payload::Ended);
        assert_eq!(framing.outgoing(), b"\x88\x00");
    }
}
