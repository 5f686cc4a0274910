"""Generate a synthetic Llama-shaped model family: a base, n experts and example merge configs.

    python -m bench.generate OUT_DIR --size 1GB --experts 4 --dtype bfloat16 \\
        --shard-size 2GB --delta dense|lora --seed 0

``--size`` is the weight bytes of ONE model (the base; every expert has the same size). All
models are written in one pass, tensor by tensor and chunk by chunk, so memory stays at a few
chunks whatever the size. Expert values are (base + δ) computed in fp32 and cast to the dtype,
δ being as described in :mod:`mergehub.demo.deltas`. The family is built in a hidden staging directory
and renamed into place when complete. The generator itself is
:mod:`mergehub.demo.synthetic` (``manage.py demo_setup`` uses it too); this module is its
command line.

Layout of OUT_DIR::

    base/  expert_0/ ... expert_{n-1}/   HF model dirs (weights, config, tokenizer, generation config)
    METHOD.yaml                          a mergekit-style config per method, absolute model paths
    family.json                          what was generated and with which arguments
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from mergehub.demo.synthetic import DELTA_KINDS, ProgressFn, generate_family
from mergehub.engine.api import MergeHubError

__all__ = ["generate_family", "main"]


def _print_progress() -> ProgressFn:
    last = [-1]

    def report(done: int, total: int) -> None:
        percent = int(100 * done / total) if total else 100
        if percent // 5 != last[0]:
            last[0] = percent // 5
            print(f"  {percent:3d}%  {done / 1e9:.2f} / {total / 1e9:.2f} GB", file=sys.stderr, flush=True)

    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", help="directory to create (its parent must exist or be creatable)")
    p.add_argument("--size", default="200MB", help="weight bytes of one model, e.g. 200MB, 1GB, 7GB")
    p.add_argument("--experts", type=int, default=3, help="number of experts (default 3)")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 (default), float16 or float32")
    p.add_argument("--shard-size", default="2GB", help="largest shard, e.g. 2GB (default) or 500MB")
    p.add_argument("--delta", default="dense", choices=DELTA_KINDS,
                   help="dense: Gaussian deltas on every tensor; lora: low-rank deltas on some "
                        "modules of some layers, exact base bytes elsewhere")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tied-embeddings", action="store_true", help="share embed_tokens with lm_head")
    p.add_argument("--sigma", type=float, default=1e-3, help="std of delta entries (default 1e-3)")
    p.add_argument("--spread", type=float, default=1.0,
                   help="dense: log-normal spread of the per-tensor delta scale (0 = uniform)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-modules", default="q_proj,v_proj", help="comma-separated module names")
    p.add_argument("--lora-layers", type=float, default=0.5,
                   help="fraction of layers each LoRA expert touches (default 0.5)")
    p.add_argument("--hidden", type=int, help="force the hidden size (multiple of 64)")
    p.add_argument("--layers", type=int, help="force the number of layers")
    p.add_argument("--vocab", type=int, help="force the vocabulary size")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it holds a generated family")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        paths = generate_family(
            args.out_dir, size=args.size, experts=args.experts, dtype=args.dtype,
            shard_size=args.shard_size, delta=args.delta, seed=args.seed,
            tied_embeddings=args.tied_embeddings, sigma=args.sigma, spread=args.spread,
            lora_rank=args.lora_rank,
            lora_modules=tuple(m.strip() for m in args.lora_modules.split(",") if m.strip()),
            lora_layers=args.lora_layers, hidden=args.hidden, layers=args.layers,
            vocab=args.vocab, force=args.force, progress=_print_progress())
    except MergeHubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    family = json.loads(paths["family"].read_text())
    s = family["shape"]
    print(f"family in {paths['root']} ({time.perf_counter() - started:.1f} s)")
    print(f"  shape: hidden {s['hidden']}, layers {s['layers']}, ffn {s['intermediate']}, heads "
          f"{s['heads']}/{s['kv_heads']} kv, vocab {s['vocab']}, tied {s['tied_embeddings']}")
    print(f"  {s['params'] / 1e6:.1f} M params, {family['model_bytes'] / 1e9:.3f} GB per model, "
          f"{len(paths['experts'])} expert(s) ({args.delta} deltas)")
    for method, path in paths["configs"].items():
        print(f"  config {method}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
