#include "parallel/status.h"

#include <stdexcept>
#include <string>

namespace weft {

void ThrowIfError(const absl::Status& status) {
  if (!status.ok()) throw std::runtime_error(std::string(status.message()));
}

}  // namespace weft
