"""Scale-out: device meshes, the one table mapping logical axes to mesh axes, sharding
helpers and multi-host start-up. TPU topologies and AOT compiles: bitjax.parallel.topology;
the table of accelerator chips (peak FLOP/s, HBM): bitjax.parallel.chips."""

from bitjax.parallel.multihost import (DISTRIBUTED_MODES, global_batch, initialize_distributed,
                                       max_over_processes, process_batch_block)
from bitjax.parallel.sharding import (LOGICAL_RULES, MESH_AXES, MESH_FIELDS, MeshConfig,
                                      logical_sharding, logical_to_spec, make_mesh, sharded_jit,
                                      state_shardings, with_logical_constraint)

__all__ = ["DISTRIBUTED_MODES", "LOGICAL_RULES", "MESH_AXES", "MESH_FIELDS", "MeshConfig",
           "global_batch", "initialize_distributed", "logical_sharding", "logical_to_spec",
           "make_mesh", "max_over_processes", "process_batch_block", "sharded_jit", "state_shardings",
           "with_logical_constraint"]
