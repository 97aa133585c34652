// A tiny random model with random calibration and validation images on disk, and the spec that
// opens a session over them, for the worker's tests. Test-only.
#ifndef QS_WORKER_SESSION_TESTING_H_
#define QS_WORKER_SESSION_TESTING_H_

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "common/file_util.h"
#include "common/job_spec.h"
#include "core/safetensors.h"
#include "core/test_models.h"

namespace qs::worker::testing {

// Writes the files under a fresh directory named after `tag` and this process (ctest runs tests
// as parallel processes); returns the directory.
inline std::string WriteTinySessionFiles(const std::string& tag) {
  const std::string dir = (std::filesystem::temp_directory_path() /
                           (tag + "_" + std::to_string(::getpid())))
                              .string();
  std::filesystem::create_directories(dir);
  const core::ViTConfig c = core::testing::TinyConfig();
  EXPECT_TRUE(WriteFileAtomically(dir + "/config.json", core::ToJson(c).dump()).ok());
  EXPECT_TRUE(
      core::WriteSafetensors(dir + "/model.safetensors", core::testing::TinyTensors(c, 41), {}).ok());
  torch::manual_seed(42);
  for (const char* name : {"calib", "val"}) {
    EXPECT_TRUE(core::WriteSafetensors(dir + "/" + name + ".safetensors",
                                       {{"images", torch::rand({24, 1, 16, 16})},
                                        {"labels", torch::randint(0, 5, {24}, torch::kInt64)}},
                                       {})
                    .ok());
  }
  return dir;
}

// A spec over the files in `dir`, on the CPU, calibrating on all 24 images.
inline JobSpec TinySessionSpec(const std::string& dir) {
  JobSpec spec;
  spec.model_config = dir + "/config.json";
  spec.model_weights = dir + "/model.safetensors";
  spec.calibration_source = dir + "/calib.safetensors";
  spec.calibration_count = 24;
  spec.validation_source = dir + "/val.safetensors";
  spec.device = "cpu";
  return spec;
}

}  // namespace qs::worker::testing

#endif  // QS_WORKER_SESSION_TESTING_H_
