//! Reading header lists. The host passes each list as one buffer (the WIT
//! `fields` type: per field, a u32 little-endian length and the name, then
//! a u32 little-endian length and the value); [`Fields`] reads it in place,
//! without copying, and [`Headers`] gives requests and responses lookups by
//! name, which compare case-insensitively as in HTTP.

/// A header list read in place from its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    /// The fields of a buffer in the WIT `fields` layout. A truncated
    /// buffer yields the fields before the cut.
    pub fn new(buffer: &'a [u8]) -> Fields<'a> {
        Fields(buffer)
    }

    /// Every `(name, value)` in order. Names are text; values are bytes.
    pub fn iter(&self) -> FieldIter<'a> {
        FieldIter { rest: self.0 }
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether the list has no field.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Encode `fields` in the WIT `fields` layout (what the host sends);
    /// for tests of plugin code.
    pub fn encode<'f>(fields: impl IntoIterator<Item = (&'f str, &'f [u8])>) -> Vec<u8> {
        let mut buffer = Vec::new();
        for (name, value) in fields {
            for part in [name.as_bytes(), value] {
                buffer.extend_from_slice(&(part.len() as u32).to_le_bytes());
                buffer.extend_from_slice(part);
            }
        }
        buffer
    }
}

impl<'a> IntoIterator for Fields<'a> {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = FieldIter<'a>;
    fn into_iter(self) -> FieldIter<'a> {
        self.iter()
    }
}

/// The fields of a [`Fields`], in order.
#[derive(Debug, Clone)]
pub struct FieldIter<'a> {
    rest: &'a [u8],
}

impl<'a> FieldIter<'a> {
    fn part(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            self.rest = &[];
            return None;
        }
        let (part, rest) = rest.split_at(len);
        self.rest = rest;
        Some(part)
    }
}

impl<'a> Iterator for FieldIter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let name = self.part()?;
            let value = self.part()?;
            // Names the host sends are text; skip one that is not.
            if let Ok(name) = std::str::from_utf8(name) {
                return Some((name, value));
            }
        }
    }
}

/// Header lookups; names compare case-insensitively.
pub trait Headers {
    /// The header list.
    fn fields(&self) -> Fields<'_>;

    /// The first value of header `name` as text; `None` when it is absent
    /// or not UTF-8 (read it with [`Headers::header_bytes`] then).
    fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of header `name`, as bytes.
    fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every value of header `name`, in order, as bytes.
    fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields()
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether header `name` is present.
    fn has_header(&self, name: &str) -> bool {
        self.header_bytes(name).is_some()
    }
}

impl Headers for crate::Request {
    fn fields(&self) -> Fields<'_> {
        Fields(&self.headers)
    }
}

impl Headers for crate::Response {
    fn fields(&self) -> Fields<'_> {
        Fields(&self.headers)
    }
}

impl Headers for crate::ResponseHead {
    fn fields(&self) -> Fields<'_> {
        Fields(&self.headers)
    }
}

impl crate::Request {
    /// The bearer token of the `Authorization` header, if any.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_what_was_encoded_in_order() {
        let buffer = Fields::encode([
            ("Accept", &b"*/*"[..]),
            ("x-bin", &[0xff, 0x00][..]),
            ("accept", b""),
        ]);
        let fields = Fields::new(&buffer);
        assert_eq!(
            fields.iter().collect::<Vec<_>>(),
            vec![
                ("Accept", &b"*/*"[..]),
                ("x-bin", &[0xff, 0x00][..]),
                ("accept", &b""[..])
            ]
        );
        assert_eq!(fields.len(), 3);
    }

    #[test]
    fn a_truncated_buffer_yields_the_fields_before_the_cut() {
        let buffer = Fields::encode([("a", &b"1"[..]), ("b", b"2")]);
        for cut in 0..buffer.len() {
            let read = Fields::new(&buffer[..cut]).len();
            assert!(read <= 1, "cut at {cut}: {read}");
        }
        assert!(Fields::new(&[]).is_empty());
    }

    #[test]
    fn lookups_ignore_case_and_keep_bytes() {
        let request = crate::Request {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            host: None,
            client_ip: None,
            headers: Fields::encode([
                ("Authorization", &b"Bearer  t0k "[..]),
                ("x-bin", &[0xff][..]),
                ("X-Bin", b"two"),
            ]),
            body: None,
        };
        assert_eq!(request.bearer_token(), Some("t0k"));
        assert_eq!(request.header("x-bin"), None, "not UTF-8");
        assert_eq!(request.header_bytes("X-BIN"), Some(&[0xff][..]));
        assert_eq!(
            request.header_all("x-bin").collect::<Vec<_>>(),
            vec![&[0xff][..], &b"two"[..]]
        );
        assert!(!request.has_header("cookie"));
    }
}
