//! SPDY/3 header blocks: name/value pairs, zlib-compressed against the protocol's dictionary.
//!
//! Each direction of a connection has one compression context that lives as long as the
//! connection: every header block continues the same zlib stream and ends with a sync flush, so a
//! block can only be decoded after all earlier blocks of that direction. The stream starts with
//! the SPDY/3 dictionary preset (its Adler-32 is in the zlib header), as Go's spdystream, which
//! kubectl, the API server and the kubelet use, does.

use std::sync::LazyLock;

use anyhow::{Context as _, bail, ensure};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// Bytes a decompressed header block may take: a few short headers in practice.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// The SPDY/3 zlib dictionary (draft 3, section 2.6.10.1): header names and common values, each
/// prefixed with its length as a big-endian u32, then a run of frequent status lines and tokens.
static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const WORDS: [&str; 66] = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
        "",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut dictionary = Vec::new();
    // The last word is empty: the list ends where the unprefixed tail begins.
    for word in WORDS.iter().filter(|word| !word.is_empty()) {
        dictionary.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dictionary.extend_from_slice(word.as_bytes());
    }
    dictionary.extend_from_slice(TAIL.as_bytes());
    dictionary
});

/// Header names (lowercase, as SPDY requires) and their values, in the order they came.
pub(crate) type Headers = Vec<(String, String)>;

/// Decodes the header blocks one peer sends.
pub(crate) struct HeaderDecoder {
    inflate: Decompress,
}

impl HeaderDecoder {
    pub(crate) fn new() -> Self {
        HeaderDecoder {
            inflate: Decompress::new(true),
        }
    }

    /// Decompresses one block (the rest of a SYN_STREAM, SYN_REPLY or HEADERS frame) and parses it.
    pub(crate) fn decode(&mut self, compressed: &[u8]) -> anyhow::Result<Headers> {
        let mut plain = Vec::with_capacity(1024);
        let mut consumed = 0;
        loop {
            if plain.len() == plain.capacity() {
                ensure!(
                    plain.len() < MAX_HEADER_BLOCK,
                    "a header block exceeds {MAX_HEADER_BLOCK} bytes"
                );
                plain.reserve(plain.len());
            }
            let before = self.inflate.total_in();
            match self
                .inflate
                .decompress_vec(&compressed[consumed..], &mut plain, FlushDecompress::Sync)
            {
                Ok(_) => {}
                // The first block's zlib header asks for the preset dictionary.
                Err(error) if error.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&DICTIONARY)
                        .context("the peer compresses headers with another dictionary than SPDY/3's")?;
                }
                Err(error) => return Err(error).context("decompressing a SPDY header block"),
            }
            consumed += usize::try_from(self.inflate.total_in() - before)?;
            // Done when all input is in and inflate stopped for want of input, not of room.
            if consumed == compressed.len() && plain.len() < plain.capacity() {
                break;
            }
        }
        parse(&plain)
    }
}

/// Encodes the header blocks we send.
pub(crate) struct HeaderEncoder {
    deflate: Compress,
}

impl HeaderEncoder {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&DICTIONARY)
            .context("presetting the SPDY/3 dictionary")?;
        Ok(HeaderEncoder { deflate })
    }

    pub(crate) fn encode(&mut self, headers: &[(&str, &str)]) -> anyhow::Result<Vec<u8>> {
        let plain = serialize(headers);
        let mut compressed = Vec::with_capacity(plain.len() + 64);
        let mut consumed = 0;
        loop {
            if compressed.len() == compressed.capacity() {
                compressed.reserve(compressed.len().max(64));
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&plain[consumed..], &mut compressed, FlushCompress::Sync)
                .context("compressing a SPDY header block")?;
            consumed += usize::try_from(self.deflate.total_in() - before)?;
            if consumed == plain.len() && compressed.len() < compressed.capacity() {
                return Ok(compressed);
            }
        }
    }
}

/// `count`, then per header `len name len value` (u32 big-endian lengths; several values of one
/// name are joined with NUL).
fn serialize(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    block.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        for part in [name.to_ascii_lowercase().as_bytes(), value.as_bytes()] {
            block.extend_from_slice(&(part.len() as u32).to_be_bytes());
            block.extend_from_slice(part);
        }
    }
    block
}

fn parse(block: &[u8]) -> anyhow::Result<Headers> {
    let mut cursor = Cursor(block);
    let count = cursor.length()?;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let length = cursor.length()?;
        let name = String::from_utf8_lossy(cursor.take(length)?).to_ascii_lowercase();
        let length = cursor.length()?;
        let values = String::from_utf8_lossy(cursor.take(length)?).into_owned();
        if name.is_empty() {
            bail!("a header block has an empty header name");
        }
        for value in values.split('\0') {
            headers.push((name.clone(), value.to_owned()));
        }
    }
    Ok(headers)
}

/// Reads a header block front to back.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, length: usize) -> anyhow::Result<&'a [u8]> {
        ensure!(self.0.len() >= length, "a header block ends early");
        let (head, rest) = self.0.split_at(length);
        self.0 = rest;
        Ok(head)
    }

    fn length(&mut self) -> anyhow::Result<usize> {
        let bytes: [u8; 4] = self.take(4)?.try_into()?;
        Ok(u32::from_be_bytes(bytes) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::{DICTIONARY, HeaderDecoder, HeaderEncoder};

    #[test]
    fn the_dictionary_is_spdy3s() {
        // Its length and Adler-32 are what every SPDY/3 peer expects in the zlib header.
        assert_eq!(DICTIONARY.len(), 1423);
        let adler = flate2::Compress::new(flate2::Compression::default(), true).set_dictionary(&DICTIONARY);
        assert_eq!(adler.ok(), Some(0xe3c6_a7c2));
        assert!(DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(DICTIONARY.ends_with(b"utf-,*,enq=0."));
    }

    #[test]
    fn header_blocks_share_one_compression_context_per_direction() -> anyhow::Result<()> {
        let (mut encoder, mut decoder) = (HeaderEncoder::new()?, HeaderDecoder::new());
        for stream_type in ["error", "stdin", "stdout"] {
            let block = encoder.encode(&[("streamtype", stream_type), ("X-Multi", "a\0b")])?;
            let headers = decoder.decode(&block)?;
            let expected = [("streamtype", stream_type), ("x-multi", "a"), ("x-multi", "b")];
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            assert_eq!(headers, expected);
        }
        Ok(())
    }
}
