//! The message bus between Tessera's roles, shaped like oslo.messaging's RPC so Nova's patterns map 1:1:
//!
//! - `call(target, msg, timeout)`: request/response; `target.server` picks one host, otherwise one of the
//!   servers listening on the topic gets it (round-robin);
//! - `cast(target, msg)`: fire and forget, same addressing;
//! - `fanout(topic, msg)`: every server listening on the topic gets a copy.
//!
//! Messages are [`Envelope`]s: a method name, JSON arguments, the envelope version (so receivers can refuse or
//! adapt to messages from older or newer senders during upgrades) and the request id that ties logs together
//! across services and cells. Backends implement [`Bus`]: [`inproc::InProcBus`] (one process) and
//! [`rabbit::RabbitBus`] (RabbitMQ, for roles in separate processes); callers never change.

pub mod inproc;
pub mod rabbit;

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Where a message goes: a topic (`compute`, `conductor`, `scheduler`…) and optionally one server (host).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    pub topic: String,
    pub server: Option<String>,
}

impl Target {
    pub fn topic(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            server: None,
        }
    }
    pub fn server(topic: impl Into<String>, server: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            server: Some(server.into()),
        }
    }
}

/// A versioned message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope format version (`major.minor`), checked by receivers.
    pub version: String,
    pub method: String,
    pub args: serde_json::Value,
    pub request_id: String,
    /// The caller's request context, when the message acts on a user's behalf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<tessera_types::RequestContext>,
}

/// Version of the envelope format this build writes.
pub const ENVELOPE_VERSION: &str = "1.0";

impl Envelope {
    pub fn new(method: impl Into<String>, args: serde_json::Value, request_id: impl Into<String>) -> Self {
        Self {
            version: ENVELOPE_VERSION.to_string(),
            method: method.into(),
            args,
            request_id: request_id.into(),
            context: None,
        }
    }

    pub fn with_context(mut self, ctx: tessera_types::RequestContext) -> Self {
        self.context = Some(ctx);
        self
    }

    /// Whether a receiver built for `major` can read this envelope (same major version).
    pub fn compatible_with(&self, major: u32) -> bool {
        self.version.split('.').next().and_then(|m| m.parse::<u32>().ok()) == Some(major)
    }
}

/// An error raised by the remote handler of a `call`, carried back to the caller.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct RemoteError {
    /// Exception-like name (`InstanceNotFound`, `NoValidHost`…).
    pub kind: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("timed out after {0:?} waiting for a reply")]
    Timeout(Duration),
    #[error("no server is listening on {0}")]
    NoListener(String),
    #[error("the bus is closed")]
    Closed,
    #[error("remote error: {0}")]
    Remote(#[from] RemoteError),
    #[error("bad message: {0}")]
    BadMessage(String),
    #[error("transport error: {0}")]
    Transport(String),
}

/// How a handler answers a `call` (casts and fanouts get no reply).
pub type Reply = Result<serde_json::Value, RemoteError>;

/// A message delivered to a listener.
#[derive(Debug)]
pub struct Incoming {
    pub envelope: Envelope,
    /// Present for `call`s: send the reply through it.
    pub reply: Option<tokio::sync::oneshot::Sender<Reply>>,
}

/// The receiving end of a `listen`.
pub type Listener = tokio::sync::mpsc::Receiver<Incoming>;

#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn call(
        &self,
        target: &Target,
        msg: Envelope,
        timeout: Duration,
    ) -> Result<serde_json::Value, BusError>;
    async fn cast(&self, target: &Target, msg: Envelope) -> Result<(), BusError>;
    async fn fanout(&self, topic: &str, msg: Envelope) -> Result<(), BusError>;
    /// Start receiving messages for `topic` addressed to the topic, to `server`, or fanned out.
    async fn listen(&self, topic: &str, server: &str) -> Result<Listener, BusError>;
}

/// A handler for [`serve`].
pub type Handler = Arc<dyn Fn(Envelope) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// Dispatch every incoming message to `handler`, each in its own task, until the listener closes.
pub async fn serve(mut listener: Listener, handler: Handler) {
    while let Some(incoming) = listener.recv().await {
        let h = handler.clone();
        tokio::spawn(async move {
            let method = incoming.envelope.method.clone();
            let request_id = incoming.envelope.request_id.clone();
            let result = h(incoming.envelope).await;
            if let Err(e) = &result {
                tracing::debug!(%method, %request_id, error = %e, "rpc handler returned an error");
            }
            if let Some(tx) = incoming.reply {
                let _ = tx.send(result);
            }
        });
    }
}

/// The buses of one process, one per transport URL: every role of an all-in-one that names
/// `inproc://cell1` gets the same in-process bus, while two clouds in one test process (each with its own
/// registry) stay apart.
#[derive(Default)]
pub struct Buses {
    open: std::sync::Mutex<std::collections::HashMap<String, Arc<dyn Bus>>>,
}

impl Buses {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bus for `url`, opened on first use.
    pub fn get(&self, url: &str) -> Result<Arc<dyn Bus>, BusError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = open.get(url) {
            return Ok(b.clone());
        }
        let b = from_url(url)?;
        open.insert(url.to_string(), b.clone());
        Ok(b)
    }
}

/// Open the bus named by a `transport_url` (a new one each time; see [`Buses`] for sharing).
pub fn from_url(url: &str) -> Result<Arc<dyn Bus>, BusError> {
    let scheme = url.split("://").next().unwrap_or("");
    match scheme {
        "inproc" | "fake" => Ok(Arc::new(inproc::InProcBus::new())),
        "rabbit" | "amqp" => Ok(Arc::new(rabbit::RabbitBus::new(url)?)),
        other => Err(BusError::Transport(format!(
            "unknown transport '{other}' in transport_url"
        ))),
    }
}

/// The behaviour every backend must show, run against each of them by their tests. `prefix` keeps the
/// topics of one run apart from another's on a shared broker.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;
    use serde_json::json;

    fn echo_handler(name: &'static str) -> Handler {
        Arc::new(move |env: Envelope| {
            Box::pin(async move {
                if env.method == "fail" {
                    return Err(RemoteError {
                        kind: "NoValidHost".into(),
                        message: "nothing fits".into(),
                    });
                }
                if env.method == "slow" {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Ok(json!({"server": name, "args": env.args, "request_id": env.request_id}))
            })
        })
    }

    pub async fn call_cast_fanout_and_errors(bus: &dyn Bus, prefix: &str) {
        let compute = format!("{prefix}compute");
        for host in ["h1", "h2"] {
            let l = bus.listen(&compute, host).await.unwrap();
            tokio::spawn(serve(l, echo_handler(host)));
        }
        // Addressed call reaches that server, with the request id carried.
        let r = bus
            .call(
                &Target::server(&compute, "h2"),
                Envelope::new("ping", json!({"x": 1}), "req-1"),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(r["server"], "h2");
        assert_eq!(r["args"]["x"], 1);
        assert_eq!(r["request_id"], "req-1");
        // Topic calls are spread over servers.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let r = bus
                .call(
                    &Target::topic(&compute),
                    Envelope::new("ping", json!({}), "r"),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            seen.insert(r["server"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 2);
        // Remote errors come back typed.
        let e = bus
            .call(
                &Target::topic(&compute),
                Envelope::new("fail", json!({}), "r"),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, BusError::Remote(RemoteError { ref kind, .. }) if kind == "NoValidHost"));
        // Timeouts.
        let e = bus
            .call(
                &Target::topic(&compute),
                Envelope::new("slow", json!({}), "r"),
                Duration::from_millis(50),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, BusError::Timeout(_)));
        // Nobody listening.
        let e = bus
            .cast(
                &Target::topic(format!("{prefix}scheduler")),
                Envelope::new("x", json!({}), "r"),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, BusError::NoListener(_)), "{e}");
        let e = bus
            .cast(
                &Target::server(&compute, "h9"),
                Envelope::new("x", json!({}), "r"),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, BusError::NoListener(_)), "{e}");
    }

    pub async fn fanout_reaches_every_server(bus: &dyn Bus, prefix: &str) {
        let topic = format!("{prefix}scheduler");
        let mut a = bus.listen(&topic, "a").await.unwrap();
        let mut b = bus.listen(&topic, "b").await.unwrap();
        bus.fanout(&topic, Envelope::new("update", json!({"n": 1}), "r"))
            .await
            .unwrap();
        assert_eq!(a.recv().await.unwrap().envelope.method, "update");
        assert_eq!(b.recv().await.unwrap().envelope.method, "update");
        // Casts carry no reply channel.
        bus.cast(&Target::server(&topic, "a"), Envelope::new("c", json!({}), "r"))
            .await
            .unwrap();
        assert!(a.recv().await.unwrap().reply.is_none());
        // A fanout nobody hears is not an error.
        bus.fanout(&format!("{prefix}nobody"), Envelope::new("u", json!({}), "r"))
            .await
            .unwrap();
    }
}
