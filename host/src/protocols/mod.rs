//! The protocols clients speak, one module per protocol ([`mqtt`], [`amqp`]), each holding its
//! listener config, its listener and connection code, and its per-client state. A listener turns
//! its protocol's packets into [`crate::message::Message`]s, awaits the pipeline, and maps the
//! [`crate::message::Outcome`] to its own acknowledgement.

pub mod amqp;
pub mod mqtt;
