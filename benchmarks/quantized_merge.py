"""How much of a trained KRAdapter update survives a merge into a quantized base (bitsandbytes, CPU).

Trains a KRAdapter (default alpha 0.1) on a small Llama quantized to 4-bit NF4 and to 8-bit, then merges it two
ways: requantized in place (kradapter.quant.merge_requantized) and into a full-precision copy
(kradapter.quant.merge_to_full_precision). Prints, per format, the median and worst merge error over the adapted
layers (share of the update lost, and relative to the whole weight) and how far each merged model's logits move from
the unmerged adapted model, next to how far the adapter itself moved them.

    python benchmarks/quantized_merge.py [--steps 40] [--hidden 256]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
from peft import get_peft_model, prepare_model_for_kbit_training
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

import kradapter  # noqa: F401
from kradapter import KRAdapterConfig, quant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    data = torch.randint(0, 512, (args.steps, 8, 32), generator=torch.Generator().manual_seed(1))
    print(
        f"Llama hidden {args.hidden}, 2 layers; KRAdapter on q,k,v,o, alpha {args.alpha}, AdamW lr {args.lr}, "
        f"{args.steps} steps (batch 8 x 32 tokens)"
    )
    print(
        f"{'base':<6} {'lost share of update':>22} {'error / |W|':>16} {'logit shift of':>16} {'requantized':>12} "
        f"{'fp copy':>9}"
    )
    print(f"{'':<6} {'median':>10} {'max':>11} {'median':>16} {'the adapter':>16} {'merge':>12} {'merge':>9}")
    with tempfile.TemporaryDirectory() as directory:
        LlamaForCausalLM(config).save_pretrained(directory)
        for kind in quant.QUANTIZE_CHOICES:
            torch.manual_seed(0)
            base = LlamaForCausalLM.from_pretrained(
                directory, quantization_config=quant.bnb_config(kind), device_map="cpu"
            )
            model = get_peft_model(
                prepare_model_for_kbit_training(base, use_gradient_checkpointing=False),
                KRAdapterConfig(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], alpha=args.alpha),
            )
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
            for x in data:
                model(input_ids=x, labels=x).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            model.eval()
            probe = data[0]
            with torch.no_grad():
                adapted = model(probe).logits
                with model.disable_adapter():
                    plain = model(probe).logits
                full = quant.merge_to_full_precision(model)
                copy_shift = (full(probe).logits - adapted).abs().max().item()
                errors = quant.merge_requantized(model)
                requant_shift = (model(probe).logits - adapted).abs().max().item()
            lost = [e.of_update for e in errors.values()]
            relative = [e.relative for e in errors.values()]
            adapter_shift = (adapted - plain).abs().max().item()
            print(
                f"{kind:<6} {statistics.median(lost):>10.3f} {max(lost):>11.3f} {statistics.median(relative):>16.4f} "
                f"{adapter_shift:>16.4f} {requant_shift:>12.4f} {copy_shift:>9.2e}"
            )
    print(
        "lost share of update: ||W_merged - (W + alpha dW)|| / ||alpha dW||, per adapted layer; logit shifts: max "
        "|logits - logits of the unmerged adapted model| on a training batch"
    )


if __name__ == "__main__":
    main()
