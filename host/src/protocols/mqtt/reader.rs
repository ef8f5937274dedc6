//! Reads a connection's packets into a buffer that the connection gives back while it is quiet.
//!
//! Most of a device's life is silence. A read buffer kept for the whole connection would be most
//! of what an idle connection costs (tokio-util's `FramedRead` keeps 8 KiB, and cannot shrink:
//! a buffer it is given back would make it read a few bytes at a time from then on). Here a
//! connection waiting for its next packet holds no buffer at all: the read that ends the wait
//! lands on the worker's stack and is copied into a new buffer of just its size, which
//! [`PacketReader::release`] drops again once nothing is buffered and nothing is in flight.
//! While packets keep coming, reads go straight into the buffer, with at least [`MIN_SPARE`]
//! bytes of room each.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_util::codec::Decoder;

use super::codec::{DecodeError, Incoming, MqttDecoder};

/// What a read gets room for when the buffer's spare room is below [`MIN_SPARE`]: a burst of a
/// few dozen small PUBLISH packets in one system call.
const READ_CHUNK: usize = 8 * 1024;

/// Below this much spare room, the buffer grows by [`READ_CHUNK`] before a read.
const MIN_SPARE: usize = 1024;

/// One connection's packets, decoded as they arrive.
pub(super) struct PacketReader<R> {
    half: R,
    decoder: MqttDecoder,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    /// Reads from `half` with `decoder`; no buffer until the first read.
    pub(super) fn new(half: R, decoder: MqttDecoder) -> Self {
        PacketReader {
            half,
            decoder,
            buf: BytesMut::new(),
        }
    }

    /// The next packet, or `None` once the client closed the connection between packets.
    ///
    /// Cancel-safe, as `select!` needs: a packet is only taken out of the buffer once it is
    /// whole, and a read that did not finish took nothing from the socket.
    pub(super) async fn next(&mut self) -> Option<Result<Incoming, DecodeError>> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(packet)) => return Some(Ok(packet)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            let read = if self.buf.capacity() == 0 {
                self.read_into_new_buffer().await
            } else {
                if self.buf.capacity() - self.buf.len() < MIN_SPARE {
                    self.buf.reserve(READ_CHUNK);
                }
                self.half.read_buf(&mut self.buf).await
            };
            match read {
                Ok(0) if self.buf.is_empty() => return None,
                Ok(0) => {
                    return Some(Err(DecodeError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a packet",
                    ))));
                }
                Ok(_) => {}
                Err(e) => return Some(Err(DecodeError::Io(e))),
            }
        }
    }

    /// Waits for data without holding a buffer: each poll reads into a chunk on the stack, and
    /// only bytes that arrived are copied into a new buffer. Cancel-safe: the copy happens in the
    /// same poll as the read.
    async fn read_into_new_buffer(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| {
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut self.half).poll_read(cx, &mut read))?;
            let filled = read.filled();
            if !filled.is_empty() {
                // Exactly what arrived: the packets decoded from it share this allocation until
                // their messages are delivered, so a lone 300-byte PUBLISH after a silence pins
                // 300 bytes rather than a whole chunk. A packet that goes on in the next read
                // grows the buffer then.
                self.buf = BytesMut::from(filled);
            }
            Poll::Ready(Ok(filled.len()))
        })
        .await
    }

    /// Gives the buffer back if it holds nothing: the next read allocates a new one. Called when
    /// the connection has nothing in flight, so a busy connection keeps its buffer.
    pub(super) fn release(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A 3.1.1 CONNECT of client id "c".
    const CONNECT: [u8; 15] = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 1, b'c',
    ];

    #[tokio::test]
    async fn a_packet_in_pieces_is_read_whole_and_the_buffer_is_given_back() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = PacketReader::new(server, MqttDecoder::new(1024));
        client.write_all(&CONNECT[..5]).await.unwrap();
        let next = tokio::spawn(async move {
            let packet = reader.next().await;
            (reader, packet)
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        client.write_all(&CONNECT[5..]).await.unwrap();
        let (mut reader, packet) = next.await.unwrap();
        assert!(
            matches!(packet, Some(Ok(Incoming::Connect(_)))),
            "{packet:?}"
        );
        assert!(reader.buf.capacity() >= MIN_SPARE);
        reader.release();
        assert_eq!(reader.buf.capacity(), 0);

        // A client that closes between packets ends the stream; one that closes inside a
        // packet is an error.
        client.write_all(&[0xc0]).await.unwrap(); // the first byte of a PINGREQ
        drop(client);
        let end = reader.next().await;
        assert!(matches!(end, Some(Err(DecodeError::Io(_)))), "{end:?}");
    }

    #[tokio::test]
    async fn a_reader_waiting_for_data_holds_no_buffer() {
        use futures::FutureExt;
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = PacketReader::new(server, MqttDecoder::new(1024));
        // One poll: nothing to read, so the read is pending, and the buffer it will fill does
        // not exist yet.
        assert!(reader.next().now_or_never().is_none());
        assert_eq!(reader.buf.capacity(), 0);
        client.write_all(&CONNECT).await.unwrap();
        assert!(matches!(
            reader.next().await,
            Some(Ok(Incoming::Connect(_)))
        ));
        // The bytes that ended the wait were copied into a buffer of their own size, all of
        // which the packet took: nothing more stays allocated for it.
        assert_eq!(reader.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn a_connection_closed_between_packets_ends_quietly() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = PacketReader::new(server, MqttDecoder::new(1024));
        client.write_all(&CONNECT).await.unwrap();
        drop(client);
        assert!(matches!(
            reader.next().await,
            Some(Ok(Incoming::Connect(_)))
        ));
        assert!(reader.next().await.is_none());
    }
}
