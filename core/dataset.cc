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
// A bound on what one IDX file may decompress to, so a crafted file cannot exhaust memory.
constexpr size_t kMaxDecompressedBytes = size_t{8} << 30;

StatusOr<std::string> ReadMaybeGzip(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return NotFoundError(path + ": no such file");
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return DataLossError(path + ": cannot open");
  std::string out;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) {
    out.append(buf, n);
    if (out.size() > kMaxDecompressedBytes) {
      gzclose(f);
      return ResourceExhaustedError(path + ": decompresses to more than 8 GiB");
    }
  }
  int err = 0;
  const char* msg = gzerror(f, &err);
  gzclose(f);
  if (n < 0 || (err != Z_OK && err != Z_STREAM_END)) {
    return DataLossError(path + ": decompression failed: " + (msg ? msg : "unknown"));
  }
  return out;
}

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
  QS_ASSIGN_OR_RETURN(std::string bytes, ReadMaybeGzip(path));
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.size() < 4 || p[0] != 0 || p[1] != 0) {
    return DataLossError(path + ": not an IDX file (bad magic)");
  }
  if (p[2] != 0x08) return InvalidArgumentError(path + ": only unsigned-byte IDX data is supported");
  const int dims = p[3];
  if (dims < 1 || dims > 3 || bytes.size() < 4 + 4 * static_cast<size_t>(dims)) {
    return DataLossError(path + ": bad IDX dimension count");
  }
  std::vector<int64_t> shape;
  uint64_t numel = 1;
  for (int i = 0; i < dims; ++i) {
    shape.push_back(BigEndian32(p + 4 + 4 * i));
    if (shape.back() != 0 && numel > bytes.size() / static_cast<uint64_t>(shape.back())) {
      return DataLossError(path + ": IDX dimensions describe more data than the file holds");
    }
    numel *= static_cast<uint64_t>(shape.back());
  }
  const size_t offset = 4 + 4 * dims;
  if (bytes.size() - offset != numel) {
    return DataLossError(path + ": holds " + std::to_string(bytes.size() - offset) +
                         " data bytes, its header says " + std::to_string(numel));
  }
  return GuardTorch(path, [&]() -> StatusOr<torch::Tensor> {
    auto t = torch::empty(shape, torch::kUInt8);
    std::memcpy(t.data_ptr(), p + offset, numel);
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
