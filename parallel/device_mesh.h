// DeviceMesh: the world as an n-D grid of ranks with named axes.
//
// Ranks fill the mesh in row-major order (the last axis varies fastest), as
// in torch's init_device_mesh. Each axis has one process group per row: the
// ranks that differ only in that axis's coordinate. Building a mesh is
// collective: every rank creates every group, in the same order, and keeps the
// ones it belongs to. "axis" means a mesh axis, "dim" a tensor dimension.
//
//   ASSIGN_OR_RETURN(DeviceMesh mesh,
//                    DeviceMesh::Create(*runtime, {{"dp", 2}, {"tp", 4}}));
//   ProcessGroup& tp = mesh["tp"];          // the 4 ranks sharing my dp index
//   int dp_index = mesh.coordinate("dp");
//
// A mesh whose product is not the world size is rejected with the whole
// product: `mesh dp(2) * tp(3) = 6 != WORLD_SIZE 4`.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/process_group.h"

namespace weft {

class Runtime;

/// One axis of a mesh: a name and a size.
struct MeshAxis {
  std::string name;
  int size = 1;
};

/// Checks axis names and sizes against `world_size` without building groups.
absl::Status ValidateMeshShape(const std::vector<MeshAxis>& axes, int world_size);

class DeviceMesh {
 public:
  /// Builds the mesh and its per-axis groups. Collective over the world.
  static absl::StatusOr<DeviceMesh> Create(Runtime& runtime, std::vector<MeshAxis> axes);

  const std::vector<MeshAxis>& axes() const { return axes_; }
  int ndim() const { return static_cast<int>(axes_.size()); }
  /// Size of axis `name`; throws if there is no such axis.
  int size(const std::string& name) const;
  /// This rank's coordinate along axis `name`.
  int coordinate(const std::string& name) const;
  /// This rank's coordinates, one per axis.
  const std::vector<int>& coordinates() const { return coordinates_; }
  /// The global rank at `coords` (one per axis).
  int RankAt(const std::vector<int>& coords) const;
  /// The group along axis `name` that this rank belongs to.
  ProcessGroup& operator[](const std::string& name) const;
  /// The same group, shared: for owners that must keep it alive (a model
  /// whose hooks run collectives on it).
  std::shared_ptr<ProcessGroup> group(const std::string& name) const;
  /// The global ranks of the group along `name` that contains global `rank`.
  std::vector<int> AxisRanks(const std::string& name, int rank) const;

 private:
  DeviceMesh(std::vector<MeshAxis> axes, std::vector<int> coordinates);
  int AxisIndex(const std::string& name) const;

  std::vector<MeshAxis> axes_;
  std::vector<int> coordinates_;
  std::vector<std::shared_ptr<ProcessGroup>> groups_;  // One per axis, this rank's row.
};

}  // namespace weft
