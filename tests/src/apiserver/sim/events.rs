//! core/v1 Events about pods, as the kubelet and the scheduler record them
//! (what `kubectl describe pod` and `kubectl get events` show).
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::Event;
use serde_json::{Value, json};

use super::{
    super::{kinds::Gvr, store::Store},
    world,
};

/// Who reports: `kubelet` on a node, or `default-scheduler`.
pub(crate) struct Source<'a> {
    pub component: &'a str,
    pub host: Option<&'a str>,
}

static SEQ: AtomicU64 = AtomicU64::new(1);

/// Records a Warning or Normal Event about `pod`; named `<pod>.<hex>` as
/// client-go's recorder names them.
pub(crate) fn record(
    store: &Store,
    pod: &Value,
    kind: &str,
    reason: &str,
    message: &str,
    source: Source,
) {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!("{}.{:016x}", world::name(pod), 0x1800_0000_0000_0000 | seq);
    let now = world::now();
    let mut src = json!({ "component": source.component });
    if let Some(host) = source.host {
        src["host"] = json!(host);
    }
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": { "name": name, "namespace": world::namespace_of(pod) },
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": world::namespace_of(pod),
            "name": world::name(pod),
            "uid": world::uid(pod),
            "resourceVersion": pod["metadata"]["resourceVersion"],
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "source": src,
        "reportingComponent": source.component,
        "reportingInstance": source.host.unwrap_or(source.component),
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    let gvr = Gvr::of::<Event>();
    // An Event is best effort, as with the real recorder.
    let _ = store.create(&gvr, Some(world::namespace_of(pod)), event, false);
}
