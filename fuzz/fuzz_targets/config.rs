//! Any bytes as a mosquitto.conf: a configuration, or an error that names the file and a line
//! within it; never a panic.
#![no_main]

use std::path::Path;

use culex::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(error) = Config::parse(&text, Path::new("fuzz.conf")) {
        assert!(error.to_string().starts_with("fuzz.conf:"), "{error}");
        if let ConfigError::InvalidValue { line, .. }
        | ConfigError::UnknownOption { line, .. }
        | ConfigError::Refused { line, .. } = error
        {
            assert!((1..=text.lines().count().max(1)).contains(&line), "line {line}");
        }
    }
});
