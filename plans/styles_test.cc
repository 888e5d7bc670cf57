#include "plans/styles.h"

#include <set>
#include <string>

#include "base/text_file.h"
#include "gtest/gtest.h"

namespace weft {
namespace {

// Every style has one record, and its names parse back to it.
TEST(Styles, OneRecordPerStyleAndNamesRoundTrip) {
  std::set<Style> seen;
  for (const StyleRule& rule : StyleRules()) {
    EXPECT_TRUE(seen.insert(rule.style).second) << rule.name << " has two records";
    EXPECT_EQ(RuleOf(rule.style).name, std::string(rule.name));
    auto parsed = ParseStyle(rule.name);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, rule.style);
    if (rule.alias != nullptr) EXPECT_EQ(*ParseStyle(rule.alias), rule.style);
    // A style names parameters (and slices them) or names a module (a region).
    EXPECT_NE(rule.slice == nullptr, !rule.names_module) << rule.name;
    EXPECT_EQ(rule.wire != nullptr && rule.names_module, false) << rule.name;
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(Style::kEpRouter) + 1);
  EXPECT_EQ(ParseStyle("colwise_rep").value(), Style::kColwiseGatherOutput);
  EXPECT_EQ(ParseStyle("diagonal").status().message().substr(0, 45),
            "unknown style 'diagonal' (expected one of: co");
}

// docs/plan_styles.md carries the table the records generate, so the docs
// cannot drift from the code.
TEST(Styles, TheDocsTableIsTheRecords) {
  auto docs = ReadTextFile("docs/plan_styles.md");
  ASSERT_TRUE(docs.ok()) << docs.status();
  const std::string table = StyleTableMarkdown();
  EXPECT_NE(docs->find(table), std::string::npos)
      << "docs/plan_styles.md does not hold the table of plans/styles.cc; expected:\n"
      << table;
}

}  // namespace
}  // namespace weft
