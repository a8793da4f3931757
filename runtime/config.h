// Loading, overriding and validating a run's configuration
// (configs/switchyard.proto). Every failure is a ConfigError whose message is
// one line naming the file (or --set), the field, the value and what is allowed.
#pragma once
#include <string>
#include <vector>

#include "switchyard.pb.h"

namespace sy {

using Config = switchyard::Config;

// Parse a text-format file, apply `overrides` ("a.b=v", in order), validate.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});

// Parse text-format config text; `source` names it in errors.
Config parse_config(const std::string& text, const std::string& source);

// Parse any text-format message (a checkpoint manifest); ConfigError naming
// `source`, the line and the field on a parse error.
void parse_text_proto(const std::string& text, const std::string& source, google::protobuf::Message& msg);

// Set one field from "path.to.field=value"; throws ConfigError.
void apply_override(Config& cfg, const std::string& assignment);

// Sets every unset scalar field of msg and its sub-messages to its default,
// so the text form spells out the whole resolved configuration.
void fill_defaults(google::protobuf::Message& msg);

// Check every field's range and the relations between fields; `source` names
// the config in the error (a file path).
void validate_config(const Config& cfg, const std::string& source);

// Memory one rank needs for training, estimated from the config (bytes): the
// parameters with their gradients and AdamW moments (4 floats each; a rank's
// expert shard), the activations a step keeps for backward for its
// batch / world sequences, and the attention probability matrices of the dense
// attention layers, B*H*T*T floats each. Meant as a lower bound (temporaries
// and the allocator's slack come on top): on the CPU path the peak resident
// size of tiny, switch_tiny and routed_copy runs is 1.1-1.6x the estimate.
struct MemoryEstimate {
  double parameters = 0, activations = 0, attention = 0;
  double total() const { return parameters + activations + attention; }
};
MemoryEstimate estimate_memory(const Config& cfg, int world);

// This machine's physical memory in bytes (sysconf), 0 when unknown.
double physical_memory_bytes();

// ConfigError, one line with the estimate, when `ranks_here` ranks of a
// `world` on this machine would need more than `available` bytes (a step of
// seq_len 65536 would otherwise fail at a terabyte allocation).
void check_memory(const Config& cfg, int world, int ranks_here, double available, const std::string& source);

// Every field of the resolved config, set or at its default, one line each
// ("model.d_model = 64", repeated fields as "[a, b]", strings quoted and
// escaped) in schema order: two configs that train alike give the same text.
std::string canonical_config_text(const Config& cfg);

// The first field whose line differs between two canonical texts, with its
// value in each; `field` is empty when the texts are equal.
struct FieldDifference {
  std::string field, a, b;
};
FieldDifference first_difference(const std::string& canonical_a, const std::string& canonical_b);

}  // namespace sy
