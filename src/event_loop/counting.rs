//! What the metrics count from the loop's own doings: a committed batch
//! (messages accepted, outcomes by next hop) and the queue depth by status
//! kept in memory between recounts.

use log::error;

use super::Server;
use crate::metrics::Depth;
use crate::queue::Batch;

impl Server {
    /// What a committed batch did, for the metrics: the counters move only
    /// once the queue holds the same facts.
    pub(super) fn count_committed(
        &mut self,
        batch: &Batch<'_>,
        leases: &[crate::queue::Lease],
        inbound: usize,
    ) {
        use crate::metrics::Outcome as Counted;
        use crate::queue::RecipientState;
        self.metrics
            .commit_batch
            .observe(batch.messages.len() as f64);
        for message in &batch.messages[..inbound] {
            self.metrics.messages_accepted.inc();
            self.metrics
                .recipients_accepted
                .inc_by(message.recipients.len() as u64);
            self.metrics.bytes_received.inc_by(message.size);
        }
        for message in &batch.messages {
            self.depth.queued += message.recipients.len() as i64;
        }
        for lease in leases {
            self.depth.queued -= lease.recipients.len() as i64;
            self.depth.active += lease.recipients.len() as i64;
        }
        for outcome in &batch.outcomes {
            self.depth.active -= 1;
            let counted = match outcome.state {
                RecipientState::Delivered => Counted::Delivered,
                RecipientState::Deferred { .. } => {
                    self.depth.deferred += 1;
                    Counted::Deferred
                }
                RecipientState::Bounced => Counted::Bounced,
                RecipientState::Expired => Counted::Expired,
                RecipientState::Deleted => continue,
            };
            self.metrics
                .outcome(&outcome.next_hop, counted, outcome.attempt.is_some());
        }
    }

    /// Recounts the queue's pending recipients (another process changed it).
    pub(super) fn recount_depth(&mut self) {
        match self.queue.pending_counts() {
            Ok(counts) => self.depth = Depth::from(counts),
            Err(e) => error!("counting the queue: {e}"),
        }
    }
}
