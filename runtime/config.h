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

}  // namespace sy
