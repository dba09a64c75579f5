//! A progress bar on standard error for runs longer than a few seconds, when it is a terminal
//! (indicatif draws nothing otherwise, so piped and JSON output stay clean).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Runs shorter than this get no bar.
const SHOWN_FROM: Duration = Duration::from_secs(3);
const REFRESH: Duration = Duration::from_millis(200);

/// Shows `label`, the time elapsed out of `total` and the rate at which `count` grows, until
/// `done` is set. Runs on its own thread.
pub fn show(label: &str, total: Duration, count: &AtomicU64, done: &AtomicBool) {
    if total < SHOWN_FROM {
        return;
    }
    let bar = ProgressBar::new(total.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {elapsed:>3}/{duration} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    let started = Instant::now();
    let (mut last_count, mut last_at) = (0, started);
    while !done.load(Ordering::Acquire) {
        std::thread::sleep(REFRESH);
        let (now, counted) = (Instant::now(), count.load(Ordering::Relaxed));
        let rate = (counted - last_count) as f64 / now.duration_since(last_at).as_secs_f64();
        (last_count, last_at) = (counted, now);
        bar.set_position(started.elapsed().as_millis().min(u128::from(u64::MAX)) as u64);
        bar.set_message(format!("{counted} received, {rate:.0}/s"));
    }
    bar.finish_and_clear();
}
