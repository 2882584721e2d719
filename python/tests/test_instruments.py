"""Every instrument equals the command's output on the same inputs (to float rounding), and
the properties the numbers must have: decompositions add up, patching matches AtP's target."""

import json
import subprocess

import numpy as np
import pytest

import reward_lens_rs as rl
from conftest import MODELS, PAIRS, FIXTURES, REPO, close

LLAMA = MODELS / "llama"


def run_cli(cli, *args):
    subprocess.run([str(cli), *map(str, args)], check=True, capture_output=True, text=True)


def cli_json(cli, tmp_path, command, *args):
    out = tmp_path / f"{command}.json"
    run_cli(cli, command, "--model", LLAMA, *args, "--out", out)
    return json.loads(out.read_text())


def cli_lines(path):
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


@pytest.fixture(scope="module")
def model():
    # Named as the command names it, so the envelopes' "model" fields agree.
    return rl.load(str(LLAMA))


@pytest.mark.parametrize(
    "command,call",
    [
        ("lens", lambda m: rl.lens(m, PAIRS)),
        ("attribute", lambda m: rl.attribute(m, PAIRS, heads=True)),
        ("probe", lambda m: rl.probe(m, permutations=2000)),
        ("concepts", lambda m: rl.concepts(m, steer="verbosity")),
        ("conflict", lambda m: rl.conflict(m, PAIRS)),
        ("diagnose", lambda m: rl.diagnose(m, truncate_prompt=True, progress=False)),
    ],
)
def test_instrument_equals_command(cli, tmp_path, model, command, call):
    extra = {
        "lens": ["--pairs", PAIRS],
        "attribute": ["--pairs", PAIRS, "--heads"],
        "probe": ["--permutations", "2000"],
        "concepts": ["--steer", "verbosity"],
        "conflict": ["--pairs", PAIRS],
        "diagnose": ["--truncate-prompt"],
    }[command]
    want = cli_json(cli, tmp_path, command, *extra)
    got = rl.to_json(call(model))
    close(got, want)


def test_eval_and_score_equal_command(cli, tmp_path, model):
    out = tmp_path / "eval.json"
    run_cli(cli, "eval", "--model", LLAMA, "--pairs", PAIRS, "--out", out)
    close(rl.to_json(rl.eval(model, PAIRS, progress=False)), json.loads(out.read_text()))
    lines = tmp_path / "score.jsonl"
    run_cli(cli, "score", "--model", LLAMA, "--pairs", PAIRS, "--out", lines)
    close(model.score_pairs(PAIRS, progress=False), cli_lines(lines))
    rb2 = FIXTURES.parents[0] / "fixtures" / "rewardbench2" / "rows.jsonl"
    run_cli(cli, "eval", "--model", LLAMA, "--pairs", rb2, "--out", out)
    close(rl.to_json(rl.eval(model, rb2, progress=False)), json.loads(out.read_text()))


def test_rewardbench2_unpaired_ties_are_undefined_with_the_reason(model, tmp_path):
    # Only a `ref:` row in Ties: the composite, and so the leaderboard mean, are None with why.
    row = json.loads((FIXTURES / "rewardbench2" / "rows.jsonl").read_text().splitlines()[0])
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps(dict(row, subset="Factuality")) + "\n" + json.dumps(dict(row, id="ref:1", subset="Ties")) + "\n")
    (e,) = rl.eval(model, f, progress=False)
    assert e["mean"] is None
    assert e["mean_undefined"] == "the RewardBench 2 mean is over all 2 subsets, and Ties is undefined"
    ties = e["subsets"][1]
    assert ties["score"] is None and ties["ties"]["score"] is None and ties["ties"]["n_paired"] == 0
    assert ties["ties"]["undefined"].startswith("no prompt id has both a `ref:<n>` and a `tied:<n>` row")
    assert isinstance(e["subsets"][0]["score"], float)


@pytest.mark.parametrize("command", ["patch", "atp"])
def test_patching_equals_command(cli, tmp_path, model, command):
    out = tmp_path / f"{command}.jsonl"
    run_cli(cli, command, "--model", LLAMA, "--pairs", PAIRS, "--granularity", "head", "--out", out)
    want = cli_lines(out)
    fn = rl.patch if command == "patch" else rl.atp
    rep = fn(model, PAIRS, granularity="head", progress=False)["report"]
    names = [c["name"] for c in rep["components"]]
    assert len(rep["pairs"]) == len(want)
    for p, line in zip(rep["pairs"], want):
        close(dict(zip(names, p["effects"].tolist())), line["effects"])
        close(dict(zip(names, p["normalized"].tolist())), line["normalized"])
        close(p["original_margin"], line["original_margin"])


def test_divergence_reference_equals_command(cli, tmp_path, model):
    # Python's divergence_reference= is the command's --divergence-reference, pair by pair.
    out = tmp_path / "patch.jsonl"
    run_cli(cli, "patch", "--model", LLAMA, "--pairs", PAIRS, "--divergence-reference", PAIRS, "--out", out)
    want = cli_lines(out)
    rep = rl.patch(model, PAIRS, divergence_reference=PAIRS, progress=False)["report"]
    got = rl.to_json(rep["divergence"])["pairs"]
    assert len(got) == len(want) == len(rep["pairs"])
    for i, (g, line) in enumerate(zip(got, want)):
        # The command checks one pair at a time, so its `pair` is always 0.
        assert g.pop("pair") == i
        w = dict(line["divergence"])
        w.pop("pair")
        close(g, w)
    with pytest.raises(ValueError, match="applies to patch, not atp"):
        rl.atp(model, PAIRS, divergence_reference=PAIRS, progress=False)
    with pytest.raises(ValueError, match="sublayer"):
        rl.patch(model, PAIRS, granularity="head", divergence_reference=PAIRS, progress=False)


def test_verified_atp_is_patching_where_it_verifies(model):
    exact = rl.patch(model, PAIRS, granularity="head", progress=False)["report"]
    verified = rl.atp(model, PAIRS, granularity="head", verify_top=2, progress=False)["report"]
    for x, v in zip(exact["pairs"], verified["pairs"]):
        assert len(v["exact"]) == 2
        for k in v["exact"]:
            assert abs(v["effects"][k] - x["effects"][k]) < 1e-5 * (1 + abs(x["effects"][k]))
    with pytest.raises(ValueError, match="verify_top"):
        rl.patch(model, PAIRS, verify_top=2, progress=False)


def test_path_patch_and_faithfulness_equal_command(cli, tmp_path, model):
    out = tmp_path / "paths.jsonl"
    run_cli(cli, "path-patch", "--model", LLAMA, "--pairs", PAIRS, "--sender", "0.1", "--out", out)
    rep = rl.path_patch(model, PAIRS, sender="0.1")["report"]
    for p, line in zip(rep["pairs"], cli_lines(out)):
        close({e["receiver"]: e["effect"] for e in p["paths"]}, line["effects"])
    out = tmp_path / "faith.jsonl"
    run_cli(cli, "faithfulness", "--model", LLAMA, "--pairs", PAIRS, "--out", out)
    rep = rl.faithfulness(model, PAIRS)["report"]
    for p, line in zip(rep["pairs"], cli_lines(out)):
        for k in ("dla_vs_patch", "atp_vs_patch"):
            close(p[k], line[k])
    # Residual positions have no attribution to rank against: the command's refusal, not a crash.
    with pytest.raises(ValueError, match="granularity residual has no DLA"):
        rl.faithfulness(model, PAIRS, granularity="residual")


def test_compare_equals_command(cli, tmp_path):
    a, b = rl.load(str(MODELS / "llama")), rl.load(str(MODELS / "mistral"))
    out = tmp_path / "compare.json"
    run_cli(cli, "compare", "--model", MODELS / "llama", "--model", MODELS / "mistral", "--pairs", PAIRS, "--out", out)
    close(rl.to_json(rl.compare([a, b], PAIRS)), json.loads(out.read_text()))


def test_attribution_adds_up(model):
    rep = rl.attribute(model, PAIRS)["report"]
    for p in rep["pairs"]:
        for side in ("chosen", "rejected"):
            s = p[side]
            total = float(np.sum(s["contributions"])) + s["bias"]
            assert abs(total - s["reward"]) <= 1e-5 * max(1.0, abs(s["reward"]))
        np.testing.assert_allclose(p["differential"], p["chosen"]["contributions"] - p["rejected"]["contributions"], atol=1e-6)


def test_lens_ends_at_the_reward(model):
    rep = rl.lens(model, PAIRS)["report"]
    scores = model.score_pairs(PAIRS, progress=False)
    for p, s in zip(rep["pairs"], scores):
        for side in ("chosen", "rejected"):
            lens = p[side]
            assert abs(lens["normed"][-1] - s[f"{side}_score"]) <= 1e-5
            assert abs(lens["frozen"][-1] - s[f"{side}_score"]) <= 1e-5
            assert abs(lens["reward"] - s[f"{side}_score"]) <= 1e-5


def test_patch_report_types_and_normalisation(model):
    rep = rl.patch(model, rl.example_pairs()[:3], progress=False)["report"]
    assert isinstance(rep["pairs"][0]["effects"], np.ndarray) and rep["pairs"][0]["effects"].dtype == np.float64
    assert isinstance(rep["components"], list) and isinstance(rep["components"][0]["name"], str)
    for p in rep["pairs"]:
        assert p["effects"].shape == (len(rep["components"]),)
        # normalized = effect / original margin.
        np.testing.assert_allclose(p["normalized"] * p["original_margin"], p["effects"], rtol=1e-9, atol=1e-12)


def test_zero_ablation_patch_equals_a_hook(model):
    """A `zero` patch of one component is a run_with_hooks with that site zeroed."""
    pair = rl.example_pairs()[0]
    rep = rl.patch(model, [pair], mode="zero", progress=False)["report"]
    names = [c["name"] for c in rep["components"]]
    effect = dict(zip(names, rep["pairs"][0]["effects"]))
    chosen = model.score(pair["prompt"], pair["chosen"])
    rejected = model.score(pair["prompt"], pair["rejected"])
    zeroed = model.run_with_hooks(pair["prompt"], pair["chosen"], hooks=[("blocks.1.hook_mlp_out", "zero")])
    want = (chosen - rejected) - (zeroed - rejected)
    key = next(n for n in names if "mlp" in n and "1" in n)
    assert abs(effect[key] - want) <= 1e-5, (key, effect[key], want)


def test_batched_equals_one_by_one(model):
    pairs = rl.example_pairs()[:5]
    many = rl.lens(model, pairs)["report"]["pairs"]
    for i, p in enumerate(pairs):
        one = rl.lens(model, [p])["report"]["pairs"][0]
        np.testing.assert_allclose(one["chosen"]["normed"], many[i]["chosen"]["normed"], atol=1e-5)
        np.testing.assert_allclose(one["differential"], many[i]["differential"], atol=1e-5)


def test_list_arguments_take_one_item(model):
    pairs = rl.example_pairs()[:2]
    # receivers="all" (as documented) is the default; one receiver name is a list of one.
    def report(r):
        return rl.to_json(r["report"])

    every = report(rl.path_patch(model, pairs, sender="0.1"))
    assert report(rl.path_patch(model, pairs, sender="0.1", receivers="all")) == every
    one = report(rl.path_patch(model, pairs, sender="0.1", receivers="mlp.2"))
    assert one == report(rl.path_patch(model, pairs, sender="0.1", receivers=["mlp.2"]))
    assert [e["receiver"] for e in one["pairs"][0]["paths"]] == ["mlp.2"]
    # No receivers, `all` beside a name it would swallow unchecked, or a name twice: refused.
    for receivers, want in (([], "none given"), (["all", "mlp.9"], "give it alone"), (["mlp.2", "mlp.2"], "given twice")):
        with pytest.raises(rl.InputError, match=want):
            rl.path_patch(model, pairs, sender="0.1", receivers=receivers)
    # One probe file, and one dimension, as a string.
    length = REPO / "data" / "probes" / "length.jsonl"
    a = report(rl.probe(model, probes=str(length), permutations=200))
    b = report(rl.probe(model, probes=[length], permutations=200))
    c = report(rl.probe(model, dimensions="length", permutations=200))
    assert a == b == c
    assert [d["dimension"] for d in a["dimensions"]] == ["length"]
    with pytest.raises(TypeError, match="expected a path or a list of paths, found int\\nwhile processing 'probes'"):
        rl.probe(model, probes=3)


def test_nonsense_settings_are_input_errors(model):
    with pytest.raises(rl.InputError, match="conflict ≤ −orthogonal ≤ 0 ≤ orthogonal ≤ aligned"):
        rl.conflict(model, PAIRS, aligned=0.1, orthogonal=0.5)
    with pytest.raises(rl.InputError, match="group-by field `nosuch`: no pair has it"):
        rl.conflict(model, PAIRS, group_by="nosuch")
    with pytest.raises(rl.InputError, match="no probe has dimension `nosuch`"):
        rl.probe(model, dimensions=["length", "nosuch"])
    with pytest.raises(rl.InputError, match="mean_reference is read by mode=\"mean\" only"):
        rl.patch(model, PAIRS, mean_reference=PAIRS, progress=False)
    with pytest.raises(rl.InputError, match=r"threshold nan|threshold NaN"):
        rl.diagnose(model, threshold=float("nan"), progress=False)
    with pytest.raises(rl.InputError, match="steering strength NaN"):
        rl.concepts(model, steer="verbosity", strengths=[float("nan"), 1.0])
    with pytest.raises(rl.InputError, match="without steer= nothing reads them"):
        rl.concepts(model, pairs=PAIRS)
    with pytest.raises(rl.InputError, match="strengths= is read by steer= only"):
        rl.concepts(model, strengths=[1.0, 5.0])
    with pytest.raises(rl.InputError, match="steering strength 1e39: beyond f32's range"):
        rl.concepts(model, steer="verbosity", strengths=[1e39])
    with pytest.raises(rl.InputError, match="permutations 0: .* needs at least 20"):
        rl.probe(model, permutations=0)


def test_audit_settings_are_checked_before_an_organism_is_built(tmp_path):
    key = tmp_path / "key.json"
    key.write_text('{"rules": []}')
    # No model: the audit would first build (or load) the default organism; these fail at once.
    with pytest.raises(rl.InputError, match="the answer key holds no rules"):
        rl.audit(answer_key=key, out=tmp_path / "a", progress=False)
    with pytest.raises(rl.InputError, match="permutations 5: .* needs at least 20"):
        rl.audit(permutations=5, out=tmp_path / "a", progress=False)
    # Named tail subsets must be some pair's (a misspelling left the CART section empty).
    with pytest.raises(rl.InputError, match="tail subsets safty: no pair has one of them \\(the pairs' subsets: confidence"):
        rl.audit(rl.load(str(MODELS / "llama")), PAIRS, tail_subsets="safty", out=tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()


def test_identical_pairs_are_scored_with_a_warning(model):
    pairs = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "same", "rejected": "same"}]
    with pytest.warns(UserWarning, match="1 of 2 pairs have the same chosen and rejected text"):
        rows = model.score_pairs(pairs, progress=False)
    assert len(rows) == 2 and rows[1]["margin"] == 0.0


def test_the_audit_names_identical_pairs(model, tmp_path):
    pairs = [{"prompt": f"q{i}", "chosen": f"answer {i}", "rejected": f"other {i}"} for i in range(4)]
    pairs[2]["rejected"] = pairs[2]["chosen"]
    with pytest.warns(UserWarning, match="1 of 4 pairs have the same chosen and rejected text"):
        res = rl.audit(model, pairs=pairs, out=tmp_path / "a", permutations=20, progress=False)
    assert len(res["inputs"]["identical_pairs"]) == 1
    titles = [f["title"] for f in res["findings"]]
    assert "Pairs without a difference" in titles
    assert "same chosen and rejected text" in (tmp_path / "a" / "report.html").read_text()
