//! Bit packing of integer codes: layouts by hand, round trips for every bit width, errors.

use candle_core::{Device, Tensor};
use dmq_quant::pack::{pack, packed_len, unpack};
use dmq_quant::uniform::{QuantError, UniformParams};

mod common;
use common::Rng;

#[test]
fn int4_layout_low_nibble_first() {
    assert_eq!(pack(&[1, 2, 3], 4).unwrap(), vec![0x21, 0x03]);
    assert_eq!(unpack(&[0x21, 0x03], 4, 3).unwrap(), vec![1, 2, 3]);
}

#[test]
fn other_layouts_by_hand() {
    // 2 bits: 1 | 2<<2 | 3<<4 | 0<<6 = 0x39, then 1.
    assert_eq!(pack(&[1, 2, 3, 0, 1], 2).unwrap(), vec![0x39, 0x01]);
    // 3 bits: 5 at bits 0-2, 3 at bits 3-5, 7 at bits 6-8 (straddles): 5 + 3*8 + (7&3)*64 = 0xDD,
    // then 7>>2 = 1.
    assert_eq!(pack(&[5, 3, 7], 3).unwrap(), vec![0xDD, 0x01]);
    // 5 bits: 31 at 0-4, 1 at 5-9 → byte0 = 31 | (1<<5) = 0x3F, byte1 = 0.
    assert_eq!(pack(&[31, 1], 5).unwrap(), vec![0x3F, 0x00]);
    // 8 bits: identity.
    assert_eq!(pack(&[0, 7, 255], 8).unwrap(), vec![0, 7, 255]);
    assert_eq!(unpack(&[0xDD, 0x01], 3, 3).unwrap(), vec![5, 3, 7]);
}

#[test]
fn packed_lengths() {
    assert_eq!(packed_len(0, 4), 0);
    assert_eq!(packed_len(1, 2), 1);
    assert_eq!(packed_len(3, 4), 2);
    assert_eq!(packed_len(8, 3), 3);
    assert_eq!(packed_len(9, 3), 4);
    assert_eq!(packed_len(7, 7), 7);
    assert_eq!(packed_len(5, 8), 5);
}

#[test]
fn round_trip_every_bit_width_odd_lengths() {
    let mut rng = Rng(12345);
    for bits in 2u8..=8 {
        let max = (1u16 << bits) - 1;
        for len in [0usize, 1, 2, 3, 5, 7, 9, 13, 101, 1001, 4099] {
            let codes: Vec<u8> = (0..len)
                .map(|_| (rng.next_u64() % (u64::from(max) + 1)) as u8)
                .collect();
            let packed = pack(&codes, bits).unwrap();
            assert_eq!(packed.len(), packed_len(len, bits), "bits {bits} len {len}");
            assert_eq!(
                unpack(&packed, bits, len).unwrap(),
                codes,
                "bits {bits} len {len}"
            );
        }
        // The extreme codes survive too.
        let edge = vec![max as u8, 0, max as u8, max as u8, 0];
        assert_eq!(unpack(&pack(&edge, bits).unwrap(), bits, 5).unwrap(), edge);
    }
}

#[test]
fn rejects_codes_that_do_not_fit() {
    match pack(&[1, 15, 16], 4) {
        Err(QuantError::CodeOutOfRange {
            index: 2,
            code: 16,
            bits: 4,
            max: 15,
        }) => {}
        other => panic!("expected CodeOutOfRange, got {other:?}"),
    }
    assert!(pack(&[4], 2).is_err());
    assert!(pack(&[3], 2).is_ok());
}

#[test]
fn rejects_bad_bit_widths_and_lengths() {
    assert!(matches!(pack(&[0], 1), Err(QuantError::UnsupportedBits(1))));
    assert!(matches!(pack(&[0], 9), Err(QuantError::UnsupportedBits(9))));
    assert!(matches!(
        unpack(&[0], 0, 1),
        Err(QuantError::UnsupportedBits(0))
    ));
    match unpack(&[0x21, 0x03, 0x00], 4, 3) {
        Err(QuantError::PackedLength {
            got: 3,
            expected: 2,
            len: 3,
            bits: 4,
        }) => {}
        other => panic!("expected PackedLength, got {other:?}"),
    }
    assert!(unpack(&[0x21], 4, 3).is_err());
    // Padding bits must be zero: 3 codes of 4 bits leave the high nibble of byte 1 unused.
    assert!(matches!(
        unpack(&[0x21, 0x13], 4, 3),
        Err(QuantError::NonZeroPadding { .. })
    ));
    let msg = unpack(&[0x21], 4, 3).unwrap_err().to_string();
    assert!(
        msg.contains("1 bytes") && msg.contains("take 2 bytes"),
        "{msg}"
    );
}

#[test]
fn quantized_tensor_survives_packing() {
    let mut rng = Rng(7);
    let vals: Vec<f32> = (0..4 * 33)
        .map(|_| (rng.next_u64() % 10_000) as f32 / 5000.0 - 1.0)
        .collect();
    let w = Tensor::from_vec(vals, (4, 33), &Device::Cpu).unwrap();
    for bits in [3u8, 4, 8] {
        let p = UniformParams::init_minmax(&w, bits, Some(0)).unwrap();
        let codes = p.quantize_codes(&w).unwrap();
        let flat: Vec<u8> = codes.flatten_all().unwrap().to_vec1().unwrap();
        let back = unpack(&pack(&flat, bits).unwrap(), bits, flat.len()).unwrap();
        let codes2 = Tensor::from_vec(back, (4, 33), &Device::Cpu).unwrap();
        let deq: Vec<f32> = p
            .dequantize(&codes2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let fq: Vec<f32> = p
            .fake_quant(&w)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(deq, fq, "bits {bits}");
    }
}
