//! `bootstrap: embedded`: librdkafka's mock cluster inside the proxy, so that it runs with no
//! external broker.

use std::sync::mpsc;

use rdkafka::mocking::MockCluster;

use crate::brokers::BrokerError;

/// A Kafka cluster inside this process (librdkafka's mock cluster), reachable over TCP on a
/// loopback port, so the proxy runs with no external broker. Not for production: it keeps records
/// in memory and loses them on exit.
pub struct EmbeddedKafka {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster.
    pub fn start() -> Result<Self, BrokerError> {
        // The mock cluster holds raw librdkafka pointers and is not `Send`: it lives on a thread
        // of its own until the handle is dropped.
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("barnabas-embedded-kafka".into())
            .spawn(move || match MockCluster::new(1) {
                Ok(cluster) => {
                    let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                    // Blocks until the handle is dropped (the sender disconnects).
                    let _ = stop_rx.recv();
                    drop(cluster);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            })
            .map_err(|e| BrokerError::Permanent(format!("cannot start embedded Kafka: {e}")))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| BrokerError::Permanent("embedded Kafka thread ended".into()))?
            .map_err(|e| BrokerError::Permanent(format!("cannot start embedded Kafka: {e}")))?;
        Ok(EmbeddedKafka {
            bootstrap,
            stop: Some(stop_tx),
        })
    }

    /// The `host:port` list clients (kcat, consumers) use to reach it.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        self.stop.take();
    }
}
