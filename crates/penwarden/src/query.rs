//! Operator commands that read a running penwarden through the same gRPC API clients use:
//! `penwarden violations` (counts by rule, newest violation) and `penwarden quarantine`.

use std::collections::BTreeMap;

use anyhow::Context;
use penwarden_proto::api::v1::compliance_service_client::ComplianceServiceClient;
use penwarden_proto::api::v1::quarantine_service_client::QuarantineServiceClient;
use penwarden_proto::api::v1::{ListQuarantineRequest, ListViolationsRequest};
use penwarden_proto::BearerToken;

fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(future: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(future)
}

type Authenticated = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>;

async fn channel(grpc_url: &str, api_key: &str) -> anyhow::Result<(tonic::transport::Channel, BearerToken)> {
    let endpoint = tonic::transport::Endpoint::from_shared(grpc_url.to_owned())
        .with_context(|| format!("invalid gRPC URL {grpc_url:?}"))?;
    let token = BearerToken::new(api_key).context("the API key holds characters a header cannot carry")?;
    let channel = endpoint.connect().await.with_context(|| format!("cannot reach penwarden at {grpc_url}"))?;
    Ok((channel, token))
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", status.code(), status.message())
}

pub(crate) fn quarantine(
    grpc_url: &str,
    api_key: &str,
    reason: Option<String>,
    pen: Option<String>,
    limit: u32,
) -> anyhow::Result<()> {
    block_on(async {
        let (channel, token) = channel(grpc_url, api_key).await?;
        let mut client: QuarantineServiceClient<Authenticated> =
            QuarantineServiceClient::with_interceptor(channel, token);
        let request = ListQuarantineRequest {
            reason: reason.unwrap_or_default(),
            pen_serial: pen.unwrap_or_default(),
            page_size: limit.max(1),
            ..Default::default()
        };
        let page = client.list_quarantine(request).await.map_err(status_error)?.into_inner();
        let total: u64 = page.counts_by_reason.values().sum();
        println!("quarantined messages: {total}");
        let mut counts: Vec<_> = page.counts_by_reason.into_iter().collect();
        counts.sort();
        for (reason, count) in counts {
            println!("  {reason:<28} {count}");
        }
        for message in page.messages {
            println!("{}", serde_json::to_string(&message)?);
        }
        Ok(())
    })
}

pub(crate) fn violations(grpc_url: &str, api_key: &str, rule: Option<String>) -> anyhow::Result<()> {
    block_on(async {
        let (channel, token) = channel(grpc_url, api_key).await?;
        let mut client: ComplianceServiceClient<Authenticated> =
            ComplianceServiceClient::with_interceptor(channel, token);
        let mut by_rule: BTreeMap<String, u64> = BTreeMap::new();
        let mut newest = None;
        let mut page_token = String::new();
        loop {
            let request = ListViolationsRequest {
                rule: rule.clone().unwrap_or_default(),
                page_size: 1000,
                page_token,
                ..Default::default()
            };
            let page =
                client.list_violations(request).await.map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?;
            let page = page.into_inner();
            for violation in page.violations {
                *by_rule.entry(violation.rule.clone()).or_default() += 1;
                newest.get_or_insert(violation);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let total: u64 = by_rule.values().sum();
        println!("active violations: {total}");
        for (rule, count) in &by_rule {
            println!("  {rule:<22} {count}");
        }
        if let Some(violation) = newest {
            println!("newest violation:");
            println!("{}", serde_json::to_string_pretty(&violation)?);
        }
        Ok(())
    })
}
