//! Feeds arbitrary bytes to the decoder in every protocol version, with a maximum packet size
//! taken from the input: no input may panic, loop or allocate beyond the packet's size.
#![no_main]

use bytes::BytesMut;
use culex::protocol::{Packet, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&max_byte, bytes)) = data.split_first() else { return };
    let max_packet_size = 2 + u32::from(max_byte) * 64;
    for version in [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut buf = BytesMut::from(bytes);
        while let Ok(Some(packet)) = Packet::decode(&mut buf, version, max_packet_size) {
            // What decodes must encode to something that decodes to the same packet.
            let mut out = BytesMut::new();
            packet.encode(version, &mut out);
            let again = Packet::decode(&mut out, version, u32::MAX).expect("re-decodes");
            assert_eq!(again.as_ref(), Some(&packet));
        }
    }
});
