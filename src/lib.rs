//! Culex: a thread-per-core MQTT broker, drop-in for Mosquitto 2.x.

pub mod auth;
pub mod broker;
pub mod config;
pub mod logging;
pub mod protocol;
pub mod store;
