"""Scores a model directory's pairs with HuggingFace transformers and compares them with
`reward-lens score` output: `python scripts/check_transformers.py MODEL_DIR PAIRS.jsonl SCORES.jsonl [DEVICE]`
(DEVICE: cpu by default, or cuda).

Used to check that directories written by `reward-lens train` / `reward-lens organism` load in
transformers with the same scores (not part of `cargo test`: it needs torch)."""
import json
import sys

import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model_dir, pairs_path, scores_path = sys.argv[1:4]
device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
tok = AutoTokenizer.from_pretrained(model_dir)
# transformers 4.56 renamed `torch_dtype` to `dtype` (an older one would take `dtype` as a config
# field), and 5 loads the checkpoint's own dtype by default: ask for f32 by the right name, check.
key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
# A model with its own code (ArmoRM's modeling_custom.py, named by config.json's auto_map) runs
# that code, as users load it; without it transformers builds a plain model with a fresh head.
with open(f"{model_dir}/config.json") as f:
    custom = "auto_map" in json.load(f)
model = AutoModelForSequenceClassification.from_pretrained(
    model_dir, trust_remote_code=custom, **{key: torch.float32}
).to(device).eval()
assert next(model.parameters()).dtype == torch.float32
pairs = [json.loads(l) for l in open(pairs_path) if l.strip()]
ours = [json.loads(l) for l in open(scores_path) if l.strip()]
if len(ours) != len(pairs) or not pairs:
    sys.exit(f"{scores_path} has {len(ours)} scored pairs, {pairs_path} {len(pairs)}: nothing to compare")
worst = worst_rel = 0.0
with torch.no_grad():
    for p, o in zip(pairs, ours):
        for side in ("chosen", "rejected"):
            msgs = [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p[side]}]
            text = tok.apply_chat_template(msgs, tokenize=False)
            ids = tok(text, add_special_tokens=False, return_tensors="pt").to(device)
            out = model(**ids)
            # ArmoRM returns its preference score beside the objectives' rewards (its logits).
            r = (out.score[0] if getattr(out, "score", None) is not None else out.logits[0, 0]).item()
            d = abs(r - o[f"{side}_score"])
            worst, worst_rel = max(worst, d), max(worst_rel, d / max(1.0, abs(r)))
# Relative beyond 1: real checkpoints' rewards (and activations) can be large.
print(f"{len(pairs)} pairs, worst |transformers - reward-lens| = {worst:.2e} ({worst_rel:.2e} relative)")
sys.exit(0 if worst_rel <= 1e-4 else 1)
