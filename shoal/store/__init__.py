"""The workspace store, the ground floor: one directory of datasets, every write atomic.

Layout::

    <workspace>/
      datasets/<name>/
        dataset.json              name, created_at, has_images
        samples.parquet           one row per sample (sample_id, source, path, split, label, ...)
        objects.parquet           optional, one row per labelled or predicted box
        import_report.json        what the import accepted and rejected, and why
        images/<ab>/<sha256>.<ext> content-addressed copies of the uploaded images
        embeddings/<name>.json    pointer to the current version + model, dim, preprocessing
        embeddings/<name>-<version>.npy / .ids.npy   the matrix (memory-mappable) and its row ids
        embeddings/.partial-<name>/                  resumable per-batch checkpoints
        artefacts/<kind>/<key>.npz + .json           kNN graph, projection, scores, ...
      jobs/                       the job runner's records
      .staging/ .uploads/         imports and uploads in progress (held by their process)
      .trash/                     datasets being deleted
      .cache/queries/             query images of the Similar page

Writers go through a temporary file in the same directory, ``os.replace`` and an fsync of the
directory, so a crash at any moment leaves the previous state readable, and a reader sees either
the old or the new file. An embedding set is published by replacing only its small JSON pointer:
the matrix it names is written in full first, under a fresh version name. A full disk is a
``DiskFullError`` naming the file, a damaged file a ``CorruptFileError`` naming it (a damaged
cached result or checkpoint is computed again). ``Workspace.sweep`` removes what crashed work
left behind.

Example:
    >>> ws = Workspace("/tmp/ws")                                        # doctest: +SKIP
    >>> ds = ws.open("flowers"); ds.samples().head()                     # doctest: +SKIP
"""

from shoal.store.checkpoints import BatchCheckpoints, CheckpointMismatchError
from shoal.store.dataset import (
    MAX_ID_LENGTH,
    REQUIRED_COLUMNS,
    Dataset,
    EmbeddingInfo,
    EmbeddingSet,
    artefact_key,
    digest_values,
)
from shoal.store.errors import (
    MAX_NAME_LENGTH,
    CorruptFileError,
    DatasetNotFoundError,
    DiskFullError,
    InvalidNameError,
    StoreError,
    validate_name,
)
from shoal.store.files import (
    atomic_path,
    fsync_directory,
    json_default,
    make_dirs,
    read_json,
    replace_durably,
    sha256_file,
    utc_now,
    write_json,
    write_npy,
    write_parquet,
)
from shoal.store.locks import BusyError
from shoal.store.workspace import (
    DEFAULT_WORKSPACE,
    QUERY_MAX_AGE,
    SCRATCH_MAX_AGE,
    WORKSPACE_ENV,
    Workspace,
)

__all__ = [
    "BatchCheckpoints",
    "BusyError",
    "CheckpointMismatchError",
    "CorruptFileError",
    "DEFAULT_WORKSPACE",
    "DiskFullError",
    "MAX_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "QUERY_MAX_AGE",
    "REQUIRED_COLUMNS",
    "SCRATCH_MAX_AGE",
    "WORKSPACE_ENV",
    "Dataset",
    "DatasetNotFoundError",
    "EmbeddingInfo",
    "EmbeddingSet",
    "InvalidNameError",
    "StoreError",
    "Workspace",
    "artefact_key",
    "atomic_path",
    "digest_values",
    "fsync_directory",
    "json_default",
    "make_dirs",
    "read_json",
    "replace_durably",
    "sha256_file",
    "utc_now",
    "validate_name",
    "write_json",
    "write_npy",
    "write_parquet",
]
