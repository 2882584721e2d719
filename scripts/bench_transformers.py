"""Times HuggingFace transformers scoring a model directory the way `reward-lens bench` times
ours: batches of random token ids (never the ids below 3), `--seq-len` tokens each, best of
`--iters` after one warm-up, and prints one JSON object.

    python scripts/bench_transformers.py MODEL_DIR --device cuda --dtype bf16 --batch-sizes 1,8,16

    python scripts/bench_transformers.py MODEL_DIR --pair-lengths lengths.json

With `--pair-lengths` (the JSON `reward-lens bench --lengths --json` prints) it instead times the
same pairs' sequences, random ids of those lengths, at that batch size with right padding: batches
in input order (a pair's two sides together, as a plain loop over a preference file scores them)
and sorted longest first over the whole file. It reports real (unpadded) tokens per second, as
`bench --lengths` does, so the two tools' rows compare directly.

Used by scripts/gpu-check.sh for the side-by-side figures (it needs torch and transformers; not
part of the tests). `--attn` picks transformers' attention implementation (sdpa by default, its
fastest built-in one)."""
import argparse
import json
import time

import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForSequenceClassification

ap = argparse.ArgumentParser()
ap.add_argument("model_dir")
ap.add_argument("--device", default="cuda")
ap.add_argument("--dtype", default="bf16", choices=["f32", "bf16", "f16"])
ap.add_argument("--seq-len", type=int, default=128)
ap.add_argument("--batch-sizes", default="1,8,32")
ap.add_argument("--iters", type=int, default=3)
ap.add_argument("--attn", default="sdpa")
ap.add_argument("--pair-lengths", metavar="LENGTHS.json")
a = ap.parse_args()

dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
# transformers 4.56 renamed `torch_dtype` to `dtype`; an older one would take `dtype` as a config
# field and silently load f32 weights, so pick the name by version and check the result.
key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
model = AutoModelForSequenceClassification.from_pretrained(a.model_dir, attn_implementation=a.attn, **{key: dtype})
model = model.to(a.device).eval()
assert next(model.parameters()).dtype == dtype, f"loaded {next(model.parameters()).dtype}, asked for {dtype}"
vocab = model.config.vocab_size
gen = torch.Generator().manual_seed(11)


def sync():
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()


def pair_orders(spec):
    """Input order and sorted by length, for the pairs of `bench --lengths --json`."""
    per = max(spec["batch"] // 2, 1)
    seqs = [torch.randint(3, vocab, (n,), generator=gen) for pair in spec["sequences"] for n in pair]
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    n_pairs = len(spec["sequences"])
    longer = [max(len(seqs[2 * i]), len(seqs[2 * i + 1])) for i in range(n_pairs)]
    orders = {"input order": list(range(n_pairs)), "sorted by length": sorted(range(n_pairs), key=lambda i: -longer[i])}
    real = sum(len(s) for s in seqs)
    out = []
    for name, order in orders.items():
        batches = []
        for start in range(0, n_pairs, per):
            rows = [seqs[j] for i in order[start:start + per] for j in (2 * i, 2 * i + 1)]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, seq in enumerate(rows):
                ids[r, :len(seq)] = seq
                mask[r, :len(seq)] = 1
            batches.append((ids.to(a.device), mask.to(a.device)))
        slots = sum(ids.numel() for ids, _ in batches)
        best = float("inf")
        for i in range(a.iters + 1):
            sync()
            t = time.perf_counter()
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask).logits.float().cpu()
            if i > 0:  # the first is the warm-up
                best = min(best, time.perf_counter() - t)
        out.append({"order": name, "seconds": best, "tokens_per_s": real / best, "padding": 1 - real / slots})
    return out


rows = []
orders = None
with torch.no_grad():
    if a.pair_lengths:
        orders = pair_orders(json.load(open(a.pair_lengths)))
        a.batch_sizes = ""
    for bs in [int(b) for b in a.batch_sizes.split(",") if b]:
        ids = torch.randint(3, vocab, (bs, a.seq_len), generator=gen).to(a.device)
        mask = torch.ones_like(ids)
        best = float("inf")
        for i in range(a.iters + 1):
            sync()
            t = time.perf_counter()
            model(input_ids=ids, attention_mask=mask).logits.float().cpu()
            if i > 0:  # the first is the warm-up
                best = min(best, time.perf_counter() - t)
        rows.append({"batch": bs, "seq_len": a.seq_len, "seconds_per_batch": best, "tokens_per_s": bs * a.seq_len / best})
peak = torch.cuda.max_memory_allocated() if a.device.startswith("cuda") else None
print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                  "device": a.device, "dtype": a.dtype, "attn": a.attn, "speed": rows, "orders": orders, "peak_gpu_bytes": peak}))
