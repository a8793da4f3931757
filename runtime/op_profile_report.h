// The op profile of a run (core/op_profile.h) as users read it: a table of
// the ops by time per step, and the same as JSON (train_switch --op-profile).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "core/op_profile.h"

namespace sy {

// Per op: calls and milliseconds per profiled step and the share of the
// step's wall time, the host's own milliseconds inside the calls and its
// waits for the device there; then the time inside no op (launch gaps, host work and
// waits between ops) and the step itself; then the ops' parts ("op > part >
// sub": the scopes inside an op, at any depth), whose time is already their op's.
std::string op_profile_table(const OpProfiler& p);
nlohmann::json op_profile_json(const OpProfiler& p);

}  // namespace sy
