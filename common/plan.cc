#include "common/plan.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "common/sha256.h"

namespace qs {
namespace {

ActivationQuant Uniform(int bits, RangeCalibrator calibrator) {
  ActivationQuant a;
  a.bits = bits;
  if (bits > 0) a.calibrator = calibrator;
  return a;
}

// The activation calibrators to cross with `bits`: one (irrelevant) for float activations. liu
// is for attention-matmul operands; a linear input's interval is the weight method liu's to
// search (OMSE when liu was the only one offered).
std::vector<RangeCalibrator> CalibratorsFor(int bits, const CandidateSpace& space,
                                            SiteKind kind) {
  if (bits == 0) return {RangeCalibrator::kOmse};
  if (kind == SiteKind::kMatmul) return space.activation_calibrators;
  std::vector<RangeCalibrator> out;
  for (auto c : space.activation_calibrators) {
    if (c != RangeCalibrator::kLiu) out.push_back(c);
  }
  if (out.empty()) out.push_back(RangeCalibrator::kOmse);
  return out;
}

// The reparam settings to cross with: both only where it applies and changes something.
std::vector<bool> ReparamChoices(const std::string& site, SiteKind kind, int abits,
                                 const CandidateSpace& space) {
  if (abits == 0 || !ReparamApplies(site, kind)) return {false};
  std::vector<bool> out;
  for (bool r : space.reparam) {
    if (std::find(out.begin(), out.end(), r) == out.end()) out.push_back(r);
  }
  return out;
}

std::vector<Candidate> LinearCandidates(const SiteInfo& site, const CandidateSpace& space) {
  std::vector<Candidate> out;
  for (WeightMethod method : space.weight_methods) {
    for (int bits : space.weight_bits) {
      for (Granularity g : space.weight_granularities) {
        for (RangeCalibrator cal : space.weight_calibrators) {
          for (int abits : space.activation_bits) {
            for (RangeCalibrator acal : CalibratorsFor(abits, space, SiteKind::kLinear)) {
              for (bool reparam : ReparamChoices(site.name, SiteKind::kLinear, abits, space)) {
                Candidate c{site.name, SiteKind::kLinear, {}};
                c.config.weight.method = method;
                c.config.weight.bits = bits;
                c.config.weight.granularity = g;
                if (g == Granularity::kPerGroup) c.config.weight.group_size = space.group_size;
                c.config.weight.calibrator = cal;
                c.config.activation = Uniform(abits, acal);
                c.config.reparam = reparam;
                out.push_back(c);
              }
            }
          }
        }
      }
    }
  }
  return out;
}

std::vector<Candidate> MatmulCandidates(const SiteInfo& site, const CandidateSpace& space) {
  const bool softmax =
      OperandDomain(site.name, SiteKind::kMatmul, 0) == ValueDomain::kPostSoftmax;
  bool offers_log_sqrt2 = false;
  for (auto q : space.softmax_quantizers) offers_log_sqrt2 |= q == ActivationQuantizer::kLogSqrt2;
  std::vector<Candidate> out;
  for (int abits : space.activation_bits) {
    std::vector<ActivationQuantizer> lhs_kinds = {ActivationQuantizer::kUniform};
    if (softmax && abits > 0) lhs_kinds = space.softmax_quantizers;
    for (ActivationQuantizer kind : lhs_kinds) {
      if (kind == ActivationQuantizer::kTwinUniform && abits < 3) continue;
      // Reparam turns a uniform softmax grid into log√2: a candidate of its own unless log√2
      // is offered anyway.
      std::vector<bool> reparams = {false};
      if (kind == ActivationQuantizer::kUniform && !offers_log_sqrt2) {
        reparams = ReparamChoices(site.name, SiteKind::kMatmul, abits, space);
      }
      for (RangeCalibrator acal : CalibratorsFor(abits, space, SiteKind::kMatmul)) {
        // liu searches uniform grids only.
        if (acal == RangeCalibrator::kLiu && kind != ActivationQuantizer::kUniform) continue;
        for (bool reparam : reparams) {
          Candidate c{site.name, SiteKind::kMatmul, {}};
          c.config.activation = Uniform(abits, acal);
          c.config.activation.quantizer = kind;
          c.config.activation_rhs = Uniform(abits, acal);
          c.config.reparam = reparam;
          out.push_back(c);
        }
      }
    }
  }
  return out;
}

// The bits non-linear methods are offered at: the space's, else its quantized activation bits
// (4..8), else 8.
std::vector<int> NonlinearBits(const CandidateSpace& space) {
  if (!space.nonlinear_bits.empty()) return space.nonlinear_bits;
  std::vector<int> out;
  for (int b : space.activation_bits) {
    if (b >= 4 && std::find(out.begin(), out.end(), b) == out.end()) out.push_back(b);
  }
  if (out.empty()) out.push_back(8);
  return out;
}

bool OffersIntegerNonlinear(const CandidateSpace& space) {
  for (NonlinearMethod m : space.nonlinear_methods) {
    if (m != NonlinearMethod::kFloat) return true;
  }
  return false;
}

std::vector<Candidate> NonlinearCandidates(const SiteInfo& site, const CandidateSpace& space) {
  std::vector<Candidate> out;
  const NonlinearOp op = NonlinearOpOf(site.name);
  for (NonlinearMethod method : space.nonlinear_methods) {
    if (!NonlinearMethodHasOp(method, op)) continue;
    const std::vector<int> bits = method == NonlinearMethod::kFloat ? std::vector<int>{8}
                                                                    : NonlinearBits(space);
    for (int b : bits) {
      Candidate c{site.name, SiteKind::kNonlinear, {}};
      c.config.nonlinear = {method, b};
      out.push_back(c);
    }
  }
  // FQ-ViT alone offers no GELU kernel: the site stays float, as FQ-ViT leaves it.
  if (out.empty()) out.push_back({site.name, SiteKind::kNonlinear, {}});
  return out;
}

}  // namespace

Status CheckConfigSuitsSite(const QuantConfig& config, const SiteInfo& site) {
  const std::string where = "site " + site.name;
  QS_RETURN_IF_ERROR(ValidateQuantConfig(config, site.kind).WithContext(where));
  if (site.kind == SiteKind::kNonlinear) {
    const NonlinearOp op = NonlinearOpOf(site.name);
    if (!NonlinearMethodHasOp(config.nonlinear.method, op)) {
      return InvalidArgumentError(where + ": " + ToString(config.nonlinear.method) + " has no " +
                                  ToString(op) + " kernel");
    }
    return OkStatus();
  }
  const bool matmul = site.kind == SiteKind::kMatmul;
  QS_RETURN_IF_ERROR(CheckReparam(config, site.name, site.kind).WithContext(where));
  const ActivationQuant* operands[] = {&config.activation, &config.activation_rhs};
  for (int operand = 0; operand < (matmul ? 2 : 1); ++operand) {
    const ActivationQuant& a = *operands[operand];
    const std::string field = where + (operand == 0 ? " activation" : " activation_rhs");
    QS_RETURN_IF_ERROR(
        CheckQuantizerSuitsDomain(a, OperandDomain(site.name, site.kind, operand), field));
    if (!a.quantized() || a.granularity != Granularity::kPerHead) continue;
    if (site.num_heads < 1) return InvalidArgumentError(field + ": per_head needs attention heads");
    // Matmul operands carry the heads as an axis of their own; a linear input splits its width.
    if (!matmul && site.input_width > 0 && site.input_width % site.num_heads != 0) {
      return InvalidArgumentError(field + ": per_head: " + std::to_string(site.num_heads) +
                                  " heads do not divide the input width " +
                                  std::to_string(site.input_width));
    }
  }
  return OkStatus();
}

size_t Plan::candidate_count() const {
  size_t n = 0;
  for (const auto& s : sites) n += s.candidates.size();
  return n;
}

CandidateCost CostOf(const SiteInfo& site, const QuantConfig& config) {
  CandidateCost cost;
  auto bits_or_float = [](int bits) { return bits > 0 ? bits : 32; };
  if (site.kind == SiteKind::kLinear) {
    cost.weight_bits = site.weight_params * bits_or_float(config.weight.bits);
    cost.bops = site.macs * bits_or_float(config.weight.bits) * bits_or_float(config.activation.bits);
  } else if (site.kind == SiteKind::kNonlinear) {
    // Integer work: the elements at the method's width squared (one multiply per element is a
    // lower bound of every kernel's); float counts 32 bits.
    const int bits = config.nonlinear.quantized() ? config.nonlinear.bits : 32;
    cost.bops = site.macs * bits * bits;
  } else {
    cost.bops = site.macs * bits_or_float(config.activation.bits) *
                bits_or_float(config.activation_rhs.bits);
  }
  return cost;
}

int64_t CostUnits(BudgetKind kind, const CandidateCost& cost) {
  return kind == BudgetKind::kBops ? cost.bops : cost.weight_bits;
}

StatusOr<int64_t> BudgetUnits(const JobSpec& spec, const Plan& plan) {
  double units = 0;
  switch (spec.budget_kind) {
    case BudgetKind::kAvgWeightBits:
      units = spec.budget * static_cast<double>(plan.total_weight_params);
      break;
    case BudgetKind::kModelBytes:
      units = spec.budget * 8;
      break;
    case BudgetKind::kBops:
      units = spec.budget;
      break;
  }
  if (!(units >= 0 && units < 9e18)) {
    return InvalidArgumentError("the budget is out of range for this model");
  }
  // A relative epsilon so that e.g. 4.35 bits × 100 parameters counts as 435, not 434.
  return static_cast<int64_t>(std::floor(units * (1 + 1e-12) + 1e-9));
}

StatusOr<Plan> MakePlan(const JobSpec& spec, const std::vector<SiteInfo>& sites) {
  std::map<std::string, SiteKind> kinds;
  for (const auto& s : sites) kinds[s.name] = s.kind;
  for (const auto& [name, config] : spec.space.pin) {
    if (!kinds.count(name)) {
      return InvalidArgumentError("spec search.pin names site '" + name +
                                  "', which the model does not have");
    }
  }
  for (const auto& prefix : spec.space.skip) {
    bool any = false;
    for (const auto& s : sites) any = any || s.name.rfind(prefix, 0) == 0;
    if (!any) return InvalidArgumentError("spec search.skip '" + prefix + "' matches no site");
  }
  Plan plan;
  const bool plan_nonlinear = OffersIntegerNonlinear(spec.space);
  for (const auto& site : sites) {
    if (site.kind == SiteKind::kNonlinear && !plan_nonlinear && !spec.space.pin.count(site.name)) {
      continue;  // float, as without non-linear sites
    }
    SitePlan sp;
    sp.site = site;
    plan.total_weight_params += site.weight_params;
    bool skipped = false;
    for (const auto& prefix : spec.space.skip) skipped = skipped || site.name.rfind(prefix, 0) == 0;
    auto pin = spec.space.pin.find(site.name);
    if (pin != spec.space.pin.end()) {
      auto config = QuantConfigFromJson(pin->second, site.kind);
      if (!config.ok()) return config.status().WithContext("spec search.pin '" + site.name + "'");
      sp.candidates.push_back({site.name, site.kind, *config});
      sp.fixed = true;
    } else if (skipped) {
      sp.candidates.push_back({site.name, site.kind, QuantConfig{}});
      sp.fixed = true;
    } else {
      sp.candidates = site.kind == SiteKind::kLinear   ? LinearCandidates(site, spec.space)
                      : site.kind == SiteKind::kMatmul ? MatmulCandidates(site, spec.space)
                                                       : NonlinearCandidates(site, spec.space);
    }
    for (const auto& c : sp.candidates) QS_RETURN_IF_ERROR(CheckConfigSuitsSite(c.config, site));
    if (sp.candidates.empty()) {
      return InvalidArgumentError("site " + site.name + " has no candidate in the search space");
    }
    plan.sites.push_back(std::move(sp));
  }
  return plan;
}

std::string CandidateKey(const std::string& model_digest, const std::string& calibration_digest,
                         const Candidate& candidate) {
  Sha256 h;
  for (const std::string& part :
       {model_digest, calibration_digest, candidate.site,
        ToJson(candidate.config, candidate.kind).dump(), std::string(kCoreVersion)}) {
    h.Update(std::to_string(part.size()) + ":");
    h.Update(part);
  }
  return h.HexDigest();
}

}  // namespace qs
