#include "cli/command.h"

#include <cstdlib>
#include <ctime>
#include <exception>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/json.h"
#include "base/status.h"
#include "base/text_file.h"

namespace weft {

namespace {

// torch's @record: a failed worker of PyTorch's torchrun writes its error to
// TORCHELASTIC_ERROR_FILE, and torchrun's summary shows that message.
void RecordForTorchelastic(const std::string& line) {
  const char* path = std::getenv("TORCHELASTIC_ERROR_FILE");
  if (path == nullptr || *path == '\0') return;
  const std::string json =
      absl::StrCat("{\"message\": {\"message\": ", JsonQuote(line),
                   ", \"extraInfo\": {\"py_callstack\": ", JsonQuote(line), ", \"timestamp\": \"",
                   static_cast<int64_t>(std::time(nullptr)), "\"}}}");
  (void)WriteTextFileAtomically(path, json);  // best effort: the line is on stderr too
}

int Fail(absl::string_view name, std::ostream& err, absl::string_view message, int code) {
  const std::string line = absl::StrCat("weft ", name, ": ", FirstLine(message));
  err << line << std::endl;
  RecordForTorchelastic(line);
  return code;
}

}  // namespace

int RunCommand(absl::string_view name, std::ostream& err,
               const std::function<absl::Status()>& body) {
  try {
    absl::Status status = body();
    if (status.ok()) return kExitOk;
    return Fail(name, err, status.message(), kExitBadInput);
  } catch (const std::exception& e) {
    return Fail(name, err, e.what(), kExitRunFailed);
  }
}

}  // namespace weft
