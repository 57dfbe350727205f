//! End to end: pensim -> Mosquitto -> penwarden -> InfluxDB (v1 and v2 APIs) + store -> gRPC.
//! `rules` has a scenario per compliance rule; `api` proves scoping, paging and streaming.
//! Each test starts its own servers; counts are exact.

mod api;
mod audit;
mod common;
mod console;
mod dashboards;
mod faults;
mod http_api;
mod instances;
mod line_protocol;
mod overload;
mod pipeline;
mod poison;
mod protocol;
mod rules;
mod security;
mod storm;
mod tenants;
