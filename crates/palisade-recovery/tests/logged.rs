//! What recovery logs, with palisade-logging's layer outside it: the finish record says
//! `Internal` and (for the trailers-only answer) `palisade.rejected_by=recovery`, and each
//! panic is one `ERROR` event. A test binary of its own: `tracing` caches each callsite's
//! interest process-wide, so tests on other threads without a subscriber would race this
//! one's thread-local subscriber.

use std::{
    convert::Infallible,
    io::{self, Write},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use palisade_demo::{
    SAY_HELLO, SAY_HELLO_STREAM,
    frames::{GrpcBody, message},
};
use palisade_logging::{LoggingLayer, writer::non_blocking};
use palisade_recovery::RecoveryLayer;
use tower::{Layer, ServiceExt, service_fn};
use tracing_subscriber::prelude::*;

fn request(path: &str) -> Request<GrpcBody> {
    Request::post(path)
        .header("content-type", "application/grpc")
        .body(GrpcBody::new([message(b"\x0a\x01x")], None))
        .unwrap()
}

/// A body that sends one message, then panics when polled again.
struct PanicsMidStream {
    sent: bool,
}

impl Body for PanicsMidStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            panic!("panicked mid-stream");
        }
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(message(b"first")))))
    }
}

/// A shared in-memory sink.
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Vec<u8>>>);

impl Write for Memory {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Memory {
    fn lines(&self) -> Vec<serde_json::Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn logging_outside_sees_internal_rejected_by_recovery_and_one_error_event() {
    let events = Memory::default();
    let writer = events.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone()),
    );
    let _guard = tracing::subscriber::set_default(subscriber);
    let sink = Memory::default();
    let (access_log, writer_guard) = non_blocking(sink.clone());
    let recovery = RecoveryLayer::server().build();
    let stack = |logging: LoggingLayer<palisade_core::side::Server>| {
        logging.layer(recovery.layer(service_fn(
            |request: Request<palisade_logging::RequestBody<GrpcBody>>| async move {
                match request.uri().path() {
                    SAY_HELLO => panic!("the handler has a bug"),
                    _ => Ok::<_, Infallible>(Response::new(PanicsMidStream { sent: false })),
                }
            },
        )))
    };
    for service in [
        stack(LoggingLayer::server().access_log(access_log).build()),
        stack(LoggingLayer::server().build()),
    ] {
        let response = service.clone().oneshot(request(SAY_HELLO)).await.unwrap();
        response.into_body().collect().await.unwrap();
        let response = service.oneshot(request(SAY_HELLO_STREAM)).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    drop(writer_guard);

    let events = events.lines();
    let finished: Vec<_> = events
        .iter()
        .filter(|event| event["target"] == "palisade_logging")
        .chain(&sink.lines())
        .cloned()
        .collect();
    assert_eq!(finished.len(), 4, "{finished:?}");
    for (index, record) in finished.iter().enumerate() {
        assert_eq!(record["grpc.code"], "Internal", "{record}");
        if index % 2 == 0 {
            // The trailers-only answer carries the mark.
            assert_eq!(record["palisade.rejected_by"], "recovery", "{record}");
        } else {
            // Mid-stream, the handler's head went out: INTERNAL in the trailers, no mark.
            assert!(record.get("palisade.rejected_by").is_none(), "{record}");
        }
    }
    let panics: Vec<_> = events
        .iter()
        .filter(|event| event["target"] == "palisade_recovery")
        .collect();
    // One ERROR event per panic: two panics per stack.
    assert_eq!(panics.len(), 4, "{panics:?}");
    for event in &panics {
        assert_eq!(event["level"], "ERROR", "{event}");
        assert_eq!(event["grpc.service"], "palisade.demo.v1.Greeter", "{event}");
        assert_eq!(event["grpc.code"], "Internal", "{event}");
    }
    assert_eq!(panics[0]["grpc.method"], "SayHello");
    assert_eq!(panics[0]["panic.message"], "the handler has a bug");
    assert_eq!(panics[0]["panic.stage"], "response_future");
    assert_eq!(panics[1]["grpc.method"], "SayHelloStream");
    assert_eq!(panics[1]["panic.message"], "panicked mid-stream");
    assert_eq!(panics[1]["panic.stage"], "response_body");
}
