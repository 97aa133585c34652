// Image sets: where examples come from (a source), which of them a job uses (an index selection),
// and how they are read (in batches, by a prefetch thread, never all in memory at once).
//
// Source syntax, each optionally followed by a slice "[begin:end]" (Python's: either end may be
// omitted or negative), which restricts the examples before any subset is drawn:
//   fashion-mnist:train, fashion-mnist:test    Debian's dataset-fashion-mnist (in memory, small)
//   PATH.safetensors                           `images` float NCHW in [0, 1], `labels` int64
//   imagefolder:DIR                            DIR/<class>/<image>: JPEG or PNG files; classes in
//                                              sorted-name order, files sorted within a class
//   filelist:FILE                              one "path label" per line (paths relative to FILE)
// Image files go through the model's timm evaluation transform (core/image_io.h) when read.
//
//   QS_ASSIGN_OR_RETURN(ImageSet val, OpenImageSet("imagefolder:/data/val[:5000]", config));
//   ImageSet subset = DrawImages(val, 1000, /*seed=*/0, Sampling::kBalanced);
//   QS_ASSIGN_OR_RETURN(torch::Tensor logits, StreamLogits(subset, model.config(),
//                       [&](const torch::Tensor& x) { return model.Logits(x); }));
#ifndef QS_CORE_IMAGE_SET_H_
#define QS_CORE_IMAGE_SET_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "common/status.h"
#include "core/dataset.h"
#include "core/vit.h"

namespace qs::core {

// Labels in memory, images read on demand. Thread-safe for concurrent reads.
class ImageSource {
 public:
  virtual ~ImageSource() = default;
  const std::string& name() const { return name_; }
  int64_t size() const { return labels_.size(0); }
  const torch::Tensor& labels() const { return labels_; }  // int64 [N]
  // Names example `i` wherever it is read from (an image file's canonical path; the source and
  // index otherwise), so that two sets can be checked for shared examples.
  virtual std::string ExampleKey(int64_t i) const = 0;
  // float32 [n, C, H, W] in [0, 1] for `indices` (each in [0, size)).
  virtual StatusOr<torch::Tensor> Read(const std::vector<int64_t>& indices) const = 0;

 protected:
  std::string name_;
  torch::Tensor labels_;
};

// A source and the examples a job takes from it, in reading order.
struct ImageSet {
  std::shared_ptr<const ImageSource> source;
  std::vector<int64_t> indices;
  std::string description;  // the source text, plus how the subset was drawn

  int64_t size() const { return static_cast<int64_t>(indices.size()); }
  torch::Tensor labels() const;  // int64 [size()]
};

// "base[begin:end]" split into the base and the slice; INVALID_ARGUMENT for a malformed slice.
struct SourceText {
  std::string base;
  std::optional<int64_t> begin, end;
};
StatusOr<SourceText> ParseSourceText(const std::string& text);

// Opens the source `text` names for a model with `config` (image files are transformed to its
// img_size and in_chans) and selects its slice. NOT_FOUND for a missing file or folder,
// INVALID_ARGUMENT for an unknown source, an empty folder or a malformed list, DATA_LOSS for a
// damaged file; messages name the source and the file.
StatusOr<ImageSet> OpenImageSet(const std::string& text, const ViTConfig& config);

// How a subset is drawn. kBalanced: the same number from every class (as far as each class
// holds), each class's examples drawn by the seeded generator, returned in index order.
// kUniform: a seeded draw without replacement over all examples, in draw order (the draw of
// DrawSubset, which qsearch used before it balanced classes).
enum class Sampling { kBalanced, kUniform };
StatusOr<Sampling> ParseSampling(const std::string& name);
const char* SamplingName(Sampling sampling);

// `count` examples of `set` (all of them, in order, when count <= 0 or count >= size; when count
// > size the description says "[all N: count asked]", so the clamp is never silent). The
// sequence depends only on the seed and the labels, not on the standard library.
ImageSet DrawImages(const ImageSet& set, int64_t count, uint64_t seed, Sampling sampling);

// OpenImageSet, then DrawImages with the sampling named "balanced" or "uniform".
StatusOr<ImageSet> OpenAndDraw(const std::string& text, const ViTConfig& config, int64_t count,
                               uint64_t seed, const std::string& sampling);

// INVALID_ARGUMENT naming both sets and an example when two of `sets` (name, set) share one.
Status CheckDisjoint(const std::vector<std::pair<std::string, const ImageSet*>>& sets);

// Reads the whole set into memory (for calibration sets, which the engine keeps anyway).
// RESOURCE_EXHAUSTED, before reading, when the float images would take more than `max_bytes`.
StatusOr<Dataset> Materialize(const ImageSet& set, int64_t max_bytes = int64_t{8} << 30);

// Reads a set in batches on a thread of its own, `prefetch` batches ahead of the consumer.
class BatchReader {
 public:
  struct Batch {
    torch::Tensor images;  // float32 [n, C, H, W] in [0, 1]
    torch::Tensor labels;  // int64 [n]
  };
  BatchReader(ImageSet set, int64_t batch_size, int prefetch = 2);
  ~BatchReader();
  BatchReader(const BatchReader&) = delete;
  BatchReader& operator=(const BatchReader&) = delete;
  // The next batch, nullopt after the last, or the error that stopped the reading (on this and
  // every later call).
  StatusOr<std::optional<Batch>> Next();

 private:
  void Run();

  const ImageSet set_;
  const int64_t batch_size_;
  const size_t prefetch_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<StatusOr<Batch>> ready_;
  bool done_ = false, stop_ = false;
  Status error_;  // the error a batch ended the reading with, once Next returned it
  std::thread thread_;
};

// Logits of every image of `set`: `forward` runs on each batch (normalized with the config's
// mean/std) while a BatchReader reads the next. CPU float [size, num_classes].
using ForwardFn = std::function<StatusOr<torch::Tensor>(const torch::Tensor& images)>;
// `on_batch`, when set, hears the images done after each batch.
StatusOr<torch::Tensor> StreamLogits(const ImageSet& set, const ViTConfig& config,
                                     const ForwardFn& forward, int64_t batch_size = 256,
                                     const std::function<void(int64_t)>& on_batch = {});

}  // namespace qs::core

#endif  // QS_CORE_IMAGE_SET_H_
