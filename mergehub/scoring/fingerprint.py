"""Which files make a model, and a fingerprint of their bytes (a result-cache key).

The fingerprint is the sha256 of the sorted (relative name, sha256 of the file's bytes) pairs of
the safetensors weights, config.json, generation_config.json and the tokenizer files; README,
manifests and other files do not count. File digests are remembered per process by (path,
size, mtime, ctime, inode), so fingerprinting a model again costs a few stat calls.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mergehub.engine.api import InvalidCheckpoint

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

_digests: dict[tuple, str] = {}


def check_model_dir(model_dir) -> Path:
    """``model_dir`` as a Path, after checking it holds safetensors weights and a config.json."""
    path = Path(model_dir)
    if not path.is_dir():
        raise InvalidCheckpoint(f"{path}: not a directory; give a model directory (config.json, "
                                "*.safetensors, tokenizer files)")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        found = f" (found {', '.join(pickles[:3])})" if pickles else ""
        raise InvalidCheckpoint(f"{path}: no *.safetensors weights{found}; this tool never loads .bin/.pt "
                                "pickles, convert the checkpoint to safetensors first")
    if not (path / "config.json").is_file():
        raise InvalidCheckpoint(f"{path}: no config.json; give a Hugging Face model directory")
    return path


def model_files(model_dir: Path) -> list[Path]:
    """The files a model's behaviour depends on, sorted by name."""
    names = set(MODEL_FILES) | set(TOKENIZER_FILES)
    return sorted(p for p in model_dir.iterdir()
                  if p.is_file() and (p.suffix == ".safetensors" or p.name in names))


def _file_digest(path: Path) -> str:
    info = os.stat(path)
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
    if key not in _digests:
        with open(path, "rb") as f:
            _digests[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _digests[key]


def model_fingerprint(model_dir) -> str:
    """sha256 hex over the sorted (relative name, sha256 of bytes) of the model's files."""
    path = check_model_dir(model_dir)
    digest = hashlib.sha256()
    for file in model_files(path):
        digest.update(f"{file.name}\0{_file_digest(file)}\n".encode())
    return digest.hexdigest()
