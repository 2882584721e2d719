from typing import Any, Optional

from . import Model, Pairs, Path, Progress

def collect(
    model: Model, pairs: Pairs, site: str, out: Path, positions: str = "response", shard_rows: int = 65536,
    resume: bool = False, progress: Progress = None,
) -> dict[str, Any]: ...
def train(
    acts: Path, out: Path, d_sae: int = 4096, k: int = 32, epochs: int = 10, batch_size: int = 1024, lr: float = 4e-4,
    seed: int = 0, progress: Progress = None,
) -> list[dict[str, Any]]: ...
def features(model: Model, sae: Path, top: int = 10, acts: Optional[Path] = None, pairs: Optional[Pairs] = None) -> dict[str, Any]: ...
def decompose(model: Model, sae: Path, pairs: Pairs, top: int = 10, truncate_prompt: bool = False) -> list[dict[str, Any]]: ...
