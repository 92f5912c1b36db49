//! The Redis client a tier connects with: `redis://`, or `rediss://` with the `redis-tls`
//! feature — TLS through rustls, the server's certificate verified against the system's roots
//! or the private CA given to [`FleetBuilder::tls_root_certificates`](super::FleetBuilder::tls_root_certificates),
//! and not verified only when the URL says so (`rediss://host:port/#insecure`, for local tests).

#[cfg(feature = "redis-tls")]
use std::sync::Arc;

/// The trusted roots for a `rediss://` server: none set (the system's), or PEM certificates.
/// Zero-sized without the `redis-tls` feature.
#[derive(Clone, Default)]
pub(super) struct Roots {
    #[cfg(feature = "redis-tls")]
    pem: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[cfg(feature = "redis-tls")]
        if let Some(pem) = &self.pem {
            return write!(f, "Roots(PEM, {} bytes)", pem.len());
        }
        f.write_str("Roots(system)")
    }
}

impl Roots {
    /// `pem`'s certificates as the only trusted roots; an error if it holds none or one that
    /// does not parse (an empty store would refuse every server, silently).
    #[cfg(feature = "redis-tls")]
    pub(super) fn from_pem(pem: &[u8]) -> Result<Roots, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
            found += 1;
        }
        if found == 0 {
            return Err("no PEM certificate in it".to_owned());
        }
        Ok(Roots {
            pem: Some(pem.into()),
        })
    }
}

/// The client for `url`; an error in words if the URL can't be used.
pub(super) fn client(url: &str, roots: &Roots) -> Result<redis::Client, String> {
    let tls = url.starts_with("rediss://") || url.starts_with("valkeys://");
    if tls && !cfg!(feature = "redis-tls") {
        return Err(format!(
            "{}: TLS (`rediss://`) needs the `redis-tls` feature",
            url.split("://").next().unwrap_or(url)
        ));
    }
    #[cfg(feature = "redis-tls")]
    if tls {
        // redis-rs builds its rustls config with the process's default provider; rustls
        // can't pick one itself when more than one is compiled in (ring here, aws-lc-rs
        // with reqwest's default TLS) and would panic. The application's own choice stands.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        if let Some(pem) = &roots.pem {
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            };
            return redis::Client::build_with_tls(url, certificates)
                .map_err(|e| format!("not a Redis URL: {e}"));
        }
    }
    #[cfg(feature = "redis-tls")]
    if roots.pem.is_some() {
        return Err("tls_root_certificates is set, but the URL is not `rediss://`".to_owned());
    }
    let _ = roots;
    redis::Client::open(url).map_err(|e| format!("not a Redis URL: {e}"))
}
