//! `penwarden serve`: wires the store, the InfluxDB writer, ingest and the API together.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use penwarden_store::Store;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::Config;

/// `allow_plaintext` is `--allow-plaintext`: as `api.allow_plaintext = true`.
pub(crate) fn run(config_file: Option<&Path>, allow_plaintext: bool) -> anyhow::Result<()> {
    let mut config = Config::load(config_file, |name| std::env::var(name).ok()).map_err(anyhow::Error::msg)?;
    config.api.allow_plaintext |= allow_plaintext;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // First of all: from here on a SIGTERM waits for the select below (a clean drain, exit 0).
    // Installed later, one arriving while the store, the broker or the gRPC listener is being
    // set up would kill the process (the listener accepts connections as soon as it is bound,
    // so a supervisor may already take penwarden for up and stop it).
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // Then, before anything is opened: a server that would expose API keys does not start.
    let grpc_tls = config.api.tls().map_err(anyhow::Error::msg)?;
    config.api.check_plaintext(grpc_tls.is_some()).map_err(anyhow::Error::msg)?;
    let store = Store::connect(&config.store.url).await?.with_thresholds(config.compliance.clone());
    // The thresholds every verdict of this run is judged by, in the audit trail.
    let thresholds = serde_json::to_value(&config.compliance).context("encoding the thresholds")?;
    let started =
        crate::audit::server_entry("server", "penwarden.start", serde_json::json!({ "thresholds": thresholds }), 0);
    if let Some(head) = store.append_audit(&[started]).await? {
        tracing::info!(head = %head, "audit chain head");
    }
    let writer = penwarden_influx::Writer::new(config.influx.clone())?;
    writer.check().await?;
    writer.ensure_database().await?;
    let writer = Arc::new(writer);
    if let Some(addr) = config.metrics.addr {
        // Buckets from 1 ms (a batch commit) to an hour (ingest lag of a pen that was offline).
        const BUCKETS: &[f64] =
            &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0];
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .context("histogram buckets")?
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve Prometheus metrics on {addr}"))?;
        tracing::info!(%addr, "Prometheus metrics on /metrics");
        zero_counters();
    }

    let directory = store.directory().clone();
    let derived_lines: penwarden_api::DerivedLines =
        Arc::new(move |effects| penwarden_ingest::points::derived(effects, &directory));
    let (replays, replayed) = tokio::sync::mpsc::channel(1024);
    let rate_limit =
        penwarden_api::RateLimit { per_s: config.api.rate_limit_per_s, burst: config.api.rate_limit_burst };
    let api = penwarden_api::Server::bind(
        config.api.grpc_addr,
        grpc_tls.as_ref(),
        rate_limit,
        store.clone(),
        derived_lines,
        replays,
    )
    .await?;
    let api = match config.api.http_addr {
        Some(addr) => api.with_http(addr).await?,
        None => api,
    };
    if let Some(addr) = api.http_addr() {
        tracing::info!(addr = %addr?, "HTTP API (JSON, server-sent events) on /api/v1");
    }
    let grpc_addr = api.local_addr()?;
    let ingest = penwarden_ingest::Service::connect(config.ingest.clone(), store.clone(), writer).await?;
    let stats = ingest.stats();

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(follow_directory_changes(store.clone(), stop_rx.clone()));
    let api_task = api.spawn(stop_rx.clone())?;
    let mut ingest_task = ingest.spawn(stop_rx, replayed);
    let mqtt = penwarden_ingest::redacted_url(&config.ingest.mqtt_url);
    let influx = penwarden_ingest::redacted_url(&config.influx.url);
    tracing::info!(%grpc_addr, %mqtt, %influx, store = %penwarden_store::redact_url(&config.store.url), "penwarden serving");

    let ingest_ended = tokio::select! {
        _ = terminate.recv() => { tracing::info!("SIGTERM: draining"); None }
        _ = interrupt.recv() => { tracing::info!("SIGINT: draining"); None }
        // Ingest stops on its own only on an error it cannot retry: stop everything, exit 1.
        ended = &mut ingest_task => Some(ended),
    };
    let _ = stop_tx.send(true);
    let deadline = Duration::from_secs(config.api.shutdown_deadline_s);
    let drained = tokio::time::timeout(deadline, async {
        let ingest = match ingest_ended {
            Some(ended) => ended,
            None => ingest_task.await,
        };
        let api = api_task.await;
        (ingest, api)
    })
    .await;
    store.close().await;
    match drained {
        Ok((ingest, api)) => {
            ingest.context("ingest task panicked")??;
            api.context("API task panicked")??;
            use penwarden_ingest::Stats;
            tracing::info!(
                messages = Stats::get(&stats.messages),
                samples = Stats::get(&stats.samples),
                points = Stats::get(&stats.points_written),
                quarantined = Stats::get(&stats.quarantined),
                "stopped cleanly"
            );
            Ok(())
        }
        Err(_) => {
            anyhow::bail!("shutdown took longer than {} s; unacked messages stay with the broker", deadline.as_secs())
        }
    }
}

/// Keeps the in-memory pen directory in step with registrations other instances sharing the
/// store make: a registration through one instance is used by the others within half a second.
async fn follow_directory_changes(store: Store, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_millis(500));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        match store.refresh_directory().await {
            Ok(true) => tracing::debug!("pen directory read again: another instance changed it"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not check the pen directory for changes; trying again"),
        }
    }
}

/// Counters without labels start at 0 on /metrics instead of appearing with their first
/// event: a dashboard then shows "0 reconnects", not "no data", and a rate over them is
/// defined from the start.
fn zero_counters() {
    for name in [
        "penwarden_mqtt_messages_received_total",
        "penwarden_mqtt_messages_acked_total",
        "penwarden_mqtt_reconnects_total",
        "penwarden_duplicate_events_total",
        "penwarden_seq_conflicts_total",
        "penwarden_influx_points_written_total",
        "penwarden_influx_points_rejected_total",
        "penwarden_influx_write_failures_total",
        "penwarden_points_spooled_total",
        "penwarden_quarantine_replayed_total",
        "penwarden_store_commit_failures_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
}
