//! Any bytes as the PROXY header a connection opens with, in both versions: a header and its
//! length within the bytes, a wait for more, or an error; never a panic, and a complete header
//! is found again in the same bytes followed by anything.
#![no_main]

use culex::proxy::{parse, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for version in [Version::V1, Version::V2] {
        if let Ok(Some((header, len))) = parse(data, version) {
            assert!(len <= data.len());
            let mut longer = data[..len].to_vec();
            longer.extend_from_slice(b"\x10MQTT");
            let again = parse(&longer, version).expect("parses again").expect("complete");
            assert_eq!(again, (header, len));
        }
    }
});
