// Reading and writing the safetensors format: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the raw tensor bytes.
//
// Every structural defect (truncation, malformed JSON, offsets that lie, unknown dtypes, overlapping
// tensors) is reported as DATA_LOSS or INVALID_ARGUMENT naming the tensor; nothing is trusted.
//
//   QS_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
//   QS_ASSIGN_OR_RETURN(torch::Tensor w, file.Tensor("head.weight"));
#ifndef QS_CORE_SAFETENSORS_H_
#define QS_CORE_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "common/status.h"

namespace qs::core {

struct SafetensorsEntry {
  std::string dtype;             // "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"
  std::vector<int64_t> shape;
  uint64_t begin = 0;            // byte offsets into the data section
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  // Reads and validates the whole file. Errors: NOT_FOUND (no such file), DATA_LOSS (truncated,
  // malformed header, offsets outside the data or overlapping, a byte size that disagrees with
  // dtype × shape), INVALID_ARGUMENT (unknown dtype).
  static StatusOr<SafetensorsFile> Open(const std::string& path);
  // The same checks over bytes already in memory; `name` is used in messages.
  static StatusOr<SafetensorsFile> Parse(std::string bytes, const std::string& name);

  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool Has(const std::string& tensor) const { return entries_.count(tensor) > 0; }

  // A copy of the tensor in its stored dtype, on the CPU. NOT_FOUND if absent.
  StatusOr<torch::Tensor> Tensor(const std::string& tensor) const;

 private:
  std::string name_;
  std::shared_ptr<const std::string> bytes_;
  uint64_t data_start_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` (any supported dtype, any device; made contiguous on the CPU) with `metadata`
// into `path`, atomically: a temporary file renamed into place. Keys are written sorted, so equal
// inputs give byte-identical files.
Status WriteSafetensors(const std::string& path,
                        const std::map<std::string, torch::Tensor>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// Maps a safetensors dtype name to a torch dtype; INVALID_ARGUMENT for unknown names.
StatusOr<torch::ScalarType> SafetensorsDtype(const std::string& name);

}  // namespace qs::core

#endif  // QS_CORE_SAFETENSORS_H_
