#include "core/dataset.h"

#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <random>

#include "common/sha256.h"
#include "core/safetensors.h"
#include "core/torch_status.h"

namespace qs::core {
namespace {

constexpr char kDefaultFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";
// A bound on the data one IDX file may declare, so a crafted header cannot exhaust memory.
constexpr uint64_t kMaxIdxBytes = uint64_t{8} << 30;

// A gzip (or plain: zlib reads those through) stream, closed on scope exit.
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path), f_(gzopen(path.c_str(), "rb")) {}
  ~GzReader() {
    if (f_ != nullptr) gzclose(f_);
  }
  bool ok() const { return f_ != nullptr; }
  // Reads up to `n` bytes into `out`; the count read, or DATA_LOSS naming zlib's error (its text
  // is copied before the stream is closed).
  StatusOr<size_t> Read(void* out, size_t n) {
    size_t done = 0;
    while (done < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - done, 1u << 30));
      const int got = gzread(f_, static_cast<char*>(out) + done, chunk);
      if (got < 0) {
        int err = 0;
        const char* msg = gzerror(f_, &err);
        return DataLossError(path_ + ": decompression failed: " + std::string(msg ? msg : "unknown"));
      }
      if (got == 0) break;
      done += static_cast<size_t>(got);
    }
    return done;
  }

 private:
  std::string path_;
  gzFile f_;
};

uint32_t BigEndian32(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
}

StatusOr<Dataset> LoadFashionMnist(const std::string& split) {
  const char* env = std::getenv("QS_FASHION_MNIST_DIR");
  std::string dir = env && *env ? env : kDefaultFashionMnistDir;
  std::string prefix = split == "train" ? "train" : "t10k";
  auto find = [&](const std::string& stem) {
    std::string gz = dir + "/" + stem + ".gz";
    return std::filesystem::exists(gz) ? gz : dir + "/" + stem;
  };
  QS_ASSIGN_OR_RETURN(torch::Tensor images, ReadIdxFile(find(prefix + "-images-idx3-ubyte")));
  QS_ASSIGN_OR_RETURN(torch::Tensor labels, ReadIdxFile(find(prefix + "-labels-idx1-ubyte")));
  if (images.dim() != 3 || labels.dim() != 1 || images.size(0) != labels.size(0)) {
    return DataLossError("fashion-mnist:" + split + ": image and label files disagree in shape");
  }
  Dataset d;
  d.images = images.to(torch::kFloat32).div_(255.0).unsqueeze(1);
  d.labels = labels.to(torch::kInt64);
  d.source = "fashion-mnist:" + split;
  return d;
}

StatusOr<Dataset> LoadSafetensorsDataset(const std::string& path) {
  QS_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
  QS_ASSIGN_OR_RETURN(torch::Tensor images, file.Tensor("images"));
  QS_ASSIGN_OR_RETURN(torch::Tensor labels, file.Tensor("labels"));
  if (!images.is_floating_point() || images.dim() != 4) {
    return InvalidArgumentError(path + ": tensor 'images' must be float NCHW");
  }
  if (labels.scalar_type() != torch::kInt64 || labels.dim() != 1 ||
      labels.size(0) != images.size(0)) {
    return InvalidArgumentError(path + ": tensor 'labels' must be int64 [N] matching 'images'");
  }
  Dataset d;
  d.images = images.to(torch::kFloat32);
  d.labels = labels;
  d.source = path;
  return d;
}

}  // namespace

StatusOr<torch::Tensor> ReadIdxFile(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return NotFoundError(path + ": no such file");
  GzReader in(path);
  if (!in.ok()) return DataLossError(path + ": cannot open");
  // The header first: it says how much data follows, and nothing more than that is read.
  unsigned char head[16];
  QS_ASSIGN_OR_RETURN(size_t got, in.Read(head, 4));
  if (got < 4 || head[0] != 0 || head[1] != 0) {
    return DataLossError(path + ": not an IDX file (bad magic)");
  }
  if (head[2] != 0x08) return InvalidArgumentError(path + ": only unsigned-byte IDX data is supported");
  const int dims = head[3];
  if (dims < 1 || dims > 3) return DataLossError(path + ": bad IDX dimension count");
  QS_ASSIGN_OR_RETURN(got, in.Read(head + 4, 4 * static_cast<size_t>(dims)));
  if (got < 4 * static_cast<size_t>(dims)) return DataLossError(path + ": truncated IDX header");
  std::vector<int64_t> shape;
  uint64_t numel = 1;
  for (int i = 0; i < dims; ++i) {
    shape.push_back(BigEndian32(head + 4 + 4 * i));
    if (shape.back() != 0 && numel > kMaxIdxBytes / static_cast<uint64_t>(shape.back())) {
      return ResourceExhaustedError(path + ": IDX header declares more than 8 GiB of data");
    }
    numel *= static_cast<uint64_t>(shape.back());
  }
  // Memory follows the data that arrives, not the header's claim.
  std::string data;
  data.reserve(static_cast<size_t>(std::min<uint64_t>(numel, uint64_t{64} << 20)));
  std::string chunk(1 << 20, '\0');
  while (data.size() < numel) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(chunk.size(), numel - data.size()));
    QS_ASSIGN_OR_RETURN(size_t read, in.Read(chunk.data(), want));
    data.append(chunk.data(), read);
    if (read < want) break;
  }
  if (data.size() != numel) {
    return DataLossError(path + ": holds " + std::to_string(data.size()) +
                         " data bytes, its header says " + std::to_string(numel));
  }
  return GuardTorch(path, [&]() -> StatusOr<torch::Tensor> {
    auto t = torch::empty(shape, torch::kUInt8);
    if (numel > 0) std::memcpy(t.data_ptr(), data.data(), numel);  // empty: no data pointer
    char extra;
    QS_ASSIGN_OR_RETURN(size_t more, in.Read(&extra, 1));
    if (more != 0) {
      return DataLossError(path + ": holds more data bytes than its header says (" +
                           std::to_string(numel) + ")");
    }
    return t;
  });
}

StatusOr<Dataset> LoadDataset(const std::string& source) {
  return GuardTorch("dataset " + source, [&]() -> StatusOr<Dataset> {
    const std::string kPrefix = "fashion-mnist:";
    if (source.rfind(kPrefix, 0) == 0) {
      std::string split = source.substr(kPrefix.size());
      if (split != "train" && split != "test") {
        return InvalidArgumentError("unknown dataset split '" + source +
                                    "' (expected fashion-mnist:train or fashion-mnist:test)");
      }
      return LoadFashionMnist(split);
    }
    if (source.size() > 12 && source.substr(source.size() - 12) == ".safetensors") {
      return LoadSafetensorsDataset(source);
    }
    return InvalidArgumentError("unknown dataset source '" + source +
                                "' (expected fashion-mnist:train, fashion-mnist:test or a "
                                ".safetensors file)");
  });
}

void ShuffleFront(std::vector<int64_t>* order, int64_t count, std::mt19937_64* rng) {
  const int64_t n = static_cast<int64_t>(order->size());
  for (int64_t i = 0; i < count && i < n; ++i) {
    const uint64_t range = static_cast<uint64_t>(n - i);
    const uint64_t limit = UINT64_MAX - UINT64_MAX % range;
    uint64_t r;
    do {
      r = (*rng)();
    } while (r >= limit);
    std::swap((*order)[i], (*order)[i + static_cast<int64_t>(r % range)]);
  }
}

std::vector<int64_t> UniformDraw(int64_t n, int64_t count, uint64_t seed) {
  std::vector<int64_t> order(std::max<int64_t>(n, 0));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  if (count >= n) return order;
  std::mt19937_64 rng(seed);
  ShuffleFront(&order, std::max<int64_t>(count, 0), &rng);
  order.resize(std::max<int64_t>(count, 0));
  return order;
}

Dataset DrawSubset(const Dataset& data, int64_t count, uint64_t seed) {
  const int64_t n = data.size();
  count = std::max<int64_t>(count, 0);
  if (count >= n) return data;
  auto index = torch::tensor(UniformDraw(n, count, seed));
  Dataset out;
  out.images = data.images.index_select(0, index);
  out.labels = data.labels.index_select(0, index);
  out.source = data.source + "[subset " + std::to_string(count) + ", seed " +
               std::to_string(seed) + "]";
  return out;
}

Dataset Head(const Dataset& data, int64_t limit) {
  if (limit <= 0 || limit >= data.size()) return data;
  Dataset out;
  out.images = data.images.narrow(0, 0, limit);
  out.labels = data.labels.narrow(0, 0, limit);
  out.source = data.source + "[:" + std::to_string(limit) + "]";
  return out;
}

Status CheckImagesFit(const torch::Tensor& x, const std::string& source, const ViTConfig& config) {
  if (x.dim() == 4 && x.size(1) == config.in_chans && x.size(2) == config.img_size &&
      x.size(3) == config.img_size) {
    return OkStatus();
  }
  return InvalidArgumentError(
      "dataset " + source + " has images of shape [" +
      (x.dim() == 4 ? std::to_string(x.size(1)) + ", " + std::to_string(x.size(2)) + ", " +
                          std::to_string(x.size(3))
                    : std::string("?")) +
      "] but the model expects [" + std::to_string(config.in_chans) + ", " +
      std::to_string(config.img_size) + ", " + std::to_string(config.img_size) + "]");
}

StatusOr<torch::Tensor> NormalizeImages(const Dataset& data, const ViTConfig& config) {
  const auto& x = data.images;
  QS_RETURN_IF_ERROR(CheckImagesFit(x, data.source, config));
  // Measuring on nothing, on pixels that are not numbers, or against labels the model cannot
  // output gives numbers that look like results; they are errors.
  if (x.size(0) == 0) return InvalidArgumentError(data.source + ": no images");
  QS_RETURN_IF_ERROR(GuardTorch("normalize", [&]() -> Status {
    if (!torch::isfinite(x).all().item<bool>()) {
      return InvalidArgumentError(data.source + ": images hold NaN or infinite pixels");
    }
    if (data.labels.defined() && data.labels.numel() > 0) {
      const int64_t lo = data.labels.min().item<int64_t>(), hi = data.labels.max().item<int64_t>();
      if (lo < 0 || hi >= config.num_classes) {
        return InvalidArgumentError(data.source + ": labels span " + std::to_string(lo) + ".." +
                                    std::to_string(hi) + ", outside the model's 0.." +
                                    std::to_string(config.num_classes - 1));
      }
    }
    return OkStatus();
  }));
  return GuardTorch("normalize", [&]() -> StatusOr<torch::Tensor> {
    auto mean = torch::tensor(config.mean, torch::kFloat64).to(torch::kFloat32).view({1, -1, 1, 1});
    auto std = torch::tensor(config.std, torch::kFloat64).to(torch::kFloat32).view({1, -1, 1, 1});
    return (x - mean) / std;
  });
}

std::string DatasetDigest(const Dataset& data) {
  Sha256 h;
  auto images = data.images.contiguous();
  auto labels = data.labels.contiguous();
  for (auto s : images.sizes()) h.Update(std::to_string(s) + ",");
  h.Update(images.data_ptr(), images.numel() * images.element_size());
  h.Update(labels.data_ptr(), labels.numel() * labels.element_size());
  return h.HexDigest();
}

}  // namespace qs::core
