"""An independent LoRA oracle: Hugging Face's own `peft` and `transformers` (pinned in
tests/oracle/requirements-peft.txt, installed into .venv by scripts/setup.sh --oracles) run a
Tiller base model with a PEFT adapter directory, so Tiller's adapters are checked against the
implementation whose layout they copy.

    peft_oracle.py load --base DIR --adapter DIR --inputs IN.safetensors --out OUT.safetensors
    peft_oracle.py make --base DIR --adapter DIR --inputs IN.safetensors --out OUT.safetensors
                        [--rslora] [--seed N]

load: PeftModel.from_pretrained(AutoModelFor...(base), adapter) as a user would run an adapter
      Tiller wrote.
make: get_peft_model(base, LoraConfig(r 4, alpha 8, all seven projections; task SEQ_CLS with the
      score head to save for a sequence-classification base)), every lora_B (and the score head's
      trained copy) set to random non-zero values, then save_pretrained(adapter): an adapter for
      Tiller to read.

IN holds input_ids and attention_mask [B, T] (int64). OUT gets, in fp32: base_outputs (adapters
disabled), outputs (adapted) and, after merge_and_unload(), merged_outputs. Outputs are the logits
[B, T, V] of a causal LM, or a sequence classifier's scores at each row's last real token [B, 1].
For tests only: Tiller itself never runs Python.
"""
import argparse
import json
import os
import sys

# Everything is local: never ask the Hub about a directory name.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def is_classifier(base):
    with open(os.path.join(base, "config.json")) as f:
        architectures = json.load(f).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in architectures)


def load_base(base):
    cls = AutoModelForSequenceClassification if is_classifier(base) else AutoModelForCausalLM
    model = cls.from_pretrained(base, torch_dtype=torch.float32)
    model.eval()
    return model


@torch.no_grad()
def outputs(model, inputs):
    return model(input_ids=inputs["input_ids"],
                 attention_mask=inputs["attention_mask"]).logits.float().contiguous()


def make_adapter(base_model, classifier, rslora, seed, adapter_dir):
    config = LoraConfig(task_type="SEQ_CLS" if classifier else "CAUSAL_LM", r=4, lora_alpha=8,
                        lora_dropout=0.0, target_modules=TARGETS, use_rslora=rslora,
                        modules_to_save=["score"] if classifier else None)
    torch.manual_seed(seed)  # lora_A's Kaiming init: the same adapter every run
    model = get_peft_model(base_model, config)
    # PEFT starts B at zero (the adapted model is the base); random B makes every adapter count.
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
            elif "modules_to_save" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    model.eval()
    model.save_pretrained(adapter_dir, safe_serialization=True)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["load", "make"])
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rslora", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base, adapter = os.path.abspath(args.base), os.path.abspath(args.adapter)

    torch.set_num_threads(1)
    inputs = load_file(args.inputs)
    base_model = load_base(base)
    if args.mode == "load":
        model = PeftModel.from_pretrained(base_model, adapter)
        model.eval()
    else:
        model = make_adapter(base_model, is_classifier(base), args.rslora, args.seed, adapter)
    result = {"outputs": outputs(model, inputs)}
    with model.disable_adapter():
        result["base_outputs"] = outputs(model, inputs)
    merged = model.merge_and_unload()
    merged.eval()
    result["merged_outputs"] = outputs(merged, inputs)
    save_file(result, args.out)
    print(json.dumps({"mode": args.mode, "peft_type": str(model.peft_config["default"].peft_type),
                      "task_type": str(model.peft_config["default"].task_type)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
