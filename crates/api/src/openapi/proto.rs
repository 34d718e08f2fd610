//! The v2 document as gnostic's `openapi_v2.Document` protobuf (github.com/google/gnostic
//! `openapiv2/OpenAPIv2.proto`), which kubectl's discovery client asks for and decodes. Only what the
//! documents carry is encoded: the document's version and info, and the definitions with every schema
//! field Kubernetes uses; vendor extensions (`x-kubernetes-*`) as `NamedAny` with the value's YAML (JSON
//! is YAML). Pure.

use serde_json::Value;

/// A protobuf message being written.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    fn message(&mut self, field: u32, m: Msg) {
        self.bytes(field, &m.0);
    }

    fn bool(&mut self, field: u32, b: bool) {
        if b {
            self.key(field, 0);
            self.varint(1);
        }
    }

    fn int64(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v as u64);
        }
    }

    fn double(&mut self, field: u32, v: f64) {
        if v != 0.0 {
            self.key(field, 1);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// `Any { yaml = 2 }`.
fn any(v: &Value) -> Msg {
    let mut m = Msg::default();
    m.string(2, &v.to_string());
    m
}

/// `NamedAny { name = 1, value = 2 }`.
fn named_any(name: &str, v: &Value) -> Msg {
    let mut m = Msg::default();
    m.string(1, name);
    m.message(2, any(v));
    m
}

fn named_schema(name: &str, v: &Value) -> Msg {
    let mut m = Msg::default();
    m.string(1, name);
    m.message(2, schema(v));
    m
}

/// `Schema` (field numbers of OpenAPIv2.proto).
fn schema(v: &Value) -> Msg {
    let mut m = Msg::default();
    let Some(o) = v.as_object() else {
        return m;
    };
    let s = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or_default();
    let f = |k: &str| o.get(k).and_then(Value::as_f64).unwrap_or_default();
    let i = |k: &str| o.get(k).and_then(Value::as_i64).unwrap_or_default();
    let b = |k: &str| o.get(k).and_then(Value::as_bool).unwrap_or_default();
    m.string(1, s("$ref"));
    m.string(2, s("format"));
    m.string(3, s("title"));
    m.string(4, s("description"));
    if let Some(d) = o.get("default") {
        m.message(5, any(d));
    }
    m.double(6, f("multipleOf"));
    m.double(7, f("maximum"));
    m.bool(8, b("exclusiveMaximum"));
    m.double(9, f("minimum"));
    m.bool(10, b("exclusiveMinimum"));
    m.int64(11, i("maxLength"));
    m.int64(12, i("minLength"));
    m.string(13, s("pattern"));
    m.int64(14, i("maxItems"));
    m.int64(15, i("minItems"));
    m.bool(16, b("uniqueItems"));
    m.int64(17, i("maxProperties"));
    m.int64(18, i("minProperties"));
    for r in o
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.string(19, r.as_str().unwrap_or_default());
    }
    for e in o
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(20, any(e));
    }
    match o.get("additionalProperties") {
        Some(Value::Bool(flag)) => {
            let mut item = Msg::default();
            // A oneof member is written even when false.
            item.key(2, 0);
            item.varint(*flag as u64);
            m.message(21, item);
        }
        Some(ap @ Value::Object(_)) => {
            let mut item = Msg::default();
            item.message(1, schema(ap));
            m.message(21, item);
        }
        _ => {}
    }
    match o.get("type") {
        Some(Value::String(t)) => {
            let mut item = Msg::default();
            item.string(1, t);
            m.message(22, item);
        }
        Some(Value::Array(ts)) => {
            let mut item = Msg::default();
            for t in ts {
                item.string(1, t.as_str().unwrap_or_default());
            }
            m.message(22, item);
        }
        _ => {}
    }
    match o.get("items") {
        Some(Value::Array(xs)) => {
            let mut item = Msg::default();
            for x in xs {
                item.message(1, schema(x));
            }
            m.message(23, item);
        }
        Some(x @ Value::Object(_)) => {
            let mut item = Msg::default();
            item.message(1, schema(x));
            m.message(23, item);
        }
        _ => {}
    }
    for x in o
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(24, schema(x));
    }
    if let Some(props) = o.get("properties").and_then(Value::as_object) {
        let mut p = Msg::default();
        for (name, x) in props {
            p.message(1, named_schema(name, x));
        }
        m.message(25, p);
    }
    m.string(26, s("discriminator"));
    m.bool(27, b("readOnly"));
    if let Some(x) = o.get("example") {
        m.message(30, any(x));
    }
    for (k, x) in o {
        if k.starts_with("x-") {
            m.message(31, named_any(k, x));
        }
    }
    m
}

/// `Document { swagger = 1, info = 2, paths = 8, definitions = 9 }`.
pub fn document(doc: &Value) -> Vec<u8> {
    let mut m = Msg::default();
    m.string(1, doc["swagger"].as_str().unwrap_or("2.0"));
    let mut info = Msg::default();
    info.string(1, doc["info"]["title"].as_str().unwrap_or_default());
    info.string(2, doc["info"]["version"].as_str().unwrap_or_default());
    m.message(2, info);
    m.message(8, Msg::default());
    let mut defs = Msg::default();
    for (name, x) in doc["definitions"].as_object().into_iter().flatten() {
        defs.message(1, named_schema(name, x));
    }
    m.message(9, defs);
    m.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_fields_use_gnostics_numbers() {
        let bytes = schema(&json!({"type": "string", "description": "d", "x-k": 1})).0;
        // description (4, "d"), type (22, TypeItem{value: "string"}), vendor_extension (31, NamedAny).
        let mut expected = vec![0x22, 1, b'd', 0xb2, 0x01, 8, 0x0a, 6];
        expected.extend_from_slice(b"string");
        expected.extend_from_slice(&[0xfa, 0x01, 10, 0x0a, 3]);
        expected.extend_from_slice(b"x-k");
        expected.extend_from_slice(&[0x12, 3, 0x12, 1, b'1']);
        assert_eq!(bytes, expected);
    }
}
