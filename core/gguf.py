"""GGUF files LocalCat loads: checked before llama.cpp sees them, hashed once per process."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from core.errors import LocalCatError, MissingDependency


class BaseMismatch(LocalCatError):
    """An adapter meets a base model other than the one it was trained on."""

    status = 409


class AdapterCorrupt(LocalCatError):
    """An adapter file that cannot be read (truncated, overwritten, or not an adapter)."""

    status = 422


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in this process."""
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


def check_lora_gguf(path: Path, base: Path | None = None) -> None:
    """A readable GGUF LoRA adapter (that fits ``base``, when given), or a clear error.

    Checked here because llama-cpp-python 0.3.36 does not: when llama.cpp fails to apply an
    adapter (damaged file, other base: "tensor ... has incorrect shape") it logs the failure and
    loads the base alone, so the model would silently answer without its fine-tune.
    """
    try:
        import gguf
    except ImportError as err:
        raise MissingDependency("The gguf package", "./scripts/setup") from err
    redo = "export it again with `localcat finetune export`"
    try:
        reader = gguf.GGUFReader(str(path))
        kind = _field(reader, "general.type"), _field(reader, "adapter.type")
        tensors = {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    except FileNotFoundError as err:
        raise AdapterCorrupt(f"The adapter {path} is missing", redo) from err
    except (ValueError, OSError, IndexError, KeyError) as err:
        # GGUFReader cannot map a truncated or overwritten file onto its own header.
        raise AdapterCorrupt(f"The adapter {path} is damaged ({err})", redo) from err
    if kind != ("adapter", "lora") or not tensors:
        raise AdapterCorrupt(f"{path} is not a GGUF LoRA adapter (it is {kind[0] or 'unknown'})", redo)
    if base is None:
        return
    try:
        shapes = {t.name: [int(n) for n in t.shape] for t in gguf.GGUFReader(str(base)).tensors}
    except (ValueError, OSError) as err:
        raise AdapterCorrupt(f"The base model {base} cannot be read ({err})",
                             "check the base model file") from err
    for name, shape in tensors.items():
        target, _, part = name.rpartition(".lora_")
        want = shapes.get(target)
        # ggml lists dimensions inner first: A is [in, r], B is [r, out], the weight [in, out].
        fits = want is not None and (shape[0] == want[0] if part == "a" else shape[-1] == want[-1])
        if not fits:
            raise BaseMismatch(
                f"The adapter {path.name} does not fit {base.name}: {target} is "
                f"{want or 'missing'} there (adapter tensor {name} {shape})",
                "it was trained on another base model: register it with that base, or train "
                "again on this one",
            )


def _field(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    return None if field is None else str(field.contents())
