// A small, strict JSON parser for safetensors headers, config.json and
// model.safetensors.index.json.
//
// Strict where those formats need it: the whole input must be one value
// (trailing bytes are an error), strings must be valid UTF-8 (escapes
// included), nesting is bounded. Objects keep every member in order,
// duplicates included, so callers can reject duplicate names with their own
// message. Numbers keep their literal text, so callers can tell 3 from 3.0
// and reject what does not fit.
//
//   ASSIGN_OR_RETURN(JsonValue v, ParseJson(R"({"a": [1, 2]})"));
//   const JsonValue* a = v.Find("a");   // a->items.size() == 2
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace weft {

struct JsonValue {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  Type type = Type::kNull;
  bool boolean = false;
  /// A string's value, or a number's literal text (e.g. "-1.5e3").
  std::string text;
  std::vector<JsonValue> items;                            // arrays
  std::vector<std::pair<std::string, JsonValue>> members;  // objects, in order

  bool is_object() const { return type == Type::kObject; }
  bool is_array() const { return type == Type::kArray; }
  bool is_string() const { return type == Type::kString; }
  bool is_number() const { return type == Type::kNumber; }
  /// The first member named `key`, or nullptr.
  const JsonValue* Find(absl::string_view key) const;
  /// The value as a non-negative integer when the literal is one that fits
  /// in uint64 (no fraction, no exponent, no sign); nullopt otherwise.
  std::optional<uint64_t> AsUint64() const;
  /// The value as a double when it is a number.
  std::optional<double> AsDouble() const;
};

/// Parses `text` as exactly one JSON value. Errors name the byte offset:
/// `invalid JSON at byte 17: expected ',' or '}'`.
absl::StatusOr<JsonValue> ParseJson(absl::string_view text);

/// Offset of the first byte that is not valid UTF-8, or -1 when all are.
int64_t FirstInvalidUtf8(absl::string_view text);

/// `s` as a JSON string literal, quotes included.
std::string JsonQuote(absl::string_view s);

/// `value` as JSON text, indented by two spaces per level (as Python's
/// json.dump(indent=2)); numbers keep their literal text.
std::string DumpJson(const JsonValue& value);

}  // namespace weft
