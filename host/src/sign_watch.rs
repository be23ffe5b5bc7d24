//! The start-up double-sign check (CometBFT ADR-051 "double signing
//! protection", tmkms' state file rule): before a party signs any consensus
//! message after a start, it asks whether its sign-guard state can be
//! trusted.
//!
//! The guard (`quorate_firmware::consensus::sign_guard`) refuses to sign a
//! regression or a conflict — relative to *its own state*. If that state
//! was lost (a data dir restored from an old backup, the guard record
//! deleted) or is older than what the chain shows this party signed, the
//! guard would sign again at heights it already signed, possibly for
//! another value: equivocation. The same holds when a second instance of
//! the party runs with a copy of its keys. So at start:
//!
//! - if the chain holds blocks and the guard has no precommit, or its last
//!   precommit is below the last height whose stored commit certificate
//!   carries this party's precommit, the party **watches**: it signs nothing
//!   until `heights` more blocks are decided without it (or, if no block is
//!   decided for `idle_ms` — the others cannot decide without us, so no
//!   copy of us is signing either — the watch ends too);
//! - while watching, a decided block above the start tip + 1 whose
//!   certificate carries this party's precommit means another instance
//!   signs with this party's key: the daemon halts with
//!   [`DoubleSignDetected`]. (The block at tip + 1 may carry a precommit
//!   this party made before it stopped.)
//!
//! Pure: heights and milliseconds in, decisions out. The daemon holds back
//! the sign requests the watch refuses (counted and logged) and signs them
//! when the watch ends: the consensus core counts its own votes, so a vote
//! dropped for good could leave this party's own decision waiting forever.
//!
//! A watching party's core still counts its own (unsigned, placeholder)
//! precommit, so with `majority` (2 of 3) its local quorum is complete as
//! soon as one other precommit arrives. The consensus driver then completes
//! the commit certificate from the others' precommits alone when they are a
//! quorum (`ConsensusDriver`'s `certificate_without_us`), so the watching
//! party follows the chain and sees heights decided without it. Before, it
//! waited at that height for its own signature, saw nothing decided, and
//! stayed watching: the reason the check was once off by default.

use quorate_firmware::types::Height;

/// Why a start needs the watch, for the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchReason {
    /// The chain has blocks but the sign-guard state is missing.
    GuardMissing {
        /// The stored tip.
        tip: Height,
    },
    /// The party's store was lost (deleted or replaced by an empty one):
    /// the chain is replayed from height 1, so neither the guard nor the
    /// tip tells what this party signed before.
    StoreLost,
    /// The guard's last precommit is older than the chain's last height
    /// signed by this party.
    GuardBehindChain {
        /// The guard's last precommit height.
        guard: Height,
        /// The last height whose certificate carries our precommit.
        chain: Height,
    },
}

impl std::fmt::Display for WatchReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchReason::GuardMissing { tip } => write!(
                f,
                "the sign-guard state is missing but the chain is at height {}",
                tip.0
            ),
            WatchReason::StoreLost => write!(
                f,
                "the store was lost: this party may have signed heights it has not replayed yet"
            ),
            WatchReason::GuardBehindChain { guard, chain } => write!(
                f,
                "the sign guard last precommitted at height {}, but the chain shows this party's precommit at height {}",
                guard.0, chain.0
            ),
        }
    }
}

/// Another instance signs with this party's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("double signing detected: block {height} was decided while this party signed nothing, yet its commit certificate carries this party's precommit; another instance is running with this party's vote key. Stop it before restarting this one")]
pub struct DoubleSignDetected {
    /// The block.
    pub height: Height,
}

/// The watch, from start until it ends (then it allows every signature).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoubleSignWatch {
    watching: Option<Watching>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Watching {
    reason: WatchReason,
    /// Heights above this may not carry our precommit.
    tip: Height,
    /// Blocks still to see decided without us.
    remaining: u64,
    /// When the last block was decided (or the watch started), ms.
    last_progress_ms: u64,
    idle_ms: u64,
    /// After a lost store: blocks with a time up to this (the start plus
    /// the most a proposer's clock may be ahead) may have been decided
    /// before this start, so may carry our precommit, and are not counted.
    before_start_until_ms: Option<u64>,
}

/// What a decided block did to the watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// Nothing changed (not watching, or still watching).
    Nothing,
    /// The watch is over: signing resumes.
    Ended,
}

impl DoubleSignWatch {
    /// A watch that allows everything (no check at this start).
    pub fn off() -> DoubleSignWatch {
        DoubleSignWatch { watching: None }
    }

    /// The check at start: `guard_precommit` is the sign guard's last
    /// precommit height (none: no state), `tip` the stored chain's height,
    /// `chain_signed` the last stored height whose certificate carries this
    /// party's precommit. `heights` = 0 disables the check.
    pub fn at_start(
        guard_precommit: Option<Height>,
        tip: Height,
        chain_signed: Option<Height>,
        heights: u64,
        idle_ms: u64,
        now_ms: u64,
    ) -> DoubleSignWatch {
        if heights == 0 {
            return DoubleSignWatch::off();
        }
        let reason = match (guard_precommit, chain_signed) {
            (None, _) if tip.0 > 0 => Some(WatchReason::GuardMissing { tip }),
            (Some(g), Some(c)) if g < c => {
                Some(WatchReason::GuardBehindChain { guard: g, chain: c })
            }
            _ => None,
        };
        DoubleSignWatch {
            watching: reason.map(|reason| Watching {
                reason,
                tip,
                remaining: heights,
                last_progress_ms: now_ms,
                idle_ms,
                before_start_until_ms: None,
            }),
        }
    }

    /// The check at a start whose store was lost: nothing stored says what
    /// this party signed, so it watches while it replays. Blocks whose time
    /// is at most `now_ms` + `ahead_ms` (the block-time bound a proposer's
    /// clock may run ahead) were possibly decided before this start: they
    /// may carry our precommit and are not counted. `heights` blocks after
    /// that must be decided without us. `heights` = 0 disables the check.
    pub fn after_store_loss(heights: u64, idle_ms: u64, ahead_ms: u64, now_ms: u64) -> Self {
        if heights == 0 {
            return DoubleSignWatch::off();
        }
        DoubleSignWatch {
            watching: Some(Watching {
                reason: WatchReason::StoreLost,
                tip: Height(0),
                remaining: heights,
                last_progress_ms: now_ms,
                idle_ms,
                before_start_until_ms: Some(now_ms.saturating_add(ahead_ms)),
            }),
        }
    }

    /// Why this start watches, if it does.
    pub fn reason(&self) -> Option<WatchReason> {
        self.watching.as_ref().map(|w| w.reason)
    }

    /// Whether a consensus message may be signed now (not while watching;
    /// [`DoubleSignWatch::tick`] and [`DoubleSignWatch::on_decided`] end the
    /// watch, and the caller then signs what it held back).
    pub fn may_sign(&self) -> bool {
        self.watching.is_none()
    }

    /// On the daemon's tick: ends a watch that saw no block decided for
    /// its idle time (returns [`WatchEvent::Ended`] once).
    pub fn tick(&mut self, now_ms: u64) -> WatchEvent {
        match &self.watching {
            Some(w) if now_ms.saturating_sub(w.last_progress_ms) >= w.idle_ms => {
                self.watching = None;
                WatchEvent::Ended
            }
            _ => WatchEvent::Nothing,
        }
    }

    /// A block at `height` was decided; `ours` says whether its certificate
    /// carries this party's precommit.
    pub fn on_decided(
        &mut self,
        height: Height,
        block_time_ms: u64,
        ours: bool,
        now_ms: u64,
    ) -> Result<WatchEvent, DoubleSignDetected> {
        let Some(w) = &mut self.watching else {
            return Ok(WatchEvent::Nothing);
        };
        if w.before_start_until_ms.is_some_and(|t| block_time_ms <= t) {
            // Replayed history (after a lost store): the next block may
            // still carry what we signed before.
            w.tip = w.tip.max(height);
            w.last_progress_ms = now_ms;
            return Ok(WatchEvent::Nothing);
        }
        if height.0 <= w.tip.0.saturating_add(1) {
            // May carry what we signed before this start.
            w.last_progress_ms = now_ms;
            return Ok(WatchEvent::Nothing);
        }
        if ours {
            return Err(DoubleSignDetected { height });
        }
        w.last_progress_ms = now_ms;
        w.remaining = w.remaining.saturating_sub(1);
        if w.remaining == 0 {
            self.watching = None;
            return Ok(WatchEvent::Ended);
        }
        Ok(WatchEvent::Nothing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: u64 = 10_000;

    #[test]
    fn a_guard_in_step_with_the_chain_signs_at_once() {
        // A fresh cluster, and a guard at or beyond our last signed height.
        for (guard, tip, chain) in [
            (None, 0, None),
            (Some(7), 7, Some(7)),
            (Some(8), 7, Some(7)),
            (Some(3), 7, None),
        ] {
            let w = DoubleSignWatch::at_start(
                guard.map(Height),
                Height(tip),
                chain.map(Height),
                3,
                IDLE,
                0,
            );
            assert_eq!(w.reason(), None);
            assert!(w.may_sign());
        }
        // Disabled.
        let w = DoubleSignWatch::at_start(None, Height(9), Some(Height(9)), 0, IDLE, 0);
        assert!(w.may_sign());
    }

    #[test]
    fn a_missing_or_stale_guard_watches_n_heights_before_signing() {
        for (guard, reason) in [
            (None, WatchReason::GuardMissing { tip: Height(10) }),
            (
                Some(Height(4)),
                WatchReason::GuardBehindChain {
                    guard: Height(4),
                    chain: Height(10),
                },
            ),
        ] {
            let mut w = DoubleSignWatch::at_start(guard, Height(10), Some(Height(10)), 2, IDLE, 0);
            assert_eq!(w.reason(), Some(reason));
            assert!(!w.may_sign());
            // Height 11 may carry our pre-restart precommit: not counted.
            assert_eq!(
                w.on_decided(Height(11), 0, true, 2),
                Ok(WatchEvent::Nothing)
            );
            assert!(!w.may_sign());
            assert_eq!(
                w.on_decided(Height(12), 0, false, 4),
                Ok(WatchEvent::Nothing)
            );
            assert!(!w.may_sign());
            assert_eq!(w.on_decided(Height(13), 0, false, 6), Ok(WatchEvent::Ended));
            assert!(w.may_sign());
            // Over: our signature is ours again.
            assert_eq!(
                w.on_decided(Height(14), 0, true, 8),
                Ok(WatchEvent::Nothing)
            );
        }
    }

    #[test]
    fn our_precommit_in_a_block_decided_while_watching_halts() {
        let mut w = DoubleSignWatch::at_start(None, Height(10), Some(Height(10)), 3, IDLE, 0);
        assert_eq!(
            w.on_decided(Height(12), 0, true, 1),
            Err(DoubleSignDetected { height: Height(12) })
        );
    }

    #[test]
    fn a_cluster_that_cannot_decide_without_us_ends_the_watch_when_idle() {
        let mut w = DoubleSignWatch::at_start(None, Height(10), Some(Height(10)), 3, IDLE, 1_000);
        assert_eq!(w.tick(1_000 + IDLE - 1), WatchEvent::Nothing);
        assert!(!w.may_sign());
        assert_eq!(w.tick(1_000 + IDLE), WatchEvent::Ended);
        assert!(w.may_sign());
        assert_eq!(w.tick(1_000 + IDLE + 1), WatchEvent::Nothing);
        // A decided block restarts the idle clock.
        let mut w = DoubleSignWatch::at_start(None, Height(10), Some(Height(10)), 3, IDLE, 0);
        assert_eq!(
            w.on_decided(Height(12), 0, false, IDLE - 1),
            Ok(WatchEvent::Nothing)
        );
        assert_eq!(w.tick(IDLE), WatchEvent::Nothing);
        assert_eq!(w.tick(2 * IDLE - 1), WatchEvent::Ended);
    }

    #[test]
    fn after_a_lost_store_blocks_from_before_the_start_may_carry_ours() {
        const AHEAD: u64 = 5_000;
        let start = 100_000;
        let mut w = DoubleSignWatch::after_store_loss(2, IDLE, AHEAD, start);
        assert_eq!(w.reason(), Some(WatchReason::StoreLost));
        assert!(!w.may_sign());
        // Replayed from height 1: our old precommits are everywhere.
        for h in 1..=50 {
            let t = start - 60_000 + h * 1_000;
            assert_eq!(
                w.on_decided(Height(h), t, true, start + h),
                Ok(WatchEvent::Nothing)
            );
        }
        // Up to the start plus the proposer's lead: still possibly before.
        assert_eq!(
            w.on_decided(Height(51), start + AHEAD, true, start + 60),
            Ok(WatchEvent::Nothing)
        );
        // The next block may carry what we signed before we stopped.
        assert_eq!(
            w.on_decided(Height(52), start + AHEAD + 1, true, start + 70),
            Ok(WatchEvent::Nothing)
        );
        assert!(!w.may_sign());
        assert_eq!(
            w.on_decided(Height(53), start + AHEAD + 2, false, start + 80),
            Ok(WatchEvent::Nothing)
        );
        assert_eq!(
            w.on_decided(Height(54), start + AHEAD + 3, false, start + 90),
            Ok(WatchEvent::Ended)
        );
        assert!(w.may_sign());
        // A block proposed after the start that carries ours: another
        // instance signs with our key.
        let mut w = DoubleSignWatch::after_store_loss(3, IDLE, AHEAD, start);
        assert_eq!(
            w.on_decided(Height(9), start, true, start),
            Ok(WatchEvent::Nothing)
        );
        assert_eq!(
            w.on_decided(Height(11), start + AHEAD + 1, true, start + 1),
            Err(DoubleSignDetected { height: Height(11) })
        );
        // Disabled.
        assert!(DoubleSignWatch::after_store_loss(0, IDLE, AHEAD, start).may_sign());
    }
}
