//! Entry points for coverage-guided fuzzing (the targets in `fuzz/`) and for the replay of their
//! corpora in the test suite. Each feeds arbitrary bytes to one parser of untrusted input, the way
//! the proxy does: the MQTT decoder (CONNECT first, then packets of either version), the AMQP
//! frame guard in front of fe2o3's acceptor, and the routes.yaml compiler. Whatever the bytes, they
//! must return: a panic, a hang or unbounded memory here is a bug reachable from the network (or
//! from a config edit). Not part of the stable API.

use std::path::Path;

use crate::config::Config;

/// The MQTT decoder of one connection, fed `data` in two reads split where its first byte says.
pub fn mqtt_decoder(data: &[u8]) {
    crate::protocols::mqtt::fuzz_decode(data);
}

/// The AMQP frame guard of one connection, fed `data` in reads as long as its first byte says.
pub fn amqp_guard(data: &[u8]) {
    crate::protocols::amqp::fuzz_guard(data);
}

/// The routes.yaml compiler, on `data` as the text of a config file.
pub fn routes_yaml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(Path::new("/nonexistent/routes.yaml"), text);
    }
}
