// Captures the float inputs of every linear site of a model, for tests on real layers.
#ifndef QS_CORE_LAYER_INPUTS_FOR_TEST_H_
#define QS_CORE_LAYER_INPUTS_FOR_TEST_H_

#include <map>
#include <string>

#include <c10/core/InferenceMode.h>

#include "core/dataset.h"
#include "core/vit.h"

namespace qs::core::testing {

struct LayerCapture {
  torch::Tensor input;   // [N, in] flattened tokens
  torch::Tensor weight;  // [out, in]
  torch::Tensor bias;
};

inline std::map<std::string, LayerCapture> CaptureLinearInputs(const ViTModel& model,
                                                               const torch::Tensor& images) {
  struct Recorder : SiteHandler {
    std::map<std::string, LayerCapture> layers;
    torch::Tensor Linear(const Site& s, const torch::Tensor& x, const torch::Tensor& w,
                         const torch::Tensor& b) override {
      layers[s.name] = {x.reshape({-1, x.size(-1)}).clone(), w.clone(),
                        b.defined() ? b.clone() : b};
      return SiteHandler::Linear(s, x, w, b);
    }
  } recorder;
  c10::InferenceMode guard;
  model.Forward(images, &recorder);
  return recorder.layers;
}

// The fixture's linear layers with their inputs on `count` training images drawn with `seed`.
inline StatusOr<std::map<std::string, LayerCapture>> FixtureLayerInputs(int64_t count,
                                                                         uint64_t seed) {
  QS_ASSIGN_OR_RETURN(ViTModel model, ViTModel::Load("tests/data/fixture/config.json",
                                                     "tests/data/fixture/model.safetensors"));
  QS_ASSIGN_OR_RETURN(Dataset train, LoadDataset("fashion-mnist:train"));
  QS_ASSIGN_OR_RETURN(torch::Tensor images,
                      NormalizeImages(DrawSubset(train, count, seed), model.config()));
  return CaptureLinearInputs(model, images);
}

}  // namespace qs::core::testing

#endif  // QS_CORE_LAYER_INPUTS_FOR_TEST_H_
