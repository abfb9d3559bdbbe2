//! A `redis-server` of the test's own on a free loopback port: started, waited for (PING),
//! killed, stopped, restarted on the same port, and killed when dropped. Shared by the tests
//! and the bench (`#[path]`).
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// How long a server may take to answer PING after it starts.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A `redis-server` process on 127.0.0.1, without persistence, in a directory of its own.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Whether `redis-server` can be run.
pub fn available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

impl RedisServer {
    /// Starts a server on a free port.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not installed, or does not answer PING in time.
    pub fn start() -> Self {
        assert!(
            available(),
            "`redis-server` is not on the PATH: these tests need Debian's redis-server package. \
             scripts/test installs it (scripts/setup.d/redis.sh); or run `apt-get install -y redis-server`"
        );
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("palisade-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the server (again) on its port, and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let start = Instant::now();
        while !self.answers() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            assert!(
                start.elapsed() < READY_WITHIN,
                "redis-server on port {} did not answer PING within {READY_WITHIN:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server (SIGKILL) and waits for it to go.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = self.signal("-CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        assert!(self.signal("-STOP"), "SIGSTOP redis-server");
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn resume(&self) {
        assert!(self.signal("-CONT"), "SIGCONT redis-server");
    }

    fn signal(&self, signal: &str) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .is_ok_and(|status| status.success())
    }

    /// A command through a fresh connection, in RESP; its first reply line.
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).expect("write");
        read_reply(&mut stream)
    }

    /// The server's clock (TIME), in microseconds.
    pub fn time_micros(&self) -> u64 {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(b"TIME\r\n").expect("write");
        // *2 $10 seconds $6 micros
        let mut reply = Vec::new();
        let mut buf = [0u8; 256];
        while reply.iter().filter(|&&b| b == b'\n').count() < 5 {
            let n = stream.read(&mut buf).expect("read TIME");
            assert!(n > 0, "TIME: connection closed");
            reply.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8(reply).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        let seconds: u64 = lines[2].parse().unwrap();
        let micros: u64 = lines[4].parse().unwrap();
        seconds * 1_000_000 + micros
    }

    /// Starts watching the commands the server runs (`MONITOR`), from now on.
    pub fn monitor(&self) -> Monitor {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(b"MONITOR\r\n").expect("write");
        let mut reader = BufReader::new(stream);
        let mut ok = String::new();
        reader.read_line(&mut ok).expect("MONITOR");
        assert_eq!(ok, "+OK\r\n");
        let thread = std::thread::spawn(move || {
            let mut scripts: HashMap<String, Scripts> = HashMap::new();
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if line.contains(&format!("\"ECHO\" \"{MONITOR_END}\"")) {
                    break;
                }
                // +1732175000.123456 [0 127.0.0.1:54321] "EVALSHA" "sha" "1" "key" ...
                let mut parts = line.trim_start_matches('+').split(' ');
                let (Some(time), Some(_), Some(_)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let mut args = parts.map(|part| part.trim().trim_matches('"'));
                if args.next() != Some("EVALSHA") {
                    continue;
                }
                let (Some(_), Some(_), Some(key)) = (args.next(), args.next(), args.next()) else {
                    continue;
                };
                let Some((seconds, micros)) = time.split_once('.') else {
                    continue;
                };
                let at =
                    seconds.parse::<u64>().unwrap() * 1_000_000 + micros.parse::<u64>().unwrap();
                let entry = scripts.entry(key.to_owned()).or_insert(Scripts {
                    first: at,
                    last: at,
                    count: 0,
                    times: Vec::new(),
                });
                entry.last = at;
                entry.count += 1;
                entry.times.push(at);
            }
            scripts
        });
        Monitor { thread }
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

/// The first line of a reply, with the bulk string's value when it is one.
fn read_reply(stream: &mut TcpStream) -> String {
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "connection closed");
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply).into_owned();
        if let Some(rest) = text.strip_prefix('$') {
            // $len\r\nvalue\r\n, or $-1\r\n
            if let Some((len, value)) = rest.split_once("\r\n") {
                if len == "-1" {
                    return "(nil)".to_owned();
                }
                let len: usize = len.parse().unwrap();
                if value.len() >= len + 2 {
                    return value[..len].to_owned();
                }
            }
            continue;
        }
        if let Some((line, _)) = text.split_once("\r\n") {
            return line.to_owned();
        }
    }
}

const MONITOR_END: &str = "palisade-monitor-end";

/// The script calls (`EVALSHA`) on one key that a [`Monitor`] saw.
#[derive(Clone, Debug)]
pub struct Scripts {
    /// The server's time of the first and the last, in microseconds.
    pub first: u64,
    pub last: u64,
    pub count: u64,
    /// The server's time of each, in order.
    pub times: Vec<u64>,
}

impl Scripts {
    /// The time from the first to the last.
    pub fn window(&self) -> Duration {
        Duration::from_micros(self.last - self.first)
    }

    /// The tokens a bucket of `rate` a second, bursts of `burst`, full at the first call,
    /// gives these calls when each takes as many as it finds, up to `batch` (1: one each) —
    /// the most the calls can get, whatever gaps the load had (a bucket full through a pause
    /// of the callers gains nothing).
    pub fn tokens_for(&self, rate: u32, burst: u32, batch: u32) -> u64 {
        let mut tokens = f64::from(burst);
        let mut at = self.first;
        let mut granted = 0;
        for &time in &self.times {
            let elapsed = time.saturating_sub(at) as f64 / 1e6;
            at = time;
            tokens = (tokens + elapsed * f64::from(rate)).min(f64::from(burst));
            if tokens >= 1.0 {
                let take = tokens.floor().min(f64::from(batch));
                tokens -= take;
                granted += take as u64;
            }
        }
        granted
    }
}

/// A `MONITOR` connection, read by a thread of its own.
#[derive(Debug)]
pub struct Monitor {
    thread: JoinHandle<HashMap<String, Scripts>>,
}

impl Monitor {
    /// Stops watching (after every command the server ran so far) and returns the script calls
    /// it saw, by key.
    pub fn finish(self, server: &RedisServer) -> HashMap<String, Scripts> {
        let echo = server.command(&["ECHO", MONITOR_END]);
        assert_eq!(echo, MONITOR_END);
        self.thread.join().expect("the monitor thread")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on now (the OS's pick for port 0).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}
