//! Wake-ups between tasks of one shard. [`Signal`]: a flag for one waiting task: `notify` sets it, `wait` resolves once
//! it is set and clears it. Many notifies before a wait collapse into one wake-up, which is what
//! batches outgoing writes and cross-shard sends. Single-threaded by construction (`Cell`).

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct Signal {
    set: Cell<bool>,
    waiter: Cell<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(waker) = self.waiter.take() {
            waker.wake();
        }
    }

    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// A wake-up for any number of waiting tasks on the same shard: `wait` resolves at the next
/// `notify_all` after it started waiting.
#[derive(Default)]
pub struct Event {
    generation: Cell<u64>,
    waiters: std::cell::RefCell<Vec<Waker>>,
}

impl Event {
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub async fn wait(&self) {
        let started = self.generation.get();
        poll_fn(|cx| {
            if self.generation.get() != started {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}
