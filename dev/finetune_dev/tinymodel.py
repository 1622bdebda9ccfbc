"""A tiny Llama-architecture chat model built offline in seconds, for tests and `make demo-quick`.

Why: no hub downloads here, and a real trainer run needs a real model directory (config,
safetensors, fast tokenizer with a chat template). A purely random base barely moves under
LoRA, so the base is briefly pre-trained on generic ChatML chats (copying words), which teaches
it the template but not any task the tests then fine-tune on.

The tokenizer deliberately has no pad token: the trainer must set one (and say so).
Built models are cached under `<cache>/tiny-<key>`, where the key hashes every build parameter.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

BUILD_VERSION = 4
PARAMS = {
    "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 640, "max_position_embeddings": 1024,
    "pretrain_steps": 200, "pretrain_lr": 3e-3, "seed": 1234, "version": BUILD_VERSION,
}
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TASK_LABELS = ("billing", "bug", "login", "other")
WORDS = (
    "the a of to and in is it you that he was for on are with as his they be at one have this "
    "from or had by word but what some we can out other were all there when up use your how said "
    "an each she which do their time if will way about many then them write would like so these "
    "her long make thing see him two has look more day could go come did number sound no most "
    "people my over know water than call first who may down side been now find any new work part "
    "take get place made live where after back little only round man year came show every good me "
    "give our under name very through just form sentence great think say help low line differ turn "
    "cause much mean before move right boy old too same tell does set three want air well also "
    "play small end put home read hand port large spell add even land here must big high such "
    "follow act why ask men change went light kind off need house picture try us again animal point "
    "order invoice password login crash error refund payment screen account billing bug other "
    "charge card reset slow broken page signin app update"
).split()


def cache_key() -> str:
    return hashlib.sha256(json.dumps(PARAMS, sort_keys=True).encode()).hexdigest()[:12]


def _chat(rng: random.Random) -> list[dict[str, str]]:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
    kind = rng.random()
    if kind < 0.4:
        user, answer = "repeat: " + " ".join(words), " ".join(words)
    elif kind < 0.7:
        user, answer = "first word: " + " ".join(words), words[0]
    else:
        user, answer = "last word: " + " ".join(words), words[-1]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _render(messages: list[dict[str, str]]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def _train_tokenizer(texts: list[str]):  # type: ignore[no-untyped-def]
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=PARAMS["vocab_size"], special_tokens=SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Whole-word tokens for the synthetic task's labels: one token per answer keeps the tiny
    # model's task learnable by LoRA in a few dozen steps (BPE alone splits them into letters).
    tok.add_tokens([AddedToken(w, single_word=True) for w in TASK_LABELS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", bos_token=None, unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"], model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _pretrain(model, tokenizer, texts: list[str]) -> float:  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(PARAMS["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=PARAMS["pretrain_lr"])
    ids = tokenizer("".join(texts))["input_ids"]
    block, batch = 128, 16
    data = torch.tensor(ids[: (len(ids) // block) * block]).view(-1, block)
    gen = torch.Generator().manual_seed(PARAMS["seed"])
    model.train()
    loss = torch.tensor(0.0)
    for step in range(PARAMS["pretrain_steps"]):
        rows = data[torch.randint(0, data.shape[0], (batch,), generator=gen)]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        for group in opt.param_groups:
            group["lr"] = PARAMS["pretrain_lr"] * (1 - step / PARAMS["pretrain_steps"])
    model.eval()
    return float(loss.detach())


def build_tiny_model(path: str | Path) -> Path:
    """Build (or reuse) the tiny model under cache dir `path`; returns the model directory."""
    target = Path(path) / f"tiny-{cache_key()}"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rng = random.Random(PARAMS["seed"])
    texts = [_render(_chat(rng)) for _ in range(4000)]
    tokenizer = _train_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=PARAMS["hidden_size"],
        intermediate_size=PARAMS["intermediate_size"], num_hidden_layers=PARAMS["num_hidden_layers"],
        num_attention_heads=PARAMS["num_attention_heads"],
        num_key_value_heads=PARAMS["num_key_value_heads"],
        max_position_embeddings=PARAMS["max_position_embeddings"], tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, pad_token_id=None,
    )
    torch.manual_seed(PARAMS["seed"])
    model = LlamaForCausalLM(config)
    _pretrain(model, tokenizer, texts)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tiny-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a concurrent builder won the race; theirs is identical
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


if __name__ == "__main__":
    import sys

    print(build_tiny_model(sys.argv[1] if len(sys.argv) > 1 else ".cache/tinymodel"))


# ---- synthetic tasks (tests, bench, demo-quick) --------------------------------------------

LABELS = {"billing": ["invoice", "refund", "payment", "charge", "card"],
          "bug": ["crash", "error", "broken", "slow", "screen"],
          "login": ["password", "login", "signin", "reset", "account"]}


def synthetic_task(n: int, *, seed: int = 0, filler: tuple[int, int] = (4, 10)) -> list[dict]:
    """Ticket triage: the first word decides the label among billing/bug/login/other.

    The tiny base has never seen the mapping (its pre-training only copies words), so a LoRA
    that learns it cuts the answer loss sharply. `filler` sets the record length range.
    """
    rng = random.Random(seed)
    keywords = {w for ws in LABELS.values() for w in ws}
    plain = [w for w in WORDS if w not in keywords]
    out = []
    for _ in range(n):
        label = rng.choice(TASK_LABELS)
        words = [rng.choice(plain) for _ in range(rng.randint(*filler))]
        # The deciding word comes first: easy to attend to for a 2-layer model.
        words.insert(0, rng.choice(LABELS[label]) if label != "other" else rng.choice(plain))
        out.append({"messages": [{"role": "user", "content": "ticket: " + " ".join(words)},
                                 {"role": "assistant", "content": label}]})
    return out
