//! The decided-event log behind `GET /v1/events`.
//!
//! Every decided block's outcome (each operation with its status, then each
//! session-machine event) becomes a numbered [`ApiEvent`] whose id is
//! `"height:index"` (index counting from 0 within the block), so ids are
//! totally ordered and the same at every party. The daemon appends while it
//! applies blocks (also while replaying its store at start), keeps the last
//! [`RING_CAPACITY`] in memory and broadcasts new ones; a reader resumes
//! after an id by reading the ring first and then the broadcast, without
//! gaps or duplicates.
//!
//! Consensus failures this party observes (a stalled chain, a refused
//! signature, a refused peer, equivocation evidence, an audit log fork) are
//! [`EventLog::alert`]s: numbered after the last decided block's events
//! (so the order stays total and resumption works the same), with `data`
//! carrying `"scope": "local"` and a `severity`, and logged at the same
//! time as a structured line (`alert = kind`, `event_id`, `details`). Their
//! ids are this party's own: another party numbers its own alerts.

use quorate_firmware::sessions::machine::BlockOutcome;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// How many events the ring keeps for resumption.
pub const RING_CAPACITY: usize = 50_000;

/// The position of an event: `(height, index within the block)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventId {
    /// The decided height.
    pub height: u64,
    /// The event's index within the block's events.
    pub index: u32,
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.height, self.index)
    }
}

impl std::str::FromStr for EventId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (h, i) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| "expected \"height:index\"".to_string())?;
        Ok(EventId {
            height: h.parse().map_err(|e| format!("height: {e}"))?,
            index: i.parse().map_err(|e| format!("index: {e}"))?,
        })
    }
}

/// One entry of the event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiEvent {
    /// Its position (`"height:index"` on the wire).
    pub id: EventId,
    /// `operation` (a decided operation's outcome) or the session machine
    /// event's name (`executed`, `rejected`, `message`, ...).
    pub kind: String,
    /// The block's consensus time (ms since the Unix epoch).
    pub time_ms: u64,
    /// The outcome or event, as compact JSON text. Text, not a
    /// `serde_json::Value`: the ring holds [`RING_CAPACITY`] events, and a
    /// parsed operation outcome takes about ten times the memory of its
    /// text (a map node per object).
    pub data: std::sync::Arc<str>,
}

impl ApiEvent {
    /// `data` parsed (`Null` if it is not JSON, which it always is).
    pub fn data_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_default()
    }
}

/// `v` as compact JSON text.
fn text(v: &impl Serialize) -> std::sync::Arc<str> {
    serde_json::to_string(v)
        .unwrap_or_else(|_| "null".into())
        .into()
}

/// What a reader gets when it asks for the events after an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The events after the id still in the ring, in order.
    pub events: Vec<ApiEvent>,
    /// True if events after the id have already left the ring (the reader
    /// missed some and should re-read state instead).
    pub truncated: bool,
}

/// The ring and the broadcast of new events.
#[derive(Debug)]
pub struct EventLog {
    ring: Mutex<VecDeque<ApiEvent>>,
    /// The id of the newest event that ever left the ring.
    evicted: Mutex<Option<EventId>>,
    /// The id the next alert takes: after the last block pushed.
    next_alert: Mutex<EventId>,
    tx: broadcast::Sender<ApiEvent>,
}

/// How bad an alert is (its `data.severity`, and the log level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Needs attention soon; consensus may still be safe and live.
    Warning,
    /// Safety or liveness is at stake now.
    Critical,
}

impl Default for EventLog {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(4096);
        EventLog {
            ring: Mutex::new(VecDeque::new()),
            evicted: Mutex::new(None),
            // After "0:0", the position a reader without events starts from.
            next_alert: Mutex::new(EventId {
                height: 0,
                index: 1,
            }),
            tx,
        }
    }
}

impl EventLog {
    /// Turns a decided block's outcome into events, keeps and broadcasts them.
    pub fn push_block(&self, outcome: &BlockOutcome) {
        let h = outcome.height.0;
        let mut index = 0u32;
        let mut new = Vec::with_capacity(outcome.ops.len() + outcome.events.len());
        for op in &outcome.ops {
            new.push(ApiEvent {
                id: EventId { height: h, index },
                kind: "operation".into(),
                time_ms: outcome.time_ms,
                data: text(op),
            });
            index = index.saturating_add(1);
        }
        for ev in &outcome.events {
            let data = serde_json::to_value(ev).unwrap_or_default();
            // Externally tagged: {"executed": {...}} or "name".
            let kind = match &data {
                serde_json::Value::Object(m) => m.keys().next().cloned().unwrap_or_default(),
                serde_json::Value::String(s) => s.clone(),
                _ => String::new(),
            };
            new.push(ApiEvent {
                id: EventId { height: h, index },
                kind,
                time_ms: outcome.time_ms,
                data: text(&data),
            });
            index = index.saturating_add(1);
        }
        *self.next_alert.lock().unwrap_or_else(|p| p.into_inner()) = EventId { height: h, index };
        self.keep_and_send(new);
    }

    /// Records an alert of `kind` (e.g. `sign_refused`) with `details`
    /// (a JSON object) as the next event, and logs it as one structured
    /// line with `message`. Returns its id.
    pub fn alert(
        &self,
        kind: &str,
        severity: Severity,
        message: &str,
        details: serde_json::Value,
    ) -> EventId {
        let id = {
            let mut next = self.next_alert.lock().unwrap_or_else(|p| p.into_inner());
            let id = *next;
            next.index = next.index.saturating_add(1);
            id
        };
        let mut data = serde_json::json!({
            "scope": "local",
            "severity": severity,
            "message": message,
        });
        if let (Some(d), serde_json::Value::Object(extra)) = (data.as_object_mut(), details) {
            for (k, v) in extra {
                d.entry(k).or_insert(v);
            }
        }
        let details = data.to_string();
        match severity {
            Severity::Critical => {
                tracing::error!(alert = kind, event_id = %id, %details, "{message}")
            }
            Severity::Warning => {
                tracing::warn!(alert = kind, event_id = %id, %details, "{message}")
            }
        }
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.keep_and_send(vec![ApiEvent {
            id,
            kind: kind.to_string(),
            time_ms,
            data: details.into(),
        }]);
        id
    }

    fn keep_and_send(&self, new: Vec<ApiEvent>) {
        {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            for e in &new {
                ring.push_back(e.clone());
            }
            let mut last_evicted = None;
            while ring.len() > RING_CAPACITY {
                last_evicted = ring.pop_front().map(|e| e.id);
            }
            if let Some(id) = last_evicted {
                *self.evicted.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
            }
        }
        for e in new {
            // No receiver is fine: nobody is streaming.
            let _ = self.tx.send(e);
        }
    }

    /// Subscribes to new events. Subscribe before [`EventLog::after`] so
    /// nothing falls between the replay and the live stream.
    pub fn subscribe(&self) -> broadcast::Receiver<ApiEvent> {
        self.tx.subscribe()
    }

    /// The kept events after `after` (all kept events if `None`), at most `limit`.
    pub fn after(&self, after: Option<EventId>, limit: usize) -> Replay {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let evicted = *self.evicted.lock().unwrap_or_else(|p| p.into_inner());
        let truncated = match (after, evicted) {
            (Some(a), Some(e)) => a < e,
            (None, Some(_)) => true,
            _ => false,
        };
        let start = match after {
            Some(a) => ring.partition_point(|e| e.id <= a),
            None => 0,
        };
        Replay {
            events: ring.iter().skip(start).take(limit).cloned().collect(),
            truncated,
        }
    }

    /// The id of the newest event, if any.
    pub fn last_id(&self) -> Option<EventId> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.back().map(|e| e.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_firmware::types::{Height, Sha256Digest};

    fn outcome(h: u64, n_events: usize) -> BlockOutcome {
        BlockOutcome {
            height: Height(h),
            time_ms: h * 1000,
            ops: Vec::new(),
            events: (0..n_events)
                .map(|i| quorate_firmware::sessions::machine::Event::Executed {
                    op: quorate_firmware::sessions::ops::OpId(Sha256Digest::of(&[i as u8])),
                })
                .collect(),
            state_root: Sha256Digest::of(b"root"),
        }
    }

    #[test]
    fn ids_parse_and_order() {
        let a: EventId = "3:1".parse().unwrap();
        assert_eq!(
            a,
            EventId {
                height: 3,
                index: 1
            }
        );
        assert_eq!(a.to_string(), "3:1");
        assert!(a < "3:2".parse().unwrap());
        assert!(a < "4:0".parse().unwrap());
        assert!("x".parse::<EventId>().is_err());
        assert!("1:-1".parse::<EventId>().is_err());
    }

    #[test]
    fn resumes_after_an_id_without_gaps() {
        let log = EventLog::default();
        let mut rx = log.subscribe();
        log.push_block(&outcome(1, 2));
        log.push_block(&outcome(2, 3));
        let all = log.after(None, 100);
        assert_eq!(all.events.len(), 5);
        assert!(!all.truncated);
        assert_eq!(all.events[0].kind, "executed");
        let rest = log.after(
            Some(EventId {
                height: 1,
                index: 1,
            }),
            100,
        );
        let ids: Vec<String> = rest.events.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, ["2:0", "2:1", "2:2"]);
        assert_eq!(rx.try_recv().unwrap().id.to_string(), "1:0");
        assert_eq!(log.last_id().unwrap().to_string(), "2:2");
    }

    #[test]
    fn alerts_follow_the_last_block_and_keep_the_order() {
        let log = EventLog::default();
        let mut rx = log.subscribe();
        let a = log.alert(
            "consensus_stalled",
            Severity::Warning,
            "no decision",
            serde_json::json!({"pending": 3, "scope": "overridden?"}),
        );
        assert_eq!(a.to_string(), "0:1");
        log.push_block(&outcome(1, 2));
        let b = log.alert(
            "sign_refused",
            Severity::Critical,
            "guard",
            serde_json::json!({}),
        );
        let c = log.alert(
            "peer_refused",
            Severity::Warning,
            "bad quote",
            serde_json::json!({"peer": 3}),
        );
        assert_eq!((b.to_string(), c.to_string()), ("1:2".into(), "1:3".into()));
        log.push_block(&outcome(2, 1));
        let ids: Vec<String> = log
            .after(None, 100)
            .events
            .iter()
            .map(|e| e.id.to_string())
            .collect();
        assert_eq!(ids, ["0:1", "1:0", "1:1", "1:2", "1:3", "2:0"]);
        let first = rx.try_recv().unwrap();
        assert_eq!(first.kind, "consensus_stalled");
        // The alert's own fields are not overwritten by the details.
        assert_eq!(first.data_value()["scope"], "local");
        assert_eq!(first.data_value()["severity"], "warning");
        assert_eq!(first.data_value()["pending"], 3);
        let rest = log.after(Some(b), 100);
        assert_eq!(rest.events[0].kind, "peer_refused");
        assert_eq!(rest.events[0].data_value()["peer"], 3);
    }

    #[test]
    fn reports_truncation_once_events_left_the_ring() {
        let log = EventLog::default();
        for h in 1..=((RING_CAPACITY as u64) / 10 + 2) {
            log.push_block(&outcome(h, 10));
        }
        assert!(
            log.after(
                Some(EventId {
                    height: 1,
                    index: 0
                }),
                1
            )
            .truncated
        );
        assert!(log.after(None, 1).truncated);
        let last = log.last_id().unwrap();
        assert!(!log.after(Some(last), 1).truncated);
        assert!(log.after(Some(last), 1).events.is_empty());
    }
}
