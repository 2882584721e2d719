"""The long workflows through Python: the audit, CART, SAEs and model organisms, checked
against the command's files and the properties their numbers must have."""

import json
import subprocess

import numpy as np
import pytest

import reward_lens_rs as rl
from conftest import MODELS, REPO, close

LLAMA = MODELS / "llama"
EXAMPLES = REPO / "examples" / "pairs.jsonl"

# Runtime figures that differ between any two runs.
VOLATILE = {"timings", "total_seconds", "seconds"}


def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x


def test_audit_equals_command_and_writes_the_report(cli, tmp_path):
    m = rl.load(str(LLAMA))
    res = rl.audit(m, pairs=EXAMPLES, out=tmp_path / "py", permutations=2000, progress=False)
    assert (tmp_path / "py" / "report.html").stat().st_size > 10_000
    written = json.loads((tmp_path / "py" / "results.json").read_text())
    close(strip(rl.to_json(res)), strip(written))
    subprocess.run(
        [str(cli), "audit", "--model", str(LLAMA), "--pairs", str(EXAMPLES), "--permutations", "2000", "--out", str(tmp_path / "cli")],
        check=True, capture_output=True,
    )
    close(strip(written), strip(json.loads((tmp_path / "cli" / "results.json").read_text())))
    assert res["findings"], "an audit states findings"


def test_cart_discover_equals_command(cli, tmp_path):
    m = rl.load(str(LLAMA))
    opts = dict(tail_subsets=["safety", "sycophancy"], permutations=200, random_sets=5, bootstrap=200)
    got = rl.cart.discover(m, EXAMPLES, progress=False, **opts)
    out = tmp_path / "d.json"
    subprocess.run(
        [str(cli), "cart", "discover", "--model", str(LLAMA), "--pairs", str(EXAMPLES), "--tail-subsets", "safety,sycophancy",
         "--permutations", "200", "--random-sets", "5", "--bootstrap", "200", "--out", str(out)],
        check=True, capture_output=True,
    )
    close(rl.to_json(got), json.loads(out.read_text()))
    assert got["n_pairs"] == 20
    with pytest.raises(rl.InputError, match="unknown option `permutation`"):
        rl.cart.discover(m, EXAMPLES, permutation=10)
    with pytest.raises(rl.InputError, match="option batch_size must be at least 1"):
        rl.cart.discover(m, EXAMPLES, batch_size=0)
    # A discovery report without an intervention to read it, as from the command.
    with pytest.raises(rl.InputError, match="without one of them nothing reads it"):
        rl.cart.train(tmp_path / "ct", preset="tail", discovery=out, progress=False)
    with pytest.raises(rl.InputError, match="option batch_size must be at least 1"):
        rl.cart.oracle(m, EXAMPLES, batch_size=0)
    with pytest.raises(rl.InputError, match='mlp_layers has the wrong type \\(\\[0, 1\\]; expected a string such as "all"'):
        rl.cart.discover(m, EXAMPLES, mlp_layers=[0, 1])
    # List options take one item as a string.
    one = dict(opts, tail_subsets="safety", units="mlp")
    listed = dict(opts, tail_subsets=["safety"], units=["mlp"])
    a, b = (rl.to_json(rl.cart.discover(m, EXAMPLES, progress=False, **o)) for o in (one, listed))
    assert a == b and 0 < a["split"]["n_tail"] < a["n_pairs"] and a["n_units"] < got["n_units"]


def test_cart_oracle_equals_command_and_scores_discovery(cli, tmp_path):
    m = rl.load(str(LLAMA))
    opts = dict(tail_subsets=["safety", "sycophancy"], candidates=4, max_size=3, edges="last")
    got = rl.cart.oracle(m, EXAMPLES, progress=False, **opts)
    out = tmp_path / "o.json"
    subprocess.run(
        [str(cli), "cart", "oracle", "--model", str(LLAMA), "--pairs", str(EXAMPLES), "--tail-subsets", "safety,sycophancy",
         "--candidates", "4", "--max-size", "3", "--edges", "last", "--out", str(out)],
        check=True, capture_output=True,
    )
    close(rl.to_json(got), json.loads(out.read_text()))
    cfg = m.info()
    n_plain = sum(1 for e in got["effects"] if e["unit"]["kind"] != "attn_edge")
    assert n_plain == cfg["n_layers"] * (cfg["d_mlp"] + cfg["n_heads"])
    assert all(e["atp_tail_margin"] is None for e in got["effects"] if e["unit"]["kind"] == "attn_edge")
    assert got["n_tail"] + got["n_head"] == 20 and 0.5 < got["chance_ceiling"] < 1.0
    d = rl.cart.discover(m, EXAMPLES, oracle=out, progress=False, tail_subsets=["safety", "sycophancy"],
                         permutations=200, random_sets=0, screen_top=0)
    c = d["oracle"]
    assert len(c["oracle_units"]) == len(got["circuit"]["units"]) and c["oracle_found"] == got["found"]
    for k in ("precision", "recall", "validated_precision", "validated_recall"):
        assert c[k] is None or 0.0 <= c[k] <= 1.0
    with pytest.raises(rl.InputError, match="edges"):
        rl.cart.oracle(m, EXAMPLES, edges="sideways")


def test_sae_round_trip(cli, tmp_path):
    m = rl.load(str(LLAMA))
    man = rl.sae.collect(m, EXAMPLES, "blocks.1.hook_resid_post", tmp_path / "acts", progress=False)
    assert man["d"] == 64 and man["sequences_done"] == 40 and man["activations"] > 40
    hist = rl.sae.train(tmp_path / "acts", tmp_path / "sae", d_sae=128, k=8, epochs=3, batch_size=64, progress=False)
    assert [h["epoch"] for h in hist] == [0, 1, 2] and all(h["l0"] == 8.0 for h in hist)
    assert hist[-1]["fvu"] < hist[0]["fvu"]
    feats = rl.sae.features(m, tmp_path / "sae", top=5, acts=tmp_path / "acts", pairs=EXAMPLES)
    out = tmp_path / "f.json"
    subprocess.run(
        [str(cli), "sae", "features", "--model", str(LLAMA), "--sae", str(tmp_path / "sae"), "--top", "5",
         "--acts", str(tmp_path / "acts"), "--pairs", str(EXAMPLES), "--out", str(out)],
        check=True, capture_output=True,
    )
    close(rl.to_json(feats), json.loads(out.read_text()))
    # A reward decomposed over latents adds back up to the reward.
    for d in rl.sae.decompose(m, tmp_path / "sae", EXAMPLES, top=5):
        total = d["latent_sum"] + d["decoder_bias"] + d["reconstruction_error"] + d["rest"] + d["bias"]
        assert abs(total - d["reward"]) <= 1e-5 * max(1, abs(d["reward"]))


def test_sae_provenance(cli, tmp_path):
    import shutil
    import warnings

    m = rl.load(str(LLAMA))
    man = rl.sae.collect(m, EXAMPLES, "blocks.1.hook_resid_post", tmp_path / "acts", progress=False)
    rl.sae.train(tmp_path / "acts", tmp_path / "sae", d_sae=32, k=4, epochs=1, batch_size=64, progress=False)
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["model_fingerprint"] == man["model"] and len(man["model"]) == 16
    # Python and the command fingerprint a model alike: no warning either way on the same model.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rl.sae.decompose(m, tmp_path / "sae", EXAMPLES, top=1)
    p = subprocess.run([str(cli), "sae", "decompose", "--model", str(LLAMA), "--sae", str(tmp_path / "sae"),
                        "--pairs", str(EXAMPLES)], check=True, capture_output=True, text=True)
    assert "warning" not in p.stderr
    # Another model of the same width: the decomposition runs, with a warning.
    other = tmp_path / "other"
    shutil.copytree(LLAMA, other)
    (other / "config.json").write_text((LLAMA / "config.json").read_text() + "\n")
    o = rl.load(str(other))
    with pytest.warns(UserWarning, match="trained on activations of another model"):
        rl.sae.features(o, tmp_path / "sae", top=1)
    with pytest.warns(UserWarning, match="sae: this SAE was trained on activations of another model"):
        rl.cart.discover(o, EXAMPLES, units="sae", sae=tmp_path / "sae", tail_subsets="safety", permutations=200,
                         random_sets=0, screen_top=0, progress=False)
    # A collection resumes only with its model, positions and texts.
    with pytest.raises(rl.InputError, match="cannot resume: it was collected from another model"):
        rl.sae.collect(o, EXAMPLES, "blocks.1.hook_resid_post", tmp_path / "acts", resume=True, progress=False)
    with pytest.raises(rl.InputError, match="keeps `response` positions, not `pooled`"):
        rl.sae.collect(m, EXAMPLES, "blocks.1.hook_resid_post", tmp_path / "acts", positions="pooled",
                       resume=True, progress=False)
    pairs = [json.loads(line) for line in EXAMPLES.read_text().splitlines()][::-1]
    with pytest.raises(rl.InputError, match="not the texts given now"):
        rl.sae.collect(m, pairs, "blocks.1.hook_resid_post", tmp_path / "acts", resume=True, progress=False)
    with pytest.raises(rl.InputError, match="not the texts this collection was made from"):
        rl.sae.features(m, tmp_path / "sae", acts=tmp_path / "acts", pairs=pairs)
    with pytest.raises(rl.InputError, match="shard_rows = 0"):
        rl.sae.collect(m, EXAMPLES, "blocks.1.hook_resid_post", tmp_path / "acts0", shard_rows=0)
    with pytest.raises(rl.InputError, match="acts= and pairs= go together"):
        rl.sae.features(m, tmp_path / "sae", acts=tmp_path / "acts")
    assert rl.sae.collect(rl.load(), EXAMPLES, "blocks.1.hook_resid_post", tmp_path / "emb",
                          progress=False)["model"].startswith("embedded-example-model-")


def test_organism_and_cart_train(tmp_path):
    o = rl.organism("control", out=tmp_path / "org", epochs=1, progress=False)
    assert o["report"]["organism"] == "control"
    m = rl.load(o["dir"])
    # The build's held-out accuracy is what eval measures on its test pairs.
    ev = rl.eval(m, o["dir"] / "test.jsonl", progress=False)[0]
    assert ev["n"] == 500 and abs(ev["accuracy"] - o["report"]["test_accuracy"]) <= 1e-9
    rep = rl.cart.train(tmp_path / "cart", preset="tail", n_train=400, n_test=100, epochs=1, regularise=(0.1, 0.1), progress=False)
    assert 0.0 <= rep["tail_accuracy"] <= 1.0 and rep["models"] == [str(tmp_path / "cart")]
    written = json.loads((tmp_path / "cart" / "cart_report.json").read_text())
    close(rl.to_json(rep), written)
    # Refusals of the caller's choices are InputErrors.
    with pytest.raises(rl.InputError, match="unknown organism preset `nope`; known: control"):
        rl.organism("nope", out=tmp_path / "nope", progress=False)
    with pytest.raises(rl.InputError, match="an empty list"):
        rl.eval([], o["dir"] / "test.jsonl", progress=False)


def test_cli_runs_a_command_line_in_process_as_the_binary_does(tmp_path, cli):
    args = ["score", "--model", str(MODELS / "llama"), "--pairs", str(REPO / "tests/fixtures/pairs.jsonl")]
    rl.cli([*args, "--out", str(tmp_path / "py.jsonl")])
    subprocess.run([str(cli), *args, "--out", str(tmp_path / "bin.jsonl")], check=True, capture_output=True)
    assert (tmp_path / "py.jsonl").read_bytes() == (tmp_path / "bin.jsonl").read_bytes()
    with pytest.raises(rl.RewardLensError, match="0 ≤ K < N"):
        rl.cli([*args, "--shard", "3/3", "--out", str(tmp_path / "x.jsonl")])
    with pytest.raises(rl.RewardLensError, match="`bench` runs the binary"):
        rl.cli(["bench"])
    # Paths and numbers are words of the line as subprocess takes them; a bare string is refused
    # (it would not be split), as are bools (flags go by name).
    rl.cli(["score", "--model", MODELS / "llama", "--pairs", REPO / "tests/fixtures/pairs.jsonl", "--batch-size", 16,
            "--out", tmp_path / "paths.jsonl"])
    assert (tmp_path / "paths.jsonl").read_bytes() == (tmp_path / "bin.jsonl").read_bytes()
    with pytest.raises(TypeError, match=r"as a list, e.g. cli\(\["):
        rl.cli("score --pairs p.jsonl")
    with pytest.raises(TypeError, match="argument 1 is a bool"):
        rl.cli(["score", True])
    with pytest.raises(TypeError, match="argument 1 is a dict"):
        rl.cli(["score", {}])


def test_keep_model_reloads_a_folder_whose_files_changed(tmp_path):
    # A kept model is reused while its folder's fingerprint is the same (crates/cli args.rs tests
    # that); a model retrained in place (here: another architecture's files copied over) is loaded
    # again, so the scores are the new model's, as the output's fingerprint says.
    import shutil

    model = tmp_path / "m"
    shutil.copytree(MODELS / "llama", model)
    args = ["score", "--model", str(model), "--pairs", str(REPO / "tests/fixtures/pairs.jsonl")]
    rl.cli([*args, "--out", str(tmp_path / "a.jsonl")], keep_model=True)
    rl.cli([*args, "--out", str(tmp_path / "b.jsonl")], keep_model=True)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    for f in (MODELS / "qwen3").iterdir():
        shutil.copy(f, model / f.name)
    rl.cli([*args, "--out", str(tmp_path / "c.jsonl")], keep_model=True)
    rl.cli([*args, "--out", str(tmp_path / "d.jsonl")])
    assert (tmp_path / "c.jsonl").read_bytes() == (tmp_path / "d.jsonl").read_bytes()
    assert (tmp_path / "c.jsonl").read_bytes() != (tmp_path / "a.jsonl").read_bytes()


def test_merge_and_shard_status_equal_one_run(tmp_path):
    pairs = str(EXAMPLES)
    one = tmp_path / "one.jsonl"
    rl.cli(["score", "--model", str(LLAMA), "--pairs", pairs, "--out", str(one)])
    shards = tmp_path / "shards"
    shards.mkdir()
    rl.cli(["score", "--model", str(LLAMA), "--pairs", pairs, "--shard", "0/3", "--out", str(shards / "s.0.jsonl")])
    for call in (lambda: rl.shard_status([]), lambda: rl.merge([], tmp_path / "none.jsonl")):
        with pytest.raises(rl.InputError, match="no shards given"):
            call()
    with pytest.raises(rl.InputError, match="a path or a list of paths"):
        rl.shard_status(3)
    text = rl.shard_status(shards)  # one directory, or a list of outputs and directories
    assert rl.shard_status([shards / "s.0.jsonl"]) == text
    assert "1 done, 0 partial, 2 missing" in text and "1/3  missing" in text, text
    with pytest.raises(rl.RewardLensError, match="missing shards 1/3, 2/3"):
        rl.merge([shards], tmp_path / "merged.jsonl")
    for k in (1, 2):
        rl.cli(["score", "--model", str(LLAMA), "--pairs", pairs, "--shard", f"{k}/3", "--out", str(shards / f"s.{k}.jsonl")])
    printed = rl.merge([shards], tmp_path / "merged.jsonl", summary=tmp_path / "summary.json")
    assert (tmp_path / "merged.jsonl").read_bytes() == one.read_bytes()
    assert json.loads((tmp_path / "summary.json").read_text())["overall"]["n"] == 20
    assert "accuracy" in printed.lower(), printed
    with pytest.raises(rl.RewardLensError, match="--summary is `score`'s"):
        lens = tmp_path / "lens"
        lens.mkdir()
        rl.cli(["lens", "--model", str(LLAMA), "--pairs", pairs, "--shard", "0/1", "--out", str(lens / "l.0.json")])
        rl.merge([lens], tmp_path / "l.json", summary=tmp_path / "x.json")
