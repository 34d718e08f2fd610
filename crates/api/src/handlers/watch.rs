//! Watches: store events to watch lines under selectors, bookmarks, resume from a resourceVersion.

use super::*;

pub(super) async fn watch(
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
                    let ev = match ev {
                        Some(Ok(ev)) => ev,
                        Some(Err(e @ skiff_store::Error::TooOld { .. })) => {
                            // History compacted under a running watch (etcd): the client re-lists on 410.
                            let _ = tx.send(event_line("ERROR", &ApiError::from(e).to_json())).await;
                            return;
                        }
                        _ => return,
                    };
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

pub(super) fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut b = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

/// Map a store event to a watch event under the selectors: leaving the selection is DELETED, entering ADDED.
/// A watch line built from the stored bytes (no selector, JSON): no parse per watcher.
pub(super) fn raw_event_line(ev: &skiff_store::Event) -> Option<Bytes> {
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

pub(super) fn convert_event(
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
