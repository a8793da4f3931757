// main() for GoogleTest binaries run under mpirun: MPI set up around the
// tests; only rank 0 prints GoogleTest's report (every rank still fails the
// job with a non-zero exit when one of its tests fails). The other ranks
// print their failed assertions only, each naming its rank and test: a
// failure on one rank often leaves the others waiting in a collective until
// the watchdog ends the job, so rank 0's report never says what failed.
#pragma once
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "comm/mpi_communicator.h"

class RankFailures : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailures(int rank) : rank_(rank) {}
  // (the test's name kept here: GoogleTest calls OnTestPartResult holding
  // the lock current_test_info() takes)
  void OnTestStart(const ::testing::TestInfo& t) override {
    test_ = std::string(t.test_suite_name()) + "." + t.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "rank %d: %s: %s:%d: failure\n%s\n", rank_, test_.c_str(),
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.message());
    std::fflush(stderr);
  }

 private:
  int rank_;
  std::string test_;
};

int main(int argc, char** argv) {
  sy::comm::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailures(rank));
  }
  int failed = RUN_ALL_TESTS() != 0;
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && any && !failed) std::cerr << "a test failed on another rank\n";
  return any;
}
