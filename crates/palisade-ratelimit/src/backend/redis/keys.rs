//! Redis key names: `{prefix}{rule id}`, then the method and key bytes, readable when short.

use sha2::{Digest, Sha256};

use crate::backend::BucketKey;

/// Longest method path kept readable in a key name.
const MAX_READABLE_METHOD: usize = 128;

/// Longest key value kept readable in a key name.
pub(crate) const MAX_READABLE_VALUE: usize = 64;

/// `{prefix}{id}`, with the characters that separate the parts after it escaped in the id.
pub(crate) fn base(prefix: &str, id: &str) -> Box<[u8]> {
    let mut base = Vec::with_capacity(prefix.len() + id.len());
    base.extend_from_slice(prefix.as_bytes());
    for byte in id.bytes() {
        match byte {
            b'%' | b'|' | b'#' | b'~' => {
                base.push(b'%');
                base.extend_from_slice(&hex_byte(byte));
            }
            _ => base.push(byte),
        }
    }
    base.into_boxed_slice()
}

/// A bucket's key name: `{base}|{method}#{value}` (each part only when the bucket has it) when
/// the parts are short and printable and hashing is not forced, else `{base}~{hash}` with the
/// hex of the first 128 bits of a SHA-256 of both parts. The two forms never collide: after
/// the base, a readable name goes on with `|`, `#` or nothing, a hashed one with `~`.
pub(crate) fn name(base: &[u8], key: &BucketKey<'_>, hash_all: bool) -> Vec<u8> {
    let method = key.method().map(str::as_bytes);
    let value = key.value();
    let readable = !hash_all
        && method.is_none_or(|m| {
            m.len() <= MAX_READABLE_METHOD && m.iter().all(|&b| b.is_ascii_graphic() && b != b'#')
        })
        && value
            .is_none_or(|v| v.len() <= MAX_READABLE_VALUE && v.iter().all(u8::is_ascii_graphic));
    let mut name = Vec::with_capacity(
        base.len() + 2 + method.map_or(32, <[u8]>::len) + value.map_or(0, <[u8]>::len),
    );
    name.extend_from_slice(base);
    if readable {
        if let Some(method) = method {
            name.push(b'|');
            name.extend_from_slice(method);
        }
        if let Some(value) = value {
            name.push(b'#');
            name.extend_from_slice(value);
        }
        return name;
    }
    let mut hasher = Sha256::new();
    for part in [method, value] {
        match part {
            Some(bytes) => {
                hasher.update([1]);
                hasher.update((bytes.len() as u64).to_le_bytes());
                hasher.update(bytes);
            }
            None => hasher.update([0]),
        }
    }
    let digest = hasher.finalize();
    name.push(b'~');
    for &byte in &digest[..16] {
        name.extend_from_slice(&hex_byte(byte));
    }
    name
}

fn hex_byte(byte: u8) -> [u8; 2] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    [HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(name: Vec<u8>) -> String {
        String::from_utf8(name).unwrap()
    }

    #[test]
    fn short_printable_keys_stay_readable() {
        let base = base("palisade:rl:", "api/0");
        assert_eq!(&*base, b"palisade:rl:api/0");
        let name = |method, value: Option<&[u8]>| {
            text(super::name(&base, &BucketKey::new(method, value), false))
        };
        assert_eq!(name(None, None), "palisade:rl:api/0");
        assert_eq!(
            name(None, Some(b"203.0.113.7")),
            "palisade:rl:api/0#203.0.113.7"
        );
        assert_eq!(
            name(Some("/pkg.S/M"), Some(b"a#b|c")),
            "palisade:rl:api/0|/pkg.S/M#a#b|c"
        );
        assert_eq!(name(Some("/pkg.S/M"), None), "palisade:rl:api/0|/pkg.S/M");
    }

    #[test]
    fn long_unprintable_or_forced_keys_are_hashed_and_distinct() {
        let base = base("p:", "a/0");
        let long = vec![b'x'; MAX_READABLE_VALUE + 1];
        let keys = [
            BucketKey::new(None, Some(&long)),
            BucketKey::new(None, Some(b"with space")),
            BucketKey::new(None, Some(b"\xff")),
            BucketKey::new(Some("/a#b"), None),
            BucketKey::new(Some("/a#b"), Some(b"")),
            BucketKey::new(Some("/x"), Some(b"\0")),
        ];
        let names: Vec<String> = keys
            .iter()
            .map(|key| text(name(&base, key, false)))
            .collect();
        for name in &names {
            assert!(
                name.starts_with("p:a/0~") && name.len() == "p:a/0~".len() + 32,
                "{name}"
            );
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        // Forced hashing hashes everything, the same way on every instance.
        let forced = text(name(
            &base,
            &BucketKey::new(None, Some(b"secret-api-key")),
            true,
        ));
        assert!(!forced.contains("secret"), "{forced}");
        assert_eq!(
            forced,
            text(name(
                &base,
                &BucketKey::new(None, Some(b"secret-api-key")),
                true
            ))
        );
    }

    #[test]
    fn separators_in_rule_ids_are_escaped() {
        assert_eq!(&*base("p:", "a|b#c~d%/0"), b"p:a%7cb%23c%7ed%25/0");
    }
}
