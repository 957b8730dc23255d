"""Streamlit glue shared by app.py and the pages: entry, URL state, access, the page's data.

The pages' other shared code: :mod:`pages._loaders` (cached workspace, analyses, thumbnails) and
:mod:`pages._widgets` (job panel, gallery, CSV export). The rules they apply (tokens, payloads,
thumbnails, uploads) are in :mod:`shoal.app`, and the computing in :mod:`shoal.workflows` and the
job runner. Modules starting with ``_`` are not pages: Streamlit ignores them.

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import numpy as np
import pandas as pd
import streamlit as st

from pages import _loaders as loaders
from pages._widgets import job_panel
from shoal import jobs
from shoal.app.selection import page_base_url, share_url
from shoal.app.text import escape_markdown, visitor_error
from shoal.store import Dataset, DatasetNotFoundError, StoreError
from shoal.store.collections import CollectionNotFoundError, Collections

#: Analyses of sets up to this size run in the web process; larger ones go to a background job.
INLINE_MAX_SAMPLES = 5_000

#: ``level`` is None (images) or "object" (the boxes of a detection dataset).
#: ``collection`` names a saved collection of the dataset: every page then shows its members only.
GLOBAL_PARAMS = {
    "ds": "dataset",
    "emb": "embedding",
    "job": "job_id",
    "level": "level",
    "collection": "collection",
}


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
                st.warning(
                    f"Ignored the link's {escape_markdown(f'{param}={raw!r}')}: not a valid value."
                )
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
    base = page_base_url(
        public_url=env_flag("SHOAL_PUBLIC_URL"),
        context_url=context_url,
        host=host,
        page_path=page_path,
    )
    return share_url(base, url_params())


def env_flag(name: str) -> str | None:
    """An environment setting, or None when it is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


# --------------------------------------------------------------------------- access


def access_gate() -> bool:
    """True when the visitor may use the app: OIDC login plus the allow-list if configured
    (see shoal.app.access), else a shared token. A secrets file that cannot be read refuses
    everyone rather than falling back to an open app."""
    try:
        oidc = _oidc_configured()
    except Exception as error:  # noqa: BLE001 - any unreadable secrets file: fail closed
        st.title("Shoal")
        st.error(
            "This server's sign-in settings (.streamlit/secrets.toml) cannot be read, so nobody "
            f"can enter until its administrator fixes them ({type(error).__name__})."
        )
        return False
    if oidc:
        if st.user.is_logged_in:
            refused = _refusal()
            with st.sidebar:
                who = st.user.get("email") or st.user.get("name") or "user"
                st.caption(f"Signed in as {escape_markdown(who)}")
                st.button("Log out", on_click=st.logout, key="auth_logout")
            if refused is None:
                return True
            st.title("Shoal")
            st.error(refused)
            return False
        st.title("Shoal")
        st.write("Sign in to look at this team's datasets.")
        st.button("Log in", on_click=st.login, type="primary", key="auth_login")
        return False
    token = env_flag("SHOAL_ACCESS_TOKEN")
    if token is None or _token_passed(token):
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


def access_allowed() -> bool:
    """What :func:`access_gate` will decide, without drawing anything (app.py needs it before
    declaring the navigation, which must come before any widget of the gate)."""
    try:
        if _oidc_configured():
            return bool(st.user.is_logged_in) and _refusal() is None
    except Exception:  # noqa: BLE001 - unreadable settings: nobody enters
        return False
    token = env_flag("SHOAL_ACCESS_TOKEN")
    return token is None or _token_passed(token)


def _refusal() -> str | None:
    """Why the signed-in (OIDC) user may not enter, or None (shoal.app.access)."""
    from shoal.app.access import AllowList, admission

    return admission(st.user.to_dict(), AllowList.from_env(os.environ))


def _token_passed(token: str) -> bool:
    """The shared token was entered in this session, or at the server's gate (its cookie)."""
    from shoal.app.gate import COOKIE_NAME, token_cookie_valid

    return bool(st.session_state.get("access_ok")) or token_cookie_valid(
        token, st.context.cookies.get(COOKIE_NAME)
    )


def signed_in_user() -> str | None:
    """The signed-in user's email (OIDC), for the provenance of what they save; else None."""
    try:
        if _oidc_configured() and st.user.is_logged_in:
            return str(st.user.get("email") or st.user.get("name") or "") or None
    except Exception:  # noqa: BLE001 - no settings, no user
        return None
    return None


def _oidc_configured() -> bool:
    """Whether .streamlit/secrets.toml has an [auth] section; raises when it cannot be read."""
    return bool(st.secrets.load_if_toml_exists() and "auth" in st.secrets)


# --------------------------------------------------------------------------- workspace and data


def dataset_names() -> list[str]:
    return loaders.workspace().list_datasets()


def current_dataset(*, required: bool = True) -> Dataset | None:
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
        return loaders.workspace().open(name)
    except (DatasetNotFoundError, StoreError) as error:
        st.warning(visitor_error(error))
        return None


def no_embeddings_notice(ds: Dataset) -> None:
    """Why a page that needs embeddings is empty, and what is happening about it."""
    running = [
        r for r in jobs.list_jobs(loaders.workspace(), dataset=ds.name, kind="embed") if r.active
    ]
    if running:
        st.info(
            f"Embeddings for **{escape_markdown(ds.name)}** are being generated; this page fills in when they are ready."
        )
        job_panel(running[0].id, key="notice")
    else:
        st.info(
            f"**{escape_markdown(ds.name)}** has no embeddings yet. Generate them on the Datasets page."
        )
        st.page_link("pages/datasets.py", label="Go to Datasets", icon=":material/folder:")


def dataset_key(ds: Dataset) -> str:
    """Which dataset (its folder: unique across datasets and workspaces), for cache keys."""
    return str(ds.root)


def dataset_stamp(ds: Dataset) -> str:
    """Changes whenever the samples table or any embedding set of ``ds`` changes (cache key)."""
    return ds.stamp()


def has_object_level(ds: Dataset) -> bool:
    """True when ``ds`` has an object-level embedding set (then the level switch is shown)."""
    return ds.default_embedding(level="object") is not None


def current_level(ds: Dataset) -> str:
    """'object' when ``ds`` has box embeddings and the session (or link) asks for objects, or
    asks for nothing while the only sets are box sets or the link names one (``emb=``);
    else 'sample'. The level picker records "sample" when a visitor chooses Images."""
    if not has_object_level(ds):
        return "sample"
    wanted = st.session_state.get("level")
    if wanted == "object":
        return "object"
    if wanted is None and (
        ds.default_embedding(level="sample") is None
        or st.session_state.get("embedding") in level_embedding_names(ds, "object")
    ):
        return "object"
    return "sample"


def level_embedding_names(ds: Dataset, level: str) -> list[str]:
    return [n for n in ds.embedding_names() if ds.embedding_info(n).level == level]


def embedding_choice(ds: Dataset, *, level: str | None = None) -> str | None:
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


def embedding_version(ds: Dataset, embedding: str) -> str:
    return ds.embedding_info(embedding).version


class PageData(NamedTuple):
    ds: Dataset
    embedding: str
    dataset_key: str
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
    key, stamp = dataset_key(ds), dataset_stamp(ds)
    try:
        samples = loaders.aligned_samples(ds, key, stamp, embedding)
    except StoreError as error:  # a damaged embedding set or table: say so, keep the app
        st.error(visitor_error(error))
        stop()
    if analysis is not None and not request_analysis(ds, embedding, len(samples), what=analysis):
        stop()
    return PageData(ds, embedding, key, stamp, embedding_version(ds, embedding), samples)


# --------------------------------------------------------------------------- collections


class CollectionFilter(NamedTuple):
    """The sidebar's collection (``?collection=NAME``) as a filter on the page's rows."""

    name: str
    mask: np.ndarray  # (n_rows,) bool over the page's rows (embedding order)
    level: str  # what the collection holds: "sample" or "object"
    row_kind: str  # what the page's rows are: "samples" or "objects"

    @property
    def rows(self) -> np.ndarray:
        return np.flatnonzero(self.mask)

    def describe(self) -> str:
        """A caption such as "Collection **x**: showing its 12 of 400 samples" (markdown)."""
        return (
            f"Collection **{escape_markdown(self.name)}**: showing its {int(self.mask.sum()):,} "
            f"of {len(self.mask):,} {self.row_kind}"
        )


def collection_filter(data: PageData) -> CollectionFilter | None:
    """The collection chosen in the sidebar (or the link) over ``data``'s rows, or None."""
    name = st.session_state.get("collection")
    if not name:
        return None
    try:
        collection = Collections(data.ds).get(name)
    except (CollectionNotFoundError, StoreError) as error:
        st.warning(visitor_error(error))
        return None
    mask = loaders.collection_mask(
        data.ds, data.dataset_key, data.stamp, data.embedding, name, collection.updated_at
    )
    row_kind = "objects" if "object_id" in data.samples else "samples"
    return CollectionFilter(name, mask, collection.level, row_kind)


def collections_stamp(ds: Dataset) -> str:
    """Changes whenever any collection of ``ds`` changes (cache key of a filter naming one)."""
    return "|".join(f"{c.name}:{c.updated_at}" for c in Collections(ds).list())


# --------------------------------------------------------------------------- analyses


def analysis_ready(ds: Dataset, embedding: str, n_samples: int) -> bool:
    """Small sets compute in place; a large set needs its 'analyse' job to have finished."""
    return n_samples <= INLINE_MAX_SAMPLES or job_done(ds, "analyse", {"embedding": embedding})


def job_done(ds: Dataset, kind: str, params: dict[str, Any]) -> bool:
    """Whether a ``kind`` job with these parameters finished on the current embedding version
    (its stored results are then a cache hit)."""
    embedding = ds.resolve_embedding(params.get("embedding"))
    version = embedding_version(ds, embedding)
    wanted = jobs.job_kind(kind).complete_params(params)
    return any(
        r.state == "done" and r.params == wanted and (r.result or {}).get("version") == version
        for r in jobs.list_jobs(loaders.workspace(), dataset=ds.name, kind=kind)
    )


def request_analysis(ds: Dataset, embedding: str, n_samples: int, *, what: str) -> bool:
    """Show the 'compute' affordance for a large set; True once its results are ready."""
    if analysis_ready(ds, embedding, n_samples):
        return True
    return request_job(
        ds,
        "analyse",
        {"embedding": embedding},
        what=what,
        why=f"{escape_markdown(ds.name)} has {n_samples:,} samples: the {what} is computed once "
        "in the background (neighbour graph, map, scores) and then opens instantly for everyone.",
    )


def request_job(
    ds: Dataset,
    kind: str,
    params: dict[str, Any],
    *,
    what: str,
    why: str | None = None,
    button: str | None = None,
) -> bool:
    """True when a ``kind`` job with ``params`` has finished (its results are then a cache
    hit); else say ``why`` and show the running job's progress, or a button that starts it."""
    if job_done(ds, kind, params):
        return True
    if why:
        st.info(why)
    key = f"{kind}_{what}".replace(" ", "_")
    active = jobs.find_active(loaders.workspace(), kind, dataset=ds.name, params=params)
    if active is not None:
        st.session_state["job_id"] = active.id
        job_panel(active.id, key=key)
    elif st.button(button or f"Compute the {what}", type="primary", key=key):
        st.session_state["job_id"] = jobs.submit(
            loaders.workspace(), kind, dataset=ds.name, params=params
        )
        st.rerun()
    return False
