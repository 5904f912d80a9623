//! The instance's failure handling as `INFO` lines: the members of its epoch and its
//! latest events (suspicions, new epochs, rebuilds, recoveries, its stop) with wall-clock
//! times, so an operator, a test or a bench sees when each step happened without reading
//! logs. It only formats what `Instance::events` returns; it must never change the instance.

use instance::cluster::InstanceEvent;
use instance::runtime::TimedEvent;
use interconnect::InstanceSet;

/// Events `INFO` lists, newest last.
pub const INFO_EVENTS: usize = 32;

/// A set as `0|2` (`|`: `,` separates an event's fields).
fn set(members: InstanceSet) -> String {
    member_list(members).replace(',', "|")
}

/// Free text made safe for one `INFO` field.
fn text(s: &str) -> String {
    s.replace(['\r', '\n', ','], " ")
}

/// The members as `0,2`: `INFO`'s `members` field.
pub fn member_list(members: InstanceSet) -> String {
    let ids: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    ids.join(",")
}

/// `event_<n>:unix_ms=..,kind=..,...` for the last [`INFO_EVENTS`] of `events`, each line
/// ending in CRLF.
pub fn info_lines(events: &[TimedEvent]) -> String {
    let mut out = String::new();
    let skip = events.len().saturating_sub(INFO_EVENTS);
    for (n, e) in events.iter().skip(skip).enumerate() {
        let what = match &e.event {
            InstanceEvent::Suspected { peer } => format!("kind=suspected,peer={peer}"),
            InstanceEvent::Dead { peer } => format!("kind=dead,peer={peer}"),
            InstanceEvent::Partitioned { peer } => format!("kind=partitioned,peer={peer}"),
            InstanceEvent::Proposed { epoch, live } => {
                format!("kind=proposed,epoch={},live={}", epoch.0, set(*live))
            }
            InstanceEvent::Reconfigured { epoch, live, lost } => format!(
                "kind=reconfigured,epoch={},live={},lost={}",
                epoch.0,
                set(*live),
                set(*lost)
            ),
            InstanceEvent::Rebuilt { epoch } => format!("kind=rebuilt,epoch={}", epoch.0),
            InstanceEvent::Recovered { epoch, blocks } => {
                format!("kind=recovered,epoch={},blocks={blocks}", epoch.0)
            }
            InstanceEvent::Unrecoverable { block, detail } => {
                format!("kind=unrecoverable,block={block},detail={}", text(detail))
            }
            InstanceEvent::Stopped { reason } => format!("kind=stopped,reason={}", text(reason)),
        };
        out.push_str(&format!(
            "event_{n}:unix_ms={},{what}\r\n",
            e.unix.as_millis()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use interconnect::{Epoch, InstanceId};
    use std::time::Duration;

    fn at(ms: u64, event: InstanceEvent) -> TimedEvent {
        TimedEvent {
            at: Duration::from_millis(ms),
            unix: Duration::from_millis(1_000_000 + ms),
            event,
        }
    }

    fn set(ids: &[u64]) -> InstanceSet {
        ids.iter().map(|&i| InstanceId::new(i).unwrap()).collect()
    }

    #[test]
    fn lists_the_events_with_their_wall_clock() {
        let events = vec![
            at(
                1,
                InstanceEvent::Reconfigured {
                    epoch: Epoch(1),
                    live: set(&[0, 1, 2]),
                    lost: set(&[]),
                },
            ),
            at(
                5,
                InstanceEvent::Dead {
                    peer: InstanceId::new(1).unwrap(),
                },
            ),
            at(
                9,
                InstanceEvent::Reconfigured {
                    epoch: Epoch(2),
                    live: set(&[0, 2]),
                    lost: set(&[1]),
                },
            ),
            at(
                12,
                InstanceEvent::Recovered {
                    epoch: Epoch(2),
                    blocks: 7,
                },
            ),
            at(
                13,
                InstanceEvent::Stopped {
                    reason: "a, b\r\nc".into(),
                },
            ),
        ];
        assert_eq!(member_list(set(&[0, 2])), "0,2");
        let text = info_lines(&events);
        let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines,
            [
                "event_0:unix_ms=1000001,kind=reconfigured,epoch=1,live=0|1|2,lost=",
                "event_1:unix_ms=1000005,kind=dead,peer=1",
                "event_2:unix_ms=1000009,kind=reconfigured,epoch=2,live=0|2,lost=1",
                "event_3:unix_ms=1000012,kind=recovered,epoch=2,blocks=7",
                "event_4:unix_ms=1000013,kind=stopped,reason=a  b  c",
            ]
        );
    }

    #[test]
    fn keeps_only_the_latest_events() {
        let events: Vec<TimedEvent> = (0..INFO_EVENTS as u64 + 5)
            .map(|n| {
                at(
                    n,
                    InstanceEvent::Suspected {
                        peer: InstanceId::new(1).unwrap(),
                    },
                )
            })
            .collect();
        let text = info_lines(&events);
        assert_eq!(text.matches("event_").count(), INFO_EVENTS);
        assert!(text.starts_with("event_0:unix_ms=1000005,"), "{text}");
    }
}
