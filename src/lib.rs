//! Culex: a thread-per-core MQTT broker, drop-in for Mosquitto 2.x.

pub mod protocol;
