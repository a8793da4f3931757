// validate_config (runtime/config.h): every field's range and the
// combinations the runtime refuses, one line naming the first that fails.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <sstream>

#include "comm/nccl_communicator.h"
#include "core/error.h"
#include "ops/routing.h"
#include "runtime/config.h"
#include "runtime/cost_model.h"
#include "runtime/moe_layer.h"

namespace sy {

namespace pb = google::protobuf;

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

// Whether anything holds a MoE layer to moe.budget: the budget loss or a
// hard budget (a SOFT budget without the loss is only reported).
bool moe_budget_applies(const switchyard::MoeConfig& e) {
  return e.budget_coef() > 0 || e.budget_mode() != switchyard::MoeConfig::SOFT;
}
constexpr const char* kMoeBudgetUnheld =
    "nothing holds the router to a budget with moe.budget_mode SOFT and moe.budget_coef 0: set moe.budget_coef > 0 (the "
    "budget loss) or moe.budget_mode HARD or HARD_CAUSAL, or leave it unset";

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

// Routed attention's routing heads read these (its local heads the window).
constexpr std::initializer_list<const char*> kClusterFields = {
    "num_clusters", "assignment", "dropless", "capacity_factor", "ema_decay", "kmeans_iters", "share_centroids",
    "commitment_coef"};

// Fields of `msg` (named without the prefix) set to other than their
// default where the runtime reads none of them: refused, "set while <why>".
// By value, not by presence: a checkpoint's config spells out every default,
// so a field present at its default is a field left alone. The callers
// refuse only where the choice that leaves them unread was not made (its
// field absent: a window set without attention.kind, say), not where a
// config or --set chose it (--set attention.kind=DENSE as a routed config's
// dense baseline keeps the routed fields it no longer reads).
void refuse_unread(const pb::Message& msg, const std::string& prefix, std::initializer_list<const char*> fields,
                   const std::string& why, Checker& c) {
  const pb::Descriptor* d = msg.GetDescriptor();
  const pb::Reflection* r = msg.GetReflection();
  for (const char* name : fields) {
    const pb::FieldDescriptor* f = d->FindFieldByName(name);
    SY_CHECK(f && !f->is_repeated(), "refuse_unread: no single field " << prefix << name);
    bool set = false;
    switch (f->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_INT32: set = r->GetInt32(msg, f) != f->default_value_int32(); break;
      case pb::FieldDescriptor::CPPTYPE_INT64: set = r->GetInt64(msg, f) != f->default_value_int64(); break;
      case pb::FieldDescriptor::CPPTYPE_UINT32: set = r->GetUInt32(msg, f) != f->default_value_uint32(); break;
      case pb::FieldDescriptor::CPPTYPE_UINT64: set = r->GetUInt64(msg, f) != f->default_value_uint64(); break;
      case pb::FieldDescriptor::CPPTYPE_FLOAT: set = r->GetFloat(msg, f) != f->default_value_float(); break;
      case pb::FieldDescriptor::CPPTYPE_DOUBLE: set = r->GetDouble(msg, f) != f->default_value_double(); break;
      case pb::FieldDescriptor::CPPTYPE_BOOL: set = r->GetBool(msg, f) != f->default_value_bool(); break;
      case pb::FieldDescriptor::CPPTYPE_ENUM: set = r->GetEnumValue(msg, f) != f->default_value_enum()->number(); break;
      case pb::FieldDescriptor::CPPTYPE_STRING: set = r->GetString(msg, f) != f->default_value_string(); break;
      default: SY_CHECK(false, "refuse_unread: " << prefix << name << " is a message");
    }
    if (!set) continue;
    std::string value;
    pb::TextFormat::PrintFieldValueToString(msg, f, -1, &value);
    c.fail((prefix + name).c_str(), value, "set while " + why + ", which does not read it");
  }
}

}  // namespace

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
  c.range("model.ffn_hidden", m.ffn_hidden(), 1, 65536);
  c.range("model.seq_len", m.seq_len(), 2, 65536);
  c.range("model.init_std", m.init_std(), 0.f, 1.f, true);
  c.range("model.rope_base", m.rope_base(), 1.f, 1e9f, true);
  if (!m.has_position())
    refuse_unread(m, "model.", {"rope_base"}, "model.position is LEARNED (unset: the default)", c);
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
  if (t.warmup_steps() < 0 || t.warmup_steps() > t.steps())  // (a shortened run meets this first: say which)
    c.fail("train.warmup_steps", t.warmup_steps(),
           "must be in [0, train.steps = " + std::to_string(t.steps()) +
               "] (a shorter run needs fewer: lower train.warmup_steps with it, e.g. --set train.warmup_steps=0)");
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
  c.range("train.upcycle_reinit", t.upcycle_reinit(), 0.f, 1.f);

  const auto& d = cfg.data();
  c.range("data.val_fraction", d.val_fraction(), 0.f, 0.5f, true);
  if (d.source() != switchyard::DataConfig::TOKEN_FILES) {
    const char* src = d.source() == switchyard::DataConfig::TEXT_FILE ? "TEXT_FILE" : "SYNTHETIC";
    const std::string why = std::string("set while data.source is ") + src + ", which does not read it";
    if (!d.token_files().empty()) c.fail("data.token_files", "\"" + d.token_files() + "\"", why);
    if (!d.val_token_files().empty()) c.fail("data.val_token_files", "\"" + d.val_token_files() + "\"", why);
    if (!d.tokenizer().empty()) c.fail("data.tokenizer", "\"" + d.tokenizer() + "\"", why + " (byte-level data needs none)");
    if (d.bos_id() != -1) c.fail("data.bos_id", std::to_string(d.bos_id()), why + " (byte-level data has no such token)");
    if (d.eos_id() != -1) c.fail("data.eos_id", std::to_string(d.eos_id()), why + " (byte-level data has no such token)");
  } else {
    c.range("data.bos_id", d.bos_id(), -1, cfg.model().vocab_size() - 1);
    c.range("data.eos_id", d.eos_id(), -1, cfg.model().vocab_size() - 1);
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
    // (By value, not presence: a checkpoint's config has every field set.
    // The default 1, the dense FFN's cost, is no constraint to speak of.)
    if (e.budget() != 1.f && !moe_budget_applies(e)) c.fail("moe.budget", e.budget(), kMoeBudgetUnheld);
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
    // Expert choice: each expert takes its top C tokens; nothing that orders
    // or counts a token's own choices applies.
    const bool choice = e.router() == switchyard::MoeConfig::EXPERT_CHOICE;
    // Expert choice has no per-token count: its experts take capacity_factor
    // * tokens assignments in all, so capacity_factor is the mean per token
    // (Zhou et al. 2022's c); a top_k there would be silently ignored.
    if (choice && e.top_k() != 1)
      c.fail("moe.top_k", e.top_k(),
             "expert choice has no count per token (each expert takes C = ceil(moe.capacity_factor * tokens / "
             "moe.num_experts) tokens, so moe.capacity_factor is the mean experts a token): 1 with moe.router "
             "EXPERT_CHOICE (for 2 a token on average, moe.capacity_factor 2)");
    // An expert's top-C over the tokens is the same with a constant added to
    // its column: the balancing bias would move and change nothing.
    if (choice && e.bias_balance_rate() > 0)
      c.fail("moe.bias_balance_rate", e.bias_balance_rate(),
             "an expert's bias adds the same to every token's score for it, so its top tokens stay its top tokens: 0 "
             "with moe.router EXPERT_CHOICE (every expert is exactly full anyway)");
    if (choice && e.renormalize())
      c.fail("moe.renormalize", "true", "renormalizes a token's k weights; expert choice has no k a token: false with "
                                        "moe.router EXPERT_CHOICE");
    if (choice && e.capacity_factor_eval() != 2.f)
      c.fail("moe.capacity_factor_eval", e.capacity_factor_eval(),
             "expert choice evaluates at moe.capacity_factor (its mean experts a token: another factor is another "
             "function); leave it unset with moe.router EXPERT_CHOICE");
    // Every expert takes exactly its C tokens, so the cost per token is
    // sum_g C c_g / tokens whatever the scores: a budget loss would push on a
    // cost nothing can move.
    if (choice && e.budget_coef() > 0)
      c.fail("moe.budget_coef", e.budget_coef(),
             "expert choice fills every expert to capacity, so its cost is set by moe.capacity_factor and no loss can "
             "lower it: 0 with moe.router EXPERT_CHOICE (moe.budget_mode HARD drops assignments over a budget)");
    if (choice && e.dropless())
      c.fail("moe.dropless", "true", "expert choice fills every expert exactly; dropless applies to TOKENS_CHOOSE only");
    if (choice && e.slot_priority() != switchyard::MoeConfig::POSITION)
      c.fail("moe.slot_priority", switchyard::MoeConfig::SlotPriority_Name(e.slot_priority()),
             "orders a tokens-choose router's slots; expert choice fills its own");
    if (choice && e.router_noise_kind() == switchyard::MoeConfig::GUMBEL)
      c.fail("moe.router_noise_kind", "GUMBEL", "Gumbel draws pick a token's expert; they apply to TOKENS_CHOOSE only");
    // Hash routing: one expert a token, named by its id; nothing that moves
    // a learned router's choice applies.
    const bool hash = e.router() == switchyard::MoeConfig::HASH;
    if (hash && e.top_k() != 1)
      c.fail("moe.top_k", e.top_k(), "hash routing sends a token to one expert: 1 with moe.router HASH");
    if (hash && e.load_balance_coef() > 0)
      c.fail("moe.load_balance_coef", e.load_balance_coef(),
             "the loss cannot move a hashed choice (it would only scale down busy experts' weights): 0 with moe.router "
             "HASH");
    if (hash && e.budget_coef() > 0)
      c.fail("moe.budget_coef", e.budget_coef(),
             "the budget loss cannot move a hashed choice either: 0 with moe.router HASH");
    if (hash && e.bias_balance_rate() > 0)
      c.fail("moe.bias_balance_rate", e.bias_balance_rate(), "a bias cannot move a hashed choice: 0 with moe.router HASH");
    if (hash && e.sinkhorn_iters() > 0)
      c.fail("moe.sinkhorn_iters", e.sinkhorn_iters(), "offsets cannot move a hashed choice: 0 with moe.router HASH");
    if (hash && e.sinkhorn_at_eval())
      c.fail("moe.sinkhorn_at_eval", "true", "offsets cannot move a hashed choice: false with moe.router HASH");
    if (hash && e.router_noise_kind() == switchyard::MoeConfig::GUMBEL)
      c.fail("moe.router_noise_kind", "GUMBEL", "Gumbel draws pick a learned router's expert; not with moe.router HASH");
    if (!e.has_router_noise() && e.router_noise_kind() == switchyard::MoeConfig::GUMBEL)
      c.fail("moe.router_noise_kind", "GUMBEL",
             "draws no noise while moe.router_noise is 0 (unset): set moe.router_noise (1 for the standard Gumbel "
             "scale)");
    if (hash && e.expert_groups() > 0)
      c.fail("moe.expert_groups", e.expert_groups(), "limits a learned router's choice; 0 with moe.router HASH");
    if (hash && cfg.depth().every_n_layers() > 0)
      c.fail("depth.every_n_layers", cfg.depth().every_n_layers(),
             "hands the experts gathered rows, which hash routing cannot name by token id: 0 with moe.router HASH");
    const bool balanced = e.hash_assignment() == switchyard::MoeConfig::BALANCED;
    if (balanced && !hash)
      c.fail("moe.hash_assignment", "BALANCED", "maps token ids for hash routing: with moe.router HASH only");
    if (e.hash_table_size() > 0 && !balanced)
      c.fail("moe.hash_table", std::to_string(e.hash_table_size()) + " entries",
             "BALANCED's map: with moe.hash_assignment BALANCED only");
    if (e.hash_table_size() > 0 && e.hash_table_size() != cfg.model().vocab_size())
      c.fail("moe.hash_table", std::to_string(e.hash_table_size()) + " entries",
             "one expert a token id: model.vocab_size = " + std::to_string(cfg.model().vocab_size()) + " entries");
    for (int i = 0; i < e.hash_table_size(); ++i)
      if (e.hash_table(i) < 0 || e.hash_table(i) >= e.num_experts())
        c.fail(("moe.hash_table[" + std::to_string(i) + "]").c_str(), e.hash_table(i),
               "an expert: in [0, moe.num_experts = " + std::to_string(e.num_experts()) + ")");
    c.range("moe.sinkhorn_iters", e.sinkhorn_iters(), 0, 1000);
    if (e.sinkhorn_iters() > 0 && e.router() == switchyard::MoeConfig::EXPERT_CHOICE)
      c.fail("moe.sinkhorn_iters", e.sinkhorn_iters(),
             "balances the tokens' choice; expert choice is balanced by construction (TOKENS_CHOOSE only)");
    if (e.sinkhorn_iters() > 0 && e.bias_balance_rate() > 0)
      c.fail("moe.sinkhorn_iters", e.sinkhorn_iters(),
             [&] {
               std::ostringstream os;
               os << "Sinkhorn's offsets and moe.bias_balance_rate = " << e.bias_balance_rate()
                  << " both offset the selection to balance it: set one, the other 0";
               return os.str();
             }());
    c.range("moe.sinkhorn_eval_decay", e.sinkhorn_eval_decay(), 0.f, 1.f, false, true);
    if (e.sinkhorn_at_eval() && e.sinkhorn_iters() == 0)
      c.fail("moe.sinkhorn_at_eval", "true", "keeps a mean of the Sinkhorn offsets; set moe.sinkhorn_iters");
    if (e.sinkhorn_iters() > 0 && e.expert_groups() > 0)
      c.fail("moe.sinkhorn_iters", e.sinkhorn_iters(),
             "selects by logits plus offsets, where moe.expert_groups ranks groups by their probabilities: set one");
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
    // (The loss pulls a query toward its one nearest centroid; under BALANCED
    // a query sits in any number of clusters, and the layer computes none.)
    if (at.commitment_coef() > 0 && at.assignment() == switchyard::AttentionConfig::BALANCED)
      c.fail("attention.commitment_coef", at.commitment_coef(),
             "applies to attention.assignment CAUSAL (each query's nearest centroid); BALANCED computes no commitment "
             "loss: 0 there");
  }
  if (at.kind() == switchyard::AttentionConfig::BLOCK_TOPK) {
    c.range("attention.block_size", at.block_size(), 1, 65536);
    c.range("attention.topk_blocks", at.topk_blocks(), 0, 65536);
  }
  // What each kind reads (runtime/sparse_self_attention.cc): a field of
  // another kind would be silently ignored (a window set on dense attention
  // trained dense attention).
  if (!at.has_kind()) {
    const auto kind = at.kind();
    const std::string kind_name = "attention.kind is " + switchyard::AttentionConfig::Kind_Name(kind) +
                                  " (unset: the default)";
    if (kind != switchyard::AttentionConfig::ROUTED) {
      refuse_unread(at, "attention.", {"num_routing_heads", "window"}, kind_name, c);
      refuse_unread(at, "attention.", kClusterFields, kind_name, c);
    }
    if (kind != switchyard::AttentionConfig::BLOCK_TOPK)
      refuse_unread(at, "attention.", {"block_size", "topk_blocks"}, kind_name, c);
    if (kind == switchyard::AttentionConfig::DENSE) refuse_unread(at, "attention.", {"last_n_layers"}, kind_name, c);
  }
  if (at.kind() == switchyard::AttentionConfig::ROUTED && !at.has_num_routing_heads())
    refuse_unread(at, "attention.", kClusterFields,
                  "attention.num_routing_heads is 0 (unset: every head local, no clusters)", c);

#ifndef SY_WITH_CUDA
  if (cfg.backend() == switchyard::Config::CUDA)
    c.fail("backend", "CUDA", "this build has no CUDA backend (configure with SWITCHYARD_CUDA=ON); use AUTO or CPU");
#endif
  // Dense attention on CUDA (every block's, some blocks' where the sparse
  // kind covers only the last layers, and routed attention's local heads) is
  // the tiled flash kernels alone (ops/cuda/attention_kernels.cuh); said at
  // load, not at the first step's attention call. Routed heads and block
  // top-k have kernels for head sizes up to 512 (a warp a row past the
  // tiled sizes: ops/cuda/routed_attention_rows.h).
  {
    const int64_t D = m.d_model() / m.n_heads();
    const bool dense = at.kind() == switchyard::AttentionConfig::DENSE ||
                       (at.last_n_layers() > 0 && at.last_n_layers() < m.n_layers()) ||
                       (at.kind() == switchyard::AttentionConfig::ROUTED && at.num_routing_heads() < m.n_heads());
    if (cfg.backend() == switchyard::Config::CUDA && dense && D != 16 && D != 32 && D != 64 && D != 128)
      c.fail("model.n_heads", m.n_heads(),
             "gives a head size d_model / n_heads = " + std::to_string(D) +
                 "; dense attention on CUDA has head sizes 16, 32, 64 and 128");
    const bool sparse = (at.kind() == switchyard::AttentionConfig::ROUTED && at.num_routing_heads() > 0) ||
                        at.kind() == switchyard::AttentionConfig::BLOCK_TOPK;
    if (cfg.backend() == switchyard::Config::CUDA && sparse && D > 512)
      c.fail("model.n_heads", m.n_heads(),
             "gives a head size d_model / n_heads = " + std::to_string(D) + "; " +
                 switchyard::AttentionConfig::Kind_Name(at.kind()) + " attention on CUDA has head sizes up to 512");
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
      e.router() != switchyard::MoeConfig::EXPERT_CHOICE)
    c.fail("parallel.dedup_dispatch", "true", "with moe.top_k = 1 a token has one row to send anyway");
  if (e.num_experts() > 0 && e.num_experts() % pl.expert_parallel() != 0)
    c.fail("parallel.expert_parallel", pl.expert_parallel(),
           "must divide moe.num_experts = " + std::to_string(e.num_experts()));
  if (pl.reduce_scatter_grads() && !pl.shard_optimizer())
    c.fail("parallel.reduce_scatter_grads", "true",
           "needs parallel.shard_optimizer (a rank receives the gradient sums of the moments it keeps)");

  const auto& dp = cfg.depth();
  c.range("depth.every_n_layers", dp.every_n_layers(), 0, m.n_layers());
  if (!dp.has_every_n_layers())
    refuse_unread(dp, "depth.", {"capacity", "weight", "predictor_at_eval", "tau", "budget_coef", "budget"},
                  "depth.every_n_layers is 0 (unset: no depth-routed block)", c);
  c.range("depth.capacity", dp.capacity(), 0.f, 1.f, true);
  c.range("depth.tau", dp.tau(), 0.f, 1.f, true, true);
  c.range("depth.budget_coef", dp.budget_coef(), 0.f, 100.f);
  c.range("depth.budget", dp.budget(), 0.f, 1.f);
  // A depth-routed block's MoE layer routes the rows its block kept,
  // sequence after sequence, ceil(depth.capacity x seq_len) of each in
  // training: balance groups must tile a sequence's, or a group spans two
  // sequences (and a forward of an odd count of them fails mid-run).
  if (dp.every_n_layers() > 0 && e.num_experts() > 0 && e.load_balance_tokens() > 0) {
    bool routed_moe = false;
    for (int l = 0; l < m.n_layers(); ++l) routed_moe = routed_moe || (is_moe_layer(e, l) && is_depth_routed(dp, l));
    const int64_t kept = ops::ceil_capacity(dp.capacity(), static_cast<double>(m.seq_len()));
    if (routed_moe && kept % e.load_balance_tokens() != 0)
      c.fail("moe.load_balance_tokens", e.load_balance_tokens(),
             "must divide the " + std::to_string(kept) +
                 " tokens a depth-routed block keeps of each sequence (ceil(depth.capacity x model.seq_len)), "
                 "whose MoE layer the groups would otherwise span sequences in");
  }
  if (dp.budget() != 1.f && dp.every_n_layers() > 0 && dp.budget_coef() == 0)  // (by value: see moe.budget)
    c.fail("depth.budget", dp.budget(), "only the budget loss reads it, and depth.budget_coef is 0: set depth.budget_coef > 0");

  const auto& bu = cfg.budget();
  if (bu.target() != 0) {
    c.range("budget.target", bu.target(), 0.f, 64.f, true);
    if (e.num_experts() == 0)
      c.fail("budget.target", bu.target(),
             "needs MoE layers (moe.num_experts > 0): their budget is what the target sets");
    if (!moe_budget_applies(e))
      c.fail("budget.target", bu.target(), std::string("sets the MoE layers' moe.budget, but ") + kMoeBudgetUnheld);
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
    // The plan counts FLOPs; costs given in other units would make its B
    // buy another share of the model than the target names.
    if (e.expert_cost_size() > 0)
      c.fail("budget.target", bu.target(),
             "plans the experts' share in FLOPs, and moe.expert_cost replaces their FLOP costs with its own: set "
             "moe.budget with moe.expert_cost, or leave moe.expert_cost unset");
  }
  // A soft budget no routing can meet: every token takes top_k distinct
  // experts, so none spends less than the k cheapest experts' costs (only
  // capacity drops, which the loss would then learn to cause, go lower).
  if (e.num_experts() > 0 && e.router() == switchyard::MoeConfig::TOKENS_CHOOSE &&
      e.budget_mode() == switchyard::MoeConfig::SOFT && e.budget_coef() > 0 && e.top_k() <= e.num_experts()) {
    std::vector<float> cost = expert_costs(e, cfg.model().ffn_hidden());
    if (static_cast<int64_t>(cost.size()) == e.num_experts()) {
      std::partial_sort(cost.begin(), cost.begin() + e.top_k(), cost.end());
      double least = 0;
      for (int k = 0; k < e.top_k(); ++k) least += cost[k];
      const bool target = bu.target() != 0;
      const double B = target ? effective_moe_budget(cfg) : e.budget();
      if (B >= 0 && B < least) {
        std::ostringstream os;
        os.precision(4);
        if (target) os << "gives the MoE layers moe.budget " << B << ", ";
        os << "below the least a token's moe.top_k = " << e.top_k() << " choices can cost (" << least
           << " of the dense FFN, its k cheapest experts): under moe.budget_mode SOFT no routing meets it and "
              "the budget loss never falls; raise it, or set moe.budget_mode HARD (drops assignments to fit)";
        if (target)
          c.fail("budget.target", bu.target(), os.str());
        else
          c.fail("moe.budget", e.budget(), os.str());
      }
    }
  }
}


}  // namespace sy
