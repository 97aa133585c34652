#include "core/image_set.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <unordered_map>

#include <sys/stat.h>

#include "core/image_io.h"
#include "core/torch_status.h"

namespace qs::core {
namespace {

namespace fs = std::filesystem;

// Examples already in memory: Fashion-MNIST and safetensors sets.
class TensorSource : public ImageSource {
 public:
  TensorSource(Dataset data, std::string key_prefix)
      : images_(std::move(data.images)), key_prefix_(std::move(key_prefix)) {
    name_ = data.source;
    labels_ = data.labels;
  }
  std::string ExampleKey(int64_t i) const override {
    return key_prefix_ + "#" + std::to_string(i);
  }
  StatusOr<torch::Tensor> Read(const std::vector<int64_t>& indices) const override {
    return GuardTorch(name_, [&]() -> StatusOr<torch::Tensor> {
      return images_.index_select(0, torch::tensor(indices, torch::kInt64));
    });
  }

 private:
  torch::Tensor images_;
  std::string key_prefix_;
};

// Image files, decoded and transformed when read.
class FileSource : public ImageSource {
 public:
  FileSource(std::string name, std::vector<std::string> paths, std::vector<int64_t> labels,
             EvalTransform transform)
      : paths_(std::move(paths)), transform_(transform) {
    name_ = std::move(name);
    labels_ = torch::tensor(labels, torch::kInt64);
  }
  std::string ExampleKey(int64_t i) const override { return paths_[i]; }
  StatusOr<torch::Tensor> Read(const std::vector<int64_t>& indices) const override {
    std::vector<torch::Tensor> images;
    images.reserve(indices.size());
    for (int64_t i : indices) {
      QS_ASSIGN_OR_RETURN(torch::Tensor image, ReadEvalImage(paths_[i], transform_));
      images.push_back(std::move(image));
    }
    return GuardTorch(name_, [&]() -> StatusOr<torch::Tensor> {
      if (images.empty()) {
        return torch::empty({0, transform_.in_chans, transform_.img_size, transform_.img_size});
      }
      return at::stack(images);
    });
  }

 private:
  std::vector<std::string> paths_;  // canonical
  EvalTransform transform_;
};

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Extensions torchvision's ImageFolder takes: JPEG and PNG are read, the others refused by name
// (skipping them would shift nothing but silently shrink a class).
bool IsReadableImage(const std::string& ext) {
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png";
}
bool IsOtherImage(const std::string& ext) {
  return ext == ".ppm" || ext == ".bmp" || ext == ".pgm" || ext == ".tif" || ext == ".tiff" ||
         ext == ".webp";
}

// A file's canonical path (symlinks resolved), for overlap checks; the path itself if that fails.
std::string CanonicalPath(const fs::path& path) {
  std::error_code ec;
  fs::path canonical = fs::weakly_canonical(path, ec);
  return ec ? path.string() : canonical.string();
}

// The JPEG and PNG files under `class_dir` (following symlinked folders, refusing a loop) as
// (folder, file name) pairs in torchvision's order: sorted(os.walk(...)), names sorted.
StatusOr<std::vector<std::pair<std::string, std::string>>> ListClassFiles(
    const std::string& name, const fs::path& class_dir) {
  std::vector<std::pair<std::string, std::string>> files;
  std::set<std::pair<dev_t, ino_t>> folders;
  auto visit = [&](const fs::path& folder) -> Status {
    struct stat st {};
    if (::stat(folder.c_str(), &st) != 0) return OkStatus();  // a dangling link: nothing below
    if (!folders.insert({st.st_dev, st.st_ino}).second) {
      return InvalidArgumentError(name + ": " + folder.string() +
                                  " leads back to a folder already listed (a symlink loop)");
    }
    return OkStatus();
  };
  QS_RETURN_IF_ERROR(visit(class_dir));
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(
           class_dir, fs::directory_options::follow_directory_symlink, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code entry_ec;
    if (it->is_directory(entry_ec)) {
      QS_RETURN_IF_ERROR(visit(it->path()));
      continue;
    }
    if (!it->is_regular_file(entry_ec)) continue;
    const std::string ext = Lower(it->path().extension().string());
    if (IsOtherImage(ext)) {
      return InvalidArgumentError(name + ": " + it->path().string() +
                                  ": only JPEG and PNG images are read");
    }
    if (IsReadableImage(ext)) {
      files.emplace_back(it->path().parent_path().string(), it->path().filename().string());
    }
  }
  if (ec) return DataLossError(name + ": cannot list " + class_dir.string() + ": " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

StatusOr<std::unique_ptr<ImageSource>> OpenImageFolder(const std::string& dir,
                                                       const EvalTransform& transform) {
  const std::string name = "imagefolder:" + dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return NotFoundError(name + ": no such directory");
  std::vector<std::string> classes;
  for (fs::directory_iterator it(dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    std::error_code entry_ec;
    if (it->is_directory(entry_ec)) classes.push_back(it->path().filename().string());
  }
  if (ec) return DataLossError(name + ": cannot list: " + ec.message());
  if (classes.empty()) return InvalidArgumentError(name + ": holds no class subfolders");
  std::sort(classes.begin(), classes.end());
  std::vector<std::string> paths;
  std::vector<int64_t> labels;
  for (size_t label = 0; label < classes.size(); ++label) {
    QS_ASSIGN_OR_RETURN(auto files, ListClassFiles(name, fs::path(dir) / classes[label]));
    if (files.empty()) {
      return InvalidArgumentError(name + ": class folder '" + classes[label] +
                                  "' holds no JPEG or PNG file");
    }
    for (const auto& [folder, file] : files) {
      paths.push_back(CanonicalPath(fs::path(folder) / file));
      labels.push_back(static_cast<int64_t>(label));
    }
  }
  return std::unique_ptr<ImageSource>(
      new FileSource(name, std::move(paths), std::move(labels), transform));
}

StatusOr<std::unique_ptr<ImageSource>> OpenFileList(const std::string& list,
                                                    const EvalTransform& transform) {
  const std::string name = "filelist:" + list;
  std::error_code ec;
  if (!fs::is_regular_file(list, ec)) return NotFoundError(name + ": no such file");
  std::ifstream in(list);
  if (!in) return DataLossError(name + ": cannot open");
  const fs::path base = fs::path(list).parent_path();
  std::vector<std::string> paths;
  std::vector<int64_t> labels;
  constexpr std::streamsize kMaxLine = 4096;
  std::vector<char> buffer(kMaxLine + 1);
  for (int64_t number = 1; in.getline(buffer.data(), kMaxLine + 1) || in.gcount() > 0; ++number) {
    const std::string where = name + ":" + std::to_string(number) + ": ";
    // getline stops a line that does not fit with the failbit, before reading the rest.
    if (in.fail() && !in.eof()) return InvalidArgumentError(where + "line longer than 4096 bytes");
    std::string line(buffer.data());
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos || line[start] == '#') continue;
    // The label is the last field; the path is everything before it (it may hold spaces).
    const size_t split = line.find_last_of(" \t");
    if (split == std::string::npos || split < start) {
      return InvalidArgumentError(where + "expected \"path label\"");
    }
    const std::string label_text = line.substr(split + 1);
    std::string path = line.substr(start, split - start);
    while (!path.empty() && std::isspace(static_cast<unsigned char>(path.back()))) path.pop_back();
    if (label_text.empty() || label_text.size() > 7 ||
        !std::all_of(label_text.begin(), label_text.end(),
                     [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
      return InvalidArgumentError(where + "label '" + label_text +
                                  "' is not a non-negative integer below 10^7");
    }
    const int64_t label = std::stoll(label_text);
    fs::path file = fs::path(path).is_absolute() ? fs::path(path) : base / path;
    if (!fs::is_regular_file(file, ec)) {
      return NotFoundError(where + file.string() + ": no such file");
    }
    paths.push_back(CanonicalPath(file));
    labels.push_back(label);
  }
  if (in.bad()) return DataLossError(name + ": read error");
  if (paths.empty()) return InvalidArgumentError(name + ": lists no image");
  return std::unique_ptr<ImageSource>(
      new FileSource(name, std::move(paths), std::move(labels), transform));
}

StatusOr<std::unique_ptr<ImageSource>> OpenSource(const std::string& base,
                                                  const ViTConfig& config) {
  if (base.rfind("imagefolder:", 0) == 0 || base.rfind("filelist:", 0) == 0) {
    EvalTransform transform;
    transform.img_size = config.img_size;
    transform.in_chans = config.in_chans;
    transform.crop_pct = config.crop_pct;
    QS_ASSIGN_OR_RETURN(transform.interpolation, ParseInterpolation(config.interpolation));
    if (transform.in_chans != 1 && transform.in_chans != 3) {
      return InvalidArgumentError(base + ": image files feed models with 1 or 3 input channels, "
                                  "the model has " + std::to_string(config.in_chans));
    }
    const size_t colon = base.find(':');
    const std::string path = base.substr(colon + 1);
    if (path.empty()) return InvalidArgumentError("source '" + base + "' names no path");
    return base[0] == 'i' ? OpenImageFolder(path, transform) : OpenFileList(path, transform);
  }
  QS_ASSIGN_OR_RETURN(Dataset data, LoadDataset(base));
  QS_RETURN_IF_ERROR(CheckImagesFit(data.images, base, config));
  std::string key = base;
  if (base.rfind("fashion-mnist:", 0) != 0) key = CanonicalPath(base);
  return std::unique_ptr<ImageSource>(new TensorSource(std::move(data), key));
}

// Positions (into `labels`) of a class-balanced draw of `count`.
std::vector<int64_t> BalancedPositions(const std::vector<int64_t>& labels, int64_t count,
                                       uint64_t seed) {
  std::map<int64_t, std::vector<int64_t>> by_class;
  for (size_t i = 0; i < labels.size(); ++i) by_class[labels[i]].push_back(i);
  std::vector<std::vector<int64_t>*> classes;
  for (auto& [label, members] : by_class) classes.push_back(&members);
  std::mt19937_64 rng(seed);
  // Which classes take the remainder when count does not divide: a seeded order of classes.
  std::vector<int64_t> order(classes.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  ShuffleFront(&order, static_cast<int64_t>(order.size()), &rng);
  // Water-filling: every class as many as the others, small classes giving their share away.
  std::vector<int64_t> quota(classes.size(), 0);
  int64_t remaining = count;
  while (remaining > 0) {
    std::vector<int64_t> open;
    for (int64_t k : order) {
      if (quota[k] < static_cast<int64_t>(classes[k]->size())) open.push_back(k);
    }
    if (open.empty()) break;
    const int64_t share = std::max<int64_t>(1, remaining / static_cast<int64_t>(open.size()));
    for (int64_t k : open) {
      const int64_t add = std::min({share, static_cast<int64_t>(classes[k]->size()) - quota[k],
                                    remaining});
      quota[k] += add;
      remaining -= add;
      if (remaining == 0) break;
    }
  }
  std::vector<int64_t> positions;
  for (size_t k = 0; k < classes.size(); ++k) {
    ShuffleFront(classes[k], quota[k], &rng);
    positions.insert(positions.end(), classes[k]->begin(), classes[k]->begin() + quota[k]);
  }
  std::sort(positions.begin(), positions.end());
  return positions;
}

}  // namespace

torch::Tensor ImageSet::labels() const {
  return source->labels().index_select(0, torch::tensor(indices, torch::kInt64));
}

StatusOr<SourceText> ParseSourceText(const std::string& text) {
  SourceText out;
  out.base = text;
  if (text.empty() || text.back() != ']') return out;
  const size_t open = text.rfind('[');
  if (open == std::string::npos || open == 0) {
    return InvalidArgumentError("source '" + text + "': unbalanced ']'");
  }
  const std::string slice = text.substr(open + 1, text.size() - open - 2);
  const size_t colon = slice.find(':');
  if (colon == std::string::npos || slice.find(':', colon + 1) != std::string::npos) {
    return InvalidArgumentError("source '" + text + "': a slice is [begin:end]");
  }
  auto parse = [&](const std::string& s, std::optional<int64_t>* v) -> Status {
    if (s.empty()) return OkStatus();
    size_t i = s[0] == '-' ? 1 : 0;
    if (i == s.size() || s.size() > 12 ||
        !std::all_of(s.begin() + i, s.end(),
                     [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
      return InvalidArgumentError("source '" + text + "': slice bound '" + s +
                                  "' is not an integer");
    }
    *v = std::stoll(s);
    return OkStatus();
  };
  QS_RETURN_IF_ERROR(parse(slice.substr(0, colon), &out.begin));
  QS_RETURN_IF_ERROR(parse(slice.substr(colon + 1), &out.end));
  out.base = text.substr(0, open);
  return out;
}

StatusOr<ImageSet> OpenImageSet(const std::string& text, const ViTConfig& config) {
  QS_ASSIGN_OR_RETURN(SourceText parsed, ParseSourceText(text));
  QS_ASSIGN_OR_RETURN(std::unique_ptr<ImageSource> source, OpenSource(parsed.base, config));
  const auto labels = source->labels();
  if (labels.numel() > 0) {
    const int64_t top = labels.max().item<int64_t>(), bottom = labels.min().item<int64_t>();
    if (bottom < 0 || top >= config.num_classes) {
      return InvalidArgumentError(text + ": label " + std::to_string(bottom < 0 ? bottom : top) +
                                  " is outside the model's " +
                                  std::to_string(config.num_classes) + " classes");
    }
  }
  // Python's slice semantics: negative bounds count from the end, bounds clamp to the size.
  const int64_t n = source->size();
  auto resolve = [n](std::optional<int64_t> v, int64_t fallback) {
    if (!v) return fallback;
    const int64_t x = *v < 0 ? *v + n : *v;
    return std::clamp<int64_t>(x, 0, n);
  };
  const int64_t begin = resolve(parsed.begin, 0), end = std::max(begin, resolve(parsed.end, n));
  if (begin == end) return InvalidArgumentError("source '" + text + "' selects no example");
  ImageSet set;
  set.source = std::move(source);
  for (int64_t i = begin; i < end; ++i) set.indices.push_back(i);
  set.description = text;
  return set;
}

StatusOr<Sampling> ParseSampling(const std::string& name) {
  if (name == "balanced") return Sampling::kBalanced;
  if (name == "uniform") return Sampling::kUniform;
  return InvalidArgumentError("sampling must be \"balanced\" or \"uniform\", got \"" + name + "\"");
}

const char* SamplingName(Sampling sampling) {
  return sampling == Sampling::kBalanced ? "balanced" : "uniform";
}

ImageSet DrawImages(const ImageSet& set, int64_t count, uint64_t seed, Sampling sampling) {
  if (count > set.size()) {
    // More than there is: all of them, and the description says so.
    ImageSet all = set;
    all.description += "[all " + std::to_string(set.size()) + ": " + std::to_string(count) +
                       " asked]";
    return all;
  }
  if (count <= 0 || count == set.size()) return set;
  std::vector<int64_t> positions;
  if (sampling == Sampling::kUniform) {
    positions = UniformDraw(set.size(), count, seed);
  } else {
    auto labels = set.labels();
    const int64_t* p = labels.data_ptr<int64_t>();
    positions = BalancedPositions(std::vector<int64_t>(p, p + labels.numel()), count, seed);
  }
  ImageSet out;
  out.source = set.source;
  for (int64_t q : positions) out.indices.push_back(set.indices[q]);
  out.description = set.description + "[" + SamplingName(sampling) + " " + std::to_string(count) +
                    ", seed " + std::to_string(seed) + "]";
  return out;
}

StatusOr<ImageSet> OpenAndDraw(const std::string& text, const ViTConfig& config, int64_t count,
                               uint64_t seed, const std::string& sampling) {
  QS_ASSIGN_OR_RETURN(Sampling picked, ParseSampling(sampling));
  QS_ASSIGN_OR_RETURN(ImageSet set, OpenImageSet(text, config));
  return DrawImages(set, count, seed, picked);
}

Status CheckDisjoint(const std::vector<std::pair<std::string, const ImageSet*>>& sets) {
  std::unordered_map<std::string, size_t> owner;
  for (size_t s = 0; s < sets.size(); ++s) {
    const ImageSet& set = *sets[s].second;
    int64_t shared = 0;
    std::string example;
    size_t other = 0;
    for (int64_t i : set.indices) {
      auto [it, inserted] = owner.emplace(set.source->ExampleKey(i), s);
      if (!inserted && it->second != s) {
        if (shared++ == 0) {
          example = it->first;
          other = it->second;
        }
      }
    }
    if (shared > 0) {
      return InvalidArgumentError(sets[other].first + " (" + sets[other].second->description +
                                  ") and " + sets[s].first + " (" + set.description +
                                  ") share " + std::to_string(shared) + " example(s), e.g. " +
                                  example + ": they must be disjoint");
    }
  }
  return OkStatus();
}

StatusOr<Dataset> Materialize(const ImageSet& set, int64_t max_bytes) {
  if (set.size() == 0) return InvalidArgumentError(set.description + ": no image to read");
  QS_ASSIGN_OR_RETURN(torch::Tensor first, set.source->Read({set.indices.front()}));
  const int64_t bytes = first.numel() * static_cast<int64_t>(sizeof(float)) * set.size();
  if (bytes > max_bytes) {
    return ResourceExhaustedError(
        set.description + ": " + std::to_string(set.size()) + " images would take " +
        std::to_string(bytes >> 20) + " MiB in memory, over the " +
        std::to_string(max_bytes >> 20) + " MiB bound; draw fewer (count or limit)");
  }
  Dataset out;
  QS_ASSIGN_OR_RETURN(out.images, set.source->Read(set.indices));
  out.labels = set.labels();
  out.source = set.description;
  return out;
}

BatchReader::BatchReader(ImageSet set, int64_t batch_size, int prefetch)
    : set_(std::move(set)),
      batch_size_(std::max<int64_t>(1, batch_size)),
      prefetch_(static_cast<size_t>(std::max(1, prefetch))) {
  thread_ = std::thread([this] { Run(); });
}

BatchReader::~BatchReader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void BatchReader::Run() {
  for (int64_t start = 0; start < set_.size(); start += batch_size_) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || ready_.size() < prefetch_; });
      if (stop_) break;
    }
    const int64_t end = std::min(set_.size(), start + batch_size_);
    std::vector<int64_t> indices(set_.indices.begin() + start, set_.indices.begin() + end);
    // Nothing may escape this thread (an exception would end the process): every failure
    // becomes the batch's status.
    StatusOr<Batch> batch = [&]() -> StatusOr<Batch> {
      try {
        QS_ASSIGN_OR_RETURN(torch::Tensor images, set_.source->Read(indices));
        return GuardTorch(set_.description, [&]() -> StatusOr<Batch> {
          return Batch{images, set_.source->labels().index_select(
                                   0, torch::tensor(indices, torch::kInt64))};
        });
      } catch (const std::bad_alloc&) {
        return ResourceExhaustedError(set_.description + ": out of memory reading a batch");
      } catch (const std::exception& e) {
        return InternalError(set_.description + ": " + e.what());
      }
    }();
    const bool failed = !batch.ok();
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready_.push_back(std::move(batch));
    }
    cv_.notify_all();
    if (failed) break;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
  }
  cv_.notify_all();
}

StatusOr<std::optional<BatchReader::Batch>> BatchReader::Next() {
  std::unique_lock<std::mutex> lock(mu_);
  if (!error_.ok()) return error_;
  cv_.wait(lock, [&] { return !ready_.empty() || done_; });
  if (ready_.empty()) return std::optional<Batch>();
  StatusOr<Batch> batch = std::move(ready_.front());
  ready_.pop_front();
  if (!batch.ok()) error_ = batch.status();  // the reading stopped there: every later call says so
  lock.unlock();
  cv_.notify_all();
  if (!batch.ok()) return batch.status();
  return std::optional<Batch>(std::move(*batch));
}

StatusOr<torch::Tensor> StreamLogits(const ImageSet& set, const ViTConfig& config,
                                     const ForwardFn& forward, int64_t batch_size,
                                     const std::function<void(int64_t)>& on_batch) {
  BatchReader reader(set, batch_size);
  std::vector<torch::Tensor> logits;
  int64_t done = 0;
  while (true) {
    QS_ASSIGN_OR_RETURN(std::optional<BatchReader::Batch> batch, reader.Next());
    if (!batch) break;
    Dataset part{batch->images, batch->labels, set.description};
    QS_ASSIGN_OR_RETURN(torch::Tensor x, NormalizeImages(part, config));
    QS_ASSIGN_OR_RETURN(torch::Tensor y, forward(x));
    done += y.size(0);
    logits.push_back(std::move(y));
    if (on_batch) on_batch(done);
  }
  if (logits.empty()) return InvalidArgumentError(set.description + ": no images");
  return GuardTorch("logits", [&]() -> StatusOr<torch::Tensor> { return at::cat(logits, 0); });
}

}  // namespace qs::core
