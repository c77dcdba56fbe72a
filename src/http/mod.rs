//! The reference host's HTTP endpoints: `GET /healthz` (JSON from `S3Executor::health`, 200 when
//! healthy, 503 otherwise), `GET /metrics` (Prometheus text from the `metrics` facade through
//! `metrics-exporter-prometheus`, plus per-mount gauges refreshed at each scrape), and the
//! operations API under `/v1/` ([`ops`], behind a bearer token).

pub mod ops;

use std::convert::Infallible;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::S3Executor;

use crate::api::client::Body;

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("static response parts are valid")
}

async fn handle(
    exec: S3Executor,
    prometheus: PrometheusHandle,
    token: Option<Arc<str>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.uri().path().starts_with("/v1/") {
        return Ok(ops::handle(exec, token.as_deref(), req).await);
    }
    if req.method() != hyper::Method::GET {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/healthz" => {
            let h = exec.health().await;
            let status = if h.healthy() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::to_string_pretty(&h).unwrap_or_else(|e| e.to_string());
            reply(status, "application/json", body + "\n")
        }
        "/metrics" => {
            // A scrape reads Postgres and the supervisors, but sends nothing to the stores.
            let h = exec.health_with(false).await;
            for (mount, m) in &h.mounts {
                metrics::gauge!("filestore_s3_outbox_backlog", "mount" => mount.clone())
                    .set(m.outbox_backlog as f64);
                metrics::gauge!("filestore_s3_journal_pending", "mount" => mount.clone())
                    .set(m.journal_pending as f64);
                metrics::gauge!("filestore_s3_journal_oldest_pending_seconds", "mount" => mount.clone())
                    .set(m.oldest_pending_seconds);
                metrics::gauge!("filestore_s3_operations_running", "mount" => mount.clone())
                    .set(m.operations as f64);
                let owned = m.lease.as_deref() == Some("owned");
                metrics::gauge!("filestore_s3_mount_owned", "mount" => mount.clone())
                    .set(if owned { 1.0 } else { 0.0 });
            }
            metrics::gauge!("filestore_s3_postgres_up").set(if h.postgres.ok { 1.0 } else { 0.0 });
            metrics::gauge!("filestore_s3_redis_up").set(if h.redis.ok { 1.0 } else { 0.0 });
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                prometheus.render(),
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /healthz, /metrics or the operations API under /v1/ (docs/serve.md)\n".into(),
        ),
    })
}

/// Connections served at once.
const MAX_CONNECTIONS: usize = 4096;

/// HTTP/1.1 with a bound on reading a request's head (a client that sends it slowly is cut).
fn http1() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(30));
    b
}

/// How `serve_http` serves: the operations API's token (without one the API is off) and TLS.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// The bearer token of the operations API.
    pub token: Option<String>,
    /// TLS for every endpoint ([`crate::tls::serve_tls_config`]); plain HTTP without.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Serves `/healthz`, `/metrics` and, with a token, the operations API on `listener` (over TLS
/// when configured) until `stop` turns true.
pub async fn serve_http(
    exec: S3Executor,
    listener: TcpListener,
    prometheus: PrometheusHandle,
    options: ServeOptions,
    mut stop: watch::Receiver<bool>,
) {
    let token: Option<Arc<str>> = options.token.map(Arc::from);
    let tls = options.tls.map(tokio_rustls::TlsAcceptor::from);
    // Connections at once; a client holding more waits for its turn to be accepted.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                log::warn!("accepting an HTTP connection failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (exec, prometheus, token) = (exec.clone(), prometheus.clone(), token.clone());
        let _ = socket.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                handle(exec.clone(), prometheus.clone(), token.clone(), req)
            });
            let served = match tls {
                None => {
                    http1()
                        .serve_connection(TokioIo::new(socket), service)
                        .await
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(socket),
                    )
                    .await;
                    let stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            log::debug!("TLS handshake with {peer} failed: {e}");
                            return;
                        }
                        Err(_) => {
                            log::debug!("TLS handshake with {peer} timed out");
                            return;
                        }
                    };
                    http1()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(e) = served {
                log::debug!("HTTP connection ended: {e}");
            }
        });
    }
}
