#!/usr/bin/env bash
# The demo: installs what is missing, starts a private Mosquitto and InfluxDB 1.x on demo ports,
# runs `penwarden serve` and a simulated fleet (pensim) for about 30 s, then prints a summary.
# KEEP=1 leaves everything running afterwards (with an admin API key printed) for grpcurl.
# TLS=1 runs it all over TLS (docs/security.md): certificates from scripts/issue-certs.sh, the
# broker as deploy/mosquitto-tls.conf (a client certificate per pen, its CN the user name the
# ACL confines), penwarden on mqtts:// and serving gRPC over TLS, pensim with per-pen
# certificates and https://.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --bins

MQTT_PORT=${MQTT_PORT:-18883}
INFLUX_PORT=${INFLUX_PORT:-18086}
GRPC_ADDR=${GRPC_ADDR:-127.0.0.1:50051}
HTTP_ADDR=${HTTP_ADDR:-127.0.0.1:8080}
DURATION=${DURATION:-30}
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

MQTT_URL="mqtt://127.0.0.1:$MQTT_PORT" GRPC_URL="http://$GRPC_ADDR"
pensim_tls=() cli_tls=()
if [ "${TLS:-0}" = 1 ]; then
  certs="$work/certs"
  pens=$(seq -f 'PW-%06g' 1 20)
  for step in "ca $certs servers" "ca $certs demo-manufacturer" "server $certs servers broker 127.0.0.1 localhost" \
              "server $certs servers api 127.0.0.1 localhost" "client $certs servers penwarden" \
              "pens $certs demo-manufacturer $(echo $pens)"; do
    scripts/issue-certs.sh $step >/dev/null
  done
  cat "$certs/demo-manufacturer-ca.crt" "$certs/servers-ca.crt" > "$certs/clients-ca.crt"
  # The broker drops to its own user: let it read its key and the ACL (a demo, not a deployment).
  chmod 755 "$work" "$certs"; chmod 644 "$certs/broker.key"
  cp deploy/mosquitto.acl "$certs/acl"; chmod 644 "$certs/acl"
  cat > "$work/mosquitto.conf" <<CONF
listener $MQTT_PORT 127.0.0.1
cafile $certs/clients-ca.crt
certfile $certs/broker.crt
keyfile $certs/broker.key
require_certificate true
use_identity_as_username true
allow_anonymous false
acl_file $certs/acl
max_queued_messages 0
max_inflight_messages 1000
CONF
  MQTT_URL="mqtts://127.0.0.1:$MQTT_PORT" GRPC_URL="https://$GRPC_ADDR"
  export PENWARDEN_MQTT_CA_FILE="$certs/servers-ca.crt" PENWARDEN_MQTT_CERT_FILE="$certs/penwarden.crt"
  export PENWARDEN_MQTT_KEY_FILE="$certs/penwarden.key"
  export PENWARDEN_GRPC_TLS_CERT_FILE="$certs/api.crt" PENWARDEN_GRPC_TLS_KEY_FILE="$certs/api.key"
  pensim_tls=(--mqtt-ca-file "$certs/servers-ca.crt" --pen-cert-dir "$certs" --grpc-ca-file "$certs/servers-ca.crt")
  cli_tls=(--grpc-ca-file "$certs/servers-ca.crt")
else
  cat > "$work/mosquitto.conf" <<CONF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $work/
max_queued_messages 0
max_inflight_messages 1000
CONF
fi
/usr/sbin/mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 & pids+=($!)

cat > "$work/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$((INFLUX_PORT + 2))"
[meta]
  dir = "$work/influx/meta"
[data]
  dir = "$work/influx/data"
  wal-dir = "$work/influx/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:$INFLUX_PORT"
  log-enabled = false
CONF
influxd run -config "$work/influxdb.conf" >"$work/influxd.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$INFLUX_PORT/ping" >/dev/null && break; sleep 0.2; done

export PENWARDEN_MQTT_URL="$MQTT_URL"
export PENWARDEN_INFLUX_URL="http://127.0.0.1:$INFLUX_PORT" PENWARDEN_INFLUX_API=v1 PENWARDEN_INFLUX_DB=penwarden
export PENWARDEN_DATABASE_URL="sqlite:$work/penwarden.db" PENWARDEN_GRPC_ADDR="$GRPC_ADDR"
export PENWARDEN_HTTP_ADDR="$HTTP_ADDR"
export PENWARDEN_AUTO_REGISTER_PENS=true RUST_LOG=${RUST_LOG:-warn}
# An admin key for pensim (registration, recall) and the queries below; printed only once.
PENWARDEN_API_KEY=$(target/debug/penwarden apikey create --role admin --label demo)
export PENWARDEN_API_KEY
target/debug/penwarden serve 2>"$work/penwarden.log" & penwarden_pid=$!; pids+=($penwarden_pid)
sleep 2

echo "== running a fleet of 20 pens in 6 clinics of 2 chains for ${DURATION} s (pensim) =="
summary=$(target/debug/pensim --mqtt-url "$PENWARDEN_MQTT_URL" --pens 20 --clinics 6 --chains 2 \
  --duration "$DURATION" --seed 42 --grpc-url "$GRPC_URL" "${pensim_tls[@]}" \
  --inject reuse=0.04,expired=0.02,recalled=0.02,counterfeit=0.02,overuse=0.02,depth=0.03,gap=0.03,no-disinfect=0.05,service-due=0.1)
echo "pensim: $summary"
sleep 3

count() {
  curl -fsG "http://127.0.0.1:$INFLUX_PORT/query" --data-urlencode db=penwarden --data-urlencode "q=$1" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["results"][0]; print(r["series"][0]["values"][0][1] if "series" in r else 0)'
}
echo
echo "== summary =="
python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print("sessions: %s   samples sent: %s   injected violations: %s" % (s["sessions"], s["samples"], s["violations_injected"]))' "$summary"
echo "points in InfluxDB: telemetry $(count 'SELECT count(depth_mm) FROM pen_telemetry'), sessions $(count 'SELECT count(strokes) FROM pen_session'), violations $(count 'SELECT count(active) FROM compliance_violation'), status $(count 'SELECT count(battery_pct) FROM pen_status')"
echo
echo "== gRPC: penwarden violations (ListViolations) =="
target/debug/penwarden violations --grpc-url "$GRPC_URL" "${cli_tls[@]}"

if [ "${KEEP:-0}" = 1 ]; then
  echo
  echo "== running on; Ctrl-C stops everything =="
  echo "gRPC: $GRPC_ADDR   admin API key: $PENWARDEN_API_KEY"
  echo "compliance console: http://$HTTP_ADDR/console/ (sign in with that key; docs/console.md)"
  if [ "${TLS:-0}" = 1 ]; then
    echo "try:  grpcurl -cacert $certs/servers-ca.crt -H \"authorization: Bearer \$PENWARDEN_API_KEY\" $GRPC_ADDR list   (docs/api.md)"
  else
    echo "try:  grpcurl -plaintext -H \"authorization: Bearer \$PENWARDEN_API_KEY\" $GRPC_ADDR list   (docs/api.md)"
  fi
  wait "$penwarden_pid"
fi
kill -TERM "$penwarden_pid"; wait "$penwarden_pid" && echo && echo "penwarden stopped cleanly on SIGTERM"
