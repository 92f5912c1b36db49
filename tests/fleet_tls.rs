//! The fleet over TLS (feature `redis-tls`): a real `redis-server` listening on TLS only, with
//! a throwaway CA and server certificate made here (rcgen). Two replicas share a 404 over
//! `rediss://` trusting the private CA; a replica that doesn't trust it never connects
//! (verification is on by default); `#insecure` connects without verifying (local tests).

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tower::{ServiceBuilder, ServiceExt};
use tower_negative_cache::NegativeCacheLayer;
use tower_negative_cache::cache::{NegativeCache, NegativeCacheHandle, NegativeCacheHit};
use tower_negative_cache::fleet::{Fleet, FleetBuilder, StartErrorKind};

use support::{Reply, TestServer};

/// A `redis-server` accepting TLS only (`--port 0`), on a free loopback port, with a server
/// certificate for 127.0.0.1 issued by a CA of its own. Stopped, and its files removed, when
/// dropped.
struct TlsRedis {
    port: u16,
    ca_pem: String,
    dir: PathBuf,
    child: Child,
}

impl TlsRedis {
    fn try_start(test: &str) -> Option<TlsRedis> {
        redis_support::available(test).then(TlsRedis::start)
    }

    fn start() -> TlsRedis {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "tower-negative-cache test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();

        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(format!("tnc-tls-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let ca_file = write("ca.pem", &ca.pem());
        let cert_file = write("server.pem", &server.pem());
        let key_file = write("server.key", &server_key.serialize_pem());
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--tls-cert-file", &cert_file, "--tls-key-file", &key_file])
            .args(["--tls-ca-cert-file", &ca_file, "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server (TLS) did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        TlsRedis {
            port,
            ca_pem: ca.pem(),
            dir,
            child,
        }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Stack = NegativeCache<Client<HttpConnector, Empty<Bytes>>>;

struct Replica {
    client: Stack,
    cache: NegativeCacheHandle,
    fleet: Fleet,
}

fn replica(url: &str, tier: impl FnOnce(FleetBuilder) -> FleetBuilder) -> Replica {
    let cache = NegativeCacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let builder = Fleet::builder(url)
        .prefix("fleet-tls")
        .reconnect(Duration::from_millis(20), Duration::from_millis(200))
        .timeout(Duration::from_secs(2));
    let fleet = tier(builder).start(&cache).unwrap();
    let client = ServiceBuilder::new()
        .layer(cache.clone())
        .service(support::client());
    Replica {
        client,
        cache: cache.handle(),
        fleet,
    }
}

impl Replica {
    async fn get(&self, url: &str) -> http::Response<impl http_body::Body> {
        let req = Request::get(url).body(Empty::new()).unwrap();
        self.client.clone().oneshot(req).await.unwrap()
    }
}

/// Polls `f` every millisecond until it holds. Panics after `limit` (generous: a condition,
/// not a timing).
async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn two_replicas_share_a_404_over_rediss_trusting_a_private_ca() {
    let Some(redis) = TlsRedis::try_start("two_replicas_share_a_404_over_rediss") else {
        return;
    };
    let origin = TestServer::always(Reply::status(404)).await;
    let trusting = |b: FleetBuilder| b.tls_root_certificates(&redis.ca_pem);
    let (a, b) = (
        replica(&redis.url(), trusting),
        replica(&redis.url(), trusting),
    );
    let limit = Duration::from_secs(10);
    wait_until(limit, || a.fleet.stats().connected).await;
    wait_until(limit, || b.fleet.stats().connected).await;

    let url = origin.url("/records/tls");
    assert_eq!(a.get(&url).await.status(), StatusCode::NOT_FOUND);
    let uri: Uri = url.parse().unwrap();
    wait_until(limit, || b.cache.peek(&uri).is_some()).await;
    let res = b.get(&url).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.extensions().get::<NegativeCacheHit>().is_some());
    assert_eq!(
        origin.hits("/records/tls"),
        1,
        "one upstream 404 for two replicas"
    );
    assert_eq!(b.fleet.stats().learned, 1);
}

#[tokio::test]
async fn the_servers_certificate_is_verified_unless_the_url_says_insecure() {
    let Some(redis) = TlsRedis::try_start("the_servers_certificate_is_verified") else {
        return;
    };
    let origin = TestServer::always(Reply::status(404)).await;
    let limit = Duration::from_secs(10);

    // The system's roots don't hold the test CA: the handshake fails, nothing is shared.
    let untrusting = replica(&redis.url(), |b| b);
    assert_eq!(
        untrusting.get(&origin.url("/a")).await.status(),
        StatusCode::NOT_FOUND
    );
    wait_until(limit, || untrusting.fleet.stats().publish_failures >= 1).await;
    let s = untrusting.fleet.stats();
    assert!(!s.connected && s.published == 0, "{s:?}");

    // `#insecure` connects without verifying, and shares.
    let insecure = format!("{}/#insecure", redis.url());
    let (a, b) = (replica(&insecure, |b| b), replica(&insecure, |b| b));
    wait_until(limit, || a.fleet.stats().connected).await;
    wait_until(limit, || b.fleet.stats().connected).await;
    let url = origin.url("/b");
    assert_eq!(a.get(&url).await.status(), StatusCode::NOT_FOUND);
    let uri: Uri = url.parse().unwrap();
    wait_until(limit, || b.cache.peek(&uri).is_some()).await;
    assert!(!untrusting.fleet.stats().connected);
}

#[tokio::test]
async fn bad_tls_settings_are_refused_at_start() {
    let cache = NegativeCacheLayer::new();
    let err = Fleet::builder("rediss://127.0.0.1:1")
        .tls_root_certificates("not a certificate")
        .start(&cache)
        .unwrap_err();
    assert_eq!(err.kind(), StartErrorKind::Setting);
    assert_eq!(err.invalid_setting(), Some("tls_root_certificates"));

    // Roots for a URL without TLS would be silently unused.
    let pem = CertifiedIssuer::self_signed(
        CertificateParams::new(vec!["x".to_owned()]).unwrap(),
        KeyPair::generate().unwrap(),
    )
    .unwrap()
    .pem();
    let err = Fleet::builder("redis://127.0.0.1:1")
        .tls_root_certificates(pem)
        .start(&cache)
        .unwrap_err();
    assert_eq!(err.kind(), StartErrorKind::Url, "{err}");
}
