#include "core/threads.h"

#include <dlfcn.h>
#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <ATen/Parallel.h>

namespace qs::core {
namespace {

// cgroup v2 "cpu.max" ("max 100000" or "<quota> <period>"), or v1's cfs files; 0 when unlimited.
double CgroupCpuLimit() {
  std::ifstream v2("/sys/fs/cgroup/cpu.max");
  std::string quota;
  double period = 0;
  if (v2 >> quota >> period) {
    if (quota == "max" || period <= 0) return 0;
    return std::stod(quota) / period;
  }
  std::ifstream q1("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), p1("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  double q = -1, p = 0;
  if (q1 >> q && p1 >> p && q > 0 && p > 0) return q / p;
  return 0;
}

bool OpenMpSleepsWhenIdle() {
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  const char* spin = std::getenv("GOMP_SPINCOUNT");
  return (policy != nullptr && std::string(policy) == "passive") ||
         (spin != nullptr && std::string(spin) == "0");
}

template <typename Fn>
Fn BlasSymbol(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, name));
}

}  // namespace

int UsableCores() {
  int cores = 0;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cores = CPU_COUNT(&set);
  if (cores <= 0) cores = 1;
  const double limit = CgroupCpuLimit();
  if (limit > 0) cores = std::min(cores, std::max(1, static_cast<int>(std::floor(limit))));
  return cores;
}

ThreadPlan PlanThreads(int workers, int cores, int intra_op_threads) {
  ThreadPlan plan;
  plan.cores = std::max(1, cores);
  plan.workers = workers > 0 ? workers : std::min(plan.cores, 8);
  const int share = std::max(1, plan.cores / plan.workers);
  // BLAS threads from the cores alone (the default split's share), not from the workers asked
  // for: OpenBLAS's float32 GEMM results depend on its thread count on some CPUs (its Zen kernels
  // on an AMD EPYC: a service worker with one thread on 2 cores, BLAS on both, evaluated
  // candidates 1e-9 apart from `qsearch run`'s two workers), and an evaluation must give the
  // same numbers however the work is split. Fewer only when more workers than the default would
  // oversubscribe the cores.
  const int default_share = std::max(1, plan.cores / std::min(plan.cores, 8));
  plan.blas_threads = std::min(default_share, share);
  plan.intra_op_threads =
      intra_op_threads > 0 ? std::min(intra_op_threads, share) : (OpenMpSleepsWhenIdle() ? share : 1);
  plan.requested_intra_op_threads = intra_op_threads;
  return plan;
}

ThreadPlan SingleStreamPlan(const ThreadPlan& plan) {
  ThreadPlan single = PlanThreads(1, plan.cores, plan.requested_intra_op_threads);
  single.blas_threads = single.cores;
  return single;
}

void ApplyThreadPlan(const ThreadPlan& plan) {
  if (auto set = BlasSymbol<void (*)(int)>("openblas_set_num_threads")) set(plan.blas_threads);
  at::set_num_threads(plan.intra_op_threads);
}

void ApplyWorkerThreads(const ThreadPlan& plan) { at::set_num_threads(plan.intra_op_threads); }

ScopedBlasThreads::ScopedBlasThreads(int threads) {
  auto set = BlasSymbol<void (*)(int)>("openblas_set_num_threads");
  if (threads <= 0 || set == nullptr) return;
  previous_ = BlasThreads();
  if (previous_ != threads) set(threads);
}

ScopedBlasThreads::~ScopedBlasThreads() {
  auto set = BlasSymbol<void (*)(int)>("openblas_set_num_threads");
  if (previous_ > 0 && set != nullptr && BlasThreads() != previous_) set(previous_);
}

std::string BlasKernels() {
  auto name = BlasSymbol<char* (*)()>("openblas_get_corename");
  return name != nullptr ? std::string(name()) : std::string();
}

std::string SelectBlasKernels() {
  const std::string current = BlasKernels();
  auto quit = BlasSymbol<void (*)()>("gotoblas_dynamic_quit");
  auto init = BlasSymbol<void (*)()>("gotoblas_dynamic_init");
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || quit == nullptr || init == nullptr ||
      (current != "Prescott" && current != "Core2")) {
    return "";
  }
  const char* target = nullptr;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    target = "SkylakeX";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    target = "Haswell";
  } else {
    return "";
  }
  // OpenBLAS reads OPENBLAS_CORETYPE when it (re)initializes its kernel table.
  setenv("OPENBLAS_CORETYPE", target, 1);
  quit();
  init();
  return "OpenBLAS chose its generic " + current + " kernels for this CPU; switched to " +
         BlasKernels();
}

int BlasThreads() {
  if (auto get = BlasSymbol<int (*)()>("openblas_get_num_threads")) return get();
  return 0;
}

std::string DescribeThreads(const ThreadPlan& plan) {
  std::ostringstream s;
  s << plan.cores << " cores: " << plan.workers << " worker(s) × " << plan.intra_op_threads
    << " intra-op thread(s); BLAS threads " << BlasThreads();
  const std::string kernels = BlasKernels();
  if (!kernels.empty()) s << " (OpenBLAS " << kernels << " kernels)";
  return s.str();
}

}  // namespace qs::core
