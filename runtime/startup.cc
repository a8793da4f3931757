#include "runtime/startup.h"

#include <cstring>
#include <exception>
#include <vector>

#ifndef SY_CODE_VERSION
#define SY_CODE_VERSION "unknown"
#endif

namespace sy {

namespace {

// One host value from `root` to every rank.
int64_t broadcast_value(comm::Communicator& world, int64_t v, int root, const char* context) {
  Tensor t = Tensor::from_host(std::vector<int64_t>{v});
  world.broadcast(t, root, Stream{}, context);
  return t.data<int64_t>()[0];
}

// A string from `root` to every rank (its length first).
std::string broadcast_string(comm::Communicator& world, const std::string& s, int root, const char* context) {
  const int64_t n = broadcast_value(world, static_cast<int64_t>(s.size()), root, context);
  std::vector<int32_t> bytes(static_cast<size_t>(n));
  if (world.rank() == root) std::copy(s.begin(), s.end(), bytes.begin());
  if (n == 0) return "";
  Tensor t = Tensor::from_host(bytes);
  world.broadcast(t, root, Stream{}, context);
  std::string out(static_cast<size_t>(n), '\0');
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<char>(t.data<int32_t>()[i]);
  return out;
}

// One flag per rank, summed over ranks: who is set.
std::vector<int> ranks_where(comm::Communicator& world, bool mine, const char* context) {
  std::vector<int32_t> flags(world.size(), 0);
  flags[world.rank()] = mine ? 1 : 0;
  Tensor t = Tensor::from_host(flags);
  world.all_reduce_sum(t, Stream{}, context);
  std::vector<int> out;
  for (int r = 0; r < world.size(); ++r)
    if (t.data<int32_t>()[r] > 0) out.push_back(r);
  return out;
}

std::string join(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

uint64_t fnv1a(const std::string& s, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace

const char* code_version() { return SY_CODE_VERSION; }

void agree_on(comm::Communicator& world, const std::function<void()>& phase) {
  if (world.size() == 1) return phase();
  std::string message;
  int code = 0;
  try {
    phase();
  } catch (const ConfigError& e) {
    message = e.what(), code = 2;
  } catch (const std::exception& e) {
    message = e.what(), code = 1;
  }
  const std::vector<int> failed = ranks_where(world, code != 0, "start-up: did every rank load its config");
  if (failed.empty()) return;
  const int first = failed.front();
  // The first failing rank's message and code, to every rank.
  const std::string text = broadcast_string(world, std::to_string(code) + message, first, "start-up: error");
  const int agreed_code = text[0] - '0';
  std::string what = text.substr(1);
  if (static_cast<int>(failed.size()) < world.size())
    what = "rank " + std::to_string(first) + ": " + what +
           (failed.size() > 1 ? " (failed on ranks " + join(failed) + ")" : "");
  throw AgreedError(what, agreed_code);
}

std::string config_mismatch(comm::Communicator& world, const Config& cfg, const std::string& version) {
  if (world.size() == 1) return "";
  const std::string text = canonical_config_text(cfg);
  const uint64_t mine = fnv1a(text, fnv1a(version + '\0'));
  const uint64_t root = static_cast<uint64_t>(broadcast_value(world, static_cast<int64_t>(mine), 0, "start-up: config hash"));
  const std::vector<int> differ = ranks_where(world, mine != root, "start-up: config hash");
  if (differ.empty()) return "";
  // Rank 0's config and version to every rank; the first differing rank names
  // the first difference; its line goes to every rank.
  const std::string root_version = broadcast_string(world, version, 0, "start-up: code version");
  const std::string root_text = broadcast_string(world, text, 0, "start-up: config text");
  const int first = differ.front();
  std::string line;
  if (world.rank() == first) {
    const std::string r = " on rank " + std::to_string(first);
    if (version != root_version) {
      line = "code version '" + root_version + "' on rank 0 but '" + version + "'" + r +
             ": every rank must run the same build";
    } else {
      FieldDifference d = first_difference(root_text, text);
      line = d.field + " = " + d.a + " on rank 0 but " + d.b + r +
             ": every rank must load the same config and --set overrides";
    }
  }
  line = broadcast_string(world, line, first, "start-up: config difference");
  return "ranks disagree: " + line + " (ranks differing from rank 0: " + join(differ) + ")";
}

std::string hash_table_mismatch(comm::Communicator& world, const Config& cfg) {
  if (world.size() == 1) return "";
  std::string bytes;
  for (int32_t g : cfg.moe().hash_table()) bytes += std::to_string(g) + ',';
  const uint64_t mine = fnv1a(bytes);
  const uint64_t root = static_cast<uint64_t>(broadcast_value(world, static_cast<int64_t>(mine), 0, "start-up: hash table"));
  const std::vector<int> differ = ranks_where(world, mine != root, "start-up: hash table");
  if (differ.empty()) return "";
  return "ranks disagree: moe.hash_table (balanced hash routing's map, made from each rank's copy of the training "
         "data) differs from rank 0's on ranks " + join(differ) + ": every rank must read the same data";
}

}  // namespace sy
