// `qsearch bench`: the evaluation engine's speed and memory, each as a ratio to a reference
// measured in the same run, printed as one JSON object (docs/performance.md reads it).
//
//   qsearch bench [--quick] [--json] [--out FILE]
//
// Run from the repository root (it reads tests/data/fixture and Fashion-MNIST). It measures:
// - gemm_fraction: candidate evaluation's GEMM rate (multiply-adds of every GEMM it ran ×2, over
//   the evaluation stage's wall time) against the machine's float32 GEMM peak, on one ViT-B
//   block with RTN, GPTQ and ERQ (gemm_fraction_rtn: RTN alone; gemm_fraction_fixture: the
//   fixture search);
// - search_fp32_pass_ratio: the fixture search's evaluation stage (278 candidates: RTN, GPTQ and
//   ERQ at 2-8 bits, 8-bit activations) over one float pass over its calibration images;
// - sweep_candidate_ratio: an RTN sweep (6-block width-96 patch-4 ViT, weight bits {2,3,4,6,8} ×
//   activation bits {4,6,8}, min-max grids) per candidate, in float calibration passes; next to
//   it plain_script_sweep_candidate_ratio, the same sweep by the straightforward PyTorch script
//   bench/plain_sweep.py (Debian's python3-torch), measured in the same run;
// - validation_fp32_pass_ratio: validating a uniform RTN recipe, in float passes over the
//   calibration plus validation images;
// - peak_rss_deits_gib, peak_rss_vitb_gib and deits/vitb (not with --quick): a whole `qsearch run`
//   on a DeiT-S- and a ViT-B-shaped random model in the timm layout, with image folders of
//   generated JPEGs (128 calibration, 64 validation and 64 test images through the timm
//   evaluation transform), in a child process: its peak resident memory, and its wall time in
//   float passes over the calibration images (wall_in_fp32_calibration_passes);
// - embedded_two_worker_speedup: the fixture evaluation with one worker against two;
// - two_worker_speedup, dispatch_tasks_per_s, cache_second_job_ratio: the distributed service's
//   figures, null until the service exists.
#ifndef QS_BENCH_ENGINE_BENCH_H_
#define QS_BENCH_ENGINE_BENCH_H_

#include <string>

namespace qs::bench {

struct BenchArgs {
  bool quick = false;         // skip the DeiT-S and ViT-B runs and shorten the rest
  bool json_output = false;   // the JSON object alone on stdout
  std::string out;            // also write the JSON here
  std::string fixture = "tests/data/fixture";
  int threads = 0;            // intra-op threads per worker (0: the default plan)
};

// Returns the process exit code (0 ok, 1 a measurement failed, with the reason on stderr).
int RunBenchCommand(const BenchArgs& args);

}  // namespace qs::bench

#endif  // QS_BENCH_ENGINE_BENCH_H_
