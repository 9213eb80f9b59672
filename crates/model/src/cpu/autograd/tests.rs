//! Each fused kernel against the model's own composite function it replaces
//! (`ops/composite.rs`, the path every other device takes): values and every gradient, in f64
//! (to 1e-10) and f32 (to 1e-5).

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::ops::composite;

fn randn(shape: &[usize], dtype: DType, seed: u64) -> Var {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    let t = Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
    Var::from_tensor(&t).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn tol(dtype: DType) -> f64 {
    if dtype == DType::F64 {
        1e-10
    } else {
        1e-5
    }
}

/// A fixed random weighting of the output, so the gradient is not the same in every element.
fn weigh(y: &Tensor, seed: u64) -> Tensor {
    let w = randn(y.dims(), y.dtype(), seed);
    (y * w.as_tensor()).unwrap().sum_all().unwrap()
}

/// Checks values and the gradients of `vars` of `fused` against `composite`.
fn check(vars: &[&Var], fused: &Tensor, composite: &Tensor, what: &str) {
    let dtype = fused.dtype();
    let d = max_diff(fused, composite);
    assert!(d <= tol(dtype), "{what}: forward differs by {d}");
    let gf = weigh(fused, 99).backward().unwrap();
    let gc = weigh(composite, 99).backward().unwrap();
    for (i, v) in vars.iter().enumerate() {
        let (a, b) = (gf.get(v.as_tensor()).unwrap(), gc.get(v.as_tensor()).unwrap());
        let d = max_diff(a, b);
        assert!(d <= tol(dtype) * 10.0, "{what}: gradient of input {i} differs by {d}");
    }
}

#[test]
fn rms_norm_matches_composite() {
    for dtype in [DType::F64, DType::F32] {
        let x = randn(&[3, 5, 16], dtype, 1);
        let w = randn(&[16], dtype, 2);
        let f = rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
        let c = composite::rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
        check(&[&x, &w], &f, &c, "rms_norm");
    }
}

#[test]
fn rope_matches_composite() {
    for dtype in [DType::F64, DType::F32] {
        let (b, t, h, d) = (2, 5, 3, 8);
        let x = randn(&[b, t, h, d], dtype, 3);
        let cos = randn(&[b, 1, t, d], dtype, 4);
        let sin = randn(&[b, 1, t, d], dtype, 5);
        let f = rope_transposed(x.as_tensor(), cos.as_tensor(), sin.as_tensor()).unwrap();
        assert_eq!(f.dims(), &[b, h, t, d]);
        let c = composite::rope_transposed(x.as_tensor(), cos.as_tensor(), sin.as_tensor()).unwrap();
        check(&[&x], &f, &c, "rope");
    }
}

#[test]
fn masked_softmax_matches_composite() {
    for dtype in [DType::F64, DType::F32] {
        let (b, h, t, s) = (2, 3, 4, 6);
        let x = randn(&[b, h, t, s], dtype, 6);
        // A causal mask with padding, as `attention_bias` builds it (−1e30 where masked).
        let mut bias = vec![0.0f64; b * t * s];
        for bi in 0..b {
            for ti in 0..t {
                for si in 0..s {
                    if si > ti + 2 || (bi == 1 && si == 0) {
                        bias[(bi * t + ti) * s + si] = -1e30;
                    }
                }
            }
        }
        let bias = Tensor::from_vec(bias, (b, 1, t, s), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let scale = 0.35;
        let f = masked_softmax(x.as_tensor(), &bias, scale).unwrap();
        let c = composite::masked_softmax(x.as_tensor(), &bias, scale).unwrap();
        check(&[&x], &f, &c, "masked_softmax");
    }
}

#[test]
fn swiglu_matches_composite() {
    for dtype in [DType::F64, DType::F32] {
        let a = randn(&[4, 7, 33], dtype, 7);
        let u = randn(&[4, 7, 33], dtype, 8);
        let f = swiglu(a.as_tensor(), u.as_tensor()).unwrap();
        let c = composite::swiglu(a.as_tensor(), u.as_tensor()).unwrap();
        check(&[&a, &u], &f, &c, "swiglu");
    }
}

#[test]
fn gather_logprobs_matches_composite() {
    for dtype in [DType::F64, DType::F32] {
        let (n, v) = (9, 40);
        let z = randn(&[n, v], dtype, 9);
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..v as u32)).collect();
        let ids = Tensor::from_vec(ids, n, &Device::Cpu).unwrap();
        let f = gather_logprobs(z.as_tensor(), &ids).unwrap();
        let c = composite::gather_logprobs(z.as_tensor(), &ids).unwrap().to_dtype(f.dtype()).unwrap();
        check(&[&z], &f, &c, "gather_logprobs");
    }
}

#[test]
fn gather_logprobs_rejects_out_of_vocabulary_targets() {
    let z = randn(&[2, 4], DType::F32, 11);
    let ids = Tensor::new(&[1u32, 4], &Device::Cpu).unwrap();
    let e = gather_logprobs(z.as_tensor(), &ids).unwrap_err().to_string();
    assert!(e.contains("target id 4") && e.contains("vocabulary of 4"), "{e}");
}

#[test]
fn large_inputs_split_over_threads_agree() {
    // Big enough that every kernel runs in several rayon tasks.
    let x = randn(&[64, 40, 256], DType::F64, 12);
    let w = randn(&[256], DType::F64, 13);
    let f = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
    let c = composite::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
    check(&[&x, &w], &f, &c, "rms_norm (large)");
}

#[test]
fn row_entropy_matches_composite() {
    for dtype in [DType::F64, DType::F32] {
        let z = randn(&[7, 30], dtype, 14);
        let f = row_entropy(z.as_tensor()).unwrap();
        let c = composite::row_entropy(z.as_tensor()).unwrap();
        let d = max_diff(&f, &c);
        assert!(d <= tol(dtype), "entropy differs by {d}");
    }
}
