//! Connection handling, routing of upstream paths and the generic REST handlers over the store.

use crate::alloc::{held_by, Allocators};
use crate::discovery;
use crate::openapi;
use crate::registry::{self, Resource, Sub};
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
    /// ClusterIP / NodePort allocations. Held only while deciding (never across a store write): an allocation
    /// is reserved before the write and given back if the write fails, so concurrent writers never share one.
    alloc: parking_lot::Mutex<Allocators>,
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
        let mut alloc = Allocators::new(cfg.service_cidr, cfg.node_ports.clone());
        let svc = registry::find("", "v1", "services")
            .ok_or_else(|| Error::Bootstrap("no services".into()))?;
        let list = store.list(&svc.prefix(), ListOptions::default()).await?;
        for kv in list.items {
            if let Ok(v) = serde_json::from_slice::<Value>(&kv.value) {
                alloc.mark(&held_by(&v));
            }
        }
        Ok(Arc::new(Self {
            store,
            token,
            alloc: parking_lot::Mutex::new(alloc),
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

// ---------- responses ----------

fn respond(code: u16, ct: &str, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = ct.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn json_resp(code: u16, v: &Value) -> Response<Body> {
    respond(
        code,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn err_resp(e: &ApiError) -> Response<Body> {
    json_resp(e.code, &e.to_json())
}

fn add_warnings(r: &mut Response<Body>, warnings: &[String]) {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = text.parse() {
            r.headers_mut().append("Warning", v);
        }
    }
}

// ---------- request parsing helpers ----------

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

type Query = HashMap<String, String>;

fn parse_query(q: Option<&str>) -> Query {
    let mut m = HashMap::new();
    if let Some(q) = q {
        for part in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let (k, v) = (percent_decode(k), percent_decode(v));
            // Repeated keys (dryRun=All&dryRun=All) keep the first value.
            m.entry(k).or_insert(v);
        }
    }
    m
}

fn qbool(q: &Query, k: &str) -> bool {
    q.get(k).map(|v| v == "true" || v == "1").unwrap_or(false)
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn header<'a>(h: &'a HeaderMap, k: &str) -> &'a str {
    h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn media_type(h: &HeaderMap) -> String {
    header(h, "content-type")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn wants_table(h: &HeaderMap) -> bool {
    header(h, "accept").split(',').any(|m| {
        let p: Vec<&str> = m.split(';').map(|x| x.trim()).collect();
        p.contains(&"as=Table") && p.contains(&"g=meta.k8s.io")
    })
}

/// Decode an object body by Content-Type: JSON (or missing), YAML, or Kubernetes protobuf.
fn decode_object(h: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let mt = media_type(h);
    let v: Value = match mt.as_str() {
        "" | "application/json" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))?,
        "application/yaml"
        | "application/x-yaml"
        | "text/yaml"
        | "application/apply-patch+yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))?,
        "application/vnd.kubernetes.protobuf" => proto::decode(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding protobuf: {e}")))?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON or YAML object",
        ));
    }
    Ok(v)
}

fn meta(v: &Value) -> &Value {
    &v["metadata"]
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v["metadata"].is_object() {
        v["metadata"] = json!({});
    }
    v["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

fn name_of(v: &Value) -> &str {
    meta(v)["name"].as_str().unwrap_or("")
}

/// A stored object with its resourceVersion filled in from the store.
fn from_kv(kv: &KeyValue) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value).map_err(ApiError::internal)?;
    meta_mut(&mut v).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    Ok(v)
}

/// The stored form: metadata first (without resourceVersion), so reads can splice the resourceVersion in
/// without parsing (see [`kv_json`]).
fn to_stored(v: &Value) -> Vec<u8> {
    let mut out = Map::new();
    let mut md = v
        .get("metadata")
        .and_then(|m| m.as_object())
        .cloned()
        .unwrap_or_default();
    md.remove("resourceVersion");
    md.remove("selfLink");
    out.insert("metadata".into(), Value::Object(md));
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            if k != "metadata" {
                out.insert(k.clone(), x.clone());
            }
        }
    }
    serde_json::to_vec(&Value::Object(out)).unwrap_or_default()
}

const STORED_PREFIX: &[u8] = b"{\"metadata\":{";

/// A stored object's JSON with its resourceVersion, by splicing bytes when the stored form starts with the
/// metadata object (always, for objects this server wrote); otherwise by parsing.
fn kv_json(kv: &KeyValue, out: &mut Vec<u8>) -> ApiResult<()> {
    let raw = &kv.value[..];
    if raw.starts_with(STORED_PREFIX) {
        out.extend_from_slice(STORED_PREFIX);
        out.extend_from_slice(b"\"resourceVersion\":\"");
        out.extend_from_slice(kv.mod_revision.to_string().as_bytes());
        out.push(b'"');
        let rest = &raw[STORED_PREFIX.len()..];
        if rest.first() != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        return Ok(());
    }
    let v = from_kv(kv)?;
    serde_json::to_writer(&mut *out, &v).map_err(ApiError::internal)
}

fn with_rv(mut v: Value, rev: u64) -> Value {
    meta_mut(&mut v).insert("resourceVersion".into(), json!(rev.to_string()));
    v
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

// ---------- reads ----------

async fn get_kv(ctx: &Ctx, res: &Resource, ns: Option<&str>, name: &str) -> ApiResult<KeyValue> {
    ctx.store
        .get(&res.key(ns, name))
        .await?
        .ok_or_else(|| ApiError::not_found(res.group, res.plural, name))
}

async fn get_obj(ctx: &Ctx, res: &Resource, ns: Option<&str>, name: &str) -> ApiResult<Value> {
    from_kv(&get_kv(ctx, res, ns, name).await?)
}

struct Filters {
    labels: selector::LabelSelector,
    fields: selector::FieldSelector,
    /// No selector given: everything matches (lets hot paths skip parsing objects).
    empty: bool,
}

impl Filters {
    fn from_query(q: &Query, res: &Resource) -> ApiResult<Self> {
        let labels = selector::LabelSelector::parse(
            q.get("labelSelector").map(|s| s.as_str()).unwrap_or(""),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = selector::FieldSelector::parse(
            q.get("fieldSelector").map(|s| s.as_str()).unwrap_or(""),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        // upstream rejects field labels the kind does not index: 400 `field label not supported: foo`
        fields
            .check_supported(res.gk())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let empty = q.get("labelSelector").is_none_or(|s| s.trim().is_empty())
            && q.get("fieldSelector").is_none_or(|s| s.trim().is_empty());
        Ok(Self {
            labels,
            fields,
            empty,
        })
    }
    fn matches(&self, v: &Value) -> bool {
        if self.empty {
            return true;
        }
        self.labels.matches(meta(v).get("labels")) && self.fields.matches(v)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    #[serde(rename = "k")]
    key: String,
    #[serde(rename = "rv")]
    rv: u64,
}

async fn list(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    q: &Query,
    h: &HeaderMap,
) -> ApiResult<Response<Body>> {
    let filters = Filters::from_query(q, res)?;
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let start_after = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .map_err(|_| ApiError::bad_request("invalid continue token"))?;
            let tok: ContinueToken = serde_json::from_slice(&raw)
                .map_err(|_| ApiError::bad_request("invalid continue token"))?;
            Some(tok.key)
        }
        None => None,
    };
    let prefix = res.ns_prefix(ns);
    let table = wants_table(h);
    let now = jiff::Timestamp::now();
    let include = q
        .get("includeObject")
        .cloned()
        .unwrap_or_else(|| "Metadata".into());
    // Objects are visited one at a time and dropped right away (no list of parsed objects is kept: freeing
    // thousands of small allocations at once dominated large lists). JSON items are the stored bytes with the
    // resourceVersion spliced in; only selectors and tables need a parse.
    let mut body = Vec::new();
    let mut rows: Vec<Value> = Vec::new();
    let mut n = 0usize;
    let (rev, cont, remaining) =
        list_visit(ctx, &prefix, &filters, start_after, limit, |kv, parsed| {
            if table {
                let v = match parsed {
                    Some(v) => v,
                    None => from_kv(kv)?,
                };
                let mut row = json!({"cells": cells_for(res, &v, now)});
                match include.as_str() {
                    "None" => {}
                    "Object" => row["object"] = v,
                    _ => row["object"] = partial_metadata(&v),
                }
                rows.push(row);
            } else {
                if n > 0 {
                    body.push(b',');
                }
                kv_json(kv, &mut body)?;
            }
            n += 1;
            Ok(())
        })
        .await?;
    let mut md = json!({"resourceVersion": rev.to_string()});
    if let Some(c) = cont {
        md["continue"] = json!(c);
        if let Some(r) = remaining {
            md["remainingItemCount"] = json!(r);
        }
    }
    if table {
        let cols = serde_json::to_value(columns_for(res)).unwrap_or(json!([]));
        let t = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": md, "columnDefinitions": cols, "rows": rows});
        return Ok(table_resp(&t));
    }
    let mut out = Vec::with_capacity(body.len() + 256);
    out.extend_from_slice(b"{\"kind\":");
    serde_json::to_writer(&mut out, &format!("{}List", res.kind)).map_err(ApiError::internal)?;
    out.extend_from_slice(b",\"apiVersion\":");
    serde_json::to_writer(&mut out, &res.api_version()).map_err(ApiError::internal)?;
    out.extend_from_slice(b",\"metadata\":");
    serde_json::to_writer(&mut out, &md).map_err(ApiError::internal)?;
    out.extend_from_slice(b",\"items\":[");
    out.extend_from_slice(&body);
    out.extend_from_slice(b"]}");
    Ok(respond(200, "application/json", out))
}

/// Visit the items under `prefix` matching `filters`, at most `limit` (0 = all); `visit` gets the parsed
/// object when matching needed one. Returns the list revision, a continue token and the remaining count.
async fn list_visit(
    ctx: &Ctx,
    prefix: &str,
    filters: &Filters,
    start_after: Option<String>,
    limit: usize,
    mut visit: impl FnMut(&KeyValue, Option<Value>) -> ApiResult<()>,
) -> ApiResult<(u64, Option<String>, Option<usize>)> {
    let r = ctx
        .store
        .list(
            prefix,
            ListOptions {
                start_after,
                limit: None,
            },
        )
        .await?;
    let mut count = 0usize;
    let mut last_key: Option<&str> = None;
    for (i, kv) in r.items.iter().enumerate() {
        let parsed = if filters.empty {
            None
        } else {
            let v = from_kv(kv)?;
            if !filters.matches(&v) {
                continue;
            }
            Some(v)
        };
        if limit > 0 && count == limit {
            let tok = ContinueToken {
                key: last_key.unwrap_or("").to_string(),
                rv: r.revision,
            };
            let cont = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&tok).unwrap_or_default());
            // Exact without selectors (upstream reports it only then); the unfiltered remainder otherwise.
            return Ok((r.revision, Some(cont), Some(r.items.len() - i)));
        }
        visit(kv, parsed)?;
        last_key = Some(kv.key.as_str());
        count += 1;
    }
    Ok((r.revision, None, None))
}

/// Items under `prefix` matching `filters`, at most `limit` (0 = all), with a continue token when more match.
async fn list_filtered(
    ctx: &Ctx,
    prefix: &str,
    filters: &Filters,
    start_after: Option<String>,
    limit: usize,
) -> ApiResult<(Vec<Value>, u64, Option<String>, Option<usize>)> {
    let r = ctx
        .store
        .list(
            prefix,
            ListOptions {
                start_after,
                limit: None,
            },
        )
        .await?;
    let mut items = Vec::new();
    let mut cont = None;
    let mut remaining = None;
    for (i, kv) in r.items.iter().enumerate() {
        let v = from_kv(kv)?;
        if !filters.matches(&v) {
            continue;
        }
        if limit > 0 && items.len() == limit {
            let last_key = r.items[i - 1].key.clone();
            let tok = ContinueToken {
                key: last_key,
                rv: r.revision,
            };
            cont = Some(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(serde_json::to_vec(&tok).unwrap_or_default()),
            );
            // Upstream only reports remainingItemCount without selectors; this is the unfiltered remainder.
            remaining = Some(r.items.len() - i);
            break;
        }
        items.push(v);
    }
    Ok((items, r.revision, cont, remaining))
}

fn table_resp(t: &Value) -> Response<Body> {
    respond(200, TABLE_CT, serde_json::to_vec(t).unwrap_or_default())
}

fn columns_for(res: &Resource) -> Vec<table::Column> {
    let c = table::columns(res.gk());
    if !c.is_empty() {
        return c;
    }
    vec![
        table::Column { name: "Name".into(), type_: "string".into(), format: "name".into(), description: "Name must be unique within a namespace.".into(), priority: 0 },
        table::Column { name: "Age".into(), type_: "string".into(), format: "".into(), description: "CreationTimestamp is a timestamp representing the server time when this object was created.".into(), priority: 0 },
    ]
}

fn age(created: &str, now: jiff::Timestamp) -> String {
    match created.parse::<jiff::Timestamp>() {
        Ok(t) => table::human_duration((now.as_second() - t.as_second()).max(0) as f64),
        Err(_) => "<unknown>".into(),
    }
}

fn cells_for(res: &Resource, v: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let c = table::cells(res.gk(), v, now);
    if !c.is_empty() {
        return c;
    }
    vec![
        json!(name_of(v)),
        json!(age(
            meta(v)["creationTimestamp"].as_str().unwrap_or(""),
            now
        )),
    ]
}

fn partial_metadata(v: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta(v).clone()})
}

fn to_table(
    res: &Resource,
    items: &[Value],
    rv: &str,
    cont: Option<&str>,
    q: &Query,
    headers: bool,
) -> Value {
    let now = jiff::Timestamp::now();
    let include = q
        .get("includeObject")
        .map(|s| s.as_str())
        .unwrap_or("Metadata");
    let rows: Vec<Value> = items
        .iter()
        .map(|v| {
            let mut row = json!({"cells": cells_for(res, v, now)});
            match include {
                "None" => {}
                "Object" => row["object"] = v.clone(),
                _ => row["object"] = partial_metadata(v),
            }
            row
        })
        .collect();
    let mut md = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        md["continue"] = json!(c);
    }
    let cols = if headers {
        serde_json::to_value(columns_for(res)).unwrap_or(json!([]))
    } else {
        json!([])
    };
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": md, "columnDefinitions": cols, "rows": rows})
}

// ---------- writes ----------

struct WriteOpts {
    dry_run: bool,
    manager: String,
    validation: String,
}

impl WriteOpts {
    fn from_query(q: &Query, default_manager: &str) -> ApiResult<Self> {
        let dry_run = match q.get("dryRun").map(|s| s.as_str()) {
            None | Some("") => false,
            Some("All") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "Invalid dryRun value: {other}. Supported values are All"
                )))
            }
        };
        let validation = q
            .get("fieldValidation")
            .cloned()
            .unwrap_or_else(|| "Warn".into());
        if !matches!(validation.as_str(), "Strict" | "Warn" | "Ignore") {
            return Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn, or Strict (got {validation})"
            )));
        }
        let manager = q
            .get("fieldManager")
            .cloned()
            .unwrap_or_else(|| default_manager.to_string());
        Ok(Self {
            dry_run,
            manager,
            validation,
        })
    }
}

/// fieldValidation: Strict → 400 listing unknown fields; Warn → warnings; Ignore → nothing.
fn check_fields(res: &Resource, obj: &Value, opts: &WriteOpts) -> ApiResult<Vec<String>> {
    // A field of the wrong JSON type cannot be decoded at all: 400 whatever fieldValidation says (upstream).
    if let Some(e) = validation::decode_error(res.gk(), obj) {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {e}",
            kind = res.kind,
            v = res.version
        )));
    }
    if opts.validation == "Ignore" {
        return Ok(Vec::new());
    }
    let unknown = validation::unknown_fields(res.gk(), obj);
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    let msgs: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if opts.validation == "Strict" {
        let msg = format!("strict decoding error: {}", msgs.join(", "));
        return Err(ApiError::bad_request(msg));
    }
    Ok(msgs)
}

fn check_type(res: &Resource, obj: &mut Value) -> ApiResult<()> {
    let av = res.api_version();
    match obj.get("apiVersion").and_then(|v| v.as_str()) {
        None | Some("") => {
            obj["apiVersion"] = json!(av);
        }
        Some(a) if a == av => {}
        Some(a) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({a}) does not match the expected API version ({av})"
            )))
        }
    }
    match obj.get("kind").and_then(|v| v.as_str()) {
        None | Some("") => {
            obj["kind"] = json!(res.kind);
        }
        Some(k) if k == res.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )))
        }
    }
    Ok(())
}

fn validate(res: &Resource, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
    let causes = validation::validate(res.gk(), obj, old);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            res.group,
            res.kind,
            name_of(obj),
            &causes,
        ))
    }
}

fn is_service(res: &Resource) -> bool {
    res.group.is_empty() && res.kind == "Service"
}

async fn namespace_exists(ctx: &Ctx, ns: &str) -> ApiResult<Option<Value>> {
    let nsr = registry::find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("no namespaces"))?;
    match ctx.store.get(&nsr.key(None, ns)).await? {
        Some(kv) => Ok(Some(from_kv(&kv)?)),
        None => Ok(None),
    }
}

fn random_suffix() -> String {
    const CH: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| CH[rand::random_range(0..CH.len())] as char)
        .collect()
}

/// Create `obj` (already decoded). Returns the stored object and warnings.
async fn create(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    mut obj: Value,
    q: &Query,
) -> ApiResult<(Value, Vec<String>)> {
    let opts = WriteOpts::from_query(q, "unknown")?;
    check_type(res, &mut obj)?;
    let warnings = check_fields(res, &obj, &opts)?;
    create_prepared(ctx, res, ns, obj, &opts, None)
        .await
        .map(|v| (v, warnings))
}

async fn create_prepared(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    mut obj: Value,
    opts: &WriteOpts,
    ssa_done: Option<()>,
) -> ApiResult<Value> {
    let now = now_rfc3339();
    {
        let m = meta_mut(&mut obj);
        if let Some(ns) = ns {
            match m.get("namespace").and_then(|v| v.as_str()) {
                None | Some("") => {
                    m.insert("namespace".into(), json!(ns));
                }
                Some(x) if x == ns => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
            }
        } else {
            m.remove("namespace");
        }
        let has_name = m
            .get("name")
            .and_then(|v| v.as_str())
            .is_some_and(|s| !s.is_empty());
        if !has_name {
            if let Some(g) = m
                .get("generateName")
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
            {
                let n = format!("{g}{}", random_suffix());
                m.insert("name".into(), json!(n));
            }
        }
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now));
        m.insert("generation".into(), json!(1));
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("selfLink");
    }
    if name_of(&obj).is_empty() {
        return Err(ApiError::invalid(
            res.group,
            res.kind,
            "",
            &[Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value: name or generateName is required".into(),
                field: "metadata.name".into(),
            }],
        ));
    }
    let name = name_of(&obj).to_string();
    if let Some(ns) = ns {
        match namespace_exists(ctx, ns).await? {
            None => return Err(ApiError::not_found("", "namespaces", ns)),
            Some(nsobj) if nsobj["metadata"]["deletionTimestamp"].is_string() => {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!("{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated", res.group_resource()),
                ))
            }
            _ => {}
        }
    }
    if res.group.is_empty() && res.kind == "Namespace" {
        let m = meta_mut(&mut obj);
        let labels = m.entry("labels").or_insert_with(|| json!({}));
        if labels.is_object() {
            labels["kubernetes.io/metadata.name"] = json!(name);
        }
    }
    defaults::apply_defaults(res.gk(), &mut obj);
    validate(res, &obj, None)?;
    if ssa_done.is_none() {
        apply::record_update(res.gk(), None, &mut obj, &opts.manager, &now);
    }
    let key = res.key(ns, &name);
    if is_service(res) {
        ctx.alloc
            .lock()
            .allocate(&mut obj, None, opts.dry_run)
            .map_err(|c| ApiError::invalid(res.group, res.kind, &name, &c))?;
        if opts.dry_run {
            if ctx.store.get(&key).await?.is_some() {
                return Err(ApiError::already_exists(res.group, res.plural, &name));
            }
            return Ok(obj);
        }
        match ctx.store.create(&key, to_stored(&obj)).await {
            Ok(kv) => Ok(with_rv(obj, kv.mod_revision)),
            Err(e) => {
                ctx.alloc.lock().release(&held_by(&obj));
                Err(store_err(res, &name, e))
            }
        }
    } else {
        if opts.dry_run {
            if ctx.store.get(&key).await?.is_some() {
                return Err(ApiError::already_exists(res.group, res.plural, &name));
            }
            return Ok(obj);
        }
        let kv = ctx
            .store
            .create(&key, to_stored(&obj))
            .await
            .map_err(|e| store_err(res, &name, e))?;
        Ok(with_rv(obj, kv.mod_revision))
    }
}

fn store_err(res: &Resource, name: &str, e: skiff_store::Error) -> ApiError {
    match e {
        skiff_store::Error::AlreadyExists(_) => {
            ApiError::already_exists(res.group, res.plural, name)
        }
        skiff_store::Error::Conflict { .. } => ApiError::stale(res.group, res.plural, name),
        skiff_store::Error::NotFound(_) => ApiError::not_found(res.group, res.plural, name),
        other => ApiError::from(other),
    }
}

fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
        o.remove("apiVersion");
        o.remove("kind");
    }
    v
}

fn strip_volatile(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    v
}

enum UpdateOutcome {
    Written(Value),
    /// The store's mod revision moved under us (only retried by callers that did not pin a resourceVersion).
    Stale,
}

/// The common tail of PUT and PATCH: carry over server-owned fields, default, validate, allocate, write with
/// CAS on `cur`'s revision (or delete when the last finalizer of a deleting object went away).
#[allow(clippy::too_many_arguments)]
async fn finish_update(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    cur: &KeyValue,
    mut new: Value,
    sub: Option<&str>,
    opts: &WriteOpts,
    ssa: bool,
) -> ApiResult<UpdateOutcome> {
    let old = from_kv(cur)?;
    let now = now_rfc3339();
    if sub == Some("status") {
        let status = new.get("status").cloned();
        new = old.clone();
        match status {
            Some(s) => new["status"] = s,
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    } else if res.has(Sub::Status) {
        // Writes to the main resource cannot change status.
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    {
        let om = meta(&old).clone();
        let m = meta_mut(&mut new);
        for k in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match om.get(k) {
                Some(v) => {
                    m.insert(k.into(), v.clone());
                }
                None => {
                    m.remove(k);
                }
            }
        }
        m.remove("resourceVersion");
        m.remove("selfLink");
    }
    if res.group.is_empty() && res.kind == "Namespace" {
        let labels = meta_mut(&mut new)
            .entry("labels")
            .or_insert_with(|| json!({}));
        if labels.is_object() {
            labels["kubernetes.io/metadata.name"] = json!(name);
        }
    }
    // Keep allocated values an update omits and drop the ones a type change no longer uses (upstream's
    // PrepareForUpdate + patchAllocatedValues), before defaulting and validation.
    defaults::prepare_for_update(res.gk(), &mut new, &old);
    defaults::apply_defaults(res.gk(), &mut new);
    let old_gen = meta(&old)["generation"].as_i64().unwrap_or(1);
    let gen = if spec_part(&new) != spec_part(&old) {
        old_gen + 1
    } else {
        old_gen
    };
    meta_mut(&mut new).insert("generation".into(), json!(gen));
    validate(res, &new, Some(&old))?;
    if !ssa {
        apply::record_update(res.gk(), Some(&old), &mut new, &opts.manager, &now);
    }
    let key = res.key(ns, name);
    let deleting = meta(&new)["deletionTimestamp"].is_string()
        && meta(&new)["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
    let svc = is_service(res);
    if svc {
        ctx.alloc
            .lock()
            .allocate(&mut new, Some(&old), opts.dry_run)
            .map_err(|c| ApiError::invalid(res.group, res.kind, name, &c))?;
    }
    if strip_volatile(&new) == strip_volatile(&old) && !deleting {
        // No-op update: nothing written, resourceVersion unchanged (as upstream).
        return Ok(UpdateOutcome::Written(old));
    }
    if opts.dry_run {
        return Ok(UpdateOutcome::Written(with_rv(new, cur.mod_revision)));
    }
    if deleting {
        return match ctx.store.delete(&key, Some(cur.mod_revision)).await {
            Ok(kv) => {
                if svc {
                    ctx.alloc.lock().release(&held_by(&old));
                }
                Ok(UpdateOutcome::Written(with_rv(new, kv.mod_revision)))
            }
            Err(skiff_store::Error::Conflict { .. }) | Err(skiff_store::Error::NotFound(_)) => {
                Ok(UpdateOutcome::Stale)
            }
            Err(e) => Err(store_err(res, name, e)),
        };
    }
    match ctx
        .store
        .update(&key, to_stored(&new), cur.mod_revision)
        .await
    {
        Ok(kv) => {
            if svc {
                ctx.alloc
                    .lock()
                    .release_diff(&held_by(&old), &held_by(&new));
            }
            Ok(UpdateOutcome::Written(with_rv(new, kv.mod_revision)))
        }
        Err(e) => {
            if svc {
                // Give back what this attempt newly took.
                ctx.alloc
                    .lock()
                    .release_diff(&held_by(&new), &held_by(&old));
            }
            match e {
                skiff_store::Error::Conflict { .. } => Ok(UpdateOutcome::Stale),
                skiff_store::Error::NotFound(_) => {
                    Err(ApiError::not_found(res.group, res.plural, name))
                }
                other => Err(store_err(res, name, other)),
            }
        }
    }
}

async fn put(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    mut obj: Value,
    q: &Query,
) -> ApiResult<(Value, u16, Vec<String>)> {
    let opts = WriteOpts::from_query(q, "unknown")?;
    if sub == Some("scale") {
        let rv = meta(&obj)["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        for _attempt in 0..UPDATE_ATTEMPTS {
            let cur = get_kv(ctx, res, ns, name).await?;
            if !rv.is_empty() && rv != cur.mod_revision.to_string() {
                return Err(ApiError::stale(res.group, res.plural, name));
            }
            match scale_write(ctx, res, ns, name, cur, &obj, &opts).await? {
                Some(v) => return Ok((v, 200, Vec::new())),
                // without a resourceVersion the write is unconditional: re-read and retry
                None if rv.is_empty() => continue,
                None => return Err(ApiError::stale(res.group, res.plural, name)),
            }
        }
        return Err(ApiError::stale(res.group, res.plural, name));
    }
    check_type(res, &mut obj)?;
    let warnings = check_fields(res, &obj, &opts)?;
    let body_name = name_of(&obj).to_string();
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let rv = meta(&obj)["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string();
    // A PUT without a resourceVersion is an unconditional update (upstream's AllowUnconditionalUpdate): when
    // another writer gets in between our read and our CAS, re-read and write again. Only a PUT that pins a
    // resourceVersion that is no longer current gets 409.
    for _attempt in 0..UPDATE_ATTEMPTS {
        let cur = get_kv(ctx, res, ns, name).await?;
        if !rv.is_empty() && rv != cur.mod_revision.to_string() {
            return Err(ApiError::stale(res.group, res.plural, name));
        }
        match finish_update(ctx, res, ns, name, &cur, obj.clone(), sub, &opts, false).await? {
            UpdateOutcome::Written(v) => return Ok((v, 200, warnings)),
            UpdateOutcome::Stale if rv.is_empty() => continue,
            UpdateOutcome::Stale => return Err(ApiError::stale(res.group, res.plural, name)),
        }
    }
    Err(ApiError::stale(res.group, res.plural, name))
}

/// How often a write without a resourceVersion re-reads and retries after losing a CAS race (upstream's
/// GuaranteedUpdate loops until it wins; a bound keeps a pathological hot object from pinning a request).
const UPDATE_ATTEMPTS: usize = 32;

fn to_scale(v: &Value) -> Value {
    let m = meta(v);
    let selector = v["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|ml| {
            ml.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": v["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": v["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

async fn scale_write(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    cur: KeyValue,
    scale: &Value,
    opts: &WriteOpts,
) -> ApiResult<Option<Value>> {
    let replicas = scale["spec"]["replicas"].as_i64().unwrap_or(0);
    let mut obj = from_kv(&cur)?;
    obj["spec"]["replicas"] = json!(replicas);
    match finish_update(ctx, res, ns, name, &cur, obj, None, opts, false).await? {
        UpdateOutcome::Written(v) => Ok(Some(to_scale(&v))),
        // `cur` changed under us; the caller decides whether to retry
        UpdateOutcome::Stale => Ok(None),
    }
}

#[allow(clippy::too_many_arguments)]
async fn patch_obj(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    h: &HeaderMap,
    q: &Query,
    body: &[u8],
) -> ApiResult<(Value, u16, Vec<String>)> {
    let mt = media_type(h);
    let default_manager = if mt == "application/apply-patch+yaml" {
        ""
    } else {
        "unknown"
    };
    let opts = WriteOpts::from_query(q, default_manager)?;
    let patch_doc: Value = match mt.as_str() {
        "application/json-patch+json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
        "application/apply-patch+yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    let ssa = mt == "application/apply-patch+yaml";
    if ssa && opts.manager.is_empty() {
        return Err(ApiError::bad_request(
            "PATCH, application/apply-patch+yaml requires fieldManager to be set",
        ));
    }
    let force = qbool(q, "force");
    let gk = res.gk();
    let now = now_rfc3339();
    let mut warnings = Vec::new();
    let explicit_rv = patch_sets_resource_version(&mt, &patch_doc);
    for _attempt in 0..UPDATE_ATTEMPTS {
        let cur = match ctx.store.get(&res.key(ns, name)).await? {
            Some(kv) => kv,
            None if ssa && sub.is_none() => {
                let mut applied = patch_doc.clone();
                check_type(res, &mut applied)?;
                warnings = check_fields(res, &applied, &opts)?;
                let body_name = name_of(&applied).to_string();
                if body_name != name {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({body_name}) does not match the name on the URL ({name})"
                    )));
                }
                let obj = apply::server_side_apply(gk, None, &applied, &opts.manager, force, &now)
                    .map_err(apply_err(res, name, None))?;
                let v = create_prepared(ctx, res, ns, obj, &opts, Some(())).await?;
                return Ok((v, 201, warnings));
            }
            None => return Err(ApiError::not_found(res.group, res.plural, name)),
        };
        let live = from_kv(&cur)?;
        if sub == Some("scale") {
            let scale = to_scale(&live);
            let patched = apply_patch_doc(
                &mt,
                GroupKind {
                    group: "autoscaling",
                    kind: "Scale",
                },
                &scale,
                &patch_doc,
            )?;
            let pinned = pinned_rv(explicit_rv, &patched);
            if !pinned.is_empty() && pinned != cur.mod_revision.to_string() {
                return Err(ApiError::stale(res.group, res.plural, name));
            }
            match scale_write(ctx, res, ns, name, cur, &patched, &opts).await? {
                Some(v) => return Ok((v, 200, warnings)),
                None if pinned.is_empty() => continue,
                None => return Err(ApiError::stale(res.group, res.plural, name)),
            }
        }
        let new = if ssa {
            let mut applied = patch_doc.clone();
            check_type(res, &mut applied)?;
            warnings = check_fields(res, &applied, &opts)?;
            apply::server_side_apply(gk, Some(&live), &applied, &opts.manager, force, &now)
                .map_err(apply_err(res, name, Some(&live)))?
        } else {
            let new = apply_patch_doc(&mt, gk, &live, &patch_doc)?;
            warnings = check_fields(res, &new, &opts)?;
            new
        };
        let pinned = pinned_rv(explicit_rv, &new);
        if !pinned.is_empty() && pinned != cur.mod_revision.to_string() {
            return Err(ApiError::stale(res.group, res.plural, name));
        }
        match finish_update(ctx, res, ns, name, &cur, new, sub, &opts, ssa).await? {
            UpdateOutcome::Written(v) => return Ok((v, 200, warnings)),
            UpdateOutcome::Stale if pinned.is_empty() => continue,
            UpdateOutcome::Stale => return Err(ApiError::stale(res.group, res.plural, name)),
        }
    }
    Err(ApiError::stale(res.group, res.plural, name))
}

/// Whether the patch itself names a resourceVersion (a precondition, upstream: 409 when stale). The patched
/// object always carries the live one, which must not count: without it the patch is retried on conflict.
fn patch_sets_resource_version(mt: &str, doc: &Value) -> bool {
    if mt == "application/json-patch+json" {
        doc.as_array().is_some_and(|ops| {
            ops.iter().any(|op| {
                op["path"]
                    .as_str()
                    .is_some_and(|p| p == "/metadata/resourceVersion" || p == "/metadata")
            })
        })
    } else {
        doc.pointer("/metadata/resourceVersion")
            .is_some_and(|v| !v.is_null())
    }
}

/// The resourceVersion a patch pins (empty when it pins none).
fn pinned_rv(explicit: bool, patched: &Value) -> String {
    if !explicit {
        return String::new();
    }
    meta(patched)["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn apply_patch_doc(mt: &str, gk: GroupKind<'_>, live: &Value, doc: &Value) -> ApiResult<Value> {
    let r = match mt {
        "application/json-patch+json" => patch::apply_json_patch(live, doc),
        "application/merge-patch+json" => patch::apply_merge_patch(live, doc),
        _ => patch::apply_strategic_merge_patch(gk, live, doc),
    };
    r.map_err(|e| match e {
        patch::PatchError::Malformed(m) => ApiError::bad_request(m),
        patch::PatchError::Unprocessable(m) => ApiError::new(422, "Invalid", m),
    })
}

fn apply_err<'a>(
    res: &'a Resource,
    name: &'a str,
    live: Option<&'a Value>,
) -> impl Fn(apply::ApplyError) -> ApiError + 'a {
    move |e| match e {
        apply::ApplyError::Conflicts(cs) => {
            // upstream names Update managers with their apiVersion (`... using apps/v1: .spec.replicas`)
            let msg = apply::conflict_message(&cs, live);
            let causes: Vec<Value> = cs
                .iter()
                .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field}))
                .collect();
            let mut e = ApiError::new(409, "Conflict", msg);
            e.details = Some(
                json!({"name": name, "group": res.group, "kind": res.plural, "causes": causes}),
            );
            e
        }
        apply::ApplyError::Invalid(m) => ApiError::bad_request(m),
    }
}

/// What upstream's binding REST does to the pod besides spec.nodeName (`setPodHostAndAnnotations`): copy the
/// Binding's annotations and mark the pod `PodScheduled=True` (a condition already True keeps its transition
/// time, as `UpdatePodCondition`).
fn set_pod_scheduled(pod: &mut Value, binding: &Value, now: &str) {
    if let Some(ann) = binding["metadata"]["annotations"].as_object() {
        let m = meta_mut(pod);
        let pa = m.entry("annotations").or_insert_with(|| json!({}));
        if !pa.is_object() {
            *pa = json!({});
        }
        for (k, v) in ann {
            pa[k] = v.clone();
        }
    }
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    let status = &mut pod["status"];
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    let mut cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    if let Some(conds) = status["conditions"].as_array_mut() {
        match conds.iter_mut().find(|c| c["type"] == "PodScheduled") {
            Some(c) => {
                if c["status"] == "True" && c["lastTransitionTime"].is_string() {
                    cond["lastTransitionTime"] = c["lastTransitionTime"].clone();
                }
                *c = cond;
            }
            None => conds.push(cond),
        }
    }
}

/// `POST pods/{name}/binding` (the scheduler): set spec.nodeName once.
async fn bind_pod(
    ctx: &Ctx,
    res: &'static Resource,
    ns: &str,
    name: &str,
    binding: &Value,
    q: &Query,
) -> ApiResult<Response<Body>> {
    let opts = WriteOpts::from_query(q, "unknown")?;
    let node = binding["target"]["name"].as_str().unwrap_or("").to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            name,
            &[Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value".into(),
                field: "target.name".into(),
            }],
        ));
    }
    for _ in 0..8 {
        let cur = get_kv(ctx, res, Some(ns), name).await?;
        let mut pod = from_kv(&cur)?;
        if let Some(n) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                "",
                "pods/binding",
                name,
                &format!("pod {name} is already assigned to node \"{n}\""),
            ));
        }
        if meta(&pod)["deletionTimestamp"].is_string() {
            return Err(ApiError::conflict(
                "",
                "pods/binding",
                name,
                &format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        pod["spec"]["nodeName"] = json!(node);
        set_pod_scheduled(&mut pod, binding, &now_rfc3339());
        if opts.dry_run {
            break;
        }
        match ctx
            .store
            .update(&res.key(Some(ns), name), to_stored(&pod), cur.mod_revision)
            .await
        {
            Ok(_) => break,
            Err(skiff_store::Error::Conflict { .. }) => continue,
            Err(e) => return Err(store_err(res, name, e)),
        }
    }
    Ok(json_resp(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

// ---------- delete ----------

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteOptions {
    #[serde(default)]
    dry_run: Vec<String>,
    grace_period_seconds: Option<i64>,
    #[serde(default)]
    preconditions: Option<Preconditions>,
    propagation_policy: Option<String>,
    orphan_dependents: Option<bool>,
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Preconditions {
    uid: Option<String>,
    resource_version: Option<String>,
}

fn delete_options(q: &Query, body: &[u8]) -> ApiResult<DeleteOptions> {
    let mut o: DeleteOptions = if body.iter().all(|b| b.is_ascii_whitespace()) {
        DeleteOptions::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    if q.get("dryRun").is_some_and(|v| v == "All") {
        o.dry_run.push("All".into());
    }
    if let Some(p) = q.get("propagationPolicy").filter(|p| !p.is_empty()) {
        o.propagation_policy = Some(p.clone());
    }
    if let Some(g) = q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()) {
        o.grace_period_seconds = Some(g);
    }
    Ok(o)
}

const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

async fn delete(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    q: &Query,
    body: &[u8],
) -> ApiResult<Value> {
    let opts = delete_options(q, body)?;
    delete_one(ctx, res, ns, name, &opts).await
}

async fn delete_one(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> ApiResult<Value> {
    let dry = opts.dry_run.iter().any(|d| d == "All");
    let is_ns = res.group.is_empty() && res.kind == "Namespace";
    if is_ns && PROTECTED_NAMESPACES.contains(&name) {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
        ));
    }
    for _ in 0..8 {
        let cur = get_kv(ctx, res, ns, name).await?;
        let obj = from_kv(&cur)?;
        if let Some(p) = &opts.preconditions {
            let uid = meta(&obj)["uid"].as_str().unwrap_or("");
            if let Some(u) = p.uid.as_deref().filter(|u| *u != uid) {
                return Err(ApiError::conflict(
                    res.group,
                    res.plural,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {u}, UID in object meta: {uid}"
                    ),
                ));
            }
            let rv = cur.mod_revision.to_string();
            if let Some(r) = p.resource_version.as_deref().filter(|r| *r != rv) {
                return Err(ApiError::conflict(res.group, res.plural, name, &format!("Precondition failed: ResourceVersion in precondition: {r}, ResourceVersion in object meta: {rv}")));
            }
        }
        if dry {
            return Ok(obj);
        }
        // Foreground / Orphan propagation: the garbage collector (controllers) finishes the deletion once the
        // dependents are gone / released, then removes this finalizer.
        let propagation_finalizer = match opts.propagation_policy.as_deref() {
            Some("Foreground") if !is_ns => Some("foregroundDeletion"),
            Some("Orphan") if !is_ns => Some("orphan"),
            _ if opts.orphan_dependents == Some(true) && !is_ns => Some("orphan"),
            _ => None,
        };
        let mut obj = obj;
        let mut added_finalizer = false;
        if let Some(f) = propagation_finalizer {
            let m = meta_mut(&mut obj);
            let list = m.entry("finalizers").or_insert_with(|| json!([]));
            if let Some(a) = list.as_array_mut() {
                if !a.iter().any(|x| x == f) {
                    a.push(json!(f));
                    added_finalizer = true;
                }
            }
        }
        let has_finalizers = meta(&obj)["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        // Pods bound to a node terminate gracefully: the kubelet deletes them (grace 0) once stopped.
        let graceful_pod = res.group.is_empty()
            && res.kind == "Pod"
            && obj["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            && opts.grace_period_seconds != Some(0);
        let already_terminating = meta(&obj)["deletionTimestamp"].is_string();
        if has_finalizers || (graceful_pod && !already_terminating) {
            if already_terminating && !added_finalizer {
                return Ok(obj);
            }
            let grace = opts
                .grace_period_seconds
                .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(if graceful_pod { 30 } else { 0 });
            let mut new = obj.clone();
            let when = jiff::Timestamp::now()
                + jiff::SignedDuration::from_secs(if has_finalizers && !graceful_pod {
                    0
                } else {
                    grace
                });
            let m = meta_mut(&mut new);
            if !already_terminating {
                m.insert(
                    "deletionTimestamp".into(),
                    json!(when.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                );
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            m.remove("resourceVersion");
            match ctx
                .store
                .update(&res.key(ns, name), to_stored(&new), cur.mod_revision)
                .await
            {
                Ok(kv) => return Ok(with_rv(new, kv.mod_revision)),
                Err(skiff_store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(store_err(res, name, e)),
            }
        }
        if is_ns {
            delete_namespace_contents(ctx, name).await?;
        }
        match ctx
            .store
            .delete(&res.key(ns, name), Some(cur.mod_revision))
            .await
        {
            Ok(kv) => {
                if is_service(res) {
                    ctx.alloc.lock().release(&held_by(&obj));
                }
                return Ok(with_rv(obj, kv.mod_revision));
            }
            Err(skiff_store::Error::Conflict { .. }) => continue,
            Err(e) => return Err(store_err(res, name, e)),
        }
    }
    Err(ApiError::stale(res.group, res.plural, name))
}

/// What upstream's namespace controller does, done synchronously: remove every namespaced object in it.
async fn delete_namespace_contents(ctx: &Ctx, ns: &str) -> ApiResult<()> {
    for r in registry::RESOURCES.iter().filter(|r| r.namespaced) {
        let items = ctx
            .store
            .list(&r.ns_prefix(Some(ns)), ListOptions::default())
            .await?;
        for kv in items.items {
            match ctx.store.delete(&kv.key, None).await {
                Ok(deleted) => {
                    if let (true, Ok(v)) = (
                        is_service(r),
                        serde_json::from_slice::<Value>(&deleted.value),
                    ) {
                        ctx.alloc.lock().release(&held_by(&v));
                    }
                }
                Err(skiff_store::Error::NotFound(_)) => {}
                Err(e) => return Err(ApiError::from(e)),
            }
        }
    }
    Ok(())
}

async fn delete_collection(
    ctx: &Ctx,
    res: &'static Resource,
    ns: Option<&str>,
    q: &Query,
    body: &[u8],
) -> ApiResult<Response<Body>> {
    let opts = delete_options(q, body)?;
    let filters = Filters::from_query(q, res)?;
    let (items, rev, _, _) = list_filtered(ctx, &res.ns_prefix(ns), &filters, None, 0).await?;
    let mut deleted = Vec::new();
    for v in items {
        let name = name_of(&v).to_string();
        let ns = meta(&v)["namespace"].as_str().map(|s| s.to_string());
        match delete_one(ctx, res, ns.as_deref(), &name, &opts).await {
            Ok(d) => deleted.push(d),
            Err(e) if e.code == 404 || e.code == 403 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_resp(
        200,
        &json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": {"resourceVersion": rev.to_string()}, "items": deleted}),
    ))
}

// ---------- watch ----------

async fn watch(
    ctx: &Arc<Ctx>,
    res: &'static Resource,
    ns: Option<&str>,
    name: Option<&str>,
    q: &Query,
    h: &HeaderMap,
) -> ApiResult<Response<Body>> {
    let filters = Filters::from_query(q, res)?;
    let table = wants_table(h);
    let bookmarks = qbool(q, "allowWatchBookmarks");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0);
    let rv = q.get("resourceVersion").cloned().unwrap_or_default();
    let send_initial = q.get("sendInitialEvents").map(|v| v == "true");
    let prefix = match name {
        Some(n) => res.key(ns, n),
        None => res.ns_prefix(ns),
    };
    let exact_key = name.map(|_| prefix.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    // Initial state: synthetic ADDED events for a watch without a resourceVersion (or with sendInitialEvents).
    let mut initial = Vec::new();
    let start_rev: u64;
    let initial_mode = rv.is_empty() || rv == "0" || send_initial == Some(true);
    if initial_mode {
        let l = ctx.store.list(&prefix, ListOptions::default()).await?;
        for kv in &l.items {
            if exact_key.as_ref().is_some_and(|k| *k != kv.key) {
                continue;
            }
            let v = from_kv(kv)?;
            if filters.matches(&v) {
                initial.push(v);
            }
        }
        start_rev = if rv.is_empty() || rv == "0" {
            l.revision
        } else {
            rv.parse().unwrap_or(l.revision).max(l.revision)
        };
    } else {
        start_rev = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
    }
    let mut w = match ctx.store.watch(&prefix, start_rev).await {
        Ok(w) => Some(w),
        Err(skiff_store::Error::TooOld { requested, oldest }) => {
            // Upstream replies 200 with one ERROR event carrying a 410 Status.
            let st = ApiError::gone(format!("too old resource version: {requested} ({oldest})"))
                .to_json();
            let _ = tx.try_send(event_line("ERROR", &st));
            None
        }
        Err(e) => return Err(e.into()),
    };
    let kind = res.kind;
    let api_version = res.api_version();
    let q = q.clone();
    let stop = ctx.stop.clone();
    tokio::spawn(async move {
        let mut first_table = true;
        let encode = |ty: &str, obj: Value, first: &mut bool| -> Bytes {
            if table {
                let t = to_table(res, &[obj], "", None, &q, *first);
                *first = false;
                event_line(ty, &t)
            } else {
                event_line(ty, &obj)
            }
        };
        for v in initial {
            if tx.send(encode("ADDED", v, &mut first_table)).await.is_err() {
                return;
            }
        }
        if send_initial == Some(true) && bookmarks {
            let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": start_rev.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
            if tx.send(event_line("BOOKMARK", &bm)).await.is_err() {
                return;
            }
        }
        let Some(w) = w.as_mut() else { return };
        let deadline = timeout.map(|t| tokio::time::Instant::now() + Duration::from_secs(t));
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        let mut last_rev = start_rev;
        loop {
            let sleep_until = deadline
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600 * 24));
            tokio::select! {
                ev = w.recv() => {
                    let Some(Ok(ev)) = ev else { return };
                    last_rev = ev.revision();
                    if exact_key.as_ref().is_some_and(|k| *k != ev.kv.key) {
                        continue;
                    }
                    let line = if filters.empty && !table {
                        raw_event_line(&ev)
                    } else {
                        convert_event(&ev, &filters, |ty, obj| encode(ty, obj, &mut first_table))
                    };
                    let Some(line) = line else { continue };
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": last_rev.to_string()}});
                    if tx.send(event_line("BOOKMARK", &bm)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(sleep_until) => return,
                _ = tx.closed() => return,
                // server shutdown: end the stream (drops the store watcher)
                _ = stopped(stop.clone()) => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    let ct = if table { TABLE_CT } else { "application/json" };
    if let Ok(v) = ct.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    Ok(r)
}

fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut b = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

/// Map a store event to a watch event under the selectors: leaving the selection is DELETED, entering ADDED.
/// A watch line built from the stored bytes (no selector, JSON): no parse per watcher.
fn raw_event_line(ev: &skiff_store::Event) -> Option<Bytes> {
    let ty = match (ev.kind, ev.prev.is_some()) {
        (EventType::Delete, _) => "DELETED",
        (EventType::Put, false) => "ADDED",
        (EventType::Put, true) => "MODIFIED",
    };
    let mut b = Vec::with_capacity(ev.kv.value.len() + 64);
    b.extend_from_slice(b"{\"type\":\"");
    b.extend_from_slice(ty.as_bytes());
    b.extend_from_slice(b"\",\"object\":");
    kv_json(&ev.kv, &mut b).ok()?;
    b.extend_from_slice(b"}\n");
    Some(Bytes::from(b))
}

fn convert_event(
    ev: &skiff_store::Event,
    filters: &Filters,
    mut enc: impl FnMut(&str, Value) -> Bytes,
) -> Option<Bytes> {
    let new = from_kv(&ev.kv).ok()?;
    let prev = ev.prev.as_ref().and_then(|p| from_kv(p).ok());
    match ev.kind {
        EventType::Delete => filters.matches(&new).then(|| enc("DELETED", new)),
        EventType::Put => {
            let now_m = filters.matches(&new);
            let was_m = prev.as_ref().is_some_and(|p| filters.matches(p));
            match (prev.is_some(), was_m, now_m) {
                (false, _, true) => Some(enc("ADDED", new)),
                (true, true, true) => Some(enc("MODIFIED", new)),
                (true, false, true) => Some(enc("ADDED", new)),
                (true, true, false) => {
                    // Upstream reports the object's new state in the DELETED event.
                    Some(enc("DELETED", new))
                }
                _ => None,
            }
        }
    }
}

// ---------- bootstrap ----------

/// Create the system namespaces and the `kubernetes` Service with its Endpoints and EndpointSlice
/// (pointing at the advertise address); refresh the endpoints on every start.
pub async fn bootstrap(ctx: &Arc<Ctx>) -> Result<(), Error> {
    let berr = |e: ApiError| Error::Bootstrap(e.message);
    let opts = WriteOpts {
        dry_run: false,
        manager: "skiff-apiserver".into(),
        validation: "Ignore".into(),
    };
    let nsr = registry::find("", "v1", "namespaces")
        .ok_or_else(|| Error::Bootstrap("namespaces".into()))?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        if ctx.store.get(&nsr.key(None, ns)).await?.is_none() {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            create_prepared(ctx, nsr, None, obj, &opts, None)
                .await
                .map_err(berr)?;
        }
    }
    let svcr =
        registry::find("", "v1", "services").ok_or_else(|| Error::Bootstrap("services".into()))?;
    let first_ip = ctx.alloc.lock().first_ip().to_string();
    if ctx
        .store
        .get(&svcr.key(Some("default"), "kubernetes"))
        .await?
        .is_none()
    {
        let obj = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": first_ip, "sessionAffinity": "None",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": ctx.port}]},
        });
        create_prepared(ctx, svcr, Some("default"), obj, &opts, None)
            .await
            .map_err(berr)?;
    } else {
        // Keep the targetPort in step with the port actually served.
        let cur = get_kv(ctx, svcr, Some("default"), "kubernetes")
            .await
            .map_err(berr)?;
        let mut v = from_kv(&cur).map_err(berr)?;
        if v["spec"]["ports"][0]["targetPort"] != json!(ctx.port) {
            v["spec"]["ports"][0]["targetPort"] = json!(ctx.port);
            finish_update(
                ctx,
                svcr,
                Some("default"),
                "kubernetes",
                &cur,
                v,
                None,
                &opts,
                false,
            )
            .await
            .map_err(berr)?;
        }
    }
    let ip = ctx.advertise.to_string();
    let ep = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": ctx.port, "protocol": "TCP"}]}],
    });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": if ctx.advertise.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "https", "port": ctx.port, "protocol": "TCP"}],
    });
    for (plural, group, obj) in [
        ("endpoints", "", ep),
        ("endpointslices", "discovery.k8s.io", slice),
    ] {
        let r =
            registry::find(group, "v1", plural).ok_or_else(|| Error::Bootstrap(plural.into()))?;
        match ctx.store.get(&r.key(Some("default"), "kubernetes")).await? {
            None => {
                create_prepared(ctx, r, Some("default"), obj, &opts, None)
                    .await
                    .map_err(berr)?;
            }
            Some(cur) => {
                let mut new = from_kv(&cur).map_err(berr)?;
                for k in ["subsets", "endpoints", "ports", "addressType"] {
                    if let Some(x) = obj.get(k) {
                        new[k] = x.clone();
                    }
                }
                finish_update(
                    ctx,
                    r,
                    Some("default"),
                    "kubernetes",
                    &cur,
                    new,
                    None,
                    &opts,
                    false,
                )
                .await
                .map_err(berr)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_splices_resource_version() {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "resourceVersion": "3"}, "data": {"metadata": "x"}});
        let raw = to_stored(&obj);
        assert_eq!(
            String::from_utf8_lossy(&raw),
            r#"{"metadata":{"name":"a"},"apiVersion":"v1","kind":"ConfigMap","data":{"metadata":"x"}}"#
        );
        let kv = KeyValue {
            key: "/k".into(),
            value: raw.into(),
            create_revision: 1,
            mod_revision: 42,
        };
        let mut out = Vec::new();
        kv_json(&kv, &mut out).expect("splice");
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"{"metadata":{"resourceVersion":"42","name":"a"},"apiVersion":"v1","kind":"ConfigMap","data":{"metadata":"x"}}"#
        );
        let empty = KeyValue {
            key: "/k".into(),
            value: to_stored(&json!({"kind": "X"})).into(),
            create_revision: 1,
            mod_revision: 7,
        };
        out.clear();
        kv_json(&empty, &mut out).expect("splice");
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"{"metadata":{"resourceVersion":"7"},"kind":"X"}"#
        );
    }

    #[test]
    fn query_decoding() {
        let q = parse_query(Some(
            "labelSelector=app%3Dweb%2Ctier+in+%28a%29&limit=500&dryRun=All",
        ));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["limit"], "500");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
