#include "core/shrink_search_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <ATen/Parallel.h>

namespace qs::core {
namespace {

constexpr float kMinScale = static_cast<float>(1e-8);
// Below this relative size a run's error from prefix sums has lost too many digits to
// cancellation (values almost exactly on the grid); such runs are summed element by element.
constexpr double kCancellationLimit = 1e-7;

// nearbyint (round half to even) for |v| < 2^22 by the 1.5·2^23 trick, which vectorizes. Larger
// magnitudes come back within a few units of v, which the code clamp maps exactly as it maps
// round(v): every code range is far inside ±2^22.
inline float RoundHalfEven(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 · 2^23
  return (v + kMagic) - kMagic;
}

inline float Code(float x, const RowGrid& g, float qmin, float qmax) {
  const float c = RoundHalfEven(x / g.scale) + g.zero;
  return std::min(std::max(c, qmin), qmax);
}

inline float Dequantized(float code, const RowGrid& g) { return (code - g.zero) * g.scale; }

// Σ(x − x̂)² or Σ|x − x̂| over one row, element by element (the difference rounded to float32 as
// the tensor-op search does).
template <bool kAbsolute>
double DirectError(const float* x, int64_t k, const RowGrid& g, float qmin, float qmax) {
  constexpr int64_t kChunk = 256;
  float diff[kChunk];
  double acc[4] = {0, 0, 0, 0};
  for (int64_t start = 0; start < k; start += kChunk) {
    const int64_t n = std::min(kChunk, k - start);
    const float* xs = x + start;
    for (int64_t i = 0; i < n; ++i) diff[i] = xs[i] - Dequantized(Code(xs[i], g, qmin, qmax), g);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      for (int lane = 0; lane < 4; ++lane) {
        const double d = diff[i + lane];
        acc[lane] += kAbsolute ? std::fabs(d) : d * d;
      }
    }
    for (; i < n; ++i) {
      const double d = diff[i];
      acc[0] += kAbsolute ? std::fabs(d) : d * d;
    }
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// A row sorted ascending, with prefix sums of x and x² (float64, k + 1 entries each).
struct SortedRow {
  const float* x = nullptr;
  const double* sum = nullptr;
  const double* sum_sq = nullptr;
  int64_t k = 0;
};

// First index in [from, to) whose value is >= v (values ascending).
inline int64_t LowerBound(const float* x, int64_t from, int64_t to, float v) {
  return std::lower_bound(x + from, x + to, v) - x;
}

template <bool kAbsolute>
double SegmentError(const SortedRow& r, const RowGrid& g, float qmin, float qmax) {
  double total = 0;
  int64_t a = 0;
  while (a < r.k) {
    const float code = Code(r.x[a], g, qmin, qmax);
    // End of the run of `code`: the first index whose code is larger (codes are monotone).
    int64_t lo = a + 1, hi = r.k;
    if (code < qmax) {
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (Code(r.x[mid], g, qmin, qmax) > code) {
          hi = mid;
        } else {
          lo = mid + 1;
        }
      }
    } else {
      lo = r.k;
    }
    const int64_t b = lo;
    const double q = Dequantized(code, g);
    const double n = static_cast<double>(b - a);
    double err, scale;
    if (kAbsolute) {
      const int64_t m = LowerBound(r.x, a, b, static_cast<float>(q));
      const double below = r.sum[m] - r.sum[a], above = r.sum[b] - r.sum[m];
      err = (q * static_cast<double>(m - a) - below) + (above - q * static_cast<double>(b - m));
      scale = std::fabs(below) + std::fabs(above) + n * std::fabs(q);
    } else {
      const double s1 = r.sum[b] - r.sum[a], s2 = r.sum_sq[b] - r.sum_sq[a];
      err = s2 - 2 * q * s1 + n * q * q;
      scale = s2 + n * q * q;
    }
    if (err < kCancellationLimit * scale) {
      err = DirectError<kAbsolute>(r.x + a, b - a, g, qmin, qmax);
    }
    total += err;
    a = b;
  }
  return total;
}

// Sorts a row ascending: LSD radix sort on the float bits for long rows, std::sort otherwise.
void SortRow(const float* in, int64_t k, float* out) {
  if (k < (int64_t{1} << 15)) {
    std::copy(in, in + k, out);
    std::sort(out, out + k);
    return;
  }
  std::vector<uint32_t> keys(k), tmp(k);
  for (int64_t i = 0; i < k; ++i) {
    uint32_t u;
    std::memcpy(&u, &in[i], sizeof(u));
    keys[i] = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // order-preserving
  }
  constexpr int kBits = 11, kBuckets = 1 << kBits;
  std::vector<int64_t> count(kBuckets);
  for (int shift = 0; shift < 32; shift += kBits) {
    std::fill(count.begin(), count.end(), 0);
    for (int64_t i = 0; i < k; ++i) ++count[(keys[i] >> shift) & (kBuckets - 1)];
    int64_t pos = 0;
    for (auto& c : count) {
      const int64_t n = c;
      c = pos;
      pos += n;
    }
    for (int64_t i = 0; i < k; ++i) tmp[count[(keys[i] >> shift) & (kBuckets - 1)]++] = keys[i];
    keys.swap(tmp);
  }
  for (int64_t i = 0; i < k; ++i) {
    const uint32_t key = keys[i];
    const uint32_t u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
    std::memcpy(&out[i], &u, sizeof(u));
  }
}

}  // namespace

RowGrid GridForRange(float lo, float hi, int bits, bool symmetric) {
  RowGrid g;
  if (symmetric) {
    const float amax = std::max(std::fabs(lo), std::fabs(hi));
    g.scale = std::max(amax / static_cast<float>((int64_t{1} << (bits - 1)) - 1), kMinScale);
    g.zero = 0;
  } else {
    const float l = std::min(lo, 0.0f), h = std::max(hi, 0.0f);
    const float levels = static_cast<float>((int64_t{1} << bits) - 1);
    g.scale = std::max((h - l) / levels, kMinScale);
    g.zero = std::min(std::max(std::nearbyint(-l / g.scale), 0.0f), levels);
  }
  return g;
}

void ShrinkSearchRows(const float* rows, int64_t groups, int64_t k, const float* lo,
                      const float* hi, const ShrinkSearchSpec& spec, float* scale, float* zero) {
  const float qmin = spec.symmetric ? -static_cast<float>(int64_t{1} << (spec.bits - 1)) : 0.0f;
  const float qmax = spec.symmetric ? static_cast<float>((int64_t{1} << (spec.bits - 1)) - 1)
                                    : static_cast<float>((int64_t{1} << spec.bits) - 1);
  const int steps = std::max(1, spec.steps);
  const int64_t levels = static_cast<int64_t>(qmax - qmin) + 1;
  // Runs cost about one binary search each; use them only where that beats touching every value.
  const double log_k = std::log2(static_cast<double>(k) + 1);
  const bool by_runs = static_cast<double>(k) > 4.0 * static_cast<double>(levels) * log_k;

  std::vector<float> sorted;
  std::vector<double> sums, sums_sq;
  if (by_runs) {
    sorted.resize(groups * k);
    sums.resize(groups * (k + 1));
    sums_sq.resize(groups * (k + 1));
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        float* x = sorted.data() + g * k;
        SortRow(rows + g * k, k, x);
        double* s1 = sums.data() + g * (k + 1);
        double* s2 = sums_sq.data() + g * (k + 1);
        s1[0] = s2[0] = 0;
        for (int64_t i = 0; i < k; ++i) {
          const double v = x[i];
          s1[i + 1] = s1[i] + v;
          s2[i + 1] = s2[i] + v * v;
        }
      }
    });
  }

  // Every (row, factor) pair is scored independently; the pick per row is sequential.
  std::vector<double> errors(groups * steps);
  const double item_cost = by_runs ? static_cast<double>(levels) * log_k : static_cast<double>(k);
  const int64_t grain = std::max<int64_t>(1, static_cast<int64_t>(32768.0 / item_cost));
  at::parallel_for(0, groups * steps, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item / steps;
      const int i = static_cast<int>(item % steps);
      const float f = static_cast<float>(1.0 - 0.01 * i);
      const RowGrid grid = GridForRange(lo[g] * f, hi[g] * f, spec.bits, spec.symmetric);
      double err;
      if (by_runs) {
        SortedRow r{sorted.data() + g * k, sums.data() + g * (k + 1),
                    sums_sq.data() + g * (k + 1), k};
        err = spec.absolute ? SegmentError<true>(r, grid, qmin, qmax)
                            : SegmentError<false>(r, grid, qmin, qmax);
      } else {
        err = spec.absolute ? DirectError<true>(rows + g * k, k, grid, qmin, qmax)
                            : DirectError<false>(rows + g * k, k, grid, qmin, qmax);
      }
      errors[item] = err;
    }
  });
  for (int64_t g = 0; g < groups; ++g) {
    int best = 0;
    for (int i = 1; i < steps; ++i) {
      if (errors[g * steps + i] < errors[g * steps + best] * (1 - kShrinkSearchTieTolerance)) {
        best = i;
      }
    }
    const float f = static_cast<float>(1.0 - 0.01 * best);
    const RowGrid grid = GridForRange(lo[g] * f, hi[g] * f, spec.bits, spec.symmetric);
    scale[g] = grid.scale;
    zero[g] = grid.zero;
  }
}

}  // namespace qs::core
