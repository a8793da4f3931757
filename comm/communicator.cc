#include "comm/communicator.h"

#include "core/error.h"

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

void check_disjoint(const Tensor& send, const Tensor& recv, const char* context) {
  const char* s = static_cast<const char*>(send.raw());
  const char* r = static_cast<const char*>(recv.raw());
  const size_t ns = send.nbytes(), nr = recv.nbytes();
  SY_CHECK(ns == 0 || nr == 0 || s + ns <= r || r + nr <= s,
           "all_to_all_v in '" << context << "': send and receive buffers overlap (" << ns << " bytes at "
                               << static_cast<const void*>(s) << ", " << nr << " at " << static_cast<const void*>(r)
                               << ")");
}

}  // namespace detail

}  // namespace sy::comm
