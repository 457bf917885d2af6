//! Figures, medians over rounds, paired ratios, the A/A noise band, and the tables and the
//! summary `bench run` prints.
//!
//! The A/A band of a figure is read off the per-round ratios of the reference's second copy
//! (`fastwebsockets-aa`) to the reference: which of the two copies is "the reference" is
//! arbitrary, so each round's ratio `r` and its inverse `1/r` both count, and the band runs
//! from the smallest to the largest of them. A kind's median ratio inside that band is
//! marked `~`: the run cannot tell it from the reference.

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

/// The heading of the idle scenario's memory per connection, which the summary also shows
/// as values, not only as ratios.
pub const KB_PER_CONN: &str = "KB/conn";

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
    col(KB_PER_CONN, true, Format::Decimal),
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

/// The smallest and largest of some ratios and of their inverses: the A/A band. `None` when
/// there is no finite, positive ratio.
pub fn band(ratios: &[f64]) -> Option<(f64, f64)> {
    ratios
        .iter()
        .filter(|r| r.is_finite() && **r > 0.0)
        .flat_map(|&r| [r, 1.0 / r])
        .fold(None, |acc, r| match acc {
            None => Some((r, r)),
            Some((lo, hi)) => Some((f64::min(lo, r), f64::max(hi, r))),
        })
}

/// Whether `ratio` lies inside `band` (ends included).
fn inside(ratio: f64, band: Option<(f64, f64)>) -> bool {
    band.is_some_and(|(lo, hi)| ratio >= lo && ratio <= hi)
}

/// The smallest and the largest of some values; `None` when none is finite.
fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    values
        .iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, &v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((f64::min(lo, v), f64::max(hi, v))),
        })
}

/// Every kind's samples of one scenario on one server runtime, round by round.
#[derive(Debug)]
pub struct ScenarioResults {
    name: String,
    description: String,
    /// The server runtime flavour's name, when the run has more than one kind of runtime.
    runtime: Option<&'static str>,
    /// The reference's A/A copy, whose ratios to the reference are the noise band.
    noise: Option<Kind>,
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
            runtime: None,
            noise: None,
            columns,
            kinds: kinds.to_vec(),
            samples: vec![vec![None; rounds]; kinds.len()],
        }
    }

    /// Names the server runtime these results were measured on, for the headings.
    pub fn runtime(mut self, name: &'static str) -> Self {
        self.runtime = Some(name);
        self
    }

    /// Takes `kind`'s ratios to the reference as the noise band: the A/A copy of the reference.
    pub fn noise(mut self, kind: Kind) -> Self {
        self.noise = Some(kind);
        self
    }

    fn index(&self, kind: Kind) -> Option<usize> {
        self.kinds.iter().position(|&x| x == kind)
    }

    /// Figure `i` of kind `k` over reference `r`, round by round (`NaN` where either failed).
    fn round_ratios(&self, k: usize, r: usize, i: usize) -> Vec<f64> {
        self.samples[k]
            .iter()
            .zip(&self.samples[r])
            .map(|(s, base)| match (s, base) {
                (Some(s), Some(base)) => s.0[i] / base.0[i],
                _ => f64::NAN,
            })
            .collect()
    }

    /// The A/A band of figure `i` (see the module docs), when there is an A/A copy.
    fn noise_band(&self, r: usize, i: usize) -> Option<(f64, f64)> {
        let aa = self.index(self.noise?)?;
        band(&self.round_ratios(aa, r, i))
    }

    /// The heading's name: the scenario's, and the runtime's when named.
    fn title(&self) -> String {
        match self.runtime {
            Some(runtime) => format!("{} [{runtime}]", self.name),
            None => self.name.clone(),
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
    /// `(x)`: the median of the per-round ratios to `reference`, with `~` when it lies inside
    /// the A/A band. Under it, the per-round ratios of the leading figures, and the A/A band of
    /// every figure with a ratio.
    pub fn table(&self, reference: Kind) -> String {
        let r = self.index(reference);
        let mut out = String::new();
        let _ = writeln!(out, "## {}: {}", self.title(), self.description);
        let mut header = format!("{:<18}", "kind");
        for c in self.columns {
            let width = if c.ratio { 19 } else { 14 };
            let _ = write!(header, "{:>width$}", c.header);
        }
        let _ = writeln!(out, "{header}");
        for (k, kind) in self.kinds.iter().enumerate() {
            let mut row = format!("{:<18}", kind.name());
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
                let ratio = r.map_or(f64::NAN, |r| median(self.round_ratios(k, r, i)));
                let compared = Some(k) != r && Some(*kind) != self.noise;
                let mark = match r {
                    Some(r) if compared && inside(ratio, self.noise_band(r, i)) => "~",
                    _ => "",
                };
                let cell = if ratio.is_finite() {
                    format!("{value} ({ratio:.2}{mark})")
                } else {
                    format!("{value} (-)")
                };
                let _ = write!(row, "{cell:>19}");
            }
            let ok = self.samples[k].iter().flatten().count();
            if ok < self.samples[k].len() {
                let _ = write!(row, "  [{ok}/{} rounds ok]", self.samples[k].len());
            }
            let _ = writeln!(out, "{row}");
        }
        let Some(r) = r else {
            return out;
        };
        for (i, c) in self.columns.iter().enumerate().take(2) {
            if !c.ratio {
                continue;
            }
            let mut line = format!("per-round {} ratios:", c.header);
            for (k, kind) in self.kinds.iter().enumerate() {
                if k == r {
                    continue;
                }
                let ratios: Vec<String> = self
                    .round_ratios(k, r, i)
                    .into_iter()
                    .map(|x| fmt_ratio(x, 2))
                    .collect();
                let _ = write!(line, " {} {};", kind.name(), ratios.join(" "));
            }
            let _ = writeln!(out, "{}", line.trim_end_matches(';'));
        }
        if let Some(noise) = self.noise.filter(|&n| self.index(n).is_some()) {
            let mut line = format!("A/A band ({noise} vs {reference}):");
            for (i, c) in self.columns.iter().enumerate() {
                if c.ratio {
                    let _ = write!(line, " {} {};", c.header, fmt_band(self.noise_band(r, i)));
                }
            }
            let _ = writeln!(out, "{}", line.trim_end_matches(';'));
        }
        out
    }
}

fn fmt_ratio(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "-".to_string()
    }
}

fn fmt_band(band: Option<(f64, f64)>) -> String {
    match band {
        Some((lo, hi)) => format!("{lo:.2}-{hi:.2}"),
        None => "-".to_string(),
    }
}

/// The summary of a run: for each scenario and runtime, and for its leading figures (the
/// throughput and the throughput per server CPU-second; the memory per connection of the idle
/// scenario), the A/A band and every other kind's ratio to `reference` as the median and the
/// range over rounds, `~` when the median is inside the band. The idle scenario's rows also
/// give each kind's memory per connection.
pub fn summary(results: &[ScenarioResults], reference: Kind, noise: Kind) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Summary: ratios to {reference}, median [min-max] over rounds; ~: inside the A/A band"
    );
    let _ = writeln!(
        out,
        "   (the A/A band: {noise} / {reference} of each round and its inverse, smallest to largest)"
    );
    let subjects: Vec<Kind> = results
        .first()
        .map(|res| {
            res.kinds
                .iter()
                .copied()
                .filter(|&k| k != reference && k != noise)
                .collect()
        })
        .unwrap_or_default();
    let mut header = format!(
        "{:<18}{:<9}{:<12}{:>12}",
        "scenario", "runtime", "figure", "A/A band"
    );
    for kind in &subjects {
        let _ = write!(header, "{:>22}", kind.name());
    }
    let _ = writeln!(out, "{header}");
    for res in results {
        let Some(r) = res.index(reference) else {
            continue;
        };
        let mut first = true;
        for (i, c) in res.columns.iter().enumerate().take(2) {
            if !c.ratio {
                continue;
            }
            let (name, runtime) = if first {
                (res.name.as_str(), res.runtime.unwrap_or("-"))
            } else {
                ("", "")
            };
            first = false;
            let band = res.noise_band(r, i);
            let mut row = format!(
                "{name:<18}{runtime:<9}{:<12}{:>12}",
                c.header,
                fmt_band(band)
            );
            for &kind in &subjects {
                let cell = match res.index(kind) {
                    Some(k) => {
                        let ratios = res.round_ratios(k, r, i);
                        let med = median(ratios.clone());
                        let mark = if inside(med, band) { " ~" } else { "  " };
                        match min_max(&ratios) {
                            Some((lo, hi)) => format!("{med:.2} [{lo:.2}-{hi:.2}]{mark}"),
                            None => "-".to_string(),
                        }
                    }
                    None => "-".to_string(),
                };
                let _ = write!(row, "{cell:>22}");
            }
            let _ = writeln!(out, "{row}");
            if c.header == KB_PER_CONN {
                let values: Vec<String> = res
                    .kinds
                    .iter()
                    .enumerate()
                    .map(|(k, kind)| {
                        let values = res.samples[k].iter().flatten().map(|s| s.0[i]).collect();
                        format!("{kind} {}", fmt_value(median(values), c.format))
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "{:<27}{} (median): {}",
                    "",
                    c.header,
                    values.join(", ")
                );
            }
        }
    }
    out
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

    fn echo_results(rounds: &[(f64, f64, f64)]) -> ScenarioResults {
        // (layer, fastwebsockets, fastwebsockets-aa) msgs/s per round; msgs/CPU-s likewise, halved.
        let mut results = ScenarioResults::new(
            "rr-1x20B",
            String::new(),
            ECHO_COLUMNS,
            &[Kind::Layer, Kind::Fastwebsockets, Kind::FastwebsocketsAa],
            rounds.len(),
        )
        .runtime("multi")
        .noise(Kind::FastwebsocketsAa);
        let sample = |v: f64| Some(Sample(vec![v, v / 2.0, 10.0, 20.0, 100.0, 100.0, 0.0, 0.0]));
        for (round, &(layer, fws, aa)) in rounds.iter().enumerate() {
            results.record(Kind::Layer, round, sample(layer));
            results.record(Kind::Fastwebsockets, round, sample(fws));
            results.record(Kind::FastwebsocketsAa, round, sample(aa));
        }
        results
    }

    #[test]
    fn band_takes_each_ratio_and_its_inverse() {
        let (lo, hi) = band(&[1.0, 1.25, f64::NAN]).expect("a band");
        assert!(
            (lo - 0.8).abs() < 1e-12 && (hi - 1.25).abs() < 1e-12,
            "{lo} {hi}"
        );
        assert_eq!(band(&[f64::NAN]), None);
    }

    #[test]
    fn ratio_inside_the_aa_band_is_marked() {
        // A/A ratios 1.04, 0.98, 1.00: band 0.96-1.04. Layer 0.97 is inside it, 0.90 is not.
        let inside = echo_results(&[
            (97.0, 100.0, 104.0),
            (97.0, 100.0, 98.0),
            (97.0, 100.0, 100.0),
        ]);
        let table = inside.table(Kind::Fastwebsockets);
        assert!(table.starts_with("## rr-1x20B [multi]:"), "{table}");
        assert!(table.contains("97 (0.97~)"), "{table}");
        assert!(
            table.contains("A/A band (fastwebsockets-aa vs fastwebsockets): msgs/s 0.96-1.04"),
            "{table}"
        );
        assert!(table.contains("per-round msgs/CPU-s ratios:"), "{table}");
        let outside = echo_results(&[
            (90.0, 100.0, 104.0),
            (90.0, 100.0, 98.0),
            (90.0, 100.0, 100.0),
        ]);
        let table = outside.table(Kind::Fastwebsockets);
        assert!(table.contains("90 (0.90)"), "{table}");
        assert!(!table.contains("(0.90~)"), "{table}");
    }

    #[test]
    fn summary_gives_median_range_and_band_per_runtime() {
        let results = [echo_results(&[
            (90.0, 100.0, 104.0),
            (80.0, 100.0, 98.0),
            (99.0, 100.0, 100.0),
        ])];
        let summary = summary(&results, Kind::Fastwebsockets, Kind::FastwebsocketsAa);
        let row = summary
            .lines()
            .find(|l| l.starts_with("rr-1x20B"))
            .expect("a row for the scenario");
        assert!(row.contains("multi"), "{summary}");
        assert!(row.contains("msgs/s"), "{summary}");
        assert!(row.contains("0.96-1.04"), "{summary}");
        assert!(row.contains("0.90 [0.80-0.99]"), "{summary}");
        assert!(!row.contains('~'), "{summary}");
        assert!(summary.contains("msgs/CPU-s"), "{summary}");
        let header = summary
            .lines()
            .find(|l| l.starts_with("scenario"))
            .expect("a header");
        assert!(header.contains("layer"), "{summary}");
        assert!(!header.contains("fastwebsockets"), "{summary}");
    }

    #[test]
    fn summary_gives_idle_memory_of_every_kind() {
        let mut results = ScenarioResults::new(
            "idle-10",
            String::new(),
            IDLE_COLUMNS,
            &[Kind::Layer, Kind::Fastwebsockets, Kind::FastwebsocketsAa],
            1,
        )
        .noise(Kind::FastwebsocketsAa);
        results.record(Kind::Layer, 0, Some(Sample(vec![11.0, 0.0, 0.0])));
        results.record(Kind::Fastwebsockets, 0, Some(Sample(vec![6.6, 0.0, 0.0])));
        results.record(Kind::FastwebsocketsAa, 0, Some(Sample(vec![6.5, 0.0, 0.0])));
        let summary = summary(&[results], Kind::Fastwebsockets, Kind::FastwebsocketsAa);
        assert!(
            summary.contains("layer 11.0, fastwebsockets 6.6, fastwebsockets-aa 6.5"),
            "{summary}"
        );
        assert!(summary.contains("1.67 [1.67-1.67]"), "{summary}");
    }
}
