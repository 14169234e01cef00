//! Events on a Node, as `kubectl describe node` shows them: what the
//! migration driver records at each step and what an agent records when
//! one of its hooks turns blind or sees again.
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::{
    Client, Resource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

/// What the API server keeps of an Event's note (events.k8s.io: 1 kB).
pub const MAX_NOTE: usize = 1000;

/// A reference to the Node `name`: from the object when it is known (its
/// uid ties the Event to this incarnation of the node), else by name.
pub fn node_reference(node: Option<&Node>, name: &str) -> ObjectReference {
    match node {
        Some(n) => n.object_ref(&()),
        None => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some(<Node as k8s_openapi::Resource>::KIND.into()),
            name: Some(name.into()),
            ..Default::default()
        },
    }
}

/// The events.k8s.io Event kube-rs's recorder publishes: `note` cut to
/// what the API server keeps, on a character boundary.
pub fn event(reason: &str, note: &str, action: &str, warning: bool) -> Event {
    Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note.chars().take(MAX_NOTE).collect()),
        action: action.into(),
        secondary: None,
    }
}

/// Publishes one new Event (never a series of an earlier one): kube-rs's
/// recorder folds an Event of the same reason into the first one's series
/// for a few minutes, keeping the first note; a caller whose notes differ
/// each time, and that bounds its own rate, wants each one as it is.
pub async fn publish_new(
    client: &Client,
    reporter: &Reporter,
    event: &Event,
    regarding: &ObjectReference,
) -> Result<(), kube::Error> {
    Recorder::new(client.clone(), reporter.clone())
        .publish(event, regarding)
        .await
}
