// Whole small files as strings: read one, or write one atomically (through
// AtomicFile: a crash never leaves a torn file under the final name). For
// JSON and YAML documents, not for tensors.
//
//   ASSIGN_OR_RETURN(std::string json, ReadTextFile(dir + "/trainer_state.json"));
//   RETURN_IF_ERROR(WriteTextFileAtomically(dir + "/config.yaml", yaml));
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace weft {

/// The file's bytes. NotFound naming the path and errno's text when it
/// cannot be opened: `run.yaml: cannot be opened (No such file or directory)`;
/// InvalidArgument for a directory or another non-regular file
/// (`runs/: is a directory (expected a file)`).
/// `open_errno`, when given, receives errno of a failed open (0 otherwise),
/// for callers that word their own message.
absl::StatusOr<std::string> ReadTextFile(const std::string& path, int* open_errno = nullptr);

/// Writes `text` to `path` atomically (temporary file, fsync, rename).
absl::Status WriteTextFileAtomically(const std::string& path, const std::string& text);

}  // namespace weft
