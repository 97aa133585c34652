// Integer-only kernels for the non-linear operators of a ViT, as the three known integer pipelines
// define them (../docs/quantize.md "Non-linear sites"):
//  - I-BERT (Kim et al. 2021): i-exp, i-softmax, i-GELU (i-erf), integer LayerNorm with an integer
//    square root;
//  - FQ-ViT (Lin et al. 2022): Log-Int-Softmax (i-exp, then a log2 code of sum/exp), and the
//    Power-of-Two-Factor LayerNorm (per-channel power-of-two input scales, a dyadic requantizer);
//  - I-ViT (Li & Gu 2023): shift-exp (base-2 exponent by shifts), Shiftmax, ShiftGELU, and
//    I-LayerNorm (integer square root by fixed Newton steps).
//
// Every kernel takes integers and a scale (real value = value · scale) and returns integers and a
// scale: the values tensors are int64 and every step between input and output is integer
// arithmetic (adds, multiplies, shifts, floor divisions), as an integer kernel would run them.
// Scales are float64 tensors broadcastable against the values; the only float work is deriving the
// integer constants from them, once per call, as the papers do offline.
//
//   IntTensor x{torch::round(scores / s).to(torch::kInt64), torch::tensor(s, torch::kFloat64)};
//   NonlinearOutput p = IBertSoftmax(x, 8);
//   torch::Tensor probs = p.Dequantize();
#ifndef QS_CORE_INTEGER_NONLINEAR_H_
#define QS_CORE_INTEGER_NONLINEAR_H_

#include <torch/types.h>

#include <cstdint>

namespace qs::core {

// Integers with their scale: the real tensor is values · scale.
struct IntTensor {
  torch::Tensor values;  // int64
  torch::Tensor scale;   // float64, broadcastable against values (a 0-d tensor when per tensor)

  torch::Tensor Dequantize() const;  // float32
};

// A kernel's output: a uniform grid (values · scale) or, for FQ-ViT's Log-Int-Softmax, log2 codes
// q with value 2^−q (code 2^bits meaning 0).
struct NonlinearOutput {
  IntTensor out;
  bool log2 = false;  // out.values are exponent codes; out.scale is 1
  int log2_bits = 0;  // with log2: codes 0..2^bits − 1 are values, 2^bits is zero

  torch::Tensor Dequantize() const;  // float32
};

// Kernels throw c10::Error on malformed input (values not int64, out_bits outside 1..16, sizes
// that do not match). `out_bits` is 4..8 in the papers (I-ViT's Shiftmax uses 16).

// ---- I-BERT ----------------------------------------------------------------------------------
// exp(x) for x ≤ 0 (x > 0 saturates at exp(0)): x = −z·ln2 + p with p ∈ (−ln2, 0], exp(p) by
// the second-order polynomial in its code form a·(p² + b·p + c), a = 0.35815147 (the paper's
// 0.3585·(p + 1.353)² + 0.344) on integers, shifted left by (n − z), inputs clamped at
// n·⌊−0.6931/s⌋. n = 30, lowered where exp(0) = ⌊c/s²⌋·2^n would pass 2^62 (s below ≈ 1e−4).
// Output scale a·s²/2^n. Relative error ≲ 0.34% + z·|⌊−0.6931/s⌋·s + ln2| (the period drift).
IntTensor IBertExp(const IntTensor& x);
// Softmax along the last dimension: the row maximum subtracted in integers, i-exp, exponentials
// requantized to unsigned 16 bits (I-BERT's 16-bit QuantAct; here the right shift that brings
// exp(0) under 2^16), then factor = ⌊2^32 / Σ⌋, out = ⌊exp·factor / 2^(32−b)⌋, clamped to
// [0, 2^b − 1]; scale 2^−b (0-d). Every output is a floor: a row sums to at most 1.
NonlinearOutput IBertSoftmax(const IntTensor& x, int out_bits);
// GELU(x) ≈ x/2·(1 + erf(x/√2)), erf by sgn(u)·[a(min(|u|, −b) + b)² + 1], a = −0.2888,
// b = −1.769, on integers at scale s/1.4142, right-shifted by 14. Output x·(erf + ⌊1/s_erf⌋) at
// scale s·|s_erf|/2 > 0 (I-BERT's scale is negative, as a < 0: values and scale are both
// negated here, the same reals). Meant for a fine input scale (I-BERT feeds it the int32
// accumulator): the erf keeps ≈ 1/s_erf = 2^−14·(1.4142/s)²/0.2888 levels, few above s ≈ 1e−2.
NonlinearOutput IBertGelu(const IntTensor& x);
// ⌊√n⌋ for n ≥ 0 (int64, any shape; 0 for 0) by I-BERT's Newton iteration from 2^⌈bits(n)/2⌉,
// each element stopping when it no longer decreases.
torch::Tensor IntegerSqrt(const torch::Tensor& n);
// LayerNorm over the last dimension with affine `gamma`, `beta` (float [C]): integer mean
// (rounded, halves up), centred values y, variance Σy² with y right-shifted by the least shift
// (per row) that keeps it below 2^32, isqrt, factor ⌊2^31/std⌋, output y·factor/2 at scale
// √C/2^30, then the affine folded: bias ⌊(β/γ)/scale⌋ added in integers and the scale
// multiplied by γ: out.scale is per channel, float64 [C]. |γ| < 1e−6 is taken as ±1e−6 (a zero γ
// would make the folded bias infinite). At a coarse input step the rounded mean dominates the
// error (up to s/2 off centre).
NonlinearOutput IBertLayerNorm(const IntTensor& x, const torch::Tensor& gamma,
                               const torch::Tensor& beta);

// ---- FQ-ViT ----------------------------------------------------------------------------------
// Log-Int-Softmax along the last dimension: I-BERT's i-exp for the numerator (n lowered from 30
// where the row sum would pass 2^62), the integer sum, r = round(Σ/exp) in integers and its
// log2 rounded (⌊log2 r⌋, +1 when r − 2^⌊log2 r⌋ ≥ 2^(⌊log2 r⌋−1)); codes clamped to [0, 2^b]
// with 2^b meaning zero. out.scale is 1 (0-d), log2 = true, log2_bits = b.
NonlinearOutput LogIntSoftmax(const IntTensor& x, int out_bits);
// The Power-of-Two-Factor input of a LayerNorm: uint codes with one layer-wise zero point and a
// per-channel exponent α_c ∈ {0..3}: x ≈ (codes − zero_point)·scale·2^α_c. `scale` is the
// finest step, s/8 for FQ-ViT's layer-wise min-max step s: α_c = 3 is the layer-wise grid, and
// the channel steps are s/8, s/4, s/2, s.
struct PtfInput {
  torch::Tensor codes;     // int64 [..., C], within [0, 2^bits − 1]
  torch::Tensor alpha;     // int64 [C], in 0..3
  double scale = 1;        // the finest step s/8 (s_c = scale·2^α_c)
  int64_t zero_point = 0;  // shared by all channels: qmin − round(min/s), within [0, 2^bits − 1]
  int bits = 8;
};
// Fits a PTF input quantizer on calibration values `x` ([..., C]) at `bits` (2..16): the
// layer-wise min-max step s = (max − min)/(2^b − 1) (at least float32's epsilon) and zero point,
// then per channel the α_c whose step s·2^α_c/8 gives the lowest squared error on that channel,
// ties going to the finer step (α = 3 everywhere is the layer-wise grid). Returns the
// quantizer's parameters with `codes` undefined.
PtfInput FitPtf(const torch::Tensor& x, int bits);
// Codes of `x` under a fitted PTF quantizer (the returned copy's codes are set).
PtfInput QuantizePtf(const torch::Tensor& x, const PtfInput& fitted);
// x̂ of a PTF input (float32).
torch::Tensor DequantizePtf(const PtfInput& in);
// LayerNorm on PTF codes: channels aligned by (codes − zp) << α_c, integer sums Σx and Σx²,
// σ = isqrt(C·Σx² − (Σx)²) (C·std in finest steps), then each output requantized to the uniform
// grid (`out_scale`, `out_zero_point`, `out_bits`, unsigned) by the dyadic multiplier M·2^−N of
// A = C·γ/(σ·out_scale) (N = clamp(7 − ⌊log2 A⌋, 0, 31), M = clamp(⌊A·2^N⌋, 0, 255)) and the
// integer bias B = round(β·2^N/out_scale) − round(sgn γ·M·Σx/C): q = round((sgn γ·M·x + B)/2^N)
// (halves up). FQ-ViT derives M, N, B per token in floats; here they come from integers (bit
// lengths, floor divisions by σ) and fixed-point constants of γ and β, and B uses M where
// FQ-ViT's uses A, so the mean goes with the same multiplier. out.values = code − out_zero_point
// with code = clamp(q + out_zero_point, 0, 2^out_bits − 1); out.scale = out_scale (0-d).
NonlinearOutput PtfLayerNorm(const PtfInput& x, const torch::Tensor& gamma,
                             const torch::Tensor& beta, double out_scale, int64_t out_zero_point,
                             int out_bits);

// ---- I-ViT -----------------------------------------------------------------------------------
// 2^(x·log2 e) for x ≤ 0 (x > 0 saturates at 1) with x·log2 e ≈ x + (x >> 1) − (x >> 4),
// x0 = ⌊−1/s⌋, quotient and remainder by x0, the linear 2^(r·s) ≈ r/2 − x0, shifted by (n − q)
// and floored; inputs clamped at n·x0. `n` in 0..40. Output scale s/2^n. Relative error ≈ 14%
// at worst on [−20, 0] (crude by design), more where ⌊−1/s⌋·s drifts from −1 (coarse s).
IntTensor ShiftExp(const IntTensor& x, int n);
// Shiftmax along the last dimension: row maximum subtracted, ShiftExp (n = 15), Σ clamped to
// 2^31 − 1, factor = ⌊(2^31 − 1)/Σ⌋, out = ⌊e·factor / 2^(31 − b + 1)⌋, clamped to
// [0, 2^(b−1)] (b unsigned bits); scale 2^−(b−1) (0-d). As in I-ViT, Σ must stay within int32:
// exp(0) is ≈ 2^15/s, so a row of C logits wants s ≳ C·2^−16 (an 8-bit input step).
NonlinearOutput Shiftmax(const IntTensor& x, int out_bits);
// ShiftGELU: x·σ(1.702x), σ(z) = e^(z−m)/(e^(z−m) + e^(−m)) with m = max(0, the row's maximum
// of z) (I-ViT takes the row maximum; the two differ only for rows whose maximum is negative),
// both by ShiftExp (n = 23) and I-ViT's divider as in Shiftmax, σ clamped to [0, 2^(b−1)];
// output x·σ at scale s·2^−(b−1). Rows are the last dimension. Made for an 8-bit input:
// ⌊(2^31 − 1)/Σ⌋ has only ≈ 2^8·1.702·s levels near σ = 1 (19 at s = 6/127, a ≈5% error in σ
// for large x); below s ≈ 1/436 exp(0) passes int32 and Σ clamps.
NonlinearOutput ShiftGelu(const IntTensor& x, int out_bits);
// I-LayerNorm: as I-BERT's without the variance shift (Σy² must stay below 2^62), with the square
// root by 10 fixed Newton steps from 2^16 (exact for 2^16 ≤ Σy² < 2^44, an over-estimate
// outside) and the factor ⌊(2^31 − 1)/std⌋.
NonlinearOutput IvitLayerNorm(const IntTensor& x, const torch::Tensor& gamma,
                              const torch::Tensor& beta);

}  // namespace qs::core

#endif  // QS_CORE_INTEGER_NONLINEAR_H_
