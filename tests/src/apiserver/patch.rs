//! The patch formats kube-rs sends. Strategic merge and server-side apply
//! are both applied as JSON merge patches: lists are replaced whole rather
//! than merged by key, and apply does not track field managers. That is
//! enough for cordon, labels, annotations and ConfigMap data, which is
//! what a migration driver patches.
use serde_json::Value;

use super::status::ApiError;

#[derive(Clone, Debug, PartialEq)]
pub enum Patch {
    /// `application/merge-patch+json` and `application/strategic-merge-patch+json`.
    Merge(Value),
    /// `application/apply-patch+yaml`: a merge patch that creates the
    /// object when it is absent.
    Apply(Value),
    /// `application/json-patch+json`: RFC 6902 operations.
    Json(Value),
}

impl Patch {
    /// Parses a request body by its content type (parameters ignored).
    pub fn parse(content_type: &str, body: &[u8]) -> Result<Patch, ApiError> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        let value = || -> Result<Value, ApiError> {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("patch body is not JSON: {e}")))
        };
        match media {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                Ok(Patch::Merge(value()?))
            }
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Ok(Patch::Apply(value()?))
            }
            "application/json-patch+json" => Ok(Patch::Json(value()?)),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }

    /// The patched object.
    pub fn apply_to(&self, target: &Value) -> Result<Value, ApiError> {
        let mut out = target.clone();
        match self {
            Patch::Merge(p) | Patch::Apply(p) => merge(&mut out, p),
            Patch::Json(ops) => json_patch(&mut out, ops)?,
        }
        Ok(out)
    }
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// RFC 6902, all six operations.
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::new(422, "Invalid", m);
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch is an array of operations"))?;
    for op in ops {
        let field = |name: &str| {
            op.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("JSON patch operation without {name:?}: {op}")))
        };
        let path = field("path")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| bad(format!("JSON patch operation without \"value\": {op}")))
        };
        match field("op")? {
            "add" => add(target, path, value()?)?,
            "remove" => {
                remove(target, path)?;
            }
            "replace" => {
                remove(target, path)?;
                add(target, path, value()?)?;
            }
            "move" => {
                let v = remove(target, field("from")?)?;
                add(target, path, v)?;
            }
            "copy" => {
                let v = target
                    .pointer(field("from")?)
                    .cloned()
                    .ok_or_else(|| bad(format!("no value at {:?}", field("from"))))?;
                add(target, path, v)?;
            }
            "test" => {
                if target.pointer(path) != Some(&value()?) {
                    return Err(bad(format!("test of {path} failed")));
                }
            }
            other => return Err(bad(format!("unknown JSON patch operation {other:?}"))),
        }
    }
    Ok(())
}

/// The parent container of a JSON pointer and the last token, unescaped.
fn split(path: &str) -> Result<(&str, String), ApiError> {
    let i = path
        .rfind('/')
        .ok_or_else(|| ApiError::new(422, "Invalid", format!("bad JSON pointer {path:?}")))?;
    let last = path[i + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..i], last))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    let missing = || ApiError::new(422, "Invalid", format!("no parent for {path:?}"));
    match target.pointer_mut(parent).ok_or_else(missing)? {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(missing)?
            };
            a.insert(i, value);
        }
        _ => return Err(missing()),
    }
    Ok(())
}

fn remove(target: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parent, last) = split(path)?;
    let missing = || ApiError::new(422, "Invalid", format!("nothing at {path:?}"));
    match target.pointer_mut(parent).ok_or_else(missing)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .ok()
                .filter(|i| *i < a.len())
                .ok_or_else(missing)?;
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_removes_with_null_and_replaces_lists() {
        let obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"taints": [1, 2]}});
        let p = Patch::Merge(
            json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"taints": [3]}}),
        );
        assert_eq!(
            p.apply_to(&obj).unwrap(),
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"taints": [3]}})
        );
    }

    #[test]
    fn json_patch_operations() {
        let obj = json!({"metadata": {"labels": {"a/b": "1"}}, "spec": {"list": [1, 2]}});
        let p = Patch::Json(json!([
            {"op": "test", "path": "/metadata/labels/a~1b", "value": "1"},
            {"op": "add", "path": "/spec/list/-", "value": 3},
            {"op": "replace", "path": "/spec/list/0", "value": 0},
            {"op": "copy", "from": "/spec/list", "path": "/spec/copy"},
            {"op": "move", "from": "/metadata/labels/a~1b", "path": "/metadata/labels/c"},
            {"op": "remove", "path": "/spec/list/1"},
        ]));
        assert_eq!(
            p.apply_to(&obj).unwrap(),
            json!({"metadata": {"labels": {"c": "1"}}, "spec": {"list": [0, 3], "copy": [0, 2, 3]}})
        );
        let failing = Patch::Json(json!([{"op": "test", "path": "/spec/list/0", "value": 9}]));
        assert_eq!(failing.apply_to(&obj).unwrap_err().code, 422);
        let missing = Patch::Json(json!([{"op": "remove", "path": "/nope/x"}]));
        assert!(missing.apply_to(&obj).is_err());
    }
}
