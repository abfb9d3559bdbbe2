//! The names a method's spans carry — the span name `package.Service/Method`, `rpc.service`,
//! `rpc.method` — as `&'static str`s made once per method, so a span takes them without
//! allocating: OpenTelemetry's span names are `Cow<'static, str>`, and a static string value
//! is copied, not reference-counted.

use std::{
    collections::BTreeSet,
    sync::{Mutex, PoisonError},
};

use palisade_core::Method;

/// The most method names kept for the process's lifetime, over every layer: far more than the
/// methods of any server (each layer names at most its registry's methods, or
/// [`MAX_SPAN_NAMES`](crate::MAX_SPAN_NAMES) without one). Past it, spans allocate their names
/// as they did before.
const MAX_NAMES: usize = 16_384;

/// The longest name kept (a method path longer than this names no span slot anyway).
const MAX_NAME_LEN: usize = 1024;

/// Every name kept so far: each is leaked once, shared by every layer that names a span with
/// it, and lives as long as the process (bounded by [`MAX_NAMES`]).
static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// A method's names, kept for the process's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MethodNames {
    /// `package.Service/Method`.
    full: &'static str,
    /// Where the `/` is in `full`.
    slash: usize,
}

impl MethodNames {
    /// The names of `method`, made the first time any layer asks; `None` once
    /// [`MAX_NAMES`] are kept, or for an overlong name.
    pub(crate) fn of(method: &Method<'_>) -> Option<Self> {
        let full = method.full_name();
        if full.len() > MAX_NAME_LEN {
            return None;
        }
        let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
        let full = match names.get(full) {
            Some(&kept) => kept,
            None if names.len() < MAX_NAMES => {
                let kept: &'static str = Box::leak(full.into());
                names.insert(kept);
                kept
            }
            None => return None,
        };
        Some(Self {
            full,
            slash: method.service().len(),
        })
    }

    /// The span name, `package.Service/Method`.
    pub(crate) fn full(self) -> &'static str {
        self.full
    }

    /// `package.Service`.
    pub(crate) fn service(self) -> &'static str {
        &self.full[..self.slash]
    }

    /// `Method`.
    pub(crate) fn method(self) -> &'static str {
        &self.full[self.slash + 1..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_methods_and_kept_once() {
        let method = Method::parse("/palisade.test.v1.Names/Kept").unwrap();
        let names = MethodNames::of(&method).unwrap();
        assert_eq!(names.full(), "palisade.test.v1.Names/Kept");
        assert_eq!(names.service(), "palisade.test.v1.Names");
        assert_eq!(names.method(), "Kept");
        let again = MethodNames::of(&method).unwrap();
        assert!(std::ptr::eq(names.full(), again.full()), "one copy");
        let long = format!("/s/{}", "m".repeat(MAX_NAME_LEN));
        assert_eq!(MethodNames::of(&Method::parse(&long).unwrap()), None);
    }
}
