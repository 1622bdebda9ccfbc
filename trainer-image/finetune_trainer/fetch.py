"""Fetch what a run needs into a local work dir, and refuse bad input with one clear line.

- the manifest, the two split files (sha256 checked against the manifest), the rendered config;
- the base model from a hub id, an s3:// prefix or a local path (a GGUF-only folder is converted);
- the tokenizer, fixed where it would train wrongly: a pad token set when absent, `<|im_end|>` as
  eos for ChatML templates (SmolLM2 converted from GGUF declares `<|im_start|>`), and logged;
- a parquet copy of each split with an explicit all-string schema, because the `datasets` JSON
  loader reads answers such as `2017-10-21` as timestamps and Axolotl then fails.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetune_contract import BUDGET_KEY, SEARCH_KEY, Budget, Manifest, RunLayout, SearchPlan
from finetune_contract.storage import Storage, StorageError, is_s3

from .errors import TrainerError, bad_input

ROLES = {"system", "user", "assistant"}
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
CHATML_END = "<|im_end|>"


def log(message: str) -> None:
    print(f"finetune-trainer: {message}", file=sys.stderr, flush=True)


@dataclass
class RunInputs:
    manifest: Manifest
    config: dict[str, Any]
    budget: Budget | None        # config `finetune_budget`, absent from a hand-written config
    search: SearchPlan | None    # config `finetune_search`, with spec.training.search
    train_records: list[dict[str, Any]]
    validation_records: list[dict[str, Any]]
    train_parquet: Path
    validation_parquet: Path
    notes: list[str] = field(default_factory=list)


def _read(storage: Storage, uri: str, what: str) -> bytes:
    try:
        return storage.read_bytes(uri)
    except StorageError as err:
        if "not found" in str(err) or "does not exist" in str(err):
            raise bad_input("MissingInput", f"{what} not found: {uri}") from None
        raise


def parse_records(data: bytes, shape: str, name: str) -> list[dict[str, Any]]:
    """Parse JSONL and check every record has the shape (and chat roles) training needs."""
    out = []
    for no, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise bad_input("Malformed", f"{name} line {no}: not JSON") from None
        if shape == "text":
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise bad_input("Malformed", f"{name} line {no}: expected {{\"text\": str}}")
        else:
            _check_chat(rec, f"{name} line {no}")
        out.append(rec)
    if not out:
        raise bad_input("NoData", f"{name} has no records")
    return out


def _check_chat(rec: Any, where: str) -> None:
    msgs = rec.get("messages") if isinstance(rec, dict) else None
    if not isinstance(msgs, list) or not msgs:
        raise bad_input("Malformed", f"{where}: expected {{\"messages\": [...]}}")
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise bad_input("Malformed", f"{where}: each message needs a string content")
        if m.get("role") not in ROLES:
            raise bad_input("BadRoles", f"{where}: role {m.get('role')!r} is not one of "
                                        "system/user/assistant")
    roles = [m["role"] for m in msgs]
    if roles[-1] != "assistant" or "user" not in roles:
        raise bad_input("BadRoles", f"{where}: a chat needs a user turn and must end with the "
                                    f"assistant answer (roles: {', '.join(roles)})")


def write_parquet(records: list[dict[str, Any]], shape: str, path: Path) -> Path:
    """Parquet with an explicit string schema: nothing is type-inferred downstream."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if shape == "text":
        schema = pa.schema([("text", pa.string())])
        rows = [{"text": str(r["text"])} for r in records]
    else:
        msg = pa.struct([("role", pa.string()), ("content", pa.string())])
        schema = pa.schema([("messages", pa.list_(msg))])
        rows = [{"messages": [{"role": str(m["role"]), "content": str(m["content"])}
                              for m in r["messages"]]} for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def fetch_run(storage: Storage, layout: RunLayout, config_uri: str | None, work: Path) -> RunInputs:
    """Manifest, verified splits and config of the run at `layout`."""
    try:
        manifest = Manifest.model_validate_json(_read(storage, layout.manifest, "manifest"))
    except ValueError as err:
        raise bad_input("BadManifest", f"{layout.manifest}: not a valid manifest: {err}") from None
    splits = {}
    for name, uri, digest in (("train", layout.train, manifest.train),
                              ("validation", layout.validation, manifest.validation)):
        data = _read(storage, uri, f"{name} split")
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest.sha256:
            raise bad_input("SplitMismatch", f"{uri}: sha256 {actual[:12]} does not match the "
                                             f"manifest's {digest.sha256[:12]}: re-prepare the run")
        splits[name] = parse_records(data, manifest.record_shape, f"{name}.jsonl")
    config_uri = config_uri or layout.config
    try:
        config = yaml.safe_load(_read(storage, config_uri, "config"))
    except yaml.YAMLError as err:
        raise bad_input("BadConfig", f"{config_uri}: not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise bad_input("BadConfig", f"{config_uri}: not a mapping")
    shape = manifest.record_shape
    return RunInputs(
        manifest=manifest, config=config,
        budget=_ours(config, BUDGET_KEY, Budget, config_uri),
        search=_ours(config, SEARCH_KEY, SearchPlan, config_uri),
        train_records=splits["train"], validation_records=splits["validation"],
        train_parquet=write_parquet(splits["train"], shape, work / "data/train.parquet"),
        validation_parquet=write_parquet(splits["validation"], shape, work / "data/validation.parquet"),
    )


def _ours(config: dict[str, Any], key: str, model: Any, config_uri: str) -> Any:
    """One of our config keys, parsed with the contract's model (None when absent)."""
    if config.get(key) is None:
        return None
    try:
        return model.model_validate(config[key])
    except ValueError as err:  # pydantic's ValidationError
        raise bad_input("BadConfig", f"{config_uri}: {key} is not the operator's "
                                     f"{model.__name__}: {err}") from None


def _has_weights(path: Path) -> bool:
    return any(any(path.glob(g)) for g in WEIGHT_GLOBS)


def fetch_model(storage: Storage, name: str, revision: str, work: Path) -> Path:
    """A local HF model folder for `name` (hub id, s3:// prefix or local path)."""
    if is_s3(name):
        target = work / "base-model"
        if not storage.download_prefix(name, target):
            raise bad_input("ModelNotFound", f"no objects under the base model prefix {name}")
        path = target
    elif Path(name).exists():
        path = Path(name)
    elif name.count("/") == 1 and not name.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(name, revision=revision or None,
                                          cache_dir=str(work / "hub")))
        except Exception as err:  # noqa: BLE001 - hub errors vary; the message says enough
            raise TrainerError("ModelDownload", f"cannot download {name}@{revision}: {err}") from None
    else:
        raise bad_input("ModelNotFound", f"base model {name!r} is not a local path, s3:// prefix "
                                         "or hub id")
    if not path.is_dir() or not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
        raise bad_input("NoWeights", f"base model {name}: no config.json in {path.name}")
    if not _has_weights(path):
        raise bad_input("NoWeights", f"base model {name}: no weights (*.safetensors, *.bin or "
                                     "*.gguf) in the folder")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        path = _convert_gguf(path, work / "base-model-hf")
    return path


def _convert_gguf(path: Path, target: Path) -> Path:
    """GGUF-only folder -> HF folder (transformers dequantizes; needs the `gguf` package)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = sorted(path.glob("*.gguf"))[0]
    log(f"converting {gguf.name} to a transformers folder")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf.name)
        tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf.name)
    except Exception as err:  # noqa: BLE001
        raise bad_input("NoWeights", f"cannot load {gguf.name}: {err}") from None
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target


def prepare_tokenizer(model_dir: Path, shape: str, work: Path) -> tuple[Path, list[str]]:
    """Load the tokenizer; fix pad/eos where needed. Returns (tokenizer dir, notes)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except Exception as err:  # noqa: BLE001
        raise bad_input("NoTokenizer", f"cannot load a tokenizer from the base model: {err}") from None
    notes: list[str] = []
    template = tok.chat_template if isinstance(tok.chat_template, str) else ""
    if shape == "messages" and not template:
        raise bad_input("NoChatTemplate", "chat records but the base model's tokenizer has no "
                                          "chat template")
    if CHATML_END in template and tok.eos_token != CHATML_END and CHATML_END in tok.get_vocab():
        notes.append(f"eos token {tok.eos_token!r} -> {CHATML_END!r} (the chat template ends "
                     "turns with it)")
        tok.eos_token = CHATML_END
    if tok.pad_token is None:
        vocab = tok.get_vocab()
        pad = next((t for t in ("<|pad|>", "<pad>", "<|endoftext|>", "<|finetune_pad|>")
                    if t in vocab and t != tok.eos_token), tok.eos_token)
        notes.append(f"tokenizer has no pad token: using {pad!r} (padding is masked from the loss)")
        tok.pad_token = pad
    for note in notes:
        log(note)
    if not notes:
        return model_dir, notes
    target = work / "tokenizer"
    tok.save_pretrained(target)
    return target, notes
