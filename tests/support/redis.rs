//! A `redis-server` of the test's own, on a free loopback port, stopped when dropped.
//!
//! The binary comes from `PATH`. Without it, each test that needs one prints a line saying it
//! was skipped and how to install it, and passes — unless `CI` is set: there a missing
//! `redis-server` fails the run (`.ci/run` installs it), so CI never passes without them.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// The default user's password (`--requirepass`), if any.
    password: Option<String>,
}

/// Whether `redis-server` can be run. Without it: a failure under `CI`, else a line saying the
/// calling test is skipped (once per test, since each test calls this once).
pub fn available(test: &str) -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let found = *FOUND.get_or_init(|| {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "`redis-server` is not on PATH and CI is set: the fleet tests must run here \
             (`.ci/run` installs it with `apt-get install redis-server`)"
        );
        // Straight to stderr: the test harness captures `println!` of a passing test.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped {test}: `redis-server` is not on PATH (install it with \
             `apt-get install redis-server` or `brew install redis` to run the fleet tests)"
        );
    }
    found
}

impl RedisServer {
    /// A connection to the server as its admin, with no response timeout (a test may keep
    /// Redis busy on purpose).
    pub async fn admin(&self) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        redis::Client::open(self.admin_url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap()
    }

    /// Runs `args` (a command and its arguments) as the admin.
    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query_async(&mut self.admin().await).await.unwrap()
    }

    /// A throwaway server, or `None` (the test is skipped: see [`available`]).
    pub fn try_start(test: &str) -> Option<RedisServer> {
        available(test).then(RedisServer::start)
    }

    /// A throwaway server with a password, or `None` (see [`available`]).
    pub fn try_start_with_password(test: &str, password: &str) -> Option<RedisServer> {
        available(test).then(|| RedisServer::start_with_password(password))
    }

    /// Starts a throwaway server (no persistence) on a free port.
    pub fn start() -> RedisServer {
        Self::start_as(None)
    }

    /// Starts a throwaway server whose default user needs `password` (`--requirepass`).
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::start_as(Some(password.to_owned()))
    }

    fn start_as(password: Option<String>) -> RedisServer {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            l.local_addr().unwrap().port()
        };
        let mut server = RedisServer {
            port,
            child: None,
            password,
        };
        server.restart();
        server
    }

    /// The URL with a user and password (`redis://user:password@…`); an empty user is the
    /// default one.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// The URL the tests' own admin connections use (with the password, if any).
    pub fn admin_url(&self) -> String {
        match &self.password {
            Some(p) => self.url_as("", p),
            None => self.url(),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (the port stays reserved for a restart).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"]);
        if let Some(p) = &self.password {
            command.args(["--requirepass", p]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not run `redis-server` ({e}): the fleet tests need it on PATH; \
                     install it with `apt-get install redis-server` (Debian/Ubuntu) or \
                     `brew install redis` (macOS)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP proxy in front of a Redis that can hold back what clients send (not what the server
/// answers): a replica behind it sees a slow Redis while the others do not.
pub struct StallProxy {
    pub port: u16,
    held: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl StallProxy {
    pub async fn start(redis_port: u16) -> StallProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = std::sync::Arc::new(tokio::sync::watch::channel(false).0);
        let shared = held.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let mut rx = shared.subscribe();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if rx.wait_for(|held| !held).await.is_err() {
                            return;
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
            }
        });
        StallProxy { port, held, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Holds back (true) or lets through (false) what clients send.
    pub fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
