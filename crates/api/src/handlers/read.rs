//! GET of one object and lists: label/field selectors, paging with continue tokens, server-side Tables.

use super::*;

pub(super) async fn get_kv(
    ctx: &Ctx,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
) -> ApiResult<KeyValue> {
    ctx.store
        .get(&res.key(ns, name))
        .await?
        .ok_or_else(|| ApiError::not_found(res.group, res.plural, name))
}

pub(super) async fn get_obj(
    ctx: &Ctx,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
) -> ApiResult<Value> {
    from_kv(&get_kv(ctx, res, ns, name).await?)
}

pub(super) struct Filters {
    pub(super) labels: selector::LabelSelector,
    pub(super) fields: selector::FieldSelector,
    /// No selector given: everything matches (lets hot paths skip parsing objects).
    pub(super) empty: bool,
}

impl Filters {
    pub(super) fn from_query(q: &Query, res: &Resource) -> ApiResult<Self> {
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
    pub(super) fn matches(&self, v: &Value) -> bool {
        if self.empty {
            return true;
        }
        self.labels.matches(meta(v).get("labels")) && self.fields.matches(v)
    }
}

/// Upstream's message when a continue token's revision has been compacted.
const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct ContinueToken {
    #[serde(rename = "k")]
    pub(super) key: String,
    #[serde(rename = "rv")]
    pub(super) rv: u64,
}

pub(super) async fn list(
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
            Some(tok)
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
pub(super) async fn list_visit(
    ctx: &Ctx,
    prefix: &str,
    filters: &Filters,
    start_after: Option<ContinueToken>,
    limit: usize,
    mut visit: impl FnMut(&KeyValue, Option<Value>) -> ApiResult<()>,
) -> ApiResult<(u64, Option<String>, Option<usize>)> {
    let pinned = start_after.is_some();
    // Later pages read the first page's revision (one consistent list, as upstream's continue tokens).
    let r = ctx
        .store
        .list(
            prefix,
            ListOptions {
                revision: start_after.as_ref().map(|t| t.rv).filter(|r| *r > 0),
                start_after: start_after.map(|t| t.key),
                limit: None,
            },
        )
        .await
        .map_err(|e| match e {
            skiff_store::Error::TooOld { .. } if pinned => ApiError::gone(CONTINUE_EXPIRED),
            e => ApiError::from(e),
        })?;
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
pub(super) async fn list_filtered(
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
                ..Default::default()
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

pub(super) fn table_resp(t: &Value) -> Response<Body> {
    respond(200, TABLE_CT, serde_json::to_vec(t).unwrap_or_default())
}

pub(super) fn columns_for(res: &Resource) -> Vec<table::Column> {
    let c = table::columns(res.gk());
    if !c.is_empty() {
        return c;
    }
    vec![
        table::Column { name: "Name".into(), type_: "string".into(), format: "name".into(), description: "Name must be unique within a namespace.".into(), priority: 0 },
        table::Column { name: "Age".into(), type_: "string".into(), format: "".into(), description: "CreationTimestamp is a timestamp representing the server time when this object was created.".into(), priority: 0 },
    ]
}

pub(super) fn age(created: &str, now: jiff::Timestamp) -> String {
    match created.parse::<jiff::Timestamp>() {
        Ok(t) => table::human_duration((now.as_second() - t.as_second()).max(0) as f64),
        Err(_) => "<unknown>".into(),
    }
}

pub(super) fn cells_for(res: &Resource, v: &Value, now: jiff::Timestamp) -> Vec<Value> {
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

pub(super) fn partial_metadata(v: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta(v).clone()})
}

pub(super) fn to_table(
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
