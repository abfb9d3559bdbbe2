//! [`Head`]: the request head as the caller made it, kept for the attempts after the first in
//! one buffer — cheaper than cloning the `http` head, which allocates for every header value
//! that is not `'static` (and for the URI's) on a path where, most of the time, no second
//! attempt is made.

use http::{
    Extensions, HeaderMap, HeaderName, HeaderValue, Method, Uri, Version, request::Parts,
    uri::PathAndQuery,
};

/// Header entries are written as `[flags, name length (2 bytes), value length (4 bytes)]`,
/// then the name and the value.
const ENTRY: usize = 7;
const SENSITIVE: u8 = 1;

/// The caller's method, URI, version, headers (in order, duplicates kept, sensitivity kept)
/// and extensions.
pub(crate) struct Head {
    method: Method,
    version: Version,
    /// The URI's scheme, authority and path-and-query, then the header entries.
    bytes: Vec<u8>,
    scheme: usize,
    authority: usize,
    path: usize,
    extensions: Extensions,
    /// Every header fitted its entry (always, with `http`'s own bounds on names).
    complete: bool,
}

impl Head {
    /// Keeps `parts` for later.
    pub(crate) fn of(parts: &Parts) -> Self {
        let uri = &parts.uri;
        let scheme = uri.scheme_str().unwrap_or("");
        let authority = uri.authority().map_or("", |authority| authority.as_str());
        let path = uri.path_and_query().map_or("", PathAndQuery::as_str);
        let headers_len: usize = parts
            .headers
            .iter()
            .map(|(name, value)| ENTRY + name.as_str().len() + value.len())
            .sum();
        let mut bytes =
            Vec::with_capacity(scheme.len() + authority.len() + path.len() + headers_len);
        bytes.extend_from_slice(scheme.as_bytes());
        bytes.extend_from_slice(authority.as_bytes());
        bytes.extend_from_slice(path.as_bytes());
        let mut complete = true;
        for (name, value) in &parts.headers {
            let name = name.as_str().as_bytes();
            // `http` bounds names below 64 KiB; a value of 4 GiB or more cannot be kept,
            // and then the call is not retried rather than sent without it.
            let (Ok(name_len), Ok(value_len)) =
                (u16::try_from(name.len()), u32::try_from(value.len()))
            else {
                complete = false;
                continue;
            };
            let flags = if value.is_sensitive() { SENSITIVE } else { 0 };
            bytes.push(flags);
            bytes.extend_from_slice(&name_len.to_le_bytes());
            bytes.extend_from_slice(&value_len.to_le_bytes());
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(value.as_bytes());
        }
        Head {
            method: parts.method.clone(),
            version: parts.version,
            bytes,
            scheme: scheme.len(),
            authority: authority.len(),
            path: path.len(),
            extensions: parts.extensions.clone(),
            complete,
        }
    }

    /// The head of another attempt, or `None` if it cannot be made again exactly (a header
    /// that does not parse back).
    pub(crate) fn parts(&self) -> Option<(Method, Uri, Version, HeaderMap, Extensions)> {
        if !self.complete {
            return None;
        }
        Some((
            self.method.clone(),
            self.uri()?,
            self.version,
            self.headers()?,
            self.extensions.clone(),
        ))
    }

    /// The path of the call (for the series' labels).
    pub(crate) fn path(&self) -> &str {
        let start = self.scheme + self.authority;
        let path = std::str::from_utf8(&self.bytes[start..start + self.path]).unwrap_or("");
        path.split('?').next().unwrap_or("")
    }

    fn uri(&self) -> Option<Uri> {
        let (scheme, rest) = self.bytes.split_at(self.scheme);
        let (authority, rest) = rest.split_at(self.authority);
        let path = &rest[..self.path];
        let mut builder = Uri::builder();
        if !scheme.is_empty() {
            builder = builder.scheme(scheme);
        }
        if !authority.is_empty() {
            builder = builder.authority(authority);
        }
        if !path.is_empty() {
            builder = builder.path_and_query(path);
        }
        builder.build().ok()
    }

    fn headers(&self) -> Option<HeaderMap> {
        let mut rest = &self.bytes[self.scheme + self.authority + self.path..];
        let mut headers = HeaderMap::new();
        while !rest.is_empty() {
            let (entry, tail) = rest.split_at_checked(ENTRY)?;
            let name_len = usize::from(u16::from_le_bytes([entry[1], entry[2]]));
            let value_len = u32::from_le_bytes([entry[3], entry[4], entry[5], entry[6]]) as usize;
            let (name, tail) = tail.split_at_checked(name_len)?;
            let (value, tail) = tail.split_at_checked(value_len)?;
            let name = HeaderName::from_bytes(name).ok()?;
            let mut value = HeaderValue::from_bytes(value).ok()?;
            value.set_sensitive(entry[0] & SENSITIVE != 0);
            headers.append(name, value);
            rest = tail;
        }
        Some(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_made_again_exactly() {
        let mut secret = HeaderValue::from_static("Bearer t0ken");
        secret.set_sensitive(true);
        let request = http::Request::post("http://greeter.default.svc:50051/pkg.Svc/Call?x=1")
            .version(Version::HTTP_2)
            .header("te", "trailers")
            .header("x-many", "one")
            .header("x-many", "two")
            .header("authorization", secret)
            .header("x-bin-bin", "AAEC")
            .extension(42_u32)
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let head = Head::of(&parts);
        let (method, uri, version, headers, extensions) = head.parts().unwrap();
        assert_eq!(method, parts.method);
        assert_eq!(uri, parts.uri);
        assert_eq!(version, parts.version);
        assert_eq!(headers, parts.headers);
        let many: Vec<_> = headers.get_all("x-many").iter().collect();
        assert_eq!(many, ["one", "two"], "order and duplicates kept");
        assert!(headers["authorization"].is_sensitive());
        assert!(!headers["te"].is_sensitive());
        assert_eq!(extensions.get::<u32>(), Some(&42));
        assert_eq!(head.path(), "/pkg.Svc/Call");
    }

    #[test]
    fn a_path_only_uri_and_no_headers() {
        let (parts, ()) = http::Request::post("/pkg.Svc/Call")
            .body(())
            .unwrap()
            .into_parts();
        let head = Head::of(&parts);
        let (_, uri, _, headers, _) = head.parts().unwrap();
        assert_eq!(uri, "/pkg.Svc/Call");
        assert!(headers.is_empty());
        assert_eq!(head.path(), "/pkg.Svc/Call");
    }
}
