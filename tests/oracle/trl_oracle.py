"""The peers' side of tests/trl_agreement_test.cpp: TRL's trainers and transformers' models on a
batch Tiller wrote, so that Tiller's first-step losses and logits are checked against what a TRL
user would get from the same weights and tokens.

    trl_oracle.py logits DIR   transformers only (runs in .venv's transformers 4.41 as well)
    trl_oracle.py losses DIR   TRL's SFTTrainer, RewardTrainer and DPOTrainer (.venv-peers)

DIR holds Tiller's models as HF directories (policy/, reference/: causal LMs; reward/: a
LlamaForSequenceClassification), batch.json ({"bos", "eos", "pad", "vocab"; "sft": [{"input_ids",
"completion_mask"}], "pairs": [{"prompt_ids", "chosen_ids", "rejected_ids"}]}: each response ends
with EOS) and inputs.safetensors (input_ids, attention_mask [B, T], right-padded).

logits writes DIR/logits-<transformers version>.safetensors: "logits" [B, T, V] of policy/ and
"scores" [B] of reward/ at each row's last real token, and prints the versions as JSON.
losses prints JSON: the versions and each trainer's loss on its first batch, computed by the
trainer itself (its dataset preparation, collator, get_batch_samples and compute_loss, in
training mode, before any update): "sft" (completion-only loss), "reward" (-log sigmoid of the
score margin), "dpo" (sigmoid loss, beta 0.1, the reference's log-probs precomputed
(precompute_ref_log_probs=True) with reference/ as ref_model). Every example forms one batch, so
the loss does not depend on the order TRL's sampler draws them in. For tests only.
"""
import contextlib
import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never ask the Hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: E402


def load(cls, path, **kwargs):
    # transformers 5 names the dtype argument `dtype`; 4.41 only knows `torch_dtype`.
    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = cls.from_pretrained(path, **{key: torch.float32}, **kwargs)
    return model


@torch.no_grad()
def logits(directory):
    inputs = load_file(os.path.join(directory, "inputs.safetensors"))
    policy = load(AutoModelForCausalLM, os.path.join(directory, "policy")).eval()
    reward = load(AutoModelForSequenceClassification, os.path.join(directory, "reward")).eval()
    out = {"logits": policy(input_ids=inputs["input_ids"],
                            attention_mask=inputs["attention_mask"]).logits.float().contiguous(),
           "scores": reward(input_ids=inputs["input_ids"],
                            attention_mask=inputs["attention_mask"]).logits.float()[:, 0]
           .contiguous()}
    save_file(out, os.path.join(directory, f"logits-{transformers.__version__}.safetensors"))
    print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__}))


def word_tokenizer(batch):
    """A tokenizer of the test's vocabulary (token i is "t<i>"): TRL's trainers need one for the
    pad, BOS and EOS ids, while the data comes already tokenized."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(batch["vocab"])}
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=f"t{batch['pad']}"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=f"t{batch['bos']}",
                                   eos_token=f"t{batch['eos']}", pad_token=f"t{batch['pad']}")


def first_batch_loss(trainer):
    """The loss of the trainer's first batch as its training step computes it (one batch, no
    accumulation), without autograd."""
    loader = trainer.get_train_dataloader()
    batches, items = trainer.get_batch_samples(iter(loader), 1, trainer.args.device)
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batches[0], num_items_in_batch=items)
    return float(loss)


def losses(directory):
    import datasets
    import trl

    with open(os.path.join(directory, "batch.json")) as f:
        batch = json.load(f)
    tokenizer = word_tokenizer(batch)
    pairs = batch["pairs"]
    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "trl": trl.__version__}
    with tempfile.TemporaryDirectory(prefix="trl_oracle_") as work, \
            contextlib.redirect_stdout(sys.stderr):
        common = dict(output_dir=work, per_device_train_batch_size=len(pairs), max_steps=1,
                      report_to="none", use_cpu=True, seed=1, disable_tqdm=True,
                      save_strategy="no")
        sft = trl.SFTTrainer(
            model=load(AutoModelForCausalLM, os.path.join(directory, "policy")),
            args=trl.SFTConfig(**dict(common, per_device_train_batch_size=len(batch["sft"])),
                               max_length=None, packing=False, completion_only_loss=True),
            train_dataset=datasets.Dataset.from_list(batch["sft"]), processing_class=tokenizer)
        out["sft"] = first_batch_loss(sft)

        reward_model = load(AutoModelForSequenceClassification, os.path.join(directory, "reward"))
        records = [{"chosen_ids": p["prompt_ids"] + p["chosen_ids"],
                    "rejected_ids": p["prompt_ids"] + p["rejected_ids"]} for p in pairs]
        reward = trl.RewardTrainer(model=reward_model,
                                   args=trl.RewardConfig(**common, max_length=None),
                                   train_dataset=datasets.Dataset.from_list(records),
                                   processing_class=tokenizer)
        out["reward"] = first_batch_loss(reward)

        class PretokenizedDPOTrainer(trl.DPOTrainer):
            # TRL 0.29's _prepare_dataset tokenizes text only: ids pass through.
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                return dataset

        dpo = PretokenizedDPOTrainer(
            model=load(AutoModelForCausalLM, os.path.join(directory, "policy")),
            ref_model=load(AutoModelForCausalLM, os.path.join(directory, "reference")),
            args=trl.DPOConfig(**common, max_length=None, beta=0.1, loss_type="sigmoid",
                               precompute_ref_log_probs=True),
            train_dataset=datasets.Dataset.from_list(pairs), processing_class=tokenizer)
        out["dpo"] = first_batch_loss(dpo)
    print(json.dumps(out))


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("logits", "losses"):
        raise SystemExit("usage: trl_oracle.py logits|losses DIR")
    (logits if sys.argv[1] == "logits" else losses)(sys.argv[2])


if __name__ == "__main__":
    main()
