//! The AMQP 1.0 load generator: fe2o3-amqp senders, each with a window of unsettled transfers in
//! flight, flat out or at a target rate, counting the ones the proxy answered with `accepted`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::bail;
use fe2o3_amqp::types::messaging::{Body, Data, Message, Outcome};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Connection, Sender, Session};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::load::{pace, payload, stop_after};
use crate::throughput::ThroughputArgs;

/// Sends `args.messages` (or for `args.duration`) over `args.connections` AMQP connections to
/// `addr`, each on address `bench/PREFIX<i>`, at `args.rate` when set; returns the accepted ids and
/// the time from the first send to the last outcome.
pub async fn run(
    args: &ThroughputArgs,
    addr: SocketAddr,
    prefix: &str,
) -> anyhow::Result<(Vec<String>, Duration)> {
    let per = args.messages.div_ceil(args.connections as u64);
    let window = usize::from(args.window);
    let pad = "x".repeat(args.payload.saturating_sub(80));
    let count = if args.duration.is_some() {
        u64::MAX
    } else {
        per
    };
    let rate = args.rate_per_connection();
    let stop = stop_after(args.duration());
    let started = Instant::now();
    let senders: Vec<_> = (0..args.connections)
        .map(|i| {
            let id = format!("{prefix}{i}");
            let (pad, stop) = (pad.clone(), stop.clone());
            tokio::spawn(async move { send(addr, id, count, window, pad, rate, stop).await })
        })
        .collect();
    let mut accepted = Vec::new();
    for s in senders {
        accepted.extend(s.await??);
    }
    Ok((accepted, started.elapsed()))
}

async fn send(
    addr: SocketAddr,
    id: String,
    count: u64,
    window: usize,
    pad: String,
    rate: Option<f64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<String>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    // fe2o3 never sets it; without it every outcome waits for Nagle and delayed ACKs.
    stream.set_nodelay(true)?;
    let mut connection = Connection::builder()
        .container_id(id.clone())
        .open_with_stream(stream)
        .await?;
    let mut session = Session::begin(&mut connection).await?;
    let mut sender = Sender::attach(&mut session, id.clone(), format!("bench/{id}")).await?;
    let mut in_flight = FuturesUnordered::new();
    let mut accepted = Vec::new();
    let mut refused = 0u64;
    let started = Instant::now();
    for seq in 0..count {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        pace(started, seq, rate).await;
        while in_flight.len() >= window {
            if let Some((seq, outcome)) = in_flight.next().await {
                match outcome {
                    Ok(Outcome::Accepted(_)) => accepted.push(format!("{id}-{seq}")),
                    _ => refused += 1,
                }
            }
        }
        let body = payload(&id, seq, &pad);
        let message: Message<Body<Value>> = Message::builder()
            .body(Body::Data(
                vec![Data(Binary::from(body.into_bytes()))].into(),
            ))
            .build();
        let outcome = sender.send_batchable(message).await?;
        in_flight.push(async move { (seq, outcome.await) });
    }
    while let Some((seq, outcome)) = in_flight.next().await {
        match outcome {
            Ok(Outcome::Accepted(_)) => accepted.push(format!("{id}-{seq}")),
            _ => refused += 1,
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), sender.close()).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), session.end()).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), connection.close()).await;
    if refused > 0 {
        bail!("{refused} AMQP messages were not accepted");
    }
    Ok(accepted)
}
