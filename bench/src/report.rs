//! Figures, medians over rounds, paired ratios, and the tables `bench run` prints.

use std::fmt::Write;

use crate::client::{Idle, Measured};
use crate::servers::Kind;

/// How a figure is printed.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    /// A rate: `95.1k`, `1.23M`.
    Rate,
    /// A number with one decimal.
    Decimal,
    /// A whole number.
    Whole,
}

/// One figure of a scenario's table.
#[derive(Debug)]
pub struct Column {
    /// The column's heading.
    pub header: &'static str,
    /// Whether the table shows the paired ratio to the reference kind.
    pub ratio: bool,
    /// How values print.
    pub format: Format,
}

const fn col(header: &'static str, ratio: bool, format: Format) -> Column {
    Column {
        header,
        ratio,
        format,
    }
}

/// The heading of the column with other processes' CPU use.
pub const OTHER_CPU: &str = "other CPU%";

/// Echo scenarios: throughput, throughput per server CPU-second, latency, server CPU use.
pub const ECHO_COLUMNS: &[Column] = &[
    col("msgs/s", true, Format::Rate),
    col("msgs/CPU-s", true, Format::Rate),
    col("p50 us", true, Format::Decimal),
    col("p99 us", true, Format::Decimal),
    col("srv CPU%", false, Format::Whole),
    col("cli CPU%", false, Format::Whole),
    col(OTHER_CPU, false, Format::Whole),
];

/// The idle scenario: server memory per connection.
pub const IDLE_COLUMNS: &[Column] = &[
    col("KB/conn", true, Format::Decimal),
    col("RSS MB before", false, Format::Decimal),
    col("RSS MB after", false, Format::Decimal),
];

/// Upgrade churn: like echo, with failed cycles.
pub const CHURN_COLUMNS: &[Column] = &[
    col("upgrades/s", true, Format::Rate),
    col("upgr/CPU-s", true, Format::Rate),
    col("p50 us", true, Format::Decimal),
    col("p99 us", true, Format::Decimal),
    col("srv CPU%", false, Format::Whole),
    col("cli CPU%", false, Format::Whole),
    col(OTHER_CPU, false, Format::Whole),
    col("errors", false, Format::Whole),
];

/// One run's figures, in its scenario's column order.
#[derive(Debug, Clone)]
pub struct Sample(Vec<f64>);

impl Sample {
    /// The figures of an echo or churn window (churn also shows its failed cycles; echo
    /// columns stop before them).
    pub fn measured(m: &mut Measured) -> Sample {
        Sample(vec![
            m.per_second(),
            m.per_cpu_second(),
            m.latency_us(50.0),
            m.latency_us(99.0),
            m.cpu_percent(),
            m.client_cpu_percent(),
            m.other_cpu_percent(),
            m.errors as f64,
        ])
    }

    /// The figures of the idle scenario.
    pub fn idle(idle: &Idle) -> Sample {
        const MB: f64 = 1024.0 * 1024.0;
        Sample(vec![
            idle.per_connection() / 1000.0,
            idle.before as f64 / MB,
            idle.after as f64 / MB,
        ])
    }

    /// The figure under `header`, if the scenario has it.
    pub fn value(&self, columns: &[Column], header: &str) -> Option<f64> {
        let i = columns.iter().position(|c| c.header == header)?;
        self.0.get(i).copied()
    }

    /// One line with every figure, for the progress log.
    pub fn brief(&self, columns: &[Column]) -> String {
        columns
            .iter()
            .zip(&self.0)
            .map(|(c, v)| format!("{}={}", c.header.replace(' ', "_"), fmt_value(*v, c.format)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn fmt_value(v: f64, format: Format) -> String {
    if !v.is_finite() {
        return "-".to_string();
    }
    match format {
        Format::Rate if v >= 1e6 => format!("{:.2}M", v / 1e6),
        Format::Rate if v >= 1e3 => format!("{:.1}k", v / 1e3),
        Format::Rate => format!("{v:.0}"),
        Format::Decimal => format!("{v:.1}"),
        Format::Whole => format!("{v:.0}"),
    }
}

/// The median of some values (the mean of the middle two when even); NaN when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Every kind's samples of one scenario, round by round.
#[derive(Debug)]
pub struct ScenarioResults {
    name: String,
    description: String,
    columns: &'static [Column],
    kinds: Vec<Kind>,
    /// `samples[kind][round]`; `None` when that run failed.
    samples: Vec<Vec<Option<Sample>>>,
}

impl ScenarioResults {
    /// An empty record for `rounds` rounds of `kinds`.
    pub fn new(
        name: &str,
        description: String,
        columns: &'static [Column],
        kinds: &[Kind],
        rounds: usize,
    ) -> Self {
        ScenarioResults {
            name: name.to_string(),
            description,
            columns,
            kinds: kinds.to_vec(),
            samples: vec![vec![None; rounds]; kinds.len()],
        }
    }

    /// Keeps one run's sample (`None` when it failed).
    pub fn record(&mut self, kind: Kind, round: usize, sample: Option<Sample>) {
        let k = self
            .kinds
            .iter()
            .position(|&x| x == kind)
            .expect("a known kind");
        self.samples[k][round] = sample;
    }

    /// The table: per kind, each figure's median over rounds, and for figures with a ratio,
    /// `(x)`: the median of the per-round ratios to `reference`.
    pub fn table(&self, reference: Kind) -> String {
        let r = self.kinds.iter().position(|&x| x == reference);
        let mut out = String::new();
        let _ = writeln!(out, "## {}: {}", self.name, self.description);
        let mut header = format!("{:<16}", "kind");
        for c in self.columns {
            let width = if c.ratio { 18 } else { 14 };
            let _ = write!(header, "{:>width$}", c.header);
        }
        let _ = writeln!(out, "{header}");
        for (k, kind) in self.kinds.iter().enumerate() {
            let mut row = format!("{:<16}", kind.name());
            for (i, c) in self.columns.iter().enumerate() {
                let values = self.samples[k]
                    .iter()
                    .flatten()
                    .map(|s| s.0[i])
                    .collect::<Vec<_>>();
                let value = fmt_value(median(values), c.format);
                if !c.ratio {
                    let _ = write!(row, "{value:>14}");
                    continue;
                }
                let ratios = r
                    .map(|r| {
                        self.samples[k]
                            .iter()
                            .zip(&self.samples[r])
                            .filter_map(|(s, base)| Some(s.as_ref()?.0[i] / base.as_ref()?.0[i]))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                let ratio = median(ratios);
                let cell = if ratio.is_finite() {
                    format!("{value} ({ratio:.2})")
                } else {
                    format!("{value} (-)")
                };
                let _ = write!(row, "{cell:>18}");
            }
            let ok = self.samples[k].iter().flatten().count();
            if ok < self.samples[k].len() {
                let _ = write!(row, "  [{ok}/{} rounds ok]", self.samples[k].len());
            }
            let _ = writeln!(out, "{row}");
        }
        if let (Some(r), Some(first)) = (r, self.columns.first()) {
            let mut line = format!("per-round {} ratios:", first.header);
            for (k, kind) in self.kinds.iter().enumerate() {
                if k == r {
                    continue;
                }
                let ratios: Vec<String> = self.samples[k]
                    .iter()
                    .zip(&self.samples[r])
                    .map(|(s, base)| match (s, base) {
                        (Some(s), Some(base)) => format!("{:.2}", s.0[0] / base.0[0]),
                        _ => "-".to_string(),
                    })
                    .collect();
                let _ = write!(line, " {} {};", kind.name(), ratios.join(" "));
            }
            let _ = writeln!(out, "{}", line.trim_end_matches(';'));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn ratios_are_paired_per_round() {
        let mut results = ScenarioResults::new(
            "x",
            String::new(),
            IDLE_COLUMNS,
            &[Kind::Layer, Kind::Fastwebsockets],
            3,
        );
        for (round, (a, b)) in [(2.0, 1.0), (9.0, 10.0), (3.0, 2.0)]
            .into_iter()
            .enumerate()
        {
            results.record(Kind::Layer, round, Some(Sample(vec![a, 0.0, 0.0])));
            results.record(Kind::Fastwebsockets, round, Some(Sample(vec![b, 0.0, 0.0])));
        }
        let table = results.table(Kind::Fastwebsockets);
        // Ratios 2.0, 0.9, 1.5: median 1.5 (not 3.0 / 2.0 of the medians, by chance equal).
        assert!(table.contains("3.0 (1.50)"), "{table}");
        assert!(table.contains("2.0 (1.00)"), "{table}");
    }
}
