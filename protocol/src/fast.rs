//! A one-pass reader for phase requests and replies in the shape every
//! MessagePack library writes them: maps with string keys, `str` strings,
//! `bin` bytes, unsigned integers and `nil` for an absent value.
//!
//! It walks the message once, borrowing strings and bytes from it, without
//! serde's visitor machinery (which costs about as much again as the rest
//! of decoding). Whatever it does not recognise, and anything malformed,
//! makes it answer `None`; the caller then decodes with serde, which takes
//! the lenient forms (integers for bytes, signed integers, ...) and words
//! the errors. So this reader decides how fast a request is read, never
//! whether it is accepted or what it means: the tests hold it to giving
//! exactly serde's result whenever it answers. Replies are read the same
//! way, for callers. [`struct_written_as_array`]
//! is the one form serde reads that the decoder refuses before serde sees it.

use std::borrow::Cow;

use crate::reply::{Action, HeaderMutations, PhaseReply};
use crate::view::{BodyChunkView, HttpRequestView, HttpResponseView, PhaseRequestView};

/// Read `payload` as a phase request, or `None` to leave it to serde.
pub(crate) fn decode(payload: &[u8]) -> Option<PhaseRequestView<'_>> {
    let mut reader = Reader { rest: payload };
    let request = reader.phase_request()?;
    reader.rest.is_empty().then_some(request)
}

/// Read `payload` as a phase reply, or `None` to leave it to serde.
pub(crate) fn decode_reply(payload: &[u8]) -> Option<PhaseReply> {
    let mut reader = Reader { rest: payload };
    let reply = reader.phase_reply()?;
    reader.rest.is_empty().then_some(reply)
}

/// Whether `payload` holds an array where the protocol has a map of named
/// fields: at the top level, or as the `request`, `response` or `chunk` of
/// a request. Serde would read such an array by the position of each field
/// in its Rust struct, which is no part of the protocol (docs/protocol.md,
/// section 3). Anything this cannot read is left to the decoder.
pub fn struct_written_as_array(payload: &[u8]) -> bool {
    let mut reader = Reader { rest: payload };
    if reader.at_array() {
        return true;
    }
    let Some(len) = reader.map_len() else {
        return false;
    };
    for _ in 0..len {
        let Some(key) = reader.key() else {
            return false;
        };
        if matches!(key, b"request" | b"response" | b"chunk") && reader.at_array() {
            return true;
        }
        if reader.skip_value().is_none() {
            return false;
        }
    }
    false
}

/// `bytes` as text, if they are UTF-8. Header names and values are
/// nearly always ASCII, which is checked several times faster than UTF-8.
fn text(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

/// The most arrays and maps an unknown field's value may hold for this
/// reader to skip it; more go to serde, which refuses nesting deeper than
/// [`crate::MAX_NESTING`] (a value that deep holds at least as many).
const MAX_SKIPPED_CONTAINERS: usize = crate::MAX_NESTING - 4;

/// The unread part of a message.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn phase_request(&mut self) -> Option<PhaseRequestView<'a>> {
        const VERSION: u16 = 1;
        const REQUEST_ID: u16 = 2;
        const SESSION_ID: u16 = 4;
        const PHASE: u16 = 8;
        const REQUEST: u16 = 16;
        const RESPONSE: u16 = 32;
        const CHUNK: u16 = 64;
        const DURATION: u16 = 128;
        let (mut version, mut request_id, mut phase, mut request) = (None, None, None, None);
        let mut session_id = None;
        let mut response = None;
        let mut chunk = None;
        let mut duration_ms = None;
        let mut seen = 0;
        for _ in 0..self.map_len()? {
            match self.key()? {
                b"version" => version = Some(self.once(&mut seen, VERSION, Self::u16)?),
                b"request_id" => request_id = Some(self.once(&mut seen, REQUEST_ID, Self::str)?),
                b"session_id" => {
                    session_id = self.once(&mut seen, SESSION_ID, |r| r.optional(Self::uint))?
                }
                b"phase" => phase = Some(self.once(&mut seen, PHASE, Self::str)?),
                b"request" => request = Some(self.once(&mut seen, REQUEST, Self::http_request)?),
                b"response" => {
                    response =
                        self.once(&mut seen, RESPONSE, |r| r.optional(Self::http_response))?
                }
                b"chunk" => {
                    chunk = self.once(&mut seen, CHUNK, |r| r.optional(Self::body_chunk))?
                }
                b"duration_ms" => {
                    duration_ms = self.once(&mut seen, DURATION, |r| r.optional(Self::uint))?
                }
                other => self.skip_field(other)?,
            }
        }
        Some(PhaseRequestView {
            version: version?,
            request_id: request_id?,
            session_id,
            phase: phase?,
            request: request?,
            response,
            chunk,
            duration_ms,
        })
    }

    fn http_request(&mut self) -> Option<HttpRequestView<'a>> {
        const METHOD: u16 = 1;
        const PATH: u16 = 2;
        const QUERY: u16 = 4;
        const HOST: u16 = 8;
        const CLIENT_IP: u16 = 16;
        const HEADERS: u16 = 32;
        const BODY: u16 = 64;
        let (mut method, mut path, mut query, mut host, mut client_ip) =
            (None, None, None, None, None);
        let mut headers = Vec::new();
        let mut body = None;
        let mut seen = 0;
        for _ in 0..self.map_len()? {
            match self.key()? {
                b"method" => method = Some(self.once(&mut seen, METHOD, Self::str)?),
                b"path" => path = Some(self.once(&mut seen, PATH, Self::str)?),
                b"query" => query = self.once(&mut seen, QUERY, |r| r.optional(Self::str))?,
                b"host" => host = self.once(&mut seen, HOST, |r| r.optional(Self::str))?,
                b"client_ip" => {
                    client_ip = self.once(&mut seen, CLIENT_IP, |r| r.optional(Self::str))?
                }
                b"headers" => headers = self.once(&mut seen, HEADERS, Self::headers)?,
                b"body" => body = self.once(&mut seen, BODY, Self::optional_bytes)?,
                other => self.skip_field(other)?,
            }
        }
        Some(HttpRequestView {
            method: method?,
            path: path?,
            query,
            host,
            client_ip,
            headers,
            body,
        })
    }

    fn http_response(&mut self) -> Option<HttpResponseView<'a>> {
        const STATUS: u16 = 1;
        const HEADERS: u16 = 2;
        const BODY: u16 = 4;
        let mut status = None;
        let mut headers = Vec::new();
        let mut body = None;
        let mut seen = 0;
        for _ in 0..self.map_len()? {
            match self.key()? {
                b"status" => status = Some(self.once(&mut seen, STATUS, Self::u16)?),
                b"headers" => headers = self.once(&mut seen, HEADERS, Self::headers)?,
                b"body" => body = self.once(&mut seen, BODY, Self::optional_bytes)?,
                other => self.skip_field(other)?,
            }
        }
        Some(HttpResponseView {
            status: status?,
            headers,
            body,
        })
    }

    fn body_chunk(&mut self) -> Option<BodyChunkView<'a>> {
        const DATA: u16 = 1;
        const END_OF_STREAM: u16 = 2;
        const STATE: u16 = 4;
        let (mut data, mut end_of_stream, mut state) = (None, None, None);
        let mut seen = 0;
        for _ in 0..self.map_len()? {
            match self.key()? {
                b"data" => data = Some(Cow::Borrowed(self.once(&mut seen, DATA, Self::bin)?)),
                b"end_of_stream" => {
                    end_of_stream = Some(self.once(&mut seen, END_OF_STREAM, Self::bool)?)
                }
                b"state" => state = self.once(&mut seen, STATE, Self::optional_bytes)?,
                other => self.skip_field(other)?,
            }
        }
        Some(BodyChunkView {
            data: data?,
            end_of_stream: end_of_stream?,
            state,
        })
    }

    fn phase_reply(&mut self) -> Option<PhaseReply> {
        const VERSION: u16 = 1;
        const REQUEST_ID: u16 = 2;
        const ACTION: u16 = 4;
        const REQUEST_HEADERS: u16 = 8;
        const RESPONSE_HEADERS: u16 = 16;
        const STATUS: u16 = 32;
        const BODY: u16 = 64;
        const ERROR: u16 = 128;
        const PATH: u16 = 256;
        const STATE: u16 = 512;
        let (mut version, mut request_id, mut action) = (None, None, None);
        let (mut request_headers, mut response_headers) = (None, None);
        let (mut status, mut body, mut error, mut path, mut state) = (None, None, None, None, None);
        let mut seen = 0;
        let owned_text = |r: &mut Self| r.str().map(str::to_string);
        let owned_bytes = |r: &mut Self| r.bin().map(<[u8]>::to_vec);
        for _ in 0..self.map_len()? {
            match self.key()? {
                b"version" => version = Some(self.once(&mut seen, VERSION, Self::u16)?),
                b"request_id" => request_id = Some(self.once(&mut seen, REQUEST_ID, owned_text)?),
                b"action" => action = Some(self.once(&mut seen, ACTION, Self::action)?),
                b"request_headers" => {
                    request_headers = self.once(&mut seen, REQUEST_HEADERS, |r| {
                        r.optional(Self::header_mutations)
                    })?
                }
                b"response_headers" => {
                    response_headers = self.once(&mut seen, RESPONSE_HEADERS, |r| {
                        r.optional(Self::header_mutations)
                    })?
                }
                b"status" => status = self.once(&mut seen, STATUS, |r| r.optional(Self::u16))?,
                b"body" => body = self.once(&mut seen, BODY, |r| r.optional(owned_bytes))?,
                b"error" => error = self.once(&mut seen, ERROR, |r| r.optional(owned_text))?,
                b"path" => path = self.once(&mut seen, PATH, |r| r.optional(owned_text))?,
                b"state" => state = self.once(&mut seen, STATE, |r| r.optional(owned_bytes))?,
                other => self.skip_field(other)?,
            }
        }
        Some(PhaseReply {
            version: version?,
            request_id: request_id?,
            action: action?,
            request_headers,
            response_headers,
            status,
            body,
            error,
            path,
            state,
        })
    }

    /// `next`, `end` or `error`, as a `str`.
    fn action(&mut self) -> Option<Action> {
        match self.str()? {
            "next" => Some(Action::Next),
            "end" => Some(Action::End),
            "error" => Some(Action::Error),
            _ => None,
        }
    }

    /// Header changes: a map of `set` (`[name, value]` arrays) and `remove`
    /// (names), either absent.
    fn header_mutations(&mut self) -> Option<HeaderMutations> {
        const SET: u16 = 1;
        const REMOVE: u16 = 2;
        let mut mutations = HeaderMutations::default();
        let mut seen = 0;
        for _ in 0..self.map_len()? {
            match self.key()? {
                b"set" => {
                    mutations.set = self.once(&mut seen, SET, |r| {
                        let count = r.array_len()?;
                        let mut set = Vec::with_capacity(count.min(r.rest.len() / 3));
                        for _ in 0..count {
                            if r.array_len()? != 2 {
                                return None;
                            }
                            set.push((r.str()?.to_string(), r.str()?.to_string()));
                        }
                        Some(set)
                    })?
                }
                b"remove" => {
                    mutations.remove = self.once(&mut seen, REMOVE, |r| {
                        let count = r.array_len()?;
                        let mut names = Vec::with_capacity(count.min(r.rest.len()));
                        for _ in 0..count {
                            names.push(r.str()?.to_string());
                        }
                        Some(names)
                    })?
                }
                other => self.skip_field(other)?,
            }
        }
        Some(mutations)
    }

    /// Reads a field's value with `read`, after marking the field (one bit
    /// of `seen`) as read. A field given twice is refused: serde reports it
    /// as an error, so it must go the slow way.
    fn once<T>(
        &mut self,
        seen: &mut u16,
        field: u16,
        read: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<T> {
        if *seen & field != 0 {
            return None;
        }
        *seen |= field;
        read(self)
    }

    /// A header list: `nil`, or an array of `[name, value]` arrays.
    fn headers(&mut self) -> Option<Vec<(&'a str, &'a str)>> {
        if self.nil() {
            return Some(Vec::new());
        }
        let count = self.array_len()?;
        // Each pair takes at least three bytes; a length beyond that is a
        // lie and must not size the allocation.
        let mut headers = Vec::with_capacity(count.min(self.rest.len() / 3));
        for _ in 0..count {
            if self.array_len()? != 2 {
                return None;
            }
            headers.push((self.str()?, self.str()?));
        }
        Some(headers)
    }

    /// `nil` as `None`, otherwise what `read` reads.
    fn optional<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.nil() {
            Some(None)
        } else {
            read(self).map(Some)
        }
    }

    /// A map key: a `str`, as bytes.
    fn key(&mut self) -> Option<&'a [u8]> {
        let len = self.str_len()?;
        self.take(len)
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = self.str_len()?;
        text(self.take(len)?)
    }

    fn str_len(&mut self) -> Option<usize> {
        match self.byte()? {
            marker @ 0xa0..=0xbf => Some(usize::from(marker & 0x1f)),
            0xd9 => self.be::<1>(),
            0xda => self.be::<2>(),
            0xdb => self.be::<4>(),
            _ => None,
        }
    }

    /// `nil` or `bin`, borrowed.
    fn optional_bytes(&mut self) -> Option<Option<Cow<'a, [u8]>>> {
        Some(self.optional(Self::bin)?.map(Cow::Borrowed))
    }

    fn bin(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            0xc4 => self.be::<1>()?,
            0xc5 => self.be::<2>()?,
            0xc6 => self.be::<4>()?,
            _ => return None,
        };
        self.take(len)
    }

    fn u16(&mut self) -> Option<u16> {
        u16::try_from(self.uint()?).ok()
    }

    fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            value @ 0x00..=0x7f => Some(u64::from(value)),
            0xcc => self.be::<1>().map(|v| v as u64),
            0xcd => self.be::<2>().map(|v| v as u64),
            0xce => self.be::<4>().map(|v| v as u64),
            0xcf => Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?)),
            _ => None,
        }
    }

    fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            0xc2 => Some(false),
            0xc3 => Some(true),
            _ => None,
        }
    }

    fn map_len(&mut self) -> Option<usize> {
        match self.byte()? {
            marker @ 0x80..=0x8f => Some(usize::from(marker & 0x0f)),
            0xde => self.be::<2>(),
            0xdf => self.be::<4>(),
            _ => None,
        }
    }

    fn array_len(&mut self) -> Option<usize> {
        match self.byte()? {
            marker @ 0x90..=0x9f => Some(usize::from(marker & 0x0f)),
            0xdc => self.be::<2>(),
            0xdd => self.be::<4>(),
            _ => None,
        }
    }

    /// Whether an array is next.
    fn at_array(&self) -> bool {
        matches!(self.rest.first(), Some(0x90..=0x9f | 0xdc | 0xdd))
    }

    /// Consumes a `nil` if one is next.
    fn nil(&mut self) -> bool {
        match self.rest.split_first() {
            Some((0xc0, rest)) => {
                self.rest = rest;
                true
            }
            _ => false,
        }
    }

    /// Skips the value of a field this reader does not know, after making
    /// sure its name is text.
    fn skip_field(&mut self, name: &[u8]) -> Option<()> {
        text(name)?;
        self.skip_value()
    }

    /// Skips one value of any type, nested ones included, without
    /// recursing: `pending` counts the values still to skip. A value of
    /// more than [`MAX_SKIPPED_CONTAINERS`] arrays and maps goes to serde,
    /// which may refuse it as nested too deeply.
    fn skip_value(&mut self) -> Option<()> {
        let mut pending: usize = 1;
        let mut containers = 0;
        while pending > 0 {
            pending -= 1;
            if let Some(0xa0..=0xbf | 0xd9..=0xdb) = self.rest.first() {
                // Strings are checked as serde would read them.
                self.str()?;
                continue;
            }
            let marker = self.byte()?;
            let (payload, items) = match marker {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
                0x80..=0x8f => (0, 2 * usize::from(marker & 0x0f)),
                0x90..=0x9f => (0, usize::from(marker & 0x0f)),
                0xc4 => (self.be::<1>()?, 0),
                0xc5 => (self.be::<2>()?, 0),
                0xc6 => (self.be::<4>()?, 0),
                0xca => (4, 0),
                0xcb => (8, 0),
                0xcc | 0xd0 => (1, 0),
                0xcd | 0xd1 => (2, 0),
                0xce | 0xd2 => (4, 0),
                0xcf | 0xd3 => (8, 0),
                0xdc => (0, self.be::<2>()?),
                0xdd => (0, self.be::<4>()?),
                0xde => (0, 2 * self.be::<2>()?),
                0xdf => (0, 2usize.checked_mul(self.be::<4>()?)?),
                // Extension types have no place in a phase request; serde
                // decides about them. 0xc1 is never used.
                _ => return None,
            };
            self.take(payload)?;
            if matches!(marker, 0x80..=0x9f | 0xdc..=0xdf) {
                containers += 1;
                if containers > MAX_SKIPPED_CONTAINERS {
                    return None;
                }
            }
            // Every value takes at least one byte, so more pending values
            // than bytes left is malformed; this also bounds the loop.
            pending = pending.checked_add(items)?;
            if pending > self.rest.len() {
                return None;
            }
        }
        Some(())
    }

    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if len > self.rest.len() {
            return None;
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(taken)
    }

    /// A big-endian unsigned integer of `N` bytes (1, 2 or 4).
    fn be<const N: usize>(&mut self) -> Option<usize> {
        let bytes: [u8; N] = self.take(N)?.try_into().ok()?;
        Some(bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b)))
    }
}
