//! The viewer of a cluster: one HTML page of plain JavaScript and SVG
//! (`viewer.html`, embedded in the binary), with no build step and nothing
//! loaded from elsewhere. The same page shows two things:
//!
//! - live, as `raft-kv cluster` serves it (src/server/live.rs): it polls
//!   `/api/state` and draws each node's role, term, vote, log and timer and
//!   the messages between them, with buttons that act on the processes;
//! - a recorded run, as the simulated tests write it on failure
//!   (`<stem>.timeline.html`, src/sim/timeline.rs): the same drawing, fed
//!   from the trace's frames, with a slider to scrub through the run.

/// The marker the recorded frames replace.
const REPLAY_SLOT: &str = "<script id=\"replay\"></script>";

const PAGE: &str = include_str!("viewer.html");

/// The page as `raft-kv cluster` serves it.
pub fn live_page() -> &'static str {
    PAGE
}

/// A self-contained page that replays `frames`: a JSON object
/// `{"title", "unit", "frames": [{"t", "label", "nodes", "messages"}]}`,
/// each frame's nodes shaped as `/api/state` gives them.
pub fn replay_page(frames: &serde_json::Value) -> String {
    // "</" would end the script element early.
    let data = frames.to_string().replace("</", "<\\/");
    PAGE.replacen(
        REPLAY_SLOT,
        &format!("<script id=\"replay\">window.REPLAY = {data};</script>"),
        1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_its_replay_slot_and_a_replay_fills_it_safely() {
        assert!(PAGE.contains(REPLAY_SLOT));
        let page = replay_page(&serde_json::json!({"title": "</script><b>", "frames": []}));
        assert!(!page.contains(REPLAY_SLOT));
        assert!(page.contains("window.REPLAY = {"));
        assert!(!page.contains("</script><b>"));
    }
}
