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

// Set one field from "path.to.field=value"; throws ConfigError.
void apply_override(Config& cfg, const std::string& assignment);

// Check every field's range and the relations between fields; `source` names
// the config in the error (a file path).
void validate_config(const Config& cfg, const std::string& source);

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
