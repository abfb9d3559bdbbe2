//! The non-blocking writer and the access log written through it, over a real tonic server:
//! counts and completeness, never timings. One global `metrics` recorder for this binary, so
//! the tests that read `palisade_log_dropped_total` take turns.

use std::{
    collections::BTreeSet,
    io::{self, Write},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use palisade_core::Matcher;
use palisade_demo::{pb::HelloRequest, spawn};
use palisade_logging::{
    LoggingLayer,
    writer::{DROPPED_TOTAL, NonBlocking, Overflow, non_blocking},
};
use serde_json::Value;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::prelude::*;

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        snapshotter
    })
}

/// The tests that read the global counter run one at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

fn dropped_metric(reason: &str) -> u64 {
    snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            key.key().name() == DROPPED_TOTAL
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == "reason" && l.value() == reason)
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            other => panic!("{other:?}"),
        })
        .sum()
}

/// The subscriber's filter decides what the access log writes: INFO here.
fn info() -> tracing::subscriber::DefaultGuard {
    tracing::subscriber::set_default(tracing_subscriber::registry().with(LevelFilter::INFO))
}

fn hello() -> HelloRequest {
    HelloRequest {
        name: "Ada".into(),
        ..Default::default()
    }
}

fn server_layer(
    writer: palisade_logging::writer::LogWriter,
) -> LoggingLayer<palisade_core::side::Server> {
    LoggingLayer::server()
        .skip(Matcher::health_and_reflection())
        .registry(
            palisade_core::MethodRegistry::from_encoded_file_descriptor_set(
                palisade_demo::FILE_DESCRIPTOR_SET,
            )
            .unwrap(),
        )
        .access_log(writer)
        .build()
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

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[tokio::test]
async fn a_file_holds_one_line_per_answered_rpc() {
    let _subscriber = info();
    let file = tempfile::NamedTempFile::new().unwrap();
    let (writer, guard) = non_blocking(file.reopen().unwrap());
    let server = spawn(server_layer(writer.clone())).await;
    let mut client = server.client().await;
    const CALLS: usize = 300;
    for _ in 0..CALLS {
        client.say_hello(hello()).await.unwrap();
    }
    drop(client);
    server.shutdown().await;
    drop(guard);

    let text = std::fs::read_to_string(file.path()).unwrap();
    let lines = lines(&text);
    assert_eq!(lines.len(), CALLS);
    assert_eq!(writer.dropped(), 0);
    let keys: BTreeSet<&str> = lines[0].as_object().unwrap().keys().map(|k| &**k).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "grpc.code",
            "grpc.component",
            "grpc.method",
            "grpc.method_type",
            "grpc.request.messages",
            "grpc.response.messages",
            "grpc.service",
            "grpc.time_ms",
            "level",
            "message",
            "peer.address",
            "target",
            "timestamp",
        ])
    );
    for line in &lines {
        assert_eq!(line["message"], "finished call");
        assert_eq!(line["grpc.code"], "OK");
        assert_eq!(line["grpc.service"], "palisade.demo.v1.Greeter");
        assert_eq!(line["grpc.request.messages"], 1);
        assert!(line["grpc.time_ms"].as_f64().unwrap() >= 0.0);
    }
}

#[tokio::test]
async fn lines_are_filtered_by_the_subscriber_before_they_are_formatted() {
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(LevelFilter::WARN));
    let sink = Memory::default();
    let (writer, guard) = non_blocking(sink.clone());
    let server = spawn(server_layer(writer)).await;
    let mut client = server.client().await;
    client.say_hello(hello()).await.unwrap();
    let failing = HelloRequest {
        name: "x".into(),
        fail_code: tonic::Code::Unavailable as i32,
        ..Default::default()
    };
    client.say_hello(failing).await.unwrap_err();
    drop(client);
    server.shutdown().await;
    drop(guard);
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let lines = lines(&text);
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["grpc.code"], "Unavailable");
    assert_eq!(lines[0]["level"], "WARN");
}

/// A sink that holds its first write until the test lets it go.
struct Gated {
    gate: Option<mpsc::Receiver<()>>,
    out: Memory,
}

impl Write for Gated {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(gate) = self.gate.take() {
            let _ = gate.recv();
        }
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn in_drop_mode_every_lost_line_is_counted() {
    let _serial = serial().await;
    let _subscriber = info();
    let before = dropped_metric("buffer_full");
    let (open, gate) = mpsc::channel();
    let out = Memory::default();
    let (writer, guard) = NonBlocking::builder().buffered_lines(4).finish(Gated {
        gate: Some(gate),
        out: out.clone(),
    });
    let server = spawn(server_layer(writer.clone())).await;
    let mut client = server.client().await;
    const CALLS: u64 = 200;
    for _ in 0..CALLS {
        // Every RPC answers, however full the buffer.
        client.say_hello(hello()).await.unwrap();
    }
    open.send(()).unwrap();
    drop(client);
    server.shutdown().await;
    drop(guard);

    let written = lines(&String::from_utf8(out.0.lock().unwrap().clone()).unwrap()).len() as u64;
    let dropped = dropped_metric("buffer_full") - before;
    // The writer holds at most one batch and the buffer four lines: the flood overfilled it.
    assert!(dropped >= CALLS - 8, "dropped {dropped}");
    assert_eq!(written + dropped, CALLS);
    assert_eq!(writer.dropped(), dropped);
}

#[tokio::test]
async fn in_block_mode_nothing_is_lost() {
    let _subscriber = info();
    let (open, gate) = mpsc::channel();
    let out = Memory::default();
    let (writer, guard) = NonBlocking::builder()
        .buffered_lines(2)
        .overflow(Overflow::Block)
        .finish(Gated {
            gate: Some(gate),
            out: out.clone(),
        });
    // Threads of their own: a blocked line blocks its caller.
    let callers: Vec<_> = (0..4)
        .map(|i| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for j in 0..50 {
                    writer.write_line(format!("{{\"caller\":{i},\"line\":{j}}}\n").as_bytes());
                }
            })
        })
        .collect();
    open.send(()).unwrap();
    for caller in callers {
        caller.join().unwrap();
    }
    drop(guard);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert_eq!(lines(&text).len(), 200);
    assert_eq!(writer.dropped(), 0);
}

/// A sink that always fails, as stdout does once its reader is gone.
struct Broken(io::ErrorKind);

impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from(self.0))
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::from(self.0))
    }
}

async fn bad_sink_case<W: Write + Send + 'static>(sink: W) {
    let before = dropped_metric("write_error");
    let reports = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&reports);
    let (writer, guard) = NonBlocking::builder()
        .on_error(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        })
        .finish(sink);
    let server = spawn(server_layer(writer.clone())).await;
    let mut client = server.client().await;
    const CALLS: u64 = 100;
    for _ in 0..CALLS {
        client.say_hello(hello()).await.unwrap();
    }
    drop(client);
    server.shutdown().await;
    drop(guard);
    assert_eq!(writer.dropped(), CALLS, "every line is lost, and counted");
    assert_eq!(dropped_metric("write_error") - before, CALLS);
    assert_eq!(
        reports.load(Ordering::Relaxed),
        1,
        "one report, not one per call"
    );
}

#[tokio::test]
async fn a_failing_sink_loses_counted_lines_and_reports_once() {
    let _serial = serial().await;
    let _subscriber = info();
    bad_sink_case(Broken(io::ErrorKind::BrokenPipe)).await;
    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        bad_sink_case(full).await;
    }
}

#[test]
fn lines_after_the_guard_are_counted_and_the_app_s_logs_share_the_buffer() {
    let sink = Memory::default();
    let (writer, guard) = non_blocking(sink.clone());
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(answer = 42, "the application's own line");
    });
    drop(guard);
    writer.write_line(b"late\n");
    assert_eq!(writer.dropped(), 1);
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let lines = lines(&text);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["fields"]["answer"], 42);
}
