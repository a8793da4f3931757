// Rng: a small seeded generator (splitmix64) whose stream is the same on every
// platform and standard library, so a seed means the same run everywhere
// (std::normal_distribution is implementation-defined; this is not).
#pragma once
#include <cmath>
#include <cstdint>

namespace sy {

class Rng {
 public:
  explicit Rng(uint64_t seed = 0) : state_(seed) {}
  static constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;
  uint64_t next_u64() {
    uint64_t z = (state_ += kGamma);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1).
  double uniform() { return (next_u64() >> 11) * 0x1.0p-53; }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) { return next_u64() % n; }
  // Uniform integer in [lo, hi].
  int64_t between(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(below(hi - lo + 1)); }
  // Standard normal (Box-Muller).
  double normal() {
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  // Skips n draws of next_u64 (normal() takes two). splitmix64's state is a
  // counter: after n draws it is state + n·γ (mod 2^64), so any stretch of the
  // stream can be drawn on its own (draw_normals' threads).
  void skip(uint64_t n) { state_ += n * kGamma; }
  uint64_t state() const { return state_; }
  void set_state(uint64_t s) { state_ = s; }

 private:
  uint64_t state_;
};

// Draws `whole` values float(normal() · std) from rng, in order, and keeps
// those of [begin, end) in out[0, end - begin): bit for bit what the serial
// loop keeps, and rng ends where it would. Draws outside the range are skipped,
// not made, and a large range is split over the host's cores (a 1.9B-parameter
// model took a minute on one core).
void draw_normals(Rng& rng, float std, int64_t whole, int64_t begin, int64_t end, float* out);

}  // namespace sy
