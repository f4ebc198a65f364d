"""IterComp model galleries: gallery -> ranking (`compalign.ranking`) -> pairs (`compalign.pairs`).

- `format`: the on-disk gallery (IterComp's ``gallery.json`` + metadata and rank sidecars),
  loading with one-line `GalleryError` messages naming the record and field;
- `generate`: render prompts with several models under the same settings (resumable, sharded);
- `itercomp`: import / export of IterComp's exact format;
- `expand`: add models, keeping the old rank as ``initial_rank``.
"""

from .format import Gallery, GalleryError, Record, load_gallery

__all__ = ["Gallery", "GalleryError", "Record", "load_gallery"]
