#include "core/rng.h"

#include <algorithm>
#include <thread>
#include <vector>

#include "core/error.h"

namespace sy {

void draw_normals(Rng& rng, float std, int64_t whole, int64_t begin, int64_t end, float* out) {
  SY_CHECK(0 <= begin && begin <= end && end <= whole,
           "draw_normals: range [" << begin << ", " << end << ") of " << whole);
  const uint64_t start = rng.state();
  // Element i is made from draws 2i and 2i + 1 of the stream (normal() takes two).
  auto draw = [&](int64_t lo, int64_t hi) {
    Rng r(start);
    r.skip(2 * static_cast<uint64_t>(lo));
    for (int64_t i = lo; i < hi; ++i) out[i - begin] = static_cast<float>(r.normal() * std);
  };
  constexpr int64_t kPerThread = int64_t{1} << 21;  // below this a thread costs more than it saves
  const int64_t n = end - begin;
  const int64_t threads =
      std::max<int64_t>(1, std::min<int64_t>(std::thread::hardware_concurrency(), n / kPerThread));
  if (threads == 1) {
    draw(begin, end);
  } else {
    std::vector<std::thread> pool;
    const int64_t chunk = (n + threads - 1) / threads;
    for (int64_t lo = begin; lo < end; lo += chunk) pool.emplace_back(draw, lo, std::min(end, lo + chunk));
    for (std::thread& t : pool) t.join();
  }
  rng.set_state(start);
  rng.skip(2 * static_cast<uint64_t>(whole));
}

}  // namespace sy
