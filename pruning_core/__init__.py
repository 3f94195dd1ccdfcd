"""pruning_core: exact, fast magnitude/gradient/structured pruning on plain PyTorch.

Usable on any ``nn.Module``; depends on torch, and on torch-pruning's dependency graph for
filter pruning and :func:`compact` (imported only when those run).
"""
from .compaction import compact, filter_units
from .masks import (
    MASK,
    PrunableWeight,
    apply_masks,
    arm,
    attach_optimizer,
    clear_optimizer_state,
    get_mask,
    load_state_dict,
    make_permanent,
    mask_gradients,
    prunable_modules,
    prunable_weights,
)
from .report import layer_sparsity, nonzero_params, sparsity, sparsity_report
from .schedules import SCHEDULE_KINDS, check_sparsity, sparsity_schedule
from .selection import (
    CRITERIA, SCOPES, STRUCTURES, accumulate_gradients, needs_gradients, nm_sparsity, parse_structure, prune,
    prune_threshold, units_in_scope,
)
from .serialization import load_pruned, save_pruned
from .structures import needs_example_inputs

__all__ = [
    "MASK", "CRITERIA", "SCOPES", "STRUCTURES", "SCHEDULE_KINDS",
    "prune", "prune_threshold", "accumulate_gradients", "needs_gradients", "needs_example_inputs",
    "sparsity", "layer_sparsity", "nonzero_params", "sparsity_report",
    "make_permanent", "save_pruned", "load_pruned", "load_state_dict",
    "attach_optimizer", "arm", "apply_masks", "mask_gradients", "clear_optimizer_state",
    "get_mask", "prunable_modules", "prunable_weights", "PrunableWeight", "nm_sparsity", "compact", "filter_units", "parse_structure", "units_in_scope", "sparsity_schedule", "check_sparsity",
]
