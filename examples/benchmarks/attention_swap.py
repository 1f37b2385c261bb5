"""The cost of the head tap: a torchvision ViT with torch's nn.MultiheadAttention vs the same
weights with snptool's HeadedMultiheadAttention (what `build_model` swaps in).

Times inference (eval, no grad: torch's MHA takes its fused fast path there) and a training
step (forward + backward), interleaved, and checks the logits agree.

    python examples/benchmarks/attention_swap.py [--arch vit_b_16 --size 224 --batch 4]
"""

from __future__ import annotations

import argparse
import json

import torch
import torchvision
from _common import interleaved, machine

from snptool.core.attention import expose_heads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_b_16", help="A torchvision ViT builder.")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    original = torchvision.models.get_model(args.arch, weights=None, image_size=args.size)
    swapped = torchvision.models.get_model(args.arch, weights=None, image_size=args.size)
    swapped.load_state_dict(original.state_dict())
    attentions = len(expose_heads(swapped))
    x = torch.randn(args.batch, 3, args.size, args.size)
    original.eval(), swapped.eval()
    with torch.no_grad():
        difference = float((original(x) - swapped(x)).abs().max())

    def infer(model):
        def run():
            with torch.no_grad():
                model(x)

        return run

    def train_step(model):
        def run():
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()

        return run

    inference = interleaved({"mha": infer(original), "headed": infer(swapped)}, args.rounds)
    original.train(), swapped.train()
    training = interleaved({"mha": train_step(original), "headed": train_step(swapped)}, 3)
    print(
        json.dumps(
            {
                "arch": args.arch,
                "size": args.size,
                "batch": args.batch,
                "attentions_swapped": attentions,
                "max_abs_logit_difference": difference,
                "inference_seconds": {k: round(v, 4) for k, v in inference.items()},
                "inference_ratio": round(inference["headed"] / inference["mha"], 3),
                "train_step_seconds": {k: round(v, 4) for k, v in training.items()},
                "train_step_ratio": round(training["headed"] / training["mha"], 3),
                **machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
