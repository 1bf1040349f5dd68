//! RabbitMQ backend (`transport_url = rabbit://user:pass@host:5672/vhost`), laid out the way oslo.messaging's
//! rabbit driver lays out Nova's traffic, so an operator reading `rabbitmqctl list_queues` sees the familiar
//! shape:
//!
//! - one topic exchange (`[oslo_messaging_rabbit] control_exchange`-like, here `tessera`); a listener on
//!   topic `T` as server `S` consumes the shared queue `T` (routing key `T`; round-robin between servers) and
//!   its own queue `T.S` (routing key `T.S`);
//! - one fanout exchange `T_fanout` per topic, with an exclusive auto-deleted queue per listener;
//! - calls carry `reply_to` (this process's exclusive reply queue) and a `correlation_id`; the answer comes
//!   back through the default exchange.
//!
//! Topic and server queues are not exclusive and survive their consumer, so a cast to a compute host that is
//! restarting waits for it rather than being lost. Every publish is confirmed by the broker and marked
//! `mandatory`: a message no queue is bound for comes back and is reported as [`BusError::NoListener`].
//!
//! One AMQP connection per process and URL, opened on first use and reopened when it breaks; listeners
//! re-declare and re-consume after a reconnect, so a broker restart costs messages in flight only.

use crate::{Bus, BusError, Envelope, Incoming, Listener, RemoteError, Reply, Target};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The topic exchange every message goes through (fanouts use `TOPIC_fanout`).
const EXCHANGE: &str = "tessera";
/// Deliveries a listener takes ahead of handling them.
const PREFETCH: u16 = 256;
const QUEUE_DEPTH: usize = 1024;
/// How long a topic or server queue outlives its last consumer.
const QUEUE_EXPIRY_MS: u32 = 30 * 60 * 1000;

/// What travels in a reply message.
#[derive(Serialize, Deserialize)]
enum Wire {
    #[serde(rename = "result")]
    Ok(serde_json::Value),
    #[serde(rename = "failure")]
    Err(RemoteError),
}

/// The open connection of this bus, with its publishing channel and reply queue.
struct Link {
    conn: Connection,
    publish: Channel,
    reply_queue: String,
}

pub struct RabbitBus {
    inner: Arc<Inner>,
}

/// The connection state one process shares between callers and listener tasks.
struct Inner {
    /// `amqp://` URIs to try in order (oslo's comma-separated hosts).
    uris: Vec<String>,
    /// Masked form of the URL for messages.
    shown: String,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Reply>>>>,
}

fn transport(e: impl std::fmt::Display) -> BusError {
    BusError::Transport(e.to_string())
}

/// `rabbit://user:pass@h1:5672,user:pass@h2:5672/vhost?opts` → one `amqp://…/%2f` URI per host. The virtual
/// host is the path (`/` or nothing means RabbitMQ's default `/`). TLS is not built in and is refused.
pub fn amqp_uris(url: &str) -> Result<Vec<String>, BusError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| BusError::Transport(format!("bad transport_url {}", mask(url))))?;
    if scheme != "rabbit" && scheme != "amqp" {
        return Err(BusError::Transport(format!("not a RabbitMQ URL: {}", mask(url))));
    }
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if k == "ssl" && !matches!(v, "0" | "false" | "False") {
            return Err(BusError::Transport(
                "TLS to RabbitMQ (ssl=1) is not supported by this build; use a plain AMQP listener on a trusted network".into(),
            ));
        }
    }
    let (hosts, vhost) = match rest.split_once('/') {
        Some((h, v)) => (h, v),
        None => (rest, ""),
    };
    let vhost = if vhost.is_empty() {
        "%2f".to_string()
    } else {
        vhost.replace('/', "%2f")
    };
    let mut out = Vec::new();
    let mut last_cred = String::new();
    for h in hosts.split(',').filter(|h| !h.is_empty()) {
        // oslo lets later hosts reuse the first host's credentials.
        let (cred, addr) = match h.rsplit_once('@') {
            Some((c, a)) => {
                last_cred = c.to_string();
                (c.to_string(), a)
            }
            None => (last_cred.clone(), h),
        };
        let addr = if addr.contains(':') {
            addr.to_string()
        } else {
            format!("{addr}:5672")
        };
        let cred = if cred.is_empty() {
            String::new()
        } else {
            format!("{cred}@")
        };
        out.push(format!("amqp://{cred}{addr}/{vhost}?heartbeat=30"));
    }
    if out.is_empty() {
        return Err(BusError::Transport(format!(
            "no host in transport_url {}",
            mask(url)
        )));
    }
    Ok(out)
}

/// The URL with its password replaced by `****`.
pub fn mask(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let hosts: Vec<String> = rest
        .split(',')
        .map(|h| match h.rsplit_once('@') {
            Some((cred, addr)) => match cred.split_once(':') {
                Some((user, _)) => format!("{user}:****@{addr}"),
                None => h.to_string(),
            },
            None => h.to_string(),
        })
        .collect();
    format!("{scheme}://{}", hosts.join(","))
}

impl RabbitBus {
    pub fn new(url: &str) -> Result<Self, BusError> {
        Ok(Self {
            inner: Arc::new(Inner {
                uris: amqp_uris(url)?,
                shown: mask(url),
                link: tokio::sync::Mutex::new(None),
                pending: Arc::new(Mutex::new(HashMap::new())),
            }),
        })
    }
}

impl Inner {
    /// The live link, (re)connecting when there is none or it broke.
    async fn link(&self) -> Result<Arc<Link>, BusError> {
        let mut guard = self.link.lock().await;
        if let Some(l) = guard.as_ref() {
            if l.conn.status().connected() && l.publish.status().connected() {
                return Ok(l.clone());
            }
            tracing::warn!(url = %self.shown, "RabbitMQ connection lost; reconnecting");
        }
        let mut last = None;
        for uri in &self.uris {
            match self.open(uri).await {
                Ok(l) => {
                    let l = Arc::new(l);
                    *guard = Some(l.clone());
                    return Ok(l);
                }
                Err(e) => last = Some(e),
            }
        }
        *guard = None;
        Err(last.unwrap_or(BusError::Closed))
    }

    async fn open(&self, uri: &str) -> Result<Link, BusError> {
        let props = ConnectionProperties::default().with_connection_name("tessera".into());
        let conn = Connection::connect(uri, props)
            .await
            .map_err(|e| BusError::Transport(format!("cannot connect to {}: {e}", self.shown)))?;
        let publish = conn.create_channel().await.map_err(transport)?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(transport)?;
        publish
            .exchange_declare(
                EXCHANGE.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(transport)?;
        // This process's reply queue: server-named, exclusive, gone with the connection.
        let replies = conn.create_channel().await.map_err(transport)?;
        let reply_queue = private_queue(&replies).await?;
        let mut consumer = consume(&replies, &reply_queue).await?;
        let pending = self.pending.clone();
        tokio::spawn(async move {
            while let Some(d) = consumer.next().await {
                let Ok(d) = d else { break };
                let Some(id) = d.properties.correlation_id().as_ref().map(|s| s.to_string()) else {
                    continue;
                };
                let waiter = pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                let Some(tx) = waiter else {
                    continue; // the caller gave up (timeout)
                };
                let reply = match serde_json::from_slice::<Wire>(&d.data) {
                    Ok(Wire::Ok(v)) => Ok(v),
                    Ok(Wire::Err(e)) => Err(e),
                    Err(e) => Err(RemoteError {
                        kind: "BadMessage".into(),
                        message: format!("unreadable reply: {e}"),
                    }),
                };
                let _ = tx.send(reply);
            }
            // The connection went away: callers still waiting time out.
            let _ = replies;
        });
        Ok(Link {
            conn,
            publish,
            reply_queue,
        })
    }

    /// Publish through the topic exchange (or a fanout exchange), confirmed, reporting unroutable messages.
    async fn publish(
        &self,
        exchange: &str,
        key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), BusError> {
        let link = self.link().await?;
        let confirm = link
            .publish
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props.with_content_type("application/json".into()),
            )
            .await
            .map_err(transport)?
            .await
            .map_err(transport)?;
        match confirm {
            Confirmation::Ack(Some(_returned)) => Err(BusError::NoListener(key.to_string())),
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Nack(_) => Err(BusError::Transport(format!(
                "the broker refused a message for {key}"
            ))),
        }
    }
}

fn routing_key(t: &Target) -> String {
    match &t.server {
        Some(s) => format!("{}.{}", t.topic, s),
        None => t.topic.clone(),
    }
}

#[async_trait::async_trait]
impl Bus for RabbitBus {
    async fn call(
        &self,
        target: &Target,
        msg: Envelope,
        timeout: Duration,
    ) -> Result<serde_json::Value, BusError> {
        let body = serde_json::to_vec(&msg).map_err(|e| BusError::BadMessage(e.to_string()))?;
        let inner = &self.inner;
        let link = inner.link().await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = oneshot::channel();
        inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), tx);
        let props = BasicProperties::default()
            .with_correlation_id(id.as_str().into())
            .with_reply_to(link.reply_queue.as_str().into())
            .with_expiration(timeout.as_millis().to_string().into());
        let forget = || {
            inner
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        };
        if let Err(e) = inner.publish(EXCHANGE, &routing_key(target), &body, props).await {
            forget();
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                forget();
                Err(BusError::Timeout(timeout))
            }
            Ok(Err(_)) => Err(BusError::Closed),
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(BusError::Remote(e)),
        }
    }

    async fn cast(&self, target: &Target, msg: Envelope) -> Result<(), BusError> {
        let body = serde_json::to_vec(&msg).map_err(|e| BusError::BadMessage(e.to_string()))?;
        self.inner
            .publish(EXCHANGE, &routing_key(target), &body, BasicProperties::default())
            .await
    }

    async fn fanout(&self, topic: &str, msg: Envelope) -> Result<(), BusError> {
        let body = serde_json::to_vec(&msg).map_err(|e| BusError::BadMessage(e.to_string()))?;
        let link = self.inner.link().await?;
        let exchange = format!("{topic}_fanout");
        declare_fanout(&link.publish, &exchange).await?;
        match self
            .inner
            .publish(&exchange, "", &body, BasicProperties::default())
            .await
        {
            // Nobody listening to a fanout is not an error (the in-process bus agrees).
            Err(BusError::NoListener(_)) => Ok(()),
            other => other,
        }
    }

    async fn listen(&self, topic: &str, server: &str) -> Result<Listener, BusError> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        // The first subscription happens before returning, so a message cast right after `listen` is kept.
        let link = self.inner.link().await?;
        let sub = subscribe(&link, topic, server).await?;
        let me = ListenerTask {
            bus: self.inner.clone(),
            topic: topic.to_string(),
            server: server.to_string(),
            tx,
        };
        tokio::spawn(me.run(sub));
        Ok(rx)
    }
}

/// A server-named queue only this connection uses, gone with it.
async fn private_queue(ch: &Channel) -> Result<String, BusError> {
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(transport)?;
    Ok(q.name().to_string())
}

/// Consume a queue, each delivery acknowledged on receipt (at-most-once, as oslo.messaging's RPC).
async fn consume(ch: &Channel, queue: &str) -> Result<lapin::Consumer, BusError> {
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(transport)
}

async fn declare_fanout(ch: &Channel, exchange: &str) -> Result<(), BusError> {
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(transport)
}

/// One listener's consumers: the shared topic queue, its server queue and its fanout queue, all on one
/// channel, merged into one stream of deliveries.
struct Subscription {
    /// Kept so the channel (and its consumers) lives as long as the subscription.
    channel: Channel,
    /// For replies (the connection's confirmed publishing channel).
    publish: Channel,
    deliveries: futures_util::stream::SelectAll<lapin::Consumer>,
}

async fn subscribe(link: &Link, topic: &str, server: &str) -> Result<Subscription, BusError> {
    let ch = link.conn.create_channel().await.map_err(transport)?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(transport)?;
    ch.exchange_declare(
        EXCHANGE.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(transport)?;
    let fanout = format!("{topic}_fanout");
    declare_fanout(&ch, &fanout).await?;
    let mut queues = Vec::new();
    for (queue, key) in [
        (topic.to_string(), topic.to_string()),
        (format!("{topic}.{server}"), format!("{topic}.{server}")),
    ] {
        // Like oslo's transient queue TTL: a queue nobody consumed for half an hour goes away (and a cast
        // to it is then refused as unroutable rather than kept forever).
        let mut args = FieldTable::default();
        args.insert(
            "x-expires".into(),
            lapin::types::AMQPValue::LongUInt(QUEUE_EXPIRY_MS),
        );
        ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), args)
            .await
            .map_err(transport)?;
        ch.queue_bind(
            queue.as_str().into(),
            EXCHANGE.into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(transport)?;
        queues.push(queue);
    }
    let fq = private_queue(&ch).await?;
    ch.queue_bind(
        fq.as_str().into(),
        fanout.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(transport)?;
    queues.push(fq);
    let mut consumers = Vec::new();
    for q in &queues {
        consumers.push(consume(&ch, q).await?);
    }
    Ok(Subscription {
        channel: ch,
        publish: link.publish.clone(),
        deliveries: futures_util::stream::select_all(consumers),
    })
}

struct ListenerTask {
    bus: Arc<Inner>,
    topic: String,
    server: String,
    tx: mpsc::Sender<Incoming>,
}

impl ListenerTask {
    /// Forward deliveries to the listener until it is dropped; after a broken connection, reconnect (with
    /// back-off) and subscribe again.
    async fn run(self, first: Subscription) {
        let mut sub = Some(first);
        let mut backoff = Duration::from_millis(200);
        loop {
            let s = match sub.take() {
                Some(s) => s,
                None => match self.resubscribe().await {
                    Ok(s) => {
                        tracing::info!(topic = %self.topic, server = %self.server, "RabbitMQ listener resubscribed");
                        backoff = Duration::from_millis(200);
                        s
                    }
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, error = %e, "RabbitMQ listener cannot resubscribe; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = self.tx.closed() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                },
            };
            if !self.forward(s).await {
                return;
            }
            tracing::warn!(topic = %self.topic, server = %self.server, "RabbitMQ listener lost its connection");
        }
    }

    async fn resubscribe(&self) -> Result<Subscription, BusError> {
        let link = self.bus.link().await?;
        subscribe(&link, &self.topic, &self.server).await
    }

    /// Returns false when the listener was dropped (stop), true when the subscription broke (reconnect).
    async fn forward(&self, mut s: Subscription) -> bool {
        loop {
            let next = tokio::select! {
                d = s.deliveries.next() => d,
                _ = self.tx.closed() => {
                    // Cancel the consumers now: a channel left open would keep taking (and, unacknowledged,
                    // losing) the messages meant for the next listener on these queues.
                    if let Err(e) = s.channel.close(200, "listener closed".into()).await {
                        tracing::debug!(topic = %self.topic, error = %e, "closing a listener's channel");
                    }
                    return false;
                }
            };
            let d = match next {
                Some(Ok(d)) => d,
                Some(Err(_)) | None => return true,
            };
            let envelope: Envelope = match serde_json::from_slice(&d.data) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "dropping an unreadable message");
                    continue;
                }
            };
            let reply_to = d.properties.reply_to().as_ref().map(ShortString::to_string);
            let correlation = d.properties.correlation_id().clone();
            let reply = match (reply_to, correlation) {
                (Some(to), Some(id)) => {
                    let (rtx, rrx) = oneshot::channel::<Reply>();
                    let ch = s.publish.clone();
                    tokio::spawn(async move {
                        let wire = match rrx.await {
                            Ok(Ok(v)) => Wire::Ok(v),
                            Ok(Err(e)) => Wire::Err(e),
                            Err(_) => Wire::Err(RemoteError {
                                kind: "Closed".into(),
                                message: "the handler went away without answering".into(),
                            }),
                        };
                        let Ok(body) = serde_json::to_vec(&wire) else {
                            return;
                        };
                        let r = match ch
                            .basic_publish(
                                "".into(),
                                to.as_str().into(),
                                BasicPublishOptions::default(),
                                &body,
                                BasicProperties::default()
                                    .with_correlation_id(id)
                                    .with_content_type("application/json".into()),
                            )
                            .await
                        {
                            Ok(confirm) => confirm.await.map(|_| ()),
                            Err(e) => Err(e),
                        };
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "cannot send an RPC reply");
                        }
                    });
                    Some(rtx)
                }
                _ => None,
            };
            if self.tx.send(Incoming { envelope, reply }).await.is_err() {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The broker the test matrix starts (`scripts/start-test-databases.sh`), or None to skip.
    fn broker() -> Option<RabbitBus> {
        match std::env::var("TESSERA_TEST_RABBIT_URL") {
            Ok(url) if !url.is_empty() => Some(RabbitBus::new(&url).expect("url")),
            _ => {
                eprintln!("TESSERA_TEST_RABBIT_URL is not set: skipping the RabbitMQ bus test");
                None
            }
        }
    }

    fn prefix() -> String {
        format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..8])
    }

    #[tokio::test]
    async fn call_cast_fanout_and_errors() {
        if let Some(bus) = broker() {
            crate::conformance::call_cast_fanout_and_errors(&bus, &prefix()).await;
        }
    }

    #[tokio::test]
    async fn fanout_reaches_every_server() {
        if let Some(bus) = broker() {
            crate::conformance::fanout_reaches_every_server(&bus, &prefix()).await;
        }
    }

    #[tokio::test]
    async fn a_cast_waits_in_its_queue_for_a_restarting_server() {
        let Some(bus) = broker() else { return };
        let topic = format!("{}compute", prefix());
        let l = bus.listen(&topic, "h1").await.unwrap();
        drop(l);
        // The listener is gone (its consumers cancelled) but its queue stays: the cast is kept, and the next
        // listener gets it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        bus.cast(
            &Target::server(&topic, "h1"),
            Envelope::new("build", serde_json::json!({"n": 7}), "r"),
        )
        .await
        .unwrap();
        let mut again = bus.listen(&topic, "h1").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), again.recv())
            .await
            .expect("delivered")
            .expect("open");
        assert_eq!(got.envelope.args["n"], 7);
    }

    #[test]
    fn urls_become_amqp_uris_and_passwords_are_masked() {
        assert_eq!(
            amqp_uris("rabbit://nova:secret@10.0.0.1:5672/").unwrap(),
            vec!["amqp://nova:secret@10.0.0.1:5672/%2f?heartbeat=30"]
        );
        assert_eq!(
            amqp_uris("rabbit://u:p@h1,h2:5673/cell1").unwrap(),
            vec![
                "amqp://u:p@h1:5672/cell1?heartbeat=30",
                "amqp://u:p@h2:5673/cell1?heartbeat=30"
            ]
        );
        assert!(amqp_uris("rabbit://u:p@h1:5671/?ssl=1").is_err());
        assert!(amqp_uris("rabbit:///").is_err());
        assert_eq!(
            mask("rabbit://nova:secret@h1:5672,nova:secret@h2/v"),
            "rabbit://nova:****@h1:5672,nova:****@h2/v"
        );
    }
}
