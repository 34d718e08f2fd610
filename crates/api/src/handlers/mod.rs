//! Connection handling and routing of upstream paths to the generic REST handlers over the store, one
//! module per concern.

mod bootstrap;
mod delete;
mod patching;
mod read;
mod watch;
mod wire;
mod write;

pub use bootstrap::bootstrap;
use delete::*;
use patching::*;
use read::*;
use watch::*;
use wire::*;
use write::*;

use crate::alloc::{held_by, Allocators};
use crate::discovery;
use crate::openapi;
use crate::registry::{self, Resource, Sub};
use crate::reservations::{AllocError, ServiceAllocator};
use crate::status::{ApiError, ApiResult};
use crate::{Error, ServerConfig};
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Map, Value};
use skiff_apimachinery::{
    apply, defaults, patch, proto, selector, table, validation, Cause, GroupKind,
};
use skiff_store::{EventType, KeyValue, ListOptions, Store};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub type Body = BoxBody<Bytes, Infallible>;

/// Upstream's request body limit (3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;
const TABLE_CT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

pub struct Ctx {
    pub store: Arc<dyn Store>,
    token: String,
    /// ClusterIP / NodePort allocations: reserved in the store before the Service write and given back if the
    /// write fails, so concurrent writers (also on other API servers) never share one.
    alloc: ServiceAllocator,
    advertise: IpAddr,
    port: u16,
    /// Becomes true (or its sender goes away) when the server shuts down: connections and watch streams end so
    /// that the store is released.
    stop: tokio::sync::watch::Receiver<bool>,
}

/// Resolves once `stop` says the server is shutting down (or its sender was dropped).
pub async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

impl Ctx {
    pub async fn new(
        store: Arc<dyn Store>,
        token: String,
        cfg: &ServerConfig,
        port: u16,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Arc<Self>, Error> {
        let svc = registry::find("", "v1", "services")
            .ok_or_else(|| Error::Bootstrap("no services".into()))?;
        let alloc = ServiceAllocator::new(
            store.clone(),
            Allocators::new(cfg.service_cidr, cfg.node_ports.clone()),
            &svc.prefix(),
        )
        .await?;
        Ok(Arc::new(Self {
            store,
            token,
            alloc,
            advertise: cfg.advertise_address,
            port,
            stop,
        }))
    }
}

/// Accept connections until shutdown; then every connection (idle keep-alive ones too) is closed and the
/// returned future completes once their tasks have ended, so nothing of this server holds the store any more.
pub async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<Ctx>,
) {
    let stop = ctx.stop.clone();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // reap finished connection tasks so the set does not grow
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = stopped(stop.clone()) => break,
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let r = match tls {
                Some(acc) => {
                    let s = tokio::select! {
                        s = acc.accept(stream) => s,
                        _ = stopped(stop.clone()) => return,
                    };
                    match s {
                        Ok(s) => serve_conn(s, ctx, stop).await,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    }
                }
                None => serve_conn(stream, ctx, stop).await,
            };
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    drop(ctx);
    // Connection tasks see the same stop signal and end promptly (dropping their connection closes it).
    while conns.join_next().await.is_some() {}
    tracing::debug!("API server stopped");
}

/// Serve HTTP on one connection until the client goes away or the server stops (the connection is then
/// dropped: in-flight watch responses end and the client reconnects elsewhere).
async fn serve_conn<I>(
    io: I,
    ctx: Arc<Ctx>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
    });
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), svc);
    tokio::select! {
        r = conn => r,
        _ = stopped(stop) => Ok(()),
    }
}

// ---------- routing ----------

struct Target {
    res: &'static Resource,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    watch_path: bool,
}

enum Route {
    Resource(Target),
    Json(Value),
    Aggregated(bool),
    NotFound,
}

fn route(path: &str, h: &HeaderMap, ctx: &Ctx) -> Route {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api"] => {
            if discovery::wants_aggregated(header(h, "accept")) {
                return Route::Aggregated(true);
            }
            return Route::Json(discovery::api_versions(&format!(
                "{}:{}",
                ctx.advertise, ctx.port
            )));
        }
        ["apis"] => {
            if discovery::wants_aggregated(header(h, "accept")) {
                return Route::Aggregated(false);
            }
            return Route::Json(discovery::api_group_list());
        }
        ["apis", g] => {
            return discovery::api_group(g)
                .map(Route::Json)
                .unwrap_or(Route::NotFound)
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::NotFound,
    };
    if rest.is_empty() {
        return discovery::resource_list(group, version)
            .map(Route::Json)
            .unwrap_or(Route::NotFound);
    }
    let (watch_path, rest) = if rest[0] == "watch" {
        (true, &rest[1..])
    } else {
        (false, rest)
    };
    // namespaces/{ns}/{plural}... vs the namespaces resource itself.
    let (ns, rest): (Option<String>, &[&str]) = if rest.len() >= 3
        && rest[0] == "namespaces"
        && !matches!(rest[2], "status" | "finalize")
    {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let Some(res) = registry::find(group, version, rest[0]) else {
        return Route::NotFound;
    };
    if ns.is_some() && !res.namespaced {
        return Route::NotFound;
    }
    if rest.len() > 3 {
        return Route::NotFound;
    }
    let name = rest.get(1).map(|s| percent_decode(s));
    let sub = rest.get(2).map(|s| s.to_string());
    Route::Resource(Target {
        res,
        ns,
        name,
        sub,
        watch_path,
    })
}

/// Read a request body of at most 3 MiB. A larger one is drained (up to a hard cap) before the 413 reply, so
/// HTTP/2 clients get the Status instead of a reset stream.
async fn read_body(mut body: Incoming) -> ApiResult<Bytes> {
    const DRAIN_CAP: usize = 64 << 20;
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= MAX_BODY {
                buf.extend_from_slice(&data);
            } else if total > DRAIN_CAP {
                break;
            }
        }
    }
    if total > MAX_BODY {
        return Err(ApiError::too_large());
    }
    Ok(buf.freeze())
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let q = parse_query(parts.uri.query());
    tracing::debug!(method = %parts.method, uri = %parts.uri, "request");
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" => return respond(200, "text/plain", b"ok".to_vec()),
        "/version" | "/version/" => return json_resp(200, &discovery::version()),
        _ => {}
    }
    if !ctx.token.is_empty() {
        let auth = header(&parts.headers, "authorization");
        let ok = auth
            .strip_prefix("Bearer ")
            .map(|t| t.trim() == ctx.token)
            .unwrap_or(false);
        if !ok {
            return err_resp(&ApiError::unauthorized());
        }
    }
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(e) => return err_resp(&e),
    };
    if path == "/openapi/v3" || path == "/openapi/v3/" {
        return json_resp(200, &openapi::v3_root());
    }
    if let Some(p) = path.strip_prefix("/openapi/v3/") {
        return match openapi::v3_group_version(p) {
            Some(d) => json_resp(200, &d),
            None => err_resp(&ApiError::path_not_found()),
        };
    }
    if path == "/openapi/v2" || path == "/openapi/v2/" {
        return if openapi::wants_v2_protobuf(header(&parts.headers, "accept")) {
            respond(
                200,
                openapi::V2_PROTOBUF_CONTENT_TYPE,
                openapi::v2_protobuf().to_vec(),
            )
        } else {
            json_resp(200, openapi::v2())
        };
    }
    match route(&path, &parts.headers, &ctx) {
        Route::NotFound => err_resp(&ApiError::path_not_found()),
        Route::Json(v) => json_resp(200, &v),
        Route::Aggregated(core) => respond(
            200,
            discovery::AGGREGATED_CT,
            serde_json::to_vec(&discovery::aggregated(core)).unwrap_or_default(),
        ),
        Route::Resource(t) => {
            match dispatch(&ctx, &parts.method, &parts.headers, &q, t, body).await {
                Ok(r) => r,
                Err(e) => err_resp(&e),
            }
        }
    }
}

async fn dispatch(
    ctx: &Arc<Ctx>,
    method: &Method,
    h: &HeaderMap,
    q: &Query,
    t: Target,
    body: Bytes,
) -> ApiResult<Response<Body>> {
    let res = t.res;
    let ns = if res.namespaced { t.ns.clone() } else { None };
    if t.sub.as_deref() == Some("binding") && res.group.is_empty() && res.kind == "Pod" {
        let (Some(ns), Some(name), true) =
            (t.ns.as_deref(), t.name.as_deref(), *method == Method::POST)
        else {
            return Err(ApiError::method_not_allowed());
        };
        let b = decode_object(h, &body)?;
        return bind_pod(ctx, res, ns, name, &b, q).await;
    }
    if let Some(s) = &t.sub {
        let known =
            (s == "status" && res.has(Sub::Status)) || (s == "scale" && res.has(Sub::Scale));
        if !known {
            return Err(ApiError::path_not_found());
        }
    }
    if t.watch_path || (qbool(q, "watch") && method == Method::GET) {
        if *method != Method::GET {
            return Err(ApiError::method_not_allowed());
        }
        return watch(ctx, res, ns.as_deref(), t.name.as_deref(), q, h).await;
    }
    let write_ns = || -> ApiResult<Option<String>> {
        if res.namespaced {
            Ok(Some(t.ns.clone().ok_or_else(ApiError::path_not_found)?))
        } else {
            Ok(None)
        }
    };
    match (method.clone(), t.name.clone()) {
        (Method::GET, None) => list(ctx, res, ns.as_deref(), q, h).await,
        (Method::POST, None) => {
            let ns = write_ns()?;
            let obj = decode_object(h, &body)?;
            let (v, warnings) = create(ctx, res, ns.as_deref(), obj, q).await?;
            let mut r = json_resp(201, &v);
            add_warnings(&mut r, &warnings);
            Ok(r)
        }
        (Method::DELETE, None) => delete_collection(ctx, res, ns.as_deref(), q, &body).await,
        (Method::GET, Some(name)) => {
            let ns = write_ns()?;
            let v = get_obj(ctx, res, ns.as_deref(), &name).await?;
            if t.sub.as_deref() == Some("scale") {
                return Ok(json_resp(200, &to_scale(&v)));
            }
            if wants_table(h) {
                let rv = meta(&v)["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                return Ok(table_resp(&to_table(res, &[v], &rv, None, q, true)));
            }
            Ok(json_resp(200, &v))
        }
        (Method::PUT, Some(name)) => {
            let ns = write_ns()?;
            let obj = decode_object(h, &body)?;
            let (v, code, warnings) =
                put(ctx, res, ns.as_deref(), &name, t.sub.as_deref(), obj, q).await?;
            let mut r = json_resp(code, &v);
            add_warnings(&mut r, &warnings);
            Ok(r)
        }
        (Method::PATCH, Some(name)) => {
            let ns = write_ns()?;
            let (v, code, warnings) = patch_obj(
                ctx,
                res,
                ns.as_deref(),
                &name,
                t.sub.as_deref(),
                h,
                q,
                &body,
            )
            .await?;
            let mut r = json_resp(code, &v);
            add_warnings(&mut r, &warnings);
            Ok(r)
        }
        (Method::DELETE, Some(name)) => {
            let ns = write_ns()?;
            let v = delete(ctx, res, ns.as_deref(), &name, q, &body).await?;
            Ok(json_resp(200, &v))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}
