//! The CRI container log format that container runtimes write and a kubelet reads.
//!
//! One record per line: `<RFC 3339 time with nanoseconds> <stdout|stderr> <F|P> <content>`.
//! `F` ends a line of the container's output (the newline itself is not stored); `P` is a piece
//! of a line longer than the runtime's buffer (16 KiB, containerd's default), continued by the
//! next record. Output left without a newline when the stream ends is written as a full line,
//! so `pods/log` shows it with a newline, as on a real node.

use k8s_openapi::jiff::Timestamp;

/// The longest content of one record: longer lines are split into partial records.
pub(crate) const MAX_RECORD_CONTENT: usize = 16 * 1024;

/// A container's output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    fn name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// Go's `time.RFC3339Nano`: UTC, fractional seconds without trailing zeros.
pub(crate) fn format_time(time: Timestamp) -> String {
    let seconds = time.as_second();
    let nanos = time.subsec_nanosecond();
    let whole = Timestamp::from_second(seconds).unwrap_or(time);
    let base = whole.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    if nanos == 0 {
        return format!("{base}Z");
    }
    let fraction = format!("{nanos:09}");
    format!("{base}.{}Z", fraction.trim_end_matches('0'))
}

/// Splits one stream's output into records, holding back at most one unfinished line piece.
pub(crate) struct LineSplitter {
    stream: LogStream,
    pending: Vec<u8>,
}

impl LineSplitter {
    pub(crate) fn new(stream: LogStream) -> Self {
        LineSplitter {
            stream,
            pending: Vec::new(),
        }
    }

    /// Appends to `out` the records that `data` completes.
    pub(crate) fn push(&mut self, mut data: &[u8], now: Timestamp, out: &mut Vec<u8>) {
        while !data.is_empty() {
            let room = MAX_RECORD_CONTENT - self.pending.len();
            match data.iter().take(room).position(|byte| *byte == b'\n') {
                Some(end) => {
                    self.pending.extend_from_slice(&data[..end]);
                    write_record(out, now, self.stream, true, &self.pending);
                    self.pending.clear();
                    data = &data[end + 1..];
                }
                None if data.len() >= room => {
                    self.pending.extend_from_slice(&data[..room]);
                    write_record(out, now, self.stream, false, &self.pending);
                    self.pending.clear();
                    data = &data[room..];
                }
                None => {
                    self.pending.extend_from_slice(data);
                    data = &[];
                }
            }
        }
    }

    /// At the end of the stream: what is left becomes a full line.
    pub(crate) fn finish(&mut self, now: Timestamp, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            write_record(out, now, self.stream, true, &self.pending);
            self.pending.clear();
        }
    }
}

fn write_record(out: &mut Vec<u8>, now: Timestamp, stream: LogStream, full: bool, content: &[u8]) {
    out.extend_from_slice(format_time(now).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.extend_from_slice(if full { b" F " } else { b" P " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// One parsed record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub(crate) time: Timestamp,
    pub(crate) stream: LogStream,
    /// The record ends a line: the kubelet adds the newline back.
    pub(crate) full: bool,
    pub(crate) content: &'a [u8],
}

impl Record<'_> {
    /// The record as `pods/log` shows it: optionally prefixed with its time, a full line with
    /// its newline.
    pub(crate) fn render(&self, timestamps: bool, out: &mut Vec<u8>) {
        if timestamps {
            out.extend_from_slice(format_time(self.time).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(self.content);
        if self.full {
            out.push(b'\n');
        }
    }
}

/// Parses one record (`line` without its newline); `None` for a malformed one.
pub(crate) fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut fields = line.splitn(4, |byte| *byte == b' ');
    let time = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let stream = match fields.next()? {
        b"stdout" => LogStream::Stdout,
        b"stderr" => LogStream::Stderr,
        _ => return None,
    };
    let full = match fields.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    Some(Record {
        time,
        stream,
        full,
        content: fields.next().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_formatted_like_gos_rfc3339nano() {
        let time: Timestamp = "2026-12-07T23:59:01.120000000Z".parse().unwrap();
        assert_eq!(format_time(time), "2026-12-07T23:59:01.12Z");
        let whole: Timestamp = "2026-12-07T23:59:01Z".parse().unwrap();
        assert_eq!(format_time(whole), "2026-12-07T23:59:01Z");
    }

    #[test]
    fn output_becomes_full_and_partial_records_that_parse_back() {
        let now: Timestamp = "2026-12-07T23:59:01.5Z".parse().unwrap();
        let mut splitter = LineSplitter::new(LogStream::Stderr);
        let mut out = Vec::new();
        splitter.push(b"one\ntw", now, &mut out);
        splitter.push(b"o\n", now, &mut out);
        let long = vec![b'x'; MAX_RECORD_CONTENT + 3];
        splitter.push(&long, now, &mut out);
        splitter.finish(now, &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "2026-12-07T23:59:01.5Z stderr F one");
        assert_eq!(lines[1], "2026-12-07T23:59:01.5Z stderr F two");
        assert!(lines[2].starts_with("2026-12-07T23:59:01.5Z stderr P xxx"));
        assert_eq!(lines[3], "2026-12-07T23:59:01.5Z stderr F xxx");
        let mut rendered = Vec::new();
        for line in out.split(|byte| *byte == b'\n').filter(|line| !line.is_empty()) {
            parse(line).unwrap().render(false, &mut rendered);
        }
        let mut expected = b"one\ntwo\n".to_vec();
        expected.extend_from_slice(&long);
        expected.push(b'\n');
        assert_eq!(rendered, expected);
    }
}
