// config_fuzz_dict: prints a libFuzzer dictionary for config_fuzz from the
// compiled schema (configs/switchyard.proto), so it never falls behind it:
// every field name, every --set path ("moe.num_experts="), every enum value,
// and the text format's punctuation.
//
//   config_fuzz_dict > config.dict && config_fuzz -dict=config.dict ...
#include <google/protobuf/descriptor.h>

#include <iostream>
#include <set>
#include <string>

#include "runtime/config.h"

namespace {

namespace pb = google::protobuf;

void walk(const pb::Descriptor* d, const std::string& prefix, std::set<std::string>& out) {
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    out.insert(f->name());
    out.insert(f->name() + ": ");
    const std::string path = prefix + f->name();
    if (f->message_type()) {
      out.insert(f->name() + " {");
      walk(f->message_type(), path + ".", out);
    } else {
      out.insert(path + "=");
    }
    if (const pb::EnumDescriptor* e = f->enum_type())
      for (int v = 0; v < e->value_count(); ++v) out.insert(e->value(v)->name());
  }
}

}  // namespace

int main() {
  std::set<std::string> words = {"{", "}", ":", "\n%%\n", "\"", "#", "true", "false", "inf", "-inf", "nan", "0x",
                                 "1e9", "-1", "2147483648", "9223372036854775808"};
  walk(sy::Config::descriptor(), "", words);
  int n = 0;
  for (const std::string& w : words) {
    std::cout << "kw" << n++ << "=\"";
    for (char c : w) {
      if (c == '"' || c == '\\') std::cout << '\\' << c;
      else if (c == '\n') std::cout << "\\x0A";
      else std::cout << c;
    }
    std::cout << "\"\n";
  }
  return 0;
}
