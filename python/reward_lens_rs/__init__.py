"""reward_lens_rs: look inside reward models, with the reward-lens Rust engine.

    import reward_lens_rs as rl
    m = rl.load()                          # the embedded example model, or rl.load("path/to/model")
    m.score("How do I boil an egg?", "Simmer it for nine minutes.")
    score, cache = m.run_with_cache(prompt, response, names=["blocks.*.hook_resid_post"])
    cache["blocks.2.hook_resid_post"]      # numpy float32, [T, d_model]
    rl.lens(m, rl.example_pairs())         # every instrument returns the command's JSON as Python data
    rl.audit(m, out="audit-out")           # the full audit and its HTML report

Instruments return what the command writes with --out, as dicts and lists in which every list
of numbers is a numpy array. Errors are RewardLensError subclasses carrying the library's
message, which names the file, field, tensor or line at fault. Long calls release the GIL,
stop on Ctrl-C and show a tqdm bar when tqdm is installed (progress=False silences it).

rl.cli([...]) runs a `reward-lens` command line in-process; rl.merge(shards, out) joins a sharded
run's outputs into what one run writes and rl.shard_status(shards) says which are done;
reward_lens_rs.ray runs a command over shards on a Ray cluster and merges them (Ray is optional:
only that module needs it).
"""

from ._errors import FileError, InputError, ModelError, RewardLensError, SiteError
from ._native import (
    ActivationCache,
    Model,
    __version__,
    atp,
    attribute,
    compare,
    concepts,
    conflict,
    diagnose,
    eval,
    example_pairs,
    faithfulness,
    lens,
    load,
    organism,
    patch,
    path_patch,
    probe,
    audit,
    cli,
    merge,
    shard_status,
)
from . import cart, sae
from ._json import to_json

__all__ = [
    "ActivationCache",
    "FileError",
    "InputError",
    "Model",
    "ModelError",
    "RewardLensError",
    "SiteError",
    "__version__",
    "atp",
    "attribute",
    "audit",
    "cart",
    "cli",
    "compare",
    "concepts",
    "conflict",
    "diagnose",
    "eval",
    "example_pairs",
    "faithfulness",
    "lens",
    "load",
    "merge",
    "organism",
    "patch",
    "path_patch",
    "probe",
    "sae",
    "shard_status",
    "to_json",
]
