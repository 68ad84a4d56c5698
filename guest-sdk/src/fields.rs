//! Header lookup helpers over the `(name, value)` lists of the WIT records.

/// Read access to a header list; names compare case-insensitively.
pub trait Headers {
    /// The first value of header `name`.
    fn header(&self, name: &str) -> Option<&str>;
    /// Every value of header `name`, in order.
    fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a;
    /// Whether header `name` is present.
    fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

/// The header list type used in requests and responses.
pub type HeaderList = Vec<(String, String)>;

impl Headers for HeaderList {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Headers for crate::Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.header(name)
    }
    fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.header_all(name)
    }
}

impl Headers for crate::Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.header(name)
    }
    fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.header_all(name)
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
