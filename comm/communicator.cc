#include "comm/communicator.h"

#include "core/error.h"

#include <algorithm>
#include <chrono>
#include <sstream>

namespace sy::comm {

double Communicator::all_reduce_sum(double v, const char* context) {
  Tensor t = Tensor::from_host(std::vector<double>{v});
  all_reduce_sum(t, Stream{}, context);
  return t.data<double>()[0];
}

void Communicator::all_gather_v(Tensor& t, const std::vector<int64_t>& rows, Stream stream, const char* context) {
  const std::vector<int64_t> first = detail::check_parts(t, rows, size(), "all_gather_v", context);
  const int64_t w = t.numel() == 0 ? 0 : t.numel() / t.dim(0);
  constexpr int64_t kPiece = int64_t{1} << 26;  // elements: MPI's broadcast counts bytes in an int
  const int64_t piece_rows = std::max<int64_t>(1, kPiece / std::max<int64_t>(1, w));
  for (int r = 0; r < size(); ++r)
    for (int64_t b = first[r]; b < first[r] + rows[r]; b += piece_rows) {
      Tensor part = t.rows(b, std::min(first[r] + rows[r], b + piece_rows));
      broadcast(part, r, stream, context);
    }
}

void Communicator::reduce_scatter_sum_v(Tensor& t, const std::vector<int64_t>& rows, Stream stream,
                                        const char* context) {
  detail::check_parts(t, rows, size(), "reduce_scatter_sum_v", context);
  all_reduce_sum(t, stream, context);
}

namespace detail {

std::vector<int64_t> check_parts(const Tensor& t, const std::vector<int64_t>& rows, int size, const char* op,
                                 const char* context) {
  SY_CHECK(static_cast<int>(rows.size()) == size,
           op << " in '" << context << "': " << rows.size() << " parts for a group of " << size);
  std::vector<int64_t> first(size + 1, 0);
  for (int r = 0; r < size; ++r) {
    SY_CHECK(rows[r] >= 0, op << " in '" << context << "': rank " << r << "'s part of " << rows[r] << " rows");
    first[r + 1] = first[r] + rows[r];
  }
  SY_CHECK(t.ndim() >= 1 && t.dim(0) == first[size],
           op << " in '" << context << "': parts of " << first[size] << " rows in all, a tensor of "
                               << shape_str(t.shape()));
  return first;
}

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
