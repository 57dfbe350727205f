//! Operator commands that read a running penwarden through the same gRPC API clients use:
//! `penwarden violations` (counts by rule, newest violation), `penwarden quarantine` and
//! `penwarden quarantine replay`.

use std::collections::BTreeMap;

use anyhow::Context;
use penwarden_proto::api::v1::compliance_service_client::ComplianceServiceClient;
use penwarden_proto::api::v1::quarantine_service_client::QuarantineServiceClient;
use penwarden_proto::api::v1::{ListQuarantineRequest, ListViolationsRequest, ReplayQuarantineRequest};
use penwarden_proto::BearerToken;

fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(future: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(future)
}

type Authenticated = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>;

/// A running penwarden and how to reach it: URL, API key, TLS files.
pub(crate) struct Target {
    pub(crate) grpc_url: String,
    pub(crate) api_key: String,
    pub(crate) tls: penwarden_proto::ClientTlsFiles,
}

async fn channel(target: &Target) -> anyhow::Result<(tonic::transport::Channel, BearerToken)> {
    let token = BearerToken::new(&target.api_key).context("the API key holds characters a header cannot carry")?;
    let channel = penwarden_proto::connect(&target.grpc_url, &target.tls).await.map_err(anyhow::Error::msg)?;
    Ok((channel, token))
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", status.code(), status.message())
}

pub(crate) fn quarantine(
    target: &Target,
    reason: Option<String>,
    pen: Option<String>,
    limit: u32,
) -> anyhow::Result<()> {
    block_on(async {
        let (channel, token) = channel(target).await?;
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

pub(crate) fn replay(target: &Target, reason: String, pen: Option<String>, since: Option<&str>) -> anyhow::Result<()> {
    let since_unix_ms = since.map(parse_time).transpose()?.unwrap_or(0);
    block_on(async {
        let (channel, token) = channel(target).await?;
        let mut client: QuarantineServiceClient<Authenticated> =
            QuarantineServiceClient::with_interceptor(channel, token);
        let request = ReplayQuarantineRequest {
            reason: reason.clone(),
            pen_serial: pen.clone().unwrap_or_default(),
            since_unix_ms,
            limit: 0,
        };
        let response = client.replay_quarantine(request).await.map_err(status_error)?.into_inner();
        let pen = pen.map_or_else(String::new, |pen| format!(", pen {pen}"));
        let since = since.map_or_else(String::new, |since| format!(", since {since}"));
        println!("replayed {} quarantined messages (reason {reason}{pen}{since})", response.replayed_ids.len());
        if !response.replayed_ids.is_empty() {
            println!("  quarantine ids: {}", id_ranges(&response.replayed_ids));
        }
        println!("  already replayed before: {}", response.already_replayed);
        println!("  not replayable (payload cut for being over the size limit): {}", response.not_replayable);
        if response.left_for_later > 0 {
            println!("  left for the next run (over the limit of one request): {}", response.left_for_later);
        }
        println!("what still fails is quarantined again: see `penwarden quarantine`");
        Ok(())
    })
}

/// Unix milliseconds, or YYYY-MM-DD[THH:MM[:SS]][Z] in UTC.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(unix_ms) = text.parse::<i64>() {
        return Ok(unix_ms);
    }
    let bad = || anyhow::anyhow!("--since {text:?}: expected Unix milliseconds or YYYY-MM-DD[THH:MM[:SS]][Z]");
    let text = text.strip_suffix('Z').unwrap_or(text);
    let (date, time) = text.split_once('T').unwrap_or((text, "00:00"));
    let number = |part: Option<&str>| part.and_then(|p| p.parse::<u16>().ok()).ok_or_else(bad);
    let mut date_parts = date.split('-');
    let (year, month, day) = (number(date_parts.next())?, number(date_parts.next())?, number(date_parts.next())?);
    let mut time_parts = time.split(':');
    let (hour, minute) = (number(time_parts.next())?, number(time_parts.next())?);
    let second = time_parts.next().map_or(Ok(0), |s| number(Some(s)))?;
    if date_parts.next().is_some()
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(bad());
    }
    let date = penwarden_domain::udi::Date { year, month: month as u8, day: day as u8 };
    Ok(date.days_since_epoch() * 86_400_000
        + (i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)) * 1000)
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MMZ` (UTC), the form parse_time reads.
pub(crate) fn format_time(unix_ms: i64) -> String {
    let date = penwarden_domain::udi::Date::from_unix_ms(unix_ms);
    let minutes = unix_ms.rem_euclid(86_400_000) / 60_000;
    format!("{:04}-{:02}-{:02}T{:02}:{:02}Z", date.year, date.month, date.day, minutes / 60, minutes % 60)
}

/// `1-3, 7, 9-10` for ids 1, 2, 3, 7, 9, 10 (sorted).
fn id_ranges(ids: &[i64]) -> String {
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for &id in ids {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == id => *end = id,
            _ => ranges.push((id, id)),
        }
    }
    ranges
        .iter()
        .map(|(start, end)| if start == end { start.to_string() } else { format!("{start}-{end}") })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn violations(target: &Target, rule: Option<String>) -> anyhow::Result<()> {
    block_on(async {
        let (channel, token) = channel(target).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_id_ranges() {
        assert_eq!(parse_time("1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("1970-01-02").unwrap(), 86_400_000);
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2023-13-01").is_err());
        assert_eq!(id_ranges(&[1, 2, 3, 7, 9, 10]), "1-3, 7, 9-10");
    }
}
