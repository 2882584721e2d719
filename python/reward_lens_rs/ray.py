"""Population runs on Ray: one `reward-lens` command over N shards, merged into exactly what one
run writes (the bytes of `reward-lens COMMAND --out OUT`; the audit's results.json timings aside).

    import ray
    import reward_lens_rs.ray as rlray

    ray.init()                    # a laptop: local workers; a cluster: ray.init(address="auto")
    rlray.run(["score", "--model", "models/rm", "--pairs", "big.jsonl"], shards=16, out="scores.jsonl",
              merge_args=["--summary", "summary.json"])
    rlray.run(["patch", "--model", "models/rm", "--pairs", "big.jsonl", "--device", "cuda:0"],
              shards=8, out="patch.jsonl", actors=8, num_gpus=1)

Each shard is `COMMAND … --shard K/N --out PART`, run in-process on a worker by
`reward_lens_rs.cli` (the wheel is all a machine needs). The worker writes its part in a
temporary directory of its own and returns the files; the driver keeps them in `workdir`
(default `OUT.shards/`) and runs `reward-lens merge`. The model folder and the input files must
be readable at the same path on every machine (a shared file system, or Ray's runtime_env).

- Tasks (default): one Ray task per shard, each loading the model once.
- Actors (`actors=K`, e.g. one per GPU with `num_gpus=1`): K long-lived workers share the shards;
  each loads the model once and keeps it for every shard it runs. With `num_gpus`, Ray gives
  each worker its GPU as `cuda:0` (CUDA_VISIBLE_DEVICES); the wheel must be a CUDA build.

A shard that fails does not stop the others: `run` keeps what finished, then raises
`ShardsFailed` naming each failed shard and its error. Calling `run` again computes only the
shards not yet in `workdir` (a shard's files land there only once it succeeded). `status(workdir)`
says which are done. Ray itself is needed only by `run`: `import reward_lens_rs` never imports it.

`workdir/run.json` records the command and what it reads (each file argument's SHA-256, each
directory argument's file sizes and modification times): a later `run` with another command, or
after the pairs file or the model folder changed, is refused instead of merging the old shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ._errors import RewardLensError
from ._native import cli as _cli
from ._native import shard_status as _shard_status

# What each sharded command writes with --out: a file (suffix) or, for the audit, a directory.
SHARDED = {
    "score": ".jsonl",
    "eval": ".jsonl",
    "lens": ".json",
    "attribute": ".json",
    "patch": ".jsonl",
    "atp": ".jsonl",
    "path-patch": ".jsonl",
    "faithfulness": ".jsonl",
    "audit": "",
}


class ShardsFailed(RewardLensError):
    """Some shards of a run failed; `failed` maps each shard index to its error message. The shards
    that finished are kept in the run's `workdir`: calling `run` again computes only the others."""

    def __init__(self, message: str, failed: Dict[int, str]):
        super().__init__(message)
        self.failed = failed


def _ray():
    try:
        import ray  # noqa: PLC0415 (optional dependency)
    except ImportError as e:
        raise ImportError("reward_lens_rs.ray needs Ray: pip install ray") from e
    return ray


def part_name(command: str, k: int, n: int) -> str:
    """The file (or, for the audit, directory) name of shard `k` of `n` in a run's `workdir`."""
    return f"part-{k:05d}-of-{n:05d}{SHARDED[command]}"


def _done(workdir: Path, command: str, k: int, n: int) -> bool:
    # The driver writes a shard's files only after it succeeded, its fingerprint last.
    return (workdir / (part_name(command, k, n) + ".meta.json")).is_file()


def _reads(args: Sequence[str], own: Sequence[Path] = ()) -> Dict[str, Any]:
    """What the command reads, as it is now: every argument naming an existing file (the SHA-256 of
    its bytes) or directory (each file's relative path, size and modification time), leaving out
    the run's `own` outputs (the workdir and `out` may lie inside such a directory)."""
    own = [o.resolve() for o in own]

    def ours(q: Path) -> bool:
        r = q.resolve()
        return any(r == o or o in r.parents or r.name.startswith(o.name) and r.parent == o.parent for o in own)

    reads: Dict[str, Any] = {}
    for a in args:
        p = Path(a)
        try:
            if p.is_file():
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                reads[a] = h.hexdigest()
            elif p.is_dir():
                reads[a] = sorted(
                    [str(q.relative_to(p)), q.stat().st_size, q.stat().st_mtime_ns]
                    for q in p.rglob("*")
                    if q.is_file() and not ours(q)
                )
        except OSError:
            continue  # unreadable here: the command itself will say so
    return reads


def _same_run(workdir: Path, args: List[str], out: Path) -> None:
    """Refuses a workdir whose shards another command, or other inputs, made; records this run."""
    manifest = workdir / "run.json"
    now = {"command": args, "reads": _reads(args, own=[workdir, out])}
    if manifest.is_file():
        before = json.loads(manifest.read_text())
        if before != now:
            if before.get("command") != args:
                what = f"command {before.get('command')}, now {args}"
            else:
                old, new = before.get("reads", {}), now["reads"]
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                what = "changed since: " + ", ".join(changed)
            raise ValueError(
                f"{workdir} holds the shards of another run ({what}); pass fresh=True to start over, "
                "or another workdir"
            )
        return
    if any(workdir.glob("part-*")):
        raise ValueError(
            f"{workdir} holds shards but no run.json saying which command and inputs made them; "
            "pass fresh=True to start over, or another workdir"
        )
    tmp = manifest.with_name("run.json.partial")
    tmp.write_text(json.dumps(now, indent=1))
    os.replace(tmp, manifest)


def run_shard(args: Sequence[str], k: int, n: int, keep_model: bool = False) -> Dict[str, bytes]:
    """Runs shard `k` of `n` of the command line `args` in this process, in a temporary directory;
    returns its files (relative path → bytes): the output and its `.meta.json` fingerprint.
    What a Ray worker executes; callable by hand to run one shard anywhere."""
    command = args[0]
    tmp = tempfile.mkdtemp(prefix="reward-lens-shard-")
    try:
        out = os.path.join(tmp, part_name(command, k, n))
        _cli([*args, "--shard", f"{k}/{n}", "--out", out], keep_model=keep_model)
        files = {}
        for root, _, names in os.walk(tmp):
            for name in names:
                p = os.path.join(root, name)
                with open(p, "rb") as f:
                    files[os.path.relpath(p, tmp)] = f.read()
        return files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Worker:
    """An actor: keeps the model it loads for every shard it is given."""

    def run(self, args: List[str], k: int, n: int) -> Dict[str, bytes]:
        return run_shard(args, k, n, keep_model=True)


def _keep(workdir: Path, files: Dict[str, bytes]) -> None:
    # Fingerprints last: a shard is done once its .meta.json is there.
    for rel in sorted(files, key=lambda r: r.endswith(".meta.json")):
        p = workdir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".partial")
        tmp.write_bytes(files[rel])
        os.replace(tmp, p)


def run(
    command: Sequence[Any],
    shards: int,
    out: Any,
    *,
    workdir: Optional[Any] = None,
    actors: Optional[int] = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    merge_args: Sequence[Any] = (),
    fresh: bool = False,
) -> Path:
    """Runs `reward-lens COMMAND…` (a list: command name and flags, without --out and --shard) as
    `shards` shards on the Ray cluster `ray.init()` connected to, and merges them into `out`.

    workdir: where the shards' files are kept (default `OUT.shards`); shards already there are not
    run again (`fresh=True` empties it first). actors: run on this many long-lived workers, each
    loading the model once for all its shards (default: one task per shard). num_cpus, num_gpus:
    Ray resources of each task or actor (its Rust threads follow num_cpus). merge_args: extra
    flags for `reward-lens merge` (`["--summary", "summary.json"]` for score). Returns `out`.
    """
    if isinstance(command, (str, bytes)):
        raise TypeError(f"command: a list of arguments, e.g. ['score', '--pairs', 'pairs.jsonl'], not the string {command!r}")
    if actors is not None and actors < 1:
        raise ValueError(f"actors={actors}: at least 1 (or None for one task per shard)")
    ray = _ray()
    args = [str(a) for a in command]
    if not args or args[0] not in SHARDED:
        raise ValueError(f"command {args[:1]}: sharded commands are {', '.join(SHARDED)}")
    for flag in ("--out", "--shard", "--resume"):
        if any(a == flag or a.startswith(flag + "=") for a in args):
            raise ValueError(f"{flag}: run() sets it for each shard; leave it out of the command")
    if shards < 1:
        raise ValueError(f"shards={shards}: at least 1")
    name = args[0]
    out = Path(out)
    workdir = Path(workdir) if workdir is not None else out.with_name(out.name + ".shards")
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _same_run(workdir, args, out)
    todo = [k for k in range(shards) if not _done(workdir, name, k, shards)]
    # Rust threads per worker: as many as the CPUs Ray gives it.
    env = {"env_vars": {"RAYON_NUM_THREADS": str(max(1, int(num_cpus)))}}
    failed: Dict[int, str] = {}

    def collect(ref, k):
        try:
            _keep(workdir, ray.get(ref))
        except Exception as e:  # noqa: BLE001 (a shard's failure is reported with the others)
            failed[k] = str(getattr(e, "cause", None) or e)

    if todo and actors:
        worker = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, runtime_env=env)(_Worker)
        pool = [worker.remote() for _ in range(min(actors, len(todo)))]
        queue = list(todo)
        running = {}
        for a in pool:
            if queue:
                k = queue.pop(0)
                running[a.run.remote(args, k, shards)] = (k, a)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            k, a = running.pop(ready[0])
            collect(ready[0], k)
            if queue:
                k = queue.pop(0)
                running[a.run.remote(args, k, shards)] = (k, a)
        for a in pool:
            ray.kill(a)
    elif todo:
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, runtime_env=env, max_retries=0)(run_shard)
        running = {task.remote(args, k, shards): k for k in todo}
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            collect(ready[0], running.pop(ready[0]))
    if failed:
        lines = "; ".join(f"shard {k}/{shards}: {msg}" for k, msg in sorted(failed.items()))
        raise ShardsFailed(
            f"{len(failed)} of {shards} shards failed ({lines}); the {shards - len(failed)} others are kept in "
            f"{workdir}: run again to compute only the failed ones",
            failed,
        )
    # This run's parts by name: a workdir may also hold another N's.
    parts = [str(workdir / part_name(name, k, shards)) for k in range(shards)]
    _cli(["merge", "--out", str(out), *[str(a) for a in merge_args], *parts])
    return out


def status(workdir: Any) -> str:
    """Which shards of the run in `workdir` are done, partial or missing: prints the table
    `reward-lens status` prints and returns it (`reward_lens_rs.shard_status`)."""
    text = _shard_status([str(workdir)])
    print(text, end="")
    return text
