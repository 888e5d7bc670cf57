#include "base/json.h"

#include "gtest/gtest.h"

namespace weft {
namespace {

TEST(Json, ParsesValues) {
  auto v = ParseJson(R"( {"a": [1, -2.5e3, true, false, null, "x\u00e9\n"], "b": {}, "a": 0} )");
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_TRUE(v->is_object());
  ASSERT_EQ(v->members.size(), 3u);  // duplicates are kept for the caller
  const JsonValue* a = v->Find("a");
  ASSERT_TRUE(a && a->is_array());
  EXPECT_EQ(a->items[0].AsUint64(), 1u);
  EXPECT_EQ(a->items[1].text, "-2.5e3");
  EXPECT_EQ(a->items[1].AsUint64(), std::nullopt);
  EXPECT_EQ(*a->items[1].AsDouble(), -2500.0);
  EXPECT_TRUE(a->items[2].boolean);
  EXPECT_EQ(a->items[5].text, "x\xc3\xa9\n");
  EXPECT_EQ(ParseJson("\"\\ud83d\\ude00\"")->text, "\xf0\x9f\x98\x80");
}

TEST(Json, Integers) {
  EXPECT_EQ(ParseJson("18446744073709551615")->AsUint64(), UINT64_MAX);
  EXPECT_EQ(ParseJson("18446744073709551616")->AsUint64(), std::nullopt);
  EXPECT_EQ(ParseJson("3.0")->AsUint64(), std::nullopt);
  EXPECT_EQ(ParseJson("-0")->AsUint64(), std::nullopt);
  EXPECT_EQ(ParseJson("1e2")->AsUint64(), std::nullopt);
}

TEST(Json, RejectsMalformedInput) {
  auto error = [](const std::string& text) {
    auto v = ParseJson(text);
    return v.ok() ? "OK" : std::string(v.status().message());
  };
  EXPECT_EQ(error("{\"a\" 1}"), "invalid JSON at byte 5: expected ':'");
  EXPECT_EQ(error("[1, 2"), "invalid JSON at byte 5: expected ',' or ']'");
  EXPECT_EQ(error("01"), "invalid JSON at byte 1: unexpected bytes after the JSON value");
  EXPECT_EQ(error("\"abc"), "invalid JSON at byte 4: unterminated string");
  EXPECT_EQ(error("\"\\ud800\""),
            "invalid JSON at byte 7: unpaired UTF-16 surrogate in \\u escape");
  EXPECT_EQ(error("\"\xc3\x28\""), "invalid JSON at byte 4: string is not valid UTF-8");
  EXPECT_EQ(error("1."), "invalid JSON at byte 2: bad number: no digits after '.'");
  EXPECT_EQ(error(std::string(200, '[')), "invalid JSON at byte 129: nesting deeper than 128");
  EXPECT_EQ(error(""), "invalid JSON at byte 0: unexpected end of input, expected a value");
}

TEST(Json, Utf8AndQuoting) {
  EXPECT_EQ(FirstInvalidUtf8("ok \xc3\xa9"), -1);
  EXPECT_EQ(FirstInvalidUtf8("ab\xc0\x80"), 2);        // overlong
  EXPECT_EQ(FirstInvalidUtf8("\xed\xa0\x80"), 0);      // surrogate
  EXPECT_EQ(FirstInvalidUtf8("\xf4\x90\x80\x80"), 0);  // > U+10FFFF
  EXPECT_EQ(FirstInvalidUtf8("a\xe2\x82"), 1);         // truncated
  EXPECT_EQ(JsonQuote("a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\u0001\"");
}

TEST(Json, DumpRoundTrips) {
  const std::string text =
      R"({"a": [1, 2.5e-3, "x\"y"], "b": {"c": null, "d": true}, "e": [], "f": {}})";
  auto parsed = ParseJson(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const std::string dumped = DumpJson(*parsed);
  EXPECT_EQ(dumped,
            "{\n  \"a\": [\n    1,\n    2.5e-3,\n    \"x\\\"y\"\n  ],\n  \"b\": {\n    \"c\": "
            "null,\n    \"d\": true\n  },\n  \"e\": [],\n  \"f\": {}\n}");
  auto again = ParseJson(dumped);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(DumpJson(*again), dumped);
}

}  // namespace
}  // namespace weft
