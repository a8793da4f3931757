#include <gtest/gtest.h>

#include <algorithm>

#include "runtime/data.h"
#include "runtime/training_data.h"
#include "core/error.h"

namespace sy {
namespace {

std::string text_of(const Split& s) {
  std::string t;
  for (size_t r = 0; r < s.runs().size(); ++r)
    for (int64_t i = 0; i < s.runs()[r].n; ++i) t.push_back(static_cast<char>(s.id(r, i)));
  return t;
}

// A sweep over train.seed on the synthetic corpus changes the data with the
// initialisation, the validation text included, unless data.synthetic_seed
// holds it; 0 (unset, and as a checkpoint's config spells it out), the
// corpus is train.seed's (as before the field).
TEST(Synthetic, SyntheticSeedHoldsTheDataAcrossTrainSeeds) {
  auto splits = [](uint64_t train_seed, int64_t synthetic_seed) {
    Config c;
    c.mutable_data()->set_synthetic_bytes(20000);
    c.mutable_train()->set_seed(train_seed);
    if (synthetic_seed >= 0) c.mutable_data()->set_synthetic_seed(static_cast<uint64_t>(synthetic_seed));
    TrainingData d(c);
    return std::make_pair(text_of(d.train()), text_of(d.val()));
  };
  EXPECT_NE(splits(1, -1).second, splits(2, -1).second);
  EXPECT_EQ(splits(1, 7), splits(2, 7));
  EXPECT_EQ(splits(1, 7), splits(7, -1));
  EXPECT_EQ(splits(7, 0), splits(7, -1));
  EXPECT_EQ(splits(7, -1).second.size(), 2000u);
}

TEST(Synthetic, DeterministicFromSeed) {
  EXPECT_EQ(synthetic_corpus(1, 5000), synthetic_corpus(1, 5000));
  EXPECT_NE(synthetic_corpus(1, 5000), synthetic_corpus(2, 5000));
  EXPECT_EQ(synthetic_corpus(3, 777).size(), 777u);
}

TEST(Synthetic, EveryTaskAppearsWithItsPrefix) {
  std::string c = synthetic_corpus(9, 20000);
  for (const char* p : {"\nC", "\nS", "\nB", "\nA"}) EXPECT_NE(c.find(p), std::string::npos) << p;
}

TEST(Synthetic, ExamplesAreCorrect) {
  Rng r(42);
  for (int i = 0; i < 200; ++i) {
    std::string s = synthetic_example('S', r);  // S<digits>><sorted>\n
    auto gt = s.find('>');
    std::string in = s.substr(1, gt - 1), out = s.substr(gt + 1, s.size() - gt - 2);
    std::sort(in.begin(), in.end());
    EXPECT_EQ(in, out) << s;

    std::string a = synthetic_example('A', r);  // A<a>+<b>=<sum>\n
    auto plus = a.find('+'), eq = a.find('=');
    EXPECT_EQ(std::stol(a.substr(1, plus - 1)) + std::stol(a.substr(plus + 1, eq - plus - 1)),
              std::stol(a.substr(eq + 1))) << a;

    std::string b = synthetic_example('B', r), stack;
    for (char ch : b.substr(1, b.size() - 2)) {
      if (ch == '(' || ch == '[' || ch == '{') {
        stack += ch == '(' ? ')' : ch == '[' ? ']' : '}';
      } else {
        ASSERT_FALSE(stack.empty()) << b;
        EXPECT_EQ(stack.back(), ch) << b;
        stack.pop_back();
      }
    }
    EXPECT_TRUE(stack.empty()) << b;

    std::string c = synthetic_example('C', r);  // C<key>:....?<key>\n
    auto colon = c.find(':'), q = c.find('?');
    EXPECT_EQ(c.substr(1, colon - 1), c.substr(q + 1, c.size() - q - 2)) << c;
    EXPECT_GE(q - colon - 1, 16u);
  }
}

TEST(WindowSampler, TargetsAreNextBytes) {
  std::string text = synthetic_corpus(5, 10000);
  WindowSampler s(&text, 3, 17, 1);
  Batch b = s.next();
  ASSERT_EQ(b.inputs.size(), 51u);
  for (int i = 0; i < 3; ++i)
    for (int t = 0; t + 1 < 17; ++t) EXPECT_EQ(b.targets[i * 17 + t], b.inputs[i * 17 + t + 1]);
  Batch e1 = s.fixed(2), e2 = s.fixed(2);
  EXPECT_EQ(e1.inputs, e2.inputs);
}

TEST(Dataset, SplitsTailForValidation) {
  std::string text(1000, 'x');
  text.replace(900, 100, std::string(100, 'v'));
  Dataset d = make_dataset(text, 0.1, 8);
  EXPECT_EQ(d.train, std::string(900, 'x'));
  EXPECT_EQ(d.val, std::string(100, 'v'));
  EXPECT_THROW(make_dataset(text, 0.01, 64), ConfigError);
  try {
    make_dataset(text, 0.01, 64, "data.path = t.txt");
    ADD_FAILURE() << "expected a refusal";
  } catch (const ConfigError& e) {  // (the file named: the field and its value)
    EXPECT_EQ(std::string(e.what()).rfind("data.path = t.txt: a corpus of 1000 bytes is too small for model.seq_len 64", 0),
              0u)
        << e.what();
  }
}

}  // namespace
}  // namespace sy
