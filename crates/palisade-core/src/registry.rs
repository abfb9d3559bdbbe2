//! The method registry: every method a server knows and its type, from an encoded
//! `FileDescriptorSet` (the bytes tonic-reflection serves).

use std::{collections::HashMap, fmt};

use prost::Message as _;
use prost_types::FileDescriptorSet;

use crate::method::{Method, MethodType};

/// One known method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodInfo {
    /// Its index in the registry, dense from 0: a key for per-method arrays.
    pub index: usize,
    /// `package.Service`.
    pub service: String,
    /// `Method`.
    pub method: String,
    /// Unary or streaming.
    pub method_type: MethodType,
}

/// The methods a server knows, and their types. Layers use it to name `grpc_type` and to
/// keep label values to known methods.
///
/// # Example
///
/// ```
/// use palisade_core::{Method, MethodRegistry, MethodType};
///
/// let registry = MethodRegistry::new()
///     .with_method("palisade.demo.v1.Greeter/SayHello", MethodType::Unary)
///     .with_method("palisade.demo.v1.Greeter/SayHelloStream", MethodType::ServerStream);
/// let method = Method::parse("/palisade.demo.v1.Greeter/SayHelloStream").unwrap();
/// assert_eq!(registry.get(&method).unwrap().method_type, MethodType::ServerStream);
/// assert_eq!(registry.len(), 2);
/// ```
#[derive(Clone, Default)]
pub struct MethodRegistry {
    by_name: HashMap<Box<str>, usize>,
    methods: Vec<MethodInfo>,
}

/// An encoded `FileDescriptorSet` that could not be decoded.
#[derive(Debug)]
pub struct RegistryError(prost::DecodeError);

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid encoded FileDescriptorSet: {}", self.0)
    }
}

impl std::error::Error for RegistryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl MethodRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The methods of every service in an encoded `FileDescriptorSet`, such as the
    /// `FILE_DESCRIPTOR_SET` constants that tonic-health and tonic-reflection export, or the
    /// one `tonic_prost_build` writes with `file_descriptor_set_path`.
    pub fn from_encoded_file_descriptor_set(bytes: &[u8]) -> Result<Self, RegistryError> {
        Self::new().with_encoded_file_descriptor_set(bytes)
    }

    /// Adds the methods of another encoded `FileDescriptorSet`.
    pub fn with_encoded_file_descriptor_set(mut self, bytes: &[u8]) -> Result<Self, RegistryError> {
        let set = FileDescriptorSet::decode(bytes).map_err(RegistryError)?;
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                let service_name = match package {
                    "" => service.name().to_owned(),
                    package => format!("{package}.{}", service.name()),
                };
                for method in &service.method {
                    let method_type = MethodType::from_streaming(
                        method.client_streaming(),
                        method.server_streaming(),
                    );
                    self.insert(&service_name, method.name(), method_type);
                }
            }
        }
        Ok(self)
    }

    /// Adds one method, `package.Service/Method`; a name that is not one is ignored.
    #[must_use]
    pub fn with_method(mut self, full_name: &str, method_type: MethodType) -> Self {
        let path = format!("/{}", full_name.trim_start_matches('/'));
        if let Some(method) = Method::parse(&path) {
            self.insert(method.service(), method.method(), method_type);
        }
        self
    }

    fn insert(&mut self, service: &str, method: &str, method_type: MethodType) {
        let key: Box<str> = format!("{service}/{method}").into();
        if self.by_name.contains_key(&key) {
            return;
        }
        let index = self.methods.len();
        self.methods.push(MethodInfo {
            index,
            service: service.to_owned(),
            method: method.to_owned(),
            method_type,
        });
        self.by_name.insert(key, index);
    }

    /// The known method, if it is one.
    pub fn get(&self, method: &Method<'_>) -> Option<&MethodInfo> {
        self.by_name
            .get(method.full_name())
            .map(|&index| &self.methods[index])
    }

    /// The known method at a request path.
    pub fn get_path(&self, path: &str) -> Option<&MethodInfo> {
        self.get(&Method::parse(path)?)
    }

    /// Every known method, in index order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &MethodInfo> {
        self.methods.iter()
    }

    /// How many methods are known.
    pub fn len(&self) -> usize {
        self.methods.len()
    }

    /// Whether no method is known.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }
}

impl fmt::Debug for MethodRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.methods
                    .iter()
                    .map(|m| format!("{}/{} ({})", m.service, m.method, m.method_type.as_str())),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(MethodRegistry::from_encoded_file_descriptor_set(&[0xff, 0xff, 0xff]).is_err());
        assert!(
            MethodRegistry::from_encoded_file_descriptor_set(&[])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn reads_services_from_a_descriptor_set() {
        use prost_types::{FileDescriptorProto, MethodDescriptorProto, ServiceDescriptorProto};
        let set = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                package: Some("p".into()),
                service: vec![ServiceDescriptorProto {
                    name: Some("S".into()),
                    method: vec![
                        MethodDescriptorProto {
                            name: Some("Bidi".into()),
                            client_streaming: Some(true),
                            server_streaming: Some(true),
                            ..Default::default()
                        },
                        MethodDescriptorProto {
                            name: Some("Up".into()),
                            client_streaming: Some(true),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let registry =
            MethodRegistry::from_encoded_file_descriptor_set(&set.encode_to_vec()).unwrap();
        assert_eq!(
            registry.get_path("/p.S/Bidi").unwrap().method_type,
            MethodType::BidiStream
        );
        assert_eq!(
            registry.get_path("/p.S/Up").unwrap().method_type,
            MethodType::ClientStream
        );
        assert_eq!(registry.get_path("/p.S/Up").unwrap().index, 1);
        assert!(registry.get_path("/p.S/Nope").is_none());
    }
}
