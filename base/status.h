// -----------------------------------------------------------------------------
// File: base/status.h
// -----------------------------------------------------------------------------
//
// Status helpers for weft's error model (CONTRIBUTING.md).
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

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

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

/// The first line of `text` (all of it when there is no newline): error
/// messages from LibTorch and c10d span many lines, weft's are one.
///
///   catch (const std::exception& e) { err << FirstLine(e.what()); }
std::string FirstLine(absl::string_view text);

}  // namespace weft
