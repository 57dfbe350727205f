#!/usr/bin/env bash
# Installs what penwarden's demo and tests need and a fresh Debian/Ubuntu lacks:
# Mosquitto, InfluxDB 1.x (influxd, v1 write API and InfluxQL), VictoriaMetrics (InfluxDB v2
# write API), openssl (test certificates) and headless Chromium with chromedriver (the console's
# browser test). Only the binaries are used: the tests start their
# own instances on free ports.
set -euo pipefail

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v influxd >/dev/null 2>&1 || missing+=(influxdb)
command -v victoria-metrics >/dev/null 2>&1 || missing+=(victoria-metrics)
# Tests issue certificates with scripts/issue-certs.sh.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# PostgreSQL's server and client (the store suite and the end-to-end tests also run on it;
# scripts/test.sh starts a private server when none answers at 127.0.0.1:5432).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
# The compliance console's browser test drives Debian's Chromium through chromedriver.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# The demo's summary uses curl and python3.
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  # policy-rc.d on some images blocks service starts; the services are not needed anyway.
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
