//! The instance's failure handling as `INFO` lines: the members of its newest epoch and its
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
    let ids: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    ids.join("|")
}

/// Free text made safe for one `INFO` field.
fn text(s: &str) -> String {
    s.replace(['\r', '\n', ','], " ")
}

/// `members:0,2` (the newest epoch's, if any) and `event_<n>:unix_ms=..,kind=..,...` for the
/// last [`INFO_EVENTS`] of `events`, each line ending in CRLF.
pub fn info_lines(events: &[TimedEvent]) -> String {
    let mut out = String::new();
    let newest = events.iter().rev().find_map(|e| match &e.event {
        InstanceEvent::Reconfigured { live, .. } => Some(*live),
        _ => None,
    });
    if let Some(live) = newest {
        let ids: Vec<String> = live.iter().map(|m| m.to_string()).collect();
        out.push_str(&format!("members:{}\r\n", ids.join(",")));
    }
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
