//! Compression stages (write side) and decoders (read side).
//!
//! Every write stage is a [`FinishWrite`]: a `Write` with an explicit finish
//! step that writes its trailer and then finishes the stage below it, so a
//! chain is closed exactly once, top to bottom. A stage that is dropped
//! without `finish` leaves an invalid stream behind, never a valid-looking one.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use bytes::Bytes;

use crate::backup::PipelineOptions;
use crate::bridge::ChannelWriter;
use crate::gzip::{self, MemberEncoder};
use crate::pool::{Pool, Ticket};
use crate::record::{Algorithm, Compression};
use crate::tally::TallyWriter;

/// A write stage with an explicit finish step.
pub(crate) trait FinishWrite: Write + Send {
    /// Writes any trailer, then finishes every stage below this one.
    fn finish(self: Box<Self>) -> io::Result<()>;

    /// Writes a whole chunk the caller hands over; a stage that keeps blocks
    /// takes it as it is instead of copying it.
    fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        self.write_all(&chunk)
    }
}

impl FinishWrite for ChannelWriter {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.flush()
    }
}

impl FinishWrite for TallyWriter<Box<dyn FinishWrite>> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.into_inner().finish()
    }

    fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        self.tally(&chunk);
        self.inner_mut().write_chunk(chunk)
    }
}

/// Wraps `inner` in the compression stage for `compression`; gzip cuts its input into blocks
/// and keeps as many pending as `pipeline` says.
pub(crate) fn compressor(
    compression: &Compression,
    pipeline: &PipelineOptions,
    inner: Box<dyn FinishWrite>,
) -> io::Result<Box<dyn FinishWrite>> {
    let level = compression.effective_level();
    let workers = compression.effective_workers();
    Ok(match compression.algorithm {
        Algorithm::None => inner,
        Algorithm::Gzip => Box::new(ParallelGzip::new(
            inner,
            level,
            workers,
            pipeline.effective_block_size(),
            pipeline.effective_pending(workers),
        )?),
        Algorithm::Zstd => {
            let mut encoder = zstd::stream::write::Encoder::new(inner, level as i32)?;
            if workers > 1 {
                encoder.multithread(workers as u32)?;
                // zstd's default job size at low levels is several MiB per worker, and it
                // buffers jobs ahead: on incompressible input that is >130 MiB of RSS.
                // 1 MiB jobs keep memory flat at no measurable cost in ratio or speed.
                encoder.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
            }
            Box::new(Zstd(encoder))
        }
    })
}

/// Wraps `inner` in the decoder for `algorithm`. gzip input may hold several
/// members; indexed ones are inflated on `workers` threads.
pub(crate) fn decompressor<'a>(
    algorithm: Algorithm,
    inner: Box<dyn Read + Send + 'a>,
    workers: usize,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match algorithm {
        Algorithm::None => inner,
        Algorithm::Gzip => gzip::reader(inner, workers)?,
        Algorithm::Zstd => Box::new(zstd::stream::read::Decoder::new(inner)?),
    })
}

/// Input per zstd job when compressing with several threads.
const ZSTD_JOB_SIZE: u32 = 1024 * 1024;

/// Multithreaded zstd (zstd's own worker pool).
struct Zstd(zstd::stream::write::Encoder<'static, Box<dyn FinishWrite>>);

impl Write for Zstd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FinishWrite for Zstd {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.finish()
    }
}

/// Parallel gzip in the manner of pigz: the input is cut into blocks that a
/// pool of threads compresses as independent, indexed gzip members
/// ([`crate::gzip`]), written out in order. `gunzip` reads the concatenation as
/// one stream; restores inflate the members in parallel.
struct ParallelGzip {
    inner: Box<dyn FinishWrite>,
    /// Plaintext per member.
    block_size: usize,
    block: Vec<u8>,
    /// Members in flight, oldest first; bounded to keep memory flat.
    pending: VecDeque<Ticket<io::Result<Vec<u8>>>>,
    max_pending: usize,
    pool: Pool<Bytes, io::Result<Vec<u8>>>,
    wrote_member: bool,
}

impl ParallelGzip {
    fn new(
        inner: Box<dyn FinishWrite>,
        level: u32,
        workers: usize,
        block_size: usize,
        max_pending: usize,
    ) -> io::Result<Self> {
        let level = gzip::level(level)?;
        let pool = Pool::new(
            workers,
            move || MemberEncoder::new(level),
            |encoder: &mut MemberEncoder, block: Bytes| encoder.encode(&block),
        );
        Ok(ParallelGzip {
            inner,
            block_size,
            // Filled only when writes come in pieces; whole blocks are taken as they are.
            block: Vec::new(),
            pending: VecDeque::new(),
            max_pending,
            pool,
            wrote_member: false,
        })
    }

    fn submit_block(&mut self) -> io::Result<()> {
        let block = std::mem::take(&mut self.block);
        self.submit(Bytes::from(block))
    }

    fn submit(&mut self, block: Bytes) -> io::Result<()> {
        self.pending.push_back(self.pool.submit(block)?);
        self.wrote_member = true;
        while self.pending.len() > self.max_pending {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some(ticket) = self.pending.pop_front() {
            let member = ticket.wait()??;
            self.inner.write_all(&member)?;
        }
        Ok(())
    }
}

impl Write for ParallelGzip {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.block.capacity() == 0 {
            self.block.reserve_exact(self.block_size);
        }
        let n = buf.len().min(self.block_size - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == self.block_size {
            self.submit_block()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FinishWrite for ParallelGzip {
    fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        if self.block.is_empty() && chunk.len() == self.block_size {
            return self.submit(chunk);
        }
        self.write_all(&chunk)
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        // An empty input still becomes one (empty) member: valid gzip for any reader.
        if !self.block.is_empty() || !self.wrote_member {
            self.submit_block()?;
        }
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.inner.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A terminal stage collecting into a shared buffer.
    struct Collect(Arc<Mutex<Vec<u8>>>);
    impl Write for Collect {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl FinishWrite for Collect {
        fn finish(self: Box<Self>) -> io::Result<()> {
            Ok(())
        }
    }

    fn round_trip(compression: &Compression, data: &[u8]) -> (Vec<u8>, Vec<u8>) {
        round_trip_with(compression, &PipelineOptions::default(), data)
    }

    fn round_trip_with(compression: &Compression, pipeline: &PipelineOptions, data: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut stage = compressor(compression, pipeline, Box::new(Collect(out.clone()))).unwrap();
        for piece in data.chunks(100_000) {
            stage.write_all(piece).unwrap();
        }
        stage.finish().unwrap();
        let compressed = out.lock().unwrap().clone();
        let mut back = Vec::new();
        decompressor(compression.algorithm, Box::new(io::Cursor::new(compressed.clone())), 2)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        (compressed, back)
    }

    #[test]
    fn every_algorithm_round_trips_including_empty_input() {
        let text: Vec<u8> = (0..3_500_000u32)
            .map(|i| b"INSERT INTO t VALUES (42, 'stowage');\n"[(i % 38) as usize])
            .collect();
        for compression in [
            Compression::gzip(6),
            Compression {
                workers: Some(1),
                ..Compression::gzip(1)
            },
            Compression {
                workers: Some(3),
                ..Compression::gzip(9)
            },
            Compression::zstd(3),
            Compression {
                workers: Some(1),
                ..Compression::zstd(19)
            },
            Compression::none(),
        ] {
            for data in [&text[..], &[][..], &b"x"[..]] {
                let (compressed, back) = round_trip(&compression, data);
                assert_eq!(back, data, "{compression:?} with {} bytes", data.len());
                if compression.algorithm != Algorithm::None && data.len() > 1000 {
                    assert!(compressed.len() < data.len() / 10, "{compression:?} did not compress");
                }
            }
        }
    }

    #[test]
    fn parallel_gzip_writes_several_members_in_order() {
        let data: Vec<u8> = (0..(5 * gzip::BLOCK as u32 + 17)).map(|i| (i % 251) as u8).collect();
        let (compressed, back) = round_trip(
            &Compression {
                workers: Some(2),
                ..Compression::gzip(6)
            },
            &data,
        );
        assert_eq!(back, data);
        let members = compressed.windows(3).filter(|w| w == &[0x1f, 0x8b, 0x08]).count();
        assert!(members >= 6, "expected at least 6 gzip members, found {members}");
    }

    fn members(compressed: &[u8]) -> usize {
        compressed.windows(4).filter(|w| w == &[0x1f, 0x8b, 0x08, 0x04]).count()
    }

    #[test]
    fn a_shallow_pipeline_writes_members_of_its_block_size() {
        let data: Vec<u8> = (0..(3 * gzip::BLOCK as u32 + 17)).map(|i| (i % 251) as u8).collect();
        let shallow = PipelineOptions::shallow();
        for workers in [1, 2] {
            let compression = Compression {
                workers: Some(workers),
                ..Compression::gzip(6)
            };
            let (compressed, back) = round_trip_with(&compression, &shallow, &data);
            assert_eq!(back, data, "{workers} workers");
            // 3 MiB and 17 bytes in 256 KiB blocks: 12 full members and one of 17 bytes.
            assert_eq!(members(&compressed), 13, "{workers} workers");
        }
        // Out-of-range sizes are brought into range rather than refused.
        let tiny = PipelineOptions {
            block_size: 1,
            queued_blocks: 0,
            pending_compressions: Some(0),
        };
        let (compressed, back) = round_trip_with(&Compression::gzip(1), &tiny, &data[..256 * 1024]);
        assert_eq!(back, &data[..256 * 1024]);
        assert_eq!(members(&compressed), 4, "64 KiB blocks at the least");
    }
}
