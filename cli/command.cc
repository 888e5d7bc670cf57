#include "cli/command.h"

#include <exception>

#include "base/status.h"

namespace weft {

int RunCommand(absl::string_view name, std::ostream& err,
               const std::function<absl::Status()>& body) {
  try {
    absl::Status status = body();
    if (status.ok()) return kExitOk;
    err << "weft " << name << ": " << FirstLine(status.message()) << std::endl;
    return kExitBadInput;
  } catch (const std::exception& e) {
    err << "weft " << name << ": " << FirstLine(e.what()) << std::endl;
    return kExitRunFailed;
  }
}

}  // namespace weft
