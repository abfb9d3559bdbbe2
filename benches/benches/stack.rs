//! The full server stack (palisade's `ServerLayers` preset: trace → logging → metrics → jwt →
//! ratelimit → breaker) and the full client stack (`ClientLayers`: trace → logging → metrics →
//! breaker → ratelimit → jwt) against bare, in process. The cases are
//! `palisade_benches::suites::stack`.
#![allow(missing_docs)]

fn main() {
    palisade_benches::main_for("stack", palisade_benches::suites::stack);
}
