#include "core/uniform_grid_cpu.h"

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
// the tensor-op search does). Inlined into the per-ISA clones below; the four accumulators fix
// the summation order, so every clone returns the same bits.
template <bool kAbsolute>
inline __attribute__((always_inline)) double DirectErrorImpl(const float* x, int64_t k,
                                                             const RowGrid& g, float qmin,
                                                             float qmax) {
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

// Compiled for AVX-512, AVX2 and the baseline; the loader picks the widest the CPU has.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) double
DirectSquaredError(const float* x, int64_t k, const RowGrid& g, float qmin, float qmax) {
  return DirectErrorImpl<false>(x, k, g, qmin, qmax);
}
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) double
DirectAbsoluteError(const float* x, int64_t k, const RowGrid& g, float qmin, float qmax) {
  return DirectErrorImpl<true>(x, k, g, qmin, qmax);
}

template <bool kAbsolute>
double DirectError(const float* x, int64_t k, const RowGrid& g, float qmin, float qmax) {
  return kAbsolute ? DirectAbsoluteError(x, k, g, qmin, qmax)
                   : DirectSquaredError(x, k, g, qmin, qmax);
}

// A row sorted ascending, with prefix sums of d = x − shift and d² (float64, k + 1 entries
// each). The shift, the row's median, keeps the sums small where values crowd together, so a
// run's error Σ(d − (q − shift))² is not the difference of two large numbers.
struct SortedRow {
  const float* x = nullptr;
  const double* sum = nullptr;
  const double* sum_sq = nullptr;
  int64_t k = 0;
  double shift = 0;
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
    // End of the run of `code`: the first index whose code is larger (codes are monotone). A
    // search on the value where rounding turns over lands on it or next to it without a division
    // per probe; the exact codes on either side confirm it, else a search by code finds it.
    auto first_above = [&](int64_t lo, int64_t hi) {  // in [lo, hi], hi when none
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (Code(r.x[mid], g, qmin, qmax) > code) {
          hi = mid;
        } else {
          lo = mid + 1;
        }
      }
      return lo;
    };
    int64_t b = r.k;
    if (code < qmax) {
      const float turn = (code + 0.5f - g.zero) * g.scale;
      b = std::upper_bound(r.x + a + 1, r.x + r.k, turn) - r.x;
      if (b > a + 1 && Code(r.x[b - 1], g, qmin, qmax) > code) {
        b = first_above(a + 1, b - 1);
      } else if (b < r.k && Code(r.x[b], g, qmin, qmax) <= code) {
        b = first_above(b + 1, r.k);
      }
    }
    const float q = Dequantized(code, g);
    const double dq = static_cast<double>(q) - r.shift;
    const double n = static_cast<double>(b - a);
    double err, scale;
    if (kAbsolute) {
      const int64_t m = LowerBound(r.x, a, b, q);
      const double below = r.sum[m] - r.sum[a], above = r.sum[b] - r.sum[m];
      err = (dq * static_cast<double>(m - a) - below) + (above - dq * static_cast<double>(b - m));
      scale = std::fabs(below) + std::fabs(above) + n * std::fabs(dq);
    } else {
      const double s1 = r.sum[b] - r.sum[a], s2 = r.sum_sq[b] - r.sum_sq[a];
      err = s2 - 2 * dq * s1 + n * dq * dq;
      scale = s2 + n * dq * dq;
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

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void
FakeQuantizeRange(const float* x, int64_t n, float s, float z, float qmin, float qmax,
                  float* out) {
  const RowGrid g{s, z};
  for (int64_t i = 0; i < n; ++i) out[i] = Dequantized(Code(x[i], g, qmin, qmax), g);
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void
FakeQuantizeRows(const float* x, int64_t rows, const float* scale, const float* zero,
                 int64_t channels, float qmin, float qmax, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * channels;
    float* o = out + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const RowGrid g{scale[c], zero[c]};
      o[c] = Dequantized(Code(xr[c], g, qmin, qmax), g);
    }
  }
}

}  // namespace

void FakeQuantizeValues(const float* x, int64_t n, const float* scale, const float* zero,
                        int64_t channels, float qmin, float qmax, float* out) {
  if (channels <= 1) {
    at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
      FakeQuantizeRange(x + begin, end - begin, scale[0], zero[0], qmin, qmax, out + begin);
    });
    return;
  }
  const int64_t rows = n / channels;
  at::parallel_for(0, rows, std::max<int64_t>(1, (1 << 16) / channels),
                   [&](int64_t begin, int64_t end) {
                     FakeQuantizeRows(x + begin * channels, end - begin, scale, zero, channels,
                                      qmin, qmax, out + begin * channels);
                   });
}

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
  // Runs cost a sort of the row plus about one binary search each per factor; element by element
  // costs k per factor but vectorizes. Measured on 768- to 3072-wide weight rows, element by
  // element wins there; runs win on activation tensors of hundreds of thousands of values.
  const double log_k = std::log2(static_cast<double>(k) + 1);
  const bool by_runs = static_cast<double>(k) > 32.0 * static_cast<double>(levels) * log_k;

  std::vector<float> sorted;
  std::vector<double> sums, sums_sq, shifts;
  if (by_runs) {
    sorted.resize(groups * k);
    sums.resize(groups * (k + 1));
    sums_sq.resize(groups * (k + 1));
    shifts.resize(groups);
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        float* x = sorted.data() + g * k;
        SortRow(rows + g * k, k, x);
        const double shift = x[k / 2];
        shifts[g] = shift;
        double* s1 = sums.data() + g * (k + 1);
        double* s2 = sums_sq.data() + g * (k + 1);
        s1[0] = s2[0] = 0;
        for (int64_t i = 0; i < k; ++i) {
          const double d = static_cast<double>(x[i]) - shift;
          s1[i + 1] = s1[i] + d;
          s2[i + 1] = s2[i] + d * d;
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
                    sums_sq.data() + g * (k + 1), k, shifts[g]};
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
