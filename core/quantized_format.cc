#include "core/quantized_format.h"

#include <set>

#include <ATen/ATen.h>

#include "core/packing.h"
#include "core/torch_status.h"

namespace qs::core {
namespace {

using nlohmann::json;

// One value per group of columns: the grid's full-width parameters at each group's first column.
torch::Tensor Compact(const torch::Tensor& full, int64_t rows, int64_t group_size) {
  if (full.dim() == 0) return full.reshape({1});
  auto f = full.expand({rows, full.size(-1)});
  if (group_size > 0 && group_size < f.size(1)) {
    return f.slice(1, 0, f.size(1), group_size).contiguous();
  }
  return f.slice(1, 0, 1).contiguous();
}

torch::Tensor Expand(const torch::Tensor& compact, int64_t in, int64_t group_size) {
  if (compact.numel() == 1) return compact.reshape({});
  if (compact.size(1) == 1) return compact;
  return compact.repeat_interleave(group_size, 1).narrow(1, 0, in);
}

}  // namespace

UniformGrid CompactWeightGrid(const UniformGrid& grid, int64_t rows, int64_t group_size) {
  if (grid.scale.numel() == 1) return grid;
  UniformGrid out = grid;
  out.scale = Compact(grid.scale, rows, group_size);
  out.zero_point = Compact(grid.zero_point, rows, group_size);
  return out;
}

Status AddPackedWeight(const PackedWeightInput& w, std::map<std::string, torch::Tensor>* tensors,
                       json* layout) {
  const QuantizedWeight& q = *w.quantized;
  return GuardTorch("pack " + w.site, [&]() -> Status {
    const int64_t rows = q.codes.size(0);
    QS_ASSIGN_OR_RETURN(torch::Tensor packed, PackCodes(q.codes, q.grid.bits, q.grid.qmin));
    (*tensors)[w.site + ".weight.codes"] = packed;
    (*tensors)[w.site + ".weight.scale"] =
        Compact(q.grid.scale, rows, w.group_size).to(torch::kFloat32);
    if (!q.grid.symmetric) {
      (*tensors)[w.site + ".weight.zero_point"] =
          Compact(q.grid.zero_point, rows, w.group_size).to(torch::kInt32);
    }
    (*layout)[w.site] = {{"weight", w.weight},
                         {"weight_shape", w.weight_shape},
                         {"shape", q.codes.sizes().vec()},
                         {"bits", q.grid.bits},
                         {"qmin", q.grid.qmin},
                         {"group_size", w.group_size}};
    return OkStatus();
  });
}

bool IsQuantizedWeightsFile(const SafetensorsFile& file) {
  auto it = file.metadata().find("format");
  return it != file.metadata().end() && it->second == kQuantizedFormat;
}

StatusOr<std::map<std::string, torch::Tensor>> ReadQuantizedWeights(const SafetensorsFile& file) {
  auto layout_it = file.metadata().find("layout");
  if (layout_it == file.metadata().end()) {
    return DataLossError("quantized weights: metadata has no 'layout'");
  }
  json layout;
  try {
    layout = json::parse(layout_it->second);
  } catch (const json::exception& e) {
    return DataLossError(std::string("quantized weights: malformed layout: ") + e.what());
  }
  std::map<std::string, torch::Tensor> out;
  std::set<std::string> consumed;
  for (const auto& item : layout.items()) {
    const std::string& site = item.key();
    const json& l = item.value();
    Status s = GuardTorch("site " + site, [&]() -> Status {
      const auto shape = l.at("shape").get<std::vector<int64_t>>();
      // Range-checked before any narrowing or multiplying: a 2^62-element layout once
      // overflowed to "needs 0 bytes".
      const int64_t bits = l.at("bits").get<int64_t>();
      const int64_t qmin = l.at("qmin").get<int64_t>(), group = l.at("group_size").get<int64_t>();
      if (shape.size() != 2 || shape[0] < 1 || shape[1] < 1 || shape[0] > (int64_t{1} << 31) ||
          shape[1] > (int64_t{1} << 31) || shape[0] * shape[1] > (int64_t{1} << 40) ||
          bits < 1 || bits > 8 || group < 0) {
        return DataLossError("site " + site + ": bad code shape, bits or group size");
      }
      QS_ASSIGN_OR_RETURN(torch::Tensor packed, file.Tensor(site + ".weight.codes"));
      if (packed.numel() != (shape[0] * shape[1] * bits + 7) / 8) {
        return DataLossError("site " + site + ": codes hold " + std::to_string(packed.numel()) +
                             " bytes, the layout needs " +
                             std::to_string((shape[0] * shape[1] * bits + 7) / 8));
      }
      QS_ASSIGN_OR_RETURN(torch::Tensor codes,
                          UnpackCodes(packed, static_cast<int>(bits), qmin, shape[0] * shape[1]));
      QS_ASSIGN_OR_RETURN(torch::Tensor scale, file.Tensor(site + ".weight.scale"));
      torch::Tensor zero = torch::zeros({1});
      consumed.insert(site + ".weight.codes");
      consumed.insert(site + ".weight.scale");
      if (file.Has(site + ".weight.zero_point")) {
        QS_ASSIGN_OR_RETURN(zero, file.Tensor(site + ".weight.zero_point"));
        consumed.insert(site + ".weight.zero_point");
      }
      // Scales: one per tensor, or [rows, groups] with groups = ceil(in / group_size) (1 per row).
      const int64_t groups = group > 0 ? (shape[1] + group - 1) / group : 1;
      auto fits = [&](const torch::Tensor& t) {
        return t.numel() == 1 || (t.dim() == 2 && t.size(0) == shape[0] && t.size(1) == groups);
      };
      if (!fits(scale) || (zero.numel() != 1 && !fits(zero))) {
        return DataLossError("site " + site + ": scale or zero point shape disagrees with the "
                             "layout");
      }
      auto w = (codes.reshape(shape).to(torch::kFloat32) -
                Expand(zero.to(torch::kFloat32), shape[1], group)) *
               Expand(scale.to(torch::kFloat32), shape[1], group);
      out[l.at("weight").get<std::string>()] =
          w.reshape(l.at("weight_shape").get<std::vector<int64_t>>()).contiguous();
      return OkStatus();
    });
    if (!s.ok()) return DataLossError("quantized weights: " + s.message());
  }
  for (const auto& [name, entry] : file.entries()) {
    if (consumed.count(name)) continue;
    QS_ASSIGN_OR_RETURN(torch::Tensor t, file.Tensor(name));
    out[name] = t.to(torch::kFloat32);
  }
  return out;
}

}  // namespace qs::core
