"""Writing images: output-path checks (never over an input, never over a file nst_jax did not write without
``--overwrite``), atomic writes, and the nst_jax metadata embedded in PNG/JPEG/WebP/TIFF files.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, PngImagePlugin

from nst_jax.images.base import SAVE_FORMATS, ImageError, count_nonfinite
from nst_jax.images.convert import to_pil


# Key of the PNG text chunk (and EXIF Software prefix) that carries our metadata.
METADATA_KEY = "nst_jax"
_EXIF_DESCRIPTION = 0x010E  # ImageDescription: our JSON in non-PNG files
_EXIF_SOFTWARE = 0x0131  # Software

# Lossy formats are written at high quality: stylized textures are fine detail.
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}


def save_image(
    img: np.ndarray, path: str | os.PathLike[str], *, metadata: dict | None = None
) -> Path:
    """Writes an image atomically; the format comes from the file extension.

    The file is written to a temporary file in the same directory, fsynced and
    renamed over ``path``, so a crash or error never leaves a partial output,
    and an existing file is either fully replaced or untouched. A missing
    output directory is created if its own parent exists (only the last level:
    a deeper missing path is more often a typo than a wish for a new tree).
    JPEG and WebP are written at quality 95. Whether ``path`` may be replaced
    is the caller's decision (see ``check_overwrite``).

    Args:
      img: float array (H, W, 3) or (H, W) in [0, 1] (values are clipped);
        uint8 arrays are written as they are.
      path: output file; extension one of ``SAVE_FORMATS``.
      metadata: JSON-serializable settings to embed (non-JSON values are
        stored with ``str``). PNG stores them as a tEXt chunk ``nst_jax``;
        JPEG, WebP and TIFF as the EXIF ImageDescription. ``read_metadata``
        reads either back.

    Returns:
      The output path.

    Raises:
      ImageError: unsupported extension, NaN/inf pixels, an output directory
        that cannot be created (also: whose parent is missing) or written, or
        a failed write.
    """
    path = Path(path).expanduser()
    fmt = _format_for(path)
    arr = np.asarray(img)
    if bad := count_nonfinite(arr):
        raise ImageError(
            f"refusing to write NaN pixels to '{path}': {bad} values are NaN or infinite, "
            "so the optimization probably diverged; lower the learning rate or loss weights"
        )
    pil = to_pil(arr)
    options = {**_SAVE_OPTIONS.get(fmt, {}), **_metadata_options(fmt, metadata)}
    _make_parent_dir(path)
    try:
        _atomic_write(path, lambda f: pil.save(f, format=fmt, **options))
    except (OSError, ValueError) as e:
        raise ImageError(
            f"could not write '{path}' ({e}); check free disk space and permissions"
        ) from e
    return path


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Checks up front that ``save_image(..., path)`` can succeed.

    Call it before a long optimization so that a typo fails in a second rather
    than after an hour. Nothing is left behind: a directory that does not exist
    yet is not created (``save_image`` does that), but the closest existing
    one is tested by creating and removing a temporary file in it.

    Args:
      path: the intended output file.

    Returns:
      The path as a ``Path``.

    Raises:
      ImageError: unsupported extension, a path that is a directory, a parent
        "directory" that is a file, a missing output directory whose parent is
        missing too (only the last level is created), or a directory that is
        not writable.
    """
    path = Path(path).expanduser()
    _format_for(path)
    _reject_directory(path)
    directory = _closest_existing(path.parent)
    if not directory.is_dir():
        raise ImageError(
            f"cannot create output directory '{path.parent}': '{directory}' is a file, "
            "not a directory; choose another output path"
        )
    _check_missing_depth(path.parent)
    try:
        fd, probe = create_temp(directory / path.name)
        os.close(fd)
        probe.unlink()
    except OSError as e:
        raise ImageError(
            f"output directory '{directory}' is not writable ({e.strerror or e}); "
            "choose another output path or fix its permissions"
        ) from e
    return path


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file: also through symlinks, ``..``, other
    spellings and hard links (``os.path.samefile``); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def is_own_output(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file nst_jax wrote (a previous output).

    ``save_image`` tags every image with its Software name, ``nst_jax <version>``:
    a PNG text chunk, the EXIF Software tag in JPEG, WebP and TIFF; only the
    header is read. A ``.json`` file (e.g. a sweep's losses) is ours if its
    top-level ``"software"`` holds that name, a ``.md`` or ``.html`` file (a
    comparison's table, a study's report) if its first line is :func:`text_tag`.
    A missing, unreadable or untagged file (including every format we cannot
    tag) is not ours, so it is replaced
    only when the user says so (``check_overwrite``).
    """
    path = Path(path).expanduser()
    if path.suffix.lower() == ".json":
        try:
            software = json.loads(path.read_text(encoding="utf-8")).get("software", "")
        except (OSError, ValueError, AttributeError):
            return False
        return str(software).startswith(METADATA_KEY + " ")
    if path.suffix.lower() in (".md", ".html"):
        try:
            with open(path, encoding="utf-8") as f:
                first = f.readline()
        except (OSError, ValueError):
            return False
        return first.startswith("<!-- " + METADATA_KEY + " ")
    try:
        with Image.open(path) as img:
            if img.format == "PNG":
                software = img.info.get("Software", "")  # our chunks precede the pixels
            else:
                software = img.getexif().get(_EXIF_SOFTWARE, "")
    except (OSError, SyntaxError, ValueError, EOFError):
        return False
    return str(software).startswith(METADATA_KEY + " ")


def check_overwrite(
    path: str | os.PathLike[str],
    inputs: Sequence[tuple[str, Any]] = (),
    *,
    overwrite: bool = False,
) -> Path:
    """Checks that writing ``path`` destroys nothing the user did not ask to replace.

    An output is never one of the inputs (whatever the spelling, symlink or hard
    link), not even with ``overwrite``. An existing file is replaced only if
    nst_jax wrote it (``is_own_output``: a previous output) or ``overwrite``.

    Args:
      path: the intended output file.
      inputs: ``(label, source)`` of each image the run reads, e.g.
        ``("content image", "photo.jpg")``; sources that are not paths
        (arrays, PIL images) are ignored.
      overwrite: replace an existing file that nst_jax did not write.

    Returns:
      The path as a ``Path``.

    Raises:
      ImageError: ``path`` is an input, or an existing file that is not ours
        and ``overwrite`` is false.
    """
    path = Path(path).expanduser()
    for label, source in inputs:
        if isinstance(source, (str, os.PathLike)) and same_file(path, Path(source).expanduser()):
            raise ImageError(
                f"output '{path}' is also the {label} '{source}'; writing it would replace an input "
                "(even with --overwrite / overwrite=True): choose another output path"
            )
    if path.exists() and not overwrite and not is_own_output(path):
        raise ImageError(
            f"output '{path}' already exists and was not written by nst_jax; refusing to replace it: "
            "choose another output path, or pass --overwrite (Python: overwrite=True) to replace it"
        )
    return path


def _format_for(path: Path) -> str:
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    supported = ", ".join(sorted(SAVE_FORMATS))
    if fmt is None:
        raise ImageError(
            f"cannot save '{path}': unsupported extension {path.suffix or '(none)'!r}; "
            f"use one of {supported}"
        )
    Image.init()
    if fmt not in Image.SAVE:
        raise ImageError(f"cannot save '{path}': this Pillow build cannot write {fmt}; use .png")
    return fmt


def _metadata_options(fmt: str, metadata: dict | None) -> dict:
    """Pillow save() keyword arguments that embed our metadata and name."""
    software = software_name()
    text = None if metadata is None else json.dumps(metadata, sort_keys=True, default=str)
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", software)
        if text is not None:
            info.add_text(METADATA_KEY, text)
        return {"pnginfo": info}
    exif = Image.Exif()
    exif[_EXIF_SOFTWARE] = software
    if text is not None:
        exif[_EXIF_DESCRIPTION] = text  # ASCII: json.dumps escapes non-ASCII
    return {"exif": exif}


def text_tag() -> str:
    """The first line of the text files nst_jax writes (:func:`save_text`): an HTML comment naming it, which
    markdown viewers do not show and :func:`is_own_output` recognizes."""
    return f"<!-- {software_name()} -->"


def save_text(text: str, path: str | os.PathLike[str]) -> Path:
    """Writes a text file atomically (as :func:`save_image`: temporary file, fsync, rename; only the last level
    of a missing directory is created), :func:`text_tag` as its first line.

    Raises:
      ImageError: a directory that cannot be created or written, or a failed write.
    """
    path = Path(path).expanduser()
    data = (text_tag() + "\n" + text).encode("utf-8")
    _make_parent_dir(path)
    try:
        _atomic_write(path, lambda f: f.write(data))
    except (OSError, ValueError) as e:
        raise ImageError(f"could not write '{path}' ({e}); check free disk space and permissions") from e
    return path


def software_name() -> str:
    from nst_jax import __version__  # deferred: the package imports this module

    return f"{METADATA_KEY} {__version__}"


def _reject_directory(path: Path) -> None:
    if path.is_dir():
        raise ImageError(
            f"output path '{path}' is a directory; add a file name, e.g. '{path / 'out.png'}'"
        )


def _closest_existing(directory: Path) -> Path:
    """The nearest ancestor of ``directory`` (itself included) that exists."""
    directory = directory.absolute()
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory


def _check_missing_depth(parent: Path) -> None:
    """Only the last level of an output directory is ever created: a missing
    grandparent is far more often a typo than a wish for a new tree."""
    if parent.is_dir() or parent.parent.is_dir() or not _closest_existing(parent).is_dir():
        return  # (a file in the way is reported by the callers)
    raise ImageError(
        f"cannot create output directory '{parent}': its parent '{parent.parent}' does "
        f"not exist either (the closest existing directory is "
        f"'{_closest_existing(parent)}'); only the last level of an output directory is "
        "created, so check the path for a typo or create the directories first"
    )


def _make_parent_dir(path: Path) -> None:
    _reject_directory(path)
    parent = path.parent
    _check_missing_depth(parent)
    try:
        parent.mkdir(exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        blocker = _closest_existing(parent)
        raise ImageError(
            f"cannot create output directory '{parent}': '{blocker}' is a file, not a "
            "directory; choose another output path"
        ) from e
    except OSError as e:
        raise ImageError(
            f"cannot create output directory '{parent}' ({e.strerror or e}); choose "
            "another output path or fix the permissions"
        ) from e


def create_temp(path: Path) -> tuple[int, Path]:
    """Creates ``.<name>.<random>.tmp`` next to ``path``; returns (fd, temp path).

    Unlike tempfile.NamedTemporaryFile (mode 0600), the file gets the usual
    permissions (0666 minus the umask), which the final output then keeps.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a unique temporary file next to '{path}'")


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Writes via ``write(file)`` to a temp file, fsyncs it, renames it to ``path``."""
    try:
        fd, temp = create_temp(path)
    except PermissionError as e:
        raise ImageError(
            f"output directory '{path.parent}' is not writable; choose another output "
            "path or fix its permissions"
        ) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename durable. Best effort: some platforms (Windows) and
    # filesystems cannot fsync a directory; the file contents are synced anyway.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_metadata(path: str | os.PathLike[str]) -> dict | None:
    """Reads the metadata ``save_image`` embedded in a file.

    Args:
      path: an image written by ``save_image``.

    Returns:
      The metadata dict, or None if the file carries none.

    Raises:
      ImageError: the file is missing, not an image, or its metadata is not
        valid JSON.
    """
    path = Path(path).expanduser()
    name = f"image '{path}'"
    if not path.is_file():
        raise ImageError(f"{name} not found or not a file; check the path")
    try:
        with Image.open(path) as img:
            text = _metadata_text(img)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name} could not be read ({e}); check that it is an image file") from e
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ImageError(f"{name} has {METADATA_KEY} metadata that is not valid JSON ({e})") from e


def _metadata_text(img: Image.Image) -> str | None:
    if img.format == "PNG":
        return img.text.get(METADATA_KEY)  # reads text chunks after IDAT too
    exif = img.getexif()
    if str(exif.get(_EXIF_SOFTWARE, "")).startswith(METADATA_KEY):
        return exif.get(_EXIF_DESCRIPTION)
    return None  # some other program's ImageDescription is not ours
