//! Failures as the apiserver reports them: a `Status` object with the
//! reason and code kube-rs matches on (`kube::Error::Api`), and messages
//! worded like the real ones so logs read the same.
use std::fmt;

use serde_json::{Value, json};

use super::kinds::Gvr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    /// `details.name` and `details.kind` (the plural) when the error is
    /// about one object.
    pub name: Option<Box<(Gvr, String)>>,
    /// `details.retryAfterSeconds` and the `Retry-After` header, which
    /// kube-rs's default retry policy honours on 429, 503 and 504.
    pub retry_after_seconds: Option<u32>,
    /// `details.causes` as (type, message): why an eviction was refused
    /// (`DisruptionBudget`), which field was invalid.
    pub causes: Vec<(String, String)>,
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.into(),
            message: message.into(),
            name: None,
            retry_after_seconds: None,
            causes: Vec::new(),
        }
    }

    pub fn with_cause(mut self, kind: &str, message: impl Into<String>) -> Self {
        self.causes.push((kind.into(), message.into()));
        self
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }

    fn about(mut self, gvr: &Gvr, name: &str) -> Self {
        self.name = Some(Box::new((gvr.clone(), name.into())));
        self
    }

    pub fn not_found(gvr: &Gvr, name: &str) -> Self {
        ApiError::new(404, "NotFound", format!("{gvr} \"{name}\" not found")).about(gvr, name)
    }

    /// A path that names no served resource.
    pub fn no_route() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn already_exists(gvr: &Gvr, name: &str) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{gvr} \"{name}\" already exists"),
        )
        .about(gvr, name)
    }

    pub fn conflict(gvr: &Gvr, name: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {gvr} \"{name}\": the object has been \
                 modified; please apply your changes to the latest version and try again"
            ),
        )
        .about(gvr, name)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn invalid(gvr: &Gvr, name: &str, message: impl Into<String>) -> Self {
        ApiError::new(
            422,
            "Invalid",
            format!("{gvr} \"{name}\" is invalid: {}", message.into()),
        )
        .about(gvr, name)
    }

    /// The resource version asked for has been compacted away: clients
    /// relist (kube-rs's watcher does on code 410).
    pub fn gone(asked: u64, oldest: u64) -> Self {
        ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {asked} ({oldest})"),
        )
    }

    pub fn method_not_allowed(method: &str) -> Self {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json; got {content_type:?}"
            ),
        )
    }

    /// What an eviction blocked by a PodDisruptionBudget gets. Beware:
    /// kube-rs 5 clients retry 429 by default (`Config::default_retry`),
    /// up to 15 times with exponential backoff, before returning it.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        ApiError::new(429, "TooManyRequests", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(500, "InternalError", message)
    }

    /// The `Status` object sent on the wire.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((gvr, name)) = self.name.as_deref() {
            status["details"] = json!({
                "name": name,
                "group": gvr.group,
                "kind": gvr.resource,
            });
        }
        if let Some(secs) = self.retry_after_seconds {
            status["details"]["retryAfterSeconds"] = json!(secs);
        }
        if !self.causes.is_empty() {
            let causes: Vec<Value> = self
                .causes
                .iter()
                .map(|(kind, message)| json!({ "reason": kind, "message": message }))
                .collect();
            status["details"]["causes"] = json!(causes);
        }
        status
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// A success `Status`, what DELETE of a collection or an eviction answer.
pub fn success(code: u16, details: Option<(&Gvr, &str)>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": code,
    });
    if let Some((gvr, name)) = details {
        status["details"] = json!({ "name": name, "group": gvr.group, "kind": gvr.resource });
    }
    status
}
