#include "parallel/device_mesh.h"

#include <c10/util/Exception.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "parallel/runtime.h"

namespace weft {
namespace {

std::vector<int> Strides(const std::vector<MeshAxis>& axes) {
  std::vector<int> strides(axes.size(), 1);
  for (int i = static_cast<int>(axes.size()) - 2; i >= 0; --i) {
    strides[i] = strides[i + 1] * axes[i + 1].size;
  }
  return strides;
}

}  // namespace

absl::Status ValidateMeshShape(const std::vector<MeshAxis>& axes, int world_size) {
  if (axes.empty()) return absl::InvalidArgumentError("mesh has no axes (expected at least one)");
  std::set<std::string> names;
  int64_t product = 1;
  std::vector<std::string> terms;
  for (const MeshAxis& axis : axes) {
    if (axis.name.empty()) {
      return absl::InvalidArgumentError("mesh axis with an empty name (expected e.g. dp, tp, pp)");
    }
    if (!names.insert(axis.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("mesh axis '", axis.name, "' appears twice (expected distinct names)"));
    }
    if (axis.size < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("mesh axis ", axis.name, " has size ", axis.size, " (expected >= 1)"));
    }
    product *= axis.size;
    terms.push_back(absl::StrCat(axis.name, "(", axis.size, ")"));
  }
  if (product != world_size) {
    return absl::InvalidArgumentError(absl::StrCat("mesh ", absl::StrJoin(terms, " * "), " = ",
                                                   product, " != WORLD_SIZE ", world_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<DeviceMesh> DeviceMesh::Create(Runtime& runtime, std::vector<MeshAxis> axes) {
  RETURN_IF_ERROR(ValidateMeshShape(axes, runtime.world_size()));
  std::vector<int> strides = Strides(axes);
  std::vector<int> coords(axes.size());
  for (size_t i = 0; i < axes.size(); ++i) {
    coords[i] = (runtime.rank() / strides[i]) % axes[i].size;
  }
  DeviceMesh mesh(axes, coords);
  std::string shape;
  for (const MeshAxis& a : axes) absl::StrAppend(&shape, shape.empty() ? "" : "x", a.name, a.size);
  // Every rank walks every row of every axis in the same order.
  for (size_t i = 0; i < axes.size(); ++i) {
    for (int rank = 0; rank < runtime.world_size(); ++rank) {
      if ((rank / strides[i]) % axes[i].size != 0) continue;  // Rows start at coordinate 0.
      std::vector<int> row = mesh.AxisRanks(axes[i].name, rank);
      ASSIGN_OR_RETURN(std::shared_ptr<ProcessGroup> group,
                       runtime.NewGroup(row, absl::StrCat("mesh[", shape, "].", axes[i].name, "[",
                                                          absl::StrJoin(row, ","), "]")));
      if (group) mesh.groups_[i] = std::move(group);
    }
  }
  return mesh;
}

DeviceMesh::DeviceMesh(std::vector<MeshAxis> axes, std::vector<int> coordinates)
    : axes_(std::move(axes)), coordinates_(std::move(coordinates)), groups_(axes_.size()) {}

int DeviceMesh::AxisIndex(const std::string& name) const {
  for (size_t i = 0; i < axes_.size(); ++i) {
    if (axes_[i].name == name) return static_cast<int>(i);
  }
  std::vector<std::string> names;
  for (const MeshAxis& a : axes_) names.push_back(a.name);
  TORCH_CHECK(false, "mesh has no axis '", name, "' (expected one of: ", absl::StrJoin(names, ", "),
              ")");
}

int DeviceMesh::size(const std::string& name) const { return axes_[AxisIndex(name)].size; }

int DeviceMesh::coordinate(const std::string& name) const { return coordinates_[AxisIndex(name)]; }

int DeviceMesh::RankAt(const std::vector<int>& coords) const {
  TORCH_CHECK(coords.size() == axes_.size(), "RankAt: ", coords.size(), " coordinates for a ",
              axes_.size(), "-axis mesh");
  std::vector<int> strides = Strides(axes_);
  int rank = 0;
  for (size_t i = 0; i < axes_.size(); ++i) {
    TORCH_CHECK(coords[i] >= 0 && coords[i] < axes_[i].size, "RankAt: coordinate ", coords[i],
                " out of range for axis ", axes_[i].name, "(", axes_[i].size, ")");
    rank += coords[i] * strides[i];
  }
  return rank;
}

std::vector<int> DeviceMesh::AxisRanks(const std::string& name, int rank) const {
  int axis = AxisIndex(name);
  int stride = Strides(axes_)[axis];
  int base = rank - ((rank / stride) % axes_[axis].size) * stride;
  std::vector<int> ranks;
  for (int c = 0; c < axes_[axis].size; ++c) ranks.push_back(base + c * stride);
  return ranks;
}

ProcessGroup& DeviceMesh::operator[](const std::string& name) const {
  return *groups_[AxisIndex(name)];
}

std::shared_ptr<ProcessGroup> DeviceMesh::group(const std::string& name) const {
  return groups_[AxisIndex(name)];
}

}  // namespace weft
