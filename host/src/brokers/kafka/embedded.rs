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
    /// Requests to the cluster's thread; dropping it stops the cluster.
    requests: Option<mpsc::Sender<Request>>,
}

/// What the cluster's thread is asked to do.
enum Request {
    /// Create a topic (one partition) unless it exists, and say how it went.
    CreateTopic(String, mpsc::Sender<Result<(), String>>),
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster.
    pub fn start() -> Result<Self, BrokerError> {
        // The mock cluster holds raw librdkafka pointers and is not `Send`: it lives on a thread
        // of its own until the handle is dropped.
        let (ready_tx, ready_rx) = mpsc::channel();
        let (requests_tx, requests_rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("barnabas-embedded-kafka".into())
            .spawn(move || match MockCluster::new(1) {
                Ok(cluster) => {
                    let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                    // Serves requests until the handle is dropped (the sender disconnects).
                    while let Ok(request) = requests_rx.recv() {
                        match request {
                            Request::CreateTopic(topic, reply) => {
                                let result = cluster
                                    .create_topic(&topic, 1, 1)
                                    .map_err(|e| e.to_string());
                                let _ = reply.send(result);
                            }
                        }
                    }
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
            requests: Some(requests_tx),
        })
    }

    /// Creates `topic` with one partition, unless it exists. A source route's reader that
    /// subscribes to a topic nobody has written yet would otherwise wait for it, and start at its
    /// end once it appears, missing what was written meanwhile.
    pub fn create_topic(&self, topic: &str) -> Result<(), BrokerError> {
        let gone = || BrokerError::Permanent("embedded Kafka thread ended".into());
        let (reply_tx, reply_rx) = mpsc::channel();
        self.requests
            .as_ref()
            .ok_or_else(gone)?
            .send(Request::CreateTopic(topic.to_string(), reply_tx))
            .map_err(|_| gone())?;
        reply_rx
            .recv()
            .map_err(|_| gone())?
            .map_err(|e| BrokerError::Permanent(format!("cannot create topic {topic}: {e}")))
    }

    /// The `host:port` list clients (kcat, consumers) use to reach it.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        self.requests.take();
    }
}
