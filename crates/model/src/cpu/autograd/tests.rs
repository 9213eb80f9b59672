//! Each fused f32 op against the model's own composite function it replaces (`ops/composite.rs`,
//! the path every other device takes), the composite side computed in f64 from the same values:
//! forward values to 1e-5 and every input gradient to 1e-4.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::ops::composite;

/// The same random values as an f32 variable (for the fused op) and an f64 one (for the
/// composite reference).
struct Input {
    f32: Var,
    f64: Var,
}

fn input(shape: &[usize], seed: u64) -> Input {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    let t = Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
    Input { f32: Var::from_tensor(&t).unwrap(), f64: Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap() }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// A fixed random weighting of the output, so the gradient is not the same in every element.
fn weigh(y: &Tensor, seed: u64) -> Tensor {
    let w = input(y.dims(), seed).f64;
    (y.to_dtype(DType::F64).unwrap() * w.as_tensor()).unwrap().sum_all().unwrap()
}

/// Checks the values of `fused` (f32) against `composite` (f64), and the gradients of every
/// input.
fn check(inputs: &[&Input], fused: &Tensor, composite: &Tensor, what: &str) {
    assert_eq!(fused.dtype(), DType::F32, "{what}");
    let d = max_diff(fused, composite);
    assert!(d <= 1e-5, "{what}: forward differs by {d}");
    let gf = weigh(fused, 99).backward().unwrap();
    let gc = weigh(composite, 99).backward().unwrap();
    for (i, x) in inputs.iter().enumerate() {
        let (a, b) = (gf.get(x.f32.as_tensor()).unwrap(), gc.get(x.f64.as_tensor()).unwrap());
        let d = max_diff(a, b);
        assert!(d <= 1e-4, "{what}: gradient of input {i} differs by {d}");
    }
}

#[test]
fn rms_norm_matches_composite() {
    let (x, w) = (input(&[3, 5, 16], 1), input(&[16], 2));
    let f = rms_norm(x.f32.as_tensor(), w.f32.as_tensor(), 1e-6).unwrap();
    let c = composite::rms_norm(x.f64.as_tensor(), w.f64.as_tensor(), 1e-6).unwrap();
    check(&[&x, &w], &f, &c, "rms_norm");
}

#[test]
fn rope_matches_composite() {
    let (b, t, h, d) = (2, 5, 3, 8);
    let x = input(&[b, t, h, d], 3);
    let (cos, sin) = (input(&[b, 1, t, d], 4), input(&[b, 1, t, d], 5));
    let f = rope_transposed(x.f32.as_tensor(), cos.f32.as_tensor(), sin.f32.as_tensor()).unwrap();
    assert_eq!(f.dims(), &[b, h, t, d]);
    let c = composite::rope_transposed(x.f64.as_tensor(), cos.f64.as_tensor(), sin.f64.as_tensor()).unwrap();
    check(&[&x], &f, &c, "rope");
}

/// A causal mask with padding, as `transformer.rs` builds it (−1e30 where masked), with one
/// fully masked query row (a left-padded position).
fn attention_bias(b: usize, t: usize, s: usize) -> Tensor {
    let mut bias = vec![0.0f32; b * t * s];
    for bi in 0..b {
        for ti in 0..t {
            for si in 0..s {
                if si > ti + 2 || (bi == 1 && si == 0) || (bi == 0 && ti == 0) {
                    bias[(bi * t + ti) * s + si] = -1e30;
                }
            }
        }
    }
    Tensor::from_vec(bias, (b, 1, t, s), &Device::Cpu).unwrap()
}

#[test]
fn masked_softmax_matches_composite() {
    let (b, h, t, s) = (2, 3, 4, 6);
    let x = input(&[b, h, t, s], 6);
    let bias = attention_bias(b, t, s);
    let scale = 0.35;
    let f = masked_softmax(x.f32.as_tensor(), &bias, scale).unwrap();
    let c = composite::masked_softmax(x.f64.as_tensor(), &bias.to_dtype(DType::F64).unwrap(), scale).unwrap();
    check(&[&x], &f, &c, "masked_softmax");
}

#[test]
fn swiglu_matches_composite() {
    let (a, u) = (input(&[4, 7, 33], 7), input(&[4, 7, 33], 8));
    let f = swiglu(a.f32.as_tensor(), u.f32.as_tensor()).unwrap();
    let c = composite::swiglu(a.f64.as_tensor(), u.f64.as_tensor()).unwrap();
    check(&[&a, &u], &f, &c, "swiglu");
}

#[test]
fn gather_logprobs_matches_composite() {
    let (n, v) = (9, 40);
    let z = input(&[n, v], 9);
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..v as u32)).collect();
    let ids = Tensor::from_vec(ids, n, &Device::Cpu).unwrap();
    let f = gather_logprobs(z.f32.as_tensor(), &ids).unwrap();
    let c = composite::gather_logprobs(z.f64.as_tensor(), &ids).unwrap();
    check(&[&z], &f, &c, "gather_logprobs");
}

#[test]
fn gather_logprobs_rejects_out_of_vocabulary_targets() {
    let z = input(&[2, 4], 11);
    let ids = Tensor::new(&[1u32, 4], &Device::Cpu).unwrap();
    let e = gather_logprobs(z.f32.as_tensor(), &ids).unwrap_err().to_string();
    assert!(e.contains("target id 4") && e.contains("vocabulary of 4"), "{e}");
}

#[test]
fn other_dtypes_are_refused_by_name() {
    let x = input(&[2, 4], 12);
    let e = rms_norm(x.f64.as_tensor(), &x.f64.as_tensor().narrow(0, 0, 1).unwrap().squeeze(0).unwrap(), 1e-6)
        .unwrap_err()
        .to_string();
    assert!(e.contains("aha-rms-norm") && e.contains("f32 only"), "{e}");
}

#[test]
fn large_inputs_split_over_threads_agree() {
    // Big enough that every kernel runs in several rayon tasks.
    let (x, w) = (input(&[64, 40, 256], 12), input(&[256], 13));
    let f = rms_norm(x.f32.as_tensor(), w.f32.as_tensor(), 1e-5).unwrap();
    let c = composite::rms_norm(x.f64.as_tensor(), w.f64.as_tensor(), 1e-5).unwrap();
    check(&[&x, &w], &f, &c, "rms_norm (large)");
}

#[test]
fn row_entropy_matches_composite() {
    let z = input(&[7, 30], 14);
    let f = row_entropy(z.f32.as_tensor()).unwrap();
    let c = composite::row_entropy(z.f64.as_tensor()).unwrap();
    let d = max_diff(&f, &c);
    assert!(d <= 1e-5, "entropy differs by {d}");
}
