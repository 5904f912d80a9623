//! Shared pieces of Fusion's benchmark tools: latency summaries from hdrhistogram, the
//! result line a measuring child process prints and its parent parses, the comparison
//! table that puts each Fusion figure beside its floor, and ([`floors`]) the staging of
//! two-process measurements and the sockperf floor.
//!
//! Benchmarks measure; they never assert timing and never fail CI on speed.

pub mod floors;
pub mod shm_floor;

use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::time::Duration;

/// Percentiles of a latency distribution, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    /// Number of samples.
    pub samples: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

impl LatencySummary {
    /// Summarises a histogram of nanoseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            samples: histogram.len(),
            p50: histogram.value_at_quantile(0.50) as f64,
            p99: histogram.value_at_quantile(0.99) as f64,
            p999: histogram.value_at_quantile(0.999) as f64,
        }
    }

    /// The line a measuring child prints for its parent: `RESULT samples p50 p99 p999`.
    pub fn to_result_line(&self) -> String {
        format!(
            "RESULT {} {} {} {}",
            self.samples, self.p50, self.p99, self.p999
        )
    }

    /// Parses a `RESULT` line out of a child's output.
    pub fn from_output(output: &str) -> Option<Self> {
        let line = output.lines().find(|l| l.starts_with("RESULT "))?;
        let mut fields = line.split_whitespace().skip(1).map(str::parse::<f64>);
        let mut next = || fields.next().and_then(Result::ok);
        Some(Self {
            samples: next()? as u64,
            p50: next()?,
            p99: next()?,
            p999: next()?,
        })
    }
}

/// A histogram for latencies from 1 ns to 10 s at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 10_000_000_000, 3) {
        Ok(h) => h,
        Err(e) => unreachable!("constant histogram bounds are valid: {e}"),
    }
}

/// Records one sample, clamped into the histogram's range.
pub fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let nanos = u64::try_from(elapsed.as_nanos())
        .unwrap_or(u64::MAX)
        .clamp(1, 10_000_000_000);
    // In range by the clamp above, so this cannot fail.
    let _ = histogram.record(nanos);
}

/// The summary with the median p50 among `rounds` (the upper median for an even count), so
/// one disturbed round on a noisy machine does not decide a figure.
pub fn median_by_p50(mut rounds: Vec<LatencySummary>) -> Option<LatencySummary> {
    rounds.sort_by(|a, b| a.p50.total_cmp(&b.p50));
    let middle = rounds.len() / 2;
    rounds.get(middle).copied()
}

/// One row of a comparison table: a Fusion figure and the floor it is compared with.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// What was measured (transport, mode, sizes).
    pub label: String,
    /// Fusion's figure.
    pub fusion: LatencySummary,
    /// The floor's name.
    pub floor_name: String,
    /// The floor's figure, if it could be measured.
    pub floor: Option<LatencySummary>,
}

fn micros(nanos: f64) -> String {
    format!("{:.2}", nanos / 1000.0)
}

/// Renders comparisons as a fixed-width table (latencies in microseconds).
pub fn render_table(rows: &[Comparison]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<34} {:>8} {:>9} {:>9} {:>9} | {:<30} {:>9} {:>9} | {:>7} {:>7}",
        "fusion (round trip, µs)",
        "samples",
        "p50",
        "p99",
        "p99.9",
        "floor",
        "p50",
        "p99",
        "p50 x",
        "p99 x"
    );
    for row in rows {
        let (fp50, fp99, r50, r99) = match row.floor {
            Some(floor) => (
                micros(floor.p50),
                micros(floor.p99),
                format!("{:.2}", row.fusion.p50 / floor.p50),
                format!("{:.2}", row.fusion.p99 / floor.p99),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a".into(), "n/a".into()),
        };
        let _ = writeln!(
            out,
            "{:<34} {:>8} {:>9} {:>9} {:>9} | {:<30} {:>9} {:>9} | {:>7} {:>7}",
            row.label,
            row.fusion.samples,
            micros(row.fusion.p50),
            micros(row.fusion.p99),
            micros(row.fusion.p999),
            row.floor_name,
            fp50,
            fp99,
            r50,
            r99
        );
    }
    out
}

/// Parses sockperf's `--full-rtt` report (microseconds) into a summary in nanoseconds.
pub fn parse_sockperf(output: &str) -> Option<LatencySummary> {
    let percentile = |which: &str| {
        output.lines().find_map(|line| {
            let rest = line.split("---> percentile ").nth(1)?;
            let (p, value) = rest.split_once('=')?;
            (p.trim() == which)
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
    };
    let samples = output.lines().find_map(|line| {
        let rest = line.split("Total ").nth(1)?;
        rest.split_whitespace().next()?.parse::<u64>().ok()
    })?;
    Some(LatencySummary {
        samples,
        p50: percentile("50.000")? * 1000.0,
        p99: percentile("99.000")? * 1000.0,
        p999: percentile("99.900")? * 1000.0,
    })
}

/// Parses sockperf throughput's report (`Message Rate is N [msg/sec]`) into messages per
/// second.
pub fn parse_sockperf_rate(output: &str) -> Option<f64> {
    output.lines().find_map(|line| {
        let rest = line.split("Message Rate is ").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Parses perftest's latency table (`ib_write_lat`, `ib_send_lat`: one row for `size` bytes
/// with t_typical, the 99% and 99.9% percentiles, in microseconds) into a summary of *round
/// trips* in nanoseconds: these tools report half a round trip, Fusion's tools whole ones.
pub fn parse_perftest(output: &str, size: usize) -> Option<LatencySummary> {
    output.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 9 || fields[0].parse::<usize>().ok()? != size {
            return None;
        }
        let number = |at: usize| fields[at].parse::<f64>().ok();
        let round_trip_ns = |at: usize| number(at).map(|us| us * 2.0 * 1000.0);
        Some(LatencySummary {
            samples: fields[1].parse().ok()?,
            p50: round_trip_ns(4)?,
            p99: round_trip_ns(7)?,
            p999: round_trip_ns(8)?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perftest_latency_rows_become_round_trips() {
        let output = "\
---------------------------------------------------------------------------------------
 #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec]
 8192       10000          2.98           8.59         3.06               3.08             0.12            3.46                    8.59
---------------------------------------------------------------------------------------
";
        let summary = parse_perftest(output, 8192).unwrap();
        assert_eq!(summary.samples, 10_000);
        assert!((summary.p50 - 6120.0).abs() < 1e-6);
        assert!((summary.p99 - 6920.0).abs() < 1e-6);
        assert!((summary.p999 - 17_180.0).abs() < 1e-6);
        assert_eq!(parse_perftest(output, 64), None, "no row for another size");
        assert_eq!(parse_perftest("Couldn't connect", 8192), None);
    }

    #[test]
    fn the_median_round_is_picked_by_p50() {
        let round = |p50| LatencySummary {
            samples: 1,
            p50,
            p99: p50 * 2.0,
            p999: p50 * 3.0,
        };
        assert_eq!(median_by_p50(vec![]), None);
        assert_eq!(
            median_by_p50(vec![round(9.0), round(1.0), round(5.0)]),
            Some(round(5.0))
        );
        assert_eq!(
            median_by_p50(vec![round(2.0), round(1.0)]),
            Some(round(2.0))
        );
    }

    #[test]
    fn result_lines_round_trip() {
        let summary = LatencySummary {
            samples: 10,
            p50: 1500.0,
            p99: 2500.0,
            p999: 9000.0,
        };
        assert_eq!(
            LatencySummary::from_output(&format!("noise\n{}\n", summary.to_result_line())),
            Some(summary)
        );
        assert_eq!(LatencySummary::from_output("RESULT 1 2"), None);
    }

    #[test]
    fn sockperf_reports_are_parsed() {
        let report = "sockperf: [2;35mTotal 22761 observations[0m; each percentile contains 227.61 observations\n\
            sockperf: ---> percentile 99.900 =  159.719\n\
            sockperf: ---> percentile 99.000 =   97.165\n\
            sockperf: ---> percentile 50.000 =   65.828\n";
        let parsed = parse_sockperf(report).unwrap();
        assert_eq!(parsed.samples, 22761);
        assert!((parsed.p50 - 65_828.0).abs() < 0.5);
        assert!((parsed.p99 - 97_165.0).abs() < 0.5);
        assert!((parsed.p999 - 159_719.0).abs() < 0.5);
    }

    #[test]
    fn sockperf_message_rates_are_parsed() {
        let report = "sockperf: Total of 935410 messages sent in 2.000 sec\n\
            sockperf: Summary: Message Rate is 467705 [msg/sec]\n\
            sockperf: Summary: BandWidth is 3653.945 MBps (29231.559 Mbps)\n";
        assert_eq!(parse_sockperf_rate(report), Some(467_705.0));
        assert_eq!(parse_sockperf_rate("sockperf: error"), None);
    }

    #[test]
    fn histogram_percentiles_follow_the_samples() {
        let mut h = latency_histogram();
        for micros in 1..=1000u64 {
            record(&mut h, Duration::from_micros(micros));
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.samples, 1000);
        assert!((s.p50 - 500_000.0).abs() / 500_000.0 < 0.01);
        assert!((s.p99 - 990_000.0).abs() / 990_000.0 < 0.01);
    }
}
