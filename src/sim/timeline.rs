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
    /// Crash, restart, partition, a test's own marks.
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
            EventKind::Note(text) => write!(f, "t={t} -- {text}"),
        }
    }
}

const LANE: f64 = 170.0;
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
    if what.starts_with("RequestVote") {
        "#b35c00"
    } else if what.starts_with("InstallSnapshot") {
        "#7a3db8"
    } else {
        "#2a6fb0"
    }
}

/// Render `events` of a run over `nodes` as a standalone HTML page.
pub fn html(title: &str, nodes: &[NodeId], events: &[Event]) -> String {
    let lane_x =
        |node: NodeId| LEFT + LANE * (nodes.iter().position(|&n| n == node).unwrap_or(0) as f64);
    let row_y = |row: usize| TOP + ROW * row as f64;
    let width = LEFT + LANE * nodes.len() as f64 + 260.0;
    let height = row_y(events.len() + 2);
    let mut svg = String::new();
    let mut sends = std::collections::HashMap::new();
    let mut last_t = None;
    for (row, event) in events.iter().enumerate() {
        let y = row_y(row);
        if last_t != Some(event.t) {
            let _ = write!(
                svg,
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
                        svg,
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
                let mut label = what.split_whitespace().next().unwrap_or("").to_string();
                if matches!(
                    event.kind,
                    EventKind::Deliver {
                        late_from: Some(_),
                        ..
                    }
                ) {
                    label += " (late)";
                }
                let _ = write!(
                    svg,
                    r##"<g class="msg"><title>{tip}</title><line x1="{x1:.0}" y1="{y1:.0}" x2="{x2:.0}" y2="{y2:.0}" stroke="{c}" stroke-width="1.4"{} marker-end="url(#arrow)"/><text x="{:.0}" y="{:.0}" fill="{c}" class="lbl">{}</text></g>"##,
                    if lost {
                        r#" stroke-dasharray="4 3""#
                    } else {
                        ""
                    },
                    (x1 + x2) / 2.0 + 4.0,
                    (y1 + y2) / 2.0 - 2.0,
                    escape(&label)
                );
            }
            EventKind::Role { node, term, role } => {
                let fill = match *role {
                    "leader" => "#1a8f3c",
                    "candidate" => "#d08a00",
                    _ => "#777",
                };
                let _ = write!(
                    svg,
                    r##"<g><title>{tip}</title><rect x="{:.0}" y="{:.0}" width="118" height="15" rx="4" fill="{fill}"/><text x="{:.0}" y="{:.0}" class="role">{role} · term {term}</text></g>"##,
                    lane_x(*node) - 59.0,
                    y - 10.0,
                    lane_x(*node) - 53.0,
                    y + 1.5
                );
            }
            EventKind::Commit { node, index } => {
                let _ = write!(
                    svg,
                    r##"<g><title>{tip}</title><circle cx="{:.0}" cy="{:.0}" r="4" fill="#1a8f3c"/><text x="{:.0}" y="{:.0}" class="c">commit {index}</text></g>"##,
                    lane_x(*node),
                    y - 3.0,
                    lane_x(*node) + 7.0,
                    y + 1.0
                );
            }
            EventKind::Answer { node, result, .. } => {
                let _ = write!(
                    svg,
                    r##"<g><title>{tip}</title><text x="{:.0}" y="{:.0}" class="ans">answer: {}</text></g>"##,
                    lane_x(*node) + 7.0,
                    y + 1.0,
                    escape(result)
                );
            }
            EventKind::Note(text) => {
                let _ = write!(
                    svg,
                    r##"<g><title>{tip}</title><rect x="60" y="{:.0}" width="{:.0}" height="15" fill="#fde8e8"/><text x="66" y="{:.0}" class="note">{}</text></g>"##,
                    y - 10.0,
                    width - 60.0,
                    y + 1.5,
                    escape(text)
                );
            }
        }
    }
    let mut lanes = String::new();
    for &node in nodes {
        let x = lane_x(node);
        let _ = write!(
            lanes,
            r##"<line x1="{x:.0}" x2="{x:.0}" y1="{:.0}" y2="{height:.0}" class="lane"/><text x="{x:.0}" y="30" class="node">n{node}</text>"##,
            TOP - 20.0
        );
    }
    format!(
        r##"<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 16px; }}
.lane {{ stroke: #ccc; stroke-width: 2; }}
.tick {{ stroke: #f2f2f2; }}
.node {{ font-weight: bold; text-anchor: middle; font-size: 15px; }}
.t {{ fill: #999; font-size: 11px; }}
.lbl {{ font-size: 10px; }}
.role {{ fill: white; font-size: 11px; }}
.c, .ans {{ font-size: 10px; fill: #1a8f3c; }}
.drop {{ font-size: 10px; fill: #c00; }}
.note {{ font-size: 11px; fill: #900; }}
.msg:hover line {{ stroke-width: 3; }}
</style></head><body>
<h2>{title}</h2>
<p>Time flows down; each lane is a node. Arrows are messages (blue AppendEntries, orange RequestVote, purple InstallSnapshot; dashed = lost). Hover anything for its trace line.</p>
<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="context-stroke"/></marker></defs>
{lanes}{svg}
</svg></body></html>
"##,
        title = escape(title)
    )
}
