"""Zip a local directory for Ray's package store (``runtime_env`` ``working_dir``).

The zip is deterministic (sorted names, fixed timestamps) so its content hash, which
names the package, changes only when the files do: an unchanged directory is not
uploaded twice.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

DEFAULT_EXCLUDES = ("__pycache__", ".git", ".venv", ".venv-ray", ".pytest_cache", ".cache")
# Ray's package store refuses packages above its limit (500 MiB by default); stay well under.
MAX_PACKAGE_BYTES = 100 * 1024 * 1024
_EPOCH = (1980, 1, 1, 0, 0, 0)


def zip_directory(path: str | os.PathLike[str], *, excludes: tuple[str, ...] = (), include_parent: bool = False) -> bytes:
    """Zip ``path``'s contents and return the bytes.

    Files sit at the zip root for a ``working_dir``; under the directory's own name with
    ``include_parent`` for a ``py_modules`` package (so ``import <name>`` finds it).
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"working_dir {str(root)!r} is not a directory")
    skip = set(DEFAULT_EXCLUDES) | set(excludes)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            relative = file.relative_to(root)
            if any(part in skip for part in relative.parts):
                continue
            name = f"{root.name}/{relative.as_posix()}" if include_parent else relative.as_posix()
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = (file.stat().st_mode & 0o777) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, file.read_bytes())
    data = buffer.getvalue()
    if len(data) > MAX_PACKAGE_BYTES:
        raise ValueError(
            f"working_dir {str(root)!r} zips to {len(data) // (1024 * 1024)} MiB, over the "
            f"{MAX_PACKAGE_BYTES // (1024 * 1024)} MiB limit: exclude data files or ship them by URI"
        )
    return data


def package_uri(data: bytes) -> tuple[str, str]:
    """The ``gcs://`` URI for a zip and the dashboard path that stores it."""
    name = f"_ray_pkg_{hashlib.sha1(data).hexdigest()[:16]}.zip"
    return f"gcs://{name}", f"/api/packages/gcs/{name}"
