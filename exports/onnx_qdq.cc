#include "exports/onnx_qdq.h"

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <cmath>
#include <exception>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <variant>

#include "common/file_util.h"
#include "core/quantized_format.h"
#include "core/torch_status.h"
#include "exports/export.h"

namespace qs::exports {
namespace {

using core::ActivationQuantizerState;
using core::QuantizedModel;
using core::QuantizedSite;
using core::UniformGrid;

constexpr int64_t kOpset = 17;  // LayerNormalization; the newest Debian's libonnx 1.12 checks
constexpr int64_t kIrVersion = 8;

// Appends nodes and initializers to one graph under unique names.
class GraphWriter {
 public:
  explicit GraphWriter(onnx::GraphProto* graph) : graph_(graph) {}

  std::string Unique(const std::string& base) {
    const int n = used_[base]++;
    return n == 0 ? base : base + "_" + std::to_string(n);
  }

  // A constant tensor (float32, int64, int8 or uint8; any shape, scalars as 0-d).
  std::string Constant(const std::string& base, const torch::Tensor& value) {
    const std::string name = Unique(base);
    onnx::TensorProto* t = graph_->add_initializer();
    t->set_name(name);
    auto v = value.to(torch::kCPU).contiguous();
    for (int64_t d : v.sizes()) t->add_dims(d);
    switch (v.scalar_type()) {
      case torch::kFloat32:
        t->set_data_type(onnx::TensorProto::FLOAT);
        break;
      case torch::kInt64:
        t->set_data_type(onnx::TensorProto::INT64);
        break;
      case torch::kInt8:
        t->set_data_type(onnx::TensorProto::INT8);
        break;
      case torch::kUInt8:
        t->set_data_type(onnx::TensorProto::UINT8);
        break;
      default:
        TORCH_CHECK(false, "no ONNX constant type for ", v.scalar_type());
    }
    t->set_raw_data(
        std::string(static_cast<const char*>(v.data_ptr()), v.numel() * v.element_size()));
    return name;
  }
  std::string Ints(const std::string& base, const std::vector<int64_t>& values) {
    return Constant(base, torch::tensor(values, torch::kInt64));
  }
  std::string Scalar(const std::string& base, float value) {
    return Constant(base, torch::scalar_tensor(value, torch::kFloat32));
  }

  onnx::NodeProto* Node(const std::string& op, const std::vector<std::string>& inputs,
                        const std::string& output_base) {
    onnx::NodeProto* n = graph_->add_node();
    n->set_op_type(op);
    n->set_name(Unique(output_base + "/" + op));
    for (const auto& in : inputs) n->add_input(in);
    n->add_output(Unique(output_base));
    return n;
  }
  std::string Op(const std::string& op, const std::vector<std::string>& inputs,
                 const std::string& output_base) {
    return Node(op, inputs, output_base)->output(0);
  }
  static void IntAttr(onnx::NodeProto* n, const std::string& name, int64_t v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
  }
  static void FloatAttr(onnx::NodeProto* n, const std::string& name, float v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::FLOAT);
    a->set_f(v);
  }
  static void IntsAttr(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t x : v) a->add_ints(x);
  }

 private:
  onnx::GraphProto* graph_;
  std::map<std::string, int> used_;
};

// A uniform grid's (scale, zero point) as QuantizeLinear takes them: 0-d per tensor, 1-D along
// `axis` (negative, from the end) otherwise.
struct QdqParams {
  std::string scale, zero_point;
  std::optional<int64_t> axis;
};

// The Q/DQ pair (with the Clip that encodes a narrower grid) on `x` for `grid`, whose scale
// broadcasts against `x` from the right.
std::string QdqOnGrid(GraphWriter& g, const std::string& x, const UniformGrid& grid,
                      const std::string& base, bool clip) {
  auto scale = grid.scale.to(torch::kCPU, torch::kFloat32).contiguous();
  auto zero = grid.zero_point.to(torch::kCPU, torch::kFloat32).contiguous();
  const int64_t n = scale.numel();
  std::optional<int64_t> axis;
  torch::Tensor scale_flat = scale.reshape({-1}), zero_flat = zero.reshape({-1});
  if (n == 1) {
    scale_flat = scale_flat.reshape({});
    zero_flat = zero_flat.reshape({});
  } else {
    for (int64_t d = 0; d < scale.dim(); ++d) {
      if (scale.size(d) == n) axis = d - scale.dim();
    }
    TORCH_CHECK(axis.has_value(), base, ": a grid with scales along more than one axis ",
                scale.sizes(), " has no QuantizeLinear form");
  }
  const bool is_signed = grid.qmin < 0;
  const torch::Tensor zp = zero_flat.round().to(is_signed ? torch::kInt8 : torch::kUInt8);
  const std::string s = g.Constant(base + "/scale", scale_flat);
  const std::string z = g.Constant(base + "/zero_point", zp);
  std::string in = x;
  const int64_t type_min = is_signed ? -128 : 0, type_max = is_signed ? 127 : 255;
  if (clip && (grid.qmin > type_min || grid.qmax < type_max)) {
    // The float range of the grid: QuantizeLinear then rounds its ends to qmin and qmax.
    auto lo = (static_cast<float>(grid.qmin) - zero) * scale;
    auto hi = (static_cast<float>(grid.qmax) - zero) * scale;
    if (n == 1) {
      in = g.Op(
          "Clip",
          {x, g.Constant(base + "/lo", lo.reshape({})), g.Constant(base + "/hi", hi.reshape({}))},
          base + "/clipped");
    } else {
      in = g.Op("Max", {x, g.Constant(base + "/lo", lo)}, base + "/clipped_lo");
      in = g.Op("Min", {in, g.Constant(base + "/hi", hi)}, base + "/clipped");
    }
  }
  auto* q = g.Node("QuantizeLinear", {in, s, z}, base + "/q");
  if (axis) GraphWriter::IntAttr(q, "axis", *axis);
  auto* dq = g.Node("DequantizeLinear", {q->output(0), s, z}, base + "/dq");
  if (axis) GraphWriter::IntAttr(dq, "axis", *axis);
  return dq->output(0);
}

class VitGraph {
 public:
  VitGraph(const QuantizedModel& quantized, onnx::GraphProto* graph, OnnxExportSummary* summary)
      : q_(quantized),
        c_(quantized.float_model().config()),
        tensors_(quantized.DeployedTensors()),
        g_(graph),
        summary_(summary) {}

  std::string Build(const std::string& images) {
    std::string x = Embed(images);
    for (int64_t b = 0; b < c_.depth; ++b) x = Block(b, x);
    return Head(x);
  }

 private:
  const QuantizedSite& Site(const std::string& name) const { return q_.sites().at(name); }
  const torch::Tensor& T(const std::string& name) const { return tensors_.at(name); }
  bool Has(const std::string& name) const { return tensors_.count(name) > 0; }

  std::string Activation(const std::string& x, const ActivationQuantizerState& a,
                         const std::string& base) {
    if (!a.spec().quantized()) return x;
    if (a.spec().quantizer != ActivationQuantizer::kUniform) {
      summary_->float_activation_sites.push_back(base);
      return x;
    }
    ++summary_->activation_qdq;
    return QdqOnGrid(g_, x, a.uniform(), base, /*clip=*/true);
  }

  // x·Wᵀ + b at linear site `name`, with the weight `weight` ([out, in] once flattened).
  std::string Linear(const std::string& name, const std::string& x, const std::string& weight,
                     const std::string& bias) {
    const QuantizedSite& s = Site(name);
    const std::string in = Activation(x, s.input, name + "/input");
    const torch::Tensor w = T(weight).reshape({T(weight).size(0), -1});
    std::string y;
    if (!s.weight) {
      y = g_.Op("MatMul", {in, g_.Constant(name + "/weight_t", w.t().contiguous())}, name + "/mm");
    } else {
      y = QuantizedMatMul(name, in, w, *s.weight, s.config.weight);
    }
    if (bias.empty() || !Has(bias)) return y;
    return g_.Op("Add", {y, g_.Constant(name + "/bias", T(bias))}, name);
  }

  std::string QuantizedMatMul(const std::string& name, const std::string& x, const torch::Tensor& w,
                              const core::QuantizedWeight& qw, const WeightQuant& spec) {
    const int64_t out = w.size(0), in = w.size(1);
    const UniformGrid grid = core::CompactWeightGrid(
        qw.grid, out, spec.granularity == Granularity::kPerGroup ? spec.group_size : 0);
    const bool per_tensor = grid.scale.numel() == 1;
    const auto scale = grid.scale.to(torch::kCPU, torch::kFloat32).reshape({out, -1});
    const auto zero = grid.zero_point.to(torch::kCPU, torch::kFloat32).reshape({out, -1});
    const int64_t groups = per_tensor ? 1 : scale.size(1);
    if (per_tensor || groups == 1) {
      UniformGrid t = grid;
      if (!per_tensor) {  // per output channel: axis 1 of Wᵀ [in, out]
        t.scale = scale.reshape({out});
        t.zero_point = zero.reshape({out});
      }
      ++summary_->weight_qdq;
      const std::string wt = g_.Constant(name + "/weight_t", w.t().contiguous());
      return g_.Op("MatMul", {x, QdqOnGrid(g_, wt, t, name + "/weight", false)}, name + "/mm");
    }
    // Per group: QuantizeLinear has one axis, so each run of group_size input columns is its own
    // per-channel Q/DQ'd MatMul, and the partial products are summed.
    const int64_t size = spec.group_size;
    std::vector<std::string> parts;
    for (int64_t j = 0; j < groups; ++j) {
      const int64_t begin = j * size, end = std::min(in, begin + size);
      const std::string base = name + "/group" + std::to_string(j);
      UniformGrid t = grid;
      t.scale = scale.select(1, j).contiguous();
      t.zero_point = zero.select(1, j).contiguous();
      const std::string wt =
          g_.Constant(base + "/weight_t", w.narrow(1, begin, end - begin).t().contiguous());
      const std::string xs = g_.Op("Slice",
                                   {x, g_.Ints(base + "/begin", {begin}),
                                    g_.Ints(base + "/end", {end}), g_.Ints(base + "/axes", {-1})},
                                   base + "/input");
      ++summary_->weight_qdq;
      parts.push_back(
          g_.Op("MatMul", {xs, QdqOnGrid(g_, wt, t, base + "/weight", false)}, base + "/mm"));
    }
    return g_.Op("Sum", parts, name + "/mm");
  }

  void NoteNonlinear(const std::string& name) {
    if (Site(name).config.nonlinear.quantized()) {
      summary_->float_nonlinear_sites.push_back(name);
    }
  }

  std::string LayerNorm(const std::string& name, const std::string& x) {
    NoteNonlinear(name);
    auto* n = g_.Node("LayerNormalization",
                      {x, g_.Constant(name + ".weight", T(name + ".weight")),
                       g_.Constant(name + ".bias", T(name + ".bias"))},
                      name);
    GraphWriter::IntAttr(n, "axis", -1);
    GraphWriter::FloatAttr(n, "epsilon", static_cast<float>(c_.layer_norm_eps));
    return n->output(0);
  }

  // The exact GELU: x·½·(1 + erf(x/√2)).
  std::string Gelu(const std::string& name, const std::string& x) {
    NoteNonlinear(name);
    auto e = g_.Op("Erf", {g_.Op("Mul", {x, g_.Scalar(name + "/rsqrt2", M_SQRT1_2)}, name + "/s")},
                   name + "/erf");
    e = g_.Op("Add", {e, g_.Scalar(name + "/one", 1.0f)}, name + "/1p");
    e = g_.Op("Mul", {x, e}, name + "/xe");
    return g_.Op("Mul", {e, g_.Scalar(name + "/half", 0.5f)}, name);
  }

  std::string Embed(const std::string& images) {
    const int64_t p = c_.patch_size, gr = c_.grid(), ch = c_.in_chans;
    auto x = g_.Op("Reshape", {images, g_.Ints("patch_embed/shape6", {0, ch, gr, p, gr, p})},
                   "patch_embed/grid");
    auto* perm = g_.Node("Transpose", {x}, "patch_embed/perm");
    GraphWriter::IntsAttr(perm, "perm", {0, 2, 4, 1, 3, 5});
    x = g_.Op("Reshape", {perm->output(0), g_.Ints("patch_embed/shape3", {0, gr * gr, ch * p * p})},
              "patch_embed/patches");
    x = Linear("patch_embed.proj", x, "patch_embed.proj.weight", "patch_embed.proj.bias");
    std::vector<std::string> prefix;
    if (Has("cls_token") || Has("dist_token") || Has("reg_token")) {
      // The batch taken from the images: [batch, 1 or R, dim] prefix tokens.
      auto batch = g_.Op("Slice",
                         {g_.Op("Shape", {images}, "batch/shape"), g_.Ints("batch/0", {0}),
                          g_.Ints("batch/1", {1})},
                         "batch");
      for (const char* t : {"cls_token", "dist_token", "reg_token"}) {
        if (!Has(t)) continue;
        auto* shape_node = g_.Node(
            "Concat", {batch, g_.Ints(std::string(t) + "/rest", {T(t).size(1), c_.embed_dim})},
            std::string(t) + "/shape");
        GraphWriter::IntAttr(shape_node, "axis", 0);
        const std::string shape = shape_node->output(0);
        prefix.push_back(
            g_.Op("Expand", {g_.Constant(t, T(t)), shape}, std::string(t) + "/expanded"));
      }
    }
    auto concat = [&](std::vector<std::string> parts, const std::string& name) {
      auto* n = g_.Node("Concat", parts, name);
      GraphWriter::IntAttr(n, "axis", 1);
      return n->output(0);
    };
    const std::string pos = g_.Constant("pos_embed", T("pos_embed"));
    if (c_.no_embed_class) {
      x = g_.Op("Add", {x, pos}, "patch_embed/pos");
      if (prefix.empty()) return x;
      prefix.push_back(x);
      return concat(prefix, "tokens");
    }
    if (!prefix.empty()) {
      prefix.push_back(x);
      x = concat(prefix, "tokens");
    }
    return g_.Op("Add", {x, pos}, "tokens/pos");
  }

  std::string Block(int64_t i, const std::string& input) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    const int64_t heads = c_.num_heads, hd = c_.head_dim(), dim = c_.embed_dim;
    const int64_t tokens = c_.num_patches() + c_.num_prefix_tokens(Has("cls_token"));
    // Attention.
    auto y = LayerNorm(b + "norm1", input);
    auto qkv = Linear(b + "attn.qkv", y, b + "attn.qkv.weight", b + "attn.qkv.bias");
    qkv = g_.Op("Reshape", {qkv, g_.Ints(b + "attn/qkv_shape", {0, tokens, 3, heads, hd})},
                b + "attn/qkv5");
    auto* perm = g_.Node("Transpose", {qkv}, b + "attn/qkv_perm");
    GraphWriter::IntsAttr(perm, "perm", {2, 0, 3, 1, 4});
    auto part = [&](int64_t k, const char* what) {
      auto* n = g_.Node("Gather",
                        {perm->output(0), g_.Constant(b + "attn/" + what + "_index",
                                                      torch::scalar_tensor(k, torch::kInt64))},
                        b + "attn/" + what);
      GraphWriter::IntAttr(n, "axis", 0);
      return n->output(0);
    };
    auto q = g_.Op("Mul", {part(0, "q"), g_.Scalar(b + "attn/scale", 1.0 / std::sqrt(double(hd)))},
                   b + "attn/q_scaled");
    auto* kt = g_.Node("Transpose", {part(1, "k")}, b + "attn/kt");
    GraphWriter::IntsAttr(kt, "perm", {0, 1, 3, 2});
    const QuantizedSite& qk = Site(b + "attn.qk_matmul");
    auto scores = g_.Op("MatMul",
                        {Activation(q, qk.input, b + "attn.qk_matmul/lhs"),
                         Activation(kt->output(0), qk.input_rhs, b + "attn.qk_matmul/rhs")},
                        b + "attn/scores");
    NoteNonlinear(b + "attn.softmax");
    auto* sm = g_.Node("Softmax", {scores}, b + "attn.softmax");
    GraphWriter::IntAttr(sm, "axis", -1);
    const QuantizedSite& av = Site(b + "attn.av_matmul");
    auto ctx = g_.Op("MatMul",
                     {Activation(sm->output(0), av.input, b + "attn.av_matmul/lhs"),
                      Activation(part(2, "v"), av.input_rhs, b + "attn.av_matmul/rhs")},
                     b + "attn/ctx");
    auto* ct = g_.Node("Transpose", {ctx}, b + "attn/ctx_perm");
    GraphWriter::IntsAttr(ct, "perm", {0, 2, 1, 3});
    ctx = g_.Op("Reshape", {ct->output(0), g_.Ints(b + "attn/ctx_shape", {0, tokens, dim})},
                b + "attn/ctx3");
    auto out = Linear(b + "attn.proj", ctx, b + "attn.proj.weight", b + "attn.proj.bias");
    if (c_.init_values)
      out = g_.Op("Mul", {out, g_.Constant(b + "ls1.gamma", T(b + "ls1.gamma"))}, b + "ls1");
    auto x = g_.Op("Add", {input, out}, b + "residual1");
    // MLP.
    y = LayerNorm(b + "norm2", x);
    y = Linear(b + "mlp.fc1", y, b + "mlp.fc1.weight", b + "mlp.fc1.bias");
    y = Gelu(b + "mlp.act", y);
    out = Linear(b + "mlp.fc2", y, b + "mlp.fc2.weight", b + "mlp.fc2.bias");
    if (c_.init_values)
      out = g_.Op("Mul", {out, g_.Constant(b + "ls2.gamma", T(b + "ls2.gamma"))}, b + "ls2");
    return g_.Op("Add", {x, out}, b + "residual2");
  }

  std::string Token(const std::string& x, int64_t index, const std::string& name) {
    auto* n = g_.Node("Gather",
                      {x, g_.Constant(name + "/index", torch::scalar_tensor(index, torch::kInt64))},
                      name);
    GraphWriter::IntAttr(n, "axis", 1);
    return n->output(0);
  }

  std::string Head(const std::string& input) {
    std::string x = input;
    if (Has("norm.weight")) x = LayerNorm("norm", x);
    const int64_t prefix = c_.num_prefix_tokens(Has("cls_token"));
    const int64_t tokens = prefix + c_.num_patches();
    std::string pooled;
    if (c_.global_pool == "token") {
      pooled = Token(x, 0, "pool");
    } else {
      auto patches = g_.Op("Slice",
                           {x, g_.Ints("pool/begin", {prefix}), g_.Ints("pool/end", {tokens}),
                            g_.Ints("pool/axes", {1})},
                           "pool/patches");
      auto* mean = g_.Node("ReduceMean", {patches}, "pool");
      GraphWriter::IntsAttr(mean, "axes", {1});
      GraphWriter::IntAttr(mean, "keepdims", 0);
      pooled = mean->output(0);
    }
    if (Has("fc_norm.weight")) pooled = LayerNorm("fc_norm", pooled);
    auto logits = Linear("head", pooled, "head.weight", "head.bias");
    if (!c_.distilled) return logits;
    auto dist = Linear("head_dist", Token(x, 1, "dist"), "head_dist.weight", "head_dist.bias");
    return g_.Op("Div", {g_.Op("Add", {logits, dist}, "heads"), g_.Scalar("two", 2.0f)},
                 "heads_mean");
  }

  const QuantizedModel& q_;
  const core::ViTConfig& c_;
  std::map<std::string, torch::Tensor> tensors_;
  GraphWriter g_;
  OnnxExportSummary* summary_;
};

void SetTensorType(onnx::ValueInfoProto* v, const std::string& name,
                   const std::vector<std::variant<int64_t, std::string>>& dims) {
  v->set_name(name);
  auto* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(onnx::TensorProto::FLOAT);
  auto* shape = t->mutable_shape();
  for (const auto& d : dims) {
    auto* dim = shape->add_dim();
    if (std::holds_alternative<int64_t>(d)) {
      dim->set_dim_value(std::get<int64_t>(d));
    } else {
      dim->set_dim_param(std::get<std::string>(d));
    }
  }
}

std::string JoinJson(const std::vector<std::string>& v) { return nlohmann::json(v).dump(); }

}  // namespace

StatusOr<onnx::ModelProto> BuildQdqModel(const QuantizedModel& quantized,
                                         OnnxExportSummary* summary) {
  const core::ViTConfig& c = quantized.float_model().config();
  QS_RETURN_IF_ERROR(CheckExportable(c, {ExportFormat::kOnnxQdq}));
  for (const auto& [name, site] : quantized.sites()) {
    for (const auto* a : {&site.config.activation, &site.config.activation_rhs}) {
      if (a->bits > 8) {
        return InvalidArgumentError(name + ": activation bits " + std::to_string(a->bits) +
                                    " > 8 have no int8/uint8 QuantizeLinear form");
      }
    }
    if (site.config.weight.bits > 8) {
      return InvalidArgumentError(name + ": weight bits " +
                                  std::to_string(site.config.weight.bits) +
                                  " > 8 have no int8/uint8 QuantizeLinear form");
    }
  }
  OnnxExportSummary local;
  if (summary == nullptr) summary = &local;
  *summary = {};
  return core::GuardTorch("onnx export", [&]() -> StatusOr<onnx::ModelProto> {
    onnx::ModelProto model;
    model.set_ir_version(kIrVersion);
    model.set_producer_name("qsearch");
    model.set_model_version(1);
    model.set_doc_string("A quantized " + c.architecture +
                         " exported by qsearch export --format "
                         "onnx-qdq (docs/export.md)");
    model.add_opset_import()->set_version(kOpset);
    onnx::GraphProto* graph = model.mutable_graph();
    graph->set_name("qsearch_" + c.architecture);
    SetTensorType(graph->add_input(), "images",
                  {std::string("batch"), c.in_chans, c.img_size, c.img_size});
    VitGraph vit(quantized, graph, summary);
    const std::string logits = vit.Build("images");
    auto* id = graph->add_node();
    id->set_op_type("Identity");
    id->set_name("logits/Identity");
    id->add_input(logits);
    id->add_output("logits");
    SetTensorType(graph->add_output(), "logits", {std::string("batch"), c.num_classes});
    auto meta = [&](const std::string& key, const std::string& value) {
      auto* p = model.add_metadata_props();
      p->set_key(key);
      p->set_value(value);
    };
    meta("qsearch.format", "qsearch.onnx-qdq.v1");
    meta("qsearch.model_digest", quantized.float_model().Digest());
    meta("qsearch.recipe",
         RecipeToJson(quantized.recipe(), quantized.float_model().SiteKinds()).dump());
    meta("qsearch.float_nonlinear_sites", JoinJson(summary->float_nonlinear_sites));
    meta("qsearch.float_activation_sites", JoinJson(summary->float_activation_sites));
    meta("qsearch.note",
         "Q/DQ on every quantized weight and uniformly quantized activation; a Clip before a "
         "QuantizeLinear encodes a grid narrower than its int8/uint8 type. The sites listed in "
         "qsearch.float_nonlinear_sites use integer kernels (I-BERT, FQ-ViT, I-ViT) in qsearch, "
         "which have no standard ONNX operator: they run in float here. Those in "
         "qsearch.float_activation_sites use log2, log-sqrt2 or twin-uniform grids, which "
         "QuantizeLinear cannot express: also float here.");
    return model;
  });
}

Status CheckOnnxModel(const onnx::ModelProto& model) {
  try {
    onnx::checker::check_model(model);
    // The full check: shape and type inference over every node, strict, so that a shape that
    // does not flow (a wrong axis, a transposed weight) is an error here and not at load time.
    onnx::ModelProto inferred = model;
    onnx::shape_inference::InferShapes(inferred, onnx::OpSchemaRegistry::Instance(),
                                       onnx::ShapeInferenceOptions(true, 1, true));
  } catch (const std::exception& e) {
    return InternalError(std::string("the ONNX checker refused the export: ") + e.what());
  }
  return OkStatus();
}

StatusOr<OnnxExportSummary> WriteQdqModel(const QuantizedModel& quantized,
                                          const std::string& path) {
  OnnxExportSummary summary;
  QS_ASSIGN_OR_RETURN(onnx::ModelProto model, BuildQdqModel(quantized, &summary));
  QS_RETURN_IF_ERROR(CheckOnnxModel(model));
  std::string bytes;
  if (!model.SerializeToString(&bytes)) return InternalError("could not serialize the ONNX model");
  QS_RETURN_IF_ERROR(WriteFileAtomically(path, bytes));
  return summary;
}

}  // namespace qs::exports
