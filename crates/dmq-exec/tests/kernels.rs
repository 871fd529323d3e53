//! The integer layer against the naive integer reference, on every instruction set this machine
//! has: exact integer sums and bit-identical f32 outputs, on edge cases (odd channel counts,
//! 1×1 and 3×3, stride 2, zero points at and beyond the ends of the code range, split parts,
//! power-of-two shifts, 2- to 8-bit weights) and on random shapes (proptest).

use dmq_exec::layer::{reference_forward, SegmentSpec};
use dmq_exec::packed::{layout_segments, PackedWeight};
use dmq_exec::quantize::quantize_slice;
use dmq_exec::{ActQuant, Geometry, IntLayer, Isa, PartWeight};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One test case: a layer and an input.
#[derive(Debug, Clone)]
struct Case {
    geometry: Geometry,
    batch: usize,
    h: usize,
    w: usize,
    cin: usize,
    cout: usize,
    wbits: u8,
    abits: u8,
    /// `(start, len, shift, part)`.
    segments: Vec<SegmentSpec>,
    /// Activation zero point of each part (steps are drawn).
    zeros: Vec<i32>,
    seed: u64,
}

fn parts_of(segments: &[SegmentSpec]) -> usize {
    segments.iter().map(|s| s.3).max().unwrap_or(0) + 1
}

/// Runs `case` on every available instruction set and compares with the reference.
fn check(case: &Case) {
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let taps = match case.geometry {
        Geometry::Conv { kernel, .. } => kernel * kernel,
        Geometry::Linear => 1,
    };
    let wmax = (1u32 << case.wbits) - 1;
    let codes: Vec<u8> = (0..case.cout * case.cin * taps)
        .map(|i| match i % 11 {
            0 => 0,
            1 => wmax as u8,
            _ => rng.gen_range(0..=wmax) as u8,
        })
        .collect();
    let nparts = parts_of(&case.segments);
    let parts: Vec<PartWeight> = (0..nparts)
        .map(|_| PartWeight {
            scale: (0..case.cout)
                .map(|_| rng.gen_range(0.001f32..0.1))
                .collect(),
            zero_point: (0..case.cout)
                .map(|n| match n % 5 {
                    0 => 0,
                    1 => wmax as i32,
                    2 => -3,
                    3 => wmax as i32 + 4,
                    _ => rng.gen_range(0..=wmax as i32),
                })
                .collect(),
        })
        .collect();
    let bias: Vec<f32> = (0..case.cout)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let acts: Vec<ActQuant> = case
        .zeros
        .iter()
        .map(|&z| ActQuant::new(rng.gen_range(0.01f32..0.05), z, case.abits).unwrap())
        .collect();
    let dims: Vec<usize> = match case.geometry {
        Geometry::Conv { .. } => vec![case.batch, case.cin, case.h, case.w],
        Geometry::Linear => vec![case.batch, case.h, case.cin],
    };
    let n: usize = dims.iter().product();
    // Values around every part's representable range, some far outside (clamped codes), some
    // exactly on rounding ties.
    let x: Vec<f32> = (0..n)
        .map(|i| {
            let q = &acts[0];
            let span = q.scale * q.qmax() as f32;
            let lo = -(q.zero_point as f32) * q.scale;
            match i % 13 {
                0 => lo - span,
                1 => lo + 2.0 * span,
                2 => (rng.gen_range(-50i32..50) as f32 + 0.5) * q.scale,
                _ => lo + rng.gen_range(-0.1f32..1.1) * span,
            }
        })
        .collect();
    let layer = IntLayer::new(
        "test",
        case.geometry,
        &codes,
        case.wbits,
        case.cout,
        case.cin,
        &case.segments,
        parts.clone(),
        Some(bias.clone()),
    )
    .unwrap();
    let (ref_ints, ref_out) = reference_forward(
        &codes,
        case.geometry,
        case.cout,
        case.cin,
        &case.segments,
        &parts,
        Some(&bias),
        &x,
        &dims,
        &acts,
    );
    for isa in Isa::available() {
        let (out, ints, out_dims) = layer.forward_with_integers(isa, &x, &dims, &acts).unwrap();
        assert_eq!(out_dims, layer.output_dims(&dims).unwrap());
        assert_eq!(out.len(), out_dims.iter().product::<usize>(), "{isa}");
        if let Some(i) = (0..ints.len()).find(|&i| ints[i] != ref_ints[i]) {
            panic!(
                "{isa}: integer sum {i} is {} but the reference has {} ({case:?})",
                ints[i], ref_ints[i]
            );
        }
        for (i, (a, b)) in out.iter().zip(&ref_out).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{isa}: output {i}: {a} vs {b} ({case:?})"
            );
        }
    }
}

fn conv(kernel: usize, stride: usize, padding: usize) -> Geometry {
    Geometry::Conv {
        kernel,
        stride,
        padding,
    }
}

fn one_part(cin: usize) -> Vec<SegmentSpec> {
    vec![(0, cin, 0, 0)]
}

#[test]
fn the_machine_has_the_paths_it_reports() {
    let avail = Isa::available();
    assert_eq!(avail[0], Isa::Scalar);
    eprintln!("integer kernel paths on this machine: {avail:?}");
    assert!(avail.contains(&Isa::detect().unwrap()) || std::env::var("DMQ_EXEC_ISA").is_ok());
}

#[test]
fn edge_cases_match_the_reference() {
    let mut cases = Vec::new();
    let mut seed = 0;
    // (geometry, cin, cout, h, w)
    let shapes = [
        (conv(3, 1, 1), 3, 5, 7, 5),
        (conv(3, 1, 1), 17, 33, 6, 6),
        (conv(3, 2, 1), 5, 16, 9, 8),
        (conv(3, 2, 1), 32, 32, 8, 8),
        (conv(1, 1, 0), 7, 1, 3, 4),
        (conv(1, 1, 0), 64, 48, 4, 4),
        (conv(1, 2, 0), 9, 20, 5, 5),
        (conv(3, 1, 0), 4, 4, 3, 3),
        (conv(3, 2, 1), 1, 3, 1, 1),
        (conv(5, 1, 2), 6, 18, 5, 7),
        (Geometry::Linear, 13, 29, 3, 0),
        (Geometry::Linear, 128, 64, 20, 0),
    ];
    for (g, cin, cout, h, w) in shapes {
        for (wbits, zeros) in [(8u8, 0i32), (8, 255), (4, 128), (4, -7), (2, 300), (6, 17)] {
            seed += 1;
            cases.push(Case {
                geometry: g,
                batch: 2,
                h,
                w: w.max(1),
                cin,
                cout,
                wbits,
                abits: 8,
                segments: one_part(cin),
                zeros: vec![zeros],
                seed,
            });
        }
    }
    // Split decoder layers: two parts with their own quantizers, halves of odd length.
    for (cin, split) in [(9, 4), (64, 32), (96, 64), (5, 1)] {
        seed += 1;
        cases.push(Case {
            geometry: conv(1, 1, 0),
            batch: 3,
            h: 4,
            w: 3,
            cin,
            cout: 21,
            wbits: 4,
            abits: 8,
            segments: vec![(0, split, 0, 0), (split, cin - split, 0, 1)],
            zeros: vec![3, 250],
            seed,
        });
        seed += 1;
        cases.push(Case {
            geometry: conv(3, 1, 1),
            batch: 1,
            h: 5,
            w: 5,
            cin,
            cout: 16,
            wbits: 8,
            abits: 8,
            segments: vec![(0, split, 0, 0), (split, cin - split, 0, 1)],
            zeros: vec![-20, 270],
            seed,
        });
    }
    // Power-of-two segments (DMQ's PTS): channel groups with shifts 0..3 in one part.
    seed += 1;
    cases.push(Case {
        geometry: conv(3, 1, 1),
        batch: 2,
        h: 4,
        w: 6,
        cin: 19,
        cout: 24,
        wbits: 8,
        abits: 8,
        segments: vec![(0, 5, 3, 0), (5, 6, 0, 0), (11, 4, 1, 0), (15, 4, 2, 0)],
        zeros: vec![40],
        seed,
    });
    // Narrow activations.
    seed += 1;
    cases.push(Case {
        geometry: conv(3, 1, 1),
        batch: 1,
        h: 6,
        w: 6,
        cin: 10,
        cout: 10,
        wbits: 4,
        abits: 4,
        segments: one_part(10),
        zeros: vec![15],
        seed,
    });
    for c in &cases {
        check(c);
    }
}

#[test]
fn many_positions_span_chunks_and_threads() {
    // More positions than one chunk, and a batch, so chunk edges fall inside images.
    check(&Case {
        geometry: conv(3, 1, 1),
        batch: 3,
        h: 16,
        w: 16,
        cin: 24,
        cout: 40,
        wbits: 4,
        abits: 8,
        segments: one_part(24),
        zeros: vec![255],
        seed: 99,
    });
}

#[test]
fn packing_round_trips() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for bits in 2..=8u8 {
        for (cout, cin, taps) in [(1, 1, 1), (17, 5, 9), (33, 70, 1), (16, 4, 9)] {
            let codes: Vec<u8> = (0..cout * cin * taps)
                .map(|_| rng.gen_range(0..(1u32 << bits)) as u8)
                .collect();
            let split = cin / 2;
            let ranges: Vec<SegmentSpec> = if split > 0 {
                vec![(0, split, 0, 0), (split, cin - split, 0, 1)]
            } else {
                vec![(0, cin, 0, 0)]
            };
            let (segs, cp) = layout_segments(&ranges).unwrap();
            let pw = PackedWeight::pack(&codes, bits, cout, cin, taps, segs, cp).unwrap();
            for n in 0..cout {
                for c in 0..cin {
                    for t in 0..taps {
                        assert_eq!(pw.code(n, c, t), codes[(n * cin + c) * taps + t]);
                    }
                }
            }
            let per_value = if bits <= 4 { 0.5 } else { 1.0 };
            let expect = (cout.div_ceil(16) * 16 * cp * taps) as f64 * per_value;
            assert_eq!(pw.storage_bytes() as f64, expect, "bits {bits}");
        }
    }
    // A code too large for its width is refused.
    let (segs, cp) = layout_segments(&[(0, 2, 0, 0)]).unwrap();
    assert!(PackedWeight::pack(&[16, 0], 4, 1, 2, 1, segs, cp).is_err());
}

#[test]
fn int4_weights_take_half_the_bytes_of_int8() {
    let codes = vec![3u8; 64 * 64 * 9];
    let (segs, cp) = layout_segments(&[(0, 64, 0, 0)]).unwrap();
    let w8 = PackedWeight::pack(&codes, 8, 64, 64, 9, segs.clone(), cp).unwrap();
    let w4 = PackedWeight::pack(&codes, 4, 64, 64, 9, segs, cp).unwrap();
    assert_eq!(w8.storage_bytes(), 64 * 64 * 9);
    assert_eq!(w4.storage_bytes(), 64 * 64 * 9 / 2);
}

#[test]
fn quantizer_paths_equal_the_definition() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (scale, z, bits) in [
        (0.013f32, 128, 8u8),
        (0.5, 0, 8),
        (0.07, 255, 8),
        (0.002, -40, 8),
        (1e-4, 1 << 20, 8),
        (0.1, 9, 4),
    ] {
        let q = ActQuant::new(scale, z, bits).unwrap();
        let mut xs: Vec<f32> = (0..4099)
            .map(|_| rng.gen_range(-3.0f32..3.0) * scale * 200.0)
            .collect();
        // Exact ties, infinities, huge values, signed zeros, subnormals.
        xs.extend((-300..300).map(|k| (k as f32 + 0.5) * scale));
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            0.0,
            -0.0,
            1e-40,
        ]);
        let want: Vec<u8> = xs.iter().map(|&x| q.code(x)).collect();
        for isa in Isa::available() {
            let mut got = vec![0u8; xs.len()];
            assert!(!quantize_slice(isa, &xs, &mut got, &q));
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a, b, "{isa}: x = {:e} (Δ {scale}, z {z})", xs[i]);
            }
        }
        let mut out = vec![0u8; 3];
        assert!(quantize_slice(
            Isa::Scalar,
            &[0.0, f32::NAN, 1.0],
            &mut out,
            &q
        ));
    }
}

#[test]
fn bad_inputs_are_errors_naming_the_layer() {
    let codes = vec![1u8; 4 * 3 * 9];
    let parts = vec![PartWeight {
        scale: vec![0.1; 4],
        zero_point: vec![0; 4],
    }];
    let layer = IntLayer::new(
        "down.conv",
        conv(3, 1, 1),
        &codes,
        8,
        4,
        3,
        &one_part(3),
        parts.clone(),
        None,
    )
    .unwrap();
    let q = ActQuant::new(0.1, 3, 8).unwrap();
    let e = layer
        .forward(Isa::Scalar, &[0.0; 10], &[1, 3, 2, 2], &[q])
        .unwrap_err();
    assert!(e.to_string().contains("down.conv"), "{e}");
    let e = layer
        .forward(Isa::Scalar, &[0.0; 16], &[1, 4, 2, 2], &[q])
        .unwrap_err();
    assert!(e.to_string().contains("channels"), "{e}");
    let mut x = vec![0.0; 12];
    x[5] = f32::NAN;
    let e = layer
        .forward(Isa::Scalar, &x, &[1, 3, 2, 2], &[q])
        .unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
    assert!(ActQuant::new(0.0, 0, 8).is_err());
    assert!(ActQuant::new(0.1, 0, 9).is_err());
    // Segments that do not tile the channels, and too-large bit widths, are refused.
    assert!(IntLayer::new(
        "l",
        conv(1, 1, 0),
        &codes[..12],
        8,
        4,
        3,
        &[(0, 2, 0, 0)],
        parts.clone(),
        None
    )
    .is_err());
    assert!(IntLayer::new(
        "l",
        conv(1, 1, 0),
        &codes[..12],
        9,
        4,
        3,
        &one_part(3),
        parts,
        None
    )
    .is_err());
}

fn geometry_strategy() -> impl Strategy<Value = Geometry> {
    prop_oneof![
        (
            prop_oneof![Just(1usize), Just(3), Just(5)],
            1usize..=2,
            any::<bool>()
        )
            .prop_map(|(k, s, pad)| conv(k, s, if pad { k / 2 } else { 0 })),
        Just(Geometry::Linear),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Random shapes, bit widths, zero points and splits.
    #[test]
    fn random_shapes_match_the_reference(
        geometry in geometry_strategy(),
        batch in 1usize..=3,
        h in 1usize..=9,
        w in 1usize..=9,
        cin in 1usize..=40,
        cout in 1usize..=50,
        wbits in 2u8..=8,
        z0 in -30i32..=290,
        z1 in -30i32..=290,
        split in 0usize..=40,
        seed in 0u64..1_000_000,
    ) {
        let (h, w) = match geometry {
            Geometry::Conv { kernel, padding, .. } => {
                // The padded input must hold one kernel.
                let min = kernel.saturating_sub(2 * padding).max(1);
                (h.max(min), w.max(min))
            }
            Geometry::Linear => (h, 1),
        };
        let (segments, zeros) = if split > 0 && split < cin {
            (vec![(0, split, 0, 0), (split, cin - split, 0, 1)], vec![z0, z1])
        } else {
            (one_part(cin), vec![z0])
        };
        check(&Case { geometry, batch, h, w, cin, cout, wbits, abits: 8, segments, zeros, seed });
    }
}
