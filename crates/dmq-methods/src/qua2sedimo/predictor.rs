//! The quality predictor (spec §B4): an additive model of the label `y = ln L(c)` of a
//! configuration `c`, `y ≈ b + Σ_ℓ θ_{ℓ, c_ℓ}`, with one-hot features per (layer, option), option
//! 0 of every layer the reference (`θ_{ℓ,0} = 0`), fitted by ridge regression (intercept not
//! penalised; `λ` chosen by k-fold cross-validation on the training part). Held-out quality is
//! reported as Spearman's ρ and NDCG@10 (relevance as in the paper's trainer, §A5).
//! Statistics in `f64`.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::Q2sError;

/// A fitted additive model.
#[derive(Debug, Clone, Serialize)]
pub struct Additive {
    pub intercept: f64,
    /// `theta[ℓ][o]`, `theta[ℓ][0] = 0`.
    pub theta: Vec<Vec<f64>>,
    pub lambda: f64,
}

impl Additive {
    pub fn predict(&self, choice: &[usize]) -> f64 {
        self.intercept
            + self
                .theta
                .iter()
                .zip(choice)
                .map(|(t, &o)| t[o])
                .sum::<f64>()
    }
}

/// Column index of (layer, option ≥ 1) in the design matrix.
fn columns(n_opts: &[usize]) -> (Vec<usize>, usize) {
    let mut start = Vec::with_capacity(n_opts.len());
    let mut p = 0;
    for &k in n_opts {
        start.push(p);
        p += k.saturating_sub(1);
    }
    (start, p)
}

/// Fits the ridge model with a given `lambda`.
pub fn fit_ridge(
    configs: &[Vec<usize>],
    y: &[f64],
    n_opts: &[usize],
    lambda: f64,
) -> Result<Additive, Q2sError> {
    let n = configs.len();
    if n == 0 || n != y.len() {
        return Err(Q2sError::Input(format!(
            "{n} configurations for {} labels",
            y.len()
        )));
    }
    let (start, p) = columns(n_opts);
    // Sparse rows: active columns per configuration.
    let rows: Vec<Vec<usize>> = configs
        .iter()
        .map(|c| {
            c.iter()
                .enumerate()
                .filter(|(_, &o)| o > 0)
                .map(|(l, &o)| start[l] + o - 1)
                .collect()
        })
        .collect();
    let mean_y = y.iter().sum::<f64>() / n as f64;
    let mut mean_x = vec![0.0; p];
    for r in &rows {
        for &j in r {
            mean_x[j] += 1.0 / n as f64;
        }
    }
    // A = Xcᵀ Xc + λI = XᵀX − n·m mᵀ + λI ; b = Xcᵀ yc = Xᵀ yc.
    let mut a = vec![0.0; p * p];
    let mut b = vec![0.0; p];
    for (r, &yi) in rows.iter().zip(y) {
        for &i in r {
            b[i] += yi - mean_y;
            for &j in r {
                a[i * p + j] += 1.0;
            }
        }
    }
    for i in 0..p {
        for j in 0..p {
            a[i * p + j] -= n as f64 * mean_x[i] * mean_x[j];
        }
        a[i * p + i] += lambda;
    }
    let beta = cholesky_solve(&mut a, &b, p)?;
    let intercept = mean_y - beta.iter().zip(&mean_x).map(|(b, m)| b * m).sum::<f64>();
    let theta = n_opts
        .iter()
        .zip(&start)
        .map(|(&k, &s)| {
            std::iter::once(0.0)
                .chain((1..k).map(|o| beta[s + o - 1]))
                .collect()
        })
        .collect();
    Ok(Additive {
        intercept,
        theta,
        lambda,
    })
}

/// Solves `A x = b` for symmetric positive definite `A` (row-major, overwritten).
fn cholesky_solve(a: &mut [f64], b: &[f64], p: usize) -> Result<Vec<f64>, Q2sError> {
    for j in 0..p {
        let mut d = a[j * p + j];
        for k in 0..j {
            d -= a[j * p + k] * a[j * p + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return Err(Q2sError::Input(
                "ridge system is not positive definite (lambda must be > 0)".into(),
            ));
        }
        let d = d.sqrt();
        a[j * p + j] = d;
        for i in j + 1..p {
            let mut s = a[i * p + j];
            for k in 0..j {
                s -= a[i * p + k] * a[j * p + k];
            }
            a[i * p + j] = s / d;
        }
    }
    let mut z = b.to_vec();
    for i in 0..p {
        for k in 0..i {
            z[i] -= a[i * p + k] * z[k];
        }
        z[i] /= a[i * p + i];
    }
    for i in (0..p).rev() {
        for k in i + 1..p {
            z[i] -= a[k * p + i] * z[k];
        }
        z[i] /= a[i * p + i];
    }
    Ok(z)
}

/// Ranks (1-based, ties averaged).
pub fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let mut sab = 0.0;
    let mut saa = 0.0;
    let mut sbb = 0.0;
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// Spearman's rank correlation.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    if a.len() < 2 {
        return 0.0;
    }
    pearson(&ranks(a), &ranks(b))
}

/// NDCG@k of ranking by `predicted` quality (higher is better) against `measured` quality,
/// relevance `50·clamp((q − q20)/(max − q20), 0, 1)` with `q20` the 20th percentile of
/// `measured` (the paper's trainer, §A5).
pub fn ndcg_at(predicted: &[f64], measured: &[f64], k: usize) -> f64 {
    if measured.is_empty() {
        return 0.0;
    }
    let mut sorted = measured.to_vec();
    sorted.sort_by(f64::total_cmp);
    let q20 = sorted[((sorted.len() - 1) as f64 * 0.2).round() as usize];
    let max = sorted[sorted.len() - 1];
    let rel = |q: f64| {
        if max > q20 {
            50.0 * ((q - q20) / (max - q20)).clamp(0.0, 1.0)
        } else {
            50.0
        }
    };
    let dcg = |order: &[usize]| -> f64 {
        order
            .iter()
            .take(k)
            .enumerate()
            .map(|(i, &j)| (2f64.powf(rel(measured[j]) / 10.0) - 1.0) / ((i + 2) as f64).log2())
            .sum()
    };
    let mut by_pred: Vec<usize> = (0..measured.len()).collect();
    by_pred.sort_by(|&a, &b| predicted[b].total_cmp(&predicted[a]));
    let mut ideal: Vec<usize> = (0..measured.len()).collect();
    ideal.sort_by(|&a, &b| measured[b].total_cmp(&measured[a]));
    let best = dcg(&ideal);
    if best > 0.0 {
        dcg(&by_pred) / best
    } else {
        1.0
    }
}

/// A fitted predictor and how well it ranks held-out configurations.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub model: Additive,
    pub train: usize,
    pub test: usize,
    /// Held-out Spearman ρ between predicted and measured `ln L`.
    pub spearman: f64,
    /// Held-out NDCG@10 of quality `−ln L`.
    pub ndcg10: f64,
    /// Training-set Spearman ρ.
    pub train_spearman: f64,
    /// Held-out (measured, predicted) pairs, for the chart.
    pub held_out: Vec<(f64, f64)>,
    /// Cross-validated mean squared error of each `λ` tried.
    pub lambda_cv: Vec<(f64, f64)>,
}

/// `λ` grid of the cross-validation.
pub const LAMBDAS: [f64; 6] = [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0];

/// Splits seeded into `1 − test_share` training and `test_share` held-out configurations,
/// chooses `λ` by 5-fold CV on the training part, refits, and evaluates on the held-out part.
/// The final model is then refitted on **all** configurations with that `λ`.
pub fn fit_and_evaluate(
    configs: &[Vec<usize>],
    y: &[f64],
    n_opts: &[usize],
    test_share: f64,
    seed: u64,
) -> Result<(Additive, Evaluation), Q2sError> {
    let n = configs.len();
    if n < 10 {
        return Err(Q2sError::Input(format!(
            "{n} labelled configurations: at least 10 are needed to fit and evaluate"
        )));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n_test = ((n as f64 * test_share).round() as usize).clamp(2, n - 5);
    let (test, train) = idx.split_at(n_test);
    let pick = |ix: &[usize]| -> (Vec<Vec<usize>>, Vec<f64>) {
        (
            ix.iter().map(|&i| configs[i].clone()).collect(),
            ix.iter().map(|&i| y[i]).collect(),
        )
    };
    let (tr_c, tr_y) = pick(train);
    let (te_c, te_y) = pick(test);
    let folds = 5.min(tr_c.len());
    let mut lambda_cv = Vec::new();
    for &lam in &LAMBDAS {
        let mut se = 0.0;
        for f in 0..folds {
            let (mut fc, mut fy, mut vc, mut vy) = (vec![], vec![], vec![], vec![]);
            for (i, (c, &v)) in tr_c.iter().zip(&tr_y).enumerate() {
                if i % folds == f {
                    vc.push(c.clone());
                    vy.push(v);
                } else {
                    fc.push(c.clone());
                    fy.push(v);
                }
            }
            let m = fit_ridge(&fc, &fy, n_opts, lam)?;
            se += vc
                .iter()
                .zip(&vy)
                .map(|(c, v)| (m.predict(c) - v).powi(2))
                .sum::<f64>();
        }
        lambda_cv.push((lam, se / tr_c.len() as f64));
    }
    let lambda = lambda_cv
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|x| x.0)
        .unwrap_or(1.0);
    let m = fit_ridge(&tr_c, &tr_y, n_opts, lambda)?;
    let pred_te: Vec<f64> = te_c.iter().map(|c| m.predict(c)).collect();
    let pred_tr: Vec<f64> = tr_c.iter().map(|c| m.predict(c)).collect();
    let neg = |v: &[f64]| v.iter().map(|x| -x).collect::<Vec<_>>();
    let eval = Evaluation {
        train: tr_c.len(),
        test: te_c.len(),
        spearman: spearman(&pred_te, &te_y),
        ndcg10: ndcg_at(&neg(&pred_te), &neg(&te_y), 10),
        train_spearman: spearman(&pred_tr, &tr_y),
        held_out: te_y.iter().copied().zip(pred_te.iter().copied()).collect(),
        lambda_cv,
        model: m,
    };
    let full = fit_ridge(configs, y, n_opts, lambda)?;
    Ok((full, eval))
}
