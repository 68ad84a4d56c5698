//! A lane's subscriptions: one queue subscription per served phase subject
//! on the lane's connection, read in turn. A subscription told to drain is
//! unsubscribed, still hands on what had arrived, and then says so.

use std::sync::Arc;
use std::task::{Context, Poll};

use async_nats::{Message, Subscriber};
use futures::StreamExt as _;
use tokio::sync::oneshot;

use crate::subscription::Served;

struct Entry {
    subject: String,
    subscriber: Subscriber,
    served: Arc<Served>,
    /// Told when a drained subscription has handed on its last message.
    drained: Vec<oneshot::Sender<()>>,
}

/// The subscriptions of one lane.
#[derive(Default)]
pub struct LaneSubscriptions {
    entries: Vec<Entry>,
    /// Where the next read starts, so no subject is always read first.
    next: usize,
}

impl LaneSubscriptions {
    pub fn add(&mut self, subject: String, subscriber: Subscriber, served: Arc<Served>) {
        self.entries.push(Entry {
            subject,
            subscriber,
            served,
            drained: Vec::new(),
        });
    }

    /// Unsubscribe from `subject`; `done` is told once every message that
    /// had arrived for it was handed on (at once when it is not here).
    pub async fn drain(&mut self, subject: &str, done: oneshot::Sender<()>) {
        let Some(index) = self.entries.iter().position(|e| e.subject == subject) else {
            let _ = done.send(());
            return;
        };
        let entry = &mut self.entries[index];
        entry.drained.push(done);
        if let Err(error) = entry.subscriber.drain().await {
            tracing::warn!(subject, %error, "could not drain a subscription");
            let entry = self.entries.remove(index);
            for done in entry.drained {
                let _ = done.send(());
            }
        }
    }

    /// The next message of any subscription, and what it is for. Pending
    /// while there is none (for ever when there are no subscriptions).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<(Message, Arc<Served>)> {
        let mut index = self.next;
        let mut looked = 0;
        while looked < self.entries.len() {
            if index >= self.entries.len() {
                index = 0;
            }
            let entry = &mut self.entries[index];
            match entry.subscriber.poll_next_unpin(cx) {
                Poll::Ready(Some(message)) => {
                    self.next = index + 1;
                    return Poll::Ready((message, entry.served.clone()));
                }
                Poll::Ready(None) => {
                    // Drained (or closed): everything it had is handed on.
                    let entry = self.entries.remove(index);
                    for done in entry.drained {
                        let _ = done.send(());
                    }
                }
                Poll::Pending => {
                    index += 1;
                    looked += 1;
                }
            }
        }
        Poll::Pending
    }

    /// [`LaneSubscriptions::poll_next`] as a future.
    pub async fn next(&mut self) -> (Message, Arc<Served>) {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}
