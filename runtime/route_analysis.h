// What a MoE layer's routing depends on, measured on a fixed sample of
// tokens (examples/route_report). For each token i of N: its id x_i, its
// position t_i in its sequence, and e_i, the expert of its first choice
// (the router's best; capacity decides only whether it is kept).
//
// Dependence as normalised mutual information, U(E | X) = I(X; E) / H(E):
// the share of the expert choice's entropy that X explains, 0 when the
// choice ignores X, 1 when X decides it (Theil's uncertainty coefficient).
// From counts n_xe over N samples, plug-in: I = sum n_xe/N ln(n_xe N /
// (n_x n_e)), H(E) = -sum n_e/N ln(n_e/N), nats. The plug-in I is biased
// upward by about (K_xe - K_x - K_e + 1) / (2 N) (Miller and Madow; K: the
// cells with a count) - at 256 byte ids, 8 experts and 32k tokens at most
// 0.027 nats, 0.013 of H(E) = ln 8 - so that correction is subtracted, and U
// clamped to [0, 1].
// Three X: the token id (specialisation by token), the position bucket
// floor(8 t / T) (by place in the window), and the previous MoE layer's
// first choice (experts that follow one another). Between two checkpoints
// of one run (the same experts by index), `changed` is the share of tokens
// whose first choice differs (StableMoE's routing fluctuation); between any
// two models of one shape, `by_compared` = U(E | the other model's first
// choice) says how much the other's partition of the tokens determines
// this one's, whatever the experts' numbering (1 with E experts each: the
// same partition, relabelled; not symmetric in the two models).
// A depth-routed block's decision (process or pass a token) is a choice of
// two: the same coefficients with E = {processed, passed}, and the ids
// with the highest and the lowest share processed.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace sy {

// Counts of (x, e) pairs, x in [0, X), e in [0, E).
class Contingency {
 public:
  Contingency(int64_t X, int64_t E);
  void add(int64_t x, int64_t e);
  int64_t total() const { return n_; }
  int64_t count(int64_t x, int64_t e) const { return cell_[x * E_ + e]; }
  double entropy_e() const;            // H(E), nats
  double mutual_information() const;   // plug-in I(X; E), nats
  double miller_madow_bias() const;    // (K_xe - K_x - K_e + 1) / (2 N)
  // U(E | X) = (I - bias) / H(E), clamped to [0, 1]; 0 when H(E) = 0.
  double uncertainty_coefficient() const;

 private:
  int64_t X_, E_, n_ = 0;
  std::vector<int64_t> cell_, row_, col_;
};

struct ExpertProfile {
  double share = 0;  // of the tokens' first choices
  double kept = 0;   // of those, the share whose first choice kept its slot here
  // The ids this expert gets most often as a first choice, most first (ties
  // to the lower id), with the share of the expert's tokens each makes up.
  std::vector<std::pair<int32_t, double>> top_ids;
};

struct LayerRouting {
  int64_t tokens = 0;
  double served = 0;           // share of tokens with some choice kept
  double by_id = 0;            // U(E | token id)
  double by_position = 0;      // U(E | position bucket)
  double by_previous = -1;     // U(E | the previous MoE layer's first choice); -1: no previous layer
  double changed = -1;         // share of first choices unlike the compared run's; -1: none compared
  double by_compared = -1;     // U(E | the compared run's first choice); -1: none compared
  std::vector<ExpertProfile> experts;
};

struct RoutingSample {
  std::vector<int32_t> ids;       // (N) token ids in [0, V)
  std::vector<int32_t> position;  // (N) in [0, T)
  int64_t vocab = 0, seq_len = 0;
};

struct DepthRouting {
  int64_t tokens = 0;
  double processed = 0;    // share of tokens the block processed
  double by_id = 0;        // U(processed | token id)
  double by_position = 0;  // U(processed | position bucket)
  double changed = -1;     // share of decisions unlike the compared run's; -1: none compared
  // Ids seen at least `min_count` times, by the share of them processed:
  // the highest first, and the lowest first (ties to the lower id).
  std::vector<std::pair<int32_t, double>> most_processed, most_passed;
};

// A depth-routed block's decisions (N, 1 processed, 0 passed); compared: another
// run's over the same tokens (empty: none).
DepthRouting analyse_depth(const RoutingSample& s, const std::vector<uint8_t>& processed,
                           const std::vector<uint8_t>& compared, int top = 5, int64_t min_count = 20);

// One layer's first choices (N, each in [0, E)), whether each kept its slot
// (first_kept) and whether any of the token's choices did (served).
// previous / compared: another layer's or
// run's first choices over the same tokens (empty: none; the compared run's
// experts are E too). top: ids listed per expert.
LayerRouting analyse_layer(const RoutingSample& s, int64_t E, const std::vector<int32_t>& first,
                           const std::vector<uint8_t>& first_kept, const std::vector<uint8_t>& served,
                           const std::vector<int32_t>& previous,
                           int64_t previous_experts, const std::vector<int32_t>& compared, int top = 5);

}  // namespace sy
