//! The message bus between Tessera's roles, shaped like oslo.messaging's RPC so Nova's patterns map 1:1:
//!
//! - `call(target, msg, timeout)`: request/response; `target.server` picks one host, otherwise one of the
//!   servers listening on the topic gets it (round-robin);
//! - `cast(target, msg)`: fire and forget, same addressing;
//! - `fanout(topic, msg)`: every server listening on the topic gets a copy.
//!
//! Messages are [`Envelope`]s: a method name, JSON arguments, the envelope version (so receivers can refuse or
//! adapt to messages from older or newer senders during upgrades) and the request id that ties logs together
//! across services and cells. Backends implement [`Bus`]: [`inproc::InProcBus`] now; an AMQP backend plugs in
//! behind the same trait, so callers never change.

pub mod inproc;

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
        "rabbit" | "amqp" => Err(BusError::Transport(
            "the RabbitMQ transport is not available in this build yet; use transport_url = inproc://".into(),
        )),
        other => Err(BusError::Transport(format!(
            "unknown transport '{other}' in transport_url"
        ))),
    }
}
