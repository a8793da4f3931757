#include "runtime/config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "core/file.h"

namespace sy {

namespace pb = google::protobuf;

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

namespace {

std::string field_names(const pb::Descriptor* d) {
  std::string s;
  for (int i = 0; i < d->field_count(); ++i) s += (i ? ", " : "") + d->field(i)->name();
  return s;
}

// The first word of line `line` (0-based) of text: there, the field a
// text-format line sets.
std::string first_word_of_line(const std::string& text, int line) {
  std::istringstream in(text);
  std::string l;
  for (int i = 0; i <= line && std::getline(in, l); ++i) {
  }
  auto b = l.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  auto e = l.find_first_of(" \t:{", b);
  return l.substr(b, e == std::string::npos ? std::string::npos : e - b);
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
    // Protobuf names the token it found; at the end of the text there is none.
    const std::string got = "got: ";
    if (message.size() >= got.size() && message.compare(message.size() - got.size(), got.size(), got) == 0)
      os << "the end of the file (a '}' missing?)";
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
  std::string field_on_line(int line) const { return first_word_of_line(text_, line); }
  std::string source_, text_, first_;
};

// The first integer literal of text-format `text` that is not plain
// decimal, with its line (0-based); an empty text where none. Protobuf's
// text format reads a leading 0 as octal (064 is 52) and 0x as hex: a config
// value written so is almost surely meant in decimal, and read silently it
// would change the model trained, so it is refused.
struct NonDecimal {
  std::string text;
  int line = 0;
};
NonDecimal first_non_decimal_integer(const std::string& text) {
  struct Quiet : pb::io::ErrorCollector {
    void AddError(int, pb::io::ColumnNumber, const std::string&) override {}
  } quiet;
  pb::io::ArrayInputStream in(text.data(), static_cast<int>(text.size()));
  pb::io::Tokenizer tok(&in, &quiet);
  tok.set_comment_style(pb::io::Tokenizer::SH_COMMENT_STYLE);  // (as TextFormat's parser sets it)
  tok.set_require_space_after_number(false);
  tok.set_allow_f_after_float(true);
  while (tok.Next())
    if (tok.current().type == pb::io::Tokenizer::TYPE_INTEGER && tok.current().text.size() > 1 &&
        tok.current().text[0] == '0')
      return {tok.current().text, tok.current().line};
  return {};
}

std::string non_decimal_why(const std::string& literal) {
  return "'" + printable(literal, 40) + "': protobuf's text format reads an integer with a leading 0 as octal (" +
         "and 0x as hex); write it in decimal";
}

}  // namespace

void parse_text_proto(const std::string& text, const std::string& source, pb::Message& msg) {
  pb::TextFormat::Parser parser;
  FirstError errors(source, text);
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &msg))
    throw ConfigError(errors.first().empty() ? source + ": cannot parse (text-format protobuf expected)"
                                             : errors.first());
  const NonDecimal odd = first_non_decimal_integer(text);
  if (!odd.text.empty()) {
    const std::string field = first_word_of_line(text, odd.line);
    throw ConfigError(source + ":" + std::to_string(odd.line + 1) + ": " +
                      (field.empty() ? "" : "field '" + printable(field, 40) + "': ") + non_decimal_why(odd.text));
  }
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
    } else if (!first_non_decimal_integer(item).text.empty()) {
      throw ConfigError(where + ": element " + std::to_string(i) + " of " + walked + ": " + non_decimal_why(item));
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
      if (!first_non_decimal_integer(value).text.empty())  // (an enum's name is no integer; its number may be)
        throw ConfigError(where + ": " + walked + ": " + non_decimal_why(value));
      pb::LogSilencer quiet;  // our message replaces protobuf's stderr log
      if (!pb::TextFormat::ParseFieldValueFromString(value, f, msg)) {
        std::string allowed;
        if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM)
          for (int i = 0; i < f->enum_type()->value_count(); ++i)
            allowed += (i ? ", " : " (allowed: ") + f->enum_type()->value(i)->name();
        if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_BOOL) allowed = " (allowed: true, false";
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

bool is_moe_layer(const switchyard::MoeConfig& moe, int layer) {
  return moe.num_experts() > 0 && layer >= moe.first_dense_layers() &&
         (layer + 1) % std::max(1, moe.every_n_layers()) == 0;
}

std::string untrained_router_note(const Config& cfg) {
  const auto& e = cfg.moe();
  if (e.num_experts() == 0 || e.top_k() != 1 || !e.renormalize() ||
      e.router() != switchyard::MoeConfig::TOKENS_CHOOSE)
    return "";
  return "moe.renormalize at moe.top_k 1: every expert weight is p / p = 1, so the loss trains no router (only "
         "the auxiliary losses reach it); moe.renormalize=false weights the expert's output by p (Switch)";
}

bool is_depth_routed(const switchyard::DepthConfig& depth, int layer) {
  return depth.every_n_layers() > 0 && (layer + 1) % depth.every_n_layers() == 0;
}

bool is_sparse_attention_layer(const switchyard::AttentionConfig& at, int layer, int n_layers) {
  return at.kind() != switchyard::AttentionConfig::DENSE &&
         (at.last_n_layers() == 0 || layer >= n_layers - at.last_n_layers());
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
  Config cfg = read_config(path);
  if (overrides.empty()) {
    validate_config(cfg, path);
    return cfg;
  }
  const Config file = cfg;
  for (const auto& o : overrides) apply_override(cfg, o);
  const std::string with = path + " (with --set overrides)";
  try {
    validate_config(cfg, with);
  } catch (const ConfigError& e) {
    // The same refusal of the file alone: the file is what is wrong, the
    // overrides are not (the line names the file only).
    const std::string why = std::string(e.what()).substr(with.size());
    try {
      validate_config(file, path);
    } catch (const ConfigError& f) {
      if (std::string(f.what()).substr(path.size()) == why) throw;
    }
    throw;
  }
  return cfg;
}

Config read_config(const std::string& path) {
  const std::string kind = not_a_regular_file(path);
  if (!kind.empty() && kind != "no such file")
    throw ConfigError(path + ": " + kind + ", not a config file (--config takes a text-format .pbtxt file)");
  return parse_config(read_whole_file(path, "config file"), path);
}

}  // namespace sy
