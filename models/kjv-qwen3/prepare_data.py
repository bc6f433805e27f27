"""Corpus and tokenizer of the KJV demo model: run on any machine with Debian's bible-kjv.

    apt-get install bible-kjv && pip install tokenizers
    python3 models/kjv-qwen3/prepare_data.py

Writes models/kjv-qwen3/data/{train,heldout}.txt (one verse per line, git-ignored: regenerate them
with this script) and models/kjv-qwen3/{tokenizer.json,tokenizer_config.json} (committed).
The held-out part is Hebrews to Revelation, never trained on; the tokenizer is a byte-level BPE
(as Qwen3's) of 4,096 tokens trained on the training part only.
"""

import json
import os
import re
import subprocess

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
HELD_OUT_FROM = "Hebrews"
VOCAB_SIZE = 4096
SPECIAL = ["<|endoftext|>"]


def verses():
    """(book, text) for every verse of `bible "Gen1:1-Rev22:21"`, wrapped lines joined."""
    raw = subprocess.run(["bible", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    book, current = None, None
    for line in raw.splitlines():
        if not line.strip():
            continue
        header = re.fullmatch(r"((?:[1-3] )?[A-Z][A-Za-z ]*?) (\d+)", line.strip())
        if header and not line.startswith(" "):
            book = header.group(1)
            continue
        verse = re.match(r"\s+\d+ (.*)", line)
        if verse:
            if current:
                yield current
            current = (book, verse.group(1).strip())
        elif current:
            current = (current[0], current[1] + " " + line.strip())
    if current:
        yield current


def main():
    data = os.path.join(HERE, "data")
    os.makedirs(data, exist_ok=True)
    train, heldout, held = [], [], False
    for book, text in verses():
        held = held or book == HELD_OUT_FROM
        (heldout if held else train).append(text)
    for name, lines in [("train", train), ("heldout", heldout)]:
        with open(os.path.join(data, f"{name}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train([os.path.join(data, "train.txt")], trainer)
    tokenizer.save(os.path.join(HERE, "tokenizer.json"))
    with open(os.path.join(HERE, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": SPECIAL[0], "pad_token": SPECIAL[0],
                   "bos_token": None, "add_bos_token": False, "model_max_length": 512}, f, indent=2)
    train_tokens = sum(len(e.ids) for e in tokenizer.encode_batch(train))
    heldout_tokens = sum(len(e.ids) for e in tokenizer.encode_batch(heldout))
    print(f"train: {len(train)} verses, {sum(map(len, train))} characters, {train_tokens} tokens")
    print(f"held out ({HELD_OUT_FROM} to Revelation): {len(heldout)} verses, {sum(map(len, heldout))} characters, {heldout_tokens} tokens")
    print(f"tokenizer: {tokenizer.get_vocab_size()} tokens; 'In the beginning' -> {tokenizer.encode('In the beginning').tokens}")


if __name__ == "__main__":
    main()
