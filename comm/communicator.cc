#include "comm/communicator.h"

#include <chrono>
#include <sstream>

namespace sy::comm {

double Communicator::all_reduce_sum(double v, const char* context) {
  Tensor t = Tensor::from_host(std::vector<double>{v});
  all_reduce_sum(t, Stream{}, context);
  return t.data<double>()[0];
}

namespace detail {

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string ranks_str(const std::vector<int>& r) {
  std::ostringstream os;
  for (size_t i = 0; i < r.size(); ++i) os << (i ? "," : "") << r[i];
  return os.str();
}

}  // namespace detail

}  // namespace sy::comm
