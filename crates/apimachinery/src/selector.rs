//! Label selectors (equality- and set-based, as `?labelSelector=` and `spec.selector`) and the field selectors
//! kubectl uses.
//!
//! The label-selector grammar, its error messages and its canonical string form follow upstream's
//! `k8s.io/apimachinery/pkg/labels/selector.go`; field selectors follow `pkg/fields/selector.go`.

use crate::names;
use serde_json::Value;
use std::fmt;

/// A selector that could not be parsed. The string is upstream's whole message, e.g.
/// `unable to parse requirement: found '', expected: in, notin, =, ==, !=, gt, lt` or
/// `found ',', expected: identifier after ','` (the API server replies 400 BadRequest with it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

/// Selection operators of upstream's `selection.Operator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// One requirement: `key op values` (values sorted and deduplicated, as upstream's string sets).
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let value = labels.and_then(|l| l.get(&self.key)).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        match self.op {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                value.is_some_and(|v| self.values.contains(&v))
            }
            Operator::NotEquals | Operator::NotIn => {
                value.is_none_or(|v| !self.values.contains(&v))
            }
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let Some(Ok(have)) = value.map(|v| v.parse::<i64>()) else {
                    return false;
                };
                let Some(Ok(want)) = self.values.first().map(|v| v.parse::<i64>()) else {
                    return false;
                };
                if self.op == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }

    /// Upstream's `NewRequirement` checks; `path` is the field path prefix (None = upstream's nil path).
    fn new(
        key: &str,
        op: Operator,
        values: Vec<String>,
        path: Option<&str>,
    ) -> Result<Self, SelectorError> {
        let child = |c: &str| match path {
            Some(p) if !p.is_empty() => format!("{p}.{c}"),
            _ => c.to_string(),
        };
        let mut errs: Vec<String> = Vec::new();
        let key_errs = names::is_qualified_name(key);
        if !key_errs.is_empty() {
            errs.push(format!(
                "{}: Invalid value: {:?}: {}",
                child("key"),
                key,
                key_errs.join("; ")
            ));
        }
        let vpath = child("values");
        let go_vals = go_string_slice(&values);
        match op {
            Operator::In | Operator::NotIn => {
                if values.is_empty() {
                    errs.push(format!(
                        "{vpath}: Invalid value: {go_vals}: for 'in', 'notin' operators, values set can't be empty"
                    ));
                }
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals => {
                if values.len() != 1 {
                    errs.push(format!(
                        "{vpath}: Invalid value: {go_vals}: exact-match compatibility requires one single value"
                    ));
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                if !values.is_empty() {
                    errs.push(format!(
                        "{vpath}: Invalid value: {go_vals}: values set must be empty for exists and does not exist"
                    ));
                }
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(format!(
                        "{vpath}: Invalid value: {go_vals}: for 'Gt', 'Lt' operators, exactly one value is required"
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(format!(
                            "{vpath}[{i}]: Invalid value: {v:?}: for 'Gt', 'Lt' operators, the value must be an integer"
                        ));
                    }
                }
            }
        }
        for (i, v) in values.iter().enumerate() {
            let verrs = names::is_valid_label_value(v);
            if !verrs.is_empty() {
                errs.push(format!(
                    "{vpath}[{i}][{key}]: Invalid value: {v:?}: {}",
                    verrs.join("; ")
                ));
            }
        }
        if !errs.is_empty() {
            return Err(SelectorError(aggregate(errs)));
        }
        let mut values = values;
        values.sort();
        values.dedup();
        Ok(Self {
            key: key.to_string(),
            op,
            values,
        })
    }
}

/// Go's `%#v` of a `[]string`.
fn go_string_slice(v: &[String]) -> String {
    let inner: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[]string{{{}}}", inner.join(", "))
}

/// upstream's `utilerrors.Aggregate` message: one error verbatim, several in brackets.
fn aggregate(errs: Vec<String>) -> String {
    if errs.len() == 1 {
        errs.into_iter().next().unwrap_or_default()
    } else {
        format!("[{}]", errs.join(", "))
    }
}

impl fmt::Display for Requirement {
    /// Upstream's `Requirement.String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vals = || self.values.join(",");
        match self.op {
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::Exists => write!(f, "{}", self.key),
            Operator::Equals => write!(f, "{}={}", self.key, vals()),
            Operator::DoubleEquals => write!(f, "{}=={}", self.key, vals()),
            Operator::NotEquals => write!(f, "{}!={}", self.key, vals()),
            Operator::In => write!(f, "{} in ({})", self.key, vals()),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, vals()),
            Operator::GreaterThan => write!(f, "{}>{}", self.key, vals()),
            Operator::LessThan => write!(f, "{}<{}", self.key, vals()),
        }
    }
}

/// A label selector: all requirements must match (an empty selector matches everything).
/// `nothing` is upstream's `labels.Nothing()` (a JSON `null` selector).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
    pub nothing: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    In,
    NotIn,
    Bang,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
    End,
}

impl Tok {
    fn literal(&self) -> String {
        match self {
            Tok::Ident(s) => s.clone(),
            Tok::In => "in".into(),
            Tok::NotIn => "notin".into(),
            Tok::Bang => "!".into(),
            Tok::Eq => "=".into(),
            Tok::DoubleEq => "==".into(),
            Tok::NotEq => "!=".into(),
            Tok::Gt => ">".into(),
            Tok::Lt => "<".into(),
            Tok::Open => "(".into(),
            Tok::Close => ")".into(),
            Tok::Comma => ",".into(),
            Tok::End => String::new(),
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

/// Upstream's lexer: whitespace separates, special symbols are read greedily, everything else is an identifier.
fn lex(s: &str) -> Vec<Tok> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if is_special(c) {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let (tok, n) = match two.as_str() {
                "==" => (Tok::DoubleEq, 2),
                "!=" => (Tok::NotEq, 2),
                _ => match c {
                    '=' => (Tok::Eq, 1),
                    '!' => (Tok::Bang, 1),
                    '(' => (Tok::Open, 1),
                    ')' => (Tok::Close, 1),
                    ',' => (Tok::Comma, 1),
                    '>' => (Tok::Gt, 1),
                    _ => (Tok::Lt, 1),
                },
            };
            out.push(tok);
            i += n;
            continue;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && !is_special(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        out.push(match word.as_str() {
            "in" => Tok::In,
            "notin" => Tok::NotIn,
            _ => Tok::Ident(word),
        });
    }
    out.push(Tok::End);
    out
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    /// Values mode: `in`/`notin` are plain identifiers.
    fn values_mode(t: Tok) -> Tok {
        match t {
            Tok::In => Tok::Ident("in".into()),
            Tok::NotIn => Tok::Ident("notin".into()),
            t => t,
        }
    }
    fn lookahead(&self) -> Tok {
        Self::values_mode(self.toks.get(self.pos).cloned().unwrap_or(Tok::End))
    }
    fn consume_raw(&mut self) -> Tok {
        let t = self.toks.get(self.pos).cloned().unwrap_or(Tok::End);
        if self.pos < self.toks.len() {
            self.pos += 1;
        }
        t
    }
    fn consume(&mut self) -> Tok {
        Self::values_mode(self.consume_raw())
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut reqs = Vec::new();
        loop {
            match self.lookahead() {
                Tok::Ident(_) | Tok::Bang => {
                    let r = self
                        .parse_requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    reqs.push(r);
                    match self.consume() {
                        Tok::End => return Ok(reqs),
                        Tok::Comma => {
                            let t2 = self.lookahead();
                            if !matches!(t2, Tok::Ident(_) | Tok::Bang) {
                                return Err(format!(
                                    "found '{}', expected: identifier after ','",
                                    t2.literal()
                                ));
                            }
                        }
                        t => {
                            return Err(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                t.literal()
                            ))
                        }
                    }
                }
                Tok::End => return Ok(reqs),
                t => {
                    return Err(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        t.literal()
                    ))
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, String> {
        let mut op = None;
        let mut tok = self.consume();
        if tok == Tok::Bang {
            op = Some(Operator::DoesNotExist);
            tok = self.consume();
        }
        let Tok::Ident(key) = tok else {
            return Err(format!("found '{}', expected: identifier", tok.literal()));
        };
        let key_errs = names::is_qualified_name(&key);
        if !key_errs.is_empty() {
            return Err(format!(
                "<nil>: Invalid value: {:?}: {}",
                key,
                key_errs.join("; ")
            ));
        }
        if matches!(self.lookahead(), Tok::End | Tok::Comma) && op.is_none() {
            op = Some(Operator::Exists);
        }
        if let Some(op) = op {
            return Requirement::new(&key, op, Vec::new(), None).map_err(|e| e.0);
        }
        let op = match self.consume_raw() {
            Tok::In => Operator::In,
            Tok::NotIn => Operator::NotIn,
            Tok::Eq => Operator::Equals,
            Tok::DoubleEq => Operator::DoubleEquals,
            Tok::NotEq => Operator::NotEquals,
            Tok::Gt => Operator::GreaterThan,
            Tok::Lt => Operator::LessThan,
            t => {
                return Err(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    t.literal()
                ))
            }
        };
        let values = match op {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(&key, op, values, None).map_err(|e| e.0)
    }

    fn parse_values(&mut self) -> Result<Vec<String>, String> {
        let t = self.consume();
        if t != Tok::Open {
            return Err(format!("found '{}' expected: '('", t.literal()));
        }
        let t = self.lookahead();
        match t {
            Tok::Ident(_) | Tok::Comma => {
                let s = self.parse_identifiers_list()?;
                let c = self.consume();
                if c != Tok::Close {
                    return Err(format!("found '{}', expected: ')'", t.literal()));
                }
                Ok(s)
            }
            Tok::Close => {
                self.consume();
                Ok(vec![String::new()])
            }
            t => Err(format!(
                "found '{}', expected: ',', ')' or identifier",
                t.literal()
            )),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, String> {
        let mut s: Vec<String> = Vec::new();
        loop {
            match self.consume() {
                Tok::Ident(v) => {
                    s.push(v);
                    match self.lookahead() {
                        Tok::Comma => continue,
                        Tok::Close => return Ok(s),
                        t => return Err(format!("found '{}', expected: ',' or ')'", t.literal())),
                    }
                }
                Tok::Comma => {
                    if s.is_empty() {
                        s.push(String::new());
                    }
                    match self.lookahead() {
                        Tok::Close => {
                            s.push(String::new());
                            return Ok(s);
                        }
                        Tok::Comma => {
                            self.consume();
                            s.push(String::new());
                        }
                        _ => {}
                    }
                }
                t => {
                    return Err(format!(
                        "found '{}', expected: ',', or identifier",
                        t.literal()
                    ))
                }
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<Vec<String>, String> {
        if matches!(self.lookahead(), Tok::End | Tok::Comma) {
            return Ok(vec![String::new()]);
        }
        match self.consume() {
            Tok::Ident(v) => Ok(vec![v]),
            t => Err(format!("found '{}', expected: identifier", t.literal())),
        }
    }
}

impl LabelSelector {
    /// Parse the query-string form: `a=b,c!=d,e in (f,g),!h,i`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut p = Parser {
            toks: lex(s),
            pos: 0,
        };
        let mut requirements = p.parse().map_err(SelectorError)?;
        // upstream sorts requirements by key (stable), which also fixes the String() form.
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self {
            requirements,
            nothing: false,
        })
    }

    /// From a JSON `LabelSelector` object (`matchLabels`, `matchExpressions`), as upstream's
    /// `LabelSelectorAsSelector`: `null` selects nothing, `{}` selects everything.
    pub fn from_json(selector: &Value) -> Result<Self, SelectorError> {
        let obj = match selector {
            Value::Null => {
                return Ok(Self {
                    requirements: Vec::new(),
                    nothing: true,
                })
            }
            Value::Object(o) => o,
            other => return Err(SelectorError(format!("invalid label selector: {other}"))),
        };
        let mut requirements = Vec::new();
        if let Some(ml) = obj.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in ml {
                let v = v.as_str().unwrap_or_default().to_string();
                requirements.push(Requirement::new(k, Operator::Equals, vec![v], None)?);
            }
        }
        if let Some(exprs) = obj.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
                let op_s = e
                    .get("operator")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let op = match op_s {
                    "In" => Operator::In,
                    "NotIn" => Operator::NotIn,
                    "Exists" => Operator::Exists,
                    "DoesNotExist" => Operator::DoesNotExist,
                    other => {
                        return Err(SelectorError(format!(
                            "{other:?} is not a valid label selector operator"
                        )))
                    }
                };
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|v| v.as_str().unwrap_or_default().to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                requirements.push(Requirement::new(key, op, values, None)?);
            }
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self {
            requirements,
            nothing: false,
        })
    }

    /// `labels` is the object's `metadata.labels` (None when absent).
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        if self.nothing {
            return false;
        }
        let labels = labels.and_then(Value::as_object);
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// A selector that matches exactly the given labels map (`matchLabels` / a Service's `spec.selector`).
    pub fn from_map(map: &Value) -> Result<Self, SelectorError> {
        Self::from_json(&serde_json::json!({ "matchLabels": map }))
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty() && !self.nothing
    }
}

impl fmt::Display for LabelSelector {
    /// Upstream's `Selector.String()`: requirements sorted by key, joined with ','.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Upstream's `metav1.FormatLabelSelector` (tables): `<none>` when empty, `<error>` when invalid.
pub fn format_label_selector(selector: Option<&Value>) -> String {
    let Some(sel) = selector else {
        return "<none>".into();
    };
    match LabelSelector::from_json(sel) {
        Ok(s) => {
            let t = s.to_string();
            if t.is_empty() {
                "<none>".into()
            } else {
                t
            }
        }
        Err(_) => "<error>".into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FieldTerm {
    pub field: String,
    /// true for `=` / `==`, false for `!=`.
    pub equal: bool,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector {
    pub terms: Vec<FieldTerm>,
}

/// Split on commas not escaped by a backslash (upstream's `splitTerms`).
fn split_terms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            cur.push(c);
            escaped = true;
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Upstream's `splitTerm`: the first unescaped operator, trying `!=`, `==`, `=` at each position.
fn split_term(term: &str) -> Option<(String, &'static str, String)> {
    let b = term.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        for op in ["!=", "==", "="] {
            // compare bytes: `i` may sit inside a multi-byte character, but an ASCII operator match never does
            if b[i..].starts_with(op.as_bytes()) {
                return Some((term[..i].to_string(), op, term[i + op.len()..].to_string()));
            }
        }
        i += 1;
    }
    None
}

/// Upstream's `UnescapeValue`: only `\\`, `\,` and `\=` are valid escapes; unescaped `,` or `=` are errors.
fn unescape(s: &str) -> Result<String, SelectorError> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                _ => {
                    return Err(SelectorError(format!(
                        "invalid escape sequence in field selector value: {s:?}"
                    )))
                }
            },
            ',' | '=' => {
                return Err(SelectorError(format!(
                    "unescaped {c} in field selector value: {s:?}"
                )))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

impl FieldSelector {
    /// Parse `metadata.name=x,spec.nodeName!=y`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut parts = split_terms(s);
        parts.sort();
        let mut terms = Vec::new();
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let Some((lhs, op, rhs)) = split_term(&part) else {
                return Err(SelectorError(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let value = unescape(&rhs)?;
            terms.push(FieldTerm {
                field: lhs,
                equal: op != "!=",
                value,
            });
        }
        Ok(Self { terms })
    }

    /// Evaluate against the whole object (paths like `metadata.name`, `spec.nodeName`, `involvedObject.uid`, `type`).
    /// A missing field compares as the empty string, as upstream's field sets do (`spec.nodeName=` selects
    /// unscheduled pods).
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms
            .iter()
            .all(|t| (field_value(obj, &t.field) == t.value) == t.equal)
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Check the fields against the ones upstream supports for the kind; upstream's message otherwise
    /// (`field label not supported: foo`).
    pub fn check_supported(&self, gk: crate::GroupKind<'_>) -> Result<(), SelectorError> {
        let extra = supported_field_labels(gk);
        for t in &self.terms {
            let f = t.field.as_str();
            if f == "metadata.name" || f == "metadata.namespace" || extra.contains(&f) {
                continue;
            }
            return Err(SelectorError(format!("field label not supported: {f}")));
        }
        Ok(())
    }
}

/// Field labels upstream accepts per kind in addition to `metadata.name` and `metadata.namespace`.
pub fn supported_field_labels(gk: crate::GroupKind<'_>) -> &'static [&'static str] {
    match (gk.group, gk.kind) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("events.k8s.io", "Event") => &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
            "deprecatedSource",
        ],
        ("", "Secret") => &["type"],
        ("", "Node") => &["spec.unschedulable"],
        ("", "Namespace") => &["status.phase"],
        ("apps", "ReplicaSet") => &["status.replicas"],
        _ => &[],
    }
}

/// The string value of a dotted path, "" when absent. Special cases as upstream's field label functions:
/// an Event's `source` is `source.component`; `status.podIPs` is the first pod IP.
pub fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) if path == "source" => o
            .get("component")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        Value::Array(a) if path == "status.podIPs" => a
            .first()
            .and_then(|x| x.get("ip"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(s: &str) -> LabelSelector {
        match LabelSelector::parse(s) {
            Ok(x) => x,
            Err(e) => panic!("parse {s:?}: {e}"),
        }
    }
    fn err(s: &str) -> String {
        match LabelSelector::parse(s) {
            Ok(x) => panic!("{s:?} parsed as {x:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn equality_and_set_based_matching() {
        let labels = json!({"app": "demo", "tier": "web", "n": "5"});
        let l = Some(&labels);
        assert!(sel("app=demo").matches(l));
        assert!(sel("app==demo").matches(l));
        assert!(!sel("app!=demo").matches(l));
        assert!(sel("app!=other").matches(l));
        assert!(sel("missing!=x").matches(l));
        assert!(sel("app in (demo, other)").matches(l));
        assert!(!sel("app notin (demo,other)").matches(l));
        assert!(sel("missing notin (x)").matches(l));
        assert!(sel("tier").matches(l));
        assert!(!sel("!tier").matches(l));
        assert!(sel("!missing").matches(l));
        assert!(sel("app=demo,tier=web,!x").matches(l));
        assert!(!sel("app=demo,tier=db").matches(l));
        assert!(sel("n>4").matches(l) && !sel("n<5").matches(l));
        assert!(sel("").matches(l));
        assert!(sel("").matches(None));
        assert!(!sel("app=demo").matches(None));
        assert!(sel("app!=demo").matches(None));
        // `in` and `notin` may be keys and values
        assert!(sel("in=notin").matches(Some(&json!({"in": "notin"}))));
    }

    #[test]
    fn string_form_is_sorted_like_upstream() {
        assert_eq!(
            sel("z=1,a in (c,b),!m,e").to_string(),
            "a in (b,c),e,!m,z=1"
        );
        let js = json!({"matchLabels": {"tier": "web", "app": "x"},
                        "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod", "dev"]}]});
        assert_eq!(
            format_label_selector(Some(&js)),
            "app=x,env notin (dev,prod),tier=web"
        );
        assert_eq!(format_label_selector(Some(&json!({}))), "<none>");
        assert_eq!(format_label_selector(None), "<none>");
    }

    #[test]
    fn json_selector() {
        let s = LabelSelector::from_json(&json!({"matchLabels": {"app": "x"},
            "matchExpressions": [{"key": "track", "operator": "Exists"},
                                 {"key": "old", "operator": "DoesNotExist"},
                                 {"key": "env", "operator": "In", "values": ["a", "b"]}]}))
        .unwrap();
        assert!(s.matches(Some(&json!({"app": "x", "track": "1", "env": "b"}))));
        assert!(!s.matches(Some(&json!({"app": "x", "track": "1", "env": "c"}))));
        assert!(!s.matches(Some(
            &json!({"app": "x", "track": "1", "env": "a", "old": ""})
        )));
        assert!(LabelSelector::from_json(&json!({})).unwrap().matches(None));
        assert!(!LabelSelector::from_json(&Value::Null)
            .unwrap()
            .matches(Some(&json!({}))));
        assert_eq!(
            LabelSelector::from_json(
                &json!({"matchExpressions": [{"key": "a", "operator": "Foo"}]})
            )
            .unwrap_err()
            .to_string(),
            "\"Foo\" is not a valid label selector operator"
        );
        assert_eq!(
            LabelSelector::from_json(&json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}))
                .unwrap_err()
                .to_string(),
            "values: Invalid value: []string{}: for 'in', 'notin' operators, values set can't be empty"
        );
    }

    #[test]
    fn upstream_error_messages() {
        assert_eq!(err("a,"), "found '', expected: identifier after ','");
        assert_eq!(err("a,,b"), "found ',', expected: identifier after ','");
        assert_eq!(
            err("a b"),
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(
            err("x in y"),
            "unable to parse requirement: found 'y' expected: '('"
        );
        assert_eq!(
            err("x in (a"),
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
        assert_eq!(
            err("=x"),
            "found '=', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            err("a@b=c"),
            "unable to parse requirement: <nil>: Invalid value: \"a@b\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        );
        assert_eq!(
            err("a=-x"),
            "unable to parse requirement: values[0][a]: Invalid value: \"-x\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        );
        assert_eq!(
            err("a>x"),
            "unable to parse requirement: values[0]: Invalid value: \"x\": for 'Gt', 'Lt' operators, the value must be an integer"
        );
    }

    #[test]
    fn field_selectors() {
        let ev = json!({"metadata": {"name": "e1", "namespace": "default"},
            "involvedObject": {"kind": "Service", "name": "my-svc", "namespace": "default", "uid": "u-1"},
            "reason": "Created", "type": "Normal", "source": {"component": "kubelet"}});
        let f = FieldSelector::parse(
            "involvedObject.name=my-svc,involvedObject.namespace=default,involvedObject.kind=Service,involvedObject.uid=u-1",
        )
        .unwrap();
        assert!(f.matches(&ev));
        assert!(!FieldSelector::parse("involvedObject.uid=u-2")
            .unwrap()
            .matches(&ev));
        assert!(FieldSelector::parse("type!=Warning,source==kubelet")
            .unwrap()
            .matches(&ev));
        assert!(FieldSelector::parse("metadata.name=e1")
            .unwrap()
            .matches(&ev));
        let pod = json!({"metadata": {"name": "p"}, "spec": {}, "status": {"phase": "Pending"}});
        assert!(FieldSelector::parse("spec.nodeName=")
            .unwrap()
            .matches(&pod));
        assert!(
            FieldSelector::parse("spec.nodeName!=n1,status.phase=Pending")
                .unwrap()
                .matches(&pod)
        );
        assert!(FieldSelector::parse("").unwrap().matches(&pod));
        assert_eq!(
            FieldSelector::parse("metadata.name")
                .unwrap_err()
                .to_string(),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        // non-ASCII values do not trip the operator scan
        assert_eq!(
            FieldSelector::parse("metadata.name=ü\\,ß").unwrap().terms[0].value,
            "ü,ß"
        );
        assert!(FieldSelector::parse("ü\\ü=x").is_ok());
        // escaped comma stays in the value
        let f = FieldSelector::parse("metadata.name=a\\,b").unwrap();
        assert_eq!(f.terms[0].value, "a,b");
        let gk = crate::GroupKind {
            group: "",
            kind: "Pod",
        };
        assert!(FieldSelector::parse("spec.nodeName=x")
            .unwrap()
            .check_supported(gk)
            .is_ok());
        assert_eq!(
            FieldSelector::parse("spec.foo=x")
                .unwrap()
                .check_supported(gk)
                .unwrap_err()
                .to_string(),
            "field label not supported: spec.foo"
        );
    }
}
