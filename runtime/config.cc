#include "runtime/config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include "comm/nccl_communicator.h"
#include "core/device.h"
#include "core/error.h"
#include "runtime/cost_model.h"
#include "runtime/moe_layer.h"

namespace sy {

namespace pb = google::protobuf;

namespace {

// What a path that is not a regular file is ("is a directory"); empty for a
// regular file.
std::string not_a_regular_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  switch (st.type()) {
    case fs::file_type::regular: return "";
    case fs::file_type::not_found: return "no such file";
    case fs::file_type::directory: return "is a directory";
    case fs::file_type::fifo: return "is a FIFO (named pipe)";
    case fs::file_type::socket: return "is a socket";
    case fs::file_type::character: return "is a character device";
    case fs::file_type::block: return "is a block device";
    default: return ec ? "cannot be read: " + ec.message() : "is not a regular file";
  }
}

std::string field_names(const pb::Descriptor* d) {
  std::string s;
  for (int i = 0; i < d->field_count(); ++i) s += (i ? ", " : "") + d->field(i)->name();
  return s;
}

// Collects the first parse error and turns it into one line that names the
// file, the line, the field on that line and what was wrong.
class FirstError : public pb::io::ErrorCollector {
 public:
  FirstError(std::string source, std::string text) : source_(std::move(source)), text_(std::move(text)) {}
  void AddError(int line, pb::io::ColumnNumber col, const std::string& message) override {
    if (!first_.empty()) return;
    std::ostringstream os;
    os << source_ << ":" << line + 1 << ":" << col + 1 << ": ";
    std::string field = field_on_line(line);
    if (!field.empty()) os << "field '" << printable(field, 40) << "': ";
    os << printable(message);
    // Unknown field: say which fields are allowed in that message.
    const std::string key = "Message type \"";
    auto p = message.find(key);
    if (p != std::string::npos) {
      auto q = message.find('"', p + key.size());
      const pb::Descriptor* d =
          pb::DescriptorPool::generated_pool()->FindMessageTypeByName(message.substr(p + key.size(), q - p - key.size()));
      if (d) os << " (allowed: " << field_names(d) << ")";
    }
    first_ = os.str();
  }
  void AddWarning(int, pb::io::ColumnNumber, const std::string&) override {}
  const std::string& first() const { return first_; }

 private:
  std::string field_on_line(int line) const {
    std::istringstream in(text_);
    std::string l;
    for (int i = 0; i <= line && std::getline(in, l); ++i) {
    }
    auto b = l.find_first_not_of(" \t");
    if (b == std::string::npos) return "";
    auto e = l.find_first_of(" \t:{", b);
    return l.substr(b, e == std::string::npos ? std::string::npos : e - b);
  }
  std::string source_, text_, first_;
};

}  // namespace

void parse_text_proto(const std::string& text, const std::string& source, pb::Message& msg) {
  pb::TextFormat::Parser parser;
  FirstError errors(source, text);
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &msg))
    throw ConfigError(errors.first().empty() ? source + ": cannot parse (text-format protobuf expected)"
                                             : errors.first());
}

Config parse_config(const std::string& text, const std::string& source) {
  Config cfg;
  parse_text_proto(text, source, cfg);
  return cfg;
}

namespace {

// A repeated scalar field from "a,b,c" (or "[a, b, c]"): the list is replaced;
// an empty value clears it.
void set_list(pb::Message* msg, const pb::FieldDescriptor* f, std::string value, const std::string& where,
              const std::string& walked) {
  auto trim = [](std::string v) {
    const auto b = v.find_first_not_of(" \t"), e = v.find_last_not_of(" \t");
    return b == std::string::npos ? std::string() : v.substr(b, e - b + 1);
  };
  value = trim(value);
  if (value.size() >= 2 && value.front() == '[' && value.back() == ']') value = trim(value.substr(1, value.size() - 2));
  msg->GetReflection()->ClearField(msg, f);
  if (value.empty()) return;
  pb::LogSilencer quiet;
  std::stringstream ss(value);
  int i = 0;
  for (std::string item; std::getline(ss, item, ','); ++i) {
    item = trim(item);
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING) {
      msg->GetReflection()->AddString(msg, f, item);
    } else if (!pb::TextFormat::ParseFieldValueFromString(item, f, msg)) {
      throw ConfigError(where + ": '" + item + "' (element " + std::to_string(i) + ") is not a valid " +
                        f->type_name() + " for " + walked + " (a list: comma-separated values)");
    }
  }
}

}  // namespace

void apply_override(Config& cfg, const std::string& assignment) {
  const std::string where = "--set " + assignment;
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError(where + ": expected path.to.field=value");
  const std::string path = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  pb::Message* msg = &cfg;
  std::string walked;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string name = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const pb::Descriptor* d = msg->GetDescriptor();
    const pb::FieldDescriptor* f = d->FindFieldByName(name);
    if (!f)
      throw ConfigError(where + ": no field '" + name + "' in " +
                        (walked.empty() ? std::string("the config") : walked) +
                        " (allowed: " + field_names(d) + ")");
    walked += (walked.empty() ? "" : ".") + name;
    if (dot == std::string::npos) {
      if (f->type() == pb::FieldDescriptor::TYPE_MESSAGE)
        throw ConfigError(where + ": '" + walked + "' is a message; set one of its fields (" +
                          field_names(f->message_type()) + ")");
      if (f->is_repeated()) {
        set_list(msg, f, value, where, walked);
        return;
      }
      if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING) {  // taken as is, no quotes
        msg->GetReflection()->SetString(msg, f, value);
        return;
      }
      pb::LogSilencer quiet;  // our message replaces protobuf's stderr log
      if (!pb::TextFormat::ParseFieldValueFromString(value, f, msg)) {
        std::string allowed;
        if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM)
          for (int i = 0; i < f->enum_type()->value_count(); ++i)
            allowed += (i ? ", " : " (allowed: ") + f->enum_type()->value(i)->name();
        throw ConfigError(where + ": '" + value + "' is not a valid " + f->type_name() + " for " + walked +
                          (allowed.empty() ? "" : allowed + ")"));
      }
      return;
    }
    if (f->type() != pb::FieldDescriptor::TYPE_MESSAGE)
      throw ConfigError(where + ": '" + walked + "' is a " + f->type_name() + ", not a message");
    msg = msg->GetReflection()->MutableMessage(msg, f);
    start = dot + 1;
  }
}

namespace {

// One range check: "<source>: <field> = <value>: must be in <range>".
class Checker {
 public:
  explicit Checker(std::string source) : source_(std::move(source)) {}
  template <typename T>
  void range(const char* field, T v, T lo, T hi, bool lo_open = false, bool hi_open = false) {
    bool ok = (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
    if (!ok) {
      std::ostringstream os;
      os << (lo_open ? "(" : "[") << lo << ", " << hi << (hi_open ? ")" : "]");
      fail(field, v, "must be in " + os.str());
    }
  }
  template <typename T>
  [[noreturn]] void fail(const char* field, T v, const std::string& why) {
    std::ostringstream os;
    os << source_ << ": " << field << " = " << v << ": " << why;
    throw ConfigError(os.str());
  }

 private:
  std::string source_;
};

}  // namespace

namespace {

// Every float and double field, repeated ones too, set or not, must be finite.
void check_finite(const pb::Message& m, const std::string& prefix, Checker& c) {
  const pb::Descriptor* d = m.GetDescriptor();
  const pb::Reflection* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    const std::string path = prefix + f->name();
    const auto t = f->cpp_type();
    if (t == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (f->is_repeated())
        for (int k = 0; k < r->FieldSize(m, f); ++k)
          check_finite(r->GetRepeatedMessage(m, f, k), path + "[" + std::to_string(k) + "].", c);
      else
        check_finite(r->GetMessage(m, f), path + ".", c);
      continue;
    }
    if (t != pb::FieldDescriptor::CPPTYPE_FLOAT && t != pb::FieldDescriptor::CPPTYPE_DOUBLE) continue;
    auto get = [&](int k) -> double {
      if (t == pb::FieldDescriptor::CPPTYPE_FLOAT) return k < 0 ? r->GetFloat(m, f) : r->GetRepeatedFloat(m, f, k);
      return k < 0 ? r->GetDouble(m, f) : r->GetRepeatedDouble(m, f, k);
    };
    if (!f->is_repeated()) {
      if (!std::isfinite(get(-1))) c.fail(path.c_str(), get(-1), "must be a finite number");
      continue;
    }
    for (int k = 0; k < r->FieldSize(m, f); ++k)
      if (!std::isfinite(get(k)))
        c.fail((path + "[" + std::to_string(k) + "]").c_str(), get(k), "must be a finite number");
  }
}

}  // namespace

bool is_moe_layer(const switchyard::MoeConfig& moe, int layer) {
  return moe.num_experts() > 0 && layer >= moe.first_dense_layers() &&
         (layer + 1) % std::max(1, moe.every_n_layers()) == 0;
}

bool is_depth_routed(const switchyard::DepthConfig& depth, int layer) {
  return depth.every_n_layers() > 0 && (layer + 1) % depth.every_n_layers() == 0;
}

bool is_sparse_attention_layer(const switchyard::AttentionConfig& at, int layer, int n_layers) {
  return at.kind() != switchyard::AttentionConfig::DENSE &&
         (at.last_n_layers() == 0 || layer >= n_layers - at.last_n_layers());
}

void validate_config(const Config& cfg, const std::string& source) {
  Checker c(source);
  check_finite(cfg, "", c);
  const auto& m = cfg.model();
  const bool tokens = cfg.data().source() == switchyard::DataConfig::TOKEN_FILES;
  if (tokens) c.range("model.vocab_size", m.vocab_size(), 2, 1 << 20);
  else if (m.vocab_size() != 256)
    c.fail("model.vocab_size", m.vocab_size(), "must be 256 for byte-level data (data.source TOKEN_FILES allows [2, 1048576])");
  c.range("model.d_model", m.d_model(), 8, 8192);
  c.range("model.n_layers", m.n_layers(), 1, 256);
  c.range("model.n_heads", m.n_heads(), 1, m.d_model());
  if (m.d_model() % m.n_heads() != 0)
    c.fail("model.d_model", m.d_model(), "must be divisible by model.n_heads = " + std::to_string(m.n_heads()));
  c.range("model.n_kv_heads", m.n_kv_heads(), 0, m.n_heads());
  if (m.n_kv_heads() > 0 && m.n_heads() % m.n_kv_heads() != 0)
    c.fail("model.n_kv_heads", m.n_kv_heads(), "must divide model.n_heads = " + std::to_string(m.n_heads()));
  if (kv_heads(m) < m.n_heads() && cfg.attention().kind() != switchyard::AttentionConfig::DENSE)
    c.fail("model.n_kv_heads", m.n_kv_heads(),
           "groups key/value heads for dense attention only; attention.kind is " +
               switchyard::AttentionConfig::Kind_Name(cfg.attention().kind()) + " (n_kv_heads 0 or n_heads)");
  c.range("model.ffn_hidden", m.ffn_hidden(), 1, 65536);
  c.range("model.seq_len", m.seq_len(), 2, 65536);
  c.range("model.init_std", m.init_std(), 0.f, 1.f, true);
  c.range("model.rope_base", m.rope_base(), 1.f, 1e9f, true);
  if (m.position() == switchyard::ModelConfig::ROPE && (m.d_model() / m.n_heads()) % 2 != 0)
    c.fail("model.position", "ROPE",
           "needs an even head size; d_model / n_heads = " + std::to_string(m.d_model() / m.n_heads()));

  const auto& t = cfg.train();
  c.range("train.batch", t.batch(), 1, 65536);
  c.range("train.micro_batches", t.micro_batches(), 1, 65536);
  c.range("train.recompute_blocks", t.recompute_blocks(), 0, cfg.model().n_layers());
  if (t.recompute_blocks() > 0 && !t.recompute())
    c.fail("train.recompute_blocks", t.recompute_blocks(), "chooses the blocks train.recompute recomputes; set train.recompute");
  if (t.micro_batches() > 0 && t.batch() % t.micro_batches() != 0)
    c.fail("train.micro_batches", t.micro_batches(),
           "must divide train.batch = " + std::to_string(t.batch()) + " (each rank's slice splits into micro-batches)");
  c.range("train.steps", t.steps(), 1, 100000000);
  c.range("train.lr", t.lr(), 0.f, 1.f, true);
  c.range("train.min_lr_ratio", t.min_lr_ratio(), 0.f, 1.f);
  c.range("train.warmup_steps", t.warmup_steps(), 0, t.steps());
  c.range("train.beta1", t.beta1(), 0.f, 1.f, false, true);
  c.range("train.beta2", t.beta2(), 0.f, 1.f, false, true);
  c.range("train.eps", t.eps(), 0.f, 1.f, true, true);
  c.range("train.weight_decay", t.weight_decay(), 0.f, 1.f);
  c.range("train.grad_clip", t.grad_clip(), 0.f, 1e6f);
  c.range("train.log_interval", t.log_interval(), 1, 100000000);
  c.range("train.eval_interval", t.eval_interval(), 0, 100000000);
  c.range("train.eval_batches", t.eval_batches(), 1, 100000);
  c.range("train.checkpoint_interval", t.checkpoint_interval(), 0, 100000000);
  if (t.checkpoint_dir().empty()) c.fail("train.checkpoint_dir", "\"\"", "must name a directory");
  c.range("train.keep_checkpoints", t.keep_checkpoints(), 0, 1000000);
  c.range("train.max_bad_steps", t.max_bad_steps(), 1, 1000000);

  const auto& d = cfg.data();
  c.range("data.val_fraction", d.val_fraction(), 0.f, 0.5f, true);
  if (d.source() != switchyard::DataConfig::TOKEN_FILES) {
    const char* src = d.source() == switchyard::DataConfig::TEXT_FILE ? "TEXT_FILE" : "SYNTHETIC";
    const std::string why = std::string("set while data.source is ") + src + ", which does not read it";
    if (!d.token_files().empty()) c.fail("data.token_files", "\"" + d.token_files() + "\"", why);
    if (!d.val_token_files().empty()) c.fail("data.val_token_files", "\"" + d.val_token_files() + "\"", why);
    if (!d.tokenizer().empty()) c.fail("data.tokenizer", "\"" + d.tokenizer() + "\"", why + " (byte-level data needs none)");
  }
  if (d.source() == switchyard::DataConfig::TOKEN_FILES) {
    // The patterns are expanded and the shards checked when the data is
    // loaded (runtime/training_data.h): a config names data that may not
    // have been tokenized yet.
    if (d.token_files().empty()) c.fail("data.token_files", "\"\"", "required when data.source is TOKEN_FILES");
    if (d.val_token_files().empty()) c.fail("data.val_token_files", "\"\"", "required when data.source is TOKEN_FILES");
    if (!d.path().empty())
      c.fail("data.path", d.path(), "set while data.source is TOKEN_FILES, which reads data.token_files instead");
  } else if (d.source() == switchyard::DataConfig::TEXT_FILE) {
    if (d.path().empty()) c.fail("data.path", "\"\"", "required when data.source is TEXT_FILE");
    const std::string kind = not_a_regular_file(d.path());
    if (kind == "no such file")
      c.fail("data.path", d.path(), "no such file (paths are relative to the working directory)");
    if (!kind.empty()) c.fail("data.path", d.path(), kind + "; data must be a regular file");
  } else {
    if (!d.path().empty())
      c.fail("data.path", d.path(),
             "set while data.source is SYNTHETIC, which does not read it; set data.source: TEXT_FILE to train on the file");
    c.range<int64_t>("data.synthetic_bytes", d.synthetic_bytes(), 10000, 1000000000);
    if (d.synthetic_tasks().empty() || d.synthetic_tasks().find_first_not_of("CSBA") != std::string::npos)
      c.fail("data.synthetic_tasks", "\"" + d.synthetic_tasks() + "\"", "must be a non-empty subset of \"CSBA\"");
    c.range("data.copy_gap_min", d.copy_gap_min(), 1, 100000);
    c.range("data.copy_gap_max", d.copy_gap_max(), d.copy_gap_min(), 100000);
  }

  const auto& e = cfg.moe();
  c.range("moe.num_experts", e.num_experts(), 0, 4096);
  if (e.num_experts() > 0) {
    c.range("moe.top_k", e.top_k(), 1, std::min(8, e.num_experts()));
    c.range("moe.capacity_factor", e.capacity_factor(), 0.f, 64.f, true);
    c.range("moe.capacity_factor_eval", e.capacity_factor_eval(), 0.f, 64.f, true);
    c.range("moe.min_capacity", e.min_capacity(), 0, 1 << 20);
    if (static_cast<int64_t>(e.min_capacity()) * e.num_experts() >= INT32_MAX)
      c.fail("moe.min_capacity", e.min_capacity(),
             "times moe.num_experts = " + std::to_string(e.num_experts()) +
                 " rows must stay under 2^31 (a padded route counts its rows in 32 bits)");
    c.range("moe.every_n_layers", e.every_n_layers(), 1, m.n_layers());
    c.range("moe.first_dense_layers", e.first_dense_layers(), 0, m.n_layers() - 1);
    bool any = false;
    for (int l = 0; l < m.n_layers(); ++l) any = any || is_moe_layer(e, l);
    if (!any)
      c.fail("moe.first_dense_layers", e.first_dense_layers(),
             "leaves no MoE layer among the " + std::to_string(m.n_layers()) + " with moe.every_n_layers = " +
                 std::to_string(e.every_n_layers()));
    c.range("moe.jitter", e.jitter(), 0.f, 1.f, false, true);
    c.range("moe.bias_balance_rate", e.bias_balance_rate(), 0.f, 1.f);
    c.range("moe.load_balance_coef", e.load_balance_coef(), 0.f, 100.f);
    c.range("moe.z_loss_coef", e.z_loss_coef(), 0.f, 100.f);
    c.range("moe.router_noise", e.router_noise(), 0.f, 10.f);
    c.range("moe.load_balance_tokens", e.load_balance_tokens(), 0, 1000000000);
    // (all ranks' tokens of micro-batch m; a rank's share is checked by the trainer)
    const int64_t step_tokens = int64_t{t.batch()} / std::max(1, t.micro_batches()) * m.seq_len();
    if (e.load_balance_tokens() > 0 && step_tokens % e.load_balance_tokens() != 0)
      c.fail("moe.load_balance_tokens", e.load_balance_tokens(),
             "must divide train.batch / train.micro_batches * model.seq_len = " + std::to_string(step_tokens));
    c.range("moe.budget_coef", e.budget_coef(), 0.f, 100.f);
    c.range("moe.budget", e.budget(), 0.f, 1e9f);
    if (e.expert_hidden_size() > 1 && e.expert_hidden_size() != e.num_experts())
      c.fail("moe.expert_hidden", std::to_string(e.expert_hidden_size()) + " values",
             "must be empty, one value for every expert, or hold moe.num_experts = " +
                 std::to_string(e.num_experts()) + " values");
    for (int g = 0; g < e.expert_hidden_size(); ++g)
      c.range(("moe.expert_hidden[" + std::to_string(g) + "]").c_str(), e.expert_hidden(g), 0, 65536);
    if (e.expert_cost_size() != 0 && e.expert_cost_size() != e.num_experts())
      c.fail("moe.expert_cost", std::to_string(e.expert_cost_size()) + " values",
             "must be empty or hold moe.num_experts = " + std::to_string(e.num_experts()) + " values");
    for (float v : e.expert_cost())
      if (v < 0) c.fail("moe.expert_cost", v, "costs must be >= 0");
    if (e.padded() && e.dropless())
      c.fail("moe.padded", "true", "padding needs a capacity known before routing; not with moe.dropless");
    if (e.padded() && e.budget_mode() != switchyard::MoeConfig::SOFT)
      c.fail("moe.padded", "true", "a HARD or HARD_CAUSAL budget renumbers the rows; padded needs budget_mode SOFT");
    if (e.padded() && e.pad_to_largest())
      c.fail("moe.pad_to_largest", "true", "pads to this step's largest count; moe.padded pads to the capacity: set one");
    if (e.router() == switchyard::MoeConfig::EXPERT_CHOICE && e.dropless())
      c.fail("moe.dropless", "true", "expert choice fills every expert exactly; dropless applies to TOKENS_CHOOSE only");
    if (e.router() == switchyard::MoeConfig::EXPERT_CHOICE && e.slot_priority() != switchyard::MoeConfig::POSITION)
      c.fail("moe.slot_priority", switchyard::MoeConfig::SlotPriority_Name(e.slot_priority()),
             "orders a tokens-choose router's slots; expert choice fills its own");
    if (e.router() == switchyard::MoeConfig::EXPERT_CHOICE &&
        e.router_noise_kind() == switchyard::MoeConfig::GUMBEL)
      c.fail("moe.router_noise_kind", "GUMBEL", "Gumbel draws pick a token's expert; they apply to TOKENS_CHOOSE only");
    c.range("moe.expert_groups", e.expert_groups(), 0, e.num_experts());
    if (e.expert_groups() > 0) {
      const int per_group = e.num_experts() / e.expert_groups();
      if (e.num_experts() % e.expert_groups() != 0)
        c.fail("moe.expert_groups", e.expert_groups(),
               "must divide moe.num_experts = " + std::to_string(e.num_experts()) + " (groups of consecutive experts)");
      if (e.router() == switchyard::MoeConfig::EXPERT_CHOICE)
        c.fail("moe.expert_groups", e.expert_groups(), "limits a token's choice; it applies to TOKENS_CHOOSE only");
      c.range("moe.groups_per_token", e.groups_per_token(), 1, e.expert_groups());
      if (e.top_k() > e.groups_per_token() * per_group)
        c.fail("moe.groups_per_token", e.groups_per_token(),
               "times " + std::to_string(per_group) + " experts per group leaves fewer than moe.top_k = " +
                   std::to_string(e.top_k()) + " experts to choose from");
      c.range("moe.group_score_experts", e.group_score_experts(), 0, std::min(8, per_group));
    } else if (e.groups_per_token() != 0) {
      c.fail("moe.groups_per_token", e.groups_per_token(), "set while moe.expert_groups is 0 (no group limit)");
    } else if (e.group_score_experts() != 0) {
      c.fail("moe.group_score_experts", e.group_score_experts(), "set while moe.expert_groups is 0 (no group limit)");
    }
  }

  const auto& at = cfg.attention();
  c.range("attention.last_n_layers", at.last_n_layers(), 0, m.n_layers());
  if (at.kind() == switchyard::AttentionConfig::ROUTED) {
    c.range("attention.num_routing_heads", at.num_routing_heads(), 0, m.n_heads());
    c.range("attention.num_clusters", at.num_clusters(), 0, m.seq_len());
    c.range("attention.window", at.window(), 1, 65536);
    c.range("attention.capacity_factor", at.capacity_factor(), 0.f, 64.f, true);
    c.range("attention.ema_decay", at.ema_decay(), 0.f, 1.f, false, true);
    c.range("attention.kmeans_iters", at.kmeans_iters(), 0, 100);
    c.range("attention.commitment_coef", at.commitment_coef(), 0.f, 100.f);
  }
  if (at.kind() == switchyard::AttentionConfig::BLOCK_TOPK) {
    c.range("attention.block_size", at.block_size(), 1, 65536);
    c.range("attention.topk_blocks", at.topk_blocks(), 0, 65536);
  }

#ifndef SY_WITH_CUDA
  if (cfg.backend() == switchyard::Config::CUDA)
    c.fail("backend", "CUDA", "this build has no CUDA backend (configure with SWITCHYARD_CUDA=ON); use AUTO or CPU");
#endif
  // Dense attention on CUDA (every block's, some blocks' where the sparse
  // kind covers only the last layers, and routed attention's local heads) is
  // the tiled flash kernels alone (ops/cuda/attention_kernels.cuh); said at
  // load, not at the first step's attention call. (Routed heads and block
  // top-k have kernels for any head size.)
  {
    const int64_t D = m.d_model() / m.n_heads();
    const bool dense = at.kind() == switchyard::AttentionConfig::DENSE ||
                       (at.last_n_layers() > 0 && at.last_n_layers() < m.n_layers()) ||
                       (at.kind() == switchyard::AttentionConfig::ROUTED && at.num_routing_heads() < m.n_heads());
    if (cfg.backend() == switchyard::Config::CUDA && dense && D != 16 && D != 32 && D != 64 && D != 128)
      c.fail("model.n_heads", m.n_heads(),
             "gives a head size d_model / n_heads = " + std::to_string(D) +
                 "; dense attention on CUDA has head sizes 16, 32, 64 and 128");
  }

  const auto& pl = cfg.parallel();
  c.range("parallel.expert_parallel", pl.expert_parallel(), 1, 65536);
  c.range("parallel.timeout_s", pl.timeout_s(), 0.f, 86400.f, true);
  c.range("parallel.grad_bucket_mb", pl.grad_bucket_mb(), 0.f, 4096.f, true);
  if (pl.backend() == switchyard::ParallelConfig::NCCL) {
    if (!comm::nccl_available())
      c.fail("parallel.backend", "NCCL", "not in this build (configure with the CUDA backend and NCCL); use AUTO or MPI");
    else if (cfg.backend() != switchyard::Config::CUDA)
      c.fail("parallel.backend", "NCCL", "needs backend: CUDA (NCCL moves device memory); use AUTO or MPI");
  }
  if (e.num_experts() > 0 && e.padded() && pl.expert_parallel() > 1)
    c.fail("moe.padded", "true", "the expert exchange sends counted rows; padded needs parallel.expert_parallel = 1");
  if (e.num_experts() > 0 && e.pad_to_largest() && pl.expert_parallel() > 1)
    c.fail("moe.pad_to_largest", "true",
           "the expert exchange sends counted rows; pad_to_largest needs parallel.expert_parallel = 1");
  // (dedup_dispatch on one rank is allowed and does nothing: scaling_sweep's
  // one-rank points share the sweep's settings)
  if (pl.dedup_dispatch() && e.num_experts() > 0 && e.top_k() == 1 &&
      e.router() == switchyard::MoeConfig::TOKENS_CHOOSE)
    c.fail("parallel.dedup_dispatch", "true", "with moe.top_k = 1 a token has one row to send anyway");
  if (e.num_experts() > 0 && e.num_experts() % pl.expert_parallel() != 0)
    c.fail("parallel.expert_parallel", pl.expert_parallel(),
           "must divide moe.num_experts = " + std::to_string(e.num_experts()));

  const auto& dp = cfg.depth();
  c.range("depth.every_n_layers", dp.every_n_layers(), 0, m.n_layers());
  c.range("depth.capacity", dp.capacity(), 0.f, 1.f, true);
  c.range("depth.tau", dp.tau(), 0.f, 1.f, true, true);
  c.range("depth.budget_coef", dp.budget_coef(), 0.f, 100.f);
  c.range("depth.budget", dp.budget(), 0.f, 1.f);

  const auto& bu = cfg.budget();
  if (bu.target() != 0) {
    c.range("budget.target", bu.target(), 0.f, 64.f, true);
    if (e.num_experts() == 0)
      c.fail("budget.target", bu.target(),
             "needs MoE layers (moe.num_experts > 0): their budget is what the target sets");
    const PlannedCost p = planned_cost(cfg);
    const double B = p.moe_budget(bu.target());
    if (B < 0) {
      std::ostringstream os;
      os.precision(3);
      os << "the parts outside the experts alone cost " << p.fixed() / p.dense << " of the dense model (head "
         << p.head / p.dense << ", attention " << p.attention / p.dense << ", dense FFNs and shared experts "
         << p.ffn / p.dense << ", routers " << p.routers / p.dense << ")";
      c.fail("budget.target", bu.target(), os.str());
    }
  }
}

MemoryEstimate estimate_memory(const Config& cfg, int world) {
  const auto& m = cfg.model();
  const auto& e = cfg.moe();
  const double C = m.d_model(), F = m.ffn_hidden(), T = m.seq_len(), V = m.vocab_size(), H = m.n_heads();
  const int L = m.n_layers();
  // (activations: one micro-batch's sequences at a time)
  const double B = std::max(1, cfg.train().batch() / std::max(1, world) / std::max(1, cfg.train().micro_batches())),
               N = B * T;
  const double E = e.num_experts();
  double He_sum = 0;  // hidden widths of all experts
  if (E > 0)
    for (int64_t h : expert_hidden_sizes(e, m.ffn_hidden())) He_sum += static_cast<double>(h);
  const double He = E > 0 ? He_sum / E : F;  // the mean width
  const double Hs = shared_expert_hidden(e, m.ffn_hidden());
  const double ep = std::max(1, cfg.parallel().expert_parallel());
  const bool learned = m.position() == switchyard::ModelConfig::LEARNED;
  const double mats = m.activation() == switchyard::ModelConfig::SWIGLU ? 3 : 2;  // FFN matrices
  double params = V * C + (learned ? T * C : 0) + (m.tie_embeddings() ? 0 : C * V) + V + 2 * C;  // embeddings, head, final norm
  double acts = N * (2 * V + 4 * C);                  // logits and probabilities; embeddings
  // Key and value width: C, or grouped-query attention's n_kv_heads heads.
  const double KV = C / H * kv_heads(m);
  // train.recompute: the recomputed blocks [0, n) keep their inputs, the
  // others their activations, to the end of the forward; a recomputed
  // block's own come back in its backward, after every later block has
  // dropped its (Block::backward): the larger of the two peaks.
  const int recomputed = !cfg.train().recompute() ? 0 : cfg.train().recompute_blocks() > 0 ? cfg.train().recompute_blocks() : L;
  double blocks = 0, largest = 0;
  for (int l = 0; l < L; ++l) {
    params += 4 * C + 2 * C * C + 2 * C * KV + 2 * C + 2 * KV;  // norms, qkv and output projections
    const double before = acts;
    acts += N * (6 * C + H);              // norm outputs, q, k, v, attention output; its LSE rows
    const bool moe = is_moe_layer(e, l);
    if (moe) {
      params += C * E + E / ep * (mats * C * He + He + C) + (e.shared_expert() ? mats * C * Hs + Hs + C : 0);
      // (expert rows: k N cf, or the experts' floors where those are more)
      const double rows = std::max(e.top_k() * e.capacity_factor() * N, E * e.min_capacity());
      acts += N * (2 * E + (e.shared_expert() ? mats * Hs : 0)) + rows * (2 * C + mats * He);
    } else {
      params += mats * C * F + F + C;
      acts += N * mats * F;
    }
    if (l < recomputed) {
      blocks += acts - before;
      largest = std::max(largest, acts - before);
    }
  }
  if (recomputed > 0) {
    const double kept = acts - blocks;  // (with what no block holds: logits, embeddings)
    const double outside = N * (2 * V + 4 * C);
    acts = std::max(kept, outside + largest) + recomputed * N * C;
  }
  MemoryEstimate est;
  est.parameters = 16 * params;
  est.activations = 4 * acts;
  return est;
}

double physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * page : 0;
}

namespace {
std::string bytes_str(double b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (b >= 1024 && u < 5) b /= 1024, ++u;
  char s[32];
  std::snprintf(s, sizeof s, "%.1f %s", b, unit[u]);
  return s;
}
}  // namespace

int ranks_sharing_gpu(int gpu, int gpus, int node_ranks) {
  return node_ranks / gpus + (gpu < node_ranks % gpus ? 1 : 0);
}

MemoryPool training_memory(const Config& cfg, int node_rank, int node_ranks) {
  MemoryPool p;
  if (cfg.backend() != switchyard::Config::CUDA) {
    p.bytes = physical_memory_bytes();
    p.ranks = std::max(1, node_ranks);
    return p;
  }
  const int gpu = node_rank_gpu(node_rank);
  if (gpu < 0) return p;  // bytes 0: the trainer says no GPU is visible
  p.bytes = cuda_device_memory_bytes(gpu);
  p.ranks = ranks_sharing_gpu(gpu, cuda_device_count(), node_ranks);
  p.holder = "GPU " + std::to_string(gpu);
  p.kind = "memory";
  return p;
}

void check_memory(const Config& cfg, int world, const MemoryPool& pool, const std::string& source) {
  if (pool.bytes <= 0) return;
  const MemoryEstimate est = estimate_memory(cfg, world);
  const double need = est.total() * std::max(1, pool.ranks);
  if (need <= pool.bytes) return;
  const auto& m = cfg.model();
  std::ostringstream os;
  os << source << ": model.seq_len = " << m.seq_len() << " with train.batch = " << cfg.train().batch()
     << ": training needs about " << bytes_str(need);
  if (pool.ranks > 1) os << " (" << pool.ranks << " ranks share " << pool.holder << ", " << bytes_str(est.total()) << " each)";
  os << " (activations " << bytes_str(est.activations) << ", parameters with gradients and AdamW state "
     << bytes_str(est.parameters) << ") but " << pool.holder << " has " << bytes_str(pool.bytes) << " of " << pool.kind
     << "; lower model.seq_len or train.batch, or raise train.micro_batches"
     << (cfg.train().recompute() ? "" : " (or set train.recompute)");
  throw ConfigError(os.str());
}

namespace {

void canonical_fields(const pb::Message& m, const std::string& prefix, std::string& out) {
  const pb::Descriptor* d = m.GetDescriptor();
  const pb::Reflection* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    const std::string path = prefix + f->name();
    if (!f->is_repeated() && f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      canonical_fields(r->GetMessage(m, f), path + ".", out);  // unset: its defaults
      continue;
    }
    std::string v;
    out += path + " = ";
    if (f->is_repeated()) {
      out += "[";
      for (int k = 0; k < r->FieldSize(m, f); ++k) {
        pb::TextFormat::PrintFieldValueToString(m, f, k, &v);
        out += (k ? ", " : "") + v;
      }
      out += "]";
    } else {
      pb::TextFormat::PrintFieldValueToString(m, f, -1, &v);  // the default when unset
      out += v;
    }
    out += "\n";
  }
}

}  // namespace

std::string canonical_config_text(const Config& cfg) {
  std::string out;
  canonical_fields(cfg, "", out);
  return out;
}

FieldDifference first_difference(const std::string& canonical_a, const std::string& canonical_b) {
  std::istringstream a(canonical_a), b(canonical_b);
  std::string la, lb;
  auto split = [](const std::string& line, std::string& field, std::string& value) {
    auto eq = line.find(" = ");
    field = line.substr(0, eq);
    value = eq == std::string::npos ? "" : line.substr(eq + 3);
  };
  while (true) {
    const bool ga = static_cast<bool>(std::getline(a, la)), gb = static_cast<bool>(std::getline(b, lb));
    if (!ga && !gb) return {};
    if (ga && gb && la == lb) continue;
    FieldDifference d;
    std::string fb;
    if (ga) split(la, d.field, d.a);
    if (gb) split(lb, fb, d.b);
    if (!ga) d.field = fb, d.a = "(no such field)";
    if (!gb) d.b = "(no such field)";
    if (ga && gb && d.field != fb) d.b = "(no such field; next field " + fb + ")";  // different schemas
    return d;
  }
}

void fill_defaults(pb::Message& msg) {
  const pb::Descriptor* d = msg.GetDescriptor();
  const pb::Reflection* r = msg.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) continue;
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      fill_defaults(*r->MutableMessage(&msg, f));
      continue;
    }
    if (r->HasField(msg, f)) continue;
    switch (f->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_INT32: r->SetInt32(&msg, f, f->default_value_int32()); break;
      case pb::FieldDescriptor::CPPTYPE_INT64: r->SetInt64(&msg, f, f->default_value_int64()); break;
      case pb::FieldDescriptor::CPPTYPE_UINT32: r->SetUInt32(&msg, f, f->default_value_uint32()); break;
      case pb::FieldDescriptor::CPPTYPE_UINT64: r->SetUInt64(&msg, f, f->default_value_uint64()); break;
      case pb::FieldDescriptor::CPPTYPE_FLOAT: r->SetFloat(&msg, f, f->default_value_float()); break;
      case pb::FieldDescriptor::CPPTYPE_DOUBLE: r->SetDouble(&msg, f, f->default_value_double()); break;
      case pb::FieldDescriptor::CPPTYPE_BOOL: r->SetBool(&msg, f, f->default_value_bool()); break;
      case pb::FieldDescriptor::CPPTYPE_ENUM: r->SetEnum(&msg, f, f->default_value_enum()); break;
      case pb::FieldDescriptor::CPPTYPE_STRING: r->SetString(&msg, f, f->default_value_string()); break;
      case pb::FieldDescriptor::CPPTYPE_MESSAGE: break;
    }
  }
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  const std::string kind = not_a_regular_file(path);
  if (!kind.empty() && kind != "no such file")
    throw ConfigError(path + ": " + kind + ", not a config file (--config takes a text-format .pbtxt file)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path + ": cannot open config file" + (kind.empty() ? "" : ": " + kind));
  std::stringstream ss;
  ss << in.rdbuf();
  Config cfg = parse_config(ss.str(), path);
  for (const auto& o : overrides) apply_override(cfg, o);
  validate_config(cfg, overrides.empty() ? path : path + " (with --set overrides)");
  return cfg;
}

}  // namespace sy
