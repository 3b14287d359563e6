"""The inference engine: one route from images (one or several references, any size) to SR, used by training
validation, ``test.py``, ``infer.py`` and the scripts.

- :mod:`.engine`: :func:`run_refsr` (padding, geometry, search mode, memory budget, tiles, several references).
- :mod:`.options`: :class:`InferenceOptions`, the schema of the ``tile`` / ``max_memory`` / ``search`` options.
- :mod:`.tiling`, :mod:`.memory_plan`: tiles that search the whole LR once; the memory-budget planner.
- :mod:`.network`: build a network from its options and load a checkpoint for inference.
- :mod:`.folder`: super-resolve files and folders (outputs, collisions, ``--skip-existing``, sharding).
- :mod:`.reference_cache`: :class:`ReferenceCache`, a run's encoded references, reused by every LR image.
"""

from extracter.inference.engine import RefSRResult, pad_to_multiple, refsr_kwargs_from_options, run_refsr
from extracter.inference.memory_plan import MemoryBudgetError
from extracter.inference.options import InferenceOptionError, InferenceOptions, SearchOptions
from extracter.inference.reference_cache import ReferenceCache

__all__ = ['InferenceOptionError', 'InferenceOptions', 'MemoryBudgetError', 'RefSRResult', 'ReferenceCache',
           'SearchOptions', 'pad_to_multiple', 'refsr_kwargs_from_options', 'run_refsr']
