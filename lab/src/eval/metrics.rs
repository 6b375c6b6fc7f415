//! Threshold metrics (precision, recall, F1) and the threshold-free AUPRC.

use serde::Serialize;

/// Precision, recall and F1 at one threshold, with the counts behind them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Prf {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub tn: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Precision, recall and F1 of `score >= threshold` against `label`.
///
/// Conventions: precision is 1 when nothing is predicted positive, recall is 0 when there are no
/// positives, F1 is 0 when precision + recall is 0.
pub fn prf(items: &[(f32, bool)], threshold: f32) -> Prf {
    let mut m = Prf::default();
    for &(s, y) in items {
        match (s >= threshold, y) {
            (true, true) => m.tp += 1,
            (true, false) => m.fp += 1,
            (false, true) => m.fn_ += 1,
            (false, false) => m.tn += 1,
        }
    }
    m.precision = if m.tp + m.fp == 0 {
        1.0
    } else {
        m.tp as f64 / (m.tp + m.fp) as f64
    };
    m.recall = if m.tp + m.fn_ == 0 {
        0.0
    } else {
        m.tp as f64 / (m.tp + m.fn_) as f64
    };
    m.f1 = if m.precision + m.recall == 0.0 {
        0.0
    } else {
        2.0 * m.precision * m.recall / (m.precision + m.recall)
    };
    m
}

/// Area under the precision-recall curve as average precision: the mean, over positives, of
/// the precision at each distinct score threshold, where tied scores form one step (so the
/// figure does not depend on input order). Items scoring exactly 0 never count as predicted:
/// the positives among them add a precision of 0. 0 when there are no positives.
pub fn auprc(items: &[(f32, bool)]) -> f64 {
    let positives = items.iter().filter(|x| x.1).count();
    if positives == 0 {
        return 0.0;
    }
    let mut sorted: Vec<(f32, bool)> = items.to_vec();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut ap = 0.0;
    let mut tp = 0usize;
    let mut seen = 0usize;
    let mut i = 0;
    while i < sorted.len() {
        let s = sorted[i].0;
        if s <= 0.0 {
            break;
        }
        let mut j = i;
        let mut step_tp = 0;
        while j < sorted.len() && sorted[j].0 == s {
            if sorted[j].1 {
                step_tp += 1;
            }
            j += 1;
        }
        tp += step_tp;
        seen += j - i;
        ap += step_tp as f64 * (tp as f64 / seen as f64);
        i = j;
    }
    ap / positives as f64
}

/// Rate of `true` in `xs` (0 for an empty slice).
pub fn rate(hits: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        hits as f64 / total as f64
    }
}

/// The `q` quantile (0..=1) of `xs`, sorting in place; 0 for an empty slice.
pub fn quantile(xs: &mut [f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let idx = ((xs.len() - 1) as f64 * q).round() as usize;
    xs[idx]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prf_by_hand() {
        // tp: 0.9, 0.6; fp: 0.7; fn: 0.2; tn: 0.1, 0.0
        let items = [
            (0.9, true),
            (0.7, false),
            (0.6, true),
            (0.2, true),
            (0.1, false),
            (0.0, false),
        ];
        let m = prf(&items, 0.5);
        assert_eq!((m.tp, m.fp, m.fn_, m.tn), (2, 1, 1, 2));
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn auprc_by_hand() {
        // Ranks: 0.9 P (1/1), 0.7 N, 0.6 P (2/3), 0.2 P (3/4): AP = (1 + 2/3 + 3/4) / 3.
        let items = [
            (0.9, true),
            (0.7, false),
            (0.6, true),
            (0.2, true),
            (0.1, false),
        ];
        let want = (1.0 + 2.0 / 3.0 + 0.75) / 3.0;
        assert!((auprc(&items) - want).abs() < 1e-12);
        // Ties form one step: both at 0.5, one positive → precision 1/2.
        assert!((auprc(&[(0.5, true), (0.5, false)]) - 0.5).abs() < 1e-12);
        // A positive scored 0 is never retrieved.
        assert!((auprc(&[(0.8, true), (0.0, true)]) - 0.5).abs() < 1e-12);
        assert_eq!(auprc(&[(0.3, false)]), 0.0);
    }
}
