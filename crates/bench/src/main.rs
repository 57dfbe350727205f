//! `penwarden-bench`: the load benchmark. Starts real Mosquitto, InfluxDB 1.x and a release
//! `penwarden serve` (the test harness's servers, on free loopback ports), drives them with
//! `pensim --load-rate`, and writes the results as JSON and a markdown table.
//!
//! Run it through `scripts/bench.sh` (builds release binaries first); docs/performance.md
//! explains each scenario.

mod api_load;
mod bridge;
mod seed;

use std::time::{Duration, Instant};

use penwarden_proto::api::v1 as api;
use penwarden_tests::{binary, free_port, metric, Influxd, Mosquitto, Penwarden, Publisher, Victoria};
use prost::Message;
use tokio_stream::StreamExt;

/// The load benchmark (targets 1–3 of docs/performance.md), or one of its helpers.
#[derive(Debug, clap::Parser)]
#[command(name = "penwarden-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: LoadOptions,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Writes a store with target 4's volumes (1M cartridges, 200k sessions, 100k violations)
    /// to `sqlite:PATH` or an empty PostgreSQL database (`postgres://…`).
    Seed { store: String },
    /// Target 4: seeds a store (the one PENWARDEN_TEST_STORE names), starts `penwarden serve`
    /// on it and drives its API.
    Api {
        /// Requests per second offered.
        #[arg(default_value_t = 10_000)]
        rate: u64,
        #[arg(default_value_t = 20)]
        seconds: u64,
    },
    /// The reference the side-by-side scenario measures penwarden against: the simplest
    /// MQTT-to-InfluxDB bridge (decode, line protocol, write, ack), as a process of its own.
    Bridge(bridge::BridgeOptions),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// Targets 1 and 2: every fleet size at every offered rate, gzip off.
    Throughput,
    /// Target 2 with gzip on: 1000 pens at 100k samples/s.
    Gzip,
    /// Target 3: publish of an offending session start to WatchViolations.
    Latency,
    /// What binds: InfluxDB alone and Mosquitto alone, without penwarden.
    Ceilings,
    /// Above capacity: `--overload-rate` (twice the sustained rate) for the duration, then
    /// nothing: points landed per second during and after, reconnects, drain time.
    Overload,
    /// One table from one invocation: InfluxDB alone, Mosquitto alone, the minimal bridge and
    /// penwarden at `--compare-rate`, each run `--runs` times, with penwarden's rate as a
    /// fraction of the others'.
    SideBySide,
}

/// Where penwarden writes the time series in the throughput and gzip scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Sink {
    /// InfluxDB 1.x through its v1 write API.
    Influxdb,
    /// VictoriaMetrics through the InfluxDB v2 write API (`/api/v2/write`).
    Victoria,
}

#[derive(Debug, clap::Args)]
struct LoadOptions {
    /// Seconds of load per run.
    #[arg(long = "duration", default_value_t = 60)]
    duration_s: u64,
    /// Offered samples per second, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000u64, 200_000, 300_000, 400_000, 500_000])]
    rates: Vec<u64>,
    /// Fleet sizes (pens), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 10_000])]
    fleets: Vec<usize>,
    /// Where results.json and results.md go.
    #[arg(long, default_value = "bench-results")]
    out: std::path::PathBuf,
    /// Runs per scenario; the tables show medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Offered samples/s of the overload scenario: twice what the throughput scenario sustains.
    #[arg(long, default_value_t = 600_000)]
    overload_rate: u64,
    /// Offered samples/s (1000 pens) of the side-by-side scenario: above what either bridge
    /// sustains, so that each shows its end-to-end rate.
    #[arg(long, default_value_t = 300_000)]
    compare_rate: u64,
    /// Background telemetry (samples/s) while the latency scenario probes.
    #[arg(long, default_value_t = 100_000)]
    background_rate: u64,
    /// penwarden instances sharing the store and the fleet (an MQTT shared subscription) in
    /// the throughput and overload scenarios. The store is the one PENWARDEN_TEST_STORE names
    /// (SQLite unless told; `postgres` for a new database on 127.0.0.1:5432).
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// The time-series database of the throughput, gzip and overload scenarios.
    #[arg(long, value_enum, default_value_t = Sink::Influxdb)]
    sink: Sink,
    /// Scenarios to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_enum,
          default_values_t = [Scenario::Throughput, Scenario::Gzip, Scenario::Latency, Scenario::Ceilings])]
    scenarios: Vec<Scenario>,
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of a process in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds the PostgreSQL server has used (every `postgres` process, and what its
/// postmaster reaped of exited backends): the store's cost on PostgreSQL. The server may serve
/// other databases too; the benchmark assumes they are idle.
fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((name, rest)) = stat.split_once(" (").and_then(|(_, rest)| rest.rsplit_once(')')) else {
            continue;
        };
        if name != "postgres" {
            continue;
        }
        let fields: Vec<f64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0.0)).collect();
        // utime, stime, cutime, cstime: fields 14 to 17 of the line, 11 to 14 after the name.
        total += fields.get(11..15).map_or(0.0, |times| times.iter().sum::<f64>()) / 100.0;
    }
    total
}

struct Stack {
    mosquitto: Mosquitto,
    sink: SinkServer,
    penwarden: Penwarden,
    /// Further instances on the same store and fleet (`--instances`).
    others: Vec<Penwarden>,
}

impl Stack {
    fn target(&self) -> LoadTarget {
        LoadTarget {
            mqtt_url: self.mosquitto.url(),
            landed: match &self.sink {
                SinkServer::Influxdb(influxd) => Landed::Influxdb(influxd.url()),
                SinkServer::Victoria(victoria) => Landed::Victoria(victoria.url()),
            },
            pids: std::iter::once(&self.penwarden).chain(&self.others).map(|instance| instance.process.id()).collect(),
        }
    }
}

enum SinkServer {
    Influxdb(Influxd),
    Victoria(Victoria),
}

/// What a load run drives and measures: a broker, where the samples must land, and the
/// processes between them (penwarden's instances, or the minimal bridge).
struct LoadTarget {
    mqtt_url: String,
    landed: Landed,
    pids: Vec<u32>,
}

/// Where a load run counts the samples that landed.
enum Landed {
    /// pensim counts them in this InfluxDB (`--verify-influx`).
    Influxdb(String),
    /// The benchmark counts them in this VictoriaMetrics.
    Victoria(String),
}

async fn stack(gzip: bool, instances: usize, sink: Sink) -> Stack {
    stack_with(gzip, instances, sink, &[]).await
}

async fn stack_with(gzip: bool, instances: usize, sink: Sink, extra_env: &[(&str, String)]) -> Stack {
    let mosquitto = Mosquitto::start().await;
    let (sink, sink_env) = match sink {
        Sink::Influxdb => {
            let influxd = Influxd::start().await;
            let env = vec![("PENWARDEN_INFLUX_URL", influxd.url()), ("PENWARDEN_INFLUX_API", "v1".to_string())];
            (SinkServer::Influxdb(influxd), env)
        }
        Sink::Victoria => {
            let victoria = Victoria::start().await;
            let env = vec![
                ("PENWARDEN_INFLUX_URL", victoria.url()),
                ("PENWARDEN_INFLUX_API", "v2".to_string()),
                ("PENWARDEN_INFLUX_ORG", "penwarden".to_string()),
            ];
            (SinkServer::Victoria(victoria), env)
        }
    };
    let mut env = sink_env;
    env.extend([
        ("PENWARDEN_INFLUX_GZIP", gzip.to_string()),
        ("PENWARDEN_AUTO_REGISTER_PENS", "true".to_string()),
        ("RUST_LOG", "warn".to_string()),
    ]);
    env.extend(extra_env.iter().cloned());
    if instances > 1 {
        env.push(("PENWARDEN_MQTT_SHARE_GROUP", "bench".to_string()));
    } else {
        // A client id of the run's own: a persistent session from an earlier run (with its
        // backlog) never flows into this one.
        env.push(("PENWARDEN_MQTT_CLIENT_ID", format!("penwarden-bench-{}", free_port())));
    }
    let penwarden = Penwarden::start(&mosquitto.url(), &env).await;
    let mut others = Vec::new();
    for _ in 1..instances {
        others.push(Penwarden::start_sharing(&penwarden, &[]).await);
    }
    Stack { mosquitto, sink, penwarden, others }
}

/// Above capacity: `rate` for `duration_s`, then nothing, with penwarden's metrics and the
/// CPU time of penwarden, the sink and the broker read every second: points written per
/// second during the load and after it, reconnects, drain time, and where the cores went.
async fn overload_run(pens: usize, rate: u64, duration_s: u64, sink: Sink) -> serde_json::Value {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let stack = stack_with(false, 1, sink, &[("PENWARDEN_METRICS_ADDR", metrics_addr.clone())]).await;
    let sink_pid = match &stack.sink {
        SinkServer::Influxdb(influxd) => influxd.pid(),
        SinkServer::Victoria(victoria) => victoria.pid(),
    };
    let pids = [stack.penwarden.process.id(), sink_pid, stack.mosquitto.pid()];
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::<OverloadSample>::new()));
    let (sampler_addr, sampler_samples) = (metrics_addr.clone(), samples.clone());
    let started = Instant::now();
    let sampler = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Some(points) = metric(&sampler_addr, "penwarden_influx_points_written_total").await {
                let cpu = pids.map(cpu_seconds);
                sampler_samples.lock().unwrap_or_else(|p| p.into_inner()).push(OverloadSample {
                    at_s: started.elapsed().as_secs_f64(),
                    points,
                    cpu,
                });
            }
        }
    });
    let mut result = load_run(&stack.target(), pens, rate, duration_s).await;
    sampler.abort();
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let load = duration_s as f64;
    // The last sample at or before `t` (the first one when none is).
    let at = |t: f64| samples.iter().rev().find(|s| s.at_s <= t).or(samples.first()).cloned();
    // Points per second and cores used between two samples.
    let between = |from: Option<OverloadSample>, to: Option<OverloadSample>| match (from, to) {
        (Some(from), Some(to)) if to.at_s > from.at_s => {
            let seconds = to.at_s - from.at_s;
            let cores: Vec<f64> = (0..3).map(|i| round3((to.cpu[i] - from.cpu[i]) / seconds)).collect();
            ((to.points - from.points) / seconds, cores)
        }
        _ => (0.0, vec![0.0; 3]),
    };
    // During the load: its second half, past the start-up. After it: until the last point
    // landed (the sampler goes on while pensim verifies).
    let (during, cores_during) = between(at(load / 2.0), at(load));
    let last_point = samples.iter().find(|s| samples.last().is_some_and(|last| s.points >= last.points)).cloned();
    let (after, cores_after) = match &last_point {
        Some(last) if last.at_s > load + 1.0 => between(at(load), Some(last.clone())),
        _ => (0.0, vec![0.0; 3]),
    };
    let cores = |cores: &[f64]| serde_json::json!({"penwarden": cores[0], "sink": cores[1], "mosquitto": cores[2]});
    result["sink"] = format!("{sink:?}").to_lowercase().into();
    result["landed_per_s_during_load"] = round3(during).into();
    result["landed_per_s_after_load"] = round3(after).into();
    // When penwarden wrote its last point, after the load. pensim's count confirms it
    // (`verify_wait_s`), late by up to a count and the pause before it.
    result["drained_s"] = round3(last_point.map_or(0.0, |last| (last.at_s - load).max(0.0))).into();
    result["cores_during_load"] = cores(&cores_during);
    result["cores_after_load"] = cores(&cores_after);
    // Each second: time, points written so far, and CPU seconds so far of penwarden, the sink
    // and the broker.
    result["timeline"] = samples
        .iter()
        .map(|s| serde_json::json!([round3(s.at_s), s.points, round3(s.cpu[0]), round3(s.cpu[1]), round3(s.cpu[2])]))
        .collect::<Vec<_>>()
        .into();
    result["reconnects"] = metric(&metrics_addr, "penwarden_mqtt_reconnects_total").await.unwrap_or(0.0).into();
    result["received_messages"] =
        metric(&metrics_addr, "penwarden_mqtt_messages_received_total").await.unwrap_or(0.0).into();
    eprintln!(
        "  overload {rate}/s into {sink:?}: landed {during:.0}/s during, {after:.0}/s after, reconnects {}, drained in {} s \
         (counted in {} s); cores during {}, after {}",
        result["reconnects"], result["drained_s"], result["verify_wait_s"], result["cores_during_load"], result["cores_after_load"]
    );
    result
}

/// One reading of the overload run's sampler.
#[derive(Clone)]
struct OverloadSample {
    at_s: f64,
    /// penwarden's points written so far.
    points: f64,
    /// CPU seconds so far of penwarden, the sink and the broker.
    cpu: [f64; 3],
}

/// One load run: offered rate for the duration, then verify every sample landed.
async fn load_run(target: &LoadTarget, pens: usize, rate: u64, duration_s: u64) -> serde_json::Value {
    let pids = &target.pids;
    let cpu_of_instances = || pids.iter().map(|pid| cpu_seconds(*pid)).sum::<f64>();
    let cpu_before = cpu_of_instances();
    let postgres_before = postgres_cpu_seconds();
    let started = Instant::now();
    let mut pensim = tokio::process::Command::new(binary("pensim"));
    pensim
        .args(["--mqtt-url", &target.mqtt_url, "--pens", &pens.to_string(), "--connections", "4"])
        .args(["--load-rate", &rate.to_string(), "--duration", &duration_s.to_string(), "--qos", "1"])
        .args(["--seed", &free_port().to_string()]);
    if let Landed::Influxdb(url) = &target.landed {
        pensim.args(["--verify-influx", url]);
    }
    let output = pensim.output().await.expect("run pensim");
    assert!(output.status.success(), "pensim failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("summary");
    if let Landed::Victoria(url) = &target.landed {
        let expected = result["samples"].as_u64().unwrap_or(0);
        let (landed, waited) = victoria_landed(url, expected).await;
        result["landed_samples"] = landed.into();
        result["verify_wait_s"] = round3(waited.as_secs_f64()).into();
    }
    let cpu = cpu_of_instances() - cpu_before;
    let samples = result["samples"].as_f64().unwrap_or(0.0);
    let landed = result["landed_samples"].as_f64().unwrap_or(0.0);
    result["instances"] = pids.len().into();
    result["store"] = format!("{:?}", penwarden_store::scratch::ScratchStore::chosen_kind()).into();
    result["penwarden_cpu_s"] = round3(cpu).into();
    result["penwarden_cpu_s_per_million_samples"] = round3(cpu / (samples / 1e6)).into();
    if penwarden_store::scratch::ScratchStore::chosen_kind() == penwarden_store::BackendKind::Postgres {
        let postgres = postgres_cpu_seconds() - postgres_before;
        result["postgres_cpu_s"] = round3(postgres).into();
        result["postgres_cpu_s_per_million_samples"] = round3(postgres / (samples / 1e6)).into();
    }
    result["penwarden_peak_rss_mib"] = round3(pids.iter().map(|pid| peak_rss_mib(*pid)).fold(0.0, f64::max)).into();
    result["wall_s"] = round3(started.elapsed().as_secs_f64()).into();
    // End to end: what landed over the whole time from the first publish to the last sample
    // in InfluxDB (publishing, then the drain).
    let achieved = result["achieved_samples_per_s"].as_f64().unwrap_or(0.0);
    let drain_s = result["verify_wait_s"].as_f64().unwrap_or(0.0);
    if achieved > 0.0 {
        result["end_to_end_samples_per_s"] = round3(landed / (samples / achieved + drain_s)).into();
    }
    // Sustained: nothing lost, and the backlog drained within 5 s of the load stopping.
    let drained = result["verify_wait_s"].as_f64().unwrap_or(f64::MAX) <= 5.0;
    result["zero_loss"] = (landed == samples).into();
    result["sustained"] = (landed == samples && drained).into();
    eprintln!("  {pens} pens, offered {rate}/s: {result}");
    result
}

/// Polls VictoriaMetrics until it holds `expected` samples of pen telemetry, or 120 s pass
/// with no progress, as pensim's `--verify-influx` does for InfluxDB; returns what landed and
/// how long it took.
async fn victoria_landed(url: &str, expected: u64) -> (u64, Duration) {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut last = (0u64, Instant::now());
    loop {
        // Recent writes become searchable at once; pensim's samples are an hour old, so no
        // query window hides them.
        let _ = client.get(format!("{url}/internal/force_flush")).send().await;
        let query = [("query", "sum(count_over_time(pen_telemetry_depth_mm[1d]))"), ("nocache", "1")];
        let body = match client.get(format!("{url}/api/v1/query")).query(&query).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let landed = body["data"]["result"][0]["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
        if landed >= expected {
            return (landed, started.elapsed());
        }
        if landed > last.0 {
            last = (landed, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(120) {
            return (landed, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Target 3: publish to violation on WatchViolations, under background telemetry load.
async fn alert_latency(stack: &Stack, background_rate: u64, probes: usize) -> serde_json::Value {
    let mut compliance = stack.penwarden.compliance().await;
    let stream = compliance.watch_violations(api::WatchViolationsRequest::default()).await.expect("watch");
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = stream.into_inner();
        while let Some(Ok(change)) = stream.next().await {
            let _ = sender.send((Instant::now(), change));
        }
    });
    let background = tokio::process::Command::new(binary("pensim"))
        .args(["--mqtt-url", &stack.mosquitto.url(), "--pens", "1000", "--connections", "4"])
        .args(["--load-rate", &background_rate.to_string(), "--duration", &(probes / 10 + 10).to_string()])
        .args(["--seed", &free_port().to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("background load");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut publisher = Publisher::connect(stack.mosquitto.port).await;
    let mut latencies_ms = Vec::new();
    for probe in 0..probes {
        let pen = format!("ALERT-{probe:05}");
        // A cartridge of an unregistered lot: CARTRIDGE_UNVERIFIED as soon as the start lands.
        let event = penwarden_tests::unverified_session_start(&pen, &format!("probe-{probe}"), 1);
        let published = Instant::now();
        publisher.publish(&format!("pw/v1/pens/{pen}/events"), event.encode_to_vec()).await;
        let arrived = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let (at, change) = receiver.recv().await.expect("watch stream open");
                if change.violation.is_some_and(|v| v.pen_serial == pen) {
                    return at;
                }
            }
        })
        .await
        .expect("violation within 10 s");
        latencies_ms.push(arrived.duration_since(published).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = background.wait_with_output().await;
    latencies_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies_ms[((latencies_ms.len() as f64 - 1.0) * p).round() as usize];
    let result = serde_json::json!({
        "background_samples_per_s": background_rate,
        "probes": probes,
        "p50_ms": round3(pct(0.5)),
        "p99_ms": round3(pct(0.99)),
        "max_ms": round3(pct(1.0)),
    });
    eprintln!("  alert latency: {result}");
    result
}

/// What the machine allows without penwarden, measured with the same servers and load shape:
/// InfluxDB taking pen telemetry line protocol as fast as one writer (4 requests of 5000 lines
/// in flight) sends it, and Mosquitto delivering pensim's fastest load to a bare rumqttc
/// subscriber at QoS 1.
async fn ceilings(duration_s: u64) -> serde_json::Value {
    let (influxdb_points_per_s, influxdb_by_window) = influxdb_ceiling(duration_s).await;
    let mosquitto_samples_per_s = mosquitto_ceiling(duration_s).await;
    let result = serde_json::json!({
        "influxdb_points_per_s": round3(influxdb_points_per_s),
        "influxdb_points_per_s_by_10s": influxdb_by_window.into_iter().map(round3).collect::<Vec<_>>(),
        "mosquitto_samples_per_s": round3(mosquitto_samples_per_s),
    });
    eprintln!("  ceilings: {result}");
    result
}

/// InfluxDB's rate over the whole run, and over each 10 s of it: how it changes as its data
/// grows (the drain after an overload writes into a database that much larger).
async fn influxdb_ceiling(duration_s: u64) -> (f64, Vec<f64>) {
    use penwarden_domain::{PenSerial, Sample};
    use penwarden_ingest::decode::Telemetry;
    let influxd = Influxd::start().await;
    let writer = penwarden_influx::Writer::new(penwarden_influx::Options {
        url: influxd.url(),
        api: penwarden_influx::Api::V1,
        gzip: false,
        ..Default::default()
    })
    .expect("writer");
    writer.ensure_database().await.expect("create database");
    let pens: Vec<PenSerial> =
        (0..1000).map(|i| PenSerial::parse(&format!("PW-LOAD-{i:06}")).expect("serial")).collect();
    let placement = penwarden_store::PenPlacement::default();
    let mut lines = penwarden_influx::LineBuilder::with_capacity(1 << 22);
    let mut shutdown = tokio::sync::watch::channel(false).1;
    let started = Instant::now();
    let mut points = 0u64;
    let (mut window_started, mut window_points, mut by_window) = (Instant::now(), 0u64, Vec::new());
    let mut time_ms = 1_700_000_000_000i64;
    // Batches of 20,000 points (1000 pens × one 20-sample message), one write each.
    while started.elapsed() < Duration::from_secs(duration_s) {
        lines.clear();
        for pen in &pens {
            let samples = (0..20)
                .map(|i| Sample {
                    time_unix_ms: time_ms + i,
                    depth_mm: 0.5,
                    speed_rpm: 9000.0 + i as f64,
                    motor_current_ma: 210.5,
                    temperature_c: 31.2,
                    battery_pct: 88.0,
                })
                .collect();
            let telemetry = Telemetry { pen: pen.clone(), seq: 0, session_id: None, samples };
            penwarden_ingest::points::telemetry(&mut lines, &telemetry, &placement);
        }
        time_ms += 20;
        let report = writer.write(lines.as_str(), None, &mut shutdown).await.expect("write");
        points += report.lines as u64;
        window_points += report.lines as u64;
        if window_started.elapsed() >= Duration::from_secs(10) {
            by_window.push(window_points as f64 / window_started.elapsed().as_secs_f64());
            (window_started, window_points) = (Instant::now(), 0);
        }
    }
    (points as f64 / started.elapsed().as_secs_f64(), by_window)
}

async fn mosquitto_ceiling(duration_s: u64) -> f64 {
    use rumqttc::{Event, Packet};
    let mosquitto = Mosquitto::start().await;
    let mut options =
        rumqttc::MqttOptions::new(format!("bare-subscriber-{}", free_port()), "127.0.0.1", mosquitto.port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 1000);
    client.subscribe("pw/v1/pens/+/telemetry", rumqttc::QoS::AtLeastOnce).await.expect("subscribe");
    let (counts, counted) = tokio::sync::watch::channel((0u64, None::<Instant>, None::<Instant>));
    tokio::spawn(async move {
        let (mut received, mut first) = (0u64, None);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    let now = Instant::now();
                    received += 1;
                    first.get_or_insert(now);
                    counts.send_replace((received, first, Some(now)));
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let output = tokio::process::Command::new(binary("pensim"))
        .args(["--mqtt-url", &mosquitto.url(), "--pens", "1000", "--connections", "4", "--qos", "1"])
        .args(["--load-rate", "0", "--duration", &duration_s.to_string(), "--seed", &free_port().to_string()])
        .output()
        .await
        .expect("run pensim");
    assert!(output.status.success(), "pensim failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("summary");
    let messages = summary["messages"].as_u64().unwrap_or(0);
    let samples_per_message = summary["samples_per_message"].as_u64().unwrap_or(20);
    // Wait for the subscriber to catch up with what the broker still holds.
    let waited = Instant::now();
    while counted.borrow().0 < messages && waited.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (received, first, last) = *counted.borrow();
    let span = match (first, last) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => return 0.0,
    };
    if received < messages {
        eprintln!("  the bare subscriber got {received} of {messages} messages");
    }
    (received * samples_per_message) as f64 / span.max(1e-3)
}

/// The minimal bridge (`penwarden-bench bridge`, a process of its own) between a Mosquitto and
/// an InfluxDB of the run's own, driven like penwarden.
async fn bridge_run(pens: usize, rate: u64, duration_s: u64) -> serde_json::Value {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let ready = tempfile::NamedTempFile::new().expect("a file for the bridge's output");
    let exe = std::env::current_exe().expect("this executable");
    let bridge = penwarden_tests::Process::spawn(
        "bridge",
        std::process::Command::new(exe)
            .args(["bridge", "--mqtt-url", &mosquitto.url(), "--influx-url", &influxd.url()])
            .args(["--client-id", &format!("bridge-{}", free_port())])
            .stdout(ready.reopen().expect("the bridge's stdout")),
    );
    penwarden_tests::wait_for("the bridge to subscribe", Duration::from_secs(30), || async {
        std::fs::read_to_string(ready.path()).unwrap_or_default().contains("ready").then_some(())
    })
    .await;
    let target =
        LoadTarget { mqtt_url: mosquitto.url(), landed: Landed::Influxdb(influxd.url()), pids: vec![bridge.id()] };
    load_run(&target, pens, rate, duration_s).await
}

/// InfluxDB alone, Mosquitto alone, the minimal bridge and penwarden at one offered rate, each
/// `runs` times: medians, and penwarden's end-to-end rate as a fraction of each.
async fn side_by_side(rate: u64, duration_s: u64, runs: usize) -> (serde_json::Value, Vec<String>) {
    let (mut influxdb, mut mosquitto, mut bridges, mut penwardens) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        eprintln!("side by side, run {run} of {runs}");
        influxdb.push(influxdb_ceiling(duration_s).await.0);
        mosquitto.push(mosquitto_ceiling(duration_s).await);
        bridges.push(bridge_run(1000, rate, duration_s).await);
        let stack = stack(false, 1, Sink::Influxdb).await;
        penwardens.push(load_run(&stack.target(), 1000, rate, duration_s).await);
    }
    let of =
        |runs: &[serde_json::Value], key: &str| median(runs.iter().map(|r| r[key].as_f64().unwrap_or(0.0)).collect());
    let (influxdb, mosquitto) = (median(influxdb), median(mosquitto));
    let (bridge_rate, penwarden_rate) =
        (of(&bridges, "end_to_end_samples_per_s"), of(&penwardens, "end_to_end_samples_per_s"));
    let (bridge_cpu, penwarden_cpu) =
        (of(&bridges, "penwarden_cpu_s_per_million_samples"), of(&penwardens, "penwarden_cpu_s_per_million_samples"));
    let (bridge_rss, penwarden_rss) =
        (of(&bridges, "penwarden_peak_rss_mib"), of(&penwardens, "penwarden_peak_rss_mib"));
    let all_landed = |runs: &[serde_json::Value]| runs.iter().all(|r| r["zero_loss"].as_bool() == Some(true));
    let ratio = |part: f64, whole: f64| if whole > 0.0 { part / whole } else { 0.0 };
    let rows = vec![
        format!("| side by side | InfluxDB alone (one writer: 20,000-point writes as 4 requests of 5000 lines in flight) | {influxdb:.0} points/s | the ceiling of any bridge into it |"),
        format!("| side by side | Mosquitto alone (QoS 1, a bare subscriber) | {mosquitto:.0} samples/s | |"),
        format!(
            "| side by side | minimal bridge, 1000 pens, offered {rate}/s | {bridge_rate:.0} samples/s end to end{} | CPU {bridge_cpu:.2} s per million samples, peak RSS {bridge_rss:.0} MiB |",
            if all_landed(&bridges) { ", all landed" } else { ", SOME LOST" }
        ),
        format!(
            "| side by side | penwarden, 1000 pens, offered {rate}/s, gzip off | {penwarden_rate:.0} samples/s end to end{} | CPU {penwarden_cpu:.2} s per million samples, peak RSS {penwarden_rss:.0} MiB |",
            if all_landed(&penwardens) { ", all landed" } else { ", SOME LOST" }
        ),
        format!(
            "| side by side | penwarden as a fraction | {:.2} of the minimal bridge, {:.2} of InfluxDB alone | CPU {:.2}× the bridge's |",
            ratio(penwarden_rate, bridge_rate),
            ratio(penwarden_rate, influxdb),
            ratio(penwarden_cpu, bridge_cpu)
        ),
    ];
    let result = serde_json::json!({
        "offered": rate,
        "influxdb_points_per_s": round3(influxdb),
        "mosquitto_samples_per_s": round3(mosquitto),
        "bridge": bridges,
        "penwarden": penwardens,
        "penwarden_of_bridge": round3(ratio(penwarden_rate, bridge_rate)),
        "penwarden_of_influxdb": round3(ratio(penwarden_rate, influxdb)),
        "cpu_penwarden_over_bridge": round3(ratio(penwarden_cpu, bridge_cpu)),
    });
    (result, rows)
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("unknown", |m| m.trim_start_matches([' ', '\t', ':']));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = memory.lines().find_map(|l| l.strip_prefix("MemTotal:")).map_or("", str::trim);
    serde_json::json!({ "cpu": model, "cores": cores, "memory": mem_kb })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cli = <Cli as clap::Parser>::parse();
    match cli.command {
        Some(Command::Seed { store }) => return seed::seed(&store, 1_000_000, 200_000, 100_000).await,
        Some(Command::Api { rate, seconds }) => {
            let result = api_load::run(rate, seconds).await;
            println!("{}", serde_json::to_string_pretty(&result).expect("json"));
            return;
        }
        Some(Command::Bridge(options)) => return bridge::run(options).await,
        None => {}
    }
    let options = cli.load;
    std::fs::create_dir_all(&options.out).expect("create the results directory");
    let mut results =
        serde_json::json!({ "machine": machine(), "duration_s": options.duration_s, "runs": options.runs });
    let mut rows = Vec::new();

    if options.scenarios.contains(&Scenario::Throughput) {
        // Targets 1 and 2: throughput per fleet size and rate; CPU per million samples and memory.
        let mut throughput = Vec::new();
        for &pens in &options.fleets {
            for &rate in &options.rates {
                let mut runs = Vec::new();
                for _ in 0..options.runs {
                    let stack = stack(false, options.instances, options.sink).await;
                    runs.push(load_run(&stack.target(), pens, rate, options.duration_s).await);
                }
                let sustained = runs.iter().all(|r| r["sustained"].as_bool() == Some(true));
                let achieved =
                    median(runs.iter().map(|r| r["achieved_samples_per_s"].as_f64().unwrap_or(0.0)).collect());
                let cpu = median(
                    runs.iter().map(|r| r["penwarden_cpu_s_per_million_samples"].as_f64().unwrap_or(0.0)).collect(),
                );
                let rss = median(runs.iter().map(|r| r["penwarden_peak_rss_mib"].as_f64().unwrap_or(0.0)).collect());
                let drain = median(runs.iter().map(|r| r["verify_wait_s"].as_f64().unwrap_or(0.0)).collect());
                let postgres =
                    runs.iter().filter_map(|r| r["postgres_cpu_s_per_million_samples"].as_f64()).collect::<Vec<_>>();
                let postgres = if postgres.is_empty() {
                    String::new()
                } else {
                    format!(", PostgreSQL CPU {:.2} s per million samples", median(postgres))
                };
                rows.push(format!(
                    "| throughput | {pens} pens, offered {rate}/s, gzip off, {} instance(s), {:?} store, into {:?} | {achieved:.0} samples/s published, {} | CPU {cpu:.2} s per million samples (all instances){postgres}, peak RSS {rss:.0} MiB, drained in {drain:.1} s |",
                    options.instances,
                    penwarden_store::scratch::ScratchStore::chosen_kind(),
                    options.sink,
                    if sustained { "all landed, sustained" } else { "NOT sustained" }
                ));
                throughput
                    .push(serde_json::json!({ "pens": pens, "offered": rate, "sustained": sustained, "runs": runs }));
            }
        }
        results["throughput"] = throughput.into();
    }

    if options.scenarios.contains(&Scenario::Gzip) {
        // Target 2 with gzip on, at 100k samples/s.
        let mut gzip_runs = Vec::new();
        for _ in 0..options.runs {
            let stack = stack(true, 1, options.sink).await;
            gzip_runs.push(load_run(&stack.target(), 1000, 100_000, options.duration_s).await);
        }
        let cpu = median(
            gzip_runs.iter().map(|r| r["penwarden_cpu_s_per_million_samples"].as_f64().unwrap_or(0.0)).collect(),
        );
        rows.push(format!("| efficiency | 1000 pens, 100000/s, gzip on | | CPU {cpu:.2} s per million samples |"));
        results["gzip_on"] = gzip_runs.into();
    }

    if options.scenarios.contains(&Scenario::Ceilings) {
        let ceilings = ceilings(options.duration_s).await;
        rows.push(format!(
            "| ceilings | without penwarden: InfluxDB alone, Mosquitto alone (QoS 1, bare subscriber) | InfluxDB {:.0} points/s | Mosquitto {:.0} samples/s |",
            ceilings["influxdb_points_per_s"].as_f64().unwrap_or(0.0),
            ceilings["mosquitto_samples_per_s"].as_f64().unwrap_or(0.0),
        ));
        results["ceilings"] = ceilings;
    }

    if options.scenarios.contains(&Scenario::SideBySide) {
        let (side_by_side, side_rows) = side_by_side(options.compare_rate, options.duration_s, options.runs).await;
        rows.extend(side_rows);
        results["side_by_side"] = side_by_side;
    }

    if options.scenarios.contains(&Scenario::Overload) {
        let mut overload = Vec::new();
        for _ in 0..options.runs {
            overload.push(overload_run(1000, options.overload_rate, options.duration_s, options.sink).await);
        }
        for run in &overload {
            rows.push(format!(
                "| overload | 1000 pens, offered {}/s for {} s into {}, then nothing | landed {:.0} samples/s during the load, {:.0}/s after | reconnects {}, all landed: {}, drained in {} s (counted in {} s); cores during {}, after {} |",
                options.overload_rate,
                options.duration_s,
                run["sink"].as_str().unwrap_or(""),
                run["landed_per_s_during_load"].as_f64().unwrap_or(0.0),
                run["landed_per_s_after_load"].as_f64().unwrap_or(0.0),
                run["reconnects"],
                run["zero_loss"],
                run["drained_s"],
                run["verify_wait_s"],
                run["cores_during_load"],
                run["cores_after_load"],
            ));
        }
        results["overload"] = overload.into();
    }

    if options.scenarios.contains(&Scenario::Latency) {
        // Target 3.
        let mut latency_runs = Vec::new();
        for _ in 0..options.runs {
            let stack = stack(false, 1, Sink::Influxdb).await;
            latency_runs.push(alert_latency(&stack, options.background_rate, 200).await);
        }
        let p50 = median(latency_runs.iter().map(|r| r["p50_ms"].as_f64().unwrap_or(0.0)).collect());
        let p99 = median(latency_runs.iter().map(|r| r["p99_ms"].as_f64().unwrap_or(0.0)).collect());
        rows.push(format!(
            "| alert latency | publish to WatchViolations, {} samples/s background | p50 {p50:.1} ms | p99 {p99:.1} ms |",
            options.background_rate
        ));
        results["alert_latency"] = latency_runs.into();
    }

    let json = serde_json::to_string_pretty(&results).expect("json");
    std::fs::write(options.out.join("results.json"), json).expect("write results.json");
    let machine = &results["machine"];
    let markdown = format!(
        "# penwarden benchmark\n\nMachine: {} ({} cores, {} memory). Medians of {} runs of {} s each.\n\n| target | scenario | result | notes |\n|---|---|---|---|\n{}\n",
        machine["cpu"].as_str().unwrap_or(""),
        machine["cores"],
        machine["memory"].as_str().unwrap_or(""),
        options.runs,
        options.duration_s,
        rows.join("\n")
    );
    std::fs::write(options.out.join("results.md"), &markdown).expect("write results.md");
    println!("{markdown}");
}
