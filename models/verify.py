"""Bundle verification: a bundle serves only if its content hash matches the version in its manifest.

``version`` is a content hash of the weights, the manifest and the tokenizer files (models/bundle.py). A
half-copied bundle (a weights file cut short by a failed ``kubectl cp``), an edited manifest (a threshold
changed by hand) or a swapped file all give another hash: such a bundle is refused before it serves a single
event, by ``Bundle.load`` (so ``enrich run`` and ``enrich replay`` alike) and by ``enrich check-config``.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.bundle import FORMAT, MANIFEST, _hash_dir

__all__ = ["BundleVerificationError", "reseal_bundle", "verify_bundle"]


class BundleVerificationError(ValueError):
    """The directory is not a bundle, or its contents do not match its manifest's version."""


def verify_bundle(path: str | Path) -> str:
    """Recompute the bundle's content hash; return its version, or raise :class:`BundleVerificationError`."""
    p = Path(path)
    manifest_path = p / MANIFEST
    if not manifest_path.is_file():
        raise BundleVerificationError(f"{p}: no {MANIFEST} (not a bundle directory, or not copied yet)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleVerificationError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleVerificationError(f"{p}: not an enrich bundle (format {fmt!r})")
    declared = manifest.get("version")
    actual = _hash_dir(p, manifest)
    if declared != actual:
        raise BundleVerificationError(
            f"{p}: content hash {actual} does not match the manifest's version {declared!r}: the bundle was "
            "edited or only partly copied; refusing to serve it (copy it again, or re-save it with enrich train)"
        )
    return actual


def reseal_bundle(path: str | Path) -> str:
    """Write the recomputed content hash into the manifest as its version; returns it.

    For a deliberate edit (a threshold changed in a copy for an experiment, a test's altered bundle): the
    edited bundle gets a version of its own instead of being refused. Never run it to "fix" a bundle that
    failed verification: that one is damaged, copy it again.
    """
    p = Path(path)
    manifest = json.loads((p / MANIFEST).read_text())
    manifest["version"] = _hash_dir(p, manifest)
    (p / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False))
    return str(manifest["version"])
