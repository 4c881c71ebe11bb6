//! The results as a markdown report and as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use crate::cpu::Watched;
use crate::driver::Measured;
use crate::scenario::{LATENCY_TARGETS, Scenario, TARGETS};

/// One scenario's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Which scenario.
    pub scenario: Scenario,
    /// What its median round measured.
    pub measured: Measured,
    /// Ops/s of every round, in run order.
    pub rounds: Vec<f64>,
    /// Failed calls over all rounds' measured windows.
    pub all_errors: u64,
}

/// Cores of unrelated work in a window above which the report warns.
const OTHER_CPU_WARNING: f64 = 0.25;

impl Outcome {
    /// The outcome of `scenario` from its rounds: the median round by
    /// ops/s (the lower middle one for an even count).
    ///
    /// # Panics
    /// If `runs` is empty.
    /// Latency scenarios (fan-out, expiry) take the median round by p99
    /// instead.
    pub fn median_of(scenario: Scenario, runs: Vec<Measured>) -> Self {
        let rounds: Vec<f64> = runs.iter().map(|m| m.summary.ops_per_sec).collect();
        let all_errors = runs.iter().map(|m| m.summary.errors).sum();
        let mut order: Vec<usize> = (0..runs.len()).collect();
        if scenario.is_latency() {
            let p99 = |i: usize| runs[i].summary.p99.unwrap_or(Duration::MAX);
            order.sort_by_key(|&i| p99(i));
        } else {
            order.sort_by(|&a, &b| rounds[a].total_cmp(&rounds[b]));
        }
        let median = order[(order.len() - 1) / 2];
        let measured = runs.into_iter().nth(median).expect("at least one round");
        Self {
            scenario,
            measured,
            rounds,
            all_errors,
        }
    }

    /// `min–max` ops/s over the rounds, or `-` for a single round.
    fn round_range(&self) -> String {
        if self.rounds.len() < 2 {
            return "-".into();
        }
        let min = self.rounds.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rounds.iter().copied().fold(0.0, f64::max);
        format!("{min:.0}–{max:.0}")
    }

    /// CPU microseconds per successful call spent by the processes that
    /// serve this scenario's system (e.g. discovered plus Redis); `None`
    /// if none of them was watched or readable, or nothing succeeded.
    pub fn server_cpu_per_call(&self, procs: &[Watched]) -> Option<f64> {
        let system = self.scenario.system().name();
        let mut cores = None;
        for (p, c) in procs.iter().zip(&self.measured.cpu) {
            if p.system.as_deref() == Some(system) {
                *cores.get_or_insert(0.0) += (*c)?;
            }
        }
        let ops = self.measured.summary.ops_per_sec;
        cores.filter(|_| ops > 0.0).map(|c| c * 1e6 / ops)
    }
}

fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.3}", d.as_secs_f64() * 1e3))
}

fn mib(b: Option<u64>) -> String {
    b.map_or_else(|| "-".into(), |b| format!("{:.1}", b as f64 / 1e6))
}

fn cores(c: Option<f64>) -> String {
    c.map_or_else(|| "-".into(), |c| format!("{c:.2}"))
}

fn errors(o: &Outcome) -> String {
    let m = &o.measured;
    let mut text = m.summary.errors.to_string();
    if !m.summary.error_kinds.is_empty() {
        let kinds: Vec<_> = m
            .summary
            .error_kinds
            .iter()
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect();
        write!(text, " ({})", kinds.join(", ")).unwrap();
    }
    if m.warmup_errors > 0 {
        write!(text, " +{} in warm-up", m.warmup_errors).unwrap();
    }
    if o.all_errors != m.summary.errors {
        write!(text, "; {} over all rounds", o.all_errors).unwrap();
    }
    text
}

/// The results table, then the targets table. Each row is the scenario's
/// median round, with the ops/s range over all rounds. CPU columns are
/// cores used by each watched process during the window (1.00 = one core
/// busy), and by everything else on the machine ("other").
pub fn markdown(outcomes: &[Outcome], procs: &[Watched]) -> String {
    let mut out = String::new();
    let cpu_head: String = procs
        .iter()
        .map(|p| format!(" CPU {} |", p.name))
        .chain([" CPU other |".to_string()])
        .collect();
    let cpu_rule: String = procs.iter().map(|_| " ---: |").chain([" ---: |"]).collect();
    writeln!(
        out,
        "| scenario | system | ops/s | rounds ops/s | p50 ms | p99 ms | max ms | errors | server CPU µs/call | server RSS MB |{cpu_head}"
    )
    .unwrap();
    writeln!(
        out,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |{cpu_rule}"
    )
    .unwrap();
    for o in outcomes {
        let s = &o.measured.summary;
        let cpu: String = o
            .measured
            .cpu
            .iter()
            .chain([&o.measured.other_cpu])
            .map(|c| format!(" {} |", cores(*c)))
            .collect();
        writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |{cpu}",
            o.scenario.label(),
            o.scenario.system().name(),
            s.ops_per_sec,
            o.round_range(),
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            errors(o),
            us(o.server_cpu_per_call(procs)),
            mib(o.measured.rss_bytes),
        )
        .unwrap();
    }

    let find = |sc: Scenario| outcomes.iter().find(|o| o.scenario == sc);
    let mut targets = String::new();
    let mut latency = String::new();
    for t in TARGETS {
        let Some(d) = find(t.discovered) else {
            continue;
        };
        let Some(e) = t.etcd.iter().filter_map(|sc| find(*sc)).max_by(|a, b| {
            a.measured
                .summary
                .ops_per_sec
                .total_cmp(&b.measured.summary.ops_per_sec)
        }) else {
            continue;
        };
        let (dv, ev) = (
            d.measured.summary.ops_per_sec,
            e.measured.summary.ops_per_sec,
        );
        let ratio = if ev > 0.0 { dv / ev } else { f64::INFINITY };
        let clean = d.all_errors == 0 && e.all_errors == 0;
        let met = match (ratio >= t.min_ratio, clean) {
            (true, true) => "yes",
            (true, false) => "no (errors)",
            (false, _) => "**no**",
        };
        let efficiency = match (d.server_cpu_per_call(procs), e.server_cpu_per_call(procs)) {
            (Some(dc), Some(ec)) if dc > 0.0 => format!("{:.2}x", ec / dc),
            _ => "-".into(),
        };
        writeln!(
            targets,
            "| {} | {dv:.0} | {ev:.0} ({}) | {ratio:.2}x | >= {:.1}x | {met} | {efficiency} |",
            t.label,
            e.scenario.label(),
            t.min_ratio,
        )
        .unwrap();
    }
    let busiest = outcomes
        .iter()
        .filter_map(|o| o.measured.other_cpu)
        .fold(0.0_f64, f64::max);
    if busiest > OTHER_CPU_WARNING {
        writeln!(out).unwrap();
        writeln!(
            out,
            "**Warning:** other work used up to {busiest:.2} cores during a measured window (column \"CPU other\"); \
             the figures are disturbed. Rerun on an idle machine."
        )
        .unwrap();
    }
    for t in LATENCY_TARGETS {
        let Some(d) = find(t.scenario) else {
            continue;
        };
        let p99 = d.measured.summary.p99.map(|p| p.as_secs_f64() * 1e3);
        let rss = d.measured.rss_bytes.map(|b| b as f64 / 1e6);
        let mut ok = p99.is_some_and(|p| p < t.max_p99_ms);
        let mut measured = format!("p99 {} ms", p99.map_or("-".into(), |p| format!("{p:.1}")));
        let mut bound = format!("p99 < {:.0} ms", t.max_p99_ms);
        if let Some(max) = t.max_rss_mb {
            ok &= rss.is_some_and(|r| r < max);
            write!(measured, ", RSS {} MB", mib(d.measured.rss_bytes)).unwrap();
            write!(bound, ", RSS < {max:.0} MB").unwrap();
        }
        let etcd = t
            .scenario
            .etcd_counterpart()
            .and_then(|peer| outcomes.iter().find(|o| o.scenario == peer))
            .map_or("-".into(), |e| {
                format!(
                    "p99 {} ms, RSS {} MB",
                    ms(e.measured.summary.p99),
                    mib(e.measured.rss_bytes)
                )
            });
        let met = match (ok, d.all_errors == 0) {
            (true, true) => "yes",
            (true, false) => "no (errors)",
            (false, _) => "**no**",
        };
        writeln!(
            latency,
            "| {} | {measured} | {etcd} | {bound} | {met} |",
            t.scenario.label()
        )
        .unwrap();
    }
    if !latency.is_empty() {
        writeln!(out).unwrap();
        writeln!(out, "| latency target | discovered | etcd | target | met |").unwrap();
        writeln!(out, "| --- | ---: | ---: | ---: | --- |").unwrap();
        out.push_str(&latency);
    }
    if !targets.is_empty() {
        writeln!(out).unwrap();
        writeln!(
            out,
            "| target | discovered ops/s | compared with, ops/s | ratio | target | met | server CPU/call, other ÷ discovered |"
        )
        .unwrap();
        writeln!(out, "| --- | ---: | ---: | ---: | ---: | --- | ---: |").unwrap();
        out.push_str(&targets);
    }
    out
}

/// The results as a JSON array, one object per scenario.
pub fn json(outcomes: &[Outcome], procs: &[Watched]) -> serde_json::Value {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    outcomes
        .iter()
        .map(|o| {
            let s = &o.measured.summary;
            let cpu: serde_json::Map<_, _> = procs
                .iter()
                .zip(&o.measured.cpu)
                .map(|(p, c)| (p.name.clone(), serde_json::json!(c)))
                .collect();
            serde_json::json!({
                "scenario": o.scenario.id(),
                "system": o.scenario.system().name(),
                "ok": s.ok,
                "ops_per_sec": s.ops_per_sec,
                "rounds_ops_per_sec": o.rounds,
                "errors_all_rounds": o.all_errors,
                "p50_seconds": secs(s.p50),
                "p99_seconds": secs(s.p99),
                "max_seconds": secs(s.max),
                "errors": s.errors,
                "error_kinds": s
                    .error_kinds
                    .iter()
                    .map(|(kind, n)| (kind.clone(), serde_json::json!(n)))
                    .collect::<serde_json::Map<_, _>>(),
                "warmup_errors": o.measured.warmup_errors,
                "cpu_cores": cpu,
                "other_cpu_cores": o.measured.other_cpu,
                "server_cpu_us_per_call": o.server_cpu_per_call(procs),
                "server_rss_bytes": o.measured.rss_bytes,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Recorder;

    fn measured(ops: u64) -> Measured {
        let mut r = Recorder::default();
        for _ in 0..ops {
            r.record(Duration::from_micros(100), Ok(()));
        }
        Measured {
            summary: r.summary(Duration::from_secs(1)),
            warmup_errors: 0,
            cpu: vec![],
            other_cpu: None,
            rss_bytes: None,
        }
    }

    #[test]
    fn median_round_and_range() {
        let o = Outcome::median_of(
            Scenario::GetNodes,
            vec![measured(30), measured(10), measured(20)],
        );
        assert_eq!(o.measured.summary.ok, 20);
        assert_eq!(o.rounds, vec![30.0, 10.0, 20.0]);
        assert_eq!(o.round_range(), "10–30");
        let one = Outcome::median_of(Scenario::GetNodes, vec![measured(5)]);
        assert_eq!(
            (one.measured.summary.ok, one.round_range().as_str()),
            (5, "-")
        );
    }
}
