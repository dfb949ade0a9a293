"""Scale-out: device meshes and the one table mapping logical axes to mesh axes."""

from bitjax.parallel.sharding import (LOGICAL_RULES, MESH_AXES, logical_to_spec, make_mesh,
                                      state_shardings)

__all__ = ["LOGICAL_RULES", "MESH_AXES", "logical_to_spec", "make_mesh", "state_shardings"]
