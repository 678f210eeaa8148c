"""Weights files: the Keras HDF5 reader (Keras 1, 2 and 3 layouts), the canonical ``.npz`` with its optional
provenance record, and the checks that say what a wrong file is.
"""

from __future__ import annotations

import functools
import json
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from nst_jax import images
from nst_jax.vgg import CONV_LAYERS, check_params, param_shapes

from nst_jax.weights.base import KERAS_FILENAME, KERAS_URL, NPZ_METADATA, PathLike, WeightsError, existing_file


# Keras names the convolutions ``block{B}_conv{I}``; ours are ``conv{B}_{I}``.
_KERAS_CONV = re.compile(r"^block(\d+)_conv(\d+)$")
_KERAS_NAME = {name: "block{}_conv{}".format(*name[4:].split("_")) for name in CONV_LAYERS}
# Weight names: ``block1_conv1_W_1:0`` / ``block1_conv1_b_1:0`` (Keras 1, the 2016 file),
# ``block1_conv1/kernel:0`` (Keras 2), ``block1_conv1/kernel`` (Keras 3 legacy writer).
_KERNEL_NAME = re.compile(r"(^|[/_])(W|kernel)(_\d+)?(:\d+)?$")
_BIAS_NAME = re.compile(r"(^|[/_])(b|bias)(_\d+)?(:\d+)?$")
_ROLE_NDIM = {"kernel": 4, "bias": 1}
# VGG-16's convolutions (2, 2, 3, 3, 3 per block): the other network whose files are most often mistaken for ours.
_VGG16_CONVS = frozenset(f"block{b}_conv{i}" for b, n in enumerate((2, 2, 3, 3, 3), start=1) for i in range(1, n + 1))


def load_params(path: PathLike) -> dict:
    """Reads a weights file by its content: a Keras HDF5 file or an ``.npz`` from :func:`save_npz`.

    Raises:
        WeightsError: the file is missing, of another kind, or not VGG-19 weights.
    """
    path = existing_file(path)
    if h5py.is_hdf5(path):
        return load_keras_h5(path)
    if zipfile.is_zipfile(path):
        return load_npz(path)
    hint = (" PyTorch checkpoints must be converted first: python scripts/convert_torch_weights.py IN.pth OUT.npz."
            if path.suffix in (".pth", ".pt") else _content_hint(path))
    raise WeightsError(
        f"{str(path)!r} is neither an HDF5 (.h5) nor an .npz file. Fix: pass the Keras file {KERAS_FILENAME} "
        f"(from {KERAS_URL}) or an .npz written by nst_jax.weights.save_npz.{hint}")


def load_keras_h5(path: PathLike) -> dict:
    """Reads VGG-19 weights from a Keras HDF5 file.

    Supported layouts, each read through the file's own names (never by order):

    * **Keras 1/2 legacy** (the 2016 ``..._notop.h5`` file, Keras 2
      ``save_weights("x.h5")``, Keras 3's ``legacy_h5_format`` writer): the root
      (or its ``model_weights`` group, for whole-model ``model.save("x.h5")``
      files) has the attribute ``layer_names``; each layer group
      ``<layer>`` has ``weight_names``, paths relative to that group, e.g.
      ``block1_conv1_W_1:0`` (2016) or ``block1_conv1/kernel`` (Keras 3).
    * **Keras 3 native** ``.weights.h5`` (``model.save_weights``): groups
      ``layers/<class>_<n>/vars`` whose ``name`` attribute is the layer name
      and whose datasets ``0``, ``1`` are the kernel and the bias.

    Layer ``blockB_convI`` becomes ``convB_I``; other layers (input, pools, a
    classifier top) are ignored. Keras files of the ``tf_kernels`` kind store
    kernels HWIO with BGR input channels (the Caffe origin), which is our
    layout, so arrays are copied unchanged (cast to float32).

    Raises:
        WeightsError: the file is missing, not HDF5, not a Keras weights file,
            lacks a layer or has a wrong shape; the message names which.
    """
    path = existing_file(path)
    if not h5py.is_hdf5(path):
        raise WeightsError(
            f"{str(path)!r} is not an HDF5 file. Fix: pass the Keras VGG-19 no-top file {KERAS_FILENAME} "
            f"(from {KERAS_URL}); re-download it if it is truncated.{_content_hint(path)}")
    try:
        with h5py.File(path, "r") as f:
            tensors = _read_keras_tensors(f, path)
            layers = _layer_names(f)
    except WeightsError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as e:
        # h5py reports damaged files with any of these, depending on which structure is hit.
        raise WeightsError(
            f"{str(path)!r} is truncated or corrupt: HDF5 cannot read it ({e}). Fix: download it again from "
            f"{KERAS_URL} (a corrupt copy in the cache: delete it, and it is downloaded again on next use).") from e
    return _assemble(tensors, path, source="Keras", file_layers=layers)


def _content_hint(path: Path) -> str:
    """A sentence on what a file that is not weights looks like (a saved web page, a Git LFS pointer), or ''."""
    with open(path, "rb") as f:
        head = f.read(256).lstrip()
    if head.startswith(b"<"):
        return (" It starts with '<': it is a web page (HTML/XML), e.g. an error or sign-in page saved in place of "
                f"the file; download it again from {KERAS_URL} (with curl, use -L to follow redirects).")
    if head.startswith(b"version https://git-lfs"):
        return " It is a Git LFS pointer, not the file: run 'git lfs pull', or download the file."
    return ""


def _read_keras_tensors(f: h5py.File, path: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """``{keras layer name: [(weight name, array), ...]}`` for the ``blockB_convI`` layers of the file."""
    root = _legacy_root(f)
    if root is not None:
        return _read_legacy(root, path)
    if "layers" in f:
        return _read_keras3_native(f, path)
    raise WeightsError(
        f"{str(path)!r} is an HDF5 file but not Keras weights: it has neither the 'layer_names' attribute "
        "(Keras 1/2 and legacy .h5) nor a 'layers' group (Keras 3 .weights.h5). "
        f"Fix: pass the Keras VGG-19 no-top file {KERAS_FILENAME}.")


def _legacy_root(f: h5py.File) -> h5py.Group | None:
    """The group with the legacy ``layer_names`` attribute, if any.

    A whole-model file (``model.save("x.h5")``) keeps the legacy weights layout under "model_weights".
    """
    root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
    return root if "layer_names" in root.attrs else None


def _layer_names(f: h5py.File) -> list[str]:
    """Every layer name the file holds, to say what a file of another network is."""
    root = _legacy_root(f)
    if root is not None:
        return [_decode(n) for n in root.attrs["layer_names"]]
    names: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and "name" in obj.attrs:
            names.append(_decode(obj.attrs["name"]))

    f.visititems(visit)
    return names


def _read_legacy(root: h5py.Group, path: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Legacy layout: ``root.attrs["layer_names"]``; ``root[layer].attrs["weight_names"]`` paths in that group."""
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for layer in (_decode(n) for n in root.attrs["layer_names"]):
        if not _KERAS_CONV.match(layer):
            continue  # input, pooling, flatten, fc layers
        if layer in out:
            raise WeightsError(f"{str(path)!r}: layer {layer!r} is listed twice in 'layer_names'; the file is corrupt.")
        if layer not in root:
            raise WeightsError(f"{str(path)!r}: layer {layer!r} is listed in 'layer_names' but has no group; "
                               "the file is corrupt or truncated. Fix: re-download it.")
        group = root[layer]
        names = [_decode(n) for n in group.attrs.get("weight_names", [])]
        missing = [n for n in names if n not in group]
        if missing:
            raise WeightsError(f"{str(path)!r}: layer {layer!r} lists weights {missing} that are not in the "
                               "file; it is corrupt or truncated. Fix: re-download it.")
        out[layer] = [(n, np.asarray(group[n])) for n in names]
    return out


def _read_keras3_native(f: h5py.File, path: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Keras 3 ``.weights.h5``: any ``.../vars`` group whose ``name`` attribute is ``blockB_convI``.

    The group paths (``layers/conv2d_3``) come from class names and creation
    order, so they are not used to identify layers; the ``name`` attribute is.
    Nested models (``layers/functional/layers/...``) are found too.
    """
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    unnamed: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if not (isinstance(obj, h5py.Group) and name.rsplit("/", 1)[-1] == "vars"):
            return
        datasets = [(k, v) for k, v in obj.items() if isinstance(v, h5py.Dataset)]
        if "name" not in obj.attrs:
            if datasets:
                unnamed.append(name)
            return
        layer = _decode(obj.attrs["name"])
        if not _KERAS_CONV.match(layer):
            return
        if layer in out:
            raise WeightsError(f"{str(path)!r}: two groups hold layer {layer!r}; the file is not a single "
                               "VGG-19. Fix: save the VGG-19 model's weights on their own.")
        out[layer] = [(f"{name}/{k}", np.asarray(v)) for k, v in datasets]

    f.visititems(visit)
    if not out and unnamed:
        raise WeightsError(
            f"{str(path)!r} is a Keras 3 .weights.h5 file whose variable groups ({unnamed[0]}, ...) carry no "
            "layer 'name' attribute (older Keras 3 releases), so layers cannot be identified without guessing "
            "their order. Fix: re-save with a current Keras (model.save_weights('x.weights.h5')) or with "
            "model.save('x.h5'), or use the original Keras file.")
    return out


def _assemble(tensors: dict[str, list[tuple[str, np.ndarray]]], path: Path, *, source: str,
              file_layers: list[str]) -> dict:
    """Maps Keras layers to our names, assigns kernel/bias, asserts every shape.

    Which layers are missing is checked before any shape, so that a file of
    another network (VGG-16, a ResNet) is named as such.
    """
    expected = param_shapes()
    for keras_name in tensors:
        m = _KERAS_CONV.match(keras_name)
        name = f"conv{m[1]}_{m[2]}"
        if name not in expected:
            raise WeightsError(f"{str(path)!r}: unexpected layer {keras_name!r}: VGG-19 has no {name}. "
                               "Is this another network (VGG-16 has 13 convolutions, VGG-19 16)?")
    missing = [name for name in CONV_LAYERS if _KERAS_NAME[name] not in tensors]
    if missing:
        raise WeightsError(_missing_layers_message(path, missing, list(tensors), file_layers, source))
    params: dict[str, dict[str, np.ndarray]] = {}
    for name in CONV_LAYERS:
        keras_name = _KERAS_NAME[name]
        params[name] = _kernel_and_bias(tensors[keras_name], keras_name, name, path)
    result = {"params": params}
    check_params(result)
    return result


def _missing_layers_message(path: Path, missing: list[str], found: list[str], file_layers: list[str],
                            source: str) -> str:
    """Which VGG-19 convolutions a file lacks, and which network it seems to hold instead."""
    fix = f"Fix: use the VGG-19 no-top file {KERAS_FILENAME} (from {KERAS_URL})."
    expected = "VGG-19's 16 convolutions block1_conv1, block1_conv2, ..., block5_conv4"
    if not found:
        shown = ", ".join(file_layers[:8]) + (", ..." if len(file_layers) > 8 else "")
        return (f"{str(path)!r} holds weights of another network: none of {expected}; its layers are "
                f"{shown or 'none'} ({len(file_layers)} in all). {fix}")
    names = ", ".join(f"{_KERAS_NAME[n]!r} ({n})" for n in missing)
    what = "VGG-16 (13 convolutions), not VGG-19" if set(found) == _VGG16_CONVS else "incomplete"
    return (f"{str(path)!r}: missing layer{'s' if len(missing) > 1 else ''} {names} of {expected}; "
            f"{source} conv layers found: {', '.join(found)}. This file is {what}. {fix}")


def _kernel_and_bias(weights: list[tuple[str, np.ndarray]], keras_name: str, name: str,
                     path: Path) -> dict[str, np.ndarray]:
    """Assigns a layer's arrays to kernel/bias by name (else by rank) and checks shapes against VGG-19's."""
    if len(weights) != 2:
        raise WeightsError(f"{str(path)!r}: layer {keras_name!r} ({name}) has {len(weights)} weights "
                           f"{[n for n, _ in weights]}, expected 2 (kernel and bias).")
    shapes = param_shapes()[name]
    out: dict[str, np.ndarray] = {}
    for wname, array in weights:
        role = _role(wname, array)
        if role in out:
            raise WeightsError(f"{str(path)!r}: layer {keras_name!r} ({name}) has two {role}s "
                               f"{[n for n, _ in weights]}; expected one kernel and one bias.")
        want = shapes[role]
        if array.shape != want:
            hint = ""
            if role == "kernel" and array.shape == (want[3], want[2], want[0], want[1]):
                # OIHW is the Theano/Caffe/PyTorch ordering; Keras "th_kernels" files use it.
                hint = (" This looks like an OIHW (Theano/PyTorch) kernel: use the 'tf_kernels' Keras file, or "
                        "convert with scripts/convert_torch_weights.py.")
            raise WeightsError(f"{str(path)!r}: layer {keras_name!r} ({name}) {role} {wname!r} has shape "
                               f"{array.shape}, expected {want}.{hint}")
        if not np.issubdtype(array.dtype, np.floating):
            raise WeightsError(f"{str(path)!r}: layer {keras_name!r} ({name}) {role} has dtype {array.dtype}, "
                               "expected floating point.")
        out[role] = np.asarray(array, np.float32)
    return out


def _role(wname: str, array: np.ndarray) -> str:
    """``"kernel"`` or ``"bias"``: from the weight's name when it says, else from its rank (4 vs 1)."""
    if _KERNEL_NAME.search(wname):
        return "kernel"
    if _BIAS_NAME.search(wname):
        return "bias"
    # Keras 3 native files name variables "0", "1": use the rank (a 3x3 conv kernel is 4-D, a bias 1-D).
    return "kernel" if array.ndim == 4 else "bias"


def save_npz(params: Mapping, path: PathLike, metadata: Mapping | None = None) -> Path:
    """Writes params to our canonical ``.npz`` (keys ``conv1_1/kernel``, ``conv1_1/bias``, ...; float32).

    Same layout as the params pytree: kernels HWIO, BGR input channels, Caffe-space
    inputs. The file is written to a temporary name and renamed, so a crash never
    leaves a partial file. The path is used as given (no ``.npz`` is appended).

    Args:
        params: the params pytree.
        path: the file to write.
        metadata: a JSON-able provenance record (how the weights were made), stored as the
            string array :data:`NPZ_METADATA`; :func:`npz_metadata` reads it and
            :func:`describe` shows it.

    Returns:
        The path written.
    """
    check_params(params)
    path = Path(path).expanduser()
    arrays = {f"{name}/{kind}": np.asarray(value, np.float32)
              for name, layer in params["params"].items() for kind, value in layer.items()}
    if metadata is not None:
        # A 0-d unicode array: read back without pickle (np.load(allow_pickle=False)).
        arrays[NPZ_METADATA] = np.asarray(json.dumps(metadata, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = images.create_temp(path)  # the usual permissions (0666 minus the umask), unlike mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as fobj:
            np.savez(fobj, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_npz(path: PathLike) -> dict:
    """Reads params written by :func:`save_npz` (or ``scripts/convert_torch_weights.py``).

    Raises:
        WeightsError: the file is missing, not an ``.npz``, lacks a layer, has
            unexpected keys or a wrong shape.
    """
    path = existing_file(path)
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{str(path)!r} is not an .npz file. Fix: write it with nst_jax.weights.save_npz, "
                           "or pass a Keras .h5 file instead.")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise WeightsError(f"could not read {str(path)!r} as .npz: {e}. Fix: write it again with save_npz.") from e
    expected = param_shapes()
    arrays.pop(NPZ_METADATA, None)  # the provenance record (npz_metadata), not a parameter
    unexpected = sorted(k for k in arrays if k.split("/")[0] not in expected or len(k.split("/")) != 2
                        or k.split("/")[1] not in ("kernel", "bias"))
    if unexpected:
        raise WeightsError(f"{str(path)!r}: unexpected arrays {unexpected[:5]}; expected keys 'conv1_1/kernel', "
                           "'conv1_1/bias', ... Fix: write the file with nst_jax.weights.save_npz.")
    params: dict[str, dict[str, np.ndarray]] = {}
    for name, shapes in expected.items():
        params[name] = {}
        for kind, want in shapes.items():
            key = f"{name}/{kind}"
            if key not in arrays:
                raise WeightsError(f"{str(path)!r}: missing layer {name} (array {key!r}). Fix: write the file "
                                   "with nst_jax.weights.save_npz from complete params.")
            if arrays[key].shape != want:
                raise WeightsError(f"{str(path)!r}: {key} has shape {arrays[key].shape}, expected {want}.")
            params[name][kind] = arrays[key].astype(np.float32)
    return {"params": params}


def npz_metadata(path: PathLike) -> dict | None:
    """The provenance record stored in an ``.npz`` by :func:`save_npz` (``metadata``), or None if it has none.

    Raises:
        WeightsError: the file is missing, not an ``.npz``, or its record is not a JSON object.
    """
    path = existing_file(path)
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{str(path)!r} is not an .npz file, so it carries no provenance record.")
    try:
        with np.load(path, allow_pickle=False) as data:
            if NPZ_METADATA not in data.files:
                return None
            text = str(data[NPZ_METADATA])
        metadata = json.loads(text)
    except (OSError, ValueError, zipfile.BadZipFile) as e:  # json.JSONDecodeError is a ValueError
        raise WeightsError(f"could not read the provenance record of {str(path)!r}: {e}. Fix: write the file "
                           "again (nst-jax normalize-weights, or save_npz with metadata).") from e
    if not isinstance(metadata, dict):
        raise WeightsError(f"the provenance record of {str(path)!r} is not a JSON object. Fix: write the file "
                           "again (nst-jax normalize-weights, or save_npz with metadata).")
    return metadata


def _decode(value: Any) -> str:
    """h5py attributes hold names as ``bytes`` (Keras 1/2) or ``str`` (Keras 3)."""
    return value.decode("utf8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def file_provenance(path: Path) -> dict | None:
    """The provenance record of an ``.npz`` (:func:`npz_metadata`), read once per version of the file; None for
    other files and for an ``.npz`` without one."""
    st = path.stat()
    text = _cached_provenance(str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    return None if text is None else json.loads(text)  # a new dict for every caller


@functools.lru_cache(maxsize=32)
def _cached_provenance(path: str, inode: int, size: int, mtime_ns: int) -> str | None:
    if not zipfile.is_zipfile(path):
        return None
    try:
        metadata = npz_metadata(path)
    except WeightsError:
        return None  # an unreadable file is reported when it is loaded, not by the record of which file it is
    return None if metadata is None else json.dumps(metadata)
