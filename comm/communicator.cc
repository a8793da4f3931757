#include "comm/communicator.h"

namespace sy::comm {

double Communicator::all_reduce_sum(double v, const char* context) {
  Tensor t = Tensor::from_host(std::vector<double>{v});
  all_reduce_sum(t, Stream{}, context);
  return t.data<double>()[0];
}

}  // namespace sy::comm
