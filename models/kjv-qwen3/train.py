"""Train the KJV demo model with PyTorch and HF transformers' Qwen3ForCausalLM.

Run on a machine with a GPU (torch, transformers and tokenizers installed), from the repository root, after
prepare_data.py has written data/:
    python3 models/kjv-qwen3/train.py OUT_DIR [--preset deep]
The default preset is the committed 4.2M-parameter demo model; `deep` is a 49M-parameter one (12 layers,
hidden 512, 8 query heads on 4 kv heads of 128) for the cache formats' accuracy table, where a small
model may understate the outliers of deeper ones. It is too large to commit: train it where it is evaluated.
OUT_DIR receives the checkpoint (config.json, generation_config.json, model.safetensors in bf16), the
tokenizer files, train_log.json (losses, held-out perplexity) and hf_reference.json (HF greedy
continuations and held-out perplexity of the saved bf16 weights, the references the Rust tests and
docs/ACCURACY.md compare against). Seeded: a rerun on the same machine gives the same model.

Model selection never sees the held-out books: the last VALIDATION_TOKENS tokens of the training part
(the end of Philemon and before it) are held back from training and used to pick the best step.
"""

import json
import math
import os
import shutil
import sys
import time

import torch
import transformers
from tokenizers import Tokenizer
from transformers import Qwen3Config, Qwen3ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20261129
CONTEXT = 512
BATCH = 64
STEPS = 1000
EVAL_EVERY = 25
WARMUP = 50
PEAK_LR = 3e-3
VALIDATION_TOKENS = 24_576
EOS = 0  # <|endoftext|>, the tokenizer's only special token
# Qwen3's shape scaled down: head_dim 128 and heads x head_dim > hidden, as in Qwen3-0.6B; GQA 2:1.
CONFIG = dict(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, head_dim=128, max_position_embeddings=CONTEXT,
              rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
              bos_token_id=EOS, eos_token_id=EOS)
# Deeper and wider, the same data and tokenizer; a lower peak learning rate for the larger model.
DEEP = dict(CONFIG, hidden_size=512, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=8,
            num_key_value_heads=4)
PRESETS = {"demo": (CONFIG, PEAK_LR), "deep": (DEEP, 1e-3)}
PROMPTS = ["In the beginning", "And the LORD said unto Moses,", "Blessed are the",
           "For God so loved the world,"]
GREEDY_TOKENS = 48


def tokens_of(tokenizer, name):
    with open(os.path.join(HERE, "data", name), encoding="utf-8") as f:
        text = f.read()
    return torch.tensor(tokenizer.encode(text, add_special_tokens=False).ids, dtype=torch.long)


def batches(train, generator, device):
    """Random CONTEXT+1-token windows of the training stream."""
    starts = torch.randint(0, len(train) - CONTEXT - 1, (BATCH,), generator=generator)
    rows = torch.stack([train[s:s + CONTEXT + 1] for s in starts.tolist()]).to(device)
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def mean_loss(model, tokens, device):
    """Mean next-token loss over consecutive CONTEXT-token windows (each with its own context)."""
    total, count = 0.0, 0
    for begin in range(0, len(tokens) - 1, CONTEXT):
        window = tokens[begin:begin + CONTEXT + 1].to(device)
        if len(window) < 2:
            break
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(window[None, :-1]).logits[0].float()
        total += float(torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum"))
        count += len(window) - 1
    return total / count


@torch.no_grad()
def sliding_perplexity(model, tokens, device, context=CONTEXT, stride=CONTEXT // 2):
    """Perplexity exactly as `nanovllm-cli eval --context C --stride S` scores it: windows of C tokens
    advancing by S; each token is scored once, in the first window that predicts it."""
    nll, count, scored_until, begin = 0.0, 0, 1, 0
    while True:
        end = min(begin + context, len(tokens))
        window = tokens[begin:end].to(device)
        log_probs = torch.log_softmax(model(window[None]).logits[0].double(), dim=-1)
        first = max(scored_until, begin + 1)
        targets = tokens[first:end].to(device)
        nll -= float(log_probs[first - begin - 1:end - begin - 1].gather(1, targets[:, None]).sum())
        count += end - first
        scored_until = end
        if end == len(tokens):
            break
        begin += stride
    return math.exp(nll / count), count


@torch.no_grad()
def greedy(model, prompt_ids, device):
    ids = torch.tensor([prompt_ids], device=device)
    out, margins = [], []
    for _ in range(GREEDY_TOKENS):
        top = torch.topk(model(ids).logits[0, -1].double(), 2)
        margins.append(float(top.values[0] - top.values[1]))
        out.append(int(top.indices[0]))
        ids = torch.cat([ids, top.indices[:1][None]], dim=1)
    return out, margins


def lr_at(step, peak):
    if step < WARMUP:
        return peak * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, STEPS - WARMUP)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(out_dir, device, config, peak_lr):
    tokenizer = Tokenizer.from_file(os.path.join(HERE, "tokenizer.json"))
    stream = tokens_of(tokenizer, "train.txt")
    train_part, validation = stream[:-VALIDATION_TOKENS], stream[-VALIDATION_TOKENS:]
    heldout = tokens_of(tokenizer, "heldout.txt")
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    model = Qwen3ForCausalLM(Qwen3Config(**config)).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=peak_lr, betas=(0.9, 0.95), fused=True)
    log, best = [], (float("inf"), -1, None)
    started = time.time()
    for step in range(STEPS):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, peak_lr)
        inputs, targets = batches(train_part, generator, device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % EVAL_EVERY == 0 or step + 1 == STEPS:
            model.eval()
            val = mean_loss(model, validation, device)
            model.train()
            log.append({"step": step + 1, "train_loss": float(loss), "validation_loss": val,
                        "seconds": round(time.time() - started, 1)})
            print(json.dumps(log[-1]), flush=True)
            if val < best[0]:
                best = (val, step + 1, {k: v.detach().clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    model.to(torch.bfloat16).save_pretrained(out_dir)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": EOS, "eos_token_id": EOS, "do_sample": True, "temperature": 0.8, "top_p": 0.95},
                  f, indent=2)
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(HERE, name), out_dir)
    return {"parameters": parameters, "train_tokens": len(train_part), "validation_tokens": len(validation),
            "heldout_tokens": len(heldout), "seed": SEED, "steps": STEPS, "batch": BATCH, "context": CONTEXT,
            "peak_lr": peak_lr, "best_step": best[1], "best_validation_loss": best[0],
            "train_seconds": round(time.time() - started, 1), "log": log}, tokenizer, heldout


def reference(out_dir, tokenizer, heldout, device):
    """HF's figures for the saved bf16 weights, computed in f32 (as the Rust CPU path computes)."""
    model = Qwen3ForCausalLM.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager").to(device)
    model.eval()
    ppl, scored = sliding_perplexity(model, heldout, device)
    prompts = []
    for text in PROMPTS:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        tokens, margins = greedy(model, ids, device)
        prompts.append({"text": text, "prompt": ids, "greedy": tokens, "margins": margins,
                        "completion": tokenizer.decode(tokens)})
        print(f"{text!r} -> {tokenizer.decode(tokens)!r}", flush=True)
    return {"heldout_perplexity": ppl, "heldout_scored_tokens": scored, "context": CONTEXT, "stride": CONTEXT // 2,
            "greedy_tokens": GREEDY_TOKENS, "prompts": prompts}


def main(out_dir, preset):
    device = "cuda"
    os.makedirs(out_dir, exist_ok=True)
    summary, tokenizer, heldout = train(out_dir, device, *PRESETS[preset])
    summary["preset"] = preset
    ref = reference(out_dir, tokenizer, heldout, device)
    summary["heldout_perplexity_hf_f32"] = ref["heldout_perplexity"]
    print(f"best step {summary['best_step']}: validation loss {summary['best_validation_loss']:.4f}; "
          f"held-out perplexity (HF, f32, context {CONTEXT} stride {CONTEXT // 2}) {ref['heldout_perplexity']:.3f}")
    with open(os.path.join(out_dir, "train_log.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out_dir, "hf_reference.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__, **ref}, f)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 4) or (len(sys.argv) == 4 and (sys.argv[2] != "--preset" or sys.argv[3] not in PRESETS)):
        sys.exit(f"usage: train.py OUT_DIR [--preset {'|'.join(PRESETS)}]")
    main(sys.argv[1], sys.argv[3] if len(sys.argv) == 4 else "demo")
