//! The events of a simulated run, as text (one line each) and as a replay
//! in the cluster viewer (src/viewer.html): each event a frame, with the
//! nodes' state as it was then and the message it sent or delivered. Open the
//! file in a browser; it needs no server and no script from elsewhere.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{json, Value};

use crate::raft::{LogIndex, NodeId, Term};
use crate::server::watch::View;

/// One thing that happened in a simulated run.
#[derive(Clone, Debug)]
pub struct Event {
    /// logical time (ticks)
    pub t: u64,
    pub kind: EventKind,
}

#[derive(Clone, Debug)]
pub enum EventKind {
    /// `from` (in `term`) put message `id` on the network for `to`.
    Send {
        id: u64,
        from: NodeId,
        term: Term,
        to: NodeId,
        what: String,
        dropped: bool,
        /// the tick it is due at, when delivered late (`SimConfig::late_rate`)
        late_until: Option<u64>,
    },
    /// Message `id` reached `to`, whose term was `term`.
    Deliver {
        id: u64,
        from: NodeId,
        to: NodeId,
        term: Term,
        what: String,
        /// the tick it was sent at, when delivered late
        late_from: Option<u64>,
        /// (position, size) of the `step_batch` call it was part of, if more than one
        batch: Option<(usize, usize)>,
    },
    /// Message `id` never arrived (`why`: partitioned, node down).
    Lost {
        id: u64,
        from: NodeId,
        to: NodeId,
        what: String,
        why: String,
    },
    /// A node changed role or term.
    Role {
        node: NodeId,
        term: Term,
        role: &'static str,
    },
    /// A node's commit index advanced.
    Commit { node: NodeId, index: LogIndex },
    /// A node answered a client.
    Answer {
        node: NodeId,
        request: u64,
        result: String,
    },
    /// A node crashed (`up` false) or started again (`up` true); `text` is
    /// how the trace says it ("crash n2", "restart n2", "wipe n2").
    Power {
        node: NodeId,
        up: bool,
        text: String,
    },
    /// Partitions, network settings, a test's own marks.
    Note(String),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.t;
        match &self.kind {
            EventKind::Send {
                from,
                term,
                to,
                what,
                dropped,
                late_until,
                ..
            } => {
                write!(f, "t={t} n{from}@{term} -> n{to} {what}")?;
                if *dropped {
                    write!(f, " (dropped)")?;
                }
                if let Some(due) = late_until {
                    write!(f, " (late: due t={due})")?;
                }
                Ok(())
            }
            EventKind::Deliver {
                from,
                to,
                term,
                what,
                late_from,
                batch,
                ..
            } => {
                write!(f, "t={t} n{from} -> n{to}@{term} {what}")?;
                if let Some(sent) = late_from {
                    write!(f, " (late: sent t={sent})")?;
                }
                if let Some((i, n)) = batch {
                    write!(f, " (batch {i}/{n})")?;
                }
                Ok(())
            }
            EventKind::Lost {
                from,
                to,
                what,
                why,
                ..
            } => write!(f, "t={t} n{from} -> n{to} {what} (lost: {why})"),
            EventKind::Role { node, term, role } => write!(f, "t={t} n{node}@{term} is {role}"),
            EventKind::Commit { node, index } => write!(f, "t={t} n{node} commit_index={index}"),
            EventKind::Answer {
                node,
                request,
                result,
            } => write!(f, "t={t} n{node} answers request {request}: {result}"),
            EventKind::Power { text, .. } | EventKind::Note(text) => write!(f, "t={t} -- {text}"),
        }
    }
}

/// The most events a replay holds: the last ones of a longer run (the
/// trace beside it has them all).
const MAX_FRAMES: usize = 20_000;

/// What the replay shows of one node: whether it runs, and its state.
#[derive(Clone)]
struct Shown {
    up: bool,
    view: Option<View>,
}

/// Render `events` of a run over `nodes` as a standalone HTML page: the
/// viewer `raft-kv cluster` serves (src/viewer.html), replaying the run a
/// frame per event. `views` are the nodes' states as they changed, each
/// with the number of events recorded before it.
pub fn html(title: &str, nodes: &[NodeId], events: &[Event], views: &[(usize, View)]) -> String {
    let mut shown: BTreeMap<NodeId, Shown> = nodes
        .iter()
        .map(|&id| {
            (
                id,
                Shown {
                    up: true,
                    view: None,
                },
            )
        })
        .collect();
    let skip = events.len().saturating_sub(MAX_FRAMES);
    let mut views = views.iter().peekable();
    let mut frames = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let mut changed: Vec<NodeId> = Vec::new();
        while let Some((_, view)) = views.next_if(|(at, _)| *at <= i + 1) {
            if let Some(node) = shown.get_mut(&view.id) {
                node.view = Some(view.clone());
                changed.push(view.id);
            }
        }
        if let EventKind::Power { node, up, .. } = event.kind {
            if let Some(shown) = shown.get_mut(&node) {
                shown.up = up;
                changed.push(node);
            }
        }
        if i < skip {
            continue;
        }
        // The first frame shown says everything; each later one what changed.
        let set: Vec<Value> = match i == skip {
            true => shown.iter().map(|(&id, s)| node_json(id, s)).collect(),
            false => changed
                .iter()
                .map(|id| node_json(*id, &shown[id]))
                .collect(),
        };
        frames.push(json!({
            "t": event.t, "label": event.to_string(), "set": set, "messages": messages(event),
        }));
    }
    let title = match skip {
        0 => title.to_string(),
        _ => format!("{title} (the last {MAX_FRAMES} of {} events)", events.len()),
    };
    crate::viewer::replay_page(&json!({
        "title": title, "unit": "ticks", "nodes": nodes, "frames": frames,
    }))
}

fn node_json(id: NodeId, shown: &Shown) -> Value {
    let state = shown.view.as_ref().filter(|_| shown.up).map(|v| {
        let followers: Vec<Value> = v
            .followers
            .iter()
            .map(|&(peer, next, matched)| json!({"peer": peer, "next": next, "match": matched}))
            .collect();
        json!({
            "role": v.role, "term": v.term, "voted_for": v.voted_for.unwrap_or(0),
            "leader": v.leader_id.unwrap_or(0), "commit": v.commit_index,
            "applied": v.last_applied, "last_index": v.last_log_index,
            "tail_start": v.tail_start, "tail_terms": v.tail_terms, "followers": followers,
        })
    });
    let process = if shown.up { "running" } else { "exited" };
    json!({"id": id, "process": process, "how": "crashed", "state": state})
}

/// The arrow an event draws: a message sent, delivered or lost.
fn messages(event: &Event) -> Vec<Value> {
    let (from, to, what, dropped, stage) = match &event.kind {
        EventKind::Send {
            from,
            to,
            what,
            dropped,
            ..
        } => (from, to, what, *dropped, "sent"),
        EventKind::Deliver { from, to, what, .. } => (from, to, what, false, "delivered"),
        EventKind::Lost { from, to, what, .. } => (from, to, what, true, "lost"),
        _ => return Vec::new(),
    };
    let kind = what.split_whitespace().next().unwrap_or("");
    vec![json!({
        "from": from, "to": to, "kind": kind, "count": 1, "entries": entries(what),
        "dropped": u64::from(dropped), "stage": stage,
    })]
}

/// How many entries `AppendEntries … [5@3..7@3] …` carries.
fn entries(what: &str) -> u64 {
    let Some(list) = what.split_whitespace().find(|w| w.starts_with('[')) else {
        return 0;
    };
    let index = |entry: &str| -> Option<u64> {
        entry
            .trim_matches(['[', ']'])
            .split('@')
            .next()?
            .parse()
            .ok()
    };
    match list.split_once("..") {
        Some((first, last)) => match (index(first), index(last)) {
            (Some(first), Some(last)) => last.saturating_sub(first) + 1,
            _ => 0,
        },
        None if list == "[]" => 0,
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_counted_from_the_description() {
        assert_eq!(
            entries("AppendEntries term=3 prev=4@2 [5@3..7@3] commit=4"),
            3
        );
        assert_eq!(entries("AppendEntries term=3 prev=4@2 [5@3] commit=4"), 1);
        assert_eq!(entries("AppendEntries term=3 prev=4@2 [] commit=4"), 0);
        assert_eq!(entries("RequestVote term=3 last=4@2"), 0);
    }

    #[test]
    fn a_replay_has_a_frame_per_event_and_says_who_is_down() {
        let send = EventKind::Send {
            id: 1,
            from: 1,
            term: 1,
            to: 2,
            what: "RequestVote term=1 last=0@0".into(),
            dropped: false,
            late_until: None,
        };
        let crash = EventKind::Power {
            node: 2,
            up: false,
            text: "crash n2".into(),
        };
        let events = [Event { t: 1, kind: send }, Event { t: 2, kind: crash }];
        let page = html("run", &[1, 2], &events, &[]);
        assert!(page.contains(r#""kind":"RequestVote""#));
        assert!(page.contains(r#""process":"exited""#));
        assert!(page.contains("t=2 -- crash n2"));
    }
}
