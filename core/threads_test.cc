#include "core/threads.h"

#include <gtest/gtest.h>

#include <cstdlib>

namespace qs::core {
namespace {

TEST(ThreadsTest, PlansNeverOversubscribeTheCores) {
  unsetenv("OMP_WAIT_POLICY");
  unsetenv("GOMP_SPINCOUNT");
  for (int cores : {1, 2, 3, 8, 16, 64}) {
    for (int workers : {0, 1, 2, 5}) {
      for (int intra : {0, 1, 4, 100}) {
        const ThreadPlan p = PlanThreads(workers, cores, intra);
        EXPECT_GE(p.workers, 1);
        EXPECT_GE(p.blas_threads, 1);
        EXPECT_GE(p.intra_op_threads, 1);
        if (p.workers <= cores) {
          EXPECT_LE(p.workers * p.blas_threads, cores) << cores << " " << workers;
          EXPECT_LE(p.workers * p.intra_op_threads, cores) << cores << " " << workers << " " << intra;
        }
      }
    }
  }
  EXPECT_EQ(PlanThreads(0, 2).workers, 2);
  EXPECT_EQ(PlanThreads(0, 2).blas_threads, 1);
  EXPECT_EQ(PlanThreads(0, 16).workers, 8);
  EXPECT_EQ(PlanThreads(0, 16).blas_threads, 2);
  EXPECT_EQ(PlanThreads(0, 64).workers, 8);
  EXPECT_EQ(PlanThreads(0, 64).blas_threads, 8);
  // BLAS threads follow the cores, not the workers (up to the default count): evaluations give
  // the same numbers with one worker or with the default split.
  EXPECT_EQ(PlanThreads(1, 2).blas_threads, 1);
  EXPECT_EQ(PlanThreads(1, 16).blas_threads, 2);
  EXPECT_EQ(PlanThreads(3, 16).blas_threads, 2);
  EXPECT_EQ(PlanThreads(16, 16).blas_threads, 1);  // more workers: no oversubscription
  const ThreadPlan single = SingleStreamPlan(PlanThreads(0, 16));
  EXPECT_EQ(single.workers, 1);
  EXPECT_EQ(single.blas_threads, 16);
  EXPECT_EQ(single.intra_op_threads, 1);  // the spinning pools again
  EXPECT_EQ(SingleStreamPlan(PlanThreads(0, 16, 4)).intra_op_threads, 4);
  // Two spinning pools on the same cores fight: intra-op stays at 1 unless OpenMP sleeps.
  EXPECT_EQ(PlanThreads(2, 16).intra_op_threads, 1);
  EXPECT_EQ(PlanThreads(2, 16, 3).intra_op_threads, 3);
  setenv("OMP_WAIT_POLICY", "passive", 1);
  EXPECT_EQ(PlanThreads(2, 16).intra_op_threads, 8);
  unsetenv("OMP_WAIT_POLICY");
}

TEST(ThreadsTest, UsableCoresIsPositiveAndWithinTheMachine) {
  const int cores = UsableCores();
  EXPECT_GE(cores, 1);
  EXPECT_LE(cores, 4096);
}

}  // namespace
}  // namespace qs::core
