//! TLS to Postgres and Redis (rustls, with the aws-lc-rs provider the S3 client uses too).
//!
//! - **Postgres**: a database URL with `sslmode=require` connects over TLS only, with the
//!   server's certificate verified against the system's roots plus the PEM bundle in
//!   `FILESTORE_PG_CA_FILE`, and its name checked against the host (what libpq calls
//!   `verify-full`). Any other `sslmode` (or none) connects without TLS, as before.
//! - **Redis**: a `rediss://` URL connects over TLS, verified against the system's roots, or only
//!   against the PEM bundle in `FILESTORE_REDIS_CA_FILE` when that is set.
//!
//! The CA files are read from the environment (like libpq's `PGSSLROOTCERT`), each time a pool or
//! client is built.

use std::sync::Arc;

use filestore_s3_actors::Error;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// PEM bundle of CA certificates trusted for Postgres, besides the system's.
pub const PG_CA_ENV: &str = "FILESTORE_PG_CA_FILE";
/// PEM bundle of CA certificates trusted for Redis (instead of the system's).
pub const REDIS_CA_ENV: &str = "FILESTORE_REDIS_CA_FILE";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn ca_file(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

fn read_pem_certs(var: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Config(format!("{var}: cannot read certificates from {path}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{var}: {path} holds no PEM certificate"
        )));
    }
    Ok(certs)
}

/// The connector of a Postgres connection with `cfg` (TLS only under `sslmode=require`; see
/// [`crate::pg`]). The trusted roots are read only when TLS will be used: a plaintext connection
/// never calls the connector, so its root store stays empty.
pub fn pg_connector(
    cfg: &tokio_postgres::Config,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, Error> {
    let mut roots = rustls::RootCertStore::empty();
    let tls = cfg.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
    if tls {
        for cert in rustls_native_certs::load_native_certs().certs {
            // A system certificate rustls cannot use is skipped, as the platform verifier would.
            let _ = roots.add(cert);
        }
    }
    if let Some(path) = ca_file(PG_CA_ENV).filter(|_| tls) {
        for cert in read_pem_certs(PG_CA_ENV, &path)? {
            roots
                .add(cert)
                .map_err(|e| Error::Config(format!("{PG_CA_ENV}: {path}: {e}")))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS for Postgres: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A Redis client for `url` (`redis://` or `rediss://`). The error never shows the URL's
/// password.
pub fn redis_client(url: &str) -> Result<redis::Client, Error> {
    let invalid = |e: redis::RedisError| {
        Error::Config(format!(
            "Redis URL '{}' is invalid: {e}",
            crate::redact::redact(url)
        ))
    };
    // redis-rs builds its rustls configuration with the process-wide provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match ca_file(REDIS_CA_ENV) {
        Some(path) if url.starts_with("rediss://") => {
            let pem = std::fs::read(&path)
                .map_err(|e| Error::Config(format!("{REDIS_CA_ENV}: {path}: {e}")))?;
            read_pem_certs(REDIS_CA_ENV, &path)?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(invalid)
        }
        _ => redis::Client::open(url).map_err(invalid),
    }
}

/// PEM bundle of CA certificates trusted for the operations API of `serve` (`https://`), besides
/// the system's: what the CLI and forwarding hosts verify `serve`'s certificate against.
pub const SERVE_CA_ENV: &str = "FILESTORE_SERVE_CA_FILE";

/// The TLS configuration of `serve`'s HTTP endpoints: the certificate chain and the private key
/// in the PEM files `cert` and `key` (`FILESTORE_SERVE_TLS_CERT`, `FILESTORE_SERVE_TLS_KEY`).
pub fn serve_tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    use rustls::pki_types::PrivateKeyDer;
    let chain = read_pem_certs("FILESTORE_SERVE_TLS_CERT", &cert.display().to_string())?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        Error::Config(format!(
            "FILESTORE_SERVE_TLS_KEY: cannot read a private key from {}: {e}",
            key.display()
        ))
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS for serve: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Config(format!("TLS for serve: the certificate and key: {e}")))?;
    Ok(Arc::new(config))
}

/// The TLS configuration of a client of the operations API: the system's roots plus the PEM
/// bundle `ca_file` (else the one in `FILESTORE_SERVE_CA_FILE`), names checked.
pub fn serve_client_config(
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let extra = ca_file
        .map(|p| p.display().to_string())
        .or_else(|| ca_file_env(SERVE_CA_ENV));
    if let Some(path) = extra {
        for cert in read_pem_certs(SERVE_CA_ENV, &path)? {
            roots
                .add(cert)
                .map_err(|e| Error::Config(format!("{SERVE_CA_ENV}: {path}: {e}")))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS to serve: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn ca_file_env(var: &str) -> Option<String> {
    ca_file(var)
}
