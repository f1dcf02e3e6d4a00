//! The timer thread: the core's only clock. It sends one tick every
//! `--tick-ms` and does nothing else, so the core stays free of clocks and
//! tests can drive it tick by tick.

use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};

/// Start the timer thread. It stops once the event loop has dropped the
/// receiving end of `ticks`.
pub fn spawn(tick: Duration, ticks: Sender<()>) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new().name("timer".into()).spawn(move || {
        for _ in crossbeam_channel::tick(tick) {
            match ticks.try_send(()) {
                // A busy event loop has a tick waiting already. Piling more up
                // would make it time out elections the moment it frees up,
                // before reading the heartbeats queued behind them.
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => return,
            }
        }
    })
}
