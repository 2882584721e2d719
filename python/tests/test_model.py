"""The model surface: loading, scores against transformers, the cache, hooks, gradients and the
reward direction, with the shapes and dtypes the README documents."""

import json
import threading
import time

import numpy as np
import pytest

import reward_lens_rs as rl
from conftest import MODELS, PAIRS, FIXTURES

PROMPT = "How do I boil an egg?"
RESPONSE = "Place the egg in a pot of cold water, bring it to a boil, then simmer for nine minutes."
ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gpt2", "armorm"]


def expected(arch):
    return json.loads((FIXTURES / "expected" / arch / "forward.json").read_text())


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_match_transformers(arch):
    m = rl.load(MODELS / arch)
    exp = expected(arch)
    pairs = [json.loads(l) for l in PAIRS.read_text().splitlines()]
    lines = m.score_pairs(PAIRS, progress=False)
    assert len(lines) == len(exp["pairs"]) == len(pairs)
    for line, e in zip(lines, exp["pairs"]):
        for side in ("chosen", "rejected"):
            want = e[side]["score"]
            got = line[f"{side}_score"]
            assert abs(got - want) <= 1e-4 * max(1.0, abs(want)), (arch, e["pair"], side, got, want)
            assert line[f"{side}_tokens"] == e[side]["n_tokens"]
    # One at a time equals batched.
    for p, line in zip(pairs[:4], lines[:4]):
        assert abs(m.score(p["prompt"], p["chosen"]) - line["chosen_score"]) <= 1e-5


def test_embedded_model_and_info():
    m = rl.load()
    info = m.info()
    assert info["architecture"] == "llama" or info["architecture"] == "Llama"
    assert info["n_layers"] == 3 and info["d_model"] == 64
    assert isinstance(m.score(PROMPT, RESPONSE), float)
    assert m.path.exists()


def test_encode_tokens(llama):
    e = llama.encode(PROMPT, RESPONSE)
    assert e["ids"].dtype == np.int64 and e["ids"].ndim == 1
    assert len(e["tokens"]) == len(e["ids"])
    assert 0 < e["response_start"] < len(e["ids"])
    assert e["pooled_index"] == len(e["ids"]) - 1


def test_cache_shapes_and_dtypes(llama):
    score, cache = llama.run_with_cache(PROMPT, RESPONSE)
    n = len(llama.encode(PROMPT, RESPONSE)["ids"])
    d = llama.info()["d_model"]
    heads = llama.info()["n_heads"]
    assert len(cache) == len(llama.sites)
    assert list(cache) == llama.sites  # firing order
    r = cache["blocks.2.hook_resid_post"]
    assert r.dtype == np.float32 and r.shape == (n, d)
    assert cache["blocks.0.attn.hook_pattern"].shape == (heads, n, n)
    assert cache["blocks.0.attn.hook_z"].shape[0] == n
    stacked = cache.stack("blocks.*.hook_resid_post")
    assert stacked.shape == (3, n, d)
    np.testing.assert_array_equal(stacked[2], r)
    with pytest.raises(rl.SiteError, match="different shapes"):
        cache.stack("blocks.0.*")  # residual streams beside attention patterns
    assert "blocks.2.hook_resid_post" in cache and "blocks.9.hook_resid_post" not in cache
    with pytest.raises(KeyError):
        cache["blocks.9.hook_resid_post"]
    assert 3 not in cache
    # Read-only: what every access and stack() show is what the model computed.
    with pytest.raises(ValueError, match="read-only"):
        r[0, 0] = 5.0
    with pytest.raises(rl.SiteError, match="an empty list caches nothing"):
        llama.run_with_cache(PROMPT, RESPONSE, names=[])
    only, c2 = llama.run_with_cache(PROMPT, RESPONSE, names=["blocks.*.hook_resid_post"])
    assert only == score and c2.keys() == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]


def test_reward_direction_reads_the_reward(llama):
    score, cache = llama.run_with_cache(PROMPT, RESPONSE, names=["ln_final.hook_normalized"])
    normed = cache["ln_final.hook_normalized"]
    pooled = llama.encode(PROMPT, RESPONSE)["pooled_index"]
    w, b = llama.w_r, llama.b
    assert w.dtype == np.float32 and w.shape == (llama.info()["d_model"],)
    assert abs(float(normed[pooled] @ w) + b - score) <= 1e-5
    w2, b2 = llama.reward_direction()
    np.testing.assert_array_equal(w, w2)
    assert b == b2


def test_armorm_direction_depends_on_input():
    m = rl.load(MODELS / "armorm")
    with pytest.raises(rl.InputError, match="reward_direction"):
        m.w_r
    w, b = m.reward_direction(PROMPT, RESPONSE)
    score, cache = m.run_with_cache(PROMPT, RESPONSE, names=["ln_final.hook_normalized"])
    pooled = m.encode(PROMPT, RESPONSE)["pooled_index"]
    assert abs(float(cache["ln_final.hook_normalized"][pooled] @ w) + b - score) <= 1e-4 * max(1, abs(score))


def test_replacing_an_activation_with_itself_keeps_the_score(llama):
    score, cache = llama.run_with_cache(PROMPT, RESPONSE)
    for site in ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "blocks.2.hook_mlp_out"]:
        same = llama.run_with_hooks(PROMPT, RESPONSE, hooks=[(site, "replace", cache[site])])
        assert same == score, site


def test_hooks_change_the_score_as_asked(llama):
    score, cache = llama.run_with_cache(PROMPT, RESPONSE)
    site = "blocks.2.hook_mlp_out"
    zeroed = llama.run_with_hooks(PROMPT, RESPONSE, hooks=[{"site": site, "action": "zero"}])
    assert zeroed != score
    # zero == replace with zeros == scale by 0 == a callable returning zeros == in-place edit.
    assert llama.run_with_hooks(PROMPT, RESPONSE, hooks=[(site, "replace", np.zeros_like(cache[site]))]) == zeroed
    assert llama.run_with_hooks(PROMPT, RESPONSE, hooks=[(site, "scale", 0.0)]) == zeroed
    assert llama.run_with_hooks(PROMPT, RESPONSE, hooks=[(site, lambda a, name: np.zeros_like(a))]) == zeroed

    def in_place(a, name):
        assert name == site and a.shape == cache[site].shape
        a[:] = 0

    assert llama.run_with_hooks(PROMPT, RESPONSE, hooks=[(site, in_place)]) == zeroed
    # add(x) then add(-x) is no change.
    v = np.ones(cache[site].shape[-1], dtype=np.float32)
    back = llama.run_with_hooks(PROMPT, RESPONSE, hooks=[(site, "add", v), (site, "add", -v)])
    assert abs(back - score) <= 1e-6
    # Restricted to positions: zeroing position 0's MLP output of the last layer changes
    # nothing at the pooled token (causal attention after the last MLP: none).
    only0 = llama.run_with_hooks(PROMPT, RESPONSE, hooks=[{"site": site, "action": "zero", "positions": [0]}])
    assert only0 == score


def test_hook_errors(llama):
    with pytest.raises(rl.SiteError, match="blocks.7.hook_resid_post"):
        llama.run_with_hooks(PROMPT, RESPONSE, hooks=[("blocks.7.hook_resid_post", "zero")])
    with pytest.raises(rl.InputError, match="unknown action"):
        llama.run_with_hooks(PROMPT, RESPONSE, hooks=[("blocks.0.hook_resid_post", "explode")])
    with pytest.raises(rl.SiteError, match="broadcast"):
        llama.run_with_hooks(PROMPT, RESPONSE, hooks=[("blocks.0.hook_resid_post", "replace", np.zeros(3))])
    # A misspelt key would drop its restriction and zero every position: refused by name.
    with pytest.raises(rl.InputError, match="unknown key `position` \\(expected site, action, value, positions, heads\\)"):
        llama.run_with_hooks(PROMPT, RESPONSE, hooks=[{"site": "blocks.0.hook_resid_post", "action": "zero", "position": [0]}])
    for factor in (float("nan"), 1e39):  # 1e39 is infinite as float32
        with pytest.raises(rl.InputError, match="scale value must be a finite number within f32's range"):
            llama.run_with_hooks(PROMPT, RESPONSE, hooks=[("blocks.0.hook_resid_post", "scale", factor)])
    with pytest.raises(rl.InputError, match="\"zero\" takes no value"):
        llama.run_with_hooks(PROMPT, RESPONSE, hooks=[("blocks.0.hook_resid_post", "zero", 0.5)])
    # A NaN or infinite value (1e300 is infinite as float32) would pass for the model's overflow.
    for value in (np.full(64, np.nan), np.full(64, 1e300)):
        with np.errstate(over="ignore"), pytest.raises(rl.InputError, match="hooks\\[0\\] value: element 0 is (NaN|inf) .*must be finite"):
            llama.run_with_hooks(PROMPT, RESPONSE, hooks=[("blocks.0.hook_resid_post", "add", value)])
    with pytest.raises(rl.InputError, match="hook at blocks.0.hook_resid_post: element 0 is NaN"):
        llama.run_with_hooks(PROMPT, RESPONSE, hooks=[("blocks.0.hook_resid_post", lambda a, name: a * np.nan)])

    def boom(a, name):
        raise ZeroDivisionError("from the hook")

    with pytest.raises(ZeroDivisionError, match="from the hook"):
        llama.run_with_hooks(PROMPT, RESPONSE, hooks=[("blocks.0.hook_resid_post", boom)])
    # One hook not in a list would be read as a list of its fields.
    s = "blocks.0.hook_resid_post"
    for bare in ({"site": s, "action": "zero"}, (s, "zero"), s):
        with pytest.raises(rl.InputError, match="wrap a single hook in \\[...\\]"):
            llama.run_with_hooks(PROMPT, RESPONSE, hooks=bare)
    # None is no value (numpy would make it NaN); a callable computes its own.
    for hook in ((s, "replace", None), {"site": s, "action": "add", "value": None}):
        with pytest.raises(rl.InputError, match="needs a value"):
            llama.run_with_hooks(PROMPT, RESPONSE, hooks=[hook])
    with pytest.raises(rl.InputError, match="a callable action takes no value"):
        llama.run_with_hooks(PROMPT, RESPONSE, hooks=[(s, lambda a, name: a, 123)])


def test_one_name_is_a_list_of_one(llama):
    site = "blocks.1.hook_resid_post"
    score, one = llama.run_with_cache(PROMPT, RESPONSE, names=site)
    _, listed = llama.run_with_cache(PROMPT, RESPONSE, names=[site])
    assert one.keys() == listed.keys() == [site]
    assert np.array_equal(one[site], listed[site])
    g = llama.gradients(PROMPT, RESPONSE, names=site)
    # Gradient runs use the composed (unfused) ops: the same reward to float rounding.
    assert list(g["grads"]) == [site] and abs(g["score"] - score) <= 1e-5
    with pytest.raises(TypeError, match="expected a string or a list of strings, found int\\nwhile processing 'names'"):
        llama.run_with_cache(PROMPT, RESPONSE, names=3)


def test_an_intervention_that_overflows_the_final_norm_is_an_error(llama):
    # x · 1e25 is finite, but its square is not: the final norm would divide by ∞ and the
    # reward would be the head's bias (0), a number the model never computed.
    with pytest.raises(rl.ModelError, match="NaN, not a number"):
        llama.run_with_hooks(PROMPT, RESPONSE, hooks=[("blocks.2.hook_resid_post", lambda a, name: a * 1e25)])
    # x · 1e15 squares fine: the reward is the model's own (RMSNorm is scale-invariant).
    score = llama.score(PROMPT, RESPONSE)
    big = llama.run_with_hooks(PROMPT, RESPONSE, hooks=[("blocks.2.hook_resid_post", lambda a, name: a * 1e15)])
    assert abs(big - score) <= 1e-5 * max(1.0, abs(score))


def test_gradients_match_finite_differences(llama):
    site = "blocks.1.hook_resid_post"
    g = llama.gradients(PROMPT, RESPONSE, names=[site])
    score, cache = llama.run_with_cache(PROMPT, RESPONSE, names=[site])
    assert abs(g["score"] - score) <= 1e-5 and abs(g["objective"] - score) <= 1e-5
    grad, value = g["grads"][site], g["values"][site]
    assert grad.shape == value.shape == cache[site].shape and grad.dtype == np.float32
    # The gradient run uses composed (differentiable) ops: equal to float rounding.
    np.testing.assert_allclose(value, cache[site], rtol=1e-4, atol=1e-5)
    # Directional derivative along the gradient, by a central difference on the activation.
    eps = 1e-2
    u = grad / np.linalg.norm(grad)
    up = llama.run_with_hooks(PROMPT, RESPONSE, hooks=[(site, "add", eps * u)])
    down = llama.run_with_hooks(PROMPT, RESPONSE, hooks=[(site, "add", -eps * u)])
    assert abs((up - down) / (2 * eps) - np.linalg.norm(grad)) <= 2e-2 * np.linalg.norm(grad)
    # With rejected: the margin's gradient, a leading axis of 2.
    m = llama.gradients(PROMPT, RESPONSE, names=[site], rejected="Eggs are food.")
    assert m["grads"][site].shape[0] == 2
    assert abs(m["objective"] - (m["score"][0] - m["score"][1])) <= 1e-5
    # A callable hook on the two-text batch sees (and returns) its leading axis of 2.
    seen = []

    def identity(a, name):
        seen.append(a.shape)
        return a

    h = llama.gradients(PROMPT, RESPONSE, names=[site], rejected="Eggs are food.", hooks=[(site, identity)])
    assert seen == [m["values"][site].shape] and h["objective"] == m["objective"]
    # Names that match nothing are an error, as in run_with_cache, not empty results.
    for names in ([], "blocks.*.hook_nothing"):
        with pytest.raises(rl.SiteError, match="match no site"):
            llama.gradients(PROMPT, RESPONSE, names=names)


def test_pairs_as_list_dataframe_and_path_agree(llama, tmp_path):
    pd = pytest.importorskip("pandas")
    rows = [json.loads(l) for l in PAIRS.read_text().splitlines()][:6]
    # The same six pairs as a file (a pair's reward depends on its batch-mates in the last bits).
    six = tmp_path / "six.jsonl"
    six.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = llama.score_pairs(six, progress=False)
    b = llama.score_pairs(rows, progress=False)
    c = llama.score_pairs(pd.DataFrame(rows), progress=False)
    d = llama.score_pairs([{k: v for k, v in r.items() if k not in ("id", "subset")} for r in rows], progress=False)
    assert a == b == c
    assert [x["margin"] for x in d] == [x["margin"] for x in a]
    assert [x["id"] for x in d] == list(range(6))
    # A gap in the id column makes pandas store floats: the ids stay integers.
    gap = pd.DataFrame([rows[0], {k: v for k, v in rows[1].items() if k != "id"}, rows[2]])
    assert [x["id"] for x in llama.score_pairs(gap, progress=False)] == [rows[0]["id"], 1, rows[2]["id"]]
    # An array-valued extra column is carried as a list, not a numpy error.
    arr = pd.DataFrame([dict(rows[0], tags=np.array([1, 2]))])
    assert llama.score_pairs(arr, progress=False)[0]["margin"] == llama.score_pairs(rows[:1], progress=False)[0]["margin"]
    # A wrongly typed field is named; one dict is not a list of its keys.
    with pytest.raises(rl.InputError, match="pairs\\[0\\]: field `subset` must be a string, found 3"):
        llama.score_pairs([dict(rows[0], subset=3)], progress=False)
    with pytest.raises(rl.InputError, match="pairs: got one dict; pass a list of dicts"):
        llama.score_pairs(rows[0], progress=False)
    with pytest.raises(rl.InputError, match="mean_reference: empty"):
        rl.patch(llama, rows, mode="mean", mean_reference=[], progress=False)
    for x in a:
        assert set(x) == {"id", "subset", "chosen_score", "rejected_score", "margin", "correct", "chosen_tokens", "rejected_tokens"}
        assert x["correct"] == (x["margin"] > 0)


def test_pair_ids_and_formats_follow_the_jsonl_reader(llama):
    rows = [json.loads(l) for l in PAIRS.read_text().splitlines()][:2]
    ids = lambda ps: [x["id"] for x in llama.score_pairs(ps, progress=False)]
    # None in a dict is the JSONL reader's null, not the pair's index.
    assert ids([dict(rows[0], id=None), rows[1]]) == [None, 1]
    # NaN or infinity has no JSON number: refused naming the field (not the index, not None).
    for bad in (float("nan"), float("inf"), np.float64("nan")):
        with pytest.raises(rl.InputError, match=r"pairs\[0\]: field `id` is (NaN|inf), not a finite number"):
            llama.score_pairs([dict(rows[0], id=bad), rows[1]], progress=False)
    # Ids that no JSON number here holds exactly: give them as strings.
    with pytest.raises(rl.InputError, match=r"pairs\[0\]: field `id` is the integer 1180591620717411303424, too large to be kept exactly .*as a string"):
        llama.score_pairs([dict(rows[0], id=2**70)], progress=False)
    with pytest.raises(rl.InputError, match=r"pairs\[0\]: field `id` is the number 1e\+300, too large to be kept exactly.*as a string"):
        llama.score_pairs([dict(rows[0], id=1e300)], progress=False)
    assert ids([dict(rows[0], id=str(2**70))]) == [str(2**70)]
    # A missing id is the pair's index; equal to another pair's explicit id, both are named.
    no_id = {k: v for k, v in rows[1].items() if k != "id"}
    with pytest.raises(rl.InputError, match=r"pairs\[1\]: id 1 is given twice: pairs\[0\] has the explicit id 1, and pairs\[1\] has no `id`"):
        llama.score_pairs([dict(rows[0], id=1), no_id], progress=False)
    # Conversation (messages) rows are named as such.
    msgs = {"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}
    with pytest.raises(rl.InputError, match=r"pairs\[0\]: field `chosen` is a list of messages .*the conversation \(messages\) format is not read"):
        llama.score_pairs([msgs], progress=False)
    # In a DataFrame a NaN or None cell is missing: the id is the index; an infinite one is refused.
    pd = pytest.importorskip("pandas")
    assert ids(pd.DataFrame([dict(rows[0], id=float("nan")), rows[1]])) == [0, 1]
    with pytest.raises(rl.InputError, match=r"pairs\[0\]: field `id` is inf"):
        llama.score_pairs(pd.DataFrame([dict(rows[0], id=float("inf")), rows[1]]), progress=False)


def test_errors_name_what_is_wrong(tmp_path, llama):
    with pytest.raises(rl.FileError, match="nowhere"):
        rl.load(tmp_path / "nowhere")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(rl.InputError, match=r"bad.jsonl:2"):
        llama.score_pairs(bad)
    with pytest.raises(rl.InputError, match="rejected"):
        llama.score_pairs([{"prompt": "p", "chosen": "a"}])
    with pytest.raises(rl.InputError, match="padding"):
        llama.score_pairs(PAIRS, padding="middle")
    with pytest.raises(rl.InputError, match="mode"):
        rl.patch(llama, PAIRS, mode="sideways")
    with pytest.raises(rl.InputError, match="dtype"):
        rl.load(MODELS / "llama", dtype="f8")
    with pytest.raises(rl.InputError, match="empty"):
        llama.score("", RESPONSE)
    cfg = tmp_path / "model"
    cfg.mkdir()
    for f in (MODELS / "llama").iterdir():
        (cfg / f.name).write_bytes(f.read_bytes())
    c = json.loads((cfg / "config.json").read_text())
    c["hidden_size"] = 65
    (cfg / "config.json").write_text(json.dumps(c))
    with pytest.raises(rl.ModelError):
        rl.load(cfg)
    c["hidden_size"] = 64
    c["rope_parameters"]["rope_theta"] = 0
    (cfg / "config.json").write_text(json.dumps(c))
    with pytest.raises(rl.ModelError, match=r"config.json: field `rope_parameters.rope_theta`"):
        rl.load(cfg)
    c["rope_parameters"]["rope_theta"] = 500000.0
    (cfg / "config.json").write_text(json.dumps(c))
    # A shard index naming a file outside the folder is a FileError naming the entry.
    index = {"metadata": {}, "weight_map": {"score.weight": "../../etc/passwd"}}
    (cfg / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(rl.FileError, match=r"weight_map.score.weight"):
        rl.load(cfg)
    (cfg / "model.safetensors.index.json").unlink()
    # Every class is a RewardLensError; InputError is also a ValueError.
    assert issubclass(rl.InputError, ValueError) and issubclass(rl.ModelError, rl.RewardLensError)


def test_harmless_extra_tensors_warn_and_mismatched_ones_fail(tmp_path):
    import struct

    def add_tensor(path, name, rows):
        # Append one f32 tensor to a safetensors file (header rewritten, data appended).
        data = path.read_bytes()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8 : 8 + n])
        body = data[8 + n :]
        header[name] = {"dtype": "F32", "shape": [rows, 64], "data_offsets": [len(body), len(body) + rows * 64 * 4]}
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        path.write_bytes(struct.pack("<Q", len(h)) + h + body + b"\0" * (rows * 64 * 4))

    d = tmp_path / "m"
    d.mkdir()
    for f in (MODELS / "llama").iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    add_tensor(d / "model.safetensors", "lm_head.weight", 4)
    with pytest.warns(UserWarning, match="lm_head.weight"):
        m = rl.load(d)
    assert m.score(PROMPT, RESPONSE) == rl.load(MODELS / "llama").score(PROMPT, RESPONSE)
    add_tensor(d / "model.safetensors", "model.layers.7.mlp.up_proj.weight", 4)
    with pytest.raises(rl.ModelError, match="layer 7"):
        rl.load(d)


def test_gil_is_released_during_compute(llama):
    pairs = rl.example_pairs() * 10
    ticks = []
    done = threading.Event()

    def work():
        llama.score_pairs(pairs, batch_size=2, progress=False)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    t.join()
    # The main thread kept running while the scoring thread computed.
    assert len(ticks) > 5


def test_ctrl_c_interrupts_a_long_run(llama):
    import _thread

    pairs = rl.example_pairs() * 50
    timer = threading.Timer(0.3, _thread.interrupt_main)
    start = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        rl.patch(llama, pairs, progress=False)
    took = time.perf_counter() - start
    timer.cancel()
    one = time.perf_counter()
    rl.patch(llama, pairs[:20], progress=False)
    per20 = time.perf_counter() - one
    # Stopped long before the 1000 pairs would have finished.
    assert took < 0.3 + 10 * per20
    # The model is still usable.
    assert isinstance(llama.score(PROMPT, RESPONSE), float)


def test_progress_callable_sees_every_batch(llama):
    seen = []
    llama.score_pairs(PAIRS, batch_size=4, progress=lambda done, total, msg: seen.append((done, total)))
    assert seen[-1] == (20, 20)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
