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

#[cfg(test)]
mod tests {
    use super::*;

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
