//! Ingress: the protocol listeners clients connect to. Each turns its protocol's packets into
//! [`crate::message::Message`]s, awaits `Pipeline::dispatch`, and maps the
//! [`crate::message::Outcome`] to its own acknowledgement.

pub mod amqp;
pub mod mqtt;
