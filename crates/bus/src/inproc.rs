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

    #[tokio::test]
    async fn call_cast_fanout_and_errors() {
        crate::conformance::call_cast_fanout_and_errors(&InProcBus::new(), "").await;
    }

    #[tokio::test]
    async fn fanout_reaches_every_server() {
        crate::conformance::fanout_reaches_every_server(&InProcBus::new(), "").await;
    }

    #[test]
    fn envelope_versions() {
        let e = Envelope::new("m", serde_json::json!({}), "r");
        assert!(e.compatible_with(1));
        assert!(!e.compatible_with(2));
        assert!(crate::from_url("inproc://").is_ok());
        assert!(crate::from_url("zmq://x").is_err());
    }
}
