//! Seeded gaussian noise whose value for one image does not depend on the batch it is made in.
//!
//! Every (seed, image index, purpose) triple has its own ChaCha8 stream: the 32-byte ChaCha key
//! is `seed ‖ image index ‖ purpose ‖ tag` (each a little-endian u64), and the stream is read
//! from its start. Image 3 of a run therefore gets the same initial latent and the same noise at
//! step k whether it is generated alone, in a batch of 4, or on another machine. This layout is
//! a compatibility contract: changing it changes every generated image.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::error::Result;

/// Domain tag in the last word of the key, so that these streams never coincide with ChaCha8
/// streams that other code might derive from the same seed.
const TAG: u64 = u64::from_le_bytes(*b"dmqnoise");

/// What a stream of noise is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoisePurpose {
    /// The initial sample x_T.
    Initial,
    /// The noise the scheduler adds at step `k` (the index into its timestep list).
    Step(usize),
}

impl NoisePurpose {
    fn code(self) -> u64 {
        match self {
            NoisePurpose::Initial => 0,
            NoisePurpose::Step(k) => k as u64 + 1,
        }
    }
}

/// Deterministic f32 standard normals, one independent stream per image and purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoiseSource {
    seed: u64,
}

impl NoiseSource {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The random generator of one image and purpose, positioned at its first value.
    pub fn rng(&self, image: usize, purpose: NoisePurpose) -> ChaCha8Rng {
        let mut key = [0u8; 32];
        key[0..8].copy_from_slice(&self.seed.to_le_bytes());
        key[8..16].copy_from_slice(&(image as u64).to_le_bytes());
        key[16..24].copy_from_slice(&purpose.code().to_le_bytes());
        key[24..32].copy_from_slice(&TAG.to_le_bytes());
        ChaCha8Rng::from_seed(key)
    }

    /// The first `len` standard normals of one image's stream.
    pub fn values(&self, image: usize, purpose: NoisePurpose, len: usize) -> Vec<f32> {
        let mut rng = self.rng(image, purpose);
        (0..len)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect()
    }

    /// A `[images.len(), ...shape]` f32 tensor whose row `b` is the noise of image `images[b]`.
    pub fn tensor(
        &self,
        purpose: NoisePurpose,
        images: &[usize],
        shape: &[usize],
        device: &Device,
    ) -> Result<Tensor> {
        let per_image: usize = shape.iter().product();
        let mut data = Vec::with_capacity(per_image * images.len());
        for &image in images {
            data.extend(self.values(image, purpose, per_image));
        }
        let mut dims = Vec::with_capacity(shape.len() + 1);
        dims.push(images.len());
        dims.extend_from_slice(shape);
        Ok(Tensor::from_vec(data, dims, device)?)
    }

    /// The initial sample x_T of the given images: `[B, ...shape]` (e.g. shape = `[C, H, W]`).
    pub fn initial(&self, images: &[usize], shape: &[usize], device: &Device) -> Result<Tensor> {
        self.tensor(NoisePurpose::Initial, images, shape, device)
    }

    /// The noise that step `step_index` adds to the given images: `[B, ...shape]`.
    pub fn step_noise(
        &self,
        step_index: usize,
        images: &[usize],
        shape: &[usize],
        device: &Device,
    ) -> Result<Tensor> {
        self.tensor(NoisePurpose::Step(step_index), images, shape, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHW: [usize; 3] = [3, 8, 8];

    fn vals(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn same_seed_gives_identical_noise() {
        let a = NoiseSource::new(42)
            .initial(&[0, 1, 2], &CHW, &Device::Cpu)
            .unwrap();
        let b = NoiseSource::new(42)
            .initial(&[0, 1, 2], &CHW, &Device::Cpu)
            .unwrap();
        assert_eq!(a.dims(), &[3, 3, 8, 8]);
        assert_eq!(vals(&a), vals(&b));
    }

    #[test]
    fn image_is_independent_of_its_batch() {
        let ns = NoiseSource::new(7);
        for purpose in [NoisePurpose::Initial, NoisePurpose::Step(5)] {
            let batch = ns
                .tensor(purpose, &[0, 1, 2, 3], &CHW, &Device::Cpu)
                .unwrap();
            let alone = ns.tensor(purpose, &[3], &CHW, &Device::Cpu).unwrap();
            let row3 = batch.get(3).unwrap().unsqueeze(0).unwrap();
            assert_eq!(vals(&row3), vals(&alone));
            // and in another batch, at another position
            let other = ns.tensor(purpose, &[9, 3], &CHW, &Device::Cpu).unwrap();
            assert_eq!(vals(&other.get(1).unwrap()), vals(&alone));
        }
    }

    #[test]
    fn seeds_images_and_purposes_differ() {
        let n = 3 * 8 * 8;
        let base = NoiseSource::new(1).values(0, NoisePurpose::Initial, n);
        let others = [
            NoiseSource::new(2).values(0, NoisePurpose::Initial, n),
            NoiseSource::new(1).values(1, NoisePurpose::Initial, n),
            NoiseSource::new(1).values(0, NoisePurpose::Step(0), n),
            NoiseSource::new(1).values(0, NoisePurpose::Step(1), n),
        ];
        for o in &others {
            let same = base.iter().zip(o).filter(|(a, b)| a == b).count();
            assert_eq!(same, 0, "streams should share no values");
        }
        // step_noise is the Step purpose
        let s = NoiseSource::new(1)
            .step_noise(1, &[0], &CHW, &Device::Cpu)
            .unwrap();
        assert_eq!(vals(&s), others[3]);
    }

    #[test]
    fn moments_are_standard_normal() {
        let n = 100_000;
        let v = NoiseSource::new(123).values(0, NoisePurpose::Initial, n);
        let nf = n as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / nf;
        let m = |k: i32| v.iter().map(|&x| (x as f64 - mean).powi(k)).sum::<f64>() / nf;
        let var = m(2);
        let skew = m(3) / var.powf(1.5);
        let kurt = m(4) / (var * var);
        // standard errors: mean 1/√n ≈ 0.0032, var √(2/n) ≈ 0.0045, skew √(6/n) ≈ 0.0077,
        // kurtosis √(24/n) ≈ 0.015; the bounds are about 5 standard errors.
        assert!(mean.abs() < 0.016, "mean {mean}");
        assert!((var - 1.0).abs() < 0.023, "variance {var}");
        assert!(skew.abs() < 0.04, "skewness {skew}");
        assert!((kurt - 3.0).abs() < 0.08, "kurtosis {kurt}");
        let within_1 = v.iter().filter(|x| x.abs() < 1.0).count() as f64 / nf;
        assert!(
            (within_1 - 0.682_689).abs() < 0.008,
            "P(|x|<1) = {within_1}"
        );
    }
}
