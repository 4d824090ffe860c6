//! Line charts as inline SVG, drawn on the server: no script, no asset
//! fetched, so the status page works behind a strict network policy. Each
//! line is a `polyline` (one per unbroken run of values) with its series'
//! name, and each marker a dashed vertical line with its text, so a test
//! (or a curious operator) can read the numbers back from the page.

use std::fmt::Write as _;

use super::escape;
use super::history::{Event, Marker};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 160.0;
/// Room for the value axis' labels on the left and the time axis' below.
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 18.0;
const TOP: f64 = 8.0;
/// The most points a line has: about one per two pixels. Longer runs of
/// samples are drawn by the largest of each group (a spike stays visible).
const MAX_POINTS: usize = 300;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// One line: a value per sample, `None` where it has none.
pub(super) struct Series {
    pub(super) name: String,
    pub(super) values: Vec<Option<f64>>,
}

/// A chart of `series` over the samples taken at `times` (milliseconds
/// since the Unix epoch, oldest first), with `markers` on the time axis.
pub(super) fn line_chart(
    id: &str,
    title: &str,
    times: &[u64],
    series: &[Series],
    markers: &[Marker],
) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<figure id=\"{id}\" data-samples=\"{}\"><figcaption>{}</figcaption>\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\">",
        times.len(),
        escape(title)
    );
    let (Some(&first), Some(&last)) = (times.first(), times.last()) else {
        svg.push_str("<text x=\"60\" y=\"80\">no samples yet</text></svg></figure>");
        return svg;
    };
    let span = (last - first).max(1) as f64;
    let top = nice_ceiling(
        series
            .iter()
            .flat_map(|s| s.values.iter().flatten())
            .fold(0.0, |max: f64, v| max.max(*v)),
    );
    let x = |at: u64| LEFT + (at.saturating_sub(first)) as f64 / span * (WIDTH - LEFT - 4.0);
    let y = |v: f64| TOP + (1.0 - v / top) * (HEIGHT - TOP - BOTTOM);
    let bottom = HEIGHT - BOTTOM;
    let _ = write!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{WIDTH}\" y2=\"{bottom}\" stroke=\"#999\"/>\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{bottom}\" stroke=\"#999\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"11\">{}</text>\
         <text x=\"{}\" y=\"{bottom}\" text-anchor=\"end\" font-size=\"11\">0</text>\
         <text x=\"{LEFT}\" y=\"{}\" font-size=\"11\">{}</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"11\">now</text>",
        LEFT - 4.0,
        TOP + 10.0,
        number(top),
        LEFT - 4.0,
        HEIGHT - 4.0,
        ago(last - first),
        WIDTH - 4.0,
        HEIGHT - 4.0,
    );
    for marker in markers.iter().filter(|m| m.at >= first && m.at <= last) {
        let (kind, text) = match &marker.event {
            Event::Swap { handler, version } => ("swap", format!("{handler} {version} active")),
            Event::RolledBack { handler, version } => {
                ("rolled-back", format!("{handler} {version} rolled back"))
            }
            Event::BreakerOpened { target } => {
                ("breaker-opened", format!("breaker opened: {target}"))
            }
        };
        let at = x(marker.at);
        let _ = write!(
            svg,
            "<line class=\"marker\" data-kind=\"{kind}\" data-at=\"{}\" x1=\"{at:.1}\" y1=\"{TOP}\" \
             x2=\"{at:.1}\" y2=\"{bottom}\" stroke=\"#555\" stroke-dasharray=\"3,3\">\
             <title>{}</title></line>",
            marker.at,
            escape(&text)
        );
    }
    for (index, line) in series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let name = escape(&line.name);
        // One polyline per unbroken run: no line across a gap. A run of one
        // point is drawn as a dot (the point twice, round caps, thicker to
        // be seen).
        let mut run = String::new();
        let mut points = 0;
        let flush = |run: &mut String, points: &mut usize, svg: &mut String| {
            let mut width = 1.5;
            if *points == 1 {
                let again = run.clone();
                run.push_str(&again);
                width = 4.0;
            }
            if *points > 0 {
                let _ = write!(
                    svg,
                    "<polyline class=\"series\" data-series=\"{name}\" fill=\"none\" \
                     stroke=\"{colour}\" stroke-width=\"{width}\" stroke-linecap=\"round\" \
                     points=\"{}\"><title>{name}</title></polyline>",
                    run.trim_end()
                );
                run.clear();
                *points = 0;
            }
        };
        let group = times.len().div_ceil(MAX_POINTS);
        for (at, values) in times.chunks(group).zip(line.values.chunks(group)) {
            let largest = values.iter().flatten().copied().reduce(f64::max);
            match largest {
                Some(v) => {
                    let _ = write!(run, "{:.1},{:.1} ", x(at[0]), y(v));
                    points += 1;
                }
                None => flush(&mut run, &mut points, &mut svg),
            }
        }
        flush(&mut run, &mut points, &mut svg);
    }
    svg.push_str("</svg><ul class=\"legend\">");
    for (index, line) in series.iter().enumerate() {
        let _ = write!(
            svg,
            "<li><span style=\"color:{}\">&#9632;</span> {}</li>",
            COLOURS[index % COLOURS.len()],
            escape(&line.name)
        );
    }
    svg.push_str("</ul></figure>");
    svg
}

/// The smallest of 1, 2, 5 times a power of ten at or above `max` (1 for
/// nothing): the top of the value axis.
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|step| step * power)
        .find(|top| *top >= max)
        .unwrap_or(10.0 * power)
}

/// A value axis label: whole when it is whole.
fn number(value: f64) -> String {
    match value.fract() == 0.0 {
        true => format!("{value:.0}"),
        false => format!("{value}"),
    }
}

/// How long before now the first sample was: `-90 s`, `-15 min`.
fn ago(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0..120 => format!("-{seconds} s"),
        _ => format!("-{} min", seconds / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(svg: &str) -> Vec<usize> {
        svg.match_indices("points=\"")
            .map(|(at, _)| {
                let rest = &svg[at + 8..];
                rest[..rest.find('"').unwrap()].split(' ').count()
            })
            .collect()
    }

    #[test]
    fn a_line_is_broken_where_a_value_is_missing_and_markers_sit_at_their_time() {
        let times: Vec<u64> = (0..=10).map(|s| 1_000 * s).collect();
        let mut values: Vec<Option<f64>> = (0..=10).map(|v| Some(v as f64)).collect();
        values[4] = None;
        let markers = [Marker {
            at: 5_000,
            event: Event::Swap {
                handler: "h<1>".into(),
                version: "2.0.0".into(),
            },
        }];
        let svg = line_chart(
            "c",
            "handled",
            &times,
            &[Series {
                name: "orders".into(),
                values,
            }],
            &markers,
        );
        assert_eq!(points(&svg), [4, 6], "{svg}");
        // Halfway along the axis, between LEFT and the right edge.
        let x = LEFT + 0.5 * (WIDTH - LEFT - 4.0);
        assert!(svg.contains(&format!("x1=\"{x:.1}\"")), "{svg}");
        assert!(
            svg.contains("<title>h&lt;1&gt; 2.0.0 active</title>"),
            "{svg}"
        );
        assert!(svg.contains(">10<"), "the axis' top: {svg}");
    }

    #[test]
    fn a_long_line_is_drawn_by_the_largest_of_each_group_of_samples() {
        let times: Vec<u64> = (0..900).map(|s| 1_000 * s).collect();
        let mut values = vec![Some(1.0); 900];
        values[451] = Some(50.0);
        let svg = line_chart(
            "c",
            "t",
            &times,
            &[Series {
                name: "spiky".into(),
                values,
            }],
            &[],
        );
        assert_eq!(points(&svg), [MAX_POINTS], "{svg}");
        // The spike (groups of 3: sample 451 is in the group from 450).
        let spike = format!(
            "{:.1},{:.1}",
            LEFT + 450.0 / 899.0 * (WIDTH - LEFT - 4.0),
            TOP
        );
        assert!(svg.contains(&spike), "{spike} not in {svg}");
    }

    #[test]
    fn the_value_axis_ends_at_a_round_number() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(10.0), 10.0);
        assert_eq!(nice_ceiling(130.0), 200.0);
        assert_eq!(nice_ceiling(0.03), 0.05);
    }
}
