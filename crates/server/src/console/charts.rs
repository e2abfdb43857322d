//! The overview's charts, drawn as inline SVG on the server: no script, no library. Every bar has
//! a `<title>` with its numbers, failed deliveries are striped as well as coloured, and each chart
//! carries a text summary for screen readers.

use billhook_store::{ActivityCounts, ActivityMinute};
use maud::{Markup, html};

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 150;
const TOP: u32 = 16;
const BOTTOM: u32 = 20;

/// Activity in equal buckets over a period ending now.
pub struct Series {
    /// Unix minute where each bucket starts.
    pub starts: Vec<i64>,
    pub buckets: Vec<ActivityCounts>,
}

impl Series {
    /// `count` buckets of `minutes` each, the last ending at `now_minute` (inclusive).
    pub fn bucket(
        activity: &[ActivityMinute],
        now_minute: i64,
        minutes: i64,
        count: usize,
    ) -> Self {
        let first = now_minute - minutes * count as i64 + 1;
        let starts: Vec<i64> = (0..count as i64).map(|i| first + i * minutes).collect();
        let mut buckets = vec![ActivityCounts::default(); count];
        for minute in activity {
            if minute.minute < first || minute.minute > now_minute {
                continue;
            }
            let index = usize::try_from((minute.minute - first) / minutes).unwrap_or(0);
            if let Some(bucket) = buckets.get_mut(index) {
                let c = minute.counts;
                bucket.ingested += c.ingested;
                bucket.duplicates += c.duplicates;
                bucket.quarantined += c.quarantined;
                bucket.unverified += c.unverified;
                bucket.delivered += c.delivered;
                bucket.failed += c.failed;
            }
        }
        Self { starts, buckets }
    }

    pub fn total(&self) -> ActivityCounts {
        let mut total = ActivityCounts::default();
        for b in &self.buckets {
            total.ingested += b.ingested;
            total.duplicates += b.duplicates;
            total.quarantined += b.quarantined;
            total.unverified += b.unverified;
            total.delivered += b.delivered;
            total.failed += b.failed;
        }
        total
    }
}

/// `HH:MM` UTC of a unix minute.
fn clock(minute: i64) -> String {
    let of_day = minute.rem_euclid(24 * 60);
    format!("{:02}:{:02}", of_day / 60, of_day % 60)
}

/// A share as a whole percentage, or `—` when there is nothing to divide.
pub fn percent(part: u64, whole: u64) -> String {
    match (part * 100).checked_div(whole) {
        Some(share) => format!("{share}%"),
        None => "—".to_owned(),
    }
}

fn bar_geometry(count: usize) -> (u32, u32) {
    let slot = WIDTH / count.max(1) as u32;
    let gap = if slot > 6 { 2 } else { 1 };
    (slot, slot.saturating_sub(gap).max(1))
}

fn scaled(value: u64, max: u64) -> u32 {
    let room = u64::from(HEIGHT - TOP - BOTTOM);
    if max == 0 {
        return 0;
    }
    u32::try_from(value * room / max).unwrap_or(HEIGHT)
}

/// Bars of messages ingested per bucket.
pub fn ingest(series: &Series, id: &str, label: &str) -> Markup {
    let max = series.buckets.iter().map(|b| b.ingested).max().unwrap_or(0);
    let (slot, bar) = bar_geometry(series.buckets.len());
    let total = series.total();
    let summary = format!(
        "{label}: {} messages stored, {} duplicates, {} quarantined, {} refused as unverified",
        total.ingested, total.duplicates, total.quarantined, total.unverified
    );
    html! {
        figure.chart {
            figcaption { (label) ": " strong { (total.ingested) } " stored" }
            svg id=(id) viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(summary) {
                title { (summary) }
                text.axis x="0" y="11" { "max " (max) }
                line.baseline x1="0" y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) {}
                @for (index, bucket) in series.buckets.iter().enumerate() {
                    @let height = scaled(bucket.ingested, max);
                    @let x = index as u32 * slot;
                    rect.ingested x=(x) y=(HEIGHT - BOTTOM - height) width=(bar) height=(height) {
                        title { (clock(series.starts[index])) " UTC: " (bucket.ingested) " stored, "
                            (bucket.duplicates) " duplicates, " (bucket.quarantined) " quarantined" }
                    }
                }
                (x_labels(series))
            }
        }
    }
}

/// Stacked bars of delivery attempts per bucket (delivered solid, failed striped) and the
/// success ratio as a line.
pub fn deliveries(series: &Series, id: &str, label: &str) -> Markup {
    let max = series
        .buckets
        .iter()
        .map(|b| b.delivered + b.failed)
        .max()
        .unwrap_or(0);
    let (slot, bar) = bar_geometry(series.buckets.len());
    let total = series.total();
    let ratio = percent(total.delivered, total.delivered + total.failed);
    let summary = format!(
        "{label}: {} delivered, {} failed attempts, success ratio {ratio}",
        total.delivered, total.failed
    );
    let stripes = format!("{id}-stripes");
    let mut points = Vec::new();
    for (index, bucket) in series.buckets.iter().enumerate() {
        let attempts = bucket.delivered + bucket.failed;
        let room = u64::from(HEIGHT - TOP - BOTTOM);
        if let Some(height) = (bucket.delivered * room).checked_div(attempts) {
            let x = index as u32 * slot + bar / 2;
            let y = u64::from(HEIGHT - BOTTOM) - height;
            points.push(format!("{x},{y}"));
        }
    }
    html! {
        figure.chart {
            figcaption {
                (label) ": " strong { (total.delivered) } " delivered, "
                strong { (total.failed) } " failed, success " strong { (ratio) }
            }
            svg id=(id) viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(summary) {
                title { (summary) }
                defs {
                    pattern id=(stripes) width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)" {
                        rect.failed-ground width="6" height="6" {}
                        line.failed-stripe x1="0" y1="0" x2="0" y2="6" {}
                    }
                }
                text.axis x="0" y="11" { "max " (max) " attempts · line: success ratio" }
                line.baseline x1="0" y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) {}
                @for (index, bucket) in series.buckets.iter().enumerate() {
                    @let ok = scaled(bucket.delivered, max);
                    @let bad = scaled(bucket.failed, max);
                    @let x = index as u32 * slot;
                    g {
                        title { (clock(series.starts[index])) " UTC: " (bucket.delivered) " delivered, "
                            (bucket.failed) " failed (" (percent(bucket.delivered, bucket.delivered + bucket.failed)) " success)" }
                        rect.delivered x=(x) y=(HEIGHT - BOTTOM - ok) width=(bar) height=(ok) {}
                        rect x=(x) y=(HEIGHT - BOTTOM - ok - bad) width=(bar) height=(bad) fill=(format!("url(#{stripes})")) {}
                    }
                }
                @if points.len() > 1 {
                    polyline.ratio points=(points.join(" ")) {}
                }
                (x_labels(series))
            }
        }
    }
}

fn x_labels(series: &Series) -> Markup {
    let Some(first) = series.starts.first() else {
        return html! {};
    };
    html! {
        text.axis x="0" y=(HEIGHT - 4) { "from " (clock(*first)) " UTC" }
        text.axis x=(WIDTH) y=(HEIGHT - 4) text-anchor="end" { "now" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(minute: i64, ingested: u64, delivered: u64, failed: u64) -> ActivityMinute {
        ActivityMinute {
            minute,
            counts: ActivityCounts {
                ingested,
                delivered,
                failed,
                ..ActivityCounts::default()
            },
        }
    }

    #[test]
    fn minutes_fall_into_their_buckets_and_old_ones_are_left_out() {
        let activity = [
            minute(100, 1, 0, 0),
            minute(110, 2, 1, 1),
            minute(119, 3, 0, 0),
            minute(80, 50, 0, 0),
        ];
        let series = Series::bucket(&activity, 119, 10, 2);
        assert_eq!(series.starts, vec![100, 110]);
        assert_eq!(series.buckets[0].ingested, 1);
        assert_eq!(series.buckets[1].ingested, 5);
        assert_eq!(series.total().failed, 1);
    }

    #[test]
    fn charts_carry_their_numbers_in_text() {
        let series = Series::bucket(&[minute(10, 4, 3, 1)], 10, 1, 60);
        let ingest = ingest(&series, "in", "Last hour").into_string();
        assert!(ingest.contains("4 stored"));
        assert!(ingest.contains("role=\"img\""));
        let deliveries = deliveries(&series, "out", "Last hour").into_string();
        assert!(deliveries.contains("success ratio 75%"));
        assert!(deliveries.contains("url(#out-stripes)"));
        assert_eq!(percent(0, 0), "—");
        assert_eq!(clock(61), "01:01");
    }
}
