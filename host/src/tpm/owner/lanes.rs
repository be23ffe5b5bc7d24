//! The owner thread's two job queues.
//!
//! One TPM serves consensus (a vote or proposal signature every round) and
//! everything else: attestation evidence for a peer's challenge (TPM2_Certify,
//! TPM2_Quote and a PCR read per quoted PCR), epoch records, checkpoint
//! quotes and cosignatures, sealing. A peer can ask for evidence at will, so
//! if both shared one FIFO a flood of challenges would queue a signature
//! behind any number of quotes. The owner therefore takes the next job from
//! the consensus lane whenever it holds one, and from the background lane
//! only when it is empty; a job already running is not interrupted (a TPM
//! command cannot be), so a consensus signature waits for at most the one
//! command under way plus the consensus jobs queued before it.
//!
//! Each lane is bounded: a full background lane makes its callers wait
//! (back-pressure) without holding up the consensus lane.

use tokio::sync::mpsc;

/// Which queue of the TPM owner a job waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Priority {
    /// Vote, proposal and batch signatures: consensus waits for them. Run
    /// before any queued background job.
    Consensus,
    /// Everything else (attestation evidence, checkpoint lines, sealing,
    /// provisioning), first come first served once the consensus lane is
    /// empty.
    Background,
}

/// The submitting ends, one per lane.
pub(super) struct Senders<J> {
    consensus: mpsc::Sender<J>,
    background: mpsc::Sender<J>,
}

impl<J> Senders<J> {
    /// The sender of `priority`'s lane.
    pub(super) fn lane(&self, priority: Priority) -> &mpsc::Sender<J> {
        match priority {
            Priority::Consensus => &self.consensus,
            Priority::Background => &self.background,
        }
    }
}

impl<J> std::fmt::Debug for Senders<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Senders")
            .field("consensus_free", &self.consensus.capacity())
            .field("background_free", &self.background.capacity())
            .finish()
    }
}

/// The owner's end: both lanes, taken in priority order.
pub(super) struct Lanes<J> {
    consensus: mpsc::Receiver<J>,
    background: mpsc::Receiver<J>,
}

/// Two lanes of `capacity` jobs each.
pub(super) fn lanes<J>(capacity: usize) -> (Senders<J>, Lanes<J>) {
    let (ctx, crx) = mpsc::channel(capacity);
    let (btx, brx) = mpsc::channel(capacity);
    (
        Senders {
            consensus: ctx,
            background: btx,
        },
        Lanes {
            consensus: crx,
            background: brx,
        },
    )
}

impl<J> Lanes<J> {
    /// The next job: the oldest consensus job if any is queued, else the
    /// oldest background job; waits while both lanes are empty. `None` once
    /// every sender is gone and both lanes are drained.
    pub(super) async fn next(&mut self) -> Option<J> {
        tokio::select! {
            biased;
            Some(j) = self.consensus.recv() => Some(j),
            Some(j) = self.background.recv() => Some(j),
            else => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn consensus_jobs_run_before_queued_background_jobs_each_lane_in_order() {
        let (tx, mut rx) = lanes::<&str>(16);
        for j in ["quote 1", "certify 1", "quote 2"] {
            tx.lane(Priority::Background).send(j).await.unwrap();
        }
        tx.lane(Priority::Consensus).send("vote 1").await.unwrap();
        tx.lane(Priority::Background).send("quote 3").await.unwrap();
        tx.lane(Priority::Consensus).send("vote 2").await.unwrap();
        let mut order = Vec::new();
        order.push(rx.next().await.unwrap());
        // A signature queued while background work waits still goes next.
        tx.lane(Priority::Consensus).send("vote 3").await.unwrap();
        for _ in 0..6 {
            order.push(rx.next().await.unwrap());
        }
        assert_eq!(
            order,
            [
                "vote 1",
                "vote 2",
                "vote 3",
                "quote 1",
                "certify 1",
                "quote 2",
                "quote 3"
            ]
        );
    }

    #[tokio::test]
    async fn a_full_background_lane_does_not_hold_up_a_signature() {
        let (tx, mut rx) = lanes::<u32>(4);
        // A challenge flood fills the background lane to its bound...
        let mut flooded = 0;
        while tx.lane(Priority::Background).try_send(flooded).is_ok() {
            flooded += 1;
        }
        assert_eq!(flooded, 4);
        // ...and a consensus signature is still accepted and runs first.
        tx.lane(Priority::Consensus).try_send(1000).unwrap();
        assert_eq!(rx.next().await, Some(1000));
        assert_eq!(rx.next().await, Some(0));
    }

    #[tokio::test]
    async fn drains_both_lanes_after_the_senders_are_gone() {
        let (tx, mut rx) = lanes::<u32>(4);
        tx.lane(Priority::Background).send(1).await.unwrap();
        tx.lane(Priority::Consensus).send(2).await.unwrap();
        drop(tx);
        assert_eq!(rx.next().await, Some(2));
        assert_eq!(rx.next().await, Some(1));
        assert_eq!(rx.next().await, None);
    }
}
