//! A fault-injecting S3 proxy for the tests: an HTTP/1.1 server (hyper) in front of a real S3
//! server that forwards every request — or, by rule and probability, answers 503 SlowDown / 500,
//! answers 200 with an `<Error>` body to CompleteMultipartUpload, resets the connection after N
//! bytes of the request body, stalls, delays, flips a byte of the request body, answers 404 to
//! reads of a key for a while after it was written (eventual consistency), refuses requests that
//! carry checksum headers, drops the response after the server applied the request, or stalls a
//! download's body part-way. It counts
//! requests per S3 operation and part number, so tests can assert what was re-sent, keeps every
//! request's head, and can be switched off (`down`: every connection closed, new ones refused,
//! like a store that went away) and on again (`up`).
//!
//! It is the one proxy of the tests, in front of any S3 endpoint given as `http://host:port` or
//! `https://host[:port]` (TLS to the server, with the system's roots). The client talks
//! path-style HTTP to the proxy, and the proxy forwards the request as it came, its `Host` header
//! included: SigV4 signs that header, so the server must accept requests for a host name that is
//! not its own, as MinIO, Ceph RGW, moto and s3s do; AWS S3 routes by `Host` and cannot be reached
//! through it (docs/testing.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use rand::{Rng, SeedableRng};

/// The S3 operation of a request, from its method, path, query and headers (path-style).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    PutObject,
    CopyObject,
    UploadPart,
    UploadPartCopy,
    CreateMultipartUpload,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    HeadObject,
    GetObject,
    DeleteObject,
    ListParts,
    ListObjects,
    Bucket,
    Other,
}

fn classify(method: &hyper::Method, path: &str, query: &str, headers: &hyper::HeaderMap) -> Op {
    let q: Vec<&str> = query
        .split('&')
        .map(|p| p.split('=').next().unwrap_or(""))
        .collect();
    let has = |k: &str| q.contains(&k);
    // Path-style: /bucket or /bucket/ is a bucket request, /bucket/key an object request.
    let object = path
        .trim_start_matches('/')
        .split_once('/')
        .is_some_and(|(_, k)| !k.is_empty());
    let copy = headers.contains_key("x-amz-copy-source");
    match method.as_str() {
        "PUT" if object && has("partNumber") && copy => Op::UploadPartCopy,
        "PUT" if object && has("partNumber") => Op::UploadPart,
        "PUT" if object && copy => Op::CopyObject,
        "PUT" if object => Op::PutObject,
        "POST" if object && has("uploads") => Op::CreateMultipartUpload,
        "POST" if object && has("uploadId") => Op::CompleteMultipartUpload,
        "DELETE" if object && has("uploadId") => Op::AbortMultipartUpload,
        "DELETE" if object => Op::DeleteObject,
        "HEAD" if object => Op::HeadObject,
        "GET" if object && has("uploadId") => Op::ListParts,
        "GET" if object => Op::GetObject,
        "GET" => Op::ListObjects,
        _ if !object => Op::Bucket,
        _ => Op::Other,
    }
}

/// What a rule does to a matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status with this S3 error code; the server never sees the request.
    Status(u16, &'static str),
    /// Answer 200 with an `<Error>` body (InternalError); the server never sees the request.
    OkWithError,
    /// Read this many bytes of the request body, then close the connection.
    ResetAfter(usize),
    /// Never answer (until the client gives up).
    Stall,
    /// Forward after this delay.
    Delay(Duration),
    /// Flip one byte in the middle of the request body, then forward.
    FlipByte,
    /// Forward, let the server apply it, then close the connection without an answer.
    DropResponse,
    /// Refuse a request carrying `x-amz-checksum-*` / `x-amz-sdk-checksum-algorithm` headers with
    /// 400 InvalidRequest, as stores that do not implement them do.
    RejectChecksumHeaders,
    /// For this long after a key is written, answer HEAD / GET of it with 404 NoSuchKey.
    NotFoundAfterWrite(Duration),
    /// For this long after a key is written or deleted, answer HEAD of it as the last HEAD the
    /// proxy forwarded before that write was answered (the old version after an overwrite, the
    /// object after a delete; 404 if the proxy saw none): a store serving an older state.
    StaleAfterWrite(Duration),
    /// Forward, then send the answer's headers and this many bytes of its body, and no more
    /// (the connection stays open): a download that stalls mid-body.
    StallBodyAfter(usize),
    /// Forward, then remove this header from the answer (a store that does not echo it).
    StripResponseHeader(&'static str),
    /// Forward, then copy this header of the request into the answer (a store that echoes it).
    EchoRequestHeader(&'static str),
}

/// A fault, the requests it applies to, how likely and how often.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Only requests of this operation (`None`: every request).
    pub op: Option<Op>,
    /// Only this part number (UploadPart / UploadPartCopy).
    pub part: Option<u32>,
    /// Only requests whose path (`/bucket/key`) ends with this.
    pub key_suffix: Option<String>,
    /// Chance a matching request gets the fault.
    pub probability: f64,
    /// At most this many times (`None`: no limit).
    pub times: Option<usize>,
    pub fault: Fault,
}

impl Rule {
    pub fn always(op: Option<Op>, fault: Fault) -> Self {
        Rule {
            op,
            part: None,
            key_suffix: None,
            probability: 1.0,
            times: None,
            fault,
        }
    }

    pub fn once(op: Op, fault: Fault) -> Self {
        Rule {
            times: Some(1),
            ..Rule::always(Some(op), fault)
        }
    }
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub op: Op,
    pub part: Option<u32>,
    pub key: String,
    /// The fault applied, if any.
    pub fault: Option<String>,
    /// The server's answer, when the request reached it and it answered.
    pub status: Option<u16>,
}

struct State {
    rules: Vec<(Rule, usize)>,
    /// Every request's head (request line and headers), in arrival order.
    heads: Vec<String>,
    seen: Vec<Seen>,
    written: HashMap<String, Instant>,
    /// The last HEAD answer forwarded per path (status, headers).
    last_head: HashMap<String, CachedHead>,
    /// Per path: when it was last written or deleted, and the HEAD answer seen before.
    stale: HashMap<String, (Instant, Option<CachedHead>)>,
    rng: rand::rngs::StdRng,
}

type CachedHead = (hyper::StatusCode, hyper::HeaderMap);

/// The proxy; dropped, it stops accepting connections.
pub struct FaultProxy {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    down: Arc<std::sync::atomic::AtomicBool>,
    /// Bumped by `down`: every connection open at that moment is closed.
    cut: tokio::sync::watch::Sender<u64>,
}

/// Where the proxy forwards to.
#[derive(Clone)]
struct Upstream {
    /// `host:port`.
    addr: String,
    /// TLS to the server, for an `https://` endpoint.
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Upstream {
    fn parse(endpoint: &str) -> Self {
        let (tls, rest) = match endpoint.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (false, endpoint.trim_start_matches("http://")),
        };
        let authority = rest.split('/').next().unwrap_or(rest).to_owned();
        let host = authority
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(authority.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let addr = if authority.contains(':') && !authority.ends_with(']') {
            authority.clone()
        } else if tls {
            format!("{authority}:443")
        } else {
            format!("{authority}:80")
        };
        let tls = tls.then(|| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(host).expect("upstream host name");
            (tokio_rustls::TlsConnector::from(Arc::new(config)), name)
        });
        Upstream { addr, tls }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn s3_error(status: u16, code: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message><RequestId>fault</RequestId></Error>"
    );
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// The window of the first per-key fault `pick` recognises among the rules whose key filter lets
/// them apply to `path`.
fn key_window(
    rules: &[(Rule, usize)],
    path: &str,
    pick: impl Fn(&Fault) -> Option<Duration>,
) -> Option<Duration> {
    rules
        .iter()
        .filter(|(r, _)| {
            r.key_suffix
                .as_ref()
                .is_none_or(|k| path.ends_with(k.as_str()))
        })
        .find_map(|(r, _)| pick(&r.fault))
}

fn not_found(head: bool) -> Response<Full<Bytes>> {
    if head {
        Response::builder()
            .status(404)
            .body(Full::new(Bytes::new()))
            .unwrap()
    } else {
        s3_error(404, "NoSuchKey")
    }
}

impl FaultProxy {
    /// A proxy in front of `upstream` (`http://host:port` or `https://host[:port]`); `seed`
    /// drives the probabilities.
    pub async fn start(upstream: &str, seed: u64) -> Self {
        let upstream = Upstream::parse(upstream);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
        let state = Arc::new(Mutex::new(State {
            heads: Vec::new(),
            rules: Vec::new(),
            seen: Vec::new(),
            written: HashMap::new(),
            last_head: HashMap::new(),
            stale: HashMap::new(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }));
        let (st, is_down) = (state.clone(), down.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if is_down.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                let (st, upstream) = (st.clone(), upstream.clone());
                let mut cut = cut_rx.clone();
                cut.mark_unchanged();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        handle(req, st.clone(), upstream.clone())
                    });
                    let serve = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    // `down` closes the connection, with whatever request is on it.
                    tokio::select! {
                        _ = serve => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        FaultProxy {
            endpoint,
            state,
            task,
            down,
            cut,
        }
    }

    /// Closes every connection and refuses new ones until [`FaultProxy::up`].
    pub fn down(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|g| *g += 1);
    }

    /// Accepts connections again.
    pub fn up(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whole request heads (request line and headers) seen so far.
    pub fn heads(&self) -> Vec<String> {
        self.state.lock().unwrap().heads.clone()
    }

    /// Request lines seen so far (`PUT /bucket/key?partNumber=3&uploadId=… HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        self.heads()
            .iter()
            .map(|h| h.lines().next().unwrap_or_default().to_owned())
            .collect()
    }

    /// CopyObject / UploadPartCopy requests seen so far.
    pub fn copy_requests(&self) -> usize {
        self.count(Op::CopyObject) + self.count(Op::UploadPartCopy)
    }

    /// Adds a rule (rules are tried in order; the first that fires applies).
    pub fn add(&self, rule: Rule) {
        self.state.lock().unwrap().rules.push((rule, 0));
    }

    /// Removes every rule: the store is healthy again.
    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Requests of `op` seen so far.
    pub fn count(&self, op: Op) -> usize {
        self.seen().iter().filter(|s| s.op == op).count()
    }

    /// Requests of `op` that got a fault.
    pub fn faulted(&self, op: Op) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.op == op && s.fault.is_some())
            .count()
    }

    /// UploadPart requests for part `n` seen so far.
    pub fn part_requests(&self, n: u32) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.op == Op::UploadPart && s.part == Some(n))
            .count()
    }
}

type ProxyBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;
type Reply = Result<Response<ProxyBody>, std::io::Error>;

async fn handle(req: Request<Incoming>, st: Arc<Mutex<State>>, upstream: Upstream) -> Reply {
    let (response, stall_after) = handle_whole(req, st, upstream).await?;
    let (parts, body) = response.into_parts();
    let Some(n) = stall_after else {
        return Ok(Response::from_parts(
            parts,
            body.map_err(|never| match never {}).boxed(),
        ));
    };
    let Ok(whole) = body.collect().await;
    let whole = whole.to_bytes();
    let head = whole.slice(..n.min(whole.len()));
    let frames =
        futures::stream::once(
            async move { Ok::<_, std::io::Error>(hyper::body::Frame::data(head)) },
        )
        .chain(futures::stream::pending());
    Ok(Response::from_parts(
        parts,
        BodyExt::boxed(http_body_util::StreamBody::new(frames)),
    ))
}

/// The whole answer, and where to stall its body (`Fault::StallBodyAfter`).
async fn handle_whole(
    req: Request<Incoming>,
    st: Arc<Mutex<State>>,
    upstream: Upstream,
) -> Result<(Response<Full<Bytes>>, Option<usize>), std::io::Error> {
    let (parts, body) = req.into_parts();
    {
        let mut head = format!("{} {} HTTP/1.1\r\n", parts.method, parts.uri);
        for (k, v) in &parts.headers {
            head.push_str(&format!(
                "{k}: {}\r\n",
                String::from_utf8_lossy(v.as_bytes())
            ));
        }
        st.lock().unwrap().heads.push(head);
    }
    let path = parts.uri.path().to_owned();
    // The executor's conditions probe (on an object of its own, `.filestore-conditions-probe-…`,
    // at a mount's first write that would send a condition) is passed through, neither faulted
    // nor counted: the scenarios are about the operations' requests, whose faults and counts it
    // would otherwise take. (A probe that fails only leaves that write unconditioned.)
    if path.contains(".filestore-conditions-probe-") {
        let bytes = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        return Ok((forward(&upstream, &parts, bytes).await?, None));
    }
    let query = parts.uri.query().unwrap_or("").to_owned();
    let op = classify(&parts.method, &path, &query, &parts.headers);
    let part = query
        .split('&')
        .find_map(|p| p.strip_prefix("partNumber="))
        .and_then(|n| n.parse().ok());
    let has_checksum_headers = parts.headers.keys().any(|k| {
        let k = k.as_str();
        k.starts_with("x-amz-checksum-") || k == "x-amz-sdk-checksum-algorithm"
    });
    // Decide the fault (and log the request) before anything is read.
    let seen_at;
    let (fault, stale_answer) = {
        let mut s = st.lock().unwrap();
        let State {
            rules,
            rng,
            written,
            stale,
            ..
        } = &mut *s;
        let mut chosen = None;
        for (rule, fired) in rules.iter_mut() {
            let applies = rule.op.is_none_or(|o| o == op)
                && rule.part.is_none_or(|p| Some(p) == part)
                && rule
                    .key_suffix
                    .as_ref()
                    .is_none_or(|k| path.ends_with(k.as_str()))
                && rule.times.is_none_or(|t| *fired < t)
                && match rule.fault {
                    Fault::RejectChecksumHeaders => has_checksum_headers,
                    // Applied below, per key.
                    Fault::NotFoundAfterWrite(_) | Fault::StaleAfterWrite(_) => false,
                    _ => true,
                };
            if applies && rng.random_bool(rule.probability.clamp(0.0, 1.0)) {
                *fired += 1;
                chosen = Some(rule.fault.clone());
                break;
            }
        }
        // Eventual consistency: a read of a key written moments ago.
        if chosen.is_none() && matches!(op, Op::HeadObject | Op::GetObject) {
            let window = key_window(rules, &path, |f| match f {
                Fault::NotFoundAfterWrite(d) => Some(*d),
                _ => None,
            });
            if let (Some(d), Some(at)) = (window, written.get(&path)) {
                if at.elapsed() < d {
                    chosen = Some(Fault::NotFoundAfterWrite(d));
                }
            }
        }
        // A store serving an older state: a HEAD of a key written or deleted moments ago.
        let mut stale_answer = None;
        if chosen.is_none() && op == Op::HeadObject {
            let window = key_window(rules, &path, |f| match f {
                Fault::StaleAfterWrite(d) => Some(*d),
                _ => None,
            });
            if let (Some(d), Some((at, before))) = (window, stale.get(&path)) {
                if at.elapsed() < d {
                    chosen = Some(Fault::StaleAfterWrite(d));
                    stale_answer = Some(before.clone());
                }
            }
        }
        seen_at = s.seen.len();
        s.seen.push(Seen {
            op,
            part,
            key: path.clone(),
            fault: chosen.as_ref().map(|f| format!("{f:?}")),
            status: None,
        });
        (chosen, stale_answer)
    };
    match &fault {
        Some(Fault::Status(status, code)) => return Ok((s3_error(*status, code), None)),
        Some(Fault::OkWithError) => return Ok((s3_error(200, "InternalError"), None)),
        Some(Fault::RejectChecksumHeaders) => return Ok((s3_error(400, "InvalidRequest"), None)),
        Some(Fault::NotFoundAfterWrite(_)) => return Ok((not_found(op == Op::HeadObject), None)),
        Some(Fault::StaleAfterWrite(_)) => {
            return Ok((
                match stale_answer.flatten() {
                    Some((status, headers)) => {
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = status;
                        *r.headers_mut() = headers;
                        r
                    }
                    None => not_found(true),
                },
                None,
            ))
        }
        Some(Fault::Stall) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Err(std::io::Error::other("stalled"));
        }
        Some(Fault::ResetAfter(n)) => {
            let mut body = body;
            let mut read = 0usize;
            while read < *n {
                match body.frame().await {
                    Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                    _ => break,
                }
            }
            return Err(std::io::Error::other("connection reset by the test proxy"));
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
        _ => {}
    }
    let mut bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    if matches!(fault, Some(Fault::FlipByte)) && !bytes.is_empty() {
        let mut v = bytes.to_vec();
        let mid = v.len() / 2;
        v[mid] ^= 0x5a;
        bytes = Bytes::from(v);
    }
    let mut response = forward(&upstream, &parts, bytes).await?;
    st.lock().unwrap().seen[seen_at].status = Some(response.status().as_u16());
    match &fault {
        Some(Fault::StripResponseHeader(name)) => {
            response.headers_mut().remove(*name);
        }
        Some(Fault::EchoRequestHeader(name)) => {
            if let Some(v) = parts.headers.get(*name) {
                response.headers_mut().insert(*name, v.clone());
            }
        }
        _ => {}
    }
    if response.status().is_success()
        && matches!(
            op,
            Op::PutObject | Op::CopyObject | Op::CompleteMultipartUpload
        )
    {
        st.lock()
            .unwrap()
            .written
            .insert(path.clone(), Instant::now());
    }
    {
        let mut s = st.lock().unwrap();
        if op == Op::HeadObject {
            let answer = (response.status(), response.headers().clone());
            s.last_head.insert(path, answer);
        } else if response.status().is_success()
            && matches!(
                op,
                Op::PutObject | Op::CopyObject | Op::CompleteMultipartUpload | Op::DeleteObject
            )
        {
            let before = s.last_head.get(&path).cloned();
            s.stale.insert(path, (Instant::now(), before));
        }
    }
    if matches!(fault, Some(Fault::DropResponse)) {
        return Err(std::io::Error::other("response dropped by the test proxy"));
    }
    let stall_after = match fault {
        Some(Fault::StallBodyAfter(n)) => Some(n),
        _ => None,
    };
    Ok((response, stall_after))
}

/// Sends the request to the server on a connection of its own and reads the whole answer.
async fn forward(
    upstream: &Upstream,
    parts: &hyper::http::request::Parts,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let stream = tokio::net::TcpStream::connect(&upstream.addr).await?;
    let mut sender = match &upstream.tls {
        None => {
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            sender
        }
        Some((connector, name)) => {
            let stream = connector.connect(name.clone(), stream).await?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            sender
        }
    };
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .version(hyper::Version::HTTP_11);
    for (k, v) in &parts.headers {
        req = req.header(k, v);
    }
    let req = req.body(Full::new(body)).map_err(std::io::Error::other)?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    let (rparts, rbody) = resp.into_parts();
    let rbytes = rbody
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let mut out = Response::from_parts(rparts, Full::new(rbytes));
    // The body is whole now; its length is known.
    out.headers_mut().remove(hyper::header::TRANSFER_ENCODING);
    Ok(out)
}
