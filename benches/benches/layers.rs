//! Each Palisade layer alone against a bare service doing the same work, server side and
//! client side: a unary gRPC call with a realistic request (an `authorization` bearer token, a
//! `traceparent`, tonic's connection info), its response (one message, then trailers) polled
//! to the trailers. Variants as docs/ARCHITECTURE.md's budget table has them. The cases are
//! `palisade_benches::suites::layers`.
#![allow(missing_docs)]

fn main() {
    palisade_benches::main_for("layers", palisade_benches::suites::layers);
}
