//! AMQP receivers attached to the proxy's listener, and the built-in `amqp` destination that
//! delivers to them.
//!
//! A client that attaches a receiving link to an address (its source address, `orders/dev1`, or
//! a filter in MQTT syntax, `orders/#`) gets every message a route sends to `amqp:ADDRESS` that
//! matches it; each attached link gets its own copy. The proxy sends unsettled, and a copy counts
//! as delivered when the client settles it `accepted`: `rejected` is a refusal, `released` or
//! `modified` a failure that may pass. As for MQTT subscribers, the destination's acknowledgement
//! resolves once every link it went to has answered, and each link has a bounded queue
//! ([`LINK_QUEUE`] messages) so that a slow receiver fails its copies rather than holding up the
//! others.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use fe2o3_amqp_types::messaging::{Body, Message};
use fe2o3_amqp_types::primitives::Value;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use crate::brokers::amqp::to_amqp;
use crate::brokers::{Ack, BrokerError, Delivery, Destination, all_acknowledged};
use crate::router::TopicFilter;

/// Messages that may wait in one receiving link's queue.
pub const LINK_QUEUE: usize = 1000;

/// A message on its way to one receiving link.
pub struct Outbound {
    pub message: Message<Body<Value>>,
    /// Told the client's outcome. Once its receiver is gone (the source stopped waiting), the
    /// message is not sent.
    pub done: oneshot::Sender<Result<(), BrokerError>>,
}

struct Link {
    id: u64,
    client: Arc<str>,
    filter: TopicFilter,
    queue: mpsc::Sender<Outbound>,
}

/// Every receiving link attached to the proxy's AMQP listeners; the `amqp` destination.
#[derive(Default)]
pub struct Receivers {
    next: AtomicU64,
    links: RwLock<Vec<Link>>,
}

impl Receivers {
    /// Registers a link of `client` receiving what matches `filter`; returns its id (for
    /// [`Receivers::detach`]) and its queue.
    pub fn attach(&self, client: Arc<str>, filter: TopicFilter) -> (u64, mpsc::Receiver<Outbound>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (queue, rx) = mpsc::channel(LINK_QUEUE);
        if let Ok(mut links) = self.links.write() {
            links.push(Link {
                id,
                client,
                filter,
                queue,
            });
        }
        (id, rx)
    }

    /// Removes link `id`.
    pub fn detach(&self, id: u64) {
        if let Ok(mut links) = self.links.write() {
            links.retain(|l| l.id != id);
        }
    }

    fn deliver(&self, delivery: Delivery) -> Result<Ack, BrokerError> {
        let targets: Vec<(Arc<str>, mpsc::Sender<Outbound>)> = match self.links.read() {
            Ok(links) => links
                .iter()
                .filter(|l| l.filter.matches(&delivery.address))
                .map(|l| (l.client.clone(), l.queue.clone()))
                .collect(),
            Err(_) => Vec::new(),
        };
        if targets.is_empty() {
            return Err(BrokerError::NoReceiver(format!(
                "no AMQP receiver is attached to {:?}",
                delivery.address
            )));
        }
        let message = to_amqp(&delivery);
        let mut waits = Vec::with_capacity(targets.len());
        for (client, queue) in targets {
            let (done, wait) = oneshot::channel();
            let outbound = Outbound {
                message: message.clone(),
                done,
            };
            let wait = match queue.try_send(outbound) {
                Ok(()) => async move {
                    wait.await.unwrap_or_else(|_| {
                        Err(BrokerError::Retriable(format!(
                            "AMQP client {client:?} detached before settling"
                        )))
                    })
                }
                .boxed(),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    futures::future::ready(Err(BrokerError::Retriable(format!(
                        "the queue of AMQP client {client:?} is full ({LINK_QUEUE} messages)"
                    ))))
                    .boxed()
                }
                Err(mpsc::error::TrySendError::Closed(_)) => futures::future::ready(Err(
                    BrokerError::Retriable(format!("AMQP client {client:?} detached")),
                ))
                .boxed(),
            };
            waits.push(wait);
        }
        Ok(all_acknowledged(waits))
    }
}

impl Destination for Receivers {
    fn enqueue(&self, delivery: Delivery) -> BoxFuture<'_, Result<Ack, BrokerError>> {
        futures::future::ready(self.deliver(delivery)).boxed()
    }

    fn probe(&self) -> BoxFuture<'static, Result<(), BrokerError>> {
        futures::future::ready(Ok(())).boxed()
    }
}
