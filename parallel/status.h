// Status helpers for weft's error model.
//
// weft reports bad input at its boundaries (environment, files, plans, flags)
// as absl::Status / absl::StatusOr with one line naming the thing, the value
// found and the value expected. Inside compute (tensor math, collectives on
// already-validated groups) it throws, via TORCH_CHECK.
//
// libabsl 20220623 ships no status macros; these are weft's.
//
//   absl::StatusOr<int> ParsePort(std::string_view s);
//   absl::Status Init() {
//     ASSIGN_OR_RETURN(int port, ParsePort("29500"));
//     RETURN_IF_ERROR(Listen(port));
//     return absl::OkStatus();
//   }
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define WEFT_STATUS_CONCAT_INNER(a, b) a##b
#define WEFT_STATUS_CONCAT(a, b) WEFT_STATUS_CONCAT_INNER(a, b)

/// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                    \
  do {                                           \
    ::absl::Status weft_status_ = (expr);        \
    if (!weft_status_.ok()) return weft_status_; \
  } while (0)

#define WEFT_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return std::move(tmp).status();   \
  lhs = std::move(tmp).value()

/// Evaluates `expr` (an absl::StatusOr<T>); on error returns its status, else
/// assigns the value to `lhs` (which may be a declaration).
#define ASSIGN_OR_RETURN(lhs, expr) \
  WEFT_ASSIGN_OR_RETURN_IMPL(WEFT_STATUS_CONCAT(weft_statusor_, __LINE__), lhs, expr)

namespace weft {

/// Throws std::runtime_error carrying the status message if `status` is not
/// OK. For the boundary where a Status meets code that throws (CLI mains).
void ThrowIfError(const absl::Status& status);

/// Returns the value or throws std::runtime_error with the status message.
template <typename T>
T ValueOrThrow(absl::StatusOr<T> value) {
  ThrowIfError(value.status());
  return std::move(value).value();
}

}  // namespace weft
