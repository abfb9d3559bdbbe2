//! The configuration document: every refusal with its message (line, key, what is accepted, a
//! suggestion, never a secret), the annotated example loads, and a stack built from a document
//! acts over a real tonic connection.

use std::path::Path;

use palisade::config::{Config, ConfigError, SecretSource};
use palisade::core::MethodRegistry;
use palisade_demo::pb::HelloRequest;

fn refused(text: &str) -> ConfigError {
    match Config::from_toml(text, "test.toml") {
        Ok(config) => panic!("accepted: {config:?}\n{text}"),
        Err(error) => error,
    }
}

/// The error's text, checked for its place and key.
#[track_caller]
fn refused_at(text: &str, line: usize, key: &str, says: &str) -> ConfigError {
    let error = refused(text);
    let shown = error.to_string();
    assert_eq!(error.line(), Some(line), "{shown}");
    assert_eq!(error.key(), Some(key), "{shown}");
    let prefix = format!("test.toml:{line}:");
    assert!(shown.starts_with(&prefix), "{shown}");
    assert!(shown.contains(&format!("key `{key}`: ")), "{shown}");
    assert!(shown.contains(says), "{shown:?} should say {says:?}");
    error
}

#[test]
fn bad_toml_is_refused_with_its_line() {
    let error = refused("[server]\nrate = 5\nburst = = 2\n");
    assert_eq!(error.line(), Some(3), "{error}");
    assert!(error.to_string().starts_with("test.toml:3:"), "{error}");
    assert!(error.message().starts_with("not valid TOML"), "{error}");
}

#[test]
fn a_wrong_type_names_its_key() {
    refused_at(
        "[server]\nrate = \"five\"\n",
        2,
        "server.rate",
        "invalid type",
    );
    refused_at(
        "[client]\nretries = 2\nretry_on = \"UNAVAILABLE\"\n",
        3,
        "client.retry_on",
        "invalid type",
    );
}

#[test]
fn negative_and_zero_rates_are_refused() {
    refused_at("[server]\nrate = -5\n", 2, "server.rate", "a whole number");
    let error = refused_at("[server]\nrate = 0\n", 2, "server.rate", "0 is meaningless");
    assert_eq!(error.accepted(), Some("omit `rate` for no rate limit"));
    refused_at(
        "[server]\nrate = 5\n[[server.method]]\nmethod = \"a.B/C\"\nrate = 0\n",
        5,
        "server.method[0].rate",
        "0 is meaningless",
    );
    refused_at(
        "[server]\nmax_concurrent = 0\n",
        2,
        "server.max_concurrent",
        "0 is meaningless",
    );
}

#[test]
fn burst_without_rate_is_refused() {
    let error = refused_at(
        "[server]\nburst = 5\n",
        2,
        "server.burst",
        "`burst` without `rate`",
    );
    assert_eq!(error.accepted(), Some("`rate = N` beside it"));
    refused_at(
        "[server]\n\n[[server.method]]\nservice = \"a.B\"\nburst = 3\n",
        5,
        "server.method[0].burst",
        "`burst` without `rate`",
    );
}

#[test]
fn a_method_entry_needs_exactly_one_matcher() {
    let error = refused_at(
        "[server]\n[[server.method]]\nrate = 3\n",
        2,
        "server.method[0]",
        "selects no call",
    );
    assert!(
        error.accepted().unwrap().contains("exactly one of method"),
        "{error}"
    );
    refused_at(
        "[server]\n[[server.method]]\nservice = \"a.B\"\nrate = 3\n\n[[server.method]]\nmethod = \"a.B/C\"\nprefix = \"a.\"\nrate = 1\n",
        8,
        "server.method[1].prefix",
        "two matchers: `method` and `prefix`",
    );
    refused_at(
        "[server]\n[[server.method]]\nmethod = \"a.B\"\nrate = 3\n",
        3,
        "server.method[0].method",
        "not a method name",
    );
    refused_at(
        "[client]\n[[client.method]]\nservice = \"a.B\"\n",
        2,
        "client.method[0]",
        "sets no policy",
    );
}

#[test]
fn unknown_keys_and_tables_are_refused_with_a_suggestion() {
    let error = refused_at(
        "[server]\nrate = 5\nmax_concurent = 4\n",
        3,
        "server.max_concurent",
        "unknown key",
    );
    assert_eq!(error.suggestion(), Some("max_concurrent"));
    assert!(
        error
            .to_string()
            .ends_with("did you mean `max_concurrent`?"),
        "{error}"
    );
    assert!(
        error.accepted().unwrap().contains("max_concurrent"),
        "{error}"
    );

    let error = refused_at("[serevr]\nrate = 5\n", 1, "serevr", "unknown table");
    assert_eq!(error.suggestion(), Some("server"));
    assert_eq!(error.accepted(), Some("server, client"));

    let error = refused_at(
        "[server]\n[[server.method]]\nmethod = \"a.B/C\"\nrat = 2\n",
        4,
        "server.method[0].rat",
        "unknown key",
    );
    assert_eq!(error.suggestion(), Some("rate"));

    // A layer that does not exist is an unknown table too.
    let error = refused_at(
        "[server.breaker]\nfailures = 3\n",
        1,
        "server.breaker",
        "unknown table",
    );
    assert_eq!(error.suggestion(), None, "{error}");
}

#[test]
fn unknown_code_names_are_refused_and_go_names_and_numbers_accepted() {
    let error = refused_at(
        "[client]\nretries = 3\nretry_on = [\"UNAVAILABLE\", \"UNAVALABLE\"]\n",
        3,
        "client.retry_on[1]",
        "unknown code \"UNAVALABLE\"",
    );
    assert!(
        error.to_string().contains("UNAVAILABLE, DATA_LOSS"),
        "{error}"
    );
    assert!(
        error.to_string().ends_with("did you mean `UNAVAILABLE`?"),
        "{error}"
    );
    refused_at(
        "[client]\nretries = 3\nretry_on = [99]\n",
        3,
        "client.retry_on[0]",
        "unknown code 99",
    );
    refused_at(
        "[client]\nretries = 3\nretry_on = [\"OK\"]\n",
        3,
        "client.retry_on",
        "OK is a success",
    );
    let config = Config::from_toml(
        "[client]\nretries = 3\nretry_on = [\"UNAVAILABLE\", \"ResourceExhausted\", 4, \"cancelled\"]\n",
        "test.toml",
    )
    .unwrap();
    let codes: Vec<_> = config
        .client
        .unwrap()
        .retry_on
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect();
    use palisade::core::Code;
    assert_eq!(
        codes,
        [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
            Code::Cancelled
        ]
    );
}

#[test]
fn retries_outside_one_to_five_and_a_lone_hedge_are_refused() {
    refused_at(
        "[client]\nretries = 0\n",
        2,
        "client.retries",
        "1 at least, 5 at most",
    );
    let error = refused_at("[client]\nretries = 6\n", 2, "client.retries", "5 at most");
    assert_eq!(
        error.accepted(),
        Some("1 (no retry) to 5, the first attempt included")
    );
    refused_at(
        "[client]\nhedge_delay = 50\n",
        2,
        "client.hedge_delay",
        "nothing to hedge",
    );
    refused_at(
        "[client]\nretries = 3\n[[client.method]]\nmethod = \"a.B/C\"\nhedge_delay = 50\n",
        5,
        "client.method[0].hedge_delay",
        "nothing to hedge",
    );
    refused_at(
        "[client]\n[[client.method]]\nmethod = \"a.B/C\"\nretries = 9\n",
        4,
        "client.method[0].retries",
        "5 at most",
    );
}

#[test]
fn what_a_layer_cannot_do_per_method_is_refused() {
    let error = refused_at(
        "[server]\n[[server.method]]\nmethod = \"a.B/C\"\nmax_deadline = 100\n",
        4,
        "server.method[0].max_deadline",
        "one max and one default for every method",
    );
    assert!(
        error
            .accepted()
            .unwrap()
            .contains("[[client.method]] deadline"),
        "{error}"
    );
    refused_at(
        "[server]\n[[server.method]]\nmethod = \"a.B/C\"\nlog = 10\n",
        4,
        "server.method[0].log",
        "one rate for every method",
    );
    refused_at(
        "[server]\n[[server.method]]\nmethod = \"a.B/C\"\nlog = \"loud\"\n",
        4,
        "server.method[0].log",
        "unknown value \"loud\"",
    );
    refused_at(
        "[client]\n[[client.method]]\nmethod = \"a.B/C\"\nfailures = 2\n",
        4,
        "client.method[0].failures",
        "one threshold for every method",
    );
    refused_at(
        "[server]\n[[server.method]]\nmethod = \"a.B/C\"\nscopes = [\"x\"]\n",
        4,
        "server.method[0].scopes",
        "no key to verify tokens with",
    );
    refused_at(
        "[server]\nadaptive_concurrency = true\n[[server.method]]\nmethod = \"a.B/C\"\nmax_concurrent = 2\n",
        2,
        "server.adaptive_concurrency",
        "one for the whole server",
    );
    refused_at(
        "[server]\nmax_deadline = 100\ndefault_deadline = 200\n",
        3,
        "server.default_deadline",
        "over `max_deadline`",
    );
    refused_at(
        "[server]\nbare = true\nrate = 5\n",
        3,
        "server.rate",
        "`bare = true`",
    );
    refused_at(
        "[server]\nrate = 5\nrate_key = \"ip\"\n",
        3,
        "server.rate_key",
        "unknown key \"ip\"",
    );
}

#[test]
fn secrets_are_referenced_and_never_shown() {
    // An inline secret is refused, and not repeated in the error.
    let error = refused_at(
        "[server]\njwt_secret = \"hunter2-inline\"\n",
        2,
        "server.jwt_secret",
        "an inline secret is refused",
    );
    assert!(!error.to_string().contains("hunter2"), "{error}");
    let error = refused_at(
        "[server]\njwt_secret = { env = \"PALISADE_TEST_SURELY_UNSET\" }\n",
        2,
        "server.jwt_secret",
        "the environment variable `PALISADE_TEST_SURELY_UNSET` is not set",
    );
    assert_eq!(error.accepted(), None);
    refused_at(
        "[client]\njwt_secret = { file = \"/nonexistent/palisade/secret\" }\n",
        2,
        "client.jwt_secret",
        "the secret file `/nonexistent/palisade/secret` cannot be read",
    );
    refused_at(
        "[server]\njwt_secret = { env = \"A\", file = \"/b\" }\n",
        2,
        "server.jwt_secret",
        "exactly one source",
    );
    // Cargo sets CARGO_PKG_NAME for the tests it runs: a variable that is set.
    let config = Config::from_toml(
        "[server]\njwt_secret = { env = \"CARGO_PKG_NAME\" }\n",
        "test.toml",
    )
    .unwrap();
    let secret = config.server.as_ref().unwrap().jwt_secret.as_ref().unwrap();
    assert_eq!(secret.source(), &SecretSource::Env("CARGO_PKG_NAME".into()));
    assert_eq!(secret.expose(), "palisade");
    assert!(!format!("{config:?}").contains("palisade\""), "{config:?}");

    // A file's trailing newline is not part of the secret.
    let dir = std::env::temp_dir().join(format!("palisade-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let text = format!(
        "[client]\njwt_secret = {{ file = {:?} }}\n",
        file.display().to_string()
    );
    let config = Config::from_toml(&text, "test.toml").unwrap();
    assert_eq!(
        config.client.unwrap().jwt_secret.unwrap().expose(),
        "from-a-file"
    );
    // A later error elsewhere in the same document does not show it either.
    let text = format!("{text}rate = 0\n");
    let error = refused(&text);
    assert!(!error.to_string().contains("from-a-file"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_file_is_named() {
    let error = Config::load(Path::new("/nonexistent/palisade.toml")).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/palisade.toml: cannot be read"),
        "{error}"
    );
}

fn example() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/palisade.toml");
    Config::load(&path).unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn the_annotated_example_loads_and_builds() {
    let config = example();
    let server = config
        .server
        .as_ref()
        .expect("the example has a [server] table");
    let client = config
        .client
        .as_ref()
        .expect("the example has a [client] table");
    assert!(!server.method.is_empty() && !client.method.is_empty());
    assert_eq!(
        config,
        example(),
        "loading is deterministic: Config compares equal"
    );
    let registry =
        MethodRegistry::from_encoded_file_descriptor_set(palisade_demo::FILE_DESCRIPTOR_SET)
            .unwrap();
    server.layers(registry.clone()).unwrap();
    client.layers(registry).unwrap();
}

#[test]
fn configs_compare_by_value() {
    let one = Config::from_toml("[server]\nrate = 5\nburst = 5\n", "a.toml").unwrap();
    let same = Config::from_toml("[server]\nburst = 5\n# a comment\nrate = 5\n", "b.toml").unwrap();
    let other = Config::from_toml("[server]\nrate = 1000\nburst = 5\n", "a.toml").unwrap();
    assert_eq!(one, same);
    assert_ne!(one, other);
}

fn hello() -> HelloRequest {
    HelloRequest {
        name: "config".into(),
        ..Default::default()
    }
}

fn registry() -> MethodRegistry {
    MethodRegistry::from_encoded_file_descriptor_set(palisade_demo::FILE_DESCRIPTOR_SET).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_method_rate_applies_to_its_method_only() {
    let config = Config::from_toml(
        r#"
        [server]
        [[server.method]]
        method = "palisade.demo.v1.Greeter/SayHelloStream"
        rate = 1
        burst = 1
        "#,
        "test.toml",
    )
    .unwrap();
    let stack = config.server.unwrap().layers(registry()).unwrap();
    let server = palisade_demo::spawn(stack).await;
    let mut client = server.client().await;
    for call in 0..20 {
        client
            .say_hello(hello())
            .await
            .unwrap_or_else(|status| panic!("SayHello {call} is not limited: {status:?}"));
    }
    let first = client.say_hello_stream(hello()).await;
    assert!(first.is_ok(), "the stream's one token: {first:?}");
    let second = client.say_hello_stream(hello()).await.unwrap_err();
    assert_eq!(second.code(), tonic::Code::ResourceExhausted, "{second:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_method_scope_and_a_public_method() {
    let config = Config::from_toml(
        r#"
        [server]
        jwt_secret = { env = "CARGO_PKG_NAME" }

        [[server.method]]
        method = "palisade.demo.v1.Greeter/SayHello"
        auth = "public"

        [[server.method]]
        service = "palisade.demo.v1.Greeter"
        scopes = ["greeter.stream"]
        "#,
        "test.toml",
    )
    .unwrap();
    let stack = config.server.unwrap().layers(registry()).unwrap();
    let server = palisade_demo::spawn(stack).await;
    let mut client = server.client().await;
    client.say_hello(hello()).await.expect("SayHello is public");
    let refused = client.say_hello_stream(hello()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    server.shutdown().await;
}

/// A limit the document leaves off is a layer that passes and registers no series: /metrics
/// shows no `palisade_concurrency_limit` of 1 for a server without one.
#[test]
fn a_layer_left_off_registers_no_series() {
    use metrics_util::debugging::DebuggingRecorder;
    let series = |text: &str| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let server = Config::from_toml(text, "test.toml")
            .unwrap()
            .server
            .unwrap();
        metrics::with_local_recorder(&recorder, || {
            server.in_flight_limit().build().unwrap();
            server.rate_limit().build().unwrap();
        });
        let mut names: Vec<String> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, ..)| key.key().name().to_owned())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    assert_eq!(series("[server]\n"), Vec::<String>::new());
    let on = series("[server]\nmax_concurrent = 4\nrate = 5\n");
    assert!(
        on.iter()
            .any(|name| name == palisade::limit::CONCURRENCY_LIMIT),
        "{on:?}"
    );
}
