#include "core/safetensors.h"

#include <filesystem>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "core/torch_status.h"

namespace qs::core {
namespace {

using nlohmann::json;

// Large enough for any real header (timm's largest models have a few thousand tensors), small
// enough that a corrupt length cannot make us allocate gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DtypeInfo {
  const char* name;
  torch::ScalarType type;
  int64_t bytes;
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", torch::kFloat64, 8}, {"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2},
    {"BF16", torch::kBFloat16, 2}, {"I64", torch::kInt64, 8}, {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2}, {"I8", torch::kInt8, 1}, {"U8", torch::kUInt8, 1},
    {"BOOL", torch::kBool, 1},
};

const DtypeInfo* FindDtype(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const DtypeInfo* FindDtype(torch::ScalarType type) {
  for (const auto& d : kDtypes) {
    if (type == d.type) return &d;
  }
  return nullptr;
}

Status ParseEntry(const std::string& file, const std::string& tensor, const json& j,
                  uint64_t data_size, SafetensorsEntry* out) {
  auto fail = [&](StatusCode code, const std::string& why) {
    return Status(code, file + ": tensor '" + tensor + "': " + why);
  };
  if (!j.is_object()) return fail(StatusCode::kDataLoss, "header entry is not an object");
  if (!j.contains("dtype") || !j["dtype"].is_string()) {
    return fail(StatusCode::kDataLoss, "missing string field 'dtype'");
  }
  out->dtype = j["dtype"].get<std::string>();
  const DtypeInfo* info = FindDtype(out->dtype);
  if (info == nullptr) {
    return fail(StatusCode::kInvalidArgument, "unsupported dtype '" + out->dtype + "'");
  }
  if (!j.contains("shape") || !j["shape"].is_array()) {
    return fail(StatusCode::kDataLoss, "missing array field 'shape'");
  }
  uint64_t numel = 1;
  for (const auto& d : j["shape"]) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0) {
      return fail(StatusCode::kDataLoss, "shape holds a non-integer or negative dimension");
    }
    int64_t dim = d.get<int64_t>();
    if (dim > 0 && numel > (UINT64_MAX / 16) / static_cast<uint64_t>(dim)) {
      return fail(StatusCode::kDataLoss, "shape is impossibly large");
    }
    numel *= static_cast<uint64_t>(dim);
    out->shape.push_back(dim);
  }
  const auto& offsets = j.contains("data_offsets") ? j["data_offsets"] : json();
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    return fail(StatusCode::kDataLoss, "'data_offsets' must be two non-negative integers");
  }
  out->begin = offsets[0].get<uint64_t>();
  out->end = offsets[1].get<uint64_t>();
  if (out->begin > out->end || out->end > data_size) {
    return fail(StatusCode::kDataLoss,
                "data_offsets [" + std::to_string(out->begin) + ", " + std::to_string(out->end) +
                    ") fall outside the " + std::to_string(data_size) + "-byte data section");
  }
  if (out->end - out->begin != numel * static_cast<uint64_t>(info->bytes)) {
    return fail(StatusCode::kDataLoss,
                "holds " + std::to_string(out->end - out->begin) + " bytes but dtype " +
                    out->dtype + " and its shape need " +
                    std::to_string(numel * static_cast<uint64_t>(info->bytes)));
  }
  return OkStatus();
}

}  // namespace

StatusOr<torch::ScalarType> SafetensorsDtype(const std::string& name) {
  const DtypeInfo* info = FindDtype(name);
  if (info == nullptr) return InvalidArgumentError("unsupported safetensors dtype '" + name + "'");
  return info->type;
}

StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  // The header first, from the file: junk (or a 1 GiB file that is not safetensors) fails after a
  // few bytes instead of after the whole file is in memory.
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec)) {
    const uint64_t size = std::filesystem::file_size(path, ec);
    std::FILE* f = ec ? nullptr : std::fopen(path.c_str(), "rb");
    if (f != nullptr) {
      unsigned char head[8] = {0};
      const size_t got = std::fread(head, 1, 8, f);
      uint64_t header_len = 0;
      for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | head[i];
      std::string header;
      const bool fits = got == 8 && header_len <= kMaxHeaderBytes && header_len <= size - 8;
      if (fits) {
        header.resize(header_len);
        header.resize(std::fread(header.data(), 1, header_len, f));
      }
      std::fclose(f);
      if (got < 8) {
        return DataLossError(path + ": truncated: " + std::to_string(size) +
                             " bytes, shorter than the 8-byte header length");
      }
      if (!fits) {
        return DataLossError(path + ": header length " + std::to_string(header_len) +
                             " exceeds the file (" + std::to_string(size) +
                             " bytes): truncated or not a safetensors file");
      }
      if (!json::accept(header.begin(), header.end())) {
        return DataLossError(path + ": malformed header JSON (not a safetensors file?)");
      }
    }
  }
  QS_ASSIGN_OR_RETURN(std::string bytes, ReadFileBytes(path));
  return Parse(std::move(bytes), path);
}

StatusOr<SafetensorsFile> SafetensorsFile::Parse(std::string bytes, const std::string& name) {
  if (bytes.size() < 8) {
    return DataLossError(name + ": truncated: " + std::to_string(bytes.size()) +
                         " bytes, shorter than the 8-byte header length");
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) {
    header_len = (header_len << 8) | static_cast<unsigned char>(bytes[i]);
  }
  if (header_len > kMaxHeaderBytes || header_len > bytes.size() - 8) {
    return DataLossError(name + ": header length " + std::to_string(header_len) +
                         " exceeds the file (" + std::to_string(bytes.size()) +
                         " bytes): truncated or not a safetensors file");
  }
  json header;
  try {
    header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + header_len);
  } catch (const json::exception& e) {
    return DataLossError(name + ": malformed header JSON: " + e.what());
  }
  if (!header.is_object()) return DataLossError(name + ": header is not a JSON object");

  SafetensorsFile file;
  file.name_ = name;
  file.data_start_ = 8 + header_len;
  const uint64_t data_size = bytes.size() - file.data_start_;
  for (const auto& item : header.items()) {
    if (item.key() == "__metadata__") {
      if (!item.value().is_object()) return DataLossError(name + ": __metadata__ is not an object");
      for (const auto& m : item.value().items()) {
        if (!m.value().is_string()) {
          return DataLossError(name + ": __metadata__ value '" + m.key() + "' is not a string");
        }
        file.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    SafetensorsEntry entry;
    QS_RETURN_IF_ERROR(ParseEntry(name, item.key(), item.value(), data_size, &entry));
    file.entries_[item.key()] = std::move(entry);
  }
  // Tensors must not share bytes: sort by offset and check neighbours.
  std::vector<std::pair<const std::string*, const SafetensorsEntry*>> by_offset;
  for (const auto& [k, e] : file.entries_) by_offset.push_back({&k, &e});
  std::sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) {
    return a.second->begin != b.second->begin ? a.second->begin < b.second->begin
                                              : a.second->end < b.second->end;
  });
  // Empty tensors occupy no bytes; among the others, each must start at or after the furthest end
  // seen so far.
  uint64_t max_end = 0;
  const std::string* max_owner = nullptr;
  for (const auto& [tensor, entry] : by_offset) {
    if (entry->begin == entry->end) continue;
    if (max_owner != nullptr && entry->begin < max_end) {
      return DataLossError(name + ": tensor '" + *tensor + "' overlaps tensor '" + *max_owner +
                           "' in the data section");
    }
    if (entry->end > max_end) {
      max_end = entry->end;
      max_owner = tensor;
    }
  }
  file.bytes_ = std::make_shared<const std::string>(std::move(bytes));
  return file;
}

StatusOr<torch::Tensor> SafetensorsFile::Tensor(const std::string& tensor) const {
  auto it = entries_.find(tensor);
  if (it == entries_.end()) {
    return NotFoundError(name_ + ": missing tensor '" + tensor + "'");
  }
  const SafetensorsEntry& e = it->second;
  return GuardTorch(name_ + ": tensor '" + tensor + "'", [&]() -> StatusOr<torch::Tensor> {
    const DtypeInfo* info = FindDtype(e.dtype);
    // Booleans are read as bytes and compared with 0: a stored byte other than 0 or 1 must not
    // become an invalid bool.
    const auto storage = info->type == torch::kBool ? torch::kUInt8 : info->type;
    auto out = torch::empty(e.shape, torch::TensorOptions().dtype(storage));
    if (e.end > e.begin) {
      std::memcpy(out.data_ptr(), bytes_->data() + data_start_ + e.begin, e.end - e.begin);
    }
    return info->type == torch::kBool ? out.ne(0) : out;
  });
}

Status WriteSafetensors(const std::string& path,
                        const std::map<std::string, torch::Tensor>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  return GuardTorch("write " + path, [&]() -> Status {
    json header = json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::vector<torch::Tensor> blobs;
    uint64_t offset = 0;
    for (const auto& [name, t] : tensors) {
      const DtypeInfo* info = FindDtype(t.scalar_type());
      if (info == nullptr) {
        return InvalidArgumentError("tensor '" + name + "' has a dtype safetensors cannot hold");
      }
      auto c = t.detach().to(torch::kCPU).contiguous();
      uint64_t size = static_cast<uint64_t>(c.numel()) * info->bytes;
      header[name] = {{"dtype", info->name},
                      {"shape", c.sizes().vec()},
                      {"data_offsets", {offset, offset + size}}};
      offset += size;
      blobs.push_back(c);
    }
    std::string text = header.dump();
    // Pad the header with spaces to an 8-byte boundary, as the reference writer does.
    while ((text.size() + 8) % 8 != 0) text.push_back(' ');
    std::string out;
    out.reserve(8 + text.size() + offset);
    uint64_t len = text.size();
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
    out += text;
    for (const auto& b : blobs) {
      out.append(static_cast<const char*>(b.data_ptr()), b.numel() * b.element_size());
    }
    return WriteFileAtomically(path, out);
  });
}

}  // namespace qs::core
