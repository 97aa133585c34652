// CPU kernels for uniform grids: the OMSE / MAE shrink search, and fake quantization with one
// grid or one grid per last-dimension channel (bit-identical to the tensor ops).
//
// The shrink search: for each row of values and each factor f = 1 − 0.01·i (i < steps), the grid
// fitted to the range [lo·f, hi·f] is scored by its squared (or absolute) error over the row; the
// lowest score wins, ties (within a relative 1e-9) keeping the first, widest, factor. Grids and
// codes use the same float32 arithmetic as the tensor-op search in quantizer.cc; the scores are
// summed differently (runs from float64 prefix sums, against float32 differences summed in
// float64), so the two pick the same grid except where two factors' errors lie within about 1e-7
// of each other (quantizer_test checks equality on Gaussian, heavy-tailed, post-softmax,
// post-GELU, outlier, on-grid and constant data).
//
// Long rows are sorted once: codes are monotone in the value, so every candidate grid splits the
// sorted row into at most 2^bits runs of one code, found by binary search, and each run's error
// comes from prefix sums. A candidate then costs O(2^bits · log K) instead of O(K); short rows are
// scored element by element.
//
//   ShrinkSearchRows(rows, groups, k, lo, hi, {4, true, false, 90}, scale, zero);
#ifndef QS_CORE_UNIFORM_GRID_CPU_H_
#define QS_CORE_UNIFORM_GRID_CPU_H_

#include <cstdint>

namespace qs::core {

// A factor beats the best so far only when its error is lower by more than this relative amount,
// so exact ties, which the two ways of summing break differently, keep the wider range.
inline constexpr double kShrinkSearchTieTolerance = 1e-9;

struct ShrinkSearchSpec {
  int bits = 8;            // 2..8
  bool symmetric = true;   // signed grid with zero point 0, else affine over [min(lo,0), max(hi,0)]
  bool absolute = false;   // score by Σ|x − x̂| (MAE) instead of Σ(x − x̂)² (OMSE)
  int steps = 90;          // factors 1.00, 0.99, …
};

// One uniform grid: x̂ = (clamp(round(x / scale) + zero, qmin, qmax) − zero) · scale.
struct RowGrid {
  float scale = 1;
  float zero = 0;
};

// The grid of the range [lo, hi] (symmetric: max(|lo|, |hi|)), with the scale floored at 1e-8.
RowGrid GridForRange(float lo, float hi, int bits, bool symmetric);

// `rows` holds `groups` rows of `k` finite floats, contiguous; `lo` and `hi` one range per row.
// Writes the winning grid of each row to scale[g] and zero[g]. Runs over LibTorch's intra-op
// threads.
void ShrinkSearchRows(const float* rows, int64_t groups, int64_t k, const float* lo,
                      const float* hi, const ShrinkSearchSpec& spec, float* scale, float* zero);

// out[i] = (clamp(round(x[i] / s) + z, qmin, qmax) − z) · s over n values, the same float32
// arithmetic as the tensor ops: with `channels` == 1 one (s, z) = (scale[0], zero[0]); otherwise
// x is rows of `channels` values and channel c takes (scale[c], zero[c]).
void FakeQuantizeValues(const float* x, int64_t n, const float* scale, const float* zero,
                        int64_t channels, float qmin, float qmax, float* out);

}  // namespace qs::core

#endif  // QS_CORE_UNIFORM_GRID_CPU_H_
