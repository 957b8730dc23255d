"""Streamlit glue shared by app.py and the pages: URL state, cached loaders, job panel, gallery.

Only thin Streamlit code lives here; the rules it applies (tokens, payloads, thumbnails,
uploads) are in :mod:`shoal.view`, and the computing is in :mod:`analysis` and the job runner.

URL state: at the start of a session app.py keeps the query string it was opened with
(``_url_initial``). A page calls :func:`url_state` for each value a teammate needs; that seeds
the session key from the link once and registers ``param -> key`` for this run. After the page
has run, app.py writes exactly the registered values (and the global ones) back to the URL, so
the address bar is always a link to what is on screen.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import numpy as np
import pandas as pd
import streamlit as st

from shoal import jobs, view
from shoal.store import DatasetNotFoundError, StoreError, Workspace

#: Analyses of sets up to this size run in the web process; larger ones go to a background job.
INLINE_MAX_SAMPLES = 5_000
GALLERY_PAGE_SIZE = 24
JOB_POLL_SECONDS = 1.0

#: ``level`` is None (images) or "object" (the boxes of a detection dataset).
GLOBAL_PARAMS = {"ds": "dataset", "emb": "embedding", "job": "job_id", "level": "level"}


APP_FILE = Path(__file__).resolve().parents[1] / "app.py"
_ENTRY = threading.local()


@contextlib.contextmanager
def entrypoint_run() -> Iterator[None]:
    """Marks this script run as going through app.py (see :func:`ensure_entrypoint`)."""
    _ENTRY.active = True
    try:
        yield
    finally:
        _ENTRY.active = False


def ensure_entrypoint() -> None:
    """Run app.py instead when Streamlit ran this page file on its own.

    A ``pages/`` folder beside the entrypoint puts a fresh Streamlit server in its old
    folder-discovery mode until some session has executed ``st.navigation``: the first deep link
    after a restart (``/map?...``) would run ``pages/map.py`` alone, without the access gate,
    sidebar or URL handling. Running app.py here routes that request properly, and app.py's
    ``st.navigation`` switches the server out of that mode for good.
    """
    if getattr(_ENTRY, "active", False):
        return
    code = compile(APP_FILE.read_bytes(), str(APP_FILE), "exec")
    exec(code, {"__name__": "__main__", "__file__": str(APP_FILE)})  # noqa: S102
    st.stop()


class PageDone(Exception):
    """Raised by :func:`stop`: the page is finished; app.py still writes the URL and the share link."""


def stop() -> NoReturn:
    """End the page here. Unlike st.stop(), the entrypoint's code after ``page.run()`` still runs."""
    raise PageDone()


# --------------------------------------------------------------------------- session and URL


def init_session() -> None:
    """Global keys; on the session's first run, seed them from the link it was opened with."""
    first_run = "_url_initial" not in st.session_state
    st.session_state.setdefault("_url_initial", dict(st.query_params.to_dict()))
    for key in GLOBAL_PARAMS.values():
        st.session_state.setdefault(key, None)
    st.session_state.setdefault("access_ok", False)
    st.session_state["_url_bound"] = {}
    if first_run:
        initial = st.session_state["_url_initial"]
        for param, key in GLOBAL_PARAMS.items():
            st.session_state[key] = initial.pop(param, None) or None


def url_state(
    param: str, key: str, default: Any = None, *, cast: Callable[[str], Any] = str
) -> Any:
    """The session value ``key``, seeded once from the link's ``param``; written back to the URL."""
    if key not in st.session_state:
        raw = st.session_state["_url_initial"].pop(param, None)
        value = default
        if raw is not None:
            try:
                value = cast(raw)
            except (ValueError, TypeError):
                st.warning(f"Ignored the link's {param}={raw!r}: not a valid value.")
        st.session_state[key] = value
    st.session_state["_url_bound"][param] = (key, default)
    return st.session_state[key]


def url_params() -> dict[str, str]:
    """The query parameters that describe what is on screen now."""
    params: dict[str, str] = {}
    for param, key in GLOBAL_PARAMS.items():
        value = st.session_state.get(key)
        if value:
            params[param] = str(value)
    for param, (key, default) in st.session_state.get("_url_bound", {}).items():
        value = st.session_state.get(key)
        if value is not None and value != default and value != "":
            params[param] = str(value)
    return params


def write_url() -> None:
    params = url_params()
    if params != st.query_params.to_dict():
        st.query_params.from_dict(params)


def share_link(page_path: str) -> str:
    """The full link to this view: SHOAL_PUBLIC_URL, else the browser's address, else the Host."""
    try:
        context_url = st.context.url
        host = st.context.headers.get("Host")
    except Exception:  # noqa: BLE001 - no browser context (tests, bare mode)
        context_url, host = None, None
    base = view.page_base_url(
        public_url=view.env_flag("SHOAL_PUBLIC_URL"),
        context_url=context_url,
        host=host,
        page_path=page_path,
    )
    return view.share_url(base, url_params())


# --------------------------------------------------------------------------- access


def access_gate() -> bool:
    """True when the visitor may use the app: OIDC login if configured, else a shared token."""
    if _oidc_configured():
        if st.user.is_logged_in:
            with st.sidebar:
                st.caption(f"Signed in as {st.user.get('email') or st.user.get('name') or 'user'}")
                st.button("Log out", on_click=st.logout, key="auth_logout")
            return True
        st.title("Shoal")
        st.write("Sign in to look at this team's datasets.")
        st.button("Log in", on_click=st.login, type="primary", key="auth_login")
        return False
    token = view.env_flag("SHOAL_ACCESS_TOKEN")
    if token is None or st.session_state.get("access_ok"):
        return True
    st.title("Shoal")
    with st.form("access_form"):
        given = st.text_input(
            "Access token", type="password", help="Ask whoever runs this Shoal server."
        )
        submitted = st.form_submit_button("Enter", type="primary")
    if submitted:
        if hmac.compare_digest(given.encode(), token.encode()):
            st.session_state["access_ok"] = True
            st.rerun()
        time.sleep(1.0)  # slows guessing
        st.error("That token is not right.")
    return False


def _oidc_configured() -> bool:
    try:
        return bool(st.secrets.load_if_toml_exists() and "auth" in st.secrets)
    except Exception:  # noqa: BLE001 - an unreadable secrets file means no OIDC
        return False


# --------------------------------------------------------------------------- workspace and data


def workspace() -> Workspace:
    """The workspace named by $SHOAL_WORKSPACE (set by `shoal serve`), else ./shoal-workspace."""
    return _workspace(os.environ.get("SHOAL_WORKSPACE") or "")


@st.cache_resource
def _workspace(root: str) -> Workspace:
    return Workspace(root or None)


def dataset_names() -> list[str]:
    return workspace().list_datasets()


def current_dataset(*, required: bool = True):
    """The selected Dataset, or None (with a pointer to the Datasets page) when there is none."""
    name = st.session_state.get("dataset")
    if not name:
        if required:
            st.info(
                "No dataset yet. Create one on the **Datasets** page (drag in images or a zip)."
            )
            st.page_link("pages/datasets.py", label="Go to Datasets", icon=":material/folder:")
        return None
    try:
        return workspace().open(name)
    except (DatasetNotFoundError, StoreError) as error:
        st.warning(str(error))
        return None


def no_embeddings_notice(ds) -> None:
    """Why a page that needs embeddings is empty, and what is happening about it."""
    running = [r for r in jobs.list_jobs(workspace(), dataset=ds.name, kind="embed") if r.active]
    if running:
        st.info(
            f"Embeddings for **{ds.name}** are being generated; this page fills in when they are ready."
        )
        job_panel(running[0].id, key="notice")
    else:
        st.info(f"**{ds.name}** has no embeddings yet. Generate them on the Datasets page.")
        st.page_link("pages/datasets.py", label="Go to Datasets", icon=":material/folder:")


def dataset_stamp(ds) -> str:
    """Changes whenever the samples table or any embedding set of ``ds`` changes (cache key)."""
    parts = [str((ds.root / "samples.parquet").stat().st_mtime_ns)]
    objects = ds.root / "objects.parquet"
    if objects.exists():
        parts.append(f"objects:{objects.stat().st_mtime_ns}")
    embeddings = ds.root / "embeddings"
    if embeddings.exists():
        parts += sorted(f"{p.name}:{p.stat().st_mtime_ns}" for p in embeddings.glob("*.json"))
    return "|".join(parts)


def has_object_level(ds) -> bool:
    """True when ``ds`` has an object-level embedding set (then the level switch is shown)."""
    return ds.default_embedding(level="object") is not None


def current_level(ds) -> str:
    """'object' when the session (or link) asks for objects and ``ds`` has them, else 'sample'."""
    if st.session_state.get("level") == "object" and has_object_level(ds):
        return "object"
    return "sample"


def level_embedding_names(ds, level: str) -> list[str]:
    return [n for n in ds.embedding_names() if ds.embedding_info(n).level == level]


def embedding_choice(ds, *, level: str | None = None) -> str | None:
    """The embedding set chosen for ``ds`` (session/URL) at ``level`` (default: the current one),
    falling back to the dataset's default set of that level."""
    current = current_level(ds)
    level = level or current
    names = level_embedding_names(ds, level)
    chosen = st.session_state.get("embedding")
    if chosen not in names:
        chosen = ds.default_embedding(level=level)
        if level == current:
            st.session_state["embedding"] = None
    return chosen


@st.cache_data(show_spinner=False, max_entries=16)
def load_samples(root: str, name: str, stamp: str) -> pd.DataFrame:
    return Workspace(root).open(name).samples()


@st.cache_data(show_spinner=False, max_entries=16)
def aligned_samples(root: str, name: str, stamp: str, embedding: str | None) -> pd.DataFrame:
    """The metadata table in the embedding set's row order (row i = embedding row i).

    For an object-level set, one row per box: the objects table joined with its image's columns.
    """
    ds = Workspace(root).open(name)
    if embedding is None:
        return ds.samples().reset_index(drop=True)
    import shoal.workflows.analyse as aw

    return aw.row_metadata(ds, ds.load_embeddings(embedding))


def embedding_version(ds, embedding: str) -> str:
    return ds.embedding_info(embedding).version


class PageData(NamedTuple):
    ds: Any
    embedding: str
    root: str
    stamp: str
    version: str
    samples: pd.DataFrame  # row i = embedding row i


def page_data(*, level: str | None = None, analysis: str | None = None) -> PageData:
    """The selected dataset and embedding set, with its rows in embedding order.

    Stops the page, saying what to do, when there is no dataset or no embedding set; with
    ``analysis`` (e.g. "map"), also until a large set's background analysis has finished.
    """
    ds = current_dataset()
    if ds is None:
        stop()
    embedding = embedding_choice(ds, level=level)
    if embedding is None:
        no_embeddings_notice(ds)
        stop()
    root, stamp = str(workspace().root), dataset_stamp(ds)
    samples = aligned_samples(root, ds.name, stamp, embedding)
    if analysis is not None and not request_analysis(ds, embedding, len(samples), what=analysis):
        stop()
    return PageData(ds, embedding, root, stamp, embedding_version(ds, embedding), samples)


# --------------------------------------------------------------------------- analyses


def analysis_ready(ds, embedding: str, n_samples: int) -> bool:
    """Small sets compute in place; a large set needs its 'analyse' job to have finished."""
    if n_samples <= INLINE_MAX_SAMPLES:
        return True
    version = embedding_version(ds, embedding)
    return any(
        r.state == "done" and (r.result or {}).get("version") == version
        for r in jobs.list_jobs(workspace(), dataset=ds.name, kind="analyse")
    )


def request_analysis(ds, embedding: str, n_samples: int, *, what: str) -> bool:
    """Show the 'compute' affordance for a large set; True once its results are ready."""
    if analysis_ready(ds, embedding, n_samples):
        return True
    st.info(
        f"{ds.name} has {n_samples:,} samples: the {what} is computed once in the background "
        "(neighbour graph, map, scores) and then opens instantly for everyone."
    )
    active = jobs.find_active(
        workspace(), "analyse", dataset=ds.name, params={"embedding": embedding}
    )
    if active is not None:
        st.session_state["job_id"] = active.id
        job_panel(active.id, key=f"analyse_{what}")
    elif st.button(f"Compute the {what}", type="primary", key=f"analyse_{what}"):
        st.session_state["job_id"] = jobs.submit(
            workspace(), "analyse", dataset=ds.name, params={"embedding": embedding}
        )
        st.rerun()
    return False


def _computed(
    function_name: str, root: str, name: str, embedding: str, version: str, **params: Any
) -> Any:
    import shoal.workflows.analyse as aw

    ds = Workspace(root).open(name)
    return getattr(aw, function_name)(ds, embedding, **params)


@st.cache_data(show_spinner="Building the neighbour graph…", max_entries=8)
def neighbours(root: str, name: str, embedding: str, version: str) -> tuple[np.ndarray, np.ndarray]:
    """The shared kNN graph: (indices, distances), each (n_samples, k), nearest first."""
    graph = _computed("knn_graph", root, name, embedding, version).result
    return graph.indices, graph.distances


@st.cache_data(show_spinner="Computing the map (UMAP)…", max_entries=8)
def projection(root: str, name: str, embedding: str, version: str) -> dict[str, Any]:
    result = _computed("project", root, name, embedding, version).result
    return {
        "coords": result.coords,
        "preservation": result.neighborhood_preservation,
        "trustworthiness": result.trustworthiness,
        "method": result.method,
    }


@st.cache_data(show_spinner="Scoring outliers…", max_entries=16)
def outliers(root: str, name: str, embedding: str, version: str, method: str = "knn") -> Any:
    return _computed("outliers", root, name, embedding, version, method=method).result


@st.cache_data(show_spinner="Finding near-duplicates…", max_entries=16)
def duplicates(root: str, name: str, embedding: str, version: str, threshold: float | None) -> Any:
    return _computed("duplicates", root, name, embedding, version, threshold=threshold).result


@st.cache_data(show_spinner="Checking labels against neighbours…", max_entries=8)
def mislabels(root: str, name: str, embedding: str, version: str) -> Any:
    return _computed("mislabels", root, name, embedding, version).result


@st.cache_data(show_spinner="Comparing…", max_entries=16)
def comparison(
    root: str,
    name: str,
    embedding: str,
    version: str,
    reference: str,
    current: str | None,
    method: str,
) -> Any:
    from shoal.workflows.compare import compare_dataset

    ds = Workspace(root).open(name)
    return compare_dataset(
        ds, reference=reference, current=current or None, embedding=embedding, method=method
    ).result


@st.cache_data(show_spinner=False, max_entries=64)
def similar(
    root: str,
    name: str,
    embedding: str,
    version: str,
    sample_ids: tuple[str, ...] | None,
    vector: bytes | None,
    k: int,
) -> Any:
    query = None if vector is None else np.frombuffer(vector, dtype=np.float32)
    ds = Workspace(root).open(name)
    import shoal.workflows.analyse as aw

    return aw.similar(
        ds, embedding, sample_ids=list(sample_ids) if sample_ids else None, vector=query, k=k
    ).result


@st.cache_resource(show_spinner="Loading the embedding model…", max_entries=2)
def embedding_model(model_name: str):
    import torch

    from embedding import create_model

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    return create_model(model_name)


# --------------------------------------------------------------------------- jobs


def job_panel(job_id: str, *, key: str = "main", on_done: str = "rerun") -> None:
    """A job's progress (polled while it runs), its error if it failed, and a cancel button."""
    try:
        record = jobs.get(workspace(), job_id)
    except StoreError:
        st.caption(f"Job {job_id} is not in this workspace.")
        return
    if record.active:
        _job_live(job_id, key, on_done)
    else:
        _job_summary(record)


def _job_summary(record) -> None:
    label = f"{record.kind} · {record.dataset or ''}"
    if record.state == "done":
        result = record.result or {}
        detail = ", ".join(
            f"{k} {v}" for k, v in result.items() if k in ("embedding", "count", "dim", "steps")
        )
        st.success(f"Job {label} finished" + (f": {detail}" if detail else "") + ".")
    elif record.state == "failed":
        st.error(f"Job {label} failed: {record.error}")
    elif record.state == "cancelled":
        st.warning(
            f"Job {label} was cancelled; finished work is kept (embedding resumes where it stopped)."
        )


def _job_live(job_id: str, key: str, on_done: str) -> None:
    @st.fragment(run_every=JOB_POLL_SECONDS)
    def live() -> None:
        record = jobs.get(workspace(), job_id)
        if not record.active:
            if on_done == "rerun":
                st.rerun()
            _job_summary(record)
            return
        progress = record.progress
        label = f"{record.kind} · {record.dataset or ''} · {record.state}"
        st.progress(
            progress.fraction,
            text=label
            + " — "
            + view.progress_caption(
                progress.done, progress.total, progress.rate, progress.eta_seconds, progress.unit
            )
            + (f" · {progress.message}" if progress.message else ""),
        )
        if st.button("Cancel", key=f"{key}_cancel_{job_id}"):
            with st.spinner("Stopping the job at its next checkpoint…"):
                jobs.cancel(workspace(), job_id, grace_seconds=10.0)
            st.rerun()

    live()


# --------------------------------------------------------------------------- gallery


def gallery(
    ds,
    samples: pd.DataFrame,
    rows: Sequence[int] | np.ndarray,
    *,
    key: str,
    captions: Sequence[str] | None = None,
    per_page: int = GALLERY_PAGE_SIZE,
    min_width: int = 150,
    actions: Callable[[int], None] | None = None,
) -> None:
    """Thumbnails (or metadata cards for sets without images) of ``rows``, a page at a time."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        st.caption("Nothing to show.")
        return
    pages = max(1, -(-len(rows) // per_page))
    page = 1
    if pages > 1:
        page = st.pagination(pages, key=f"{key}_page", max_visible_pages=9)
    start = (int(page) - 1) * per_page
    shown = rows[start : start + per_page]
    if pages > 1:
        st.caption(f"{start + 1}–{start + len(shown)} of {len(rows):,}")
    grid = st.grid(min_column_width=min_width, border=True, gap="xsmall")
    for i, row in enumerate(shown):
        with grid.cell():
            sample_tile(
                ds, samples, int(row), caption=captions[start + i] if captions is not None else None
            )
            if actions is not None:
                actions(int(row))


def sample_tile(
    ds, samples: pd.DataFrame, row: int, *, caption: str | None = None, lines: int = 3
) -> None:
    """One sample: its thumbnail and a few metadata lines, or a metadata card without images."""
    record = samples.iloc[int(row)]
    path = record.get("path") if "path" in samples else None
    if ds.has_images and isinstance(path, str) and path:
        box = view.object_box(samples, int(row))
        if box is not None:
            image = box_thumbnail(str(workspace().root), str(ds.image_file(path)), box)
        else:
            image = thumbnail(str(workspace().root), str(ds.image_file(path)))
        st.image(image, width="stretch")
        st.caption(
            "  \n".join(
                ([caption] if caption else []) + view.tile_caption(samples, int(row))[:lines]
            )
        )
    else:
        details = view.describe_rows(samples, int(row), limit=8)
        st.markdown(
            "  \n".join(([f"**{caption}**"] if caption else []) + [f"`{line}`" for line in details])
        )


@st.cache_data(show_spinner=False, max_entries=4096)
def thumbnail(root: str, image: str) -> bytes:
    return view.thumbnail(Workspace(root), Path(image))


@st.cache_data(show_spinner=False, max_entries=4096)
def box_thumbnail(root: str, image: str, box: tuple[float, float, float, float]) -> bytes:
    return view.box_thumbnail(Workspace(root), Path(image), box)


def download_csv(label: str, table: pd.DataFrame, *, file_name: str, key: str) -> None:
    st.download_button(
        label,
        data=view.to_csv_bytes(table),
        file_name=file_name,
        mime="text/csv",
        key=key,
        icon=":material/download:",
    )
