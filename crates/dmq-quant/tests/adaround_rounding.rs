//! AdaRound: init, hard rounding, soft weights, the regulariser and its gradient (against central
//! finite differences), and the β schedule.

use candle_core::{DType, Device, Tensor, Var};
use dmq_quant::adaround::{
    inverse_rectified_sigmoid, rectified_sigmoid, AdaRoundState, BetaSchedule, REG_LAMBDA,
};
use dmq_quant::uniform::UniformParams;

mod common;
use common::{devices, host, Rng};

/// A [C_out = 3, 8] weight with per-channel steps, some weights beyond the range (clamped codes)
/// and a few exact `.5` ties.
fn weight(dtype: DType, dev: &Device) -> (Vec<f64>, Tensor, UniformParams) {
    let mut rng = Rng(99);
    let params = UniformParams::new(vec![0.25, 0.125, 0.5], vec![8, 3, 0], 4, Some(0)).unwrap();
    let mut w: Vec<f64> = Vec::new();
    for c in 0..3 {
        let d = f64::from(params.scale[c]);
        let z = f64::from(params.zero_point[c]);
        for k in 0..8 {
            // Codes from −3 to 18 before the clamp, fractional parts anywhere.
            let v = match k {
                0 => d * (2.5 - z),  // an exact tie
                1 => d * (-3.3 - z), // below code 0
                2 => d * (17.2 - z), // above code 15
                _ => d * (rng.uniform(0.0, 15.0) - z),
            };
            w.push(v);
        }
    }
    let t = Tensor::from_vec(w.clone(), (3, 8), dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    (host(&t), t, params)
}

#[test]
fn init_gives_h_equal_to_the_fraction_and_round_to_nearest() {
    for dev in devices() {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-6)] {
            let (w, wt, params) = weight(dtype, &dev);
            let st = AdaRoundState::new(&wt, params.clone()).unwrap();
            assert_eq!(st.v.dtype(), dtype);
            let h = host(&st.h().unwrap());
            let floor = host(&st.floor);
            let mut ties = 0;
            for i in 0..w.len() {
                let c = i / 8;
                let s = w[i] / f64::from(params.scale[c]);
                assert_eq!(floor[i], s.floor(), "{dev:?} {dtype:?} element {i}");
                let frac = s - s.floor();
                assert!(
                    (h[i] - frac).abs() < tol,
                    "{dev:?} {dtype:?} element {i}: h = {}, frac = {frac}",
                    h[i]
                );
                // Hard rounding of the init = round to nearest (ties: up).
                let z = f64::from(params.zero_point[c]);
                let hard_code = host(&st.hard_codes().unwrap())[i];
                if frac == 0.5 {
                    ties += 1;
                    assert_eq!(hard_code, (s.floor() + 1.0 + z).clamp(0.0, 15.0));
                } else {
                    assert_eq!(
                        hard_code,
                        (s.round() + z).clamp(0.0, 15.0),
                        "{dev:?} {dtype:?} element {i}"
                    );
                }
            }
            assert_eq!(ties, 3);
            // Hard weights are the dequantized hard codes; away from ties they equal the plain
            // round-to-nearest fake quantizer.
            let hw = host(&st.hard_weight().unwrap());
            let deq = host(&params.dequantize(&st.hard_codes().unwrap()).unwrap());
            assert_eq!(hw.len(), deq.len());
            for (a, b) in hw.iter().zip(&deq) {
                assert!((a - b).abs() < 1e-6);
            }
            let rtn = host(&params.fake_quant(&wt).unwrap());
            for i in (0..w.len()).filter(|i| i % 8 != 0) {
                assert!((hw[i] - rtn[i]).abs() < 1e-6, "element {i}");
            }
            // Soft weights at init reproduce w where the code is not clamped.
            let sw = host(&st.soft_weight().unwrap());
            for i in 0..w.len() {
                let k = i % 8;
                if k == 1 || k == 2 {
                    assert!((sw[i] - rtn[i]).abs() < 1e-6, "clamped element {i}");
                } else {
                    assert!(
                        (sw[i] - w[i]).abs() < 1e-5,
                        "element {i}: {} vs {}",
                        sw[i],
                        w[i]
                    );
                }
            }
        }
    }
}

#[test]
fn rectified_sigmoid_by_hand() {
    let v = Tensor::new(
        &[0.0f64, 20.0, -20.0, 11f64.ln(), -(11f64.ln()), 1.0],
        &Device::Cpu,
    )
    .unwrap();
    let h = host(&rectified_sigmoid(&v).unwrap());
    let s1 = 1.0 / (1.0 + (-1.0f64).exp());
    let want = [0.5, 1.0, 0.0, 1.0, 0.0, s1 * 1.2 - 0.1];
    for (a, b) in h.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    let rest = Tensor::new(&[0.0f64, 0.1, 0.5, 0.9, 0.999], &Device::Cpu).unwrap();
    let back = host(&rectified_sigmoid(&inverse_rectified_sigmoid(&rest).unwrap()).unwrap());
    for (a, b) in back.iter().zip(host(&rest)) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

#[test]
fn regulariser_by_hand_and_off_during_warm_up() {
    let params = UniformParams::per_tensor(1.0, 0, 4).unwrap();
    // V = 0 → h = 0.5 → term 1; V = ±20 → h ∈ {0, 1} → term 0; V = 1 → h = 1.2σ(1) − 0.1.
    let v = Var::new(&[0.0f64, 20.0, -20.0, 1.0], &Device::Cpu).unwrap();
    let floor = Tensor::zeros(4, DType::F64, &Device::Cpu).unwrap();
    let st = AdaRoundState::from_parts(v, floor, params).unwrap();
    let h1 = 1.2 / (1.0 + (-1.0f64).exp()) - 0.1;
    for beta in [2.0, 7.5, 20.0] {
        let want = REG_LAMBDA * (1.0 + 0.0 + 0.0 + (1.0 - (2.0 * h1 - 1.0f64).abs().powf(beta)));
        let got = st.reg_loss(beta).unwrap().to_scalar::<f64>().unwrap();
        assert!((got - want).abs() < 1e-14, "β = {beta}: {got} vs {want}");
    }
    assert!(st.reg_loss(0.5).is_err());
    let sched = BetaSchedule::new(1000);
    for c in [1usize, 100, 199] {
        let r = st.scheduled_reg_loss(&sched, c).unwrap();
        assert_eq!(r.dims(), &[] as &[usize]);
        assert_eq!(r.to_scalar::<f64>().unwrap(), 0.0, "c = {c}");
    }
    for c in [200usize, 600, 1000] {
        let r = st
            .scheduled_reg_loss(&sched, c)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let want = st
            .reg_loss(sched.beta(c))
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(r > 0.0 && r == want, "c = {c}");
    }
}

#[test]
fn beta_schedule_values_by_hand() {
    // T = 20 000: warm-up ends at 0.2T = 4000; β = 2 + 18·max(0, 1 − (c − 4000)/16 000).
    let s = BetaSchedule::new(20_000);
    assert_eq!(s.beta(1), 20.0);
    assert_eq!(s.beta(3999), 20.0);
    assert!(!s.reg_active(1) && !s.reg_active(3999));
    assert_eq!(s.beta(4000), 20.0);
    assert!(s.reg_active(4000));
    assert_eq!(s.beta(12_000), 11.0); // 0.6T: halfway through the decay
    assert_eq!(s.beta(20_000), 2.0);
    assert_eq!(s.beta(8000), 2.0 + 18.0 * 0.75);
    assert!(s.reg_active(20_000));
    // T = 1000.
    let s = BetaSchedule::new(1000);
    assert_eq!((s.beta(1), s.beta(199), s.beta(200)), (20.0, 20.0, 20.0));
    assert!(!s.reg_active(199) && s.reg_active(200));
    assert_eq!(s.beta(600), 11.0);
    assert_eq!(s.beta(1000), 2.0);
    assert_eq!(s.beta(1200), 2.0); // past T: max(0, ·) holds β at its end value
}

/// `Σ G ⊙ soft_weight + reg_loss(β)` for a state with the given V values.
fn loss_at(v: &[f64], floor: &Tensor, params: &UniformParams, g: &Tensor, beta: f64) -> f64 {
    let vt = Tensor::from_vec(v.to_vec(), floor.dims(), floor.device()).unwrap();
    let st = AdaRoundState::from_parts(
        Var::from_tensor(&vt).unwrap(),
        floor.clone(),
        params.clone(),
    )
    .unwrap();
    let l = (st.soft_weight().unwrap() * g).unwrap().sum_all().unwrap();
    (l + st.reg_loss(beta).unwrap())
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn soft_loss_gradient_matches_central_differences() {
    let mut rng = Rng(4242);
    let dev = Device::Cpu;
    let (_, wt, params) = weight(DType::F64, &dev);
    let st = AdaRoundState::new(&wt, params.clone()).unwrap();
    // V values away from the kinks of the clamp (|V| = ln 11 ≈ 2.398), some beyond them.
    let kink = 11f64.ln();
    let v: Vec<f64> = (0..24)
        .map(|i| {
            if i % 7 == 3 {
                kink + 0.5 // h clamped to 1: zero gradient
            } else {
                let mut x = rng.uniform(-2.2, 2.2);
                if x.abs() < 1e-3 {
                    x = 0.3;
                }
                x
            }
        })
        .collect();
    let g: Vec<f64> = (0..24).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let gt = Tensor::from_vec(g, (3, 8), &dev).unwrap();
    // Elements 1 and 2 of every row have soft codes below 0 / above 15 whatever h is.
    let floor = st.floor.clone();
    for beta in [2.0, 11.0] {
        let vt = Var::from_tensor(&Tensor::from_vec(v.clone(), (3, 8), &dev).unwrap()).unwrap();
        let s = AdaRoundState::from_parts(vt.clone(), floor.clone(), params.clone()).unwrap();
        let loss = ((s.soft_weight().unwrap() * &gt).unwrap().sum_all().unwrap()
            + s.reg_loss(beta).unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let got = host(grads.get(&vt).unwrap());
        let eps = 1e-6;
        for j in 0..v.len() {
            let mut vp = v.clone();
            vp[j] += eps;
            let mut vm = v.clone();
            vm[j] -= eps;
            let fd = (loss_at(&vp, &floor, &params, &gt, beta)
                - loss_at(&vm, &floor, &params, &gt, beta))
                / (2.0 * eps);
            assert!(
                (got[j] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                "β = {beta}, element {j}: autograd {} vs finite differences {fd}",
                got[j]
            );
        }
        // Where h is clamped (V > ln 11) neither term has a gradient.
        for j in (0..v.len()).filter(|j| j % 7 == 3) {
            assert_eq!(got[j], 0.0, "element {j}");
        }
        // Where the code is clamped the soft weight has none (the regulariser still has one).
        let sw = (s.soft_weight().unwrap() * &gt).unwrap().sum_all().unwrap();
        let gw = host(sw.backward().unwrap().get(&vt).unwrap());
        for (j, &gj) in gw.iter().enumerate() {
            let k = j % 8;
            if k == 1 || k == 2 || j % 7 == 3 {
                assert_eq!(gj, 0.0, "element {j}");
            } else {
                assert!(gj != 0.0, "element {j}");
            }
        }
    }
}

#[test]
fn gradient_steps_reduce_the_regulariser() {
    // Plain gradient descent on the regulariser alone drives h to 0 or 1.
    let dev = Device::Cpu;
    let (_, wt, params) = weight(DType::F32, &dev);
    let st = AdaRoundState::new(&wt, params).unwrap();
    let before = st.reg_loss(2.0).unwrap().to_scalar::<f32>().unwrap();
    for _ in 0..200 {
        let grads = st.reg_loss(2.0).unwrap().backward().unwrap();
        let g = grads.get(st.v.as_tensor()).unwrap();
        st.v.set(&(st.v.as_tensor() - (g * 50.0).unwrap()).unwrap())
            .unwrap();
    }
    let after = st.reg_loss(2.0).unwrap().to_scalar::<f32>().unwrap();
    assert!(after < 0.2 * before, "{before} -> {after}");
}
