// Image datasets for calibration and validation.
//
// Sources: "fashion-mnist:train" / "fashion-mnist:test" (the IDX files of Debian's
// dataset-fashion-mnist, or of $QS_FASHION_MNIST_DIR), or a path to a safetensors file holding
// `images` (float, NCHW, pixel values in [0, 1]) and `labels` (int64). Images are normalized with the
// model config's mean/std by NormalizeImages, not at load.
//
//   QS_ASSIGN_OR_RETURN(Dataset test, LoadDataset("fashion-mnist:test"));
//   Dataset calib = DrawSubset(train, 256, /*seed=*/0);
#ifndef QS_CORE_DATASET_H_
#define QS_CORE_DATASET_H_

#include <random>
#include <string>
#include <vector>

#include <torch/types.h>

#include "common/status.h"
#include "core/vit.h"

namespace qs::core {

struct Dataset {
  torch::Tensor images;  // float32 [N, C, H, W], values in [0, 1]
  torch::Tensor labels;  // int64 [N]
  std::string source;    // where it came from, for reports

  int64_t size() const { return images.defined() ? images.size(0) : 0; }
};

// Loads a source as described above. NOT_FOUND for missing files, DATA_LOSS for damaged ones,
// INVALID_ARGUMENT for an unknown source or tensors of the wrong dtype/shape.
StatusOr<Dataset> LoadDataset(const std::string& source);

// Reads one IDX file (optionally gzip-compressed): unsigned-byte data with 1 or 3 dimensions.
StatusOr<torch::Tensor> ReadIdxFile(const std::string& path);

// Partial Fisher-Yates with mt19937_64 (whose output sequence the standard fixes) and a bounded
// draw of this code's own (std::uniform_int_distribution differs between libraries): afterwards
// the first `count` entries of `order` are a uniform draw without replacement from all of them.
void ShuffleFront(std::vector<int64_t>* order, int64_t count, std::mt19937_64* rng);
// The first `count` of a seeded ShuffleFront of 0..n-1 (all of them, in order, when count >= n).
std::vector<int64_t> UniformDraw(int64_t n, int64_t count, uint64_t seed);

// `count` examples drawn without replacement by a seeded generator whose sequence is fixed by this
// code (not by the standard library), so the same seed gives the same subset everywhere. count >=
// size returns every example in order.
Dataset DrawSubset(const Dataset& data, int64_t count, uint64_t seed);

// The first `limit` examples (all when limit <= 0 or limit >= size).
Dataset Head(const Dataset& data, int64_t limit);

// INVALID_ARGUMENT naming `source` and both shapes unless `images` is [N, in_chans, img_size,
// img_size] for `config`.
Status CheckImagesFit(const torch::Tensor& images, const std::string& source,
                      const ViTConfig& config);

// Checks the dataset fits the model (channels and image size) and returns the normalized images.
StatusOr<torch::Tensor> NormalizeImages(const Dataset& data, const ViTConfig& config);

// A stable digest of the dataset's images and labels (sha256 hex).
std::string DatasetDigest(const Dataset& data);

}  // namespace qs::core

#endif  // QS_CORE_DATASET_H_
