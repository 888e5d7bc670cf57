#include "base/placement.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace weft {

std::string Placement::ToString() const {
  switch (kind) {
    case Kind::kShard:
      return absl::StrCat("Shard(", dim, ")");
    case Kind::kPartial:
      return "Partial(sum)";
    default:
      return "Replicate()";
  }
}

std::string DTensorSpec::ToString() const {
  std::vector<std::string> p;
  for (const Placement& x : placements) p.push_back(x.ToString());
  std::string out =
      absl::StrCat(absl::StrJoin(p, ", "), " [", absl::StrJoin(global_shape, ", "), "] -> [",
                   absl::StrJoin(local_shape, ", "), "] at [", absl::StrJoin(offsets, ", "), "]");
  if (expert >= 0) absl::StrAppend(&out, " expert ", expert, " on rank ", owner);
  if (grad == Placement::Partial()) absl::StrAppend(&out, ", grad summed");
  return out;
}

}  // namespace weft
