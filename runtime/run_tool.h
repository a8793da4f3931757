// The top of every tool's main (examples/): what the tool throws becomes one
// line on stderr and the exit code, the same way in every tool.
// In sy_shards (no protobuf, no MPI) so that examples/tokenize can use it.
#pragma once
#include <functional>

namespace sy {

// The rank a tool runs as and the job's size (one rank outside mpirun).
struct ToolRank {
  int rank = 0;
  int size = 1;
};

// Returns body()'s exit code, or turns what body throws into "error: <what>"
// on stderr and an exit code:
//   AgreedError          its exit_code(); printed by rank 0 only, since every
//                        rank holds the same one (runtime/startup.h);
//   ConfigError          2 (bad input);
//   other std::exception 1.
// With several ranks, a ConfigError or other exception is this rank's alone:
// its line starts "rank R: ", and abort_job(code), when given, ends the job,
// since the other ranks may be waiting in a collective this one never joins.
int run_tool(const std::function<int()>& body, ToolRank where = {},
             const std::function<void(int)>& abort_job = {});

}  // namespace sy
