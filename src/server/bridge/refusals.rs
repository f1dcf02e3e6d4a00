//! Log lines for refused connections and streams, at most one per kind per
//! [`QUIET`]: a refused peer retries every 100 ms, and an attacker can try
//! as often as it likes, but the log must stay readable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::warn;

const QUIET: Duration = Duration::from_secs(10);
/// Kinds remembered at once; past this the memory starts over (an attacker
/// who varies its messages then gets a line per kind per batch, no more).
const KINDS: usize = 1024;

#[derive(Clone, Default)]
pub struct Refusals(Arc<Mutex<HashMap<String, Instant>>>);

impl Refusals {
    /// Log `line()` at warn level unless a refusal of `kind` was logged
    /// within [`QUIET`].
    pub fn warn(&self, kind: String, line: impl FnOnce() -> String) {
        let now = Instant::now();
        let mut last = self.0.lock().expect("no panics while held");
        if last.len() >= KINDS {
            last.clear();
        }
        match last.get(&kind) {
            Some(&at) if now.duration_since(at) < QUIET => {}
            _ => {
                last.insert(kind, now);
                warn!("{}", line());
            }
        }
    }
}
