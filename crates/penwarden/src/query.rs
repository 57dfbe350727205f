//! `penwarden violations`: counts active violations by rule and shows the newest one, through
//! the same gRPC API clients use.

use std::collections::BTreeMap;

use anyhow::Context;
use penwarden_proto::api::v1::compliance_service_client::ComplianceServiceClient;
use penwarden_proto::api::v1::ListViolationsRequest;

pub(crate) fn violations(grpc_url: &str, rule: Option<String>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut client = ComplianceServiceClient::connect(grpc_url.to_owned())
            .await
            .with_context(|| format!("cannot reach penwarden at {grpc_url}"))?;
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
