//! In-process bus: topics and servers are channels inside one process. Used by `all-in-one` (one bus per cell)
//! and by tests.

use crate::{Bus, BusError, Envelope, Incoming, Listener, Target};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const QUEUE_DEPTH: usize = 1024;

#[derive(Default)]
struct Topic {
    servers: Vec<(String, mpsc::Sender<Incoming>)>,
    next: AtomicUsize,
}

#[derive(Default)]
pub struct InProcBus {
    topics: Mutex<HashMap<String, Topic>>,
}

impl InProcBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pick the receiving channel for a target, dropping listeners that went away.
    fn pick(&self, target: &Target) -> Result<mpsc::Sender<Incoming>, BusError> {
        let mut topics = self.topics.lock().map_err(|_| BusError::Closed)?;
        let name = match &target.server {
            Some(s) => format!("{}.{}", target.topic, s),
            None => target.topic.clone(),
        };
        let topic = topics
            .get_mut(&target.topic)
            .ok_or_else(|| BusError::NoListener(name.clone()))?;
        topic.servers.retain(|(_, tx)| !tx.is_closed());
        let candidates: Vec<&mpsc::Sender<Incoming>> = topic
            .servers
            .iter()
            .filter(|(s, _)| target.server.as_ref().is_none_or(|want| want == s))
            .map(|(_, tx)| tx)
            .collect();
        if candidates.is_empty() {
            return Err(BusError::NoListener(name));
        }
        let i = topic.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        Ok(candidates[i].clone())
    }
}

#[async_trait::async_trait]
impl Bus for InProcBus {
    async fn call(
        &self,
        target: &Target,
        msg: Envelope,
        timeout: Duration,
    ) -> Result<serde_json::Value, BusError> {
        let tx = self.pick(target)?;
        let (rtx, rrx) = oneshot::channel();
        tx.send(Incoming {
            envelope: msg,
            reply: Some(rtx),
        })
        .await
        .map_err(|_| BusError::Closed)?;
        match tokio::time::timeout(timeout, rrx).await {
            Err(_) => Err(BusError::Timeout(timeout)),
            Ok(Err(_)) => Err(BusError::Closed),
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(BusError::Remote(e)),
        }
    }

    async fn cast(&self, target: &Target, msg: Envelope) -> Result<(), BusError> {
        let tx = self.pick(target)?;
        tx.send(Incoming {
            envelope: msg,
            reply: None,
        })
        .await
        .map_err(|_| BusError::Closed)
    }

    async fn fanout(&self, topic: &str, msg: Envelope) -> Result<(), BusError> {
        let senders: Vec<mpsc::Sender<Incoming>> = {
            let mut topics = self.topics.lock().map_err(|_| BusError::Closed)?;
            match topics.get_mut(topic) {
                Some(t) => {
                    t.servers.retain(|(_, tx)| !tx.is_closed());
                    t.servers.iter().map(|(_, tx)| tx.clone()).collect()
                }
                None => Vec::new(),
            }
        };
        for tx in senders {
            let _ = tx
                .send(Incoming {
                    envelope: msg.clone(),
                    reply: None,
                })
                .await;
        }
        Ok(())
    }

    async fn listen(&self, topic: &str, server: &str) -> Result<Listener, BusError> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let mut topics = self.topics.lock().map_err(|_| BusError::Closed)?;
        topics
            .entry(topic.to_string())
            .or_default()
            .servers
            .push((server.to_string(), tx));
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{serve, Handler, RemoteError};
    use serde_json::json;
    use std::sync::Arc;

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

    #[tokio::test]
    async fn call_cast_fanout_and_errors() {
        let bus = InProcBus::new();
        for host in ["h1", "h2"] {
            let l = bus.listen("compute", host).await.unwrap();
            tokio::spawn(serve(l, echo_handler(host)));
        }
        // Addressed call reaches that server, with the request id carried.
        let r = bus
            .call(
                &Target::server("compute", "h2"),
                Envelope::new("ping", json!({"x": 1}), "req-1"),
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        assert_eq!(r["server"], "h2");
        assert_eq!(r["request_id"], "req-1");
        // Topic calls are spread over servers.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let r = bus
                .call(
                    &Target::topic("compute"),
                    Envelope::new("ping", json!({}), "r"),
                    Duration::from_secs(2),
                )
                .await
                .unwrap();
            seen.insert(r["server"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 2);
        // Remote errors come back typed.
        let e = bus
            .call(
                &Target::topic("compute"),
                Envelope::new("fail", json!({}), "r"),
                Duration::from_secs(2),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, BusError::Remote(RemoteError { ref kind, .. }) if kind == "NoValidHost"));
        // Timeouts.
        let e = bus
            .call(
                &Target::topic("compute"),
                Envelope::new("slow", json!({}), "r"),
                Duration::from_millis(50),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, BusError::Timeout(_)));
        // Nobody listening.
        let e = bus
            .cast(&Target::topic("scheduler"), Envelope::new("x", json!({}), "r"))
            .await
            .unwrap_err();
        assert!(matches!(e, BusError::NoListener(_)));
        let e = bus
            .cast(
                &Target::server("compute", "h9"),
                Envelope::new("x", json!({}), "r"),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, BusError::NoListener(_)));
    }

    #[tokio::test]
    async fn fanout_reaches_every_server() {
        let bus = InProcBus::new();
        let mut a = bus.listen("scheduler", "a").await.unwrap();
        let mut b = bus.listen("scheduler", "b").await.unwrap();
        bus.fanout("scheduler", Envelope::new("update", json!({"n": 1}), "r"))
            .await
            .unwrap();
        assert_eq!(a.recv().await.unwrap().envelope.method, "update");
        assert_eq!(b.recv().await.unwrap().envelope.method, "update");
        // Casts carry no reply channel.
        bus.cast(
            &Target::server("scheduler", "a"),
            Envelope::new("c", json!({}), "r"),
        )
        .await
        .unwrap();
        assert!(a.recv().await.unwrap().reply.is_none());
    }

    #[test]
    fn envelope_versions() {
        let e = Envelope::new("m", json!({}), "r");
        assert!(e.compatible_with(1));
        assert!(!e.compatible_with(2));
        assert!(crate::from_url("inproc://").is_ok());
        assert!(crate::from_url("zmq://x").is_err());
    }
}
