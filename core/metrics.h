// Quality metrics comparing a quantized result with its float reference.
//
//   double db = SqnrDb(reference, quantized);   // 10·log10(Σref² / Σ(ref−q)²)
//   double acc = Top1(logits, labels);          // fraction in [0, 1]
#ifndef QS_CORE_METRICS_H_
#define QS_CORE_METRICS_H_

#include <torch/types.h>

namespace qs::core {

// The sums an approximation's quality metrics come from, in one pass accumulated in float64:
// Σref², Σ(ref − approx)², Σref·approx and Σ|ref − approx| over `count` values, and whether
// every approx value is finite (the sums are meaningless when not).
struct ErrorSums {
  double signal = 0;
  double noise = 0;
  double cross = 0;
  double absolute = 0;
  int64_t count = 0;
  bool finite = true;
};
ErrorSums SumErrors(const torch::Tensor& reference, const torch::Tensor& approx);

// Signal-to-quantization-noise ratio in dB. +inf when the two are equal, computed in float64.
double SqnrDb(const torch::Tensor& reference, const torch::Tensor& approx);
// Mean squared / absolute error.
double Mse(const torch::Tensor& reference, const torch::Tensor& approx);
double Mae(const torch::Tensor& reference, const torch::Tensor& approx);
// Cosine similarity of the two flattened tensors (1 when equal; 0 if either is all zero).
double Cosine(const torch::Tensor& reference, const torch::Tensor& approx);
// Mean over rows of KL(softmax(reference) ‖ softmax(approx)), logits [N, classes], in nats.
double OutputKl(const torch::Tensor& reference_logits, const torch::Tensor& logits);
// Fraction of rows whose argmax equals the label.
double Top1(const torch::Tensor& logits, const torch::Tensor& labels);
// Fraction of rows whose argmax agrees between the two logit tensors.
double Top1Agreement(const torch::Tensor& reference_logits, const torch::Tensor& logits);

}  // namespace qs::core

#endif  // QS_CORE_METRICS_H_
