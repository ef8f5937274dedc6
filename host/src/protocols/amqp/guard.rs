//! A frame-level guard between a client's socket and fe2o3's acceptor: it answers a transfer on a
//! link the client never attached with `amqp:session:unattached-handle` and closes the connection.
//!
//! fe2o3-amqp's listener session drops such a transfer without a word (it tolerates transfers
//! racing ahead of an attach it has not processed yet), so the client would wait for an outcome
//! that never comes. On the wire the order is unambiguous: a client's attach always precedes its
//! transfers. The guard reads the frames as they pass, keeps the handles each of the client's
//! sessions has attached, and on a transfer for any other handle it stops feeding fe2o3, writes a
//! Close frame carrying the error at the next frame boundary of the outgoing stream, and ends the
//! connection. Nothing else is changed: the bytes reach fe2o3 as they came, in the buffers they
//! came in, and only the first bytes of a frame are looked at (a transfer's payload is skipped).
//!
//! Only the leading fields of four performatives are decoded: attach (name, handle), detach,
//! transfer (handle) and end. A frame the guard cannot read (a malformed one, or an attach too
//! large to hold) turns the guard off for that connection and leaves the judgement to fe2o3, so
//! the guard can never refuse a frame fe2o3 would take.

use std::collections::{HashMap, HashSet};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use fe2o3_amqp_types::definitions::{self, SessionError};
use fe2o3_amqp_types::performatives::Close;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most of a frame's start the guard holds to decode it; beyond it the guard turns off.
const MAX_HEAD: usize = 64 * 1024;

/// How much of a frame body the guard gathers at least before decoding it again: enough for a
/// transfer's handle, so a transfer is judged once its first bytes are in, not byte by byte.
const READ_AHEAD: usize = 64;

/// A client stream watched for transfers on unattached links.
pub struct Guarded<S> {
    inner: S,
    inbound: Inbound,
    outbound: Boundaries,
    /// Set once a violation is seen: the Close frame to write and how much of it is written.
    close: Option<(Vec<u8>, usize)>,
    /// The reader waiting for the outgoing stream to reach a frame boundary.
    read_waker: Option<Waker>,
}

impl<S> std::fmt::Debug for Guarded<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("closing", &self.close.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> Guarded<S> {
    pub fn new(inner: S) -> Self {
        Guarded {
            inner,
            inbound: Inbound::default(),
            outbound: Boundaries::default(),
            close: None,
            read_waker: None,
        }
    }
}

/// A transfer on a handle its session has not attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Violation {
    /// Where the offending frame starts in the bytes just scanned (0 if it began earlier).
    at: usize,
    channel: u16,
    handle: u32,
}

impl Violation {
    /// The Close frame (channel 0) that tells the client what it did.
    fn close_frame(&self) -> Vec<u8> {
        let error = definitions::Error::new(
            SessionError::UnattachedHandle,
            Some(format!(
                "transfer on handle {} of channel {}, which is not an attached link",
                self.handle, self.channel
            )),
            None,
        );
        encode_frame(0, &Close { error: Some(error) }, &[])
    }
}

/// An AMQP frame: header (doff 2, no extended header), the performative, then `payload`.
fn encode_frame(channel: u16, performative: &impl serde::Serialize, payload: &[u8]) -> Vec<u8> {
    let body = serde_amqp::to_vec(performative).unwrap_or_default();
    let size = u32::try_from(8 + body.len() + payload.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(8 + body.len() + payload.len());
    frame.extend_from_slice(&size.to_be_bytes());
    frame.extend_from_slice(&[2, 0]);
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&body);
    frame.extend_from_slice(payload);
    frame
}

/// The protocol headers and frame boundaries of one direction of the stream.
#[derive(Default)]
struct Boundaries {
    /// Bytes of the current header or frame still to come.
    remaining: usize,
    /// The first bytes of a header or frame, while fewer than 8 have passed.
    head: [u8; 8],
    head_len: usize,
}

impl Boundaries {
    fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.head_len == 0
    }

    fn track(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (8 - self.head_len).min(data.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&data[..n]);
            self.head_len += n;
            data = &data[n..];
            if self.head_len == 8 {
                // A protocol header is 8 bytes; a frame's size counts its own 8-byte header.
                self.remaining = if &self.head[..4] == b"AMQP" {
                    0
                } else {
                    frame_size(&self.head).saturating_sub(8)
                };
                self.head_len = 0;
            }
        }
    }
}

fn frame_size(head: &[u8]) -> usize {
    u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize
}

/// The client's side: its frames, as far as needed to know which handles are attached.
#[derive(Default)]
struct Inbound {
    /// Bytes of the current unit to pass without looking.
    skip: usize,
    /// The start of the current unit, gathered until it can be judged.
    head: Vec<u8>,
    /// Handles attached by the client, per channel of its sessions.
    attached: HashMap<u16, HashSet<u32>>,
    /// Set when a frame could not be read: the guard steps aside for the rest of the connection.
    off: bool,
}

/// What the leading bytes of a frame say, once enough of them are here.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Attach { handle: u32 },
    Detach { handle: u32 },
    Transfer { handle: u32 },
    End,
    Other,
}

/// Why a frame's start could not be judged yet.
#[derive(Debug, PartialEq, Eq)]
enum Short {
    /// This many bytes of the frame are needed.
    Need(usize),
    /// Not something the guard can read.
    Unreadable,
}

impl Inbound {
    /// Follows `data`, the next bytes from the client. Returns the first violation in them.
    fn scan(&mut self, data: &[u8]) -> Option<Violation> {
        let mut pos = 0;
        // Where the unit being judged started within `data` (0 if in an earlier read).
        let mut unit_start = 0;
        while !self.off {
            if self.skip > 0 {
                if pos == data.len() {
                    break;
                }
                let n = self.skip.min(data.len() - pos);
                self.skip -= n;
                pos += n;
                continue;
            }
            if self.head.is_empty() {
                if pos == data.len() {
                    break;
                }
                unit_start = pos;
            }
            match self.judge() {
                Ok(None) => {}
                Ok(Some(violation)) => {
                    return Some(Violation {
                        at: unit_start,
                        ..violation
                    });
                }
                Err(Short::Need(need)) => {
                    if pos == data.len() {
                        break;
                    }
                    let n = (need - self.head.len()).min(data.len() - pos);
                    self.head.extend_from_slice(&data[pos..pos + n]);
                    pos += n;
                }
                Err(Short::Unreadable) => self.off = true,
            }
        }
        None
    }

    /// Judges the unit in `head` if enough of it is there: Ok(None) when done with it (and `skip`
    /// set to its rest), a violation, or how many bytes it needs first.
    fn judge(&mut self) -> Result<Option<Violation>, Short> {
        if self.head.len() < 8 {
            return Err(Short::Need(8));
        }
        if &self.head[..4] == b"AMQP" {
            self.head.clear();
            return Ok(None);
        }
        let size = frame_size(&self.head);
        let doff = usize::from(self.head[4]) * 4;
        let kind = self.head[5];
        let channel = u16::from_be_bytes([self.head[6], self.head[7]]);
        if size < 8 || doff < 8 || doff > size {
            return Err(Short::Unreadable);
        }
        // An extended header (doff above 2 words) comes before the body: gather all of it first.
        // (doff is at most 1020 bytes, well under MAX_HEAD.)
        if self.head.len() < doff {
            return Err(Short::Need(doff));
        }
        // SASL frames and empty (heartbeat) frames carry no performative of interest.
        let frame = if kind != 0 || size == doff {
            Frame::Other
        } else {
            match performative(&self.head[doff..], size - doff) {
                Ok(frame) => frame,
                Err(Short::Need(n)) if doff + n <= MAX_HEAD => {
                    return Err(Short::Need((doff + n.max(READ_AHEAD)).min(size)));
                }
                Err(_) => return Err(Short::Unreadable),
            }
        };
        let violation = match frame {
            Frame::Attach { handle } => {
                self.attached.entry(channel).or_default().insert(handle);
                None
            }
            Frame::Detach { handle } => {
                if let Some(handles) = self.attached.get_mut(&channel) {
                    handles.remove(&handle);
                }
                None
            }
            Frame::End => {
                self.attached.remove(&channel);
                None
            }
            Frame::Transfer { handle } => {
                let attached = self
                    .attached
                    .get(&channel)
                    .is_some_and(|handles| handles.contains(&handle));
                (!attached).then_some(Violation {
                    at: 0,
                    channel,
                    handle,
                })
            }
            Frame::Other => None,
        };
        self.skip = size - self.head.len();
        self.head.clear();
        Ok(violation)
    }
}

/// Reads the leading fields of a performative from `body`, the start of a frame body of
/// `body_size` bytes. Only the encodings AMQP 1.0 allows for these fields are accepted.
fn performative(body: &[u8], body_size: usize) -> Result<Frame, Short> {
    let mut r = Reader {
        bytes: body,
        pos: 0,
        limit: body_size,
    };
    if r.byte()? != 0x00 {
        return Err(Short::Unreadable);
    }
    let code = match r.byte()? {
        0x53 => u64::from(r.byte()?),
        0x80 => u64::from_be_bytes(r.array()?),
        0xa3 => {
            let len = usize::from(r.byte()?);
            descriptor_code(r.take(len)?)
        }
        _ => return Err(Short::Unreadable),
    };
    let count = match r.byte()? {
        0x45 => 0,
        0xc0 => {
            r.byte()?;
            u32::from(r.byte()?)
        }
        0xd0 => {
            r.array::<4>()?;
            u32::from_be_bytes(r.array()?)
        }
        _ => return Err(Short::Unreadable),
    };
    match code {
        // attach: name, then handle.
        0x12 if count >= 2 => {
            match r.byte()? {
                0xa1 => {
                    let len = usize::from(r.byte()?);
                    r.take(len)?;
                }
                0xb1 => {
                    let len = u32::from_be_bytes(r.array()?) as usize;
                    r.take(len)?;
                }
                _ => return Err(Short::Unreadable),
            }
            Ok(Frame::Attach {
                handle: r.handle()?,
            })
        }
        0x16 if count >= 1 => Ok(Frame::Detach {
            handle: r.handle()?,
        }),
        0x14 if count >= 1 => Ok(Frame::Transfer {
            handle: r.handle()?,
        }),
        0x17 => Ok(Frame::End),
        // A performative missing its mandatory fields is fe2o3's to refuse.
        0x12 | 0x14 | 0x16 => Err(Short::Unreadable),
        _ => Ok(Frame::Other),
    }
}

/// The numeric code for a performative named by its symbolic descriptor.
fn descriptor_code(name: &[u8]) -> u64 {
    match name {
        b"amqp:attach:list" => 0x12,
        b"amqp:transfer:list" => 0x14,
        b"amqp:detach:list" => 0x16,
        b"amqp:end:list" => 0x17,
        _ => 0,
    }
}

/// A cursor over the start of a frame body that tells how much more it needs.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// The body's full size: reading past it means the frame is malformed, not short.
    limit: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        let end = self.pos + n;
        if end > self.limit {
            return Err(Short::Unreadable);
        }
        if end > self.bytes.len() {
            return Err(Short::Need(end));
        }
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, Short> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A handle: uint, smalluint or uint0.
    fn handle(&mut self) -> Result<u32, Short> {
        match self.byte()? {
            0x70 => Ok(u32::from_be_bytes(self.array()?)),
            0x52 => Ok(u32::from(self.byte()?)),
            0x43 => Ok(0),
            _ => Err(Short::Unreadable),
        }
    }
}

impl<S: AsyncWrite + Unpin> Guarded<S> {
    /// Writes the Close frame once the outgoing stream is at a frame boundary.
    fn write_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((frame, written)) = &mut self.close else {
            return Poll::Ready(Ok(()));
        };
        if !self.outbound.at_boundary() {
            // fe2o3 is part way through a frame: poll_write finishes it, then wakes us.
            self.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        while *written < frame.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &frame[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.close.is_some() {
            // After a violation fe2o3 is told the client has gone (end of stream), once the
            // client has its Close.
            return this.write_close(cx);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let Some(violation) = this.inbound.scan(&buf.filled()[before..]) else {
            return Poll::Ready(Ok(()));
        };
        tracing::info!(
            channel = violation.channel,
            handle = violation.handle,
            "amqp transfer on an unattached link; closing the connection"
        );
        this.close = Some((violation.close_frame(), 0));
        // What came before the offending frame still reaches fe2o3; the frame and all after it
        // do not.
        buf.set_filled(before + violation.at);
        if violation.at > 0 {
            return Poll::Ready(Ok(()));
        }
        this.write_close(cx)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close.is_some() && this.outbound.at_boundary() {
            // The connection is closing with the guard's Close: fe2o3's frames go nowhere.
            if let Some(waker) = this.read_waker.take() {
                waker.wake();
            }
            return Poll::Ready(Ok(buf.len()));
        }
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.outbound.track(&buf[..n]);
        if this.close.is_some()
            && this.outbound.at_boundary()
            && let Some(waker) = this.read_waker.take()
        {
            waker.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.close.is_some() {
            std::task::ready!(this.write_close(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Scans `data` as a client's stream in reads as long as its first byte says (1 to 256), and
/// tracks the same bytes as the outgoing stream's frame boundaries.
pub(super) fn fuzz_scan(data: &[u8]) {
    let Some((step, data)) = data.split_first() else {
        return;
    };
    let mut inbound = Inbound::default();
    let mut outbound = Boundaries::default();
    for chunk in data.chunks(usize::from(*step) + 1) {
        outbound.track(chunk);
        if let Some(violation) = inbound.scan(chunk) {
            let _ = violation.close_frame();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use fe2o3_amqp_types::definitions::Role;
    use fe2o3_amqp_types::performatives::{Attach, Begin, Detach, End, Transfer};

    use super::encode_frame as frame;

    fn attach(handle: u32, name: &str) -> Attach {
        Attach {
            name: name.into(),
            handle: handle.into(),
            role: Role::Sender,
            snd_settle_mode: Default::default(),
            rcv_settle_mode: Default::default(),
            source: None,
            target: None,
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: Some(0),
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        }
    }

    fn transfer(handle: u32) -> Transfer {
        Transfer {
            handle: handle.into(),
            delivery_id: Some(0),
            delivery_tag: Some(vec![1, 2, 3].into()),
            message_format: Some(0),
            settled: None,
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        }
    }

    /// A conversation: header, begin, attach 0, transfers on 0, detach 0, and what follows it.
    fn conversation(after: &[Vec<u8>]) -> Vec<u8> {
        let begin = Begin {
            remote_channel: None,
            next_outgoing_id: 0,
            incoming_window: 100,
            outgoing_window: 100,
            handle_max: Default::default(),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        let mut bytes = b"AMQP\x00\x01\x00\x00".to_vec();
        bytes.extend(frame(1, &begin, &[]));
        bytes.extend(frame(1, &attach(0, &"n".repeat(300)), &[]));
        bytes.extend(frame(1, &transfer(0), &[7; 5000]));
        bytes.extend(frame(1, &transfer(0), &[]));
        for f in after {
            bytes.extend_from_slice(f);
        }
        bytes
    }

    /// Scans `bytes` in pieces of `step`, returning the violation and its absolute offset.
    fn scan_in_steps(bytes: &[u8], step: usize) -> Option<(usize, Violation)> {
        let mut inbound = Inbound::default();
        for (i, chunk) in bytes.chunks(step).enumerate() {
            if let Some(v) = inbound.scan(chunk) {
                return Some((i * step + v.at, v));
            }
        }
        None
    }

    #[test]
    fn attached_transfers_pass_in_any_split() {
        let bytes = conversation(&[]);
        for step in [1, 3, 7, 8, 9, 64, 1000, bytes.len()] {
            assert_eq!(scan_in_steps(&bytes, step), None, "step {step}");
        }
    }

    #[test]
    fn transfer_on_an_unattached_handle_is_caught_where_its_frame_starts() {
        let good = conversation(&[]);
        let bad = frame(1, &transfer(5), &[1; 10]);
        let bytes = conversation(&[bad]);
        for step in [1, 5, 8, 13, 4096, bytes.len()] {
            let (offset, v) = scan_in_steps(&bytes, step).expect("violation");
            assert_eq!((v.channel, v.handle), (1, 5), "step {step}");
            // The offset is exact when the frame starts within the read that completes it.
            if step >= bytes.len() {
                assert_eq!(offset, good.len());
            }
        }
    }

    #[test]
    fn detached_and_ended_handles_are_unattached_again() {
        let detach = Detach {
            handle: 0.into(),
            closed: true,
            error: None,
        };
        let bytes = conversation(&[frame(1, &detach, &[]), frame(1, &transfer(0), &[])]);
        assert!(scan_in_steps(&bytes, 17).is_some());

        let bytes = conversation(&[
            frame(1, &End { error: None }, &[]),
            frame(1, &transfer(0), &[]),
        ]);
        assert!(scan_in_steps(&bytes, 17).is_some());
        // Another channel's handle 0 was never attached either.
        let bytes = conversation(&[frame(2, &transfer(0), &[])]);
        assert_eq!(scan_in_steps(&bytes, 17).map(|(_, v)| v.channel), Some(2));
    }

    #[test]
    fn unreadable_frames_turn_the_guard_off() {
        let mut bytes = b"AMQP\x00\x01\x00\x00".to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 9, 2, 0, 0, 0, 0xff]);
        bytes.extend(frame(0, &transfer(3), &[]));
        assert_eq!(scan_in_steps(&bytes, 4), None);
    }

    #[test]
    fn extended_headers_are_gathered_before_the_body_is_read() {
        // doff 4 (16 bytes): 8 bytes of extended header before the performative.
        let attach_body = serde_amqp::to_vec(&attach(0, "x")).unwrap();
        let mut bytes = b"AMQP\x00\x01\x00\x00".to_vec();
        for (channel, body) in [
            (1u16, attach_body),
            (1, serde_amqp::to_vec(&transfer(4)).unwrap()),
        ] {
            let size = u32::try_from(16 + body.len()).unwrap();
            bytes.extend_from_slice(&size.to_be_bytes());
            bytes.extend_from_slice(&[4, 0]);
            bytes.extend_from_slice(&channel.to_be_bytes());
            bytes.extend_from_slice(&[0xee; 8]);
            bytes.extend_from_slice(&body);
        }
        for step in [1, 3, 8, 9, 15, 16, 17, bytes.len()] {
            let found = scan_in_steps(&bytes, step).map(|(_, v)| v.handle);
            assert_eq!(found, Some(4), "step {step}");
        }
        // A frame made only of a long extended header, and the largest doff with no body.
        let mut bytes = b"AMQP\x00\x01\x00\x00".to_vec();
        bytes.extend_from_slice(&[0, 0, 0x03, 0xfc, 0xff, 0, 0, 0]);
        bytes.extend_from_slice(&[0; 0x3fc - 8]);
        bytes.extend(frame(0, &transfer(3), &[]));
        for step in [1, 8, 100, bytes.len()] {
            assert!(scan_in_steps(&bytes, step).is_some(), "step {step}");
        }
    }

    #[test]
    fn boundaries_follow_headers_and_frames() {
        let bytes = conversation(&[]);
        let mut b = Boundaries::default();
        for chunk in bytes.chunks(5) {
            b.track(chunk);
        }
        assert!(b.at_boundary());
        b.track(&bytes[..20]);
        assert!(!b.at_boundary());
    }

    #[test]
    fn the_close_frame_decodes() {
        let v = Violation {
            at: 0,
            channel: 1,
            handle: 5,
        };
        let f = v.close_frame();
        assert_eq!(frame_size(&f), f.len());
        let close: Close = serde_amqp::from_slice(&f[8..]).unwrap();
        let error = close.error.unwrap();
        assert!(matches!(
            error.condition,
            definitions::ErrorCondition::SessionError(SessionError::UnattachedHandle)
        ));
    }
}
