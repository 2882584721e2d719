"""Type stubs for reward_lens_rs: signatures for editors and type checkers. Docstrings live on
the objects themselves (help(rl.lens))."""

from os import PathLike
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

from . import cart as cart
from . import sae as sae

__version__: str

Path = Union[str, "PathLike[str]"]
# A JSONL file, a list of dicts (prompt, chosen, rejected; optional id, subset, any other
# field) or a pandas DataFrame with those columns.
Pairs = Union[Path, Sequence[Mapping[str, Any]], Any]
# None/True: a tqdm bar when tqdm is installed; False: silent; or f(done, total, message).
Progress = Union[None, bool, Callable[[int, int, Optional[str]], Any]]
# A dict {"site", "action", "value", "positions", "heads"} or (site, action[, value]); action
# "replace" | "add" | "zero" | "scale" | "mean", or f(activation, site) -> new activation | None.
Hook = Union[Mapping[str, Any], tuple]
Report = dict[str, Any]

class RewardLensError(Exception): ...
class ModelError(RewardLensError): ...
class InputError(RewardLensError, ValueError): ...
class SiteError(RewardLensError, ValueError): ...
class FileError(RewardLensError, OSError): ...

class ActivationCache:
    def __getitem__(self, key: str) -> npt.NDArray[np.float32]: ...
    def __contains__(self, name: str) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[str]: ...
    def keys(self) -> list[str]: ...
    def items(self) -> list[tuple[str, npt.NDArray[np.float32]]]: ...
    def stack(self, pattern: str) -> npt.NDArray[np.float32]: ...

class Model:
    @property
    def path(self) -> "PathLike[str]": ...
    @property
    def sites(self) -> list[str]: ...
    @property
    def w_r(self) -> npt.NDArray[np.float32]: ...
    @property
    def b(self) -> float: ...
    def info(self) -> dict[str, Any]: ...
    def reward_direction(
        self, prompt: Optional[str] = None, response: Optional[str] = None, truncate_prompt: bool = False
    ) -> tuple[npt.NDArray[np.float32], float]: ...
    def encode(self, prompt: str, response: str, truncate_prompt: bool = False) -> dict[str, Any]: ...
    def score(self, prompt: str, response: str, truncate_prompt: bool = False) -> float: ...
    def score_pairs(
        self,
        pairs: Pairs,
        batch_size: int = 16,
        padding: str = "right",
        truncate_prompt: bool = False,
        progress: Progress = None,
    ) -> list[dict[str, Any]]: ...
    def run_with_cache(
        self,
        prompt: str,
        response: str,
        names: Union[str, Sequence[str], None] = None,
        hooks: Optional[Sequence[Hook]] = None,
        truncate_prompt: bool = False,
    ) -> tuple[float, ActivationCache]: ...
    def run_with_hooks(self, prompt: str, response: str, hooks: Sequence[Hook], truncate_prompt: bool = False) -> float: ...
    def gradients(
        self,
        prompt: str,
        response: str,
        names: Union[str, Sequence[str]],
        rejected: Optional[str] = None,
        hooks: Optional[Sequence[Hook]] = None,
        truncate_prompt: bool = False,
    ) -> dict[str, Any]: ...

def load(path: Optional[Path] = None, dtype: str = "f32", device: str = "cpu") -> Model: ...
def example_pairs() -> list[dict[str, Any]]: ...
def to_json(obj: Any) -> Any: ...
def lens(
    model: Model, pairs: Pairs, kind: str = "normed", v1_compat: bool = False, batch_size: int = 16, seed: int = 0,
    truncate_prompt: bool = False, progress: Progress = None,
) -> Report: ...
def attribute(
    model: Model, pairs: Pairs, heads: bool = False, neurons: int = 0, v1_compat: bool = False, batch_size: int = 16,
    seed: int = 0, truncate_prompt: bool = False, progress: Progress = None,
) -> Report: ...
def patch(
    model: Model, pairs: Pairs, mode: str = "noising", granularity: str = "sublayer", align: str = "anchored",
    positions: str = "all", mean_reference: Optional[Pairs] = None, v1_compat: bool = False, naive: bool = False,
    verify_top: int = 0, batch_size: int = 16, seed: int = 0, truncate_prompt: bool = False,
    progress: Progress = None, divergence_reference: Optional[Pairs] = None,
) -> Report: ...
def atp(
    model: Model, pairs: Pairs, mode: str = "noising", granularity: str = "sublayer", align: str = "anchored",
    positions: str = "all", mean_reference: Optional[Pairs] = None, v1_compat: bool = False, naive: bool = False,
    verify_top: int = 0, batch_size: int = 16, seed: int = 0, truncate_prompt: bool = False,
    progress: Progress = None, divergence_reference: Optional[Pairs] = None,
) -> Report: ...
def path_patch(
    model: Model, pairs: Pairs, sender: Union[str, tuple[int, int]], receivers: Union[str, Sequence[str], None] = None,
    mode: str = "noising", align: str = "anchored", truncate_prompt: bool = False,
) -> Report: ...
def faithfulness(
    model: Model, pairs: Pairs, mode: str = "noising", granularity: str = "sublayer", align: str = "anchored",
    positions: str = "all", mean_reference: Optional[Pairs] = None, v1_compat: bool = False, batch_size: int = 16,
    seed: int = 0, truncate_prompt: bool = False,
) -> Report: ...
def concepts(
    model: Model, concepts: Union[Path, Sequence[Path], None] = None, layer: Optional[int] = None, v1_compat: bool = False,
    steer: Optional[str] = None, strengths: Optional[Sequence[float]] = None, positions: str = "pooled",
    pairs: Optional[Pairs] = None, batch_size: int = 16, seed: int = 0,
) -> Report: ...
def conflict(
    model: Model, pairs: Pairs, group_by: str = "subset", layer: Optional[int] = None, aligned: float = 0.5,
    orthogonal: float = 0.2, conflict: float = -0.3, batch_size: int = 16, seed: int = 0, truncate_prompt: bool = False,
) -> Report: ...
def compare(models: Sequence[Model], pairs: Pairs, batch_size: int = 16, seed: int = 0, truncate_prompt: bool = False) -> Report: ...
def probe(
    model: Model, probes: Union[Path, Sequence[Path], None] = None, dimensions: Union[str, Sequence[str], None] = None,
    permutations: int = 10000, batch_size: int = 16, seed: int = 0,
) -> Report: ...
def diagnose(
    model: Model, pairs: Optional[Pairs] = None, threshold: float = 0.5, batch_size: int = 16, seed: int = 0,
    truncate_prompt: bool = False, progress: Progress = None,
) -> Report: ...
def eval(
    model: Union[Model, Sequence[Model]], pairs: Pairs, batch_size: int = 16, padding: str = "right",
    truncate_prompt: bool = False, progress: Progress = None,
) -> list[dict[str, Any]]: ...
def organism(
    preset: str = "default", out: Optional[Path] = None, seed: Optional[int] = None, epochs: Optional[int] = None,
    progress: Progress = None,
) -> dict[str, Any]: ...
def cli(args: Sequence[str], keep_model: bool = False) -> None: ...
def merge(shards: Union[Path, Sequence[Path]], out: Path, summary: Optional[Path] = None) -> str: ...
def shard_status(shards: Union[Path, Sequence[Path]]) -> str: ...
def audit(
    model: Optional[Model] = None, pairs: Optional[Pairs] = None, out: Path = "audit-out",
    probes: Union[Path, Sequence[Path], None] = None, concepts: Union[Path, Sequence[Path], None] = None, answer_key: Optional[Path] = None,
    tail_subsets: Sequence[str] = ("tail",), preset: Optional[str] = None, max_pairs: int = 64, batch_size: int = 16,
    permutations: int = 10000, seed: int = 0, truncate_prompt: bool = False, progress: Progress = None,
) -> Report: ...
