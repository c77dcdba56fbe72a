//! The operations API of `serve` (`/v1/...`, docs/serve.md): every call of the handle over HTTP,
//! behind a bearer token. Mutating calls for a mount another host of the fleet owns are
//! forwarded there by the executor (`x-filestore-forwarded` counts the hops).

// A route's early answer is its `Err`: one per request, moved once, not worth a box.
#![allow(clippy::result_large_err)]

use bytes::Bytes;
use filestore_s3_actors::Error;
use futures::{StreamExt as _, TryStreamExt as _};
use http_body_util::{BodyExt, BodyStream, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::io::AsyncReadExt as _;

use crate::api::client::{Body, DeleteManyRequest, ItemResult, TransferRequest};
use crate::api::wire::{self, ErrorBody, WireError};
use crate::{
    DeleteManyOptions, DeleteOptions, FollowOptions, GetOptions, ListOptions, Location, PutMode,
    PutOptions, S3Executor, TransferOptions,
};

/// Largest JSON request body.
const JSON_LIMIT: usize = 16 << 20;

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(
            Full::new(body.into())
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("static response parts are valid")
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_else(|e| e.to_string().into_bytes());
    full(status, "application/json", body)
}

fn api_error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response<Body> {
    json(
        status,
        &ErrorBody {
            error: WireError::api(kind, message),
        },
    )
}

fn error(e: &Error) -> Response<Body> {
    let (status, w) = wire::to_wire(e);
    json(status, &ErrorBody { error: w })
}

fn answer<T: Serialize>(r: Result<T, Error>) -> Response<Body> {
    match r {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(&e),
    }
}

/// Compares without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

fn header<'a, B>(req: &'a Request<B>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn decode(s: &str) -> Result<String, Response<Body>> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| {
            api_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the URL is not UTF-8",
            )
        })
}

fn query(req: &Request<hyper::body::Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((decode(k).ok()?, decode(v).ok()?))
        })
        .collect()
}

async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<hyper::body::Incoming>,
) -> Result<T, Response<Body>> {
    let body = Limited::new(req.into_body(), JSON_LIMIT)
        .collect()
        .await
        .map_err(|e| {
            api_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("reading the body: {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        api_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body is not the expected JSON: {e}"),
        )
    })
}

/// Answers one request of the operations API (`path` starts with `/v1/`). `token`: the bearer
/// token required; without one the API is off.
pub async fn handle(
    exec: S3Executor,
    token: Option<&str>,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let Some(token) = token else {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the operations API is off: start serve with FILESTORE_SERVE_TOKEN set",
        );
    };
    let given = header(&req, "authorization").and_then(|h| h.strip_prefix("Bearer "));
    if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        );
    }
    let hops = header(&req, wire::FORWARDED)
        .and_then(|h| h.parse::<u8>().ok())
        .unwrap_or(0);
    if let Some(meant) = header(&req, wire::FORWARD_TO) {
        if meant != exec.config().owner_id {
            let mut w = WireError::api(
                "misdirected",
                format!(
                    "forwarded to executor '{meant}', but this is '{}' (the address is stale or leads elsewhere); retry",
                    exec.config().owner_id
                ),
            );
            w.retryable = true;
            return json(StatusCode::MISDIRECTED_REQUEST, &ErrorBody { error: w });
        }
    }
    let exec = exec.with_hops(hops);
    let answered_by = exec.config().owner_id.clone();
    let mut resp = match route(exec, req).await {
        Ok(r) | Err(r) => r,
    };
    if let Ok(v) = hyper::header::HeaderValue::from_str(&answered_by) {
        resp.headers_mut().insert(wire::ANSWERED_BY, v);
    }
    resp
}

async fn route(
    exec: S3Executor,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Response<Body>> {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/v1/").unwrap_or_default();
    let method = req.method().clone();
    if rest == "copy" || rest == "move" {
        if method != Method::POST {
            return Err(api_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "bad_request",
                "POST only",
            ));
        }
        let t: TransferRequest = read_json(req).await?;
        let mode = match (t.if_none_match, t.if_generation) {
            (true, None) => PutMode::Create,
            (false, Some(g)) => PutMode::IfGeneration(g),
            (false, None) => PutMode::Overwrite,
            (true, Some(_)) => {
                return Err(api_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "if_none_match and if_generation exclude each other",
                ))
            }
        };
        let opts = TransferOptions {
            idempotency_key: t.idempotency_key,
            mode,
        };
        let (from, to) = (
            Location::new(t.from.mount, t.from.path),
            Location::new(t.to.mount, t.to.path),
        );
        return Ok(answer(if rest == "move" {
            exec.move_object(&from, &to, opts).await
        } else {
            exec.copy(&from, &to, opts).await
        }));
    }
    let Some(rest) = rest.strip_prefix("mounts/") else {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            "bad_request",
            "no such endpoint (docs/serve.md)",
        ));
    };
    let (mount, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let mount = decode(mount)?;
    let (what, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let tail = decode(tail)?;
    match (what, method) {
        ("objects", Method::PUT) => Ok(put(exec, &mount, &tail, req).await),
        ("objects", Method::GET) => Ok(get(exec, &mount, &tail).await),
        ("objects", Method::DELETE) => {
            let opts = DeleteOptions {
                idempotency_key: header(&req, wire::IDEMPOTENCY_KEY).map(str::to_owned),
            };
            Ok(answer(exec.delete(&mount, &tail, opts).await))
        }
        ("stat", Method::GET) => Ok(answer(exec.stat(&mount, &tail).await)),
        ("list", Method::GET) => {
            let mut opts = ListOptions {
                delimited: true,
                ..Default::default()
            };
            for (k, v) in query(&req) {
                match k.as_str() {
                    "delimited" => opts.delimited = v != "false",
                    "token" => opts.token = Some(v),
                    "max_keys" => opts.max_keys = v.parse().ok(),
                    _ => {}
                }
            }
            Ok(answer(exec.list(&mount, &tail, opts).await))
        }
        ("delete-many", Method::POST) => {
            let r: DeleteManyRequest = read_json(req).await?;
            let mut opts = DeleteManyOptions {
                idempotency_key: r.idempotency_key,
                ..Default::default()
            };
            if let Some(n) = r.in_flight {
                opts.in_flight = n;
            }
            Ok(match exec.delete_many(&mount, &r.paths, opts).await {
                Ok(items) => json(
                    StatusCode::OK,
                    &items
                        .iter()
                        .map(|i| match i {
                            Ok(r) => ItemResult::Ok(r.clone()),
                            Err(e) => ItemResult::Error(wire::to_wire(e).1),
                        })
                        .collect::<Vec<_>>(),
                ),
                Err(e) => error(&e),
            })
        }
        ("events", Method::GET) => {
            let after = query(&req)
                .into_iter()
                .find(|(k, _)| k == "after")
                .and_then(|(_, v)| v.parse::<i64>().ok())
                .unwrap_or(0);
            Ok(events(exec, &mount, after))
        }
        _ => Err(api_error(
            StatusCode::NOT_FOUND,
            "bad_request",
            "no such endpoint or method (docs/serve.md)",
        )),
    }
}

async fn put(
    exec: S3Executor,
    mount: &str,
    path: &str,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let mode = if header(&req, "if-none-match") == Some("*") {
        PutMode::Create
    } else if let Some(g) = header(&req, wire::IF_GENERATION) {
        match g.parse() {
            Ok(g) => PutMode::IfGeneration(g),
            Err(_) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("{}: not a generation: '{g}'", wire::IF_GENERATION),
                )
            }
        }
    } else {
        PutMode::Overwrite
    };
    let metadata = req
        .headers()
        .iter()
        .filter_map(|(k, v)| {
            let name = k.as_str().strip_prefix(wire::META_PREFIX)?;
            Some((name.to_owned(), v.to_str().ok()?.to_owned()))
        })
        .collect();
    let opts = PutOptions {
        idempotency_key: header(&req, wire::IDEMPOTENCY_KEY).map(str::to_owned),
        content_type: header(&req, "content-type").map(str::to_owned),
        metadata,
        progress: None,
        mode,
    };
    let body = BodyStream::new(req.into_body())
        .try_filter_map(|f| futures::future::ready(Ok(f.into_data().ok())))
        .map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(body);
    answer(exec.put_reader(mount, path, reader, opts).await)
}

/// Streams an object: the answer starts with its first bytes, so an error found before them (no
/// object, unknown mount) is an error answer; one found after (the bytes do not match the
/// recorded SHA-256) cuts the answer short.
async fn get(exec: S3Executor, mount: &str, path: &str) -> Response<Body> {
    let (mut w, mut r) = tokio::io::duplex(256 * 1024);
    let (mount, path) = (mount.to_owned(), path.to_owned());
    let mut task = tokio::spawn(async move {
        let res = exec.get(&mount, &path, &mut w, GetOptions::default()).await;
        drop(w);
        res
    });
    let mut first = vec![0u8; 64 * 1024];
    let n = tokio::select! {
        done = &mut task => {
            let res = done.unwrap_or(Err(Error::Shutdown));
            if let Err(e) = res {
                return error(&e);
            }
            // Finished before the first read: everything is in the pipe.
            let mut all = Vec::new();
            let _ = r.read_to_end(&mut all).await;
            return full(StatusCode::OK, "application/octet-stream", all);
        }
        n = r.read(&mut first) => n.unwrap_or(0),
    };
    if n == 0 {
        // Nothing came before the pipe closed: the get ended (an error, or an empty object).
        return match task.await.unwrap_or(Err(Error::Shutdown)) {
            Ok(_) => full(StatusCode::OK, "application/octet-stream", Bytes::new()),
            Err(e) => error(&e),
        };
    }
    first.truncate(n);
    let head = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(first)) });
    let tail = tokio_util::io::ReaderStream::new(r);
    let end = futures::stream::once(async move {
        match task.await {
            Ok(Ok(_)) => Ok(Bytes::new()),
            Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    });
    let stream = head
        .chain(tail)
        .chain(end)
        .filter(|c| futures::future::ready(!matches!(c, Ok(b) if b.is_empty())))
        .map_ok(Frame::data);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/octet-stream")
        .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
        .expect("static response parts are valid")
}

/// The mount's change feed as JSON lines (`{"cursor": N, "event": {...}}`), from `after` on,
/// until the client goes away.
fn events(exec: S3Executor, mount: &str, after: i64) -> Response<Body> {
    let stream = exec
        .follow(mount, after, FollowOptions::default())
        .map(|item| match item {
            Ok(e) => {
                let mut line = serde_json::to_vec(&serde_json::json!({
                    "cursor": e.cursor,
                    "event": e.event,
                }))
                .unwrap_or_default();
                line.push(b'\n');
                Ok(Frame::data(Bytes::from(line)))
            }
            Err(e) => {
                let (_, w) = wire::to_wire(&e);
                let mut line = serde_json::to_vec(&ErrorBody { error: w }).unwrap_or_default();
                line.push(b'\n');
                Ok(Frame::data(Bytes::from(line)))
            }
        });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
        .expect("static response parts are valid")
}
