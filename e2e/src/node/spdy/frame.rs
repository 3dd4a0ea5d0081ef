//! SPDY/3 frames on the wire (draft 3; SPDY/3.1 only adds flow control, which Kubernetes' SPDY
//! library never enforces).
//!
//! Every frame has an 8-byte head. A control frame: the control bit, version 3 and a type, then
//! flags and a 24-bit length. A data frame: a 31-bit stream id, then flags (FIN = 0x01) and a
//! 24-bit length. Data frames are handed out in chunks of at most `max_chunk` bytes, so a peer's
//! 16 MiB frame never sits in our memory whole.

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

use super::header_block::{HeaderDecoder, Headers};

const VERSION: u16 = 3;
const FLAG_FIN: u8 = 0x01;
/// Control frames carry a few headers at most; anything larger is a broken or hostile peer.
const MAX_CONTROL_FRAME: usize = 1024 * 1024;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;

/// RST_STREAM status codes we send.
pub(crate) const RST_PROTOCOL_ERROR: u32 = 1;
pub(crate) const RST_CANCEL: u32 = 5;
/// GOAWAY status codes we send.
pub(crate) const GOAWAY_OK: u32 = 0;
pub(crate) const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// A frame as the session acts on it.
#[derive(Debug)]
pub(crate) enum Frame {
    SynStream {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    /// A chunk of a data frame; `fin` is set on the last chunk of a frame carrying FIN.
    Data {
        stream_id: u32,
        data: Bytes,
        fin: bool,
    },
    RstStream {
        stream_id: u32,
    },
    Ping {
        id: u32,
    },
    GoAway,
    /// SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY (a client gets those, a server does not) and
    /// types SPDY/3 does not define, which its peers must ignore.
    Ignored,
}

/// Reads frames from the client.
pub(crate) struct FrameReader<R> {
    io: BufReader<R>,
    headers: HeaderDecoder,
    max_chunk: usize,
    /// The data frame being handed out: its stream, bytes still to read, and its FIN flag.
    data_left: Option<(u32, usize, bool)>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, max_chunk: usize) -> Self {
        FrameReader {
            io: BufReader::with_capacity(64 * 1024, io),
            headers: HeaderDecoder::new(),
            max_chunk,
            data_left: None,
        }
    }

    /// The next frame, or `None` when the client closed the connection.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<Frame>> {
        if let Some((stream_id, left, fin)) = self.data_left.take() {
            return self.data_chunk(stream_id, left, fin).await.map(Some);
        }
        let mut head = [0_u8; 8];
        match self.io.read_exact(&mut head).await {
            Ok(_) => {}
            // A client that went away, whether it closed the connection or it broke.
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                return Ok(None);
            }
            Err(error) => return Err(error).context("reading a SPDY frame"),
        }
        let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if first & 0x8000_0000 == 0 {
            let stream_id = first & 0x7fff_ffff;
            ensure!(stream_id != 0, "a data frame on stream 0");
            return self
                .data_chunk(stream_id, length, flags & FLAG_FIN != 0)
                .await
                .map(Some);
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        let kind = (first & 0xffff) as u16;
        ensure!(
            version == VERSION,
            "a control frame of SPDY version {version}, not {VERSION}"
        );
        ensure!(length <= MAX_CONTROL_FRAME, "a control frame of {length} bytes");
        let mut payload = vec![0_u8; length];
        self.io
            .read_exact(&mut payload)
            .await
            .context("reading a SPDY control frame")?;
        self.control(kind, flags, &payload).map(Some)
    }

    async fn data_chunk(&mut self, stream_id: u32, length: usize, fin: bool) -> anyhow::Result<Frame> {
        let chunk = length.min(self.max_chunk);
        let mut data = vec![0_u8; chunk];
        self.io
            .read_exact(&mut data)
            .await
            .context("reading a SPDY data frame")?;
        let left = length - chunk;
        if left > 0 {
            self.data_left = Some((stream_id, left, fin));
        }
        Ok(Frame::Data {
            stream_id,
            data: Bytes::from(data),
            fin: fin && left == 0,
        })
    }

    fn control(&mut self, kind: u16, flags: u8, payload: &[u8]) -> anyhow::Result<Frame> {
        let word = |index: usize| -> anyhow::Result<u32> {
            let bytes = payload
                .get(index * 4..index * 4 + 4)
                .with_context(|| format!("control frame type {kind} is too short"))?;
            Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        };
        let frame = match kind {
            SYN_STREAM => {
                // stream id, associated-to stream id, priority and slot, then the header block.
                ensure!(payload.len() >= 10, "a SYN_STREAM frame is too short");
                let stream_id = word(0)? & 0x7fff_ffff;
                ensure!(stream_id != 0, "a SYN_STREAM frame for stream 0");
                // Decoded even if we then refuse the stream: it advances the shared zlib context.
                let headers = self.headers.decode(&payload[10..])?;
                Frame::SynStream {
                    stream_id,
                    fin: flags & FLAG_FIN != 0,
                    headers,
                }
            }
            SYN_REPLY | 8 => {
                // SYN_REPLY and HEADERS: decoded only to keep the zlib context in step.
                ensure!(payload.len() >= 4, "a control frame of type {kind} is too short");
                self.headers.decode(&payload[4..])?;
                Frame::Ignored
            }
            RST_STREAM => Frame::RstStream {
                stream_id: word(0)? & 0x7fff_ffff,
            },
            PING => Frame::Ping { id: word(0)? },
            GOAWAY => Frame::GoAway,
            _ => Frame::Ignored,
        };
        Ok(frame)
    }
}

/// The head of a control frame.
fn control_head(kind: u16, flags: u8, length: usize) -> anyhow::Result<[u8; 8]> {
    if length >= 1 << 24 {
        bail!("a control frame of {length} bytes does not fit SPDY's 24-bit length");
    }
    let [v0, v1] = (0x8000 | VERSION).to_be_bytes();
    let [k0, k1] = kind.to_be_bytes();
    let [_, l0, l1, l2] = (length as u32).to_be_bytes();
    Ok([v0, v1, k0, k1, flags, l0, l1, l2])
}

/// SYN_REPLY with an already compressed header block.
pub(crate) fn syn_reply(stream_id: u32, header_block: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut frame = control_head(SYN_REPLY, 0, 4 + header_block.len())?.to_vec();
    frame.extend_from_slice(&stream_id.to_be_bytes());
    frame.extend_from_slice(header_block);
    Ok(frame)
}

pub(crate) fn rst_stream(stream_id: u32, status: u32) -> Vec<u8> {
    let mut frame = [0_u8; 16];
    frame[..8].copy_from_slice(&[0x80, VERSION as u8, 0, RST_STREAM as u8, 0, 0, 0, 8]);
    frame[8..12].copy_from_slice(&stream_id.to_be_bytes());
    frame[12..].copy_from_slice(&status.to_be_bytes());
    frame.to_vec()
}

pub(crate) fn ping(id: u32) -> Vec<u8> {
    let mut frame = vec![0x80, VERSION as u8, 0, PING as u8, 0, 0, 0, 4];
    frame.extend_from_slice(&id.to_be_bytes());
    frame
}

pub(crate) fn goaway(last_good_stream_id: u32, status: u32) -> Vec<u8> {
    let mut frame = vec![0x80, VERSION as u8, 0, GOAWAY as u8, 0, 0, 0, 8];
    frame.extend_from_slice(&last_good_stream_id.to_be_bytes());
    frame.extend_from_slice(&status.to_be_bytes());
    frame
}

/// A data frame: head and payload in one buffer, so it goes out in one write.
pub(crate) fn data(stream_id: u32, payload: &[u8], fin: bool) -> Vec<u8> {
    debug_assert!(payload.len() < 1 << 24, "callers send chunks far below 16 MiB");
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    frame.push(if fin { FLAG_FIN } else { 0 });
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::super::header_block::HeaderEncoder;
    use super::{Frame, FrameReader, control_head, data, ping};

    #[tokio::test]
    async fn reads_what_a_client_sends_and_splits_large_data_frames() -> anyhow::Result<()> {
        let mut wire = Vec::new();
        let block = HeaderEncoder::new()?.encode(&[("streamtype", "stdin")])?;
        wire.extend_from_slice(&control_head(1, 0, 10 + block.len())?);
        wire.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 0, 0, 0]);
        wire.extend_from_slice(&block);
        wire.extend_from_slice(&data(3, &[7; 10], true));
        wire.extend_from_slice(&ping(1));
        // An unknown control type (and its payload) is skipped.
        wire.extend_from_slice(&control_head(42, 0, 3)?);
        wire.extend_from_slice(&[1, 2, 3]);
        let mut reader = FrameReader::new(wire.as_slice(), 4);
        match reader.next().await? {
            Some(Frame::SynStream {
                stream_id: 3,
                fin: false,
                headers,
            }) => {
                assert_eq!(headers, [("streamtype".to_owned(), "stdin".to_owned())]);
            }
            other => panic!("expected SYN_STREAM, got {other:?}"),
        }
        let mut chunks = Vec::new();
        for _ in 0..3 {
            match reader.next().await? {
                Some(Frame::Data {
                    stream_id: 3,
                    data,
                    fin,
                }) => chunks.push((data.len(), fin)),
                other => panic!("expected data, got {other:?}"),
            }
        }
        assert_eq!(chunks, [(4, false), (4, false), (2, true)]);
        assert!(matches!(reader.next().await?, Some(Frame::Ping { id: 1 })));
        assert!(matches!(reader.next().await?, Some(Frame::Ignored)));
        assert!(reader.next().await?.is_none());
        Ok(())
    }
}
