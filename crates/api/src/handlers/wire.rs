//! Responses, and request decoding shared by every handler: query strings, media types, object bodies, the stored form of objects.

use super::*;

pub(super) fn respond(code: u16, ct: &str, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = ct.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

pub(super) fn json_resp(code: u16, v: &Value) -> Response<Body> {
    respond(
        code,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

pub(super) fn err_resp(e: &ApiError) -> Response<Body> {
    json_resp(e.code, &e.to_json())
}

pub(super) fn add_warnings(r: &mut Response<Body>, warnings: &[String]) {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = text.parse() {
            r.headers_mut().append("Warning", v);
        }
    }
}

// ---------- request parsing helpers ----------

pub(super) fn percent_decode(s: &str) -> String {
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

pub(super) type Query = HashMap<String, String>;

pub(super) fn parse_query(q: Option<&str>) -> Query {
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

pub(super) fn qbool(q: &Query, k: &str) -> bool {
    q.get(k).map(|v| v == "true" || v == "1").unwrap_or(false)
}

pub(super) fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub(super) fn header<'a>(h: &'a HeaderMap, k: &str) -> &'a str {
    h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("")
}

pub(super) fn media_type(h: &HeaderMap) -> String {
    header(h, "content-type")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

pub(super) fn wants_table(h: &HeaderMap) -> bool {
    header(h, "accept").split(',').any(|m| {
        let p: Vec<&str> = m.split(';').map(|x| x.trim()).collect();
        p.contains(&"as=Table") && p.contains(&"g=meta.k8s.io")
    })
}

/// Decode an object body by Content-Type: JSON (or missing), YAML, or Kubernetes protobuf.
pub(super) fn decode_object(h: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
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

pub(super) fn meta(v: &Value) -> &Value {
    &v["metadata"]
}

pub(super) fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v["metadata"].is_object() {
        v["metadata"] = json!({});
    }
    match &mut v["metadata"] {
        Value::Object(m) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

pub(super) fn name_of(v: &Value) -> &str {
    meta(v)["name"].as_str().unwrap_or("")
}

/// A stored object with its resourceVersion filled in from the store.
pub(super) fn from_kv(kv: &KeyValue) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value).map_err(ApiError::internal)?;
    meta_mut(&mut v).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    Ok(v)
}

/// The stored form: metadata first (without resourceVersion), so reads can splice the resourceVersion in
/// without parsing (see [`kv_json`]).
pub(super) fn to_stored(v: &Value) -> Vec<u8> {
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

pub(super) const STORED_PREFIX: &[u8] = b"{\"metadata\":{";

/// A stored object's JSON with its resourceVersion, by splicing bytes when the stored form starts with the
/// metadata object (always, for objects this server wrote); otherwise by parsing.
pub(super) fn kv_json(kv: &KeyValue, out: &mut Vec<u8>) -> ApiResult<()> {
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

pub(super) fn with_rv(mut v: Value, rev: u64) -> Value {
    meta_mut(&mut v).insert("resourceVersion".into(), json!(rev.to_string()));
    v
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
