//! Bit allocation (spec §B6): one option per layer minimising the predicted cost (predicted
//! `log L`, additive over layers) under an average-bits budget. With an additive predictor this
//! is a multiple-choice knapsack, solved exactly as a 0/1 integer programme by `good_lp` with the
//! pure-Rust `microlp` branch-and-bound backend (MIP gap 0). The paper's objective — quality
//! minus `λ`·bits, no budget — is separable and solved exactly per layer ([`allocate_lagrangian`]).

use good_lp::{microlp, variable, Expression, ProblemVariables, Solution, SolverModel, Variable};

use super::Q2sError;

/// One option of one layer for the allocator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Item {
    /// Predicted cost (lower is better), e.g. `θ_{ℓ,o}`.
    pub cost: f64,
    /// Stored bits of the layer's weight with this option.
    pub bits: u64,
}

/// The option index per layer minimising `Σ cost` with `Σ bits ≤ budget_bits`. Errors when even
/// the smallest options exceed the budget, or the solver fails.
pub fn allocate_budget(layers: &[Vec<Item>], budget_bits: u64) -> Result<Vec<usize>, Q2sError> {
    if layers.iter().any(|l| l.is_empty()) {
        return Err(Q2sError::Input("a layer has no options".into()));
    }
    let min_bits: u64 = layers
        .iter()
        .map(|l| l.iter().map(|i| i.bits).min().unwrap_or(0))
        .sum();
    if min_bits > budget_bits {
        return Err(Q2sError::Input(format!(
            "the budget of {budget_bits} bits is below the smallest configuration ({min_bits} bits)"
        )));
    }
    // Bits scaled to O(1) coefficients for the solver; the budget is checked in integers after.
    let scale = budget_bits.max(1) as f64;
    let mut slack = 0.0;
    for _ in 0..4 {
        let choice = solve(layers, (budget_bits as f64 / scale) - slack, scale)?;
        let bits: u64 = layers.iter().zip(&choice).map(|(l, &o)| l[o].bits).sum();
        if bits <= budget_bits {
            return Ok(choice);
        }
        // Solver tolerance let a solution exceed the budget by a rounding error: tighten.
        slack = slack * 10.0 + 1e-9;
    }
    Err(Q2sError::Solver(
        "the solver's solutions exceed the budget even after tightening it".into(),
    ))
}

fn solve(layers: &[Vec<Item>], budget: f64, scale: f64) -> Result<Vec<usize>, Q2sError> {
    let mut vars = ProblemVariables::new();
    let x: Vec<Vec<Variable>> = layers
        .iter()
        .map(|l| l.iter().map(|_| vars.add(variable().binary())).collect())
        .collect();
    // Costs shifted per layer to be non-negative (does not change the argmin: one option per
    // layer), which keeps the LP relaxation well scaled.
    let mut objective = Expression::from(0.0);
    let mut size = Expression::from(0.0);
    for (l, xs) in layers.iter().zip(&x) {
        let lo = l.iter().map(|i| i.cost).fold(f64::INFINITY, f64::min);
        for (i, &v) in l.iter().zip(xs) {
            objective += (i.cost - lo) * v;
            size += (i.bits as f64 / scale) * v;
        }
    }
    let mut problem = vars.minimise(objective).using(microlp);
    for xs in &x {
        let one: Expression = xs.iter().copied().sum();
        problem = problem.with(one.eq(1.0));
    }
    problem = problem.with(size.leq(budget));
    let sol = problem
        .solve()
        .map_err(|e| Q2sError::Solver(e.to_string()))?;
    Ok(x.iter()
        .map(|xs| {
            xs.iter()
                .enumerate()
                .max_by(|a, b| sol.value(*a.1).total_cmp(&sol.value(*b.1)))
                .map(|(i, _)| i)
                .unwrap_or(0)
        })
        .collect())
}

/// The paper's objective without a budget: per layer `argmin cost + λ·bits/numel_total`
/// (`lambda` in cost units per average bit). Ties go to the fewer bits.
pub fn allocate_lagrangian(layers: &[Vec<Item>], lambda: f64, numel_total: usize) -> Vec<usize> {
    let n = numel_total.max(1) as f64;
    layers
        .iter()
        .map(|l| {
            let f = |i: &Item| i.cost + lambda * i.bits as f64 / n;
            let mut best = 0;
            for (k, it) in l.iter().enumerate() {
                let (a, b) = (f(it), f(&l[best]));
                if a < b || (a == b && it.bits < l[best].bits) {
                    best = k;
                }
            }
            best
        })
        .collect()
}

/// Exhaustive search (for tests and tiny problems): the cheapest configuration within the
/// budget and its cost, `None` if none fits. `Π |options|` evaluations.
pub fn brute_force(layers: &[Vec<Item>], budget_bits: u64) -> Option<(Vec<usize>, f64)> {
    let mut idx = vec![0usize; layers.len()];
    let mut best: Option<(Vec<usize>, f64)> = None;
    loop {
        let bits: u64 = layers.iter().zip(&idx).map(|(l, &o)| l[o].bits).sum();
        if bits <= budget_bits {
            let cost: f64 = layers.iter().zip(&idx).map(|(l, &o)| l[o].cost).sum();
            if best.as_ref().is_none_or(|(_, c)| cost < *c) {
                best = Some((idx.clone(), cost));
            }
        }
        let mut k = 0;
        loop {
            if k == layers.len() {
                return best;
            }
            idx[k] += 1;
            if idx[k] < layers[k].len() {
                break;
            }
            idx[k] = 0;
            k += 1;
        }
    }
}
