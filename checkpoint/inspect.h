// -----------------------------------------------------------------------------
// File: checkpoint/inspect.h
// -----------------------------------------------------------------------------
//
// What a safetensors file or checkpoint directory holds: every tensor (name,
// dtype, shape, bytes, file), the totals and the metadata. `weft inspect`
// (cli/inspect.cc) prints it:
//
//   weft inspect /models/llama
//   name                       dtype  shape       bytes   file
//   lm_head.weight             F32    [256, 64]   65536   model.safetensors
//   ...
//   21 tensors, 427264 bytes (417.3 KiB) in 1 file
//
// A bad file is an error naming the file, the tensor and the value found vs
// expected.
#pragma once

#include <ostream>
#include <string>

#include "absl/status/status.h"

namespace weft {

/// Prints the table to `out`.
absl::Status PrintInspect(const std::string& path, std::ostream& out);

}  // namespace weft
