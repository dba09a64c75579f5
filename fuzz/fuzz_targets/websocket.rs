//! Any bytes as what a WebSocket listener's connection sends: the request head (answered,
//! never a panic), then, as if upgraded, frames fed in chunks whose sizes come from the input.
//! Every payload that comes out is within the message bound; an error ends the reading.
#![no_main]

use bytes::BytesMut;
use culex::websocket::{answer, Framing, Payload, Settings};
use libfuzzer_sys::fuzz_target;

/// The bound on a message, as `max_packet_size` gives it.
const MESSAGE_BYTES_MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else { return };
    let settings = Settings { headers_size_max: 1024, ..Settings::default() };
    let _ = answer(bytes, &settings);

    let mut framing = Framing::server(BytesMut::new(), MESSAGE_BYTES_MAX);
    for piece in bytes.chunks(usize::from(chunk).max(1)) {
        framing.feed(piece);
        loop {
            match framing.read() {
                Ok(Payload::Data(payload)) => assert!(payload.len() <= MESSAGE_BYTES_MAX),
                Ok(Payload::NeedBytes) => break,
                Ok(Payload::Ended) | Err(_) => return,
            }
            let sent = framing.outgoing().len();
            framing.sent(sent);
        }
    }
    let _ = framing.write(b"\x20\x02\x00\x00");
    let _ = framing.close();
});
