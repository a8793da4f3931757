// What every tool's command line shares (examples/): the parse step, whose
// refusal is one line and exit code 2, a range check for real-valued
// options that also refuses NaN and infinities, and one for 64-bit seeds.
#pragma once
#include <CLI/CLI.hpp>
#include <cmath>
#include <iostream>
#include <sstream>
#include <string>

namespace sy {

// Parses argv into app's options: -1 to go on, else the exit code: 0 after
// --help (printed), 2 for a usage error, printed as one line
// "error: <CLI11's reason> (--help lists the options)".
// --help shows defaults (each tool captures them), but an empty list's "[]"
// says nothing: such options say in words what they default to. Before parse.
inline void tidy_defaults(CLI::App& app) {
  for (CLI::Option* o : app.get_options())
    if (o->get_default_str() == "[]") o->default_str("");
}

inline int parse_options(CLI::App& app, int argc, char** argv) {
  tidy_defaults(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::cerr << "error: " << e.what() << " (--help lists the options)\n";
    return 2;
  }
  return -1;
}

// s as a number, the whole of it (std::stod alone takes "1x" as 1).
inline bool parse_number(const std::string& s, double& v) {
  size_t used = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    return false;
  }
  return used > 0 && used == s.size();
}

// CLI::Range for a real value, refusing NaN too (every comparison with NaN
// is false, so CLI::Range lets it through) and the infinities.
inline CLI::Validator FiniteRange(double lo, double hi) {
  std::ostringstream desc;
  desc << "FLOAT in [" << lo << " - " << hi << "]";
  return CLI::Validator(
      [lo, hi, range = desc.str()](std::string& s) -> std::string {
        double v = 0;
        if (!parse_number(s, v)) return "'" + s + "' is not a number";
        if (!std::isfinite(v) || v < lo || v > hi) return "value " + s + " not " + range.substr(6);  // ("in [lo - hi]")
        return std::string();
      },
      desc.str());
}

// A whole non-negative integer up to 2^64 - 1 (a seed): CLI11 reads "-1" into
// an unsigned option as 2^64 - 1 and clamps one past the top, where a user
// meant something else.
inline CLI::Validator Unsigned64() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos ||
            (s.size() == 20 && s > "18446744073709551615"))
          return "'" + s + "' is not an integer in [0, 18446744073709551615]";
        return std::string();
      },
      "UINT64");
}

}  // namespace sy
