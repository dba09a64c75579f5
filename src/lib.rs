//! Culex: a thread-per-core MQTT broker, drop-in for Mosquitto 2.x.

pub mod auth;
pub mod bridge;
pub mod broker;
pub mod config;
pub mod logging;
pub mod protocol;
pub mod proxy;
pub mod runtime;
pub mod store;
pub mod sys;
pub mod tls;
pub mod websocket;
