#include "server/api_convert.h"

namespace qs::server {
namespace {

using nlohmann::json;
namespace v1 = qsearch::v1;

template <typename T>
json List(const google::protobuf::RepeatedField<T>& values) {
  return json(std::vector<T>(values.begin(), values.end()));
}
json List(const google::protobuf::RepeatedPtrField<std::string>& values) {
  return json(std::vector<std::string>(values.begin(), values.end()));
}

json DataJson(const v1::DataSection& d, bool calibration) {
  json j = json::object();
  if (!d.source().empty()) j["source"] = d.source();
  if (d.count() != 0) j[calibration ? "count" : "limit"] = d.count();
  if (calibration && d.seed() != 0) j["seed"] = d.seed();
  if (!d.sampling().empty()) j["sampling"] = d.sampling();
  return j;
}

void SetData(v1::DataSection* d, const std::string& source, int64_t count, uint64_t seed,
             const std::string& sampling) {
  d->set_source(source);
  d->set_count(count);
  d->set_seed(seed);
  d->set_sampling(sampling);
}

}  // namespace

StatusOr<json> SpecJsonFromProto(const v1::JobSpec& spec) {
  json j = json::object();
  j["model"] = {{"config", spec.model().config()}, {"weights", spec.model().weights()}};
  if (spec.has_calibration()) j["calibration"] = DataJson(spec.calibration(), true);
  if (spec.has_validation()) j["validation"] = DataJson(spec.validation(), false);
  if (spec.has_test() && !spec.test().source().empty()) j["test"] = DataJson(spec.test(), false);
  if (spec.has_search()) {
    const v1::SearchSpace& s = spec.search();
    json search = json::object();
    if (s.weight_methods_size()) search["weight_methods"] = List(s.weight_methods());
    if (s.weight_bits_size()) search["weight_bits"] = List(s.weight_bits());
    if (s.weight_granularities_size()) search["weight_granularities"] = List(s.weight_granularities());
    if (s.group_size() != 0) search["group_size"] = s.group_size();
    if (s.weight_calibrators_size()) search["weight_calibrators"] = List(s.weight_calibrators());
    if (s.activation_bits_size()) search["activation_bits"] = List(s.activation_bits());
    if (s.activation_calibrators_size()) {
      search["activation_calibrators"] = List(s.activation_calibrators());
    }
    if (s.softmax_quantizers_size()) search["softmax_quantizers"] = List(s.softmax_quantizers());
    if (s.reparam_size()) search["reparam"] = List(s.reparam());
    if (s.nonlinear_methods_size()) search["nonlinear_methods"] = List(s.nonlinear_methods());
    if (s.nonlinear_bits_size()) search["nonlinear_bits"] = List(s.nonlinear_bits());
    if (s.skip_size()) search["skip"] = List(s.skip());
    if (!s.reconstruction().empty()) {
      json tier = json::parse(s.reconstruction(), nullptr, /*allow_exceptions=*/false);
      if (tier.is_discarded()) {
        return InvalidArgumentError("spec search: reconstruction is not JSON");
      }
      search["reconstruction"] = tier;
    }
    if (!s.pin().empty()) {
      json pin = json::object();
      for (const auto& [site, text] : s.pin()) {
        json config = json::parse(text, nullptr, /*allow_exceptions=*/false);
        if (config.is_discarded()) {
          return InvalidArgumentError("spec search: pin of site '" + site + "' is not JSON");
        }
        pin[site] = config;
      }
      search["pin"] = pin;
    }
    j["search"] = search;
  }
  if (spec.has_objective()) {
    json objective = json::object();
    if (!spec.objective().budget_kind().empty()) {
      objective[spec.objective().budget_kind()] = spec.objective().budget();
    }
    if (!spec.objective().metric().empty()) objective["metric"] = spec.objective().metric();
    j["objective"] = objective;
  }
  if (spec.has_accuracy()) {
    const v1::Accuracy& a = spec.accuracy();
    json accuracy = json::object();
    if (a.has_max_abs_top1_drop()) accuracy["max_abs_top1_drop"] = a.max_abs_top1_drop();
    if (a.has_max_rel_top1_drop()) accuracy["max_rel_top1_drop"] = a.max_rel_top1_drop();
    if (a.has_max_validations()) accuracy["max_validations"] = a.max_validations();
    if (a.has_refine()) accuracy["refine"] = a.refine();
    j["accuracy"] = accuracy;
  }
  if (spec.has_compute()) {
    json compute = json::object();
    if (!spec.compute().device().empty()) compute["device"] = spec.compute().device();
    if (!spec.compute().capture_dtype().empty()) {
      compute["capture_dtype"] = spec.compute().capture_dtype();
    }
    j["compute"] = compute;
  }
  return j;
}

v1::JobSpec ProtoFromSpec(const JobSpec& spec) {
  // Through the canonical JSON, which names every enum the way the JSON spec does.
  const json j = ToJson(spec);
  v1::JobSpec p;
  p.mutable_model()->set_config(spec.model_config);
  p.mutable_model()->set_weights(spec.model_weights);
  SetData(p.mutable_calibration(), spec.calibration_source, spec.calibration_count, spec.seed,
          spec.calibration_sampling);
  SetData(p.mutable_validation(), spec.validation_source, spec.validation_limit, 0,
          spec.validation_sampling);
  if (!spec.test_source.empty()) {
    SetData(p.mutable_test(), spec.test_source, spec.test_limit, 0, spec.test_sampling);
  }
  const json& s = j.at("search");
  v1::SearchSpace* search = p.mutable_search();
  for (const auto& v : s.at("weight_methods")) search->add_weight_methods(v.get<std::string>());
  for (int v : spec.space.weight_bits) search->add_weight_bits(v);
  for (const auto& v : s.at("weight_granularities")) {
    search->add_weight_granularities(v.get<std::string>());
  }
  search->set_group_size(spec.space.group_size);
  for (const auto& v : s.at("weight_calibrators")) search->add_weight_calibrators(v.get<std::string>());
  for (int v : spec.space.activation_bits) search->add_activation_bits(v);
  for (const auto& v : s.at("activation_calibrators")) {
    search->add_activation_calibrators(v.get<std::string>());
  }
  for (const auto& v : s.at("softmax_quantizers")) search->add_softmax_quantizers(v.get<std::string>());
  if (spec.space.reparam != std::vector<bool>{false}) {
    for (bool v : spec.space.reparam) search->add_reparam(v);
  }
  if (s.contains("nonlinear_methods")) {
    for (const auto& v : s.at("nonlinear_methods")) {
      search->add_nonlinear_methods(v.get<std::string>());
    }
  }
  for (int v : spec.space.nonlinear_bits) search->add_nonlinear_bits(v);
  for (const auto& v : spec.space.skip) search->add_skip(v);
  if (s.contains("reconstruction")) search->set_reconstruction(s.at("reconstruction").dump());
  for (const auto& [site, config] : spec.space.pin) (*search->mutable_pin())[site] = config.dump();
  p.mutable_objective()->set_budget_kind(ToString(spec.budget_kind));
  p.mutable_objective()->set_budget(spec.budget);
  p.mutable_objective()->set_metric(ToString(spec.metric));
  v1::Accuracy* a = p.mutable_accuracy();
  if (spec.max_abs_top1_drop >= 0) a->set_max_abs_top1_drop(spec.max_abs_top1_drop);
  if (spec.max_rel_top1_drop >= 0) a->set_max_rel_top1_drop(spec.max_rel_top1_drop);
  a->set_max_validations(spec.max_validations);
  a->set_refine(spec.refine_validation);
  p.mutable_compute()->set_device(spec.device);
  p.mutable_compute()->set_capture_dtype(spec.capture_dtype);
  return p;
}

v1::JobState ToProto(scheduler::JobPhase p) {
  switch (p) {
    case scheduler::JobPhase::kQueued: return v1::QUEUED;
    case scheduler::JobPhase::kRunning: return v1::RUNNING;
    case scheduler::JobPhase::kSucceeded: return v1::SUCCEEDED;
    case scheduler::JobPhase::kFailed: return v1::FAILED;
    case scheduler::JobPhase::kCancelled: return v1::CANCELLED;
  }
  return v1::JOB_STATE_UNSPECIFIED;
}

std::optional<scheduler::JobPhase> PhaseFromProto(v1::JobState s) {
  switch (s) {
    case v1::QUEUED: return scheduler::JobPhase::kQueued;
    case v1::RUNNING: return scheduler::JobPhase::kRunning;
    case v1::SUCCEEDED: return scheduler::JobPhase::kSucceeded;
    case v1::FAILED: return scheduler::JobPhase::kFailed;
    case v1::CANCELLED: return scheduler::JobPhase::kCancelled;
    default: return std::nullopt;
  }
}

v1::Job ToProto(const scheduler::JobRecord& r) {
  v1::Job job;
  job.set_name("jobs/" + r.id);
  job.set_state(ToProto(r.phase));
  // A stored spec was validated when it was created; a pin that cannot convert is left out.
  auto parsed = ParseJobSpec(r.spec, "");
  if (parsed.ok()) *job.mutable_spec() = ProtoFromSpec(*parsed);
  job.mutable_progress()->set_stage(r.stage);
  job.mutable_progress()->set_done(r.done);
  job.mutable_progress()->set_total(r.total);
  job.set_create_time_ms(r.create_ms);
  job.set_start_time_ms(r.start_ms);
  job.set_end_time_ms(r.end_ms);
  if (!r.error.ok()) {
    job.mutable_error()->set_code(static_cast<int>(r.error.code()));
    job.mutable_error()->set_message(r.error.message());
  }
  job.set_done(scheduler::IsTerminal(r.phase));
  job.set_summary(r.summary);
  return job;
}

v1::Digest ToProto(const storage::BlobDigest& d) {
  v1::Digest p;
  p.set_sha256(d.sha256);
  p.set_size_bytes(d.size);
  return p;
}

storage::BlobDigest FromProto(const v1::Digest& d) { return {d.sha256(), d.size_bytes()}; }

grpc::Status ToGrpc(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(s.code())), s.message());
}

Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return OkStatus();
  return Status(static_cast<StatusCode>(static_cast<int>(s.error_code())), s.error_message());
}

}  // namespace qs::server
