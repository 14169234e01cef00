//! TokenReview (authentication.k8s.io/v1) and SubjectAccessReview
//! (authorization.k8s.io/v1): what a kube-rbac-proxy style server asks the
//! API server about a bearer token. The fake knows tokens the test gives it
//! (token -> [`User`]) and authorizes with allow [`Rule`]s shaped like
//! RBAC's (subjects, verbs, non-resource URLs or resources); by default it
//! knows [`ADMIN_TOKEN`], a `system:masters` user allowed everything, as a
//! kubeadm admin kubeconfig is. Answers are the real JSON shapes, `201
//! Created`, nothing stored.
//!
//! What differs from a real server: no audiences, expiry or service account
//! token validation (a token is known or not); rules are one flat list, not
//! Roles and bindings (no namespaces on rules: a resource rule matches in
//! every namespace, as a ClusterRole bound by a ClusterRoleBinding does).
use std::{collections::HashMap, time::Duration};

use serde_json::{Value, json};

use super::{kinds::Gvr, status::ApiError};

/// The token of the user a [`super::FakeApiServer::kubeconfig`] carries.
pub const ADMIN_TOKEN: &str = "crossover-fake-admin";
pub const ADMIN_USER: &str = "kubernetes-admin";

/// Who a known token is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl User {
    /// In `system:authenticated`, as every authenticated user is.
    pub fn new(name: &str) -> Self {
        User {
            name: name.into(),
            uid: format!("uid-{name}"),
            groups: vec!["system:authenticated".into()],
        }
    }

    /// A service account's user, as its token authenticates.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        User::new(&format!("system:serviceaccount:{namespace}:{name}"))
            .group("system:serviceaccounts")
            .group(&format!("system:serviceaccounts:{namespace}"))
    }

    pub fn group(mut self, group: &str) -> Self {
        self.groups.push(group.into());
        self
    }
}

/// What a rule grants on: non-resource URLs (`/metrics`, `/api/v1/*`: a
/// trailing `*` matches any rest, `*` alone every URL) or resources
/// (`nodes/proxy`, `*`) of an API group.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Grant {
    Urls(Vec<String>),
    Resources {
        group: String,
        resources: Vec<String>,
    },
    /// Every URL and resource: `cluster-admin`.
    Everything,
}

/// One allow rule: RBAC's PolicyRule with its subjects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    users: Vec<String>,
    groups: Vec<String>,
    verbs: Vec<String>,
    grant: Grant,
}

impl Rule {
    /// `verbs` on these non-resource URLs.
    pub fn urls(urls: &[&str], verbs: &[&str]) -> Self {
        Rule::new(Grant::Urls(strings(urls)), verbs)
    }

    /// `verbs` on these resources (`plural` or `plural/subresource`) of
    /// `group` (`""` core, `*` any).
    pub fn resources(group: &str, resources: &[&str], verbs: &[&str]) -> Self {
        Rule::new(
            Grant::Resources {
                group: group.into(),
                resources: strings(resources),
            },
            verbs,
        )
    }

    /// Every verb on everything: `cluster-admin`.
    pub fn everything() -> Self {
        Rule::new(Grant::Everything, &["*"])
    }

    fn new(grant: Grant, verbs: &[&str]) -> Self {
        Rule {
            users: Vec::new(),
            groups: Vec::new(),
            verbs: strings(verbs),
            grant,
        }
    }

    pub fn for_user(mut self, user: &str) -> Self {
        self.users.push(user.into());
        self
    }

    pub fn for_group(mut self, group: &str) -> Self {
        self.groups.push(group.into());
        self
    }

    fn applies_to(&self, user: &str, groups: &[String]) -> bool {
        self.users.iter().any(|u| u == user) || self.groups.iter().any(|g| groups.contains(g))
    }

    fn allows(&self, attrs: &Attributes) -> bool {
        let verb = self.verbs.iter().any(|v| v == "*" || *v == attrs.verb);
        verb && match (&self.grant, &attrs.target) {
            (Grant::Everything, _) => true,
            (Grant::Urls(urls), Target::Url(path)) => urls.iter().any(|u| url_matches(u, path)),
            (Grant::Resources { group, resources }, Target::Resource { group: g, resource }) => {
                (group == "*" || group == g) && resources.iter().any(|r| r == "*" || r == resource)
            }
            _ => false,
        }
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// RBAC's non-resource URL match: exact, or a prefix ending in `*`.
fn url_matches(rule: &str, path: &str) -> bool {
    match rule.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => rule == path,
    }
}

/// What a SubjectAccessReview asks about.
#[derive(Debug)]
enum Target {
    Url(String),
    /// `plural` or `plural/subresource`.
    Resource {
        group: String,
        resource: String,
    },
}

#[derive(Debug)]
struct Attributes {
    verb: String,
    target: Target,
}

/// The fake's authenticator and authorizer.
#[derive(Clone, Debug)]
pub struct Reviews {
    tokens: HashMap<String, User>,
    rules: Vec<Rule>,
    /// Reviews are answered this late (a slow or stuck API server).
    pub stall: Option<Duration>,
}

impl Default for Reviews {
    fn default() -> Self {
        let admin = User::new(ADMIN_USER).group("system:masters");
        Reviews {
            tokens: HashMap::from([(ADMIN_TOKEN.to_string(), admin)]),
            rules: vec![Rule::everything().for_group("system:masters")],
            stall: None,
        }
    }
}

pub fn token_reviews() -> Gvr {
    Gvr::new("authentication.k8s.io", "v1", "tokenreviews")
}

pub fn access_reviews() -> Gvr {
    Gvr::new("authorization.k8s.io", "v1", "subjectaccessreviews")
}

impl Reviews {
    pub fn add_token(&mut self, token: &str, user: User) {
        self.tokens.insert(token.into(), user);
    }

    pub fn allow(&mut self, rule: Rule) {
        self.rules.push(rule);
    }

    /// Answers a create of a review kind, or `None` for any other kind.
    pub(crate) fn answer(&self, gvr: &Gvr, body: &Value) -> Option<Result<Value, ApiError>> {
        if *gvr == token_reviews() {
            Some(self.token_review(gvr, body))
        } else if *gvr == access_reviews() {
            Some(self.access_review(gvr, body))
        } else {
            None
        }
    }

    fn token_review(&self, gvr: &Gvr, body: &Value) -> Result<Value, ApiError> {
        let token = body["spec"]["token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::invalid(gvr, "", "spec.token: Required value"))?;
        let status = match self.tokens.get(token) {
            Some(user) => json!({
                "authenticated": true,
                "user": {"username": user.name, "uid": user.uid, "groups": user.groups},
                "audiences": ["https://kubernetes.default.svc.cluster.local"],
            }),
            None => json!({"user": {}, "error": "[invalid bearer token, token lookup failed]"}),
        };
        Ok(echo(body, status))
    }

    fn access_review(&self, gvr: &Gvr, body: &Value) -> Result<Value, ApiError> {
        let spec = &body["spec"];
        let user = spec["user"].as_str().unwrap_or("");
        let groups: Vec<String> = spec["groups"]
            .as_array()
            .map(|g| {
                g.iter()
                    .filter_map(|g| g.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if user.is_empty() && groups.is_empty() {
            return Err(ApiError::invalid(
                gvr,
                "",
                "spec.user: Invalid value: \"\": at least one of user or group must be specified",
            ));
        }
        let attrs = match (
            spec.get("resourceAttributes"),
            spec.get("nonResourceAttributes"),
        ) {
            (Some(r), None) => Attributes {
                verb: r["verb"].as_str().unwrap_or("").into(),
                target: Target::Resource {
                    group: r["group"].as_str().unwrap_or("").into(),
                    resource: match r["subresource"].as_str().filter(|s| !s.is_empty()) {
                        Some(sub) => format!("{}/{sub}", r["resource"].as_str().unwrap_or("")),
                        None => r["resource"].as_str().unwrap_or("").into(),
                    },
                },
            },
            (None, Some(n)) => Attributes {
                verb: n["verb"].as_str().unwrap_or("").into(),
                target: Target::Url(n["path"].as_str().unwrap_or("").into()),
            },
            _ => {
                return Err(ApiError::invalid(
                    gvr,
                    "",
                    "spec.resourceAttributes: Invalid value: exactly one of nonResourceAttributes \
                     and resourceAttributes must be specified",
                ));
            }
        };
        let allowed = self
            .rules
            .iter()
            .any(|r| r.applies_to(user, &groups) && r.allows(&attrs));
        let status = if allowed {
            json!({"allowed": true, "reason": "allowed by the fake API server's rules"})
        } else {
            // RBAC's denial: no opinion, no reason.
            json!({"allowed": false})
        };
        Ok(echo(body, status))
    }
}

/// The review as asked, with its status filled in.
fn echo(body: &Value, status: Value) -> Value {
    let mut out = body.clone();
    out["metadata"] = json!({"creationTimestamp": null});
    out["status"] = status;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(user: &str, groups: &[&str], path: &str) -> Value {
        json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": groups,
                     "nonResourceAttributes": {"path": path, "verb": "get"}},
        })
    }

    #[test]
    fn rules_match_like_rbac() {
        let mut reviews = Reviews::default();
        reviews.allow(Rule::urls(&["/api/v1/*"], &["get"]).for_user("reader"));
        let allowed = |user, groups: &[&str], path| {
            reviews
                .access_review(&access_reviews(), &access(user, groups, path))
                .unwrap()["status"]["allowed"]
                == true
        };
        assert!(allowed("reader", &[], "/api/v1/flows"));
        assert!(!allowed("reader", &[], "/metrics"));
        assert!(!allowed(
            "other",
            &["system:authenticated"],
            "/api/v1/flows"
        ));
        assert!(allowed("admin", &["system:masters"], "/metrics"));
    }

    #[test]
    fn unknown_tokens_are_not_authenticated() {
        let reviews = Reviews::default();
        let review = |token: &str| {
            reviews
                .token_review(&token_reviews(), &json!({"spec": {"token": token}}))
                .unwrap()
        };
        assert_eq!(
            review(ADMIN_TOKEN)["status"]["user"]["username"],
            ADMIN_USER
        );
        assert_eq!(review("nope")["status"]["authenticated"], Value::Null);
        assert!(
            reviews
                .token_review(&token_reviews(), &json!({"spec": {}}))
                .is_err()
        );
    }
}
