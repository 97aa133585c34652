#include "core/integer_nonlinear.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace qs::core {
namespace {

using torch::Tensor;

double SqnrDb(const Tensor& y, const Tensor& y_hat) {
  Tensor a = y.to(torch::kFloat64), b = y_hat.to(torch::kFloat64);
  return 10 * std::log10(a.square().sum().item<double>() / (a - b).square().sum().item<double>());
}

double MaxAbs(const Tensor& t) { return t.abs().max().item<double>(); }

Tensor Scale(double s) { return torch::tensor(s, torch::kFloat64); }

// Integers of x at step s (round to nearest).
IntTensor ToInt(const Tensor& x, double s) {
  return {torch::round(x.to(torch::kFloat64) / s).to(torch::kInt64), Scale(s)};
}

// Integer inputs on [lo, hi] at step s, every grid point once.
IntTensor Grid(double lo, double hi, double s) {
  return {torch::arange(static_cast<int64_t>(std::ceil(lo / s)),
                        static_cast<int64_t>(std::floor(hi / s)) + 1, torch::kInt64),
          Scale(s)};
}

Tensor Gelu(const Tensor& x) {
  Tensor d = x.to(torch::kFloat64);
  return d * 0.5 * (1 + torch::erf(d / std::sqrt(2.0)));
}

// Attention-like logits: rows of 197 tokens, N(0, 3²).
Tensor Logits(int64_t seed, int64_t rows = 12) {
  torch::manual_seed(seed);
  return torch::randn({rows, 197}, torch::kFloat64) * 3;
}

using Softmax = std::function<NonlinearOutput(const IntTensor&, int)>;
struct NamedSoftmax {
  std::string name;
  Softmax fn;
};
std::vector<NamedSoftmax> Softmaxes() {
  return {{"IBertSoftmax", IBertSoftmax}, {"LogIntSoftmax", LogIntSoftmax}, {"Shiftmax", Shiftmax}};
}

TEST(IntegerNonlinear, IntegerSqrtIsTheFloorOfTheSquareRoot) {
  std::vector<int64_t> ks = {0, 1, 2, 3, 7, 100, 4095, 65535, 65536, 1000003, 3037000498};
  Tensor k = torch::tensor(ks, torch::kInt64);
  EXPECT_TRUE(torch::equal(IntegerSqrt(k * k), k));
  EXPECT_TRUE(torch::equal(IntegerSqrt(k * k + 2 * k), k));
  Tensor k1 = k.slice(0, 1);
  EXPECT_TRUE(torch::equal(IntegerSqrt(k1 * k1 - 1), k1 - 1));
  EXPECT_EQ(IntegerSqrt(torch::zeros({3}, torch::kInt64)).sum().item<int64_t>(), 0);

  torch::manual_seed(1);
  // Below 2^48 a double's √ is exact enough that its floor is ⌊√n⌋.
  Tensor n = torch::randint(0, int64_t{1} << 48, {4000}, torch::kInt64);
  n = torch::cat({n, torch::randint(0, 1000, {1000}, torch::kInt64)});
  Tensor r = IntegerSqrt(n);
  EXPECT_TRUE(torch::equal(r, torch::floor(torch::sqrt(n.to(torch::kFloat64))).to(torch::kInt64)));
  // Up to 2^62: r² ≤ n < (r + 1)², checked in 128 bits.
  Tensor big = torch::randint(0, int64_t{1} << 62, {2000}, torch::kInt64);
  Tensor rb = IntegerSqrt(big);
  auto nb = big.accessor<int64_t, 1>();
  auto ra = rb.accessor<int64_t, 1>();
  for (int64_t i = 0; i < big.size(0); ++i) {
    const __int128 v = ra[i];
    ASSERT_LE(v * v, static_cast<__int128>(nb[i]));
    ASSERT_GT((v + 1) * (v + 1), static_cast<__int128>(nb[i]));
  }
}

TEST(IntegerNonlinear, IBertExpIsWithinItsErrorBound) {
  for (double s : {1e-3, 1e-4}) {
    IntTensor x = Grid(-20, 0, s);
    IntTensor e = IBertExp(x);
    ASSERT_EQ(e.values.scalar_type(), torch::kInt64);
    Tensor ref = torch::exp(x.values.to(torch::kFloat64) * s);
    const double rel = MaxAbs(e.Dequantize().to(torch::kFloat64) / ref - 1);
    // The bound of the method: the code-form polynomial's 0.331% on a period (its maximum
    // relative error on [−ln2, 0] in real arithmetic), plus the period's drift, as
    // x0 = ⌊−0.6931/s⌋·s differs from −ln2 and q ≤ 20/ln2 periods add it up, plus the rounding
    // of b and c to the grid (≈ s relative).
    const double x0 = std::floor(-0.6931 / s) * s;
    const double bound = 0.0034 + std::ceil(20 / std::log(2.0)) * std::abs(x0 + std::log(2.0)) + s;
    std::printf("i-exp s=%g: max relative error %.5f (bound %.5f)\n", s, rel, bound);
    EXPECT_LT(rel, bound);
  }
  // At s = 1e-4 the period drift is small: the published 0.31% plus the rounding, within 0.5%.
  IntTensor x = Grid(-20, 0, 1e-4);
  EXPECT_LT(MaxAbs(IBertExp(x).Dequantize().to(torch::kFloat64) /
                       torch::exp(x.values.to(torch::kFloat64) * 1e-4) -
                   1),
            0.005);
}

TEST(IntegerNonlinear, ShiftExpIsCrudeButMonotonic) {
  const double s = 1e-3;
  IntTensor x = Grid(-20, 0, s);
  IntTensor e = ShiftExp(x, 30);
  ASSERT_EQ(e.values.scalar_type(), torch::kInt64);
  Tensor rel =
      e.Dequantize().to(torch::kFloat64) / torch::exp(x.values.to(torch::kFloat64) * s) - 1;
  std::printf("shift-exp: max relative error %.4f, mean %.4f\n", MaxAbs(rel),
              rel.abs().mean().item<double>());
  // 1.4375 for log2 e and a linear 2^r: about 14% at worst on [−20, 0] (methods.md §3.3).
  EXPECT_LT(MaxAbs(rel), 0.15);
  EXPECT_LT(rel.abs().mean().item<double>(), 0.08);
  // Non-decreasing in x, and exp(0) = 1 to the grid.
  Tensor v = e.values;
  EXPECT_TRUE((v.slice(0, 1) >= v.slice(0, 0, -1)).all().item<bool>());
  EXPECT_NEAR(e.Dequantize()[-1].item<double>(), 1.0, 1e-6);
}

TEST(IntegerNonlinear, SoftmaxesTrackTheFloatSoftmax) {
  Tensor logits = Logits(2);
  Tensor ref = torch::softmax(logits, -1);
  struct Case {
    std::string name;
    Softmax fn;
    int bits;
    double s, min_sqnr;
  };
  // Floors set 1.5–2 dB under the values measured (printed below; round-to-nearest uniform 8-bit
  // gives ≈ 35 dB, the kernels floor). Shiftmax runs at an 8-bit input step: its Σ must stay
  // within int32 (exp(0) is 2^15/s).
  const std::vector<Case> cases = {
      {"IBertSoftmax", IBertSoftmax, 8, 1e-3, 30},
      {"IBertSoftmax", IBertSoftmax, 4, 1e-3, 13},
      {"IBertSoftmax", IBertSoftmax, 8, 0.05, 29},
      {"LogIntSoftmax", LogIntSoftmax, 4, 1e-3, 9.5},
      {"LogIntSoftmax", LogIntSoftmax, 8, 1e-3, 9.5},
      {"Shiftmax", Shiftmax, 8, 0.05, 24},
      {"Shiftmax", Shiftmax, 4, 0.05, 9.5},
  };
  double ibert8 = 0, ibert4 = 0;
  for (const Case& c : cases) {
    NonlinearOutput out = c.fn(ToInt(logits, c.s), c.bits);
    ASSERT_EQ(out.out.values.scalar_type(), torch::kInt64);
    Tensor p = out.Dequantize().to(torch::kFloat64);
    EXPECT_GE(p.min().item<double>(), 0);
    EXPECT_LE(p.max().item<double>(), 1);
    Tensor sums = p.sum(-1);
    const double sqnr = SqnrDb(ref, p);
    std::printf("%s b=%d s=%g: SQNR %.2f dB, row sums in [%.4f, %.4f]\n", c.name.c_str(), c.bits,
                c.s, sqnr, sums.min().item<double>(), sums.max().item<double>());
    EXPECT_GT(sqnr, c.min_sqnr) << c.name << " b=" << c.bits;
    if (out.log2) {
      // log_round keeps p̂/p in [0.75, 1.5) (up to the rounding of Σ/e); zeroed entries are
      // below 2^−(2^b − 1), at most 197 of them.
      EXPECT_GE(sums.min().item<double>(), 0.75 * (1 - 197 * std::ldexp(1.0, 1 - (1 << c.bits))));
      EXPECT_LT(sums.max().item<double>(), 1.5);
    } else {
      // Each output is a floor on a grid of step Δ: a row loses under 197·Δ and gains nothing.
      const double step = out.out.scale.item<double>();
      EXPECT_LE(sums.max().item<double>(), 1 + 1e-9);
      EXPECT_GE(sums.min().item<double>(), 1 - 197 * step);
    }
    if (c.name == "IBertSoftmax" && c.s == 1e-3) (c.bits == 8 ? ibert8 : ibert4) = sqnr;
  }
  EXPECT_GT(ibert8, ibert4 + 12);
}

TEST(IntegerNonlinear, SoftmaxesAreShiftInvariantOnIntegers) {
  torch::manual_seed(4);
  IntTensor x = ToInt(Logits(4, 6), 0.01);
  IntTensor shifted{x.values + torch::randint(-100000, 100000, {6, 1}, torch::kInt64), x.scale};
  for (const NamedSoftmax& f : Softmaxes()) {
    for (int bits : {4, 8}) {
      EXPECT_TRUE(torch::equal(f.fn(x, bits).out.values, f.fn(shifted, bits).out.values))
          << f.name << " b=" << bits;
    }
  }
}

TEST(IntegerNonlinear, SoftmaxKnownValues) {
  // Equal entries: equal outputs, and each the grid's floor of 1/4 or its neighbour below.
  IntTensor equal{torch::full({1, 4}, 1234, torch::kInt64), Scale(0.01)};
  for (const NamedSoftmax& f : Softmaxes()) {
    Tensor v = f.fn(equal, 8).out.values;
    EXPECT_TRUE((v == v[0][0]).all().item<bool>()) << f.name;
    EXPECT_NEAR(f.fn(equal, 8).Dequantize()[0][0].item<double>(), 0.25, 1.0 / 64) << f.name;
  }
  // [0, −∞]: LIS gives code 0 (value 1) and the zero code 2^b.
  // At s = 0.05 Shiftmax's factor ⌊(2^31 − 1)/Σ⌋ has thousands of levels: only the output grid
  // is lost.
  IntTensor pair{torch::tensor({{0, -1000000}}, torch::kInt64), Scale(0.05)};
  NonlinearOutput lis = LogIntSoftmax(pair, 4);
  EXPECT_TRUE(lis.log2);
  EXPECT_EQ(lis.log2_bits, 4);
  EXPECT_EQ(lis.out.values[0][0].item<int64_t>(), 0);
  EXPECT_EQ(lis.out.values[0][1].item<int64_t>(), 16);
  EXPECT_TRUE(torch::equal(lis.Dequantize(), torch::tensor({{1.0f, 0.0f}})));
  // The other two put the whole mass on the first entry, one grid step short at most.
  for (const NamedSoftmax& f : {Softmaxes()[0], Softmaxes()[2]}) {
    Tensor p = f.fn(pair, 8).Dequantize();
    EXPECT_NEAR(p[0][0].item<double>(), 1.0, 1.0 / 128 + 1e-9) << f.name;
    EXPECT_EQ(p[0][1].item<double>(), 0.0) << f.name;
  }
}

TEST(IntegerNonlinear, PerHeadScalesMatchHeadByHeadRuns) {
  torch::manual_seed(5);
  const std::vector<double> scales = {1e-3, 0.02, 0.05};
  Tensor logits = torch::randn({2, 3, 5, 197}, torch::kFloat64) * 3;
  Tensor s = torch::tensor(scales, torch::kFloat64).reshape({1, 3, 1, 1});
  IntTensor x{torch::round(logits / s).to(torch::kInt64), s};
  for (const NamedSoftmax& f : Softmaxes()) {
    Tensor all = f.fn(x, 8).out.values;
    for (int h = 0; h < 3; ++h) {
      IntTensor head{x.values.select(1, h), Scale(scales[h])};
      EXPECT_TRUE(torch::equal(all.select(1, h), f.fn(head, 8).out.values)) << f.name << " " << h;
    }
  }
}

TEST(IntegerNonlinear, IBertGeluBeatsHardGeluTenfold) {
  for (double s : {1e-3, 1e-4}) {
    IntTensor x = Grid(-6, 6, s);
    NonlinearOutput y = IBertGelu(x);
    ASSERT_EQ(y.out.values.scalar_type(), torch::kInt64);
    const double out_scale = y.out.scale.item<double>();
    ASSERT_GT(out_scale, 0);
    Tensor xr = x.values.to(torch::kFloat64) * s;
    Tensor ref = Gelu(xr);
    const double err = MaxAbs(y.Dequantize().to(torch::kFloat64) - ref);
    const double h_err = MaxAbs(xr * torch::clamp(xr + 3, 0, 6) / 6 - ref);
    // The float form's 0.018 (methods.md §3.1) plus the erf's floor after its 2^−14 shift: one
    // erf step s_erf = 2·out_scale/s, times |x|/2 ≤ 3.
    const double bound = 0.0185 + 3 * (2 * out_scale / s);
    std::printf("i-GELU s=%g: max abs error %.5f (bound %.5f); h-GELU %.4f\n", s, err, bound,
                h_err);
    EXPECT_LT(err, bound);
    EXPECT_LT(10 * err, h_err);
    if (s == 1e-4) {
      EXPECT_LT(err, 0.02);
    }
  }
}

TEST(IntegerNonlinear, ShiftGeluIsWithinItsErrorBound) {
  // An 8-bit input on [−6, 6] (I-ViT's GELU input is an 8-bit activation) as one row (the row
  // maximum is 6) and as one entry per row.
  const double s = 6.0 / 127;
  IntTensor row = Grid(-6, 6, s);
  row.values = row.values.unsqueeze(0);
  IntTensor single{row.values.reshape({-1, 1}), row.scale};
  // The float form errs by 0.024 at most (methods.md §3.3). The integer form adds, relative to
  // σ and so times |x|: the 2^−7 output grid; the factor ⌊(2^31 − 1)/Σ⌋, which near σ = 1 has
  // only 2^31/(2^23·(−x0)) levels (x0 = ⌊−1/(1.702 s)⌋ = −13: 19 levels); and the exponent
  // period −x0·1.702·s ≠ 1 (4.5% here), which scales e^(−m) and so σ's tail.
  const double x0 = std::floor(-1 / (1.702 * s));
  const double levels = std::floor(std::ldexp(1.0, 31) / (std::ldexp(1.0, 23) * -x0));
  const double drift = std::abs(-x0 * 1.702 * s - 1);
  for (const IntTensor& x : {row, single}) {
    NonlinearOutput y = ShiftGelu(x, 8);
    ASSERT_EQ(y.out.values.scalar_type(), torch::kInt64);
    Tensor xr = x.values.to(torch::kFloat64) * s;
    Tensor ref = Gelu(xr);
    Tensor err = y.Dequantize().to(torch::kFloat64) - ref;
    Tensor bound = 0.024 + xr.abs() * (1.0 / 128 + 1 / levels + drift);
    std::printf("ShiftGELU (%ld rows): max abs error %.4f (max error/bound %.3f), RMS %.4f\n",
                static_cast<long>(x.values.size(0)), MaxAbs(err),
                (err.abs() / bound).max().item<double>(),
                err.square().mean().sqrt().item<double>());
    EXPECT_TRUE((err.abs() <= bound).all().item<bool>());
    // Where GELU bends (|x| ≤ 3), far better than a ReLU, and it keeps GELU's dip (−0.17).
    // Near x = 6 the 19-level factor can cost it 4% of x: beyond the bend it can be worse.
    Tensor mid = xr.abs() <= 3;
    const double mid_rms = err.masked_select(mid).square().mean().sqrt().item<double>();
    const double mid_relu =
        (torch::relu(xr) - ref).masked_select(mid).square().mean().sqrt().item<double>();
    const double dip = y.Dequantize().min().item<double>();
    std::printf("  on |x| <= 3: RMS %.4f vs ReLU's %.4f; minimum %.4f\n", mid_rms, mid_relu, dip);
    EXPECT_LT(2 * mid_rms, mid_relu);
    EXPECT_LT(dip, -0.12);
  }
}

struct LnCase {
  Tensor x, gamma, beta;
};

LnCase LayerNormInput(int64_t seed) {
  torch::manual_seed(seed);
  const int64_t c = 768;
  Tensor per_channel = torch::rand({c}, torch::kFloat64) * 2 + 0.2;
  Tensor offset = torch::randn({c}, torch::kFloat64) * 0.5;
  return {torch::randn({16, c}, torch::kFloat64) * per_channel + offset,
          (1 + 0.3 * torch::randn({c})).to(torch::kFloat32), (0.2 * torch::randn({c}))};
}

TEST(IntegerNonlinear, IntegerLayerNormsTrackTheFloatLayerNorm) {
  LnCase in = LayerNormInput(6);
  const int64_t c = in.x.size(-1);
  // An int8 input (as after a quantized residual) and a fine one (an int32 accumulator).
  for (double s : {MaxAbs(in.x) / 127, 1e-4}) {
    IntTensor x = ToInt(in.x, s);
    Tensor x_hat = x.values.to(torch::kFloat32) * static_cast<float>(s);
    Tensor ref = at::layer_norm(x_hat, {c}, in.gamma, in.beta, 1e-12).to(torch::kFloat64);
    for (bool ivit : {false, true}) {
      NonlinearOutput y =
          ivit ? IvitLayerNorm(x, in.gamma, in.beta) : IBertLayerNorm(x, in.gamma, in.beta);
      ASSERT_EQ(y.out.values.scalar_type(), torch::kInt64);
      EXPECT_EQ(y.out.scale.numel(), c);
      const double sqnr = SqnrDb(ref, y.Dequantize());
      std::printf("%s s=%g: SQNR %.2f dB\n", ivit ? "IvitLayerNorm" : "IBertLayerNorm", s, sqnr);
      // Losses: the mean rounded to an integer (up to s/2 off centre: at the int8 step that is
      // ~3% of σ, the bulk of the error), ⌊√⌋, the 2^31 factor and the bias floors. At the fine
      // step only the latter remain. Floors ~2 dB under the measured values.
      EXPECT_GT(sqnr, s < 1e-3 ? 75 : 34);
    }
  }
}

TEST(IntegerNonlinear, PtfBeatsTheLayerwiseGridWithOutlierChannels) {
  torch::manual_seed(7);
  const int64_t c = 384;
  Tensor x = torch::randn({64, c}, torch::kFloat64);
  Tensor outliers = x.clone();
  outliers.slice(1, 0, 6) *= 20;
  for (int bits : {6, 8}) {
    PtfInput fit = FitPtf(outliers, bits);
    EXPECT_DOUBLE_EQ(fit.bits, bits);
    PtfInput q = QuantizePtf(outliers, fit);
    EXPECT_GE(q.codes.min().item<int64_t>(), 0);
    EXPECT_LE(q.codes.max().item<int64_t>(), (int64_t{1} << bits) - 1);
    PtfInput layerwise = q;
    layerwise.alpha = torch::full_like(fit.alpha, 3);
    layerwise = QuantizePtf(outliers, layerwise);
    const double ptf = SqnrDb(outliers, DequantizePtf(q));
    const double lw = SqnrDb(outliers, DequantizePtf(layerwise));
    std::printf("PTF b=%d: SQNR %.2f dB vs layer-wise %.2f dB; α=3 on %ld channels\n", bits, ptf,
                lw, static_cast<long>((fit.alpha == 3).sum().item<int64_t>()));
    EXPECT_GT(ptf, lw + 3);
    // The outlier channels keep the layer-wise step; the others take a finer one.
    EXPECT_TRUE((fit.alpha.slice(0, 0, 6) == 3).all().item<bool>());
    EXPECT_TRUE((fit.alpha.slice(0, 6) < 3).all().item<bool>());
  }
  // Homogeneous channels: every channel's range reaches the layer-wise one, so α = 3 throughout.
  torch::manual_seed(8);
  PtfInput even = FitPtf(torch::rand({512, 64}, torch::kFloat64) * 4 - 2, 8);
  EXPECT_TRUE((even.alpha == 3).all().item<bool>());
}

TEST(IntegerNonlinear, PtfLayerNormTracksTheFloatLayerNorm) {
  LnCase in = LayerNormInput(9);
  const int64_t c = in.x.size(-1);
  in.gamma.slice(0, 0, 10) *= -1;  // negative γ takes the sign path
  for (bool outliers : {true, false}) {
    Tensor x = in.x.clone();
    if (outliers) x.slice(1, 0, 8) *= 20;  // the channels PTF is for
    PtfInput q = QuantizePtf(x, FitPtf(x, 8));
    Tensor ref = at::layer_norm(DequantizePtf(q), {c}, in.gamma, in.beta, 1e-12);
    ref = ref.to(torch::kFloat64);
    const double lo = ref.min().item<double>(), hi = ref.max().item<double>();
    for (int out_bits : {8, 6}) {
      const double out_scale = (hi - lo) / ((1 << out_bits) - 1);
      const int64_t zp = static_cast<int64_t>(std::nearbyint(-lo / out_scale));
      NonlinearOutput y = PtfLayerNorm(q, in.gamma, in.beta, out_scale, zp, out_bits);
      ASSERT_EQ(y.out.values.scalar_type(), torch::kInt64);
      Tensor codes = y.out.values + zp;
      EXPECT_GE(codes.min().item<int64_t>(), 0);
      EXPECT_LE(codes.max().item<int64_t>(), (1 << out_bits) - 1);
      // Against the float LayerNorm of the same input, requantized to the same output grid.
      Tensor grid_ref =
          (torch::round(ref / out_scale + zp).clamp(0, (1 << out_bits) - 1) - zp) * out_scale;
      const double sqnr = SqnrDb(ref, y.Dequantize());
      const double grid_sqnr = SqnrDb(ref, grid_ref);
      std::printf("PtfLayerNorm outliers=%d out_bits=%d: SQNR %.2f dB (output grid alone %.2f)\n",
                  outliers, out_bits, sqnr, grid_sqnr);
      // The 8-bit multiplier M (relative error ≤ 2^−7, ≈ 42 dB) costs little over the grid.
      EXPECT_GT(sqnr, grid_sqnr - 1);
    }
  }
}

TEST(IntegerNonlinear, KernelOutputsAreInt64AndDequantizeToFloat) {
  IntTensor x = ToInt(Logits(10, 2), 0.01);
  LnCase in = LayerNormInput(11);
  IntTensor ln_in = ToInt(in.x, 0.05);
  std::vector<NonlinearOutput> outs = {IBertSoftmax(x, 8),
                                       LogIntSoftmax(x, 4),
                                       Shiftmax(x, 8),
                                       IBertGelu(x),
                                       ShiftGelu(x, 8),
                                       IBertLayerNorm(ln_in, in.gamma, in.beta),
                                       IvitLayerNorm(ln_in, in.gamma, in.beta)};
  for (const NonlinearOutput& o : outs) {
    EXPECT_EQ(o.out.values.scalar_type(), torch::kInt64);
    EXPECT_EQ(o.out.scale.scalar_type(), torch::kFloat64);
    EXPECT_EQ(o.Dequantize().scalar_type(), torch::kFloat32);
  }
  EXPECT_EQ(IBertExp(x).values.scalar_type(), torch::kInt64);
  EXPECT_EQ(ShiftExp(x, 15).values.scalar_type(), torch::kInt64);
  // Shiftmax and ShiftGELU values stay within b unsigned bits (magnitude for GELU's sigmoid).
  EXPECT_LE(outs[2].out.values.max().item<int64_t>(), 255);
}

}  // namespace
}  // namespace qs::core
