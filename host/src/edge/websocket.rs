//! MQTT over WebSocket (MQTT 5 §6, 3.1.1 §6): the HTTP upgrade, then MQTT bytes in binary frames.
//!
//! The upgrade must ask for the listener's `path`; the subprotocol answered is `mqtt` (what MQTT 5
//! and 3.1.1 clients offer; `mqttv3.1` is accepted from older ones). Once upgraded, the connection
//! is turned into a plain byte stream, both ways, so the MQTT connection code serves it exactly
//! as it serves TCP: binary frames are concatenated (an MQTT packet may span frames and a frame
//! may hold several packets, as the standard allows), a text frame ends the connection
//! [MQTT-6.0.0-1], and every write leaves as one binary frame. Pings are answered by tungstenite.

use std::io;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The subprotocols an MQTT client may offer, in the order they are preferred.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Boxed halves of a connection, whatever it runs over.
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// See [`Reader`].
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Runs the WebSocket upgrade on `stream` for `path`, then returns it as a reader and a writer
/// of MQTT bytes. `max_frame` bounds one frame and one message (the listener's
/// `max_packet_size`, with room for framing), so a client cannot make the proxy buffer more.
pub async fn accept<S>(stream: S, path: &str, max_frame: usize) -> io::Result<(Reader, Writer)>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // The signature tungstenite's handshake callback has.
    #[allow(clippy::result_large_err)]
    let answer = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() != path {
            return Err(refusal(
                StatusCode::NOT_FOUND,
                "no MQTT endpoint at this path",
            ));
        }
        let offered: Vec<&str> = request
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(str::trim))
            .collect();
        if offered.is_empty() {
            // Not what the standard asks of a client, but what some do: served as `mqtt`.
            return Ok(response);
        }
        let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.contains(p)) else {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "the WebSocket subprotocol must be mqtt",
            ));
        };
        response
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(chosen));
        Ok(response)
    };
    let config = WebSocketConfig::default()
        .max_frame_size(Some(max_frame))
        .max_message_size(Some(max_frame));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, answer, Some(config))
        .await
        .map_err(io::Error::other)?;
    let (sink, stream) = ws.split();
    let incoming = stream.filter_map(|frame| async move {
        match frame {
            Ok(Message::Binary(bytes)) => Some(Ok(bytes)),
            Ok(Message::Text(_)) => Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a text frame: MQTT travels in binary frames",
            ))),
            // Ping, pong and close are tungstenite's; the stream ends after a close.
            Ok(_) => None,
            Err(e) => Some(Err(io::Error::other(e))),
        }
    });
    let reader = tokio_util::io::StreamReader::new(Box::pin(incoming));
    let outgoing = sink
        .sink_map_err(io::Error::other)
        .with(|bytes: Bytes| futures::future::ready(Ok::<_, io::Error>(Message::Binary(bytes))));
    let writer = tokio_util::io::SinkWriter::new(tokio_util::io::CopyToBytes::new(outgoing));
    Ok((Box::new(reader), Box::new(writer)))
}

fn refusal(status: StatusCode, reason: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(reason.to_string()));
    *response.status_mut() = status;
    response
}
