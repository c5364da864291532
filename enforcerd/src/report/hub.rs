//! Recent decision lines, kept for `enforcerd events`, and the live stream for
//! `enforcerd events --follow`. Both are bounded: the history keeps the last N lines, and a
//! follower that falls more than `LIVE_BUFFER` lines behind is told how many it missed
//! instead of making the daemon buffer for it.
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

/// Lines buffered per follower before it starts missing lines.
pub const LIVE_BUFFER: usize = 4096;

pub struct Hub {
    history: Mutex<VecDeque<Arc<str>>>,
    capacity: usize,
    live: broadcast::Sender<Arc<str>>,
}

impl Hub {
    pub fn new(capacity: usize) -> Self {
        Hub {
            history: Mutex::new(VecDeque::with_capacity(capacity.min(LIVE_BUFFER))),
            capacity,
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }

    /// Adds one JSON line (without its newline).
    pub fn publish(&self, line: Arc<str>) {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if self.capacity > 0 {
            if history.len() == self.capacity {
                history.pop_front();
            }
            history.push_back(line.clone());
        }
        // No receiver is fine.
        let _ = self.live.send(line);
    }

    /// The history, and (with `follow`) a receiver of every line published after it: taken
    /// under one lock, so a follower sees no line twice and misses none in between.
    pub fn snapshot(&self, follow: bool) -> (Vec<Arc<str>>, Option<broadcast::Receiver<Arc<str>>>) {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let live = follow.then(|| self.live.subscribe());
        (history.iter().cloned().collect(), live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_the_last_lines_and_followers_get_only_newer_ones() {
        let hub = Hub::new(2);
        for l in ["a", "b", "c"] {
            hub.publish(l.into());
        }
        let (history, live) = hub.snapshot(true);
        assert_eq!(history, [Arc::from("b"), Arc::from("c")]);
        let mut live = live.unwrap();
        hub.publish("d".into());
        assert_eq!(&*live.try_recv().unwrap(), "d");
        assert!(live.try_recv().is_err());
        assert!(hub.snapshot(false).1.is_none());
    }

    #[test]
    fn a_slow_follower_learns_how_many_lines_it_missed() {
        let hub = Hub::new(0);
        let (history, live) = hub.snapshot(true);
        assert!(history.is_empty());
        let mut live = live.unwrap();
        for i in 0..LIVE_BUFFER + 5 {
            hub.publish(i.to_string().into());
        }
        assert!(matches!(
            live.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(5))
        ));
    }
}
