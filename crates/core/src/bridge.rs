//! Bridges between the async world (sources, sinks, object storage) and the
//! synchronous stage threads (compression and encryption are CPU work and the
//! flate2, zstd and age encoders are `std::io` adaptors).
//!
//! Both directions use bounded channels of `Bytes`, so memory stays flat and a
//! slow consumer slows the producer down (backpressure end to end).

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// Size of the chunks that travel between threads.
pub(crate) const CHUNK: usize = 256 * 1024;

/// Size of the chunks a restore reads from storage and hands to its sink: one
/// gzip block of a backup's default pipeline (`PipelineOptions`).
pub(crate) const SOURCE_CHUNK: usize = crate::gzip::BLOCK;

/// A `Write` that hands its bytes, in chunks, to an async receiver.
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
}

impl ChannelWriter {
    pub(crate) fn new(tx: mpsc::Sender<Bytes>) -> Self {
        ChannelWriter {
            tx,
            buf: BytesMut::with_capacity(CHUNK),
        }
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK);
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped receiving data"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    /// Sends what is buffered. The stage chain calls this once, when finishing.
    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

/// A `Read` over chunks produced by an async task. An `Err` item ends the
/// stream with that error (the storage read failed).
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    pub(crate) fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
