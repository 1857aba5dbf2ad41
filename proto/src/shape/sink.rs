//! Where the walker's tokens go. A token is one of six BSON-shaped events,
//! so the document sink can build exactly what the hash sink hashes: the
//! two cannot disagree, whatever the walker emits.

use super::ShapeHash;
use bson::raw::{CStr, RawArrayBuf, RawBsonRef, RawDocumentBuf};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// Receives a shape as a stream of elements. Keys of elements inside an
/// array are ignored (an array's keys are its positions), by both sinks.
pub(crate) trait Sink<'a> {
    fn open_document(&mut self, key: &'a CStr);
    fn open_array(&mut self, key: &'a CStr);
    /// Ends the innermost open document or array.
    fn close(&mut self);
    fn string(&mut self, key: &'a CStr, value: &'a str);
    fn int(&mut self, key: &'a CStr, value: i32);
    fn boolean(&mut self, key: &'a CStr, value: bool);
}

// Token tags: each token starts with one, so no token stream is a prefix
// or re-reading of another.
const OPEN_DOCUMENT: u8 = 1;
const OPEN_ARRAY: u8 = 2;
const CLOSE: u8 = 3;
const STRING: u8 = 4;
const INT: u8 = 5;
const BOOLEAN: u8 = 6;

/// Hashes the token stream with XXH3-64, seed 0. Every variable-length
/// part is length-prefixed, so distinct streams hash distinct bytes.
///
/// Tokens are a few bytes each and XXH3's streaming `update` costs tens of
/// ns per call, so they gather in a buffer on the stack: a shape that fits
/// is hashed in one call, a longer one streams in buffer-sized chunks.
/// XXH3 gives the same hash either way.
pub(crate) struct HashSink {
    buffer: [u8; BUFFER_LEN],
    buffered: usize,
    /// Started only when the buffer overflows.
    stream: Option<Box<Xxh3>>,
    /// One bit per open container, innermost lowest: set for an array,
    /// whose element keys are not hashed (the document sink drops them).
    arrays: u128,
    depth: u32,
}

const BUFFER_LEN: usize = 512;

impl HashSink {
    pub(crate) fn new() -> Self {
        HashSink {
            buffer: [0; BUFFER_LEN],
            buffered: 0,
            stream: None,
            arrays: 0,
            depth: 0,
        }
    }

    pub(crate) fn finish(&self) -> ShapeHash {
        let rest = self.buffer.get(..self.buffered).unwrap_or_default();
        match &self.stream {
            None => ShapeHash(xxh3_64(rest)),
            Some(stream) => {
                let mut stream = stream.clone();
                stream.update(rest);
                ShapeHash(stream.digest())
            }
        }
    }

    /// A token's fixed-size part: a constant-length copy the compiler
    /// inlines, where a slice copy would call memmove for a few bytes.
    fn write_fixed<const N: usize>(&mut self, bytes: [u8; N]) {
        let end = self.buffered + N;
        match self.buffer.get_mut(self.buffered..end) {
            Some(free) => {
                if let Ok(free) = <&mut [u8; N]>::try_from(free) {
                    *free = bytes;
                }
                self.buffered = end;
            }
            None => self.write(&bytes),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let end = self.buffered + bytes.len();
        if let Some(free) = self.buffer.get_mut(self.buffered..end) {
            free.copy_from_slice(bytes);
            self.buffered = end;
            return;
        }
        let stream = self.stream.get_or_insert_with(|| Box::new(Xxh3::new()));
        stream.update(self.buffer.get(..self.buffered).unwrap_or_default());
        self.buffered = 0;
        if bytes.len() > BUFFER_LEN / 2 {
            stream.update(bytes);
        } else if let Some(free) = self.buffer.get_mut(..bytes.len()) {
            free.copy_from_slice(bytes);
            self.buffered = bytes.len();
        }
    }

    fn in_array(&self) -> bool {
        self.depth > 0 && self.arrays & 1 == 1
    }

    /// The tag, then the key unless inside an array.
    fn head(&mut self, tag: u8, key: &CStr) {
        if self.in_array() {
            self.write_fixed([tag]);
        } else {
            let len = (key.len() as u32).to_le_bytes();
            self.write_fixed([tag, len[0], len[1], len[2], len[3]]);
            self.write(key.as_str().as_bytes());
        }
    }

    fn push(&mut self, array: bool) {
        // Beyond 128 levels (the walker stops far sooner) the bit is lost
        // and keys are hashed; that only makes the hash more specific.
        self.arrays = (self.arrays << 1) | u128::from(array);
        self.depth = self.depth.saturating_add(1);
    }
}

impl<'a> Sink<'a> for HashSink {
    fn open_document(&mut self, key: &'a CStr) {
        self.head(OPEN_DOCUMENT, key);
        self.push(false);
    }

    fn open_array(&mut self, key: &'a CStr) {
        self.head(OPEN_ARRAY, key);
        self.push(true);
    }

    fn close(&mut self) {
        self.write_fixed([CLOSE]);
        self.arrays >>= 1;
        self.depth = self.depth.saturating_sub(1);
    }

    fn string(&mut self, key: &'a CStr, value: &'a str) {
        self.head(STRING, key);
        self.write_fixed((value.len() as u32).to_le_bytes());
        self.write(value.as_bytes());
    }

    fn int(&mut self, key: &'a CStr, value: i32) {
        self.head(INT, key);
        self.write_fixed(value.to_le_bytes());
    }

    fn boolean(&mut self, key: &'a CStr, value: bool) {
        self.head(BOOLEAN, key);
        self.write_fixed([u8::from(value)]);
    }
}

/// A container being built: its key in the parent, and its contents.
enum Open<'a> {
    Document(&'a CStr, RawDocumentBuf),
    Array(&'a CStr, RawArrayBuf),
}

/// Builds the shape document. A key may repeat (a peer can send
/// `{a: 1, a: 2}`): the raw buffers keep both, as the hash does.
pub(crate) struct DocSink<'a> {
    root: RawDocumentBuf,
    open: Vec<Open<'a>>,
}

impl<'a> DocSink<'a> {
    pub(crate) fn new() -> Self {
        DocSink {
            root: RawDocumentBuf::new(),
            open: Vec::new(),
        }
    }

    /// The document, with anything left open closed.
    pub(crate) fn finish(mut self) -> RawDocumentBuf {
        while !self.open.is_empty() {
            self.close();
        }
        self.root
    }

    fn put(&mut self, key: &'a CStr, value: RawBsonRef<'_>) {
        match self.open.last_mut() {
            Some(Open::Document(_, doc)) => doc.append(key, value),
            Some(Open::Array(_, array)) => array.push(value),
            None => self.root.append(key, value),
        }
    }
}

impl<'a> Sink<'a> for DocSink<'a> {
    fn open_document(&mut self, key: &'a CStr) {
        self.open.push(Open::Document(key, RawDocumentBuf::new()));
    }

    fn open_array(&mut self, key: &'a CStr) {
        self.open.push(Open::Array(key, RawArrayBuf::new()));
    }

    fn close(&mut self) {
        // A close without an open would be a walker bug; ignoring it keeps
        // the root intact rather than panicking.
        match self.open.pop() {
            Some(Open::Document(key, doc)) => self.put(key, RawBsonRef::Document(&doc)),
            Some(Open::Array(key, array)) => self.put(key, RawBsonRef::Array(&array)),
            None => {}
        }
    }

    fn string(&mut self, key: &'a CStr, value: &'a str) {
        self.put(key, RawBsonRef::String(value));
    }

    fn int(&mut self, key: &'a CStr, value: i32) {
        self.put(key, RawBsonRef::Int32(value));
    }

    fn boolean(&mut self, key: &'a CStr, value: bool) {
        self.put(key, RawBsonRef::Boolean(value));
    }
}

#[cfg(test)]
mod tests {
    use super::{HashSink, Sink, BUFFER_LEN};
    use bson::raw::cstr;
    use xxhash_rust::xxh3::xxh3_64;

    /// The hash is XXH3-64 of the documented token bytes, whether they fit
    /// the buffer or stream past it (a long value, many small tokens).
    #[test]
    fn hashes_the_token_bytes_however_they_are_buffered() {
        let long = "x".repeat(BUFFER_LEN);
        let mut sink = HashSink::new();
        let mut expected = Vec::new();
        sink.open_document(cstr!("doc"));
        expected.extend_from_slice(&[1, 3, 0, 0, 0]);
        expected.extend_from_slice(b"doc");
        for i in 0..100 {
            sink.int(cstr!("n"), i);
            expected.extend_from_slice(&[5, 1, 0, 0, 0, b'n']);
            expected.extend_from_slice(&i.to_le_bytes());
        }
        sink.open_array(cstr!("a"));
        expected.extend_from_slice(&[2, 1, 0, 0, 0, b'a']);
        // Keys inside an array are not hashed.
        sink.string(cstr!("ignored"), &long);
        expected.push(4);
        expected.extend_from_slice(&(long.len() as u32).to_le_bytes());
        expected.extend_from_slice(long.as_bytes());
        sink.boolean(cstr!("0"), true);
        expected.extend_from_slice(&[6, 1]);
        sink.close();
        sink.close();
        expected.extend_from_slice(&[3, 3]);
        assert!(expected.len() > 2 * BUFFER_LEN);
        assert_eq!(sink.finish().0, xxh3_64(&expected));
    }
}
