//! The rejection path's cost: a trailers-only response per rejected call, with its
//! `LocalRejection` mark in the response's extensions (an allocation of the map and a boxed
//! value), against the same response without the mark.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Response, header::CONTENT_TYPE};
use palisade_core::{Code, LocalRejection, Rejection};

fn bench(c: &mut Criterion) {
    let rejection = Rejection::new(Code::ResourceExhausted, "rate limit exceeded")
        .with_metadata("grpc-retry-pushback-ms", HeaderValue::from_static("250"))
        .by("ratelimit");
    let mut group = c.benchmark_group("rejection");
    group.bench_function("to_response_marked", |b| {
        b.iter(|| drop(black_box(rejection.to_response::<()>())))
    });
    // The same headers, no extensions: what a rejection cost before the mark.
    group.bench_function("to_response_unmarked", |b| {
        b.iter(|| {
            let mut response = Response::new(());
            let headers = response.headers_mut();
            headers.reserve(3 + rejection.metadata().len());
            for (name, value) in rejection.metadata() {
                headers.append(name.clone(), value.clone());
            }
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from_static("8"));
            headers.insert(
                "grpc-message",
                HeaderValue::from_static("rate%20limit%20exceeded"),
            );
            drop(black_box(response))
        })
    });
    group.bench_function("mark_alone", |b| {
        b.iter(|| {
            let mut extensions = http::Extensions::new();
            extensions.insert(black_box(LocalRejection::new("ratelimit")));
            drop(black_box(extensions))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
