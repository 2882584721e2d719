from typing import Any, Optional, Union

from . import Model, Pairs, Path, Progress

# **options: the `cart discover` flags in snake_case (split, field, tail_subsets, alpha,
# clusters, units, mlp_layers, head_layers, edge_layers, sae, positions, readout, permutations,
# family_alpha, fixed_z, min_correlation, random_sets, bootstrap, screen_top, batch_size, seed).
def discover(
    model: Model, pairs: Pairs, oracle: Optional[Path] = None, progress: Progress = None, **options: Any
) -> dict[str, Any]: ...
# **options: field, tail_subsets, head_sample, max_head_drop, candidates, max_size, edges,
# tail_drop, batch_size, seed (the `cart oracle` flags in snake_case).
def oracle(model: Model, pairs: Pairs, progress: Progress = None, **options: Any) -> dict[str, Any]: ...
def vulnerability(
    model: Model, pairs: Pairs, discovery: Optional[Path] = None, train_pairs: Optional[Pairs] = None,
    progress: Progress = None, **options: Any,
) -> dict[str, Any]: ...
def bound(
    model: Model, pairs: Pairs, discovery: Optional[Path] = None, held_out: Optional[Pairs] = None, delta: float = 0.05,
    progress: Progress = None, **options: Any,
) -> dict[str, Any]: ...
def train(
    out: Path, preset: Optional[str] = None, model: Union[Model, Path, None] = None, pairs: Optional[Pairs] = None,
    held_out: Optional[Pairs] = None, progress: Progress = None, **options: Any,
) -> dict[str, Any]: ...
def table(out: Path, progress: Progress = None, **options: Any) -> dict[str, Any]: ...
