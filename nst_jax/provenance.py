"""What an output records about how it was made, besides its settings and weights: the input images (file name,
absolute path and a short content hash) and the software and device that ran it.

Saved images carry it in their metadata (:func:`nst_jax.images.save_image`), batch jobs in their summary;
``nst-jax info FILE`` prints it.
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
from collections.abc import Iterable
from pathlib import Path

from nst_jax.weights import file_digest

#: Hex digits of the SHA-256 kept for an input file: enough to tell files apart, short enough to read.
HASH_DIGITS = 12


def file_hash(path: str | os.PathLike) -> str:
    """The first :data:`HASH_DIGITS` hex digits of a file's SHA-256 (:func:`nst_jax.weights.file_digest`: computed
    once per version of the file)."""
    return file_digest(Path(path), "sha256")[:HASH_DIGITS]


def describe_input(role: str, source) -> dict:
    """One input of a stylization: ``{"role", "file", "path", "sha256"}`` for a file; for an image given as an
    object, its kind and size (``{"role", "kind": "array", "shape"}`` or ``{"role", "kind": "PIL image",
    "size"}``)."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source).expanduser()
        out = {"role": role, "file": p.name, "path": str(p.resolve())}
        try:
            out["sha256"] = file_hash(p)
        except OSError:  # pragma: no cover - the file was read moments ago
            pass
        return out
    shape = getattr(source, "shape", None)
    if shape is not None:
        return {"role": role, "kind": "array", "shape": [int(d) for d in shape]}
    size = getattr(source, "size", None)
    return {"role": role, "kind": type(source).__name__ if size is None else "PIL image",
            **({"size": list(size)} if isinstance(size, tuple) else {})}


def describe_inputs(inputs: Iterable[tuple[str, object]]) -> list[dict]:
    """:func:`describe_input` of each ``(role, source)`` pair (as :func:`nst_jax.api.input_paths` lists them)."""
    return [describe_input(role, src) for role, src in inputs]


def now() -> str:
    """The current UTC time, ISO 8601 to the second (when an output was written)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """The software and device of this process: nst_jax, jax, jaxlib and Python versions, the backend and the
    first device's kind."""
    import jax
    import jaxlib

    from nst_jax import __version__

    devices = jax.devices()
    return {"nst_jax": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "python": platform.python_version(), "backend": jax.default_backend(),
            "device": devices[0].device_kind if devices else None, "device_count": len(devices)}


def report(meta: dict, *, all_settings: bool = False) -> str:
    """A readable account of an output's metadata (what ``nst-jax info`` prints): inputs, weights, settings (those
    that differ from the defaults, or all), final losses, software and device."""
    from nst_jax.config import Settings

    lines = []
    if meta.get("partial"):
        lines.append(f"a partial result (iteration {meta.get('iteration')}), not a finished one")
    for i in meta.get("inputs", []):
        where = i.get("path") or i.get("kind", "")
        extra = f"  sha256 {i['sha256']}" if "sha256" in i else (f"  shape {i['shape']}" if "shape" in i else "")
        lines.append(f"{i.get('role', 'input') + ':':<15} {where}{extra}")
    if "input" in meta and not meta.get("inputs"):
        lines.append(f"{'content image:':<15} {meta['input']}")
    w = meta.get("weights")
    if w:
        text = (f"random (seed {w.get('seed')})" if w.get("source") == "random" else
                f"{w.get('path')}  md5 {w.get('md5')}" if "path" in w else str(w))
        lines.append(f"{'weights:':<15} {text}")
    recorded = meta.get("settings", {})
    defaults = Settings().to_dict()
    shown = {k: v for k, v in recorded.items() if all_settings or defaults.get(k, object()) != v}
    lines.append("settings:" + ("" if shown else " the defaults"))
    for k, v in shown.items():
        value = ",".join(map(str, v)) if isinstance(v, list) else v
        lines.append(f"  --{k.replace('_', '-')} {value}")
    if "loss" in meta:
        terms = meta.get("terms") or {}
        lines.append(f"{'final loss:':<15} {meta['loss']:.6g} after {meta.get('iterations')} iterations"
                     + (" (" + ", ".join(f"{k} {v:.4g}" for k, v in terms.items()) + ")" if terms else ""))
    env = meta.get("environment")
    if env:
        lines.append(f"{'made with:':<15} nst_jax {env.get('nst_jax')}, jax {env.get('jax')} "
                     f"(jaxlib {env.get('jaxlib')}), Python {env.get('python')}, {env.get('backend')} "
                     f"({env.get('device')})")
    if meta.get("created"):
        lines.append(f"{'created:':<15} {meta['created']}")
    return "\n".join(lines)


def record(settings: dict, weights: dict | None = None, inputs: list[dict] | None = None) -> dict:
    """What every file nst_jax writes records about how it was made (outputs, snapshots, partial results):
    the settings (``Settings.to_dict``), the weights and inputs where known, the software and device, and when."""
    return {"settings": settings, **({"weights": weights} if weights else {}),
            **({"inputs": inputs} if inputs is not None else {}), "environment": environment(), "created": now()}
