"""Many images: a folder, a glob pattern or a manifest file -> the list of image files of a batch job."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path


from nst_jax.images.base import IMAGE_EXTENSIONS, ImageError


_GLOB_CHARS = re.compile(r"[*?[]")


def list_images(spec: str | os.PathLike[str]) -> list[Path]:
    """Expands a directory, glob pattern, manifest file or image path to image paths.

    Args:
      spec: one of
        * a directory: its image files (by extension, see ``IMAGE_EXTENSIONS``;
          not recursive; hidden files skipped), sorted by name;
        * a glob pattern (``**`` recurses): matching image files, sorted;
        * a manifest: a text file with one image path per line; blank lines
          and lines starting with ``#`` are ignored; relative paths are
          relative to the manifest's directory; order is kept;
        * a single image file.

    Returns:
      A non-empty list of paths.

    Raises:
      ImageError: nothing matches, the spec does not exist, or a manifest
        lists files that do not exist.
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and _is_image_name(p))
        where = f"directory '{path}'"
    elif path.is_file():
        if _is_image_name(path):
            return [path]
        found = _read_manifest(path)
        where = f"manifest '{path}'"
    elif _GLOB_CHARS.search(text):
        matches = glob.glob(os.path.expanduser(text), recursive=True)
        found = sorted(Path(p) for p in matches if Path(p).is_file() and _is_image_name(Path(p)))
        where = f"glob pattern '{text}'"
    else:
        raise ImageError(
            f"'{text}' is not an existing directory, image, manifest file or glob "
            "pattern; check the path"
        )
    if not found:
        raise ImageError(
            f"no images found for {where}; image files must end in one of "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    return found


def _is_image_name(path: Path) -> bool:
    # Hidden files include macOS "._x.jpg" resource forks and our own temp files.
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _read_manifest(manifest: Path) -> list[Path]:
    try:
        lines = manifest.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise ImageError(
            f"manifest '{manifest}' is not a UTF-8 text file; list one image path per line"
        ) from e
    except OSError as e:
        raise ImageError(f"manifest '{manifest}' cannot be read ({e.strerror or e})") from e
    found, missing = [], []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        image = Path(entry).expanduser()
        image = image if image.is_absolute() else manifest.parent / image
        (found if image.is_file() else missing).append((number, image))
    if missing:
        shown = "; ".join(f"line {n}: '{p}'" for n, p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ImageError(
            f"manifest '{manifest}' lists {len(missing)} missing file(s): {shown}{more}; "
            f"fix or remove those lines (relative paths start at '{manifest.parent}')"
        )
    return [p for _, p in found]
