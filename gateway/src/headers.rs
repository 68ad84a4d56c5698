//! Between Pingora's message heads and the protocol's header lists:
//! [`Head`], the few operations the gateway's own changes need, over
//! both; reading a message's fields as text for the plugins; and writing
//! back only the fields the plugins changed, so the others keep their
//! exact bytes.

use http::{HeaderMap, HeaderName, HeaderValue};
use natsplug_protocol::HeaderList;
use pingora::http::{RequestHeader, ResponseHeader};

/// The fields of a message head as the gateway changes them: a Pingora
/// request or response head, or the header list the plugins see. Names
/// are matched in any case; the gateway's own names are statics, so a
/// Pingora head finds them without parsing them again.
pub trait Head {
    /// Whether a field is named `name`.
    fn has(&self, name: &HeaderName) -> bool;
    /// Call `each` with every value of `name`, in order.
    fn each_value(&self, name: &HeaderName, each: impl FnMut(&[u8]));
    /// The first value of `name`.
    fn first_value(&self, name: &HeaderName) -> Option<&[u8]>;
    /// Remove every field named `name`.
    fn remove_all(&mut self, name: &HeaderName);
    /// Add the field `name: value` after the others.
    fn add(&mut self, name: &'static HeaderName, value: &str);
    /// Add `value` to the list field `name`: joined to its last line with
    /// `, `, in place of an empty last line, or as a new line when the
    /// field is absent.
    fn add_to_list(&mut self, name: &'static HeaderName, value: &str);
}

impl Head for HeaderList {
    fn has(&self, name: &HeaderName) -> bool {
        let name = name.as_str();
        self.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    fn each_value(&self, name: &HeaderName, mut each: impl FnMut(&[u8])) {
        let name = name.as_str();
        self.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .for_each(|(_, value)| each(value.as_bytes()));
    }

    fn first_value(&self, name: &HeaderName) -> Option<&[u8]> {
        let name = name.as_str();
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_bytes())
    }

    fn remove_all(&mut self, name: &HeaderName) {
        let name = name.as_str();
        self.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    fn add(&mut self, name: &'static HeaderName, value: &str) {
        self.push((name.as_str().to_string(), value.to_string()));
    }

    fn add_to_list(&mut self, name: &'static HeaderName, value: &str) {
        match self
            .iter_mut()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_str()))
        {
            Some((_, last)) if !last.trim().is_empty() => {
                let kept = last.trim_end().len();
                last.truncate(kept);
                last.drain(..last.len() - last.trim_start().len());
                last.push_str(", ");
                last.push_str(value);
            }
            Some((_, last)) => *last = value.to_string(),
            None => self.add(name, value),
        }
    }
}

/// [`Head`] and [`HeaderTarget`] for Pingora's heads, which keep each
/// name's case beside their `HeaderMap`: names are added and removed
/// through their methods, values changed in the map.
macro_rules! pingora_head {
    ($head:ty) => {
        impl HeaderTarget for $head {
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }

            fn append(&mut self, name: HeaderName, value: HeaderValue) {
                // Both are valid already; appending them cannot fail.
                let _ = self.append_header(name, value);
            }
        }

        impl Head for $head {
            fn has(&self, name: &HeaderName) -> bool {
                self.headers.contains_key(name)
            }

            fn each_value(&self, name: &HeaderName, mut each: impl FnMut(&[u8])) {
                self.headers
                    .get_all(name)
                    .iter()
                    .for_each(|value| each(value.as_bytes()));
            }

            fn first_value(&self, name: &HeaderName) -> Option<&[u8]> {
                self.headers.get(name).map(HeaderValue::as_bytes)
            }

            fn remove_all(&mut self, name: &HeaderName) {
                if self.headers.contains_key(name) {
                    self.remove_header(name);
                }
            }

            fn add(&mut self, name: &'static HeaderName, value: &str) {
                match HeaderValue::from_str(value) {
                    // A static lower-case name and a valid value: appending
                    // cannot fail.
                    Ok(value) => drop(self.append_header(name.as_str(), value)),
                    Err(_) => tracing::warn!(
                        name = name.as_str(),
                        value,
                        "not a valid field value; left out"
                    ),
                }
            }

            fn add_to_list(&mut self, name: &'static HeaderName, value: &str) {
                let mut lines: Vec<HeaderValue> =
                    self.headers.get_all(name).iter().cloned().collect();
                let Some(last) = lines.pop() else {
                    return self.add(name, value);
                };
                match joined_line(&last, value) {
                    Ok(joined) => lines.push(joined),
                    Err(_) => {
                        tracing::warn!(
                            name = name.as_str(),
                            value,
                            "not a valid field value; left out"
                        );
                        return;
                    }
                }
                // The heads change values only by name: all of them again.
                self.remove_header(name);
                for line in lines {
                    let _ = self.append_header(name.as_str(), line);
                }
            }
        }
    };
}

pingora_head!(RequestHeader);
pingora_head!(ResponseHeader);

/// `line` with `value` joined to it by `, `, or `value` alone in place of
/// an empty `line`.
fn joined_line(
    line: &HeaderValue,
    value: &str,
) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let existing = line.as_bytes().trim_ascii();
    if existing.is_empty() {
        return HeaderValue::from_str(value);
    }
    let mut bytes = Vec::with_capacity(existing.len() + 2 + value.len());
    bytes.extend_from_slice(existing);
    bytes.extend_from_slice(b", ");
    bytes.extend_from_slice(value.as_bytes());
    HeaderValue::from_bytes(&bytes)
}

/// The fields of `map`, in order, as text: a value that is not UTF-8 is
/// shown to plugins with U+FFFD in place of the bad bytes (and forwarded
/// unchanged unless a plugin changes that field).
pub fn header_list(map: &HeaderMap) -> HeaderList {
    map.iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// A message head whose fields can be replaced.
pub trait HeaderTarget {
    fn remove(&mut self, name: &HeaderName);
    fn append(&mut self, name: HeaderName, value: HeaderValue);
}

/// Fields that could not be written, as `name: value` for the log.
pub type Refused = Vec<String>;

/// Make `target`'s fields what `after` says, where `before` is what
/// `target` held as text: every field name whose values differ between the
/// two lists is replaced by its values in `after` (or removed); the others
/// are left as they are. Names and values HTTP does not allow are skipped
/// and returned.
///
/// Only names that occur between the fields both lists start with and the
/// fields both end with can differ, so only those are compared: a plugin
/// that adds or changes a field or two costs a walk over the lists, not a
/// sort of them.
pub fn apply_difference(
    target: &mut impl HeaderTarget,
    before: &HeaderList,
    after: &HeaderList,
) -> Refused {
    let mut refused = Refused::new();
    let common_start = before.iter().zip(after).take_while(|(x, y)| x == y).count();
    let common_end = before[common_start..]
        .iter()
        .rev()
        .zip(after[common_start..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let between = before[common_start..before.len() - common_end]
        .iter()
        .chain(&after[common_start..after.len() - common_end]);
    let mut compared: Vec<&str> = Vec::new();
    for (name, _) in between {
        if compared.iter().any(|seen| seen.eq_ignore_ascii_case(name)) {
            continue;
        }
        compared.push(name);
        if values_of(before, name).eq(values_of(after, name)) {
            continue;
        }
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            refused.push(name.to_ascii_lowercase());
            continue;
        };
        target.remove(&header);
        for value in values_of(after, name) {
            match HeaderValue::from_str(value) {
                Ok(value) => target.append(header.clone(), value),
                Err(_) => refused.push(format!("{}: {value}", header.as_str())),
            }
        }
    }
    refused
}

/// The values of the fields of `list` named `name`, in order.
fn values_of<'a>(list: &'a HeaderList, name: &'a str) -> impl Iterator<Item = &'a str> {
    list.iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// A header list of `(name, value)` pairs, for the tests.
#[cfg(test)]
pub(crate) fn list(pairs: &[(&str, &str)]) -> HeaderList {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_fields_are_rewritten() {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        request.append_header("accept", "*/*").unwrap();
        request
            .append_header("x-raw", HeaderValue::from_bytes(b"caf\xe9").unwrap())
            .unwrap();
        request.append_header("x-drop", "1").unwrap();
        let before = header_list(&request.headers);
        assert_eq!(before[1], ("x-raw".into(), "caf\u{fffd}".into()));
        let mut after = before.clone();
        after.retain(|(n, _)| n != "x-drop");
        after.push(("X-Plugin".into(), "header-injector".into()));
        after.push(("x-bad".into(), "a\nb".into()));
        after.push(("bad name".into(), "v".into()));
        let refused = apply_difference(&mut request, &before, &after);
        assert_eq!(refused, ["x-bad: a\nb", "bad name"]);
        assert_eq!(request.headers.get("x-raw").unwrap().as_bytes(), b"caf\xe9");
        assert_eq!(request.headers.get("x-plugin").unwrap(), "header-injector");
        assert!(request.headers.get("x-drop").is_none());
        assert!(request.headers.get("x-bad").is_none());
        assert_eq!(request.headers.len(), 3);
    }

    #[test]
    fn repeated_fields_keep_their_order() {
        let mut response = ResponseHeader::build(200, None).unwrap();
        response.append_header("set-cookie", "a=1").unwrap();
        let before = list(&[("set-cookie", "a=1")]);
        let after = list(&[("set-cookie", "a=1"), ("set-cookie", "b=2")]);
        apply_difference(&mut response, &before, &after);
        let cookies: Vec<_> = response.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        /// Field lists over a few names (so lists share names) and values
        /// that include ones HTTP refuses.
        fn fields() -> impl Strategy<Value = HeaderList> {
            let name = prop_oneof![
                Just("accept".to_string()),
                Just("X-Plugin".to_string()),
                Just("x-plugin".to_string()),
                Just("set-cookie".to_string()),
                Just("bad name".to_string()),
                "[a-z]{1,3}",
            ];
            let value = prop_oneof![
                "[ -~]{0,8}",
                Just("a\nb".to_string()),
                Just("é".to_string())
            ];
            proptest::collection::vec((name, value), 0..8)
        }

        fn by_name(list: &HeaderList) -> BTreeMap<String, Vec<String>> {
            let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (name, value) in list {
                map.entry(name.to_ascii_lowercase())
                    .or_default()
                    .push(value.clone());
            }
            map
        }

        fn valid(list: &HeaderList) -> HeaderList {
            list.iter()
                .filter(|(n, v)| {
                    HeaderName::from_bytes(n.as_bytes()).is_ok() && HeaderValue::from_str(v).is_ok()
                })
                .cloned()
                .collect()
        }

        proptest! {
            /// Whatever the plugins did, the message ends up with exactly
            /// their fields that HTTP allows, each name's values in order.
            #[test]
            fn the_message_holds_what_the_plugins_left(before in fields(), after in fields()) {
                let before = valid(&before);
                let mut request = RequestHeader::build("GET", b"/", None).unwrap();
                for (name, value) in &before {
                    request.append_header(name.clone(), value.as_str()).unwrap();
                }
                let shown = header_list(&request.headers);
                prop_assert_eq!(by_name(&shown), by_name(&before));
                let refused = apply_difference(&mut request, &shown, &after);
                let wanted = valid(&after);
                prop_assert_eq!(by_name(&header_list(&request.headers)), by_name(&wanted));
                let skipped = after.len() - wanted.len();
                prop_assert!(refused.len() <= skipped);
            }

            /// The same when the plugins kept the fields the message starts
            /// and ends with and changed those between, as plugins do: the
            /// fields kept share names with the ones changed.
            #[test]
            fn the_message_holds_what_the_plugins_left_around_what_they_kept(
                before in fields(),
                between in fields(),
                (start, end) in (0.0..=1.0f64, 0.0..=1.0f64),
            ) {
                let before = valid(&before);
                let mut request = RequestHeader::build("GET", b"/", None).unwrap();
                for (name, value) in &before {
                    request.append_header(name.clone(), value.as_str()).unwrap();
                }
                let shown = header_list(&request.headers);
                let (low, high) = (start.min(end), start.max(end));
                let kept_start = (shown.len() as f64 * low) as usize;
                let kept_end = ((shown.len() as f64 * high) as usize).clamp(kept_start, shown.len());
                let mut after = shown[..kept_start].to_vec();
                after.extend(between);
                after.extend_from_slice(&shown[kept_end..]);
                apply_difference(&mut request, &shown, &after);
                prop_assert_eq!(by_name(&header_list(&request.headers)), by_name(&valid(&after)));
            }
        }
    }
}
