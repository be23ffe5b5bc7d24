//! The `make bench` table: each area pushes rows, the binary prints them.

use std::time::Duration;

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Row {
    /// Which part of the system (e.g. "tpm", "consensus", "attestation").
    pub area: &'static str,
    /// What was measured.
    pub metric: String,
    /// The figure.
    pub value: f64,
    /// Its unit (e.g. "ops/s", "ms").
    pub unit: &'static str,
    /// Conditions worth reading beside the figure.
    pub note: String,
}

impl Row {
    /// A row with the given fields.
    pub fn new(
        area: &'static str,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
        note: impl Into<String>,
    ) -> Self {
        Row {
            area,
            metric: metric.into(),
            value,
            unit,
            note: note.into(),
        }
    }
}

/// The p-th percentile (0..=100) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples
        .get(rank.min(samples.len() - 1))
        .copied()
        .unwrap_or_default()
}

/// Renders rows as a fixed-width text table.
pub fn render(rows: &[Row]) -> String {
    let mw = rows
        .iter()
        .map(|r| r.metric.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = format!(
        "{:<12} {:<mw$} {:>14} {:<8} {}\n",
        "area", "metric", "value", "unit", "note"
    );
    out.push_str(&format!("{}\n", "-".repeat(12 + mw + 14 + 8 + 8)));
    for r in rows {
        let v = if r.value >= 100.0 {
            format!("{:.0}", r.value)
        } else {
            format!("{:.3}", r.value)
        };
        out.push_str(&format!(
            "{:<12} {:<mw$} {:>14} {:<8} {}\n",
            r.area, r.metric, v, r.unit, r.note
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_picks_ranked_sample() {
        let mut s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        s.reverse();
        assert_eq!(percentile(&mut s, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&mut s, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&mut [], 50.0), Duration::ZERO);
    }

    #[test]
    fn table_has_a_line_per_row() {
        let t = render(&[Row::new("tpm", "sign", 1234.0, "ops/s", "swtpm")]);
        assert_eq!(t.lines().count(), 3);
        assert!(t.contains("1234"));
    }
}
