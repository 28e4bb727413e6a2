"""Document sources for the sharded token store: a fixed sequence of documents numbered 0, 1, 2, ...

    src = open_source("corpus/")                     # folder of .txt, saved dataset, .jsonl, or a hub name
    for label, text, data in src.documents(start=0): ...

Sources (`open_source`):
- a folder: every ``*.txt`` file below it (recursive, symlinked folders not followed), sorted by
  relative POSIX path, one document per file, read as strict UTF-8;
- a folder written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``: pick ``split``), one
  document per row, the text in column ``text_field``;
- a ``.json``/``.jsonl``/``.parquet``/``.csv``/``.arrow`` file, or any ``datasets.load_dataset`` name
  (``hf:NAME`` forces the hub; ``data_files=`` for builders such as "json"), streamed, never
  downloaded whole. Without network, a hub name is a `DataError` that names the local alternative.

Each source has an `identity` (what the store's fingerprint hashes: a folder's relative paths,
sizes and mtimes; a saved dataset's files and datasets fingerprint; a hub dataset's name, config,
split, revision and data files) and can start reading at any document (earlier files and
saved-dataset rows are not read; a streamed dataset skips them as it streams).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from jaxgpt.data.corpus import DataError
from jaxgpt.optional import require

DATASET_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}

Document = Tuple[str, str, bytes]  # (label, text, its UTF-8 bytes)


@dataclasses.dataclass(frozen=True)
class DocumentSource:
    """A fixed, ordered sequence of documents. Make one with `open_source`."""

    kind: str  # "folder" | "saved_dataset" | "datasets"
    name: str
    location: str
    description: str
    identity: Dict[str, Any]  # what the fingerprint hashes
    num_documents: Optional[int]  # None when streamed with no known length
    _iterate: Callable[[int], Iterator[Document]] = dataclasses.field(repr=False, compare=False)

    def documents(self, start: int = 0) -> Iterator[Document]:
        """(label, text, UTF-8 bytes) of documents start, start+1, ... (earlier ones are not read)."""
        return self._iterate(start)


def _sha256_lines(lines: Sequence[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def _stat_listing(root: str, rels: Sequence[str]) -> Tuple[str, int]:
    """(sha256 of "relpath size mtime_ns" lines, total bytes)."""
    lines, total = [], 0
    for rel in rels:
        try:
            st = os.stat(os.path.join(root, rel))
        except OSError as e:
            raise DataError(f"cannot read {os.path.join(root, rel)}: {e.strerror or e}") from None
        lines.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}")
        total += st.st_size
    return _sha256_lines(lines), total


def _txt_files(root: str) -> List[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):  # followlinks=False: no cycles, no escapes
        dirnames.sort()
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            if fn.endswith(".txt") and os.path.isfile(full):
                found.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(found)


def _folder_source(root: str) -> DocumentSource:
    files = _txt_files(root)
    if not files:
        raise DataError(f"folder {root!r} has no .txt files (searched recursively): nothing to tokenize")
    listing, total = _stat_listing(root, files)

    def iterate(start: int) -> Iterator[Document]:
        for rel in files[start:]:
            path = os.path.join(root, rel)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise DataError(f"cannot read {path}: {e.strerror or e}") from None
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
            yield rel, text, data

    return DocumentSource(
        "folder", os.path.basename(root.rstrip(os.sep)) or root, root,
        f"{len(files):,} .txt files below {root} ({total:,} bytes)",
        {"kind": "folder", "files": len(files), "bytes": total, "listing_sha256": listing},
        len(files), iterate,
    )


def _import_datasets():
    # optional dependency, only for dataset sources
    return require("datasets", "this source", alternative="or pass a folder of .txt files")


def _as_text(value: Any, label: str, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{label}: field {field!r} holds {type(value).__name__}, not text (pass text_field=)")
    return value


def _saved_dataset_source(root: str, split: str, text_field: str) -> DocumentSource:
    datasets = _import_datasets()
    try:
        ds = datasets.load_from_disk(root)
    except Exception as e:  # noqa: BLE001 - any failure to open it means the same to the user
        raise DataError(f"cannot open the saved dataset {root!r}: {type(e).__name__}: {first_line(e)}") from None
    used_split = None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"saved dataset {root!r} has splits {list(ds)}, not {split!r}: pass split=")
        ds, used_split = ds[split], split
    if text_field not in ds.column_names:
        raise DataError(f"saved dataset {root!r} has no column {text_field!r} (columns: {ds.column_names}): "
                        "pass text_field=")
    n = len(ds)
    rels = sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                  for d, _, fs in os.walk(root) for f in fs)
    listing, total = _stat_listing(root, rels)
    column = ds.select_columns([text_field])

    def iterate(start: int) -> Iterator[Document]:
        i = start
        for batch in column.select(range(start, n)).iter(batch_size=1000):
            for value in batch[text_field]:
                text = _as_text(value, f"{root} row {i}", text_field)
                yield f"row {i}", text, text.encode("utf-8")
                i += 1

    where = f", split {used_split!r}" if used_split else ""
    return DocumentSource(
        "saved_dataset", os.path.basename(root.rstrip(os.sep)) or root, root,
        f"saved dataset {root}{where} ({n:,} rows, field {text_field!r})",
        {"kind": "saved_dataset", "split": used_split, "text_field": text_field, "rows": n,
         "datasets_fingerprint": getattr(ds, "_fingerprint", None), "bytes": total, "listing_sha256": listing},
        n, iterate,
    )


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): one-line errors."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _hub_offline(datasets) -> bool:
    env = any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return env or bool(getattr(getattr(datasets, "config", None), "HF_HUB_OFFLINE", False))


def _data_files_identity(data_files: Any) -> Any:
    """data_files as given, plus a stat listing of the local files they name (globs expanded)."""
    if data_files is None:
        return None
    if isinstance(data_files, (str, os.PathLike)):
        patterns = [os.fspath(data_files)]
    elif isinstance(data_files, dict):
        return {k: _data_files_identity(v) for k, v in sorted(data_files.items())}
    else:
        patterns = [os.fspath(p) for p in data_files]
    files = sorted({os.path.abspath(f) for p in patterns for f in glob.glob(os.path.expanduser(p), recursive=True)
                    if os.path.isfile(f)})
    listing, total = _stat_listing("/", [f.lstrip("/") for f in files]) if files else (None, 0)
    return {"patterns": patterns, "local_files": len(files), "bytes": total, "listing_sha256": listing}


def _datasets_source(path: str, *, text_field: str, split: str, dataset_config: Optional[str], revision: Optional[str],
                     data_files: Any, cache_dir: Optional[str], label: Optional[str] = None) -> DocumentSource:
    datasets = _import_datasets()
    kwargs: Dict[str, Any] = {"split": split, "streaming": True}
    if dataset_config is not None:
        kwargs["name"] = dataset_config
    if revision is not None:
        kwargs["revision"] = revision
    if data_files is not None:
        kwargs["data_files"] = data_files
    if cache_dir is not None:
        kwargs["cache_dir"] = os.fspath(cache_dir)
    try:
        ds = datasets.load_dataset(path, **kwargs)
    except Exception as e:  # noqa: BLE001 - network, missing dataset, bad config: one message
        if data_files is not None:
            raise DataError(f"cannot load {data_files!r} with the datasets builder {path!r}: "
                            f"{type(e).__name__}: {first_line(e)}") from None
        offline = " (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)" if _hub_offline(datasets) else ""
        raise DataError(
            f"cannot fetch the Hugging Face dataset {path!r}{offline}, and there is no local folder by that name: "
            f"{type(e).__name__}: {first_line(e)}. Without network access, save it once where the network "
            f"allows (datasets.load_dataset({path!r}, split={split!r}).save_to_disk(DIR)) and pass DIR as the "
            "source, or pass a folder of .txt files"
        ) from None

    def iterate(start: int) -> Iterator[Document]:
        stream = ds.skip(start) if start else ds
        i = start
        for row in stream:
            if text_field not in row:
                raise DataError(f"dataset {path!r} has no field {text_field!r} (fields: {sorted(row)}): pass text_field=")
            text = _as_text(row[text_field], f"{path} row {i}", text_field)
            yield f"row {i}", text, text.encode("utf-8")
            i += 1

    name = label or path
    location = path if data_files is None else f"{path}:{data_files if isinstance(data_files, str) else data_files!r}"
    return DocumentSource(
        "datasets", name.replace("/", "_"), location,
        f"datasets {path!r} (config {dataset_config!r}, split {split!r}, revision {revision!r}, field {text_field!r}, "
        f"streamed{'' if data_files is None else f', data_files {data_files!r}'})",
        {"kind": "datasets", "path": path, "config": dataset_config, "split": split, "revision": revision,
         "text_field": text_field, "data_files": _data_files_identity(data_files)},
        None, iterate,
    )


def open_source(
    source: Union[str, os.PathLike, DocumentSource],
    *,
    text_field: str = "text",
    split: str = "train",
    dataset_config: Optional[str] = None,
    revision: Optional[str] = None,
    data_files: Any = None,
    cache_dir: Optional[str] = None,
) -> DocumentSource:
    """The documents of `source`: an existing folder (of .txt files, or saved by `save_to_disk`), a
    .json/.jsonl/.parquet/.csv/.arrow file, a `datasets` builder with data_files= (e.g. "json"), or
    a Hugging Face dataset name ("hf:NAME" skips the local lookup). text_field, split,
    dataset_config, revision and cache_dir apply to dataset sources."""
    if isinstance(source, DocumentSource):
        return source
    if not isinstance(source, (str, os.PathLike)) or not os.fspath(source):
        raise DataError(f"source must be a non-empty path or dataset name, got {source!r}")
    source = os.fspath(source)
    opts = dict(text_field=text_field, split=split, dataset_config=dataset_config, revision=revision, cache_dir=cache_dir)
    if source.startswith("hf:"):
        return _datasets_source(source[3:], data_files=data_files, **opts)
    if data_files is not None:
        return _datasets_source(source, data_files=data_files, **opts)
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        root = os.path.abspath(path)
        if any(os.path.isfile(os.path.join(root, f)) for f in ("state.json", "dataset_dict.json")):
            return _saved_dataset_source(root, split, text_field)
        return _folder_source(root)
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext in DATASET_FILE_BUILDERS:
            full = os.path.abspath(path)
            return _datasets_source(DATASET_FILE_BUILDERS[ext], data_files=[full], label=os.path.basename(full), **opts)
        raise DataError(f"{source!r} is a {ext or 'extensionless'} file: a sharded source is a folder of .txt files "
                        f"(one document each) or a dataset ({', '.join(DATASET_FILE_BUILDERS)}); for a single text "
                        "file use jaxgpt.data.corpus.prepare (--dataset=FILE)")
    if os.path.isabs(path) or source.startswith((".", "~")) or source.endswith(("/", os.sep)):
        raise DataError(f"source {source!r}: no such file or folder")
    return _datasets_source(source, data_files=None, **opts)

