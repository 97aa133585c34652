#include "core/integer_nonlinear.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace qs::core {
namespace {

using torch::Tensor;

// I-BERT's i-exp, in its code form (same curve as the paper's 0.3585(p + 1.353)² + 0.344):
// exp(p) ≈ a·(p² + b·p + c) on p ∈ (−ln2, 0].
constexpr double kExpA = 0.35815147;
constexpr double kExpB = 0.96963238 / kExpA;
constexpr double kExpC = 1.0 / kExpA;
constexpr double kExpX0 = -0.6931;  // −ln2 as the reference rounds it
constexpr int64_t kIBertExpN = 30;
// I-BERT's i-erf: sgn(u)·[a(min(|u|, −b) + b)² + 1], evaluated on u = x/√2 (k = 1.4142).
constexpr double kErfA = -0.2888;
constexpr double kErfB = -1.769;
constexpr double kErfC = 1.0 / kErfA;
constexpr double kGeluK = 1.4142;
constexpr int64_t kErfShift = 14;
constexpr int64_t kShiftmaxN = 15;
constexpr int64_t kShiftGeluN = 23;
constexpr double kShiftGeluSlope = 1.702;
constexpr int kPtfK = 3;
// |γ| below this is taken as ±kMinGamma where γ divides the bias: a zero γ would make the folded
// bias of the LayerNorms infinite.
constexpr double kMinGamma = 1e-6;

Tensor I64(const Tensor& t) { return t.to(torch::kInt64); }
Tensor F64(const Tensor& t) { return t.to(torch::kFloat64); }
Tensor Scalar64(double v) { return torch::tensor(v, torch::kFloat64); }

Tensor FloorDiv(const Tensor& a, const Tensor& b) { return at::div(a, b, "floor"); }
Tensor FloorDiv(const Tensor& a, int64_t b) { return at::div(a, b, "floor"); }

// 2^k for an int64 tensor k in [0, 62].
Tensor Pow2(const Tensor& k) { return at::bitwise_left_shift(at::ones_like(k), k); }

// round(v / d) for d ≥ 1, halves rounded up: one floor division, as a kernel would do it.
Tensor RoundDiv(const Tensor& v, const Tensor& d) { return FloorDiv(v + FloorDiv(d, 2), d); }
Tensor RoundDiv(const Tensor& v, int64_t d) { return FloorDiv(v + d / 2, d); }

// Number of bits of n ≥ 0 (0 for 0): a binary search over shifts, i.e. a leading-zero count.
Tensor BitLength(const Tensor& n) {
  Tensor bits = at::zeros_like(n);
  for (int64_t step : {32, 16, 8, 4, 2, 1}) {
    Tensor more = I64(at::bitwise_right_shift(n, bits + step) > 0);
    bits = bits + more * step;
  }
  return bits + I64(at::bitwise_right_shift(n, bits) > 0);
}

int64_t BitLength(int64_t n) {
  int64_t bits = 0;
  while (n > 0) {
    ++bits;
    n >>= 1;
  }
  return bits;
}

void CheckInt(const IntTensor& x, const char* what) {
  TORCH_CHECK(x.values.defined() && x.values.scalar_type() == torch::kInt64, what,
              ": values must be int64");
  TORCH_CHECK(x.scale.defined(), what, ": scale is undefined");
  TORCH_CHECK(x.values.dim() >= 1, what, ": values need a last dimension");
}

void CheckBits(int bits, const char* what) {
  TORCH_CHECK(bits >= 1 && bits <= 16, what, ": out_bits must be in 1..16, got ", bits);
}

// The i-exp constants for a scale: x0 = ⌊−ln2/s⌋, b = ⌊b'/s⌋, c = ⌊c'/s²⌋.
struct ExpConstants {
  Tensor x0, b, c;
};

ExpConstants IBertExpConstants(const Tensor& s) {
  return {I64(torch::floor(kExpX0 / s)), I64(torch::floor(kExpB / s)),
          I64(torch::floor(kExpC / (s * s)))};
}

// The largest n ≤ 30 for which c·2^n times 2^extra_bits stays below 2^62: exp(0) is exactly
// c·2^n, so the exponentials (and their sums over 2^extra_bits terms) cannot overflow. I-BERT's
// n = 30 holds for scales down to about 1e−4 with no headroom needed.
int64_t IBertExpShift(const ExpConstants& k, int64_t extra_bits) {
  const int64_t c_max = k.c.max().item<int64_t>();
  const int64_t n = std::min<int64_t>(kIBertExpN, 62 - BitLength(c_max) - extra_bits);
  TORCH_CHECK(n >= 0, "i-exp: input scale too fine for int64 (c_int = ", c_max, ")");
  return n;
}

// The i-exp of x ≤ 0 (positive inputs saturate at exp(0)) with a chosen n.
Tensor IBertExpValues(const Tensor& x, const ExpConstants& k, int64_t n) {
  Tensor xc = at::maximum(x.clamp_max(0), k.x0 * n);
  Tensor q = FloorDiv(xc, k.x0);  // in 0..n: the number of whole −ln2 periods
  Tensor r = xc - k.x0 * q;       // in (x0, 0]
  // The polynomial is increasing on (−ln2, 0] and positive there, so 0 < poly ≤ c.
  Tensor poly = r * (r + k.b) + k.c;
  return poly * Pow2(n - q);
}

Tensor RowMaxSubtracted(const Tensor& v) { return v - std::get<0>(v.max(-1, true)); }

// I-ViT's shift-exp of x ≤ 0 at scale s: base 2 by x + x/2 − x/16, then 2^(−q)·(1 + r·s/2).
Tensor ShiftExpValues(const Tensor& x, const Tensor& s, int64_t n) {
  Tensor xc = x.clamp_max(0);
  xc = xc + FloorDiv(xc, 2) - FloorDiv(xc, 16);
  Tensor x0 = I64(torch::floor(-1.0 / s));
  xc = at::maximum(xc, x0 * n);
  Tensor q = FloorDiv(xc, x0);
  Tensor r = xc - x0 * q;
  // (r/2 − x0)·2^(n−q) as the reference computes it (r/2 in real numbers), floored: the doubled
  // value shifted, then halved.
  return FloorDiv((r - 2 * x0) * Pow2(n - q), 2);
}

// e/Σ by I-ViT's divider: Σ clamped to int32, factor ⌊(2^31 − 1)/Σ⌋, output
// ⌊e·factor/2^(32 − b)⌋ at scale 2^−(b−1).
Tensor IvitDivide(const Tensor& e, const Tensor& sum, int bits) {
  const int64_t kInt32Max = (int64_t{1} << 31) - 1;
  Tensor factor = FloorDiv(torch::full_like(sum, kInt32Max), sum.clamp(1, kInt32Max));
  return FloorDiv(e * factor, int64_t{1} << (32 - bits));
}

// ⌊√n⌋ by I-ViT's fixed 10 Newton steps from 2^16 (exact for 2^16 ≤ n < 2^44).
Tensor IvitSqrt(const Tensor& n) {
  Tensor k = torch::full_like(n, int64_t{1} << 16);
  for (int i = 0; i < 10; ++i) k = FloorDiv(k + FloorDiv(n, k.clamp_min(1)), 2);
  return k;
}

NonlinearOutput IntLayerNormImpl(const IntTensor& x, const Tensor& gamma, const Tensor& beta,
                                 bool ivit) {
  const char* what = ivit ? "IvitLayerNorm" : "IBertLayerNorm";
  CheckInt(x, what);
  const int64_t c = x.values.size(-1);
  TORCH_CHECK(gamma.numel() == c && beta.numel() == c, what, ": gamma and beta must have ", c,
              " entries");
  const Tensor& v = x.values;
  Tensor mean = RoundDiv(v.sum(-1, true), c);  // round(Σx / C)
  Tensor y = v - mean;
  Tensor std_int;
  if (ivit) {
    std_int = IvitSqrt((y * y).sum(-1, true));
  } else {
    // I-BERT keeps Σy² below 2^32 by a right shift of y (its code calibrates one shift; here each
    // row takes the least that fits). The starting shift keeps Σy² itself inside int64.
    Tensor len = BitLength(y.abs().amax(-1, true));
    Tensor shift = (len - (62 - BitLength(c)) / 2).clamp_min(0);
    Tensor var;
    for (int i = 0; i < 64; ++i) {
      Tensor ys = FloorDiv(y, Pow2(shift));
      var = (ys * ys).sum(-1, true);
      Tensor over = var >= (int64_t{1} << 32);
      if (!over.any().item<bool>()) break;
      shift = shift + I64(over);
    }
    std_int = IntegerSqrt(var) * Pow2(shift);
  }
  const int64_t numerator = ivit ? (int64_t{1} << 31) - 1 : int64_t{1} << 31;
  Tensor factor = FloorDiv(torch::full_like(std_int, numerator), std_int.clamp_min(1));
  Tensor out = FloorDiv(y * factor, 2);
  const double scale = std::sqrt(static_cast<double>(c)) / std::pow(2.0, 30);
  Tensor g = F64(gamma).reshape({c});
  Tensor floor_g =
      torch::where(g < 0, torch::full_like(g, -kMinGamma), torch::full_like(g, kMinGamma));
  Tensor g_safe = torch::where(g.abs() < kMinGamma, floor_g, g);
  Tensor bias_int = I64(torch::floor(F64(beta).reshape({c}) / g_safe / scale));
  NonlinearOutput result;
  result.out = {out + bias_int, g_safe * scale};
  return result;
}

}  // namespace

torch::Tensor IntTensor::Dequantize() const { return (F64(values) * scale).to(torch::kFloat32); }

torch::Tensor NonlinearOutput::Dequantize() const {
  if (!log2) return out.Dequantize();
  const int64_t zero_code = int64_t{1} << log2_bits;
  Tensor v = torch::pow(2.0, -F64(out.values));
  return torch::where(out.values >= zero_code, torch::zeros_like(v), v).to(torch::kFloat32);
}

// ---- I-BERT ----------------------------------------------------------------------------------

IntTensor IBertExp(const IntTensor& x) {
  CheckInt(x, "IBertExp");
  Tensor s = F64(x.scale);
  ExpConstants k = IBertExpConstants(s);
  const int64_t n = IBertExpShift(k, 0);
  return {IBertExpValues(x.values, k, n), kExpA * s * s / std::pow(2.0, n)};
}

NonlinearOutput IBertSoftmax(const IntTensor& x, int out_bits) {
  CheckInt(x, "IBertSoftmax");
  CheckBits(out_bits, "IBertSoftmax");
  Tensor s = F64(x.scale);
  ExpConstants k = IBertExpConstants(s);
  const int64_t n = IBertExpShift(k, 0);
  Tensor e = IBertExpValues(RowMaxSubtracted(x.values), k, n);
  // Requantized to unsigned 16 bits before the sum (I-BERT passes exp through a 16-bit QuantAct):
  // here by the right shift that brings exp(0) = c·2^n under 2^16, a power-of-two scale that loses
  // at most one bit against the reference's max/(2^15 − 1) and keeps everything integer.
  Tensor shift = (BitLength(k.c * (int64_t{1} << n)) - 16).clamp_min(0);
  Tensor e16 = FloorDiv(e, Pow2(shift));
  Tensor sum = e16.sum(-1, true);  // ≥ the row maximum's e16 ≥ 2^15
  Tensor factor = FloorDiv(torch::full_like(sum, int64_t{1} << 32), sum);
  Tensor out = FloorDiv(e16 * factor, int64_t{1} << (32 - out_bits));
  NonlinearOutput result;
  result.out = {out.clamp(0, (int64_t{1} << out_bits) - 1), Scalar64(std::ldexp(1.0, -out_bits))};
  return result;
}

NonlinearOutput IBertGelu(const IntTensor& x) {
  CheckInt(x, "IBertGelu");
  Tensor s = F64(x.scale);
  Tensor s_u = s / kGeluK;  // the scale of u = x/√2
  Tensor b_int = I64(torch::floor(kErfB / s_u));
  Tensor c_int = I64(torch::floor(kErfC / (s_u * s_u)));
  const Tensor& v = x.values;
  Tensor abs_c = at::minimum(v.abs(), -b_int);
  Tensor erf = v.sign() * ((abs_c + b_int) * (abs_c + b_int) + c_int);
  erf = FloorDiv(erf, int64_t{1} << kErfShift);
  // a < 0 makes the erf scale negative, as in the reference; the output is negated at the end so
  // that the returned scale is positive (same real values).
  Tensor s_erf = s_u * s_u * kErfA * std::pow(2.0, kErfShift);
  Tensor one_int = I64(torch::floor(1.0 / s_erf));
  NonlinearOutput result;
  result.out = {-(v * (erf + one_int)), -(s * s_erf / 2)};
  return result;
}

torch::Tensor IntegerSqrt(const torch::Tensor& n) {
  TORCH_CHECK(n.scalar_type() == torch::kInt64, "IntegerSqrt: n must be int64");
  TORCH_CHECK(n.numel() == 0 || n.min().item<int64_t>() >= 0, "IntegerSqrt: n must be ≥ 0");
  // x0 = 2^⌈bits/2⌉ ≥ √n; Newton's iterates then fall monotonically to ⌊√n⌋, and the first that
  // does not fall marks the end. An element that stopped never falls again, so one loop serves.
  Tensor x = Pow2(FloorDiv(BitLength(n) + 1, 2));
  for (int i = 0; i < 64; ++i) {
    Tensor next = FloorDiv(x + FloorDiv(n, x.clamp_min(1)), 2);
    Tensor falls = next < x;
    if (!falls.any().item<bool>()) break;
    x = torch::where(falls, next, x);
  }
  return x;
}

NonlinearOutput IBertLayerNorm(const IntTensor& x, const torch::Tensor& gamma,
                               const torch::Tensor& beta) {
  return IntLayerNormImpl(x, gamma, beta, /*ivit=*/false);
}

// ---- FQ-ViT ----------------------------------------------------------------------------------

NonlinearOutput LogIntSoftmax(const IntTensor& x, int out_bits) {
  CheckInt(x, "LogIntSoftmax");
  CheckBits(out_bits, "LogIntSoftmax");
  Tensor s = F64(x.scale);
  ExpConstants k = IBertExpConstants(s);
  // The row sum must fit int64 too: n leaves room for log2(columns) more bits.
  const int64_t n = IBertExpShift(k, BitLength(x.values.size(-1)));
  Tensor e = IBertExpValues(RowMaxSubtracted(x.values), k, n).clamp_min(1);
  Tensor sum = e.sum(-1, true);
  // r = round(Σ/e) without forming 2Σ: quotient, plus one when twice the remainder reaches e.
  Tensor quot = FloorDiv(sum, e);
  Tensor r = quot + I64(2 * (sum - quot * e) >= e);
  // log_round: ⌊log2 r⌋, plus one when r − 2^⌊log2 r⌋ ≥ 2^(⌊log2 r⌋ − 1).
  Tensor fl = BitLength(r) - 1;
  Tensor q = fl + I64(2 * (r - Pow2(fl)) >= Pow2(fl));
  NonlinearOutput result;
  result.out = {q.clamp(0, int64_t{1} << out_bits), Scalar64(1.0)};
  result.log2 = true;
  result.log2_bits = out_bits;
  return result;
}

PtfInput FitPtf(const torch::Tensor& x, int bits) {
  TORCH_CHECK(x.dim() >= 1 && x.numel() > 0, "FitPtf: x must be non-empty with a channel axis");
  TORCH_CHECK(bits >= 2 && bits <= 16, "FitPtf: bits must be in 2..16");
  const int64_t c = x.size(-1);
  Tensor xf = F64(x).reshape({-1, c});
  const int64_t qmax = (int64_t{1} << bits) - 1;
  const double lo = xf.min().item<double>(), hi = xf.max().item<double>();
  // FQ-ViT clamps the layer-wise step at float32's epsilon.
  const double s8 = std::max((hi - lo) / static_cast<double>(qmax),
                             static_cast<double>(std::numeric_limits<float>::epsilon()));
  const int64_t zp = std::clamp<int64_t>(-static_cast<int64_t>(std::nearbyint(lo / s8)), 0, qmax);
  std::vector<Tensor> errors;
  for (int a = 0; a <= kPtfK; ++a) {
    const double sa = std::ldexp(s8, a - kPtfK);
    Tensor deq = ((xf / sa + zp).round().clamp(0, qmax) - zp) * sa;
    errors.push_back((deq - xf).square().sum(0));
  }
  // argmin keeps the first minimum: ties go to the finer step, as FQ-ViT's list.index(min).
  PtfInput fitted;
  fitted.alpha = torch::stack(errors).argmin(0).to(torch::kInt64);
  fitted.scale = std::ldexp(s8, -kPtfK);
  fitted.zero_point = zp;
  fitted.bits = bits;
  return fitted;
}

PtfInput QuantizePtf(const torch::Tensor& x, const PtfInput& fitted) {
  TORCH_CHECK(fitted.alpha.defined() && x.size(-1) == fitted.alpha.numel(),
              "QuantizePtf: x's last axis must match the fitted channels");
  const int64_t qmax = (int64_t{1} << fitted.bits) - 1;
  Tensor step = fitted.scale * torch::pow(2.0, F64(fitted.alpha));
  PtfInput out = fitted;
  out.codes = I64((F64(x) / step + static_cast<double>(fitted.zero_point)).round().clamp(0, qmax));
  return out;
}

torch::Tensor DequantizePtf(const PtfInput& in) {
  TORCH_CHECK(in.codes.defined(), "DequantizePtf: codes are undefined");
  Tensor step = in.scale * torch::pow(2.0, F64(in.alpha));
  return (F64(in.codes - in.zero_point) * step).to(torch::kFloat32);
}

NonlinearOutput PtfLayerNorm(const PtfInput& x, const torch::Tensor& gamma,
                             const torch::Tensor& beta, double out_scale, int64_t out_zero_point,
                             int out_bits) {
  TORCH_CHECK(x.codes.defined() && x.alpha.defined(), "PtfLayerNorm: codes and alpha are needed");
  CheckBits(out_bits, "PtfLayerNorm");
  TORCH_CHECK(out_scale > 0, "PtfLayerNorm: out_scale must be positive");
  const int64_t c = x.codes.size(-1);
  TORCH_CHECK(x.alpha.numel() == c && gamma.numel() == c && beta.numel() == c,
              "PtfLayerNorm: alpha, gamma and beta must have ", c, " entries");
  // Channels aligned to the finest step: (codes − zp)·2^α.
  Tensor xa = (I64(x.codes) - x.zero_point) * Pow2(I64(x.alpha).reshape({c}));
  Tensor s1 = xa.sum(-1, true);
  Tensor s2 = (xa * xa).sum(-1, true);
  // C·std/step = √(C·Σx² − (Σx)²), FQ-ViT's form; ≥ 0 by Cauchy–Schwarz.
  Tensor sigma = IntegerSqrt((c * s2 - s1 * s1).clamp_min(0)).clamp_min(1);

  // A = step·γ/(std·s_out) = G/σ with G = C·|γ|/s_out, and β/s_out, both as fixed point with F
  // fraction bits (offline constants). F leaves the larger of them about 52 bits.
  Tensor g_real = F64(gamma).reshape({c});
  Tensor big_g = static_cast<double>(c) * g_real.abs() / out_scale;
  Tensor big_h = F64(beta).reshape({c}) / out_scale;
  const double top = std::max({big_g.max().item<double>(), big_h.abs().max().item<double>(), 1.0});
  const int64_t frac =
      std::clamp<int64_t>(52 - static_cast<int64_t>(std::ceil(std::log2(top))), 0, 52);
  const double two_f = std::ldexp(1.0, static_cast<int>(frac));
  Tensor g = I64(torch::round(big_g * two_f));
  Tensor h = I64(torch::round(big_h * two_f));
  Tensor sign = I64(g_real.sign());

  // ⌊log2(g/σ)⌋ from the bit lengths, corrected by one comparison (both sides stay < 2^63).
  Tensor l0 = BitLength(g) - BitLength(sigma);
  Tensor up = l0.clamp_min(0), down = (-l0).clamp_min(0);
  Tensor log2_a = l0 - I64(g * Pow2(down) < sigma * Pow2(up)) - frac;
  // A = 0 (γ = 0): FQ-ViT's ⌊log2 0⌋ = −∞ gives N = 31, M = 0.
  Tensor n = torch::where(g == 0, torch::full_like(log2_a, 31), (7 - log2_a).clamp(0, 31));
  // M = ⌊A·2^N⌋ = ⌊g·2^(N−F)/σ⌋, splitting the shift by its sign so nothing overflows.
  Tensor k_up = (n - frac).clamp_min(0), k_down = (frac - n).clamp_min(0);
  Tensor m = FloorDiv(FloorDiv(g * Pow2(k_up), Pow2(k_down)), sigma).clamp(0, 255);
  // B = round(β·2^N/s_out) − round(sign·M·Σx/C): FQ-ViT's bias with the integer M in place of A
  // in the mean term, so the mean is removed with the same multiplier that scales x.
  Tensor b = RoundDiv(h * Pow2(k_up), Pow2(k_down)) - RoundDiv(sign * m * s1, c);
  Tensor q = RoundDiv(sign * m * xa + b, Pow2(n));
  Tensor codes = (q + out_zero_point).clamp(0, (int64_t{1} << out_bits) - 1);
  NonlinearOutput result;
  result.out = {codes - out_zero_point, Scalar64(out_scale)};
  return result;
}

// ---- I-ViT -----------------------------------------------------------------------------------

IntTensor ShiftExp(const IntTensor& x, int n) {
  CheckInt(x, "ShiftExp");
  TORCH_CHECK(n >= 0 && n <= 40, "ShiftExp: n must be in 0..40");
  Tensor s = F64(x.scale);
  return {ShiftExpValues(x.values, s, n), s / std::pow(2.0, n)};
}

NonlinearOutput Shiftmax(const IntTensor& x, int out_bits) {
  CheckInt(x, "Shiftmax");
  CheckBits(out_bits, "Shiftmax");
  Tensor e = ShiftExpValues(RowMaxSubtracted(x.values), F64(x.scale), kShiftmaxN);
  Tensor out = IvitDivide(e, e.sum(-1, true), out_bits);
  NonlinearOutput result;
  // A probability is at most 1 = 2^(b−1) steps: b unsigned bits hold it.
  result.out = {out.clamp(0, int64_t{1} << (out_bits - 1)),
                Scalar64(std::ldexp(1.0, 1 - out_bits))};
  return result;
}

NonlinearOutput ShiftGelu(const IntTensor& x, int out_bits) {
  CheckInt(x, "ShiftGelu");
  CheckBits(out_bits, "ShiftGelu");
  Tensor s = F64(x.scale);
  Tensor s_sig = s * kShiftGeluSlope;  // z = 1.702·x shares x's integers at scale 1.702·s
  const Tensor& v = x.values;
  // σ(z) = e^(z−m)/(e^(z−m) + e^(−m)) with m = max(row max, 0): both exponents ≤ 0. I-ViT takes
  // m = row max, which differs only for rows whose maximum is negative.
  Tensor m = std::get<0>(v.max(-1, true)).clamp_min(0);
  Tensor e_num = ShiftExpValues(v - m, s_sig, kShiftGeluN);
  Tensor e_off = ShiftExpValues(-m, s_sig, kShiftGeluN);
  Tensor sig = IvitDivide(e_num, e_num + e_off, out_bits).clamp(0, int64_t{1} << (out_bits - 1));
  NonlinearOutput result;
  result.out = {v * sig, s * std::ldexp(1.0, 1 - out_bits)};
  return result;
}

NonlinearOutput IvitLayerNorm(const IntTensor& x, const torch::Tensor& gamma,
                              const torch::Tensor& beta) {
  return IntLayerNormImpl(x, gamma, beta, /*ivit=*/true);
}

}  // namespace qs::core
