//! Reading Prometheus text (the operator's `/metrics`, the API server's).

/// The value of the sample `series` (name and labels exactly as exported) in the Prometheus text
/// `metrics`; 0 if absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Sum of every sample of `metric` (any labels) in Prometheus text.
pub fn metric_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP tokenmint_reconciles_total Reconciles.
# TYPE tokenmint_reconciles_total counter
tokenmint_reconciles_total{result=\"success\"} 7
tokenmint_reconciles_total{result=\"error\"} 2
tokenmint_reconciles_total_extra 100
tokenmint_up 1
";

    #[test]
    fn sample_reads_one_exact_series() {
        assert_eq!(
            sample(TEXT, r#"tokenmint_reconciles_total{result="success"}"#),
            7.0
        );
        assert_eq!(sample(TEXT, "tokenmint_up"), 1.0);
        assert_eq!(sample(TEXT, "tokenmint_missing"), 0.0);
    }

    #[test]
    fn metric_sum_adds_every_label_set_of_one_metric_only() {
        assert_eq!(metric_sum(TEXT, "tokenmint_reconciles_total"), 9.0);
        assert_eq!(metric_sum(TEXT, "tokenmint_up"), 1.0);
    }
}
