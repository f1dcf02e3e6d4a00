//! The events of a simulated run, as text (one line each) and as a
//! self-contained HTML timeline: one lane per node, messages as arrows,
//! role and term changes, commits, crashes and partitions marked. Open the
//! file in a browser; it needs no server and no script from elsewhere.

use std::fmt::{self, Write as _};

use crate::raft::{LogIndex, NodeId, Term};

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

const LANE: f64 = 230.0;
const ROW: f64 = 18.0;
const TOP: f64 = 60.0;
const LEFT: f64 = 90.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn color(what: &str) -> &'static str {
    if what.starts_with("RequestVote") || what.starts_with("PreVote") {
        "#b35c00"
    } else if what.starts_with("InstallSnapshot") {
        "#7a3db8"
    } else {
        "#2a6fb0"
    }
}

/// An arrow's label: the message in short, with the fields a reader needs
/// on paper (prev, entries, commit), not only in the hover text.
fn label(what: &str) -> String {
    let mut words = what.split_whitespace();
    let kind = match words.next().unwrap_or("") {
        "AppendEntries" => "AE",
        "AppendEntriesReply" => "AE reply",
        "RequestVote" => "RV",
        "RequestVoteReply" => "RV reply",
        "InstallSnapshot" => "IS",
        "InstallSnapshotReply" => "IS reply",
        "PreVote" => "PV",
        "PreVoteReply" => "PV reply",
        "TimeoutNow" => "TN",
        other => other,
    };
    let rest: Vec<&str> = words.filter(|w| !w.starts_with("term=")).collect();
    format!("{kind} {}", rest.join(" "))
}

/// One row of the drawing: an event, or a run of ticks folded away because
/// each repeated the tick drawn before it (an idle cluster's heartbeats).
enum Row {
    Event(usize),
    Fold { first: u64, last: u64, ticks: usize },
}

/// Which events get a row. A tick whose events, but for the time, are
/// those of the tick drawn before it, and whose messages all arrive within
/// it, is folded into one row.
fn layout(events: &[Event]) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut drawn: Option<Vec<String>> = None;
    let mut fold: Option<(u64, u64, usize)> = None;
    let mut start = 0;
    while start < events.len() {
        let t = events[start].t;
        let end = events[start..]
            .iter()
            .position(|e| e.t != t)
            .map_or(events.len(), |p| start + p);
        let tick = &events[start..end];
        let signature: Vec<String> = tick
            .iter()
            .map(|e| {
                let line = e.to_string();
                line.split_once(' ')
                    .map_or(line.clone(), |(_, rest)| rest.to_string())
            })
            .collect();
        let ids = |deliveries: bool| -> Vec<u64> {
            let mut ids: Vec<u64> = tick
                .iter()
                .filter_map(|e| match &e.kind {
                    EventKind::Send { id, dropped, .. } if !deliveries && !dropped => Some(*id),
                    EventKind::Deliver { id, .. } | EventKind::Lost { id, .. } if deliveries => {
                        Some(*id)
                    }
                    _ => None,
                })
                .collect();
            ids.sort_unstable();
            ids
        };
        if drawn.as_ref() == Some(&signature) && ids(false) == ids(true) {
            let run = fold.get_or_insert((t, t, 0));
            run.1 = t;
            run.2 += 1;
        } else {
            if let Some((first, last, ticks)) = fold.take() {
                rows.push(Row::Fold { first, last, ticks });
            }
            rows.extend((start..end).map(Row::Event));
            drawn = Some(signature);
        }
        start = end;
    }
    if let Some((first, last, ticks)) = fold {
        rows.push(Row::Fold { first, last, ticks });
    }
    rows
}

/// Render `events` of a run over `nodes` as a standalone HTML page.
pub fn html(title: &str, nodes: &[NodeId], events: &[Event]) -> String {
    let lane_x =
        |node: NodeId| LEFT + LANE * (nodes.iter().position(|&n| n == node).unwrap_or(0) as f64);
    let row_y = |row: usize| TOP + ROW * row as f64;
    let rows = layout(events);
    let width = LEFT + LANE * nodes.len() as f64 + 260.0;
    let height = row_y(rows.len() + 2);
    // Messages first, then the marks on the lanes, so no arrow hides a mark.
    let mut messages = String::new();
    let mut marks = String::new();
    let mut sends = std::collections::HashMap::new();
    // The rows between a node's crash and its restart: its lane is drawn dead there.
    let mut down_since = std::collections::HashMap::new();
    let mut down = Vec::new();
    let mut last_t = None;
    for (row, at) in rows.iter().enumerate() {
        let y = row_y(row);
        let event = match *at {
            Row::Fold { first, last, ticks } => {
                let _ = write!(
                    marks,
                    r##"<text x="66" y="{:.0}" class="fold">⋯ {ticks} more tick{} like the one above, t={first}..{last}, folded</text>"##,
                    y + 4.0,
                    if ticks == 1 { "" } else { "s" }
                );
                continue;
            }
            Row::Event(i) => &events[i],
        };
        if last_t != Some(event.t) {
            let _ = write!(
                messages,
                r##"<text x="8" y="{:.0}" class="t">t={}</text><line x1="60" x2="{width:.0}" y1="{:.0}" y2="{:.0}" class="tick"/>"##,
                y + 4.0,
                event.t,
                y - ROW / 2.0,
                y - ROW / 2.0
            );
            last_t = Some(event.t);
        }
        let tip = escape(&event.to_string());
        match &event.kind {
            EventKind::Send {
                id, from, dropped, ..
            } => {
                sends.insert(*id, (row, *from));
                if *dropped {
                    let x = lane_x(*from);
                    let _ = write!(
                        marks,
                        r##"<g><title>{tip}</title><text x="{:.0}" y="{:.0}" class="drop">✕ dropped</text></g>"##,
                        x + 6.0,
                        y + 4.0
                    );
                }
            }
            EventKind::Deliver { id, to, what, .. } | EventKind::Lost { id, to, what, .. } => {
                let lost = matches!(event.kind, EventKind::Lost { .. });
                let Some(&(send_row, from)) = sends.get(id) else {
                    continue;
                };
                let (x1, y1, x2, y2) = (lane_x(from), row_y(send_row), lane_x(*to), y);
                let c = if lost { "#999" } else { color(what) };
                let mut text = label(what);
                if matches!(
                    event.kind,
                    EventKind::Deliver {
                        late_from: Some(_),
                        ..
                    }
                ) {
                    text += " (late)";
                }
                // The label starts past the sender's mark and reads along the arrow.
                let lx = if x2 >= x1 { x1 + 64.0 } else { x1 - 64.0 };
                let _ = write!(
                    messages,
                    r##"<g class="msg"><title>{tip}</title><line x1="{x1:.0}" y1="{y1:.0}" x2="{x2:.0}" y2="{y2:.0}" stroke="{c}" stroke-width="1.4"{} marker-end="url(#arrow)"/><text x="{lx:.0}" y="{:.0}" fill="{c}" class="lbl" text-anchor="{}">{}</text></g>"##,
                    if lost {
                        r#" stroke-dasharray="4 3""#
                    } else {
                        ""
                    },
                    y1 + (y2 - y1) * (lx - x1).abs() / (x2 - x1).abs().max(1.0) - 3.0,
                    if x2 >= x1 { "start" } else { "end" },
                    escape(&text)
                );
            }
            EventKind::Role { node, term, role } => {
                let fill = match *role {
                    "leader" => "#1a8f3c",
                    "candidate" => "#d08a00",
                    _ => "#777",
                };
                let _ = write!(
                    marks,
                    r##"<g><title>{tip}</title><rect x="{:.0}" y="{:.0}" width="112" height="15" rx="4" fill="{fill}"/><text x="{:.0}" y="{:.0}" class="role">{role} · term {term}</text></g>"##,
                    lane_x(*node) - 56.0,
                    y - 10.0,
                    lane_x(*node) - 50.0,
                    y + 1.5
                );
            }
            EventKind::Commit { node, index } => {
                let _ = write!(
                    marks,
                    r##"<g><title>{tip}</title><circle cx="{:.0}" cy="{:.0}" r="4" fill="#1a8f3c"/><text x="{:.0}" y="{:.0}" class="c">commit {index}</text></g>"##,
                    lane_x(*node),
                    y - 3.0,
                    lane_x(*node) - 8.0,
                    y + 1.0
                );
            }
            EventKind::Answer { node, result, .. } => {
                let _ = write!(
                    marks,
                    r##"<g><title>{tip}</title><text x="{:.0}" y="{:.0}" class="ans">answer: {}</text></g>"##,
                    lane_x(*node) + 7.0,
                    y + 1.0,
                    escape(result)
                );
            }
            EventKind::Power { node, up, text } => {
                if *up {
                    if let Some(since) = down_since.remove(node) {
                        down.push((*node, since, row));
                    }
                } else {
                    down_since.entry(*node).or_insert(row);
                }
                let _ = write!(
                    marks,
                    r##"<g><title>{tip}</title><rect x="{:.0}" y="{:.0}" width="112" height="15" rx="4" class="{}"/><text x="{:.0}" y="{:.0}" class="power">{}</text></g>"##,
                    lane_x(*node) - 56.0,
                    y - 10.0,
                    if *up { "up" } else { "down" },
                    lane_x(*node) - 50.0,
                    y + 1.5,
                    escape(text)
                );
            }
            EventKind::Note(text) => {
                let _ = write!(
                    marks,
                    r##"<g><title>{tip}</title><rect x="60" y="{:.0}" width="{:.0}" height="15" fill="#fde8e8"/><text x="66" y="{:.0}" class="note">{}</text></g>"##,
                    y - 10.0,
                    width - 60.0,
                    y + 1.5,
                    escape(text)
                );
            }
        }
    }
    down.extend(
        down_since
            .into_iter()
            .map(|(node, since)| (node, since, rows.len())),
    );
    let mut lanes = String::new();
    for &node in nodes {
        let x = lane_x(node);
        let _ = write!(
            lanes,
            r##"<line x1="{x:.0}" x2="{x:.0}" y1="{:.0}" y2="{height:.0}" class="lane"/><text x="{x:.0}" y="30" class="node">n{node}</text>"##,
            TOP - 20.0
        );
    }
    for (node, since, until) in down {
        let x = lane_x(node);
        let _ = write!(
            lanes,
            r##"<line x1="{x:.0}" x2="{x:.0}" y1="{:.0}" y2="{:.0}" class="dead"/>"##,
            row_y(since),
            row_y(until) - ROW / 2.0
        );
    }
    format!(
        r##"<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 16px; }}
.lane {{ stroke: #bbb; stroke-width: 3; }}
.dead {{ stroke: white; stroke-width: 5; stroke-dasharray: 2 6; }}
.tick {{ stroke: #f2f2f2; }}
.node {{ font-weight: bold; text-anchor: middle; font-size: 15px; }}
.t {{ fill: #777; font-size: 11px; }}
.lbl {{ font-size: 10px; paint-order: stroke; stroke: white; stroke-width: 3px; }}
.role, .power {{ fill: white; font-size: 11px; }}
.down {{ fill: #444; }}
.up {{ fill: #888; }}
.c {{ font-size: 10px; fill: #1a8f3c; text-anchor: end; }}
.ans {{ font-size: 10px; fill: #1a8f3c; }}
.drop {{ font-size: 10px; fill: #c00; }}
.note {{ font-size: 11px; fill: #900; }}
.fold {{ font-size: 11px; fill: #555; font-style: italic; }}
.msg:hover line {{ stroke-width: 3; }}
</style></head><body>
<h2>{title}</h2>
<p>Time flows down; each lane is a node, dotted while the node is down. Arrows are messages: AE AppendEntries (blue), RV RequestVote (orange), IS InstallSnapshot (purple); dashed = lost. prev=index@term of prevLogIndex, [first..last] the entries carried, commit= the leader's commitIndex. Ticks that repeat the one above (an idle cluster's heartbeats) are folded into one line. Hover anything for its whole trace line.</p>
<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="context-stroke"/></marker></defs>
{lanes}{messages}{marks}
</svg></body></html>
"##,
        title = escape(title)
    )
}
