//! A client of a host's operations API: what the CLI uses to reach a running `serve`
//! (`FILESTORE_SERVE_URL`), and what an executor uses to forward a call to a mount's owner.
//!
//! One HTTP/1.1 connection per call (plain `http://`). A call that could not be delivered (no
//! connection) fails with a retryable [`Error::Forwarded`] and certainly did nothing; a call whose
//! answer was lost may have been applied: it also fails retryable, and sending it again with the
//! same idempotency key (every mutating call here carries one) returns its recorded outcome
//! instead of running it twice.

use std::time::{Duration, Instant};

use bytes::Bytes;
use filestore_s3_actors::model::{ListPage, OpKind, OpResult, Stat, UploadProgress};
use filestore_s3_actors::Error;
use futures::StreamExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::wire::{self, ErrorBody, WireError};
use crate::options::{DeleteManyOptions, ListOptions, Location, PutMode, PutOptions};

/// The body of a request.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A client of one host's operations API.
#[derive(Clone)]
pub struct ServeClient {
    base: String,
    authority: String,
    token: Option<String>,
    hops: u8,
    timeout: Duration,
    /// The executor a forwarded call is meant for.
    target: Option<String>,
    /// TLS, for an `https://` URL: the configuration and the name to verify.
    tls: Option<(
        std::sync::Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl std::fmt::Debug for ServeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeClient")
            .field("base", &self.base)
            .field("hops", &self.hops)
            .finish()
    }
}

/// A copy or move request's body.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TransferRequest {
    /// Source mount and path.
    pub from: LocationWire,
    /// Destination mount and path.
    pub to: LocationWire,
    /// Idempotency key (of the destination mount).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// `true`: fail if the destination exists.
    #[serde(default)]
    pub if_none_match: bool,
    /// Replace only the destination node at this generation.
    #[serde(default)]
    pub if_generation: Option<i64>,
}

/// A mount and a path.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LocationWire {
    /// Mount.
    pub mount: String,
    /// Path.
    pub path: String,
}

/// A delete_many request's body.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeleteManyRequest {
    /// The paths.
    pub paths: Vec<String>,
    /// Idempotency key of the call.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Deletes at once.
    #[serde(default)]
    pub in_flight: Option<usize>,
}

/// One path's answer of a delete_many.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemResult {
    /// Deleted (or nothing was there): the committed result.
    Ok(OpResult),
    /// Failed.
    Error(WireError),
}

impl ServeClient {
    /// A client of the operations API at `base` (`http://HOST:PORT` or `https://HOST[:PORT]`),
    /// sending `token` as a bearer token.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, Error> {
        Self::with_ca(base, token, None)
    }

    /// As [`new`](Self::new), trusting the CA certificates in the PEM file `ca_file` too (for
    /// `https://`; `FILESTORE_SERVE_CA_FILE` when `None`).
    pub fn with_ca(
        base: &str,
        token: Option<String>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, Error> {
        let base = base.trim_end_matches('/').to_owned();
        let bad = |why: &str| Error::Config(format!("operations API URL '{base}': {why}"));
        let (rest, https) = match (base.strip_prefix("http://"), base.strip_prefix("https://")) {
            (Some(r), _) => (r, false),
            (_, Some(r)) => (r, true),
            _ => return Err(bad("expected http://HOST:PORT or https://HOST[:PORT]")),
        };
        if rest.is_empty() || rest.contains('/') {
            return Err(bad("expected http://HOST:PORT or https://HOST[:PORT]"));
        }
        // HOST, HOST:PORT, [V6], [V6]:PORT
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
                (h, after.strip_prefix(':'))
            }
            None => match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            },
        };
        let port: u16 = match port {
            Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
            None if https => 443,
            None => 80,
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let authority = if rest.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let tls = if https {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| bad(&format!("not a TLS server name ({e})")))?;
            Some((crate::tls::serve_client_config(ca_file)?, name))
        } else {
            None
        };
        Ok(ServeClient {
            base,
            authority,
            token,
            hops: 0,
            timeout: Duration::from_secs(300),
            target: None,
            tls,
        })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Marks the calls as forwarded `hops` times already.
    pub fn with_hops(mut self, hops: u8) -> Self {
        self.hops = hops;
        self
    }

    /// Bounds each call: no byte of a request body sent, no answer after the request, or no
    /// byte of an answer's body for this long fails it.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Names the executor the calls are meant for (forwarding): another that receives them
    /// refuses them (`misdirected`, retryable).
    pub fn for_owner(mut self, owner: impl Into<String>) -> Self {
        self.target = Some(owner.into());
        self
    }

    fn undelivered(&self, what: impl std::fmt::Display, maybe_applied: bool) -> Error {
        Error::Forwarded {
            host: self.base.clone(),
            kind: if maybe_applied {
                "answer_lost".into()
            } else {
                "not_delivered".into()
            },
            message: if maybe_applied {
                format!("the call was sent but its answer was lost ({what}); it may have been applied: send it again with the same idempotency key")
            } else {
                format!("the call could not be delivered ({what}); nothing was done")
            },
            retryable: true,
        }
    }

    /// HTTP/1.1 over `io`, its connection driven in the background.
    async fn handshake<I>(
        &self,
        io: I,
    ) -> Result<hyper::client::conn::http1::SendRequest<Body>, Error>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.undelivered(e, false))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("operations API connection ended: {e}");
            }
        });
        Ok(sender)
    }

    /// Sends one request; the answer's head, or the error of a call not delivered or answered.
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: Vec<(String, String)>,
        body: Body,
        activity: Activity,
    ) -> Result<Response<hyper::body::Incoming>, Error> {
        let stream = tokio::time::timeout(
            Duration::from_secs(10).min(self.timeout),
            tokio::net::TcpStream::connect(&self.authority),
        )
        .await
        .map_err(|_| self.undelivered("connecting timed out", false))?
        .map_err(|e| self.undelivered(e, false))?;
        let _ = stream.set_nodelay(true);
        let mut sender = match &self.tls {
            None => self.handshake(stream).await?,
            Some((config, name)) => {
                let tls = tokio::time::timeout(
                    Duration::from_secs(10).min(self.timeout),
                    tokio_rustls::TlsConnector::from(config.clone()).connect(name.clone(), stream),
                )
                .await
                .map_err(|_| self.undelivered("the TLS handshake timed out", false))?
                .map_err(|e| self.undelivered(format!("TLS: {e}"), false))?;
                self.handshake(tls).await?
            }
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path_and_query))
            .header(hyper::header::HOST, &self.authority)
            .header(wire::FORWARDED, self.hops.to_string());
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(o) = &self.target {
            req = req.header(wire::FORWARD_TO, o);
        }
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .body(body)
            .map_err(|e| Error::Config(format!("building a request: {e}")))?;
        // A failure once the request is on its way may come after the owner applied it. The
        // wait is bounded by the activity clock: the body's bytes keep it fresh while they flow.
        activity.touch();
        let answer = sender.send_request(req);
        tokio::pin!(answer);
        loop {
            tokio::select! {
                r = &mut answer => {
                    return r.map_err(|e| match activity.body_error() {
                        // Cut short by its own source: the server got an incomplete body.
                        Some(why) => Error::Source {
                            what: "the body sent".into(),
                            message: why,
                            io: None,
                        },
                        None => self.undelivered(e, true),
                    });
                }
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    if activity.idle() > self.timeout {
                        return Err(self.undelivered(
                            format!("nothing moved for {:?}", self.timeout),
                            true,
                        ));
                    }
                }
            }
        }
    }

    /// Reads an answer: `T` from a 2xx JSON body, else the error it carries.
    async fn read<T: DeserializeOwned>(
        &self,
        resp: Response<hyper::body::Incoming>,
    ) -> Result<T, Error> {
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), ANSWER_LIMIT)
            .collect()
            .await
            .map_err(|e| self.undelivered(e, true))?
            .to_bytes();
        if status.is_success() {
            // The call succeeded but its answer cannot be read (another version?): as if lost.
            return serde_json::from_slice(&body).map_err(|e| Error::Forwarded {
                host: self.base.clone(),
                kind: "answer_lost".into(),
                message: format!("the call succeeded but its answer is not the expected JSON ({e}); it was applied: send it again with the same idempotency key for its result"),
                retryable: true,
            });
        }
        Err(self.error_of(status, &body))
    }

    fn error_of(&self, status: StatusCode, body: &[u8]) -> Error {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(e) => wire::from_wire(&self.base, e.error),
            Err(_) => Error::Forwarded {
                host: self.base.clone(),
                kind: "http".into(),
                message: format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ),
                retryable: status.is_server_error()
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status == StatusCode::TOO_MANY_REQUESTS,
            },
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        headers: Vec<(String, String)>,
        body: Body,
    ) -> Result<T, Error> {
        self.call_with(method, path_and_query, headers, body, Activity::new())
            .await
    }

    async fn call_with<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        headers: Vec<(String, String)>,
        body: Body,
        activity: Activity,
    ) -> Result<T, Error> {
        let resp = self
            .send(method, path_and_query, headers, body, activity)
            .await?;
        // A JSON answer is small: its body gets the whole timeout.
        tokio::time::timeout(self.timeout, self.read(resp))
            .await
            .map_err(|_| {
                self.undelivered(
                    format!("the answer did not arrive within {:?}", self.timeout),
                    true,
                )
            })?
    }

    fn empty() -> Body {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    }

    fn json_body<T: serde::Serialize>(v: &T) -> Body {
        let bytes = serde_json::to_vec(v).expect("request bodies serialise");
        Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    /// `/v1/mounts/{mount}/{what}/{path}`, both encoded.
    fn mount_url(mount: &str, what: &str, path: &str) -> String {
        format!(
            "/v1/mounts/{}/{what}/{}",
            wire::encode_component(mount),
            wire::encode_path(path)
        )
    }

    fn object_url(mount: &str, path: &str) -> String {
        Self::mount_url(mount, "objects", path)
    }

    /// Puts the bytes `reader` yields at `path` (streamed; `size` when known). Progress, when
    /// asked for, counts the bytes sent to the host.
    pub async fn put<R: AsyncRead + Send + Unpin + 'static>(
        &self,
        mount: &str,
        path: &str,
        reader: R,
        size: Option<u64>,
        opts: PutOptions,
    ) -> Result<OpResult, Error> {
        let mut headers = vec![];
        if let Some(k) = &opts.idempotency_key {
            headers.push((wire::IDEMPOTENCY_KEY.to_owned(), k.clone()));
        }
        if let Some(t) = &opts.content_type {
            headers.push(("content-type".to_owned(), t.clone()));
        }
        if let Some(n) = size {
            headers.push(("content-length".to_owned(), n.to_string()));
        }
        match opts.mode {
            PutMode::Overwrite => {}
            PutMode::Create => headers.push(("if-none-match".to_owned(), "*".to_owned())),
            PutMode::IfGeneration(g) => {
                headers.push((wire::IF_GENERATION.to_owned(), g.to_string()))
            }
        }
        for (k, v) in opts.metadata.iter() {
            headers.push((format!("{}{k}", wire::META_PREFIX), v.clone()));
        }
        let progress = opts.progress.clone();
        let (mount_s, path_s) = (mount.to_owned(), path.to_owned());
        let started = Instant::now();
        let mut sent = 0u64;
        let activity = Activity::new();
        let moved = activity.clone();
        let stream =
            tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024).map(move |chunk| {
                let chunk = chunk.inspect_err(|e| moved.body_failed(e.to_string()))?;
                moved.touch();
                sent += chunk.len() as u64;
                if size.is_some_and(|n| sent > n) {
                    // A source that grew while it was sent: the length announced would cut it
                    // short, and the owner would store the cut copy as the whole.
                    let why = format!(
                        "the source grew while it was sent (more than the {} bytes announced)",
                        size.unwrap_or_default()
                    );
                    moved.body_failed(why.clone());
                    return Err(std::io::Error::other(why));
                }
                if let Some(p) = &progress {
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    let rate = sent as f64 / secs;
                    p(&UploadProgress {
                        mount: mount_s.clone(),
                        path: path_s.clone(),
                        upload_id: String::new(),
                        bytes_done: sent,
                        bytes_total: size,
                        parts_done: 0,
                        parts_total: None,
                        bytes_sent: sent,
                        bytes_per_second: rate,
                        eta_seconds: size.map(|n| n.saturating_sub(sent) as f64 / rate.max(1.0)),
                        finished: size == Some(sent),
                    });
                }
                Ok(Frame::data(chunk))
            });
        let body = BodyExt::boxed_unsync(StreamBody::new(stream));
        self.call_with(
            Method::PUT,
            &Self::object_url(mount, path),
            headers,
            body,
            activity,
        )
        .await
    }

    /// Deletes the object at `path`.
    pub async fn delete(
        &self,
        mount: &str,
        path: &str,
        idempotency_key: Option<&str>,
    ) -> Result<OpResult, Error> {
        let headers = idempotency_key
            .map(|k| vec![(wire::IDEMPOTENCY_KEY.to_owned(), k.to_owned())])
            .unwrap_or_default();
        self.call(
            Method::DELETE,
            &Self::object_url(mount, path),
            headers,
            Self::empty(),
        )
        .await
    }

    /// Deletes many paths of one mount; one answer per path, in order.
    pub async fn delete_many(
        &self,
        mount: &str,
        paths: &[String],
        opts: &DeleteManyOptions,
    ) -> Result<Vec<Result<OpResult, Error>>, Error> {
        let req = DeleteManyRequest {
            paths: paths.to_vec(),
            idempotency_key: opts.idempotency_key.clone(),
            in_flight: Some(opts.in_flight),
        };
        let items: Vec<ItemResult> = self
            .call(
                Method::POST,
                &format!("/v1/mounts/{}/delete-many", wire::encode_component(mount)),
                vec![("content-type".into(), "application/json".into())],
                Self::json_body(&req),
            )
            .await?;
        Ok(items
            .into_iter()
            .map(|i| match i {
                ItemResult::Ok(r) => Ok(r),
                ItemResult::Error(e) => Err(wire::from_wire(&self.base, e)),
            })
            .collect())
    }

    /// Copies or moves `from` to `to`.
    pub async fn transfer(
        &self,
        op: OpKind,
        from: &Location,
        to: &Location,
        idempotency_key: Option<String>,
        mode: PutMode,
    ) -> Result<OpResult, Error> {
        let req = TransferRequest {
            from: LocationWire {
                mount: from.mount.clone(),
                path: from.path.clone(),
            },
            to: LocationWire {
                mount: to.mount.clone(),
                path: to.path.clone(),
            },
            idempotency_key,
            if_none_match: mode == PutMode::Create,
            if_generation: match mode {
                PutMode::IfGeneration(g) => Some(g),
                _ => None,
            },
        };
        let verb = if op == OpKind::Move { "move" } else { "copy" };
        self.call(
            Method::POST,
            &format!("/v1/{verb}"),
            vec![("content-type".into(), "application/json".into())],
            Self::json_body(&req),
        )
        .await
    }

    /// What the store holds at `path` and what Postgres records.
    pub async fn stat(&self, mount: &str, path: &str) -> Result<Stat, Error> {
        self.call(
            Method::GET,
            &Self::mount_url(mount, "stat", path),
            vec![],
            Self::empty(),
        )
        .await
    }

    /// One page of a listing.
    pub async fn list(
        &self,
        mount: &str,
        dir: &str,
        opts: &ListOptions,
    ) -> Result<ListPage, Error> {
        let mut q = format!("?delimited={}", opts.delimited);
        if let Some(t) = &opts.token {
            q.push_str(&format!("&token={}", wire::encode_component(t)));
        }
        if let Some(n) = opts.max_keys {
            q.push_str(&format!("&max_keys={n}"));
        }
        self.call(
            Method::GET,
            &format!("{}{q}", Self::mount_url(mount, "list", dir)),
            vec![],
            Self::empty(),
        )
        .await
    }

    /// Streams the object at `path` into `out`; the number of bytes written. The host checks the
    /// bytes against the recorded SHA-256 as it sends them and cuts the answer short when they
    /// differ, which fails this call.
    pub async fn get<W: AsyncWrite + Unpin>(
        &self,
        mount: &str,
        path: &str,
        out: &mut W,
    ) -> Result<u64, Error> {
        let work = async {
            let resp = self
                .send(
                    Method::GET,
                    &Self::object_url(mount, path),
                    vec![],
                    Self::empty(),
                    Activity::new(),
                )
                .await?;
            let status = resp.status();
            if !status.is_success() {
                let body = tokio::time::timeout(
                    self.timeout,
                    http_body_util::Limited::new(resp.into_body(), ANSWER_LIMIT).collect(),
                )
                .await
                .map_err(|_| self.undelivered("the error's answer did not arrive", true))?
                .map_err(|e| self.undelivered(e, true))?
                .to_bytes();
                return Err(self.error_of(status, &body));
            }
            let mut body = resp.into_body();
            let mut n = 0u64;
            loop {
                let frame = tokio::time::timeout(self.timeout, body.frame())
                    .await
                    .map_err(|_| Error::Forwarded {
                        host: self.base.clone(),
                        kind: "cut_short".into(),
                        message: format!("no byte of the object for {:?}", self.timeout),
                        retryable: true,
                    })?;
                let Some(frame) = frame else { break };
                let frame = frame.map_err(|e| Error::Forwarded {
                    host: self.base.clone(),
                    kind: "cut_short".into(),
                    message: format!("the object's bytes ended early ({e})"),
                    retryable: true,
                })?;
                if let Ok(data) = frame.into_data() {
                    out.write_all(&data)
                        .await
                        .map_err(|e| Error::io("the output", e))?;
                    n += data.len() as u64;
                }
            }
            Ok(n)
        };
        work.await
    }
}

/// When a call last moved (a byte of its body sent, or the request sent): its timeout counts
/// from there, so a long upload that keeps moving is never cut.
/// Also what ended a request body early on this side, if anything did.
#[derive(Clone)]
struct Activity(std::sync::Arc<std::sync::Mutex<(Instant, Option<String>)>>);

impl Activity {
    fn new() -> Self {
        Activity(std::sync::Arc::new(std::sync::Mutex::new((
            Instant::now(),
            None,
        ))))
    }

    fn touch(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).0 = Instant::now();
    }

    fn idle(&self) -> Duration {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).0.elapsed()
    }

    /// The request's body failed here (the source), so the request was cut short: the server
    /// saw an incomplete body and applied nothing.
    fn body_failed(&self, why: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(why);
    }

    fn body_error(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).1.clone()
    }
}

/// Largest JSON answer read.
const ANSWER_LIMIT: usize = 64 << 20;
