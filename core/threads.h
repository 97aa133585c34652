// How many threads each layer of the CPU stack gets, so they never oversubscribe the cores: W
// evaluation workers, BLAS threads cores / W (OpenBLAS's pool is process-wide and each worker's
// GEMMs get a share), and LibTorch intra-op threads per worker. Work done by one thread at a time
// (the reference passes, validation) runs under the single-stream plan, W = 1, with every core
// for BLAS; the evaluation stage switches to the worker plan and back. The intra-op pool (OpenMP) and
// OpenBLAS's pool both spin while idle, so on the same cores they fight: with both at 2 threads
// on 2 cores the fixture's float pass took 1.6× as long as with 1 intra-op thread. Intra-op
// threads therefore stay at 1 unless OpenMP was told to sleep when idle (OMP_WAIT_POLICY=passive
// or GOMP_SPINCOUNT=0 in the environment), or --threads asks.
//
//   ThreadPlan plan = PlanThreads(/*workers=*/0, UsableCores());
//   ApplyThreadPlan(plan);              // once, in the main thread
//   ... in each worker thread: ApplyWorkerThreads(plan);
#ifndef QS_CORE_THREADS_H_
#define QS_CORE_THREADS_H_

#include <string>

namespace qs::core {

struct ThreadPlan {
  int cores = 1;             // usable cores
  int workers = 1;           // evaluation workers (threads serving the task queue)
  int blas_threads = 1;      // process-wide: cores / min(cores, 8) (fewer if more workers)
  int intra_op_threads = 1;  // LibTorch intra-op threads of each worker
  int requested_intra_op_threads = 0;  // what PlanThreads was asked for (0: its rule)
};

// The cores this process may use: its CPU affinity mask, capped by a cgroup CPU quota (as a
// container limit sets) when there is one. At least 1.
int UsableCores();

// Splits `cores` among `workers`. 0 picks min(cores, 8): most of a site's evaluation is
// single-threaded work between small GEMMs, so workers side by side beat BLAS threads inside
// one (two workers evaluated the fixture about 1.8× as fast as one on 2 cores). BLAS threads
// follow the cores, not the workers (up to that default count of workers), so evaluations give
// the same numbers however many workers share the machine. `intra_op_threads`
// > 0 forces the per-worker intra-op count (at most cores / workers); 0 applies the rule above.
ThreadPlan PlanThreads(int workers, int cores, int intra_op_threads = 0);
// The plan for work one thread does at a time (whole-model tasks): one worker, every core for
// BLAS.
ThreadPlan SingleStreamPlan(const ThreadPlan& plan);

// Sets BLAS's thread count (process-wide, when the BLAS is OpenBLAS) and the calling thread's
// LibTorch intra-op threads.
void ApplyThreadPlan(const ThreadPlan& plan);
// Sets the calling worker thread's LibTorch intra-op threads (OpenMP keeps them per thread).
void ApplyWorkerThreads(const ThreadPlan& plan);

// Sets BLAS's thread count (when it is OpenBLAS and `threads` > 0) for the scope and restores
// the previous count after: what must give the same numbers wherever it runs (captured site
// inputs) runs at one count whichever plan is in force around it.
class ScopedBlasThreads {
 public:
  explicit ScopedBlasThreads(int threads);
  ~ScopedBlasThreads();
  ScopedBlasThreads(const ScopedBlasThreads&) = delete;
  ScopedBlasThreads& operator=(const ScopedBlasThreads&) = delete;

 private:
  int previous_ = 0;
};

// Debian's OpenBLAS 0.3.21 does not recognize some recent CPUs (this project's Xeon, family 6
// model 207, among them) and falls back to its generic Prescott kernels: float32 GEMM ran at
// 35-45 GFLOP/s here against 250-280 with its SkylakeX kernels. When OPENBLAS_CORETYPE is unset
// and OpenBLAS chose such a generic core, this selects the kernels the CPU's instruction set
// supports (SkylakeX with AVX-512, Haswell with AVX2 and FMA) through OpenBLAS's own dynamic
// loader. Call it before any BLAS work, from one thread. Returns what it did ("" when nothing).
std::string SelectBlasKernels();
// OpenBLAS's kernel family ("SkylakeX", "Haswell", "Prescott"), or "" for another BLAS.
std::string BlasKernels();

// The BLAS's thread count, or 0 when it cannot be queried; and a line describing the plan.
int BlasThreads();
std::string DescribeThreads(const ThreadPlan& plan);

}  // namespace qs::core

#endif  // QS_CORE_THREADS_H_
