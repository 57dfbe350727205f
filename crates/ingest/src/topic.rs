//! Topic layout: `{root}/pens/{serial}/{telemetry|events|state}`.

use penwarden_domain::PenSerial;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Telemetry,
    Events,
    State,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Telemetry, Channel::Events, Channel::State];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Telemetry => "telemetry",
            Channel::Events => "events",
            Channel::State => "state",
        }
    }
}

/// Splits a topic into pen and channel. `Err` carries the reason for the quarantine.
pub fn parse(root: &str, topic: &str) -> Result<(PenSerial, Channel), String> {
    let rest = topic
        .strip_prefix(root)
        .and_then(|rest| rest.strip_prefix("/pens/"))
        .ok_or_else(|| format!("topic is not under {root}/pens/"))?;
    let (serial, channel) = rest.split_once('/').ok_or("topic has no channel after the pen serial")?;
    let channel = match channel {
        "telemetry" => Channel::Telemetry,
        "events" => Channel::Events,
        "state" => Channel::State,
        other => return Err(format!("unknown channel {other:?}")),
    };
    let serial = PenSerial::parse(serial).map_err(|e| e.to_string())?;
    Ok((serial, channel))
}

/// The subscription filter for one channel of every pen.
pub fn filter(root: &str, channel: Channel) -> String {
    format!("{root}/pens/+/{}", channel.as_str())
}

/// The filters penwarden subscribes with, and those of the other mode to drop: with a share
/// group, `$share/GROUP/<filter>` (the broker hands each message to one member of the group);
/// without, the plain filters. Dropping the other mode's filters matters because the session
/// persists: an instance that joined a group keeps a plain subscription from before, which
/// would still deliver every message to it, unless it is removed.
pub fn subscriptions(root: &str, share_group: &str) -> (Vec<String>, Vec<String>) {
    let plain: Vec<String> = Channel::ALL.into_iter().map(|channel| filter(root, channel)).collect();
    if share_group.is_empty() {
        return (plain, Vec::new());
    }
    let shared = plain.iter().map(|filter| format!("$share/{share_group}/{filter}")).collect();
    (shared, plain)
}

/// A share group name is one topic level without wildcards (MQTT 5, 4.8.2).
pub fn check_share_group(group: &str) -> Result<(), String> {
    if group.contains(['/', '+', '#']) {
        return Err(format!("share group {group:?} must not contain '/', '+' or '#'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_group_subscribes_shared_and_drops_the_plain_filters() {
        let (subscribe, drop) = subscriptions("pw/v1", "");
        assert_eq!(subscribe.len(), Channel::ALL.len());
        assert!(subscribe.contains(&"pw/v1/pens/+/telemetry".to_string()) && drop.is_empty());
        let (subscribe, drop) = subscriptions("pw/v1", "ingest");
        assert!(subscribe.contains(&"$share/ingest/pw/v1/pens/+/telemetry".to_string()), "{subscribe:?}");
        assert_eq!(drop, subscriptions("pw/v1", "").0);
        assert!(check_share_group("ingest-eu").is_ok());
        for bad in ["a/b", "a+", "#"] {
            assert!(check_share_group(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_well_formed_topics() {
        let (pen, channel) = parse("pw/v1", "pw/v1/pens/PW-1/events").unwrap();
        assert_eq!(pen.as_str(), "PW-1");
        assert_eq!(channel, Channel::Events);
    }

    #[test]
    fn rejects_wrong_shapes() {
        for topic in
            ["pw/v2/pens/P/events", "pw/v1/pens/P", "pw/v1/pens/P/other", "pw/v1/pens/P/events/x", "pw/v1/pens//events"]
        {
            assert!(parse("pw/v1", topic).is_err(), "{topic}");
        }
    }
}
