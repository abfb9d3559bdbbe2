//! The layer's known methods (from its [`MethodRegistry`]), each with what every line of it
//! writes the same way, rendered once: found by request path, so a known method's RPC is
//! neither parsed, nor its names copied or escaped, again.

use std::{collections::HashMap, fmt, ops::Index};

use palisade_core::{MethodRegistry, MethodType, Side};

use crate::line::method_fields;

/// The methods a layer knows, by request path (`/package.Service/Method`).
pub(crate) struct Methods {
    by_path: HashMap<Box<str>, u32, foldhash::fast::RandomState>,
    known: Box<[Known]>,
}

/// One known method.
pub(crate) struct Known {
    pub(crate) service: Box<str>,
    pub(crate) method: Box<str>,
    pub(crate) method_type: MethodType,
    /// `,"grpc.component":…,"grpc.service":…,"grpc.method":…,"grpc.method_type":…`, as the
    /// access-log line writes them.
    pub(crate) fields: Box<[u8]>,
}

impl Methods {
    pub(crate) fn new(registry: &MethodRegistry, side: Side) -> Self {
        let known: Box<[Known]> = registry
            .iter()
            .map(|info| Known {
                service: info.service.as_str().into(),
                method: info.method.as_str().into(),
                method_type: info.method_type,
                fields: method_fields(
                    side.as_str(),
                    &info.service,
                    &info.method,
                    Some(info.method_type.as_str()),
                ),
            })
            .collect();
        let mut by_path = HashMap::with_capacity_and_hasher(known.len(), Default::default());
        for (index, method) in known.iter().enumerate() {
            let index = u32::try_from(index).expect("fewer than 2^32 methods");
            by_path
                .entry(format!("/{}/{}", method.service, method.method).into_boxed_str())
                .or_insert(index);
        }
        Self { by_path, known }
    }

    /// The known method at this request path.
    pub(crate) fn get(&self, path: &str) -> Option<u32> {
        self.by_path.get(path).copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.known.len()
    }
}

impl Index<u32> for Methods {
    type Output = Known;

    fn index(&self, index: u32) -> &Known {
        &self.known[index as usize]
    }
}

impl fmt::Debug for Methods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Methods")
            .field("len", &self.known.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_are_found_by_path_with_their_fields() {
        let registry = MethodRegistry::new()
            .with_method("pkg.Greeter/SayHello", MethodType::Unary)
            .with_method("pkg.Greeter/Chat", MethodType::BidiStream);
        let methods = Methods::new(&registry, Side::Client);
        assert_eq!(methods.len(), 2);
        let chat = &methods[methods.get("/pkg.Greeter/Chat").unwrap()];
        assert_eq!((&*chat.service, &*chat.method), ("pkg.Greeter", "Chat"));
        assert_eq!(chat.method_type, MethodType::BidiStream);
        assert_eq!(
            std::str::from_utf8(&chat.fields).unwrap(),
            r#","grpc.component":"client","grpc.service":"pkg.Greeter","grpc.method":"Chat","grpc.method_type":"bidi_stream""#
        );
        for unknown in [
            "pkg.Greeter/Chat",
            "/pkg.Greeter/chat",
            "/pkg.Greeter/Chat/",
            "/",
        ] {
            assert_eq!(methods.get(unknown), None, "{unknown}");
        }
    }
}
