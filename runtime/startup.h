// Start-up under several ranks (mpirun): every rank loads its own config from
// its own command line, so the ranks must agree before they train together.
//
//   agree_on(world, phase)    runs a local phase (load the config, check the
//                             paths) on every rank; if it failed anywhere, every
//                             rank throws the same AgreedError, so rank 0 can
//                             print it once and every rank exit with its code,
//                             without MPI_Abort and without a rank left waiting.
//   config_mismatch(...)      compares a hash of each rank's resolved config
//                             and code version with rank 0's; on a mismatch
//                             names the first differing field and the ranks.
#pragma once
#include <functional>
#include <string>

#include "comm/communicator.h"
#include "runtime/agreed_error.h"
#include "runtime/config.h"

namespace sy {

// The code version compiled in (git describe at configure time, or "unknown").
const char* code_version();

// Runs `phase` here and agrees on the outcome with every rank of `world` (a
// collective: every rank must call it). If `phase` threw on any rank, throws
// AgreedError on every rank with the lowest failing rank's message (prefixed
// "rank R: " when not every rank failed) and exit code 2 for a ConfigError,
// else 1. With one rank the exception passes through unchanged.
void agree_on(comm::Communicator& world, const std::function<void()>& phase);

// Empty when every rank's resolved config (canonical_config_text) and code
// version equal rank 0's; otherwise one line, the same on every rank, naming
// the first differing field, its values and the ranks that differ. Collective.
std::string config_mismatch(comm::Communicator& world, const Config& cfg, const std::string& version);

// The same for what each rank derives from its own copy of the training data
// (moe.hash_table, made by the Trainer): empty when every rank's equals rank
// 0's, else one line naming the ranks that differ. Collective.
std::string hash_table_mismatch(comm::Communicator& world, const Config& cfg);

}  // namespace sy
