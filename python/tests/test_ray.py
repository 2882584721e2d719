"""reward_lens_rs.ray on a local Ray instance with 2 workers: the merged shards are byte for byte
what one run writes (tasks and actors), a failed shard is named and the others kept, and a rerun
computes only what is missing. Ray is optional: without it these tests skip, unless
REWARD_LENS_REQUIRE_RAY=1 (CI), where they fail."""

import json
import os
import subprocess
import sys

import pytest

import reward_lens_rs as rl
from conftest import MODELS, PAIRS

try:
    import ray
except ImportError:
    if os.environ.get("REWARD_LENS_REQUIRE_RAY") == "1":
        raise
    pytest.skip("ray is not installed (pip install ray)", allow_module_level=True)

import reward_lens_rs.ray as rlray

LLAMA = str(MODELS / "llama")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def single(tmp_path, command, name, extra=()):
    out = tmp_path / name
    rl.cli([*command, "--out", str(out), *extra])
    return out


def test_importing_the_package_does_not_import_ray():
    code = "import sys, reward_lens_rs, reward_lens_rs.ray; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_task_shards_merge_into_one_runs_bytes(tmp_path, local_ray):
    score = ["score", "--model", LLAMA, "--pairs", str(PAIRS)]
    want = single(tmp_path, score, "single.jsonl", ["--summary", str(tmp_path / "single.json")])
    got = rlray.run(score, shards=3, out=tmp_path / "ray.jsonl", merge_args=["--summary", tmp_path / "ray.json"])
    assert got.read_bytes() == want.read_bytes()
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "single.json").read_bytes()
    # The shards are where run() said, one per index, and merge's fingerprint is the run's.
    parts = sorted(p.name for p in (tmp_path / "ray.jsonl.shards").glob("part-*.jsonl"))
    assert parts == [rlray.part_name("score", k, 3) for k in range(3)]
    meta = json.loads((tmp_path / "ray.jsonl.meta.json").read_text())
    assert meta["command"] == "score" and "shard" not in meta

    lens = ["lens", "--model", LLAMA, "--pairs", str(PAIRS), "--batch-size", "5"]
    want = single(tmp_path, lens, "lens.json")
    assert rlray.run(lens, shards=4, out=tmp_path / "lens-ray.json").read_bytes() == want.read_bytes()


def test_actor_shards_merge_into_one_runs_bytes(tmp_path, local_ray):
    patch = ["patch", "--model", LLAMA, "--pairs", str(PAIRS), "--granularity", "head"]
    want = single(tmp_path, patch, "patch.jsonl")
    got = rlray.run(patch, shards=5, out=tmp_path / "ray.jsonl", actors=2)
    assert got.read_bytes() == want.read_bytes()


def test_audit_shards_merge_into_one_runs_results(tmp_path, local_ray):
    audit = ["audit", "--model", LLAMA, "--pairs", str(PAIRS)]
    want = single(tmp_path, audit, "single")
    got = rlray.run(audit, shards=2, out=tmp_path / "ray")

    def results(d):
        v = json.loads((d / "results.json").read_text())
        v.pop("timings"), v.pop("total_seconds")
        return v

    assert results(got) == results(want)
    assert results(got)["inputs"]["pairs_used"] == 20


def test_a_failed_shard_is_named_and_the_rest_kept_then_a_rerun_computes_only_what_is_missing(tmp_path, local_ray):
    # Pair 18 (shard 2 of 3: pairs 13..19) has an empty chosen response: that shard alone fails.
    # One pair per batch: blocks of 8 pairs (a shard scores the whole blocks its range touches,
    # so a bad pair also fails a neighbour sharing its block).
    rows = [json.loads(l) for l in PAIRS.read_text().splitlines()]
    rows[17]["chosen"] = ""
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    score = ["score", "--model", LLAMA, "--pairs", str(bad), "--batch-size", "2"]
    out = tmp_path / "scores.jsonl"
    with pytest.raises(rlray.ShardsFailed) as e:
        rlray.run(score, shards=3, out=out)
    assert list(e.value.failed) == [2]
    assert "shard 2/3" in str(e.value) and "bad.jsonl:18" in str(e.value)
    workdir = tmp_path / "scores.jsonl.shards"
    kept = sorted(p.name for p in workdir.glob("part-*.jsonl"))
    assert kept == [rlray.part_name("score", k, 3) for k in (0, 1)]
    assert not out.exists()

    # On good input: drop one finished shard; a rerun computes it alone, the others untouched.
    score = ["score", "--model", LLAMA, "--pairs", str(PAIRS)]
    workdir = tmp_path / "good.shards"
    rlray.run(score, shards=3, out=tmp_path / "good.jsonl", workdir=workdir)
    stamps = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}
    gone = rlray.part_name("score", 1, 3)
    (workdir / gone).unlink()
    (workdir / (gone + ".meta.json")).unlink()
    assert "2 done, 0 partial, 1 missing" in rlray.status(workdir)
    rlray.run(score, shards=3, out=tmp_path / "again.jsonl", workdir=workdir)
    for name, t in stamps.items():
        if not name.startswith(gone):
            assert (workdir / name).stat().st_mtime_ns == t, f"{name} was recomputed"
    assert (workdir / gone).exists()
    want = single(tmp_path, score, "single.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == want.read_bytes()


def test_a_workdir_made_by_another_command_or_other_inputs_is_refused(tmp_path, local_ray):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(PAIRS.read_text().splitlines(keepends=True)[:6]))
    score = ["score", "--model", LLAMA, "--pairs", str(pairs)]
    out = tmp_path / "s.jsonl"
    rlray.run(score, shards=2, out=out)
    first = out.read_bytes()
    # Another model: its shards would be merged as this one's.
    with pytest.raises(ValueError, match="holds the shards of another run \\(command"):
        rlray.run(["score", "--model", str(MODELS / "gpt2"), "--pairs", str(pairs)], shards=2, out=out)
    # The same command after the pairs file changed in place.
    pairs.write_text("".join(PAIRS.read_text().splitlines(keepends=True)[14:20]))
    with pytest.raises(ValueError, match=f"changed since: {pairs}"):
        rlray.run(score, shards=2, out=out)
    assert out.read_bytes() == first
    # fresh=True starts over and gives the new pairs' scores.
    rlray.run(score, shards=2, out=out, fresh=True)
    assert [json.loads(l)["id"] for l in out.read_text().splitlines()] == list(range(14, 20))
    # Shards without a record of what made them (copied in by hand) are refused too.
    (out.with_name("s.jsonl.shards") / "run.json").unlink()
    with pytest.raises(ValueError, match="no run.json"):
        rlray.run(score, shards=2, out=out)
    # The run's own files inside a folder it reads (here: the model's) are not among its inputs.
    import shutil

    model = tmp_path / "m"
    shutil.copytree(MODELS / "llama", model)
    inside = ["score", "--model", str(model), "--pairs", str(pairs)]
    first = rlray.run(inside, shards=2, out=model / "s.jsonl").read_bytes()
    assert rlray.run(inside, shards=2, out=model / "s.jsonl").read_bytes() == first


def test_bad_commands_are_refused_before_ray_runs_anything(tmp_path, local_ray):
    with pytest.raises(ValueError, match="sharded commands are"):
        rlray.run(["info"], shards=2, out=tmp_path / "x")
    with pytest.raises(ValueError, match="--out: run\\(\\) sets it"):
        rlray.run(["score", "--pairs", str(PAIRS), "--out", "x.jsonl"], shards=2, out=tmp_path / "x")
    with pytest.raises(TypeError, match="command: a list of arguments"):
        rlray.run("score --pairs x", shards=2, out=tmp_path / "x")
    with pytest.raises(ValueError, match="actors=0: at least 1"):
        rlray.run(["score", "--pairs", str(PAIRS)], shards=2, out=tmp_path / "x", actors=0)
