//! pensim's MQTT connections: `mqtt://` or `mqtts://`, shared by all pens or, with
//! `--pen-cert-dir`, one per pen with that pen's own client certificate (a broker configured
//! like deploy/mosquitto-tls.conf takes the certificate's CN as the pen's identity, and its ACL
//! lets each pen publish only on its own topics).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use penwarden_transport::{ClientFiles, MqttAddress};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, TlsConfiguration, Transport};

use crate::Args;

/// MQTT options for `args.mqtt_url` under `client_id`, presenting `identity` (certificate and
/// key files) over TLS if given.
pub(crate) fn options(
    args: &Args,
    client_id: String,
    identity: Option<(PathBuf, PathBuf)>,
) -> anyhow::Result<MqttOptions> {
    let address = MqttAddress::parse(&args.mqtt_url).context("--mqtt-url")?;
    let mut options = MqttOptions::new(client_id, &address.host, address.port);
    if address.tls {
        let ca_file = args.mqtt_ca_file.clone().context("an mqtts:// URL needs --mqtt-ca-file")?;
        let config =
            penwarden_transport::client_config(&ClientFiles { ca_file, identity }).map_err(anyhow::Error::msg)?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    } else if identity.is_some() {
        anyhow::bail!("--pen-cert-dir needs an mqtts:// URL: certificates are presented over TLS");
    }
    Ok(options)
}

/// Connects and waits for the CONNACK, then keeps polling in a task that calls `on_ack` for
/// every PUBACK.
pub(crate) async fn connect(
    options: MqttOptions,
    capacity: usize,
    url: &str,
    on_ack: impl Fn() + Send + 'static,
) -> anyhow::Result<(AsyncClient, tokio::task::JoinHandle<()>)> {
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {}
        Ok(Ok(other)) => anyhow::bail!("unexpected first MQTT packet {other:?}"),
        Ok(Err(e)) => anyhow::bail!("cannot connect to {url}: {e}"),
        Err(_) => anyhow::bail!("no CONNACK from {url} within 10 s"),
    }
    let eventloop = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => on_ack(),
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("pensim: MQTT connection error: {e}; reconnecting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    Ok((client, eventloop))
}

/// The fleet's connections: one for all pens, or one per pen.
pub(crate) struct Links {
    shared: Option<AsyncClient>,
    per_pen: HashMap<String, AsyncClient>,
    eventloops: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Links {
    pub(crate) async fn open(args: &Args, pens: &[String], acked: Arc<AtomicU64>) -> anyhow::Result<Links> {
        let configure = |options: &mut MqttOptions| {
            // A persistent session, like a real pen's: rumqttc drops unacknowledged publishes
            // when it reconnects to a fresh session, so a broker restart would lose them.
            options
                .set_clean_session(false)
                .set_keep_alive(Duration::from_secs(30))
                // rumqttc reuses packet ids modulo its inflight limit; after a reconnect,
                // replayed publishes can collide with new ones and stall. A full 16-bit id
                // space avoids it.
                .set_inflight(u16::MAX)
                .set_request_channel_capacity(10_000);
        };
        let mut links = Links { shared: None, per_pen: HashMap::new(), eventloops: Default::default() };
        match &args.pen_cert_dir {
            None => {
                let mut options = options(args, format!("pensim-{}-{}", args.seed, std::process::id()), None)?;
                configure(&mut options);
                let (client, eventloop) =
                    connect(options, 10_000, &args.mqtt_url, move || _ = acked.fetch_add(1, Ordering::Relaxed)).await?;
                links.shared = Some(client);
                links.eventloops.get_mut().unwrap_or_else(|p| p.into_inner()).push(eventloop);
            }
            Some(dir) => {
                for pen in pens {
                    let identity = (dir.join(format!("{pen}.crt")), dir.join(format!("{pen}.key")));
                    // The pen's serial is its client id, as a real pen's would be.
                    let mut options = options(args, pen.clone(), Some(identity))?;
                    configure(&mut options);
                    let acked = acked.clone();
                    let on_ack = move || _ = acked.fetch_add(1, Ordering::Relaxed);
                    let (client, eventloop) =
                        connect(options, 10_000, &args.mqtt_url, on_ack).await.with_context(|| format!("pen {pen}"))?;
                    links.per_pen.insert(pen.clone(), client);
                    links.eventloops.get_mut().unwrap_or_else(|p| p.into_inner()).push(eventloop);
                }
            }
        }
        Ok(links)
    }

    /// The connection `pen` publishes on.
    pub(crate) fn client(&self, pen: &str) -> anyhow::Result<&AsyncClient> {
        match &self.shared {
            Some(client) => Ok(client),
            None => self.per_pen.get(pen).with_context(|| format!("no MQTT connection for pen {pen}")),
        }
    }

    /// Disconnects every connection (each flushes what it has queued first).
    pub(crate) async fn close(&self) -> anyhow::Result<()> {
        for client in self.shared.iter().chain(self.per_pen.values()) {
            client.disconnect().await.context("disconnecting")?;
        }
        let eventloops = std::mem::take(&mut *self.eventloops.lock().unwrap_or_else(|p| p.into_inner()));
        for eventloop in eventloops {
            let _ = tokio::time::timeout(Duration::from_secs(5), eventloop).await;
        }
        Ok(())
    }
}
