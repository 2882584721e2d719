"""Wall time of `faithfulness` on 800 pairs (the example pairs × 40, the fixtures' Llama) run once
in-process against reward_lens_rs.ray on a local Ray instance with 2 CPUs: 2 tasks, then 2
actors (README, "Running at scale"). Needs the package and ray installed.

    RAYON_NUM_THREADS=1 python scripts/ray-timing.py
"""
import json
import tempfile
import time
from pathlib import Path

import ray

import reward_lens_rs as rl
import reward_lens_rs.ray as rlray

repo = Path(__file__).resolve().parents[1]
tmp = Path(tempfile.mkdtemp())
rows = [json.loads(l) for l in (repo / "examples/pairs.jsonl").read_text().splitlines()]
big = tmp / "big.jsonl"
big.write_text("".join(json.dumps({**x, "id": f"{r}-{x.get('id')}"}) + "\n" for r in range(40) for x in rows))
cmd = ["faithfulness", "--model", str(repo / "tests/fixtures/models/llama"), "--pairs", str(big)]

t = time.perf_counter()
rl.cli([*cmd, "--out", str(tmp / "one.jsonl")])
one = time.perf_counter() - t
t = time.perf_counter()
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
init = time.perf_counter() - t
t = time.perf_counter()
rlray.run(cmd, shards=2, out=tmp / "tasks.jsonl")
tasks = time.perf_counter() - t
t = time.perf_counter()
rlray.run(cmd, shards=2, out=tmp / "actors.jsonl", actors=2)
actors = time.perf_counter() - t
same = all((tmp / f).read_bytes() == (tmp / "one.jsonl").read_bytes() for f in ("tasks.jsonl", "actors.jsonl"))
print(f"in-process {one:.2f} s; ray.init {init:.2f} s; 2 tasks {tasks:.2f} s; 2 actors {actors:.2f} s; identical: {same}")
