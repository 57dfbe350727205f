//! The MQTT side: a persistent session with manual acks, re-subscribing whenever the broker
//! has no session for us (rumqttc does not do that by itself).
//!
//! MQTT 5, for its flow control: the CONNECT's receive maximum bounds how many QoS 1 messages
//! the broker sends before their acks come back. Mosquitto 2.0.11 holds to it only while no
//! acks flow, though; above capacity it sends far more, and rumqttc's event loop reads ten
//! incoming packets for each ack it writes. The broker's PINGRESP then waits behind the
//! backlog, and rumqttc, which takes only a PINGRESP as a sign of life, gave up on the
//! connection: every unacked message came again after the reconnect, a livelock. So here any
//! packet from the broker counts as life, and the connection is polled (for pings and acks)
//! even while the queue for the pipeline is full.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use penwarden_transport::{redacted_url, AddressError, MqttAddress};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Filter, Packet, Publish, RetainForwardRule};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::{mpsc, watch};

use crate::pipeline::Error;
use crate::topic;
use crate::Options;

/// Outgoing QoS 1/2 publishes in flight: penwarden only subscribes.
const OUTGOING_INFLIGHT_LIMIT: u16 = 16;

/// Received publishes held for the pipeline before polling pauses; below the request
/// channel's capacity (1 << 16) so the acks of all of them always fit.
const MAX_PENDING: usize = 20_000;

/// A publish and the connection it arrived on: acks are only valid on that connection (after
/// a reconnect the broker redelivers, and a stale packet id could ack a different message).
pub(crate) struct Incoming {
    pub(crate) topic: String,
    pub(crate) payload: bytes::Bytes,
    /// The packet id and QoS, which make its ack.
    pkid: u16,
    qos: QoS,
    pub(crate) connection: u64,
    /// The payload's size as it arrived. A payload over the ingest limit is cut to an excerpt
    /// here, so a hostile message holds memory only while it is read.
    pub(crate) payload_len: usize,
    /// The quarantine entry this message is replayed from (an operator's review, not the
    /// broker): it is not rate limited, and nothing acks it.
    pub(crate) replay_of: Option<i64>,
}

impl Incoming {
    fn new(publish: Publish, connection: u64, max_payload_bytes: usize) -> Incoming {
        let payload_len = publish.payload.len();
        let kept = if payload_len > max_payload_bytes { payload_len.min(OVERSIZED_EXCERPT_BYTES) } else { payload_len };
        // A copy, not a slice: a slice keeps the whole read buffer it came from alive, and
        // rumqttc reads many publishes into one buffer; while messages wait for the store, a
        // few hundred bytes each held 36 MiB of read buffers (heap profile at 300k samples/s).
        let payload = bytes::Bytes::copy_from_slice(&publish.payload[..kept]);
        // MQTT topics are UTF-8; anything else is read lossily and fails topic validation.
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        Incoming { topic, payload, pkid: publish.pkid, qos: publish.qos, connection, payload_len, replay_of: None }
    }

    /// A quarantined message, fed to ingest again. Connection 0 is never a live one, so its
    /// ack is dropped.
    pub(crate) fn replay(replayable: penwarden_store::Replayable) -> Incoming {
        let payload_len = replayable.payload.len();
        Incoming {
            topic: replayable.topic,
            payload: replayable.payload.into(),
            pkid: 0,
            qos: QoS::AtLeastOnce,
            connection: 0,
            payload_len,
            replay_of: Some(replayable.id),
        }
    }

    /// True when the payload was cut because it is over the ingest limit.
    pub(crate) fn is_cut(&self) -> bool {
        self.payload.len() < self.payload_len
    }

    /// What acks this message: its packet id and QoS, on the connection it came on.
    fn ack(&self) -> PendingAck {
        PendingAck { pkid: self.pkid, qos: self.qos, connection: self.connection }
    }
}

/// An ack waiting for room in the client's request channel. Only what the PUBACK needs: under
/// overload hundreds of thousands wait (rumqttc sends one request per poll, between reads of
/// up to ten publishes), and a whole `Publish` each (about 200 bytes) made that 100+ MiB.
#[derive(Debug, Clone, Copy)]
struct PendingAck {
    pkid: u16,
    qos: QoS,
    connection: u64,
}

impl PendingAck {
    fn publish(&self) -> Publish {
        let mut ack = Publish::new("", self.qos, Vec::new(), None);
        ack.pkid = self.pkid;
        ack
    }
}

/// What is kept of a payload over the limit: enough for the quarantine's excerpt.
const OVERSIZED_EXCERPT_BYTES: usize = 1024;

/// The largest packet MQTT can frame (its remaining-length field tops out at 256 MiB). The
/// client takes every packet the protocol allows: one it refused would drop the connection, come
/// back on every reconnect and hold up every pen behind it (and announced as the CONNECT's
/// maximum packet size, a smaller one would make the broker drop larger messages unseen). Size
/// is judged after reading, by the ingest limit, and a payload over it goes to the quarantine
/// and is acked.
const MQTT_MAX_PACKET_BYTES: u32 = 268_435_455 + 5;

/// A connection lost sooner than this after it was made does not reset the reconnect backoff:
/// a broker that accepts and then drops us at once is not healthy.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);

/// While polling is paused for the pipeline (MAX_PENDING), the event loop is still polled this
/// often, so that pings and acks keep going out and the broker does not give up on a client that
/// is only busy. Each such poll takes at most one of the few publishes rumqttc buffers from a
/// read, so the queue grows past its limit by a handful of messages a second, not more.
const PAUSED_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Sends the pipeline's acks without ever waiting on the MQTT client: acks travel through the
/// client's request channel, which only the polling task drains, and that task may be paused
/// waiting for the pipeline (MAX_PENDING). Waiting here could close that circle, so an ack the
/// channel has no room for waits in `overflow` and goes with the next ones.
pub(crate) struct Acker {
    client: AsyncClient,
    connection: Arc<AtomicU64>,
    overflow: std::collections::VecDeque<PendingAck>,
}

impl Acker {
    /// Queues the ack of a message (dropped if it came on an earlier connection: the broker
    /// redelivers those anyway).
    pub(crate) fn ack(&mut self, message: &Incoming) {
        self.flush();
        let ack = message.ack();
        if !self.overflow.is_empty() || !self.try_ack(&ack) {
            self.overflow.push_back(ack);
        }
    }

    /// Sends the acks that found no room earlier, oldest first, as far as there is room now.
    pub(crate) fn flush(&mut self) {
        while let Some(ack) = self.overflow.front() {
            if !self.try_ack(ack) {
                break;
            }
            self.overflow.pop_front();
        }
        metrics::gauge!("penwarden_mqtt_acks_waiting").set(self.overflow.len() as f64);
    }

    pub(crate) fn has_waiting(&self) -> bool {
        !self.overflow.is_empty()
    }

    /// Waits until every ack is queued; only for shutdown, when the polling task runs freely.
    pub(crate) async fn flush_all(&mut self) {
        while let Some(ack) = self.overflow.pop_front() {
            if ack.connection == self.connection.load(Ordering::Acquire) {
                if let Err(e) = self.client.ack(&ack.publish()).await {
                    tracing::warn!(error = %e, "could not queue MQTT ack; the broker will redeliver");
                }
            }
        }
    }

    /// False when the request channel is full (try again later); true when queued or moot.
    fn try_ack(&self, ack: &PendingAck) -> bool {
        if ack.connection != self.connection.load(Ordering::Acquire) {
            return true;
        }
        match self.client.try_ack(&ack.publish()) {
            Ok(()) => true,
            Err(rumqttc::v5::ClientError::TryRequest(_)) => false,
            Err(e) => {
                tracing::warn!(error = %e, "could not queue MQTT ack; the broker will redeliver");
                true
            }
        }
    }
}

pub(crate) struct Connection {
    client: AsyncClient,
    eventloop: EventLoop,
    connection: Arc<AtomicU64>,
    filters: Vec<Filter>,
    /// The other subscription mode's filters (plain or shared), dropped at the first connect
    /// that resumes a session.
    unsubscribe: Vec<String>,
    max_payload_bytes: usize,
}

impl Connection {
    /// Connects and waits for the first CONNACK, so a wrong URL fails at start, clearly.
    pub(crate) async fn open(options: &Options) -> Result<Connection, Error> {
        let address = MqttAddress::parse(&options.mqtt_url).map_err(|error| match error {
            AddressError::Credentials(_) => Error::Config(format!(
                "{error}: set the user name in ingest.username (PENWARDEN_MQTT_USERNAME) and the password in \
                 ingest.password_file (PENWARDEN_MQTT_PASSWORD_FILE) or PENWARDEN_MQTT_PASSWORD"
            )),
            AddressError::Invalid(..) => Error::Config(error.to_string()),
        })?;
        let mut mqtt = MqttOptions::new(&options.client_id, &address.host, address.port);
        if address.tls {
            let files = options.tls_files().map_err(Error::Config)?;
            let config = penwarden_transport::client_config(&files).map_err(Error::Config)?;
            mqtt.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        mqtt.set_clean_start(false)
            // The session outlives the connection (MQTT 5 ends it with the connection unless
            // told otherwise): 0xFFFFFFFF is "never expires".
            .set_session_expiry_interval(Some(u32::MAX))
            .set_receive_maximum(Some(options.receive_maximum.max(1)))
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(options.keep_alive_s.max(5)))
            .set_max_packet_size(Some(MQTT_MAX_PACKET_BYTES))
            .set_request_channel_capacity(1 << 16)
            // penwarden publishes nothing, and rumqttc allocates a slot per outgoing publish in
            // flight up front (13.6 MiB for the default of 65,535).
            .set_outgoing_inflight_upper_limit(OUTGOING_INFLIGHT_LIMIT);
        if !options.username.is_empty() {
            mqtt.set_credentials(&options.username, options.password.expose());
        } else if !options.password.is_empty() {
            return Err(Error::Config("a broker password is set but no user name (ingest.username)".into()));
        }
        let (client, mut eventloop) = AsyncClient::new(mqtt, 1 << 16);
        topic::check_share_group(&options.share_group).map_err(Error::Config)?;
        let (subscribe, unsubscribe) = topic::subscriptions(&options.topic_root, &options.share_group);
        let filters = subscribe
            .into_iter()
            .map(|path| Filter {
                // Retained state messages come with a new subscription only, not again with
                // each resubscription (shared subscriptions get none at all: MQTT 5, 3.3.1.3).
                retain_forward_rule: RetainForwardRule::OnNewSubscribe,
                ..Filter::new(path, QoS::AtLeastOnce)
            })
            .collect();
        // The first connection is number 1; each loss (or failed attempt) moves it on (`on_lost`).
        let connection = Arc::new(AtomicU64::new(1));
        let first = tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await;
        let shown = redacted_url(&options.mqtt_url);
        let unreachable = |reason: String| Error::Unreachable(format!("MQTT broker {shown}: {reason}"));
        match first {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {
                let max_payload_bytes = options.max_payload_bytes;
                let mut this = Connection { client, eventloop, connection, filters, unsubscribe, max_payload_bytes };
                this.on_connected(ack.session_present);
                Ok(this)
            }
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                Err(unreachable(format!("connection refused: {:?}", ack.code)))
            }
            Ok(Ok(other)) => Err(unreachable(format!("unexpected first packet {other:?}"))),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable("no CONNACK within 10 s".into())),
        }
    }

    pub(crate) fn acker(&self) -> Acker {
        Acker { client: self.client.clone(), connection: self.connection.clone(), overflow: Default::default() }
    }

    fn on_connected(&mut self, session_present: bool) {
        let generation = self.connection.load(Ordering::Acquire);
        metrics::gauge!("penwarden_mqtt_connected").set(1.0);
        if generation > 1 {
            metrics::counter!("penwarden_mqtt_reconnects_total").increment(1);
        }
        tracing::info!(session_present, connection = generation, "connected to MQTT broker");
        // Subscribe at every connect, not only to a fresh session: a resumed session may hold
        // the other mode's subscription (the share group was set or cleared since), which is
        // dropped here. Resubscribing an existing filter changes nothing. Non-blocking, since
        // this runs inside the poll loop that drains the request channel.
        if let Err(e) = self.client.try_subscribe_many(self.filters.clone()) {
            tracing::error!(error = %e, "could not queue MQTT subscribe");
        }
        // Once per process is enough: only a change of configuration, which takes a restart,
        // leaves the other mode's subscription behind.
        if session_present && !self.unsubscribe.is_empty() {
            tracing::info!(
                filters = ?self.unsubscribe,
                "dropping subscriptions of the other mode (share group or not) left in the session, if any; \
                 the broker may answer that none existed"
            );
            for filter in std::mem::take(&mut self.unsubscribe) {
                if let Err(e) = self.client.try_unsubscribe(filter.clone()) {
                    tracing::error!(error = %e, filter, "could not queue MQTT unsubscribe");
                }
            }
        }
    }

    /// The connection is gone: from now on the acks of everything it delivered are dropped,
    /// not sent on the next connection. Its packet ids mean nothing there (the broker redelivers
    /// those messages), and an ack sent anyway could release another message before it is
    /// durable. Numbering the next connection at the loss, not at its CONNACK, also covers
    /// the acks the pipeline makes while the client reconnects. Publishes rumqttc read from the
    /// lost connection and still buffers go too, for the same reason.
    fn on_lost(&mut self) {
        self.connection.fetch_add(1, Ordering::AcqRel);
        self.eventloop.state.events.clear();
        metrics::gauge!("penwarden_mqtt_connected").set(0.0);
    }

    /// Takes what the broker sent; a publish is returned for the pipeline.
    fn on_incoming(&mut self, packet: Packet, connected_at: &mut Option<tokio::time::Instant>) -> Option<Publish> {
        // Whatever the broker sends proves the connection alive. rumqttc takes only a PINGRESP
        // as proof, and when the broker has sent far more than penwarden has read yet (Mosquitto
        // does not hold to the receive maximum while acks flow), the PINGRESP waits behind all
        // of it: the connection would be given up, and every unacked message sent again, only
        // because penwarden is busy. A silent broker still fails at the next ping.
        self.eventloop.state.await_pingresp = false;
        match packet {
            Packet::ConnAck(ack) => {
                *connected_at = Some(tokio::time::Instant::now());
                self.on_connected(ack.session_present);
                None
            }
            Packet::Publish(publish) => Some(publish),
            _ => None,
        }
    }

    /// Polls until `stop` turns true, forwarding publishes; then keeps polling until the
    /// pipeline has sent its last acks (`drained`), and disconnects.
    pub(crate) async fn run(
        mut self,
        forward: mpsc::Sender<Incoming>,
        mut stop: watch::Receiver<bool>,
        mut drained: watch::Receiver<bool>,
    ) {
        let mut forward = Some(forward);
        let mut backoff = Duration::from_millis(100);
        // When the current connection was made; None while reconnecting.
        let mut connected_at = Some(tokio::time::Instant::now());
        // Publishes received and not yet taken by the pipeline. The event loop must be polled
        // all the time, because polling is also what sends the pipeline's acks: waiting for
        // room in the pipeline's channel instead deadlocks once the ack queue fills (seen at
        // 300k samples/s). Its size is bounded by the broker's in-flight window for this
        // client (unacked QoS 1 messages), which the acks keep moving, and by MAX_PENDING:
        // beyond it the event loop is polled only every PAUSED_POLL_INTERVAL (for pings and
        // acks) until the pipeline catches up, and the broker's sending waits on TCP.
        let mut pending: std::collections::VecDeque<Incoming> = std::collections::VecDeque::new();
        let mut paused_poll = tokio::time::interval(PAUSED_POLL_INTERVAL);
        paused_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One poll is due although the pending queue is full (a PAUSED_POLL_INTERVAL passed).
        let mut poll_while_paused = false;
        loop {
            if *stop.borrow() {
                forward = None;
                pending.clear();
            }
            metrics::gauge!("penwarden_mqtt_pending_messages").set(pending.len() as f64);
            let mut pipeline_gone = false;
            tokio::select! {
                _ = stop.changed(), if forward.is_some() => continue,
                _ = drained.changed() => break,
                permit = async { forward.as_ref()?.reserve().await.ok() }, if !pending.is_empty() && forward.is_some() => {
                    match (permit, pending.pop_front()) {
                        (Some(permit), Some(message)) => permit.send(message),
                        // The pipeline is gone: nothing more to forward.
                        _ => pipeline_gone = true,
                    }
                }
                _ = paused_poll.tick(), if pending.len() >= MAX_PENDING && !poll_while_paused => {
                    poll_while_paused = true;
                }
                polled = self.eventloop.poll(), if pending.len() < MAX_PENDING || poll_while_paused => {
                    poll_while_paused = false;
                    match polled {
                        Ok(Event::Incoming(packet)) => {
                            let forwarding = forward.is_some();
                            if let Some(publish) = self.on_incoming(packet, &mut connected_at) {
                                if forwarding {
                                    let connection = self.connection.load(Ordering::Acquire);
                                    pending.push_back(Incoming::new(publish, connection, self.max_payload_bytes));
                                }
                            }
                        }
                        Ok(Event::Outgoing(_)) => {}
                        Err(e) => {
                            self.on_lost();
                            // What the lost connection delivered and the pipeline has not taken
                            // comes again on the next one: processing it now only fills `pending`
                            // with messages whose acks are dropped (and once it is full, polling
                            // pauses, the keep-alive fails and the next connection is lost too).
                            pending.clear();
                            if connected_at.take().is_some_and(|at| at.elapsed() >= STABLE_CONNECTION) {
                                backoff = Duration::from_millis(100);
                            }
                            tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost; reconnecting");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
                        }
                    }
                }
            }
            if pipeline_gone {
                forward = None;
            }
        }
        // Flush queued acks, then say goodbye so the broker does not publish our will.
        let _ = self.client.try_disconnect();
        let flush = async {
            while let Ok(event) = self.eventloop.poll().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), flush).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_ack_keeps_only_what_the_puback_needs() {
        // Hundreds of thousands wait under overload: a whole Publish each cost 100+ MiB.
        assert!(std::mem::size_of::<PendingAck>() <= 16, "{}", std::mem::size_of::<PendingAck>());
        assert!(std::mem::size_of::<Publish>() > 8 * std::mem::size_of::<PendingAck>());
        let ack = PendingAck { pkid: 7, qos: QoS::AtLeastOnce, connection: 3 }.publish();
        assert_eq!((ack.pkid, ack.qos, ack.payload.len(), ack.topic.len()), (7, QoS::AtLeastOnce, 0, 0));
    }
}
