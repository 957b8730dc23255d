"""Datasets: create one by drag-and-drop, read its import report, embed it, describe or delete it."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from pages import _common as ui
from pages import _loaders as loaders
from pages import _widgets as widgets
from shoal import jobs
from shoal.app.text import escape_markdown, redact_paths, visitor_error
from shoal.app.uploads import (
    IMPORT_MODES,
    discard_upload,
    import_uploads,
    save_uploads,
    suggest_dataset_name,
    upload_dir,
)
from shoal.embedding.defaults import BACKENDS
from shoal.jobs.tasks import ENGINES
from shoal.store import Dataset, StoreError
from shoal.store.collections import Collections
from shoal.workflows.ray_engine import default_address as ray_address

ui.ensure_entrypoint()

ws = loaders.workspace()
st.session_state.setdefault("datasets_upload_round", 0)

st.title("Datasets")


# --------------------------------------------------------------------------- add data


def rejected_table(rejected: list[dict]) -> pd.DataFrame:
    """Rejected files as a table, without server paths (a CLI import's reasons may name them)."""
    table = pd.DataFrame(rejected, columns=["file", "reason"])
    return table.assign(
        file=table["file"].map(lambda v: redact_paths(str(v))),
        reason=table["reason"].map(lambda v: redact_paths(str(v))),
    )


def run_import(
    files, *, mode: str, dataset: str, split: str | None, embedding_name: str, embed_now: bool
) -> None:
    """Write the uploads to disk, import them, remember the report, start embedding."""
    folder = upload_dir(ws)
    bar = st.progress(0.0, text="Saving the upload…")
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 0.25:
            last[0] = now
            bar.progress(done / max(total, 1), text=f"Checking images: {done:,} / {total:,}")

    try:
        written, refused = save_uploads(files, folder)
        outcome = import_uploads(
            ws,
            folder,
            written,
            mode=mode,
            dataset=dataset,
            split=split or None,
            embedding_name=embedding_name,
            refused=refused,
            progress=progress,
        )
    except (StoreError, ValueError) as error:
        bar.empty()
        st.session_state["datasets_report"] = {"dataset": dataset, "error": str(error)}
        return
    except Exception as error:  # noqa: BLE001 - a visitor sees a message, the log the traceback
        logging.getLogger(__name__).exception("import of an upload into %r failed", dataset)
        bar.empty()
        st.session_state["datasets_report"] = {
            "dataset": dataset,
            "error": f"the import failed unexpectedly ({type(error).__name__}); nothing was "
            "imported. The server's log has the details for whoever runs Shoal",
        }
        return
    finally:
        discard_upload(folder)
    st.session_state["datasets_report"] = outcome.report
    st.session_state["dataset"] = outcome.dataset
    st.session_state["embedding"] = None
    st.session_state["datasets_upload_round"] += 1  # a fresh uploader: Streamlit frees the files
    ds = ws.open(outcome.dataset)
    if embed_now and ds.has_images and outcome.embedding is None:
        st.session_state["job_id"] = jobs.submit(ws, "embed", dataset=outcome.dataset, params={})
    st.rerun()


with st.container(border=True):
    st.subheader("Add data")
    mode = st.radio(
        "What are you uploading?",
        list(IMPORT_MODES),
        format_func=IMPORT_MODES.get,
        key="datasets_mode",
        persist_state="session",
    )
    folder_pick = False
    if mode in ("images", "manifest"):
        folder_pick = st.toggle(
            "Pick a whole folder (keeps sub-folders: class names, train/val/test)",
            key="datasets_folder",
            persist_state="session",
        )
    hints = {
        "images": "Drop image files (JPEG, PNG, WebP, BMP, TIFF) or one .zip. In a zip or folder, "
        "`train/cat/1.jpg` means split train, label cat.",
        "manifest": "Drop one .csv/.parquet with a `path` column (relative to the manifest) plus "
        "any metadata columns (label, split, prediction, …), and the images it names; or one "
        "Parquet file that holds the images (an `image` column of bytes, as Hugging Face "
        "`datasets` writes), with its label and split columns.",
        "embeddings": "Drop one .npy/.parquet/.csv of vectors for an existing dataset: rows keyed by "
        "`sample_id` (or an .npy in sample order, optionally with an ids file).",
        "embeddings_only": "Drop one embeddings file (.npy/.parquet/.csv) and optionally a metadata "
        "table keyed by `sample_id`. The dataset has no images; galleries show metadata instead.",
    }
    st.caption(hints[mode])
    files = st.file_uploader(
        "Drag and drop files here",
        accept_multiple_files="directory" if folder_pick else True,
        key=f"datasets_upload_{st.session_state['datasets_upload_round']}",
    )
    names = ui.dataset_names()
    left, middle, right = st.columns(3)
    if mode == "embeddings":
        if not names:
            st.warning("No dataset to add embeddings to yet.")
        target = (
            left.selectbox(
                "Dataset",
                names,
                index=names.index(st.session_state["dataset"])
                if st.session_state["dataset"] in names
                else 0,
                key="datasets_target",
            )
            if names
            else None
        )
        embedding_name = middle.text_input(
            "Embedding set name", value="user", key="datasets_embedding_name"
        )
        split, embed_now = None, False
    else:
        suggested = suggest_dataset_name([f.name for f in files] if files else ["dataset"], names)
        target = left.text_input(
            "New dataset name", value=suggested, key=f"datasets_name_{suggested}"
        )
        split = (
            middle.text_input(
                "Split for files outside train/val/test folders", value="", key="datasets_split"
            )
            if mode != "embeddings_only"
            else None
        )
        embedding_name = (
            middle.text_input("Embedding set name", value="user", key="datasets_embedding_name")
            if mode == "embeddings_only"
            else "user"
        )
        embed_now = (
            right.checkbox("Generate embeddings right away", value=True, key="datasets_embed_now")
            if mode != "embeddings_only"
            else False
        )
    if st.button("Import", type="primary", disabled=not files or not target, key="datasets_import"):
        run_import(
            files,
            mode=mode,
            dataset=str(target),
            split=split,
            embedding_name=embedding_name,
            embed_now=embed_now,
        )

report = st.session_state.get("datasets_report")
if report:
    with st.container(border=True):
        if report.get("error"):
            st.error(
                f"Import into {escape_markdown(report.get('dataset'))} failed: "
                f"{visitor_error(report['error'])}"
            )
        else:
            rejected = report.get("rejected") or []
            source = escape_markdown(redact_paths(str(report.get("source") or "the upload")))
            st.success(
                f"Imported {report.get('imported', 0):,} samples into "
                f"**{escape_markdown(report['dataset'])}** from {source}."
            )
            cols = st.columns(3)
            cols[0].metric("Imported", f"{report.get('imported', 0):,}")
            cols[1].metric("Rejected", f"{len(rejected):,}")
            cols[2].metric("Classes", f"{len(report.get('labels') or {}):,}")
            if report.get("splits"):
                st.caption(
                    "Splits: "
                    + ", ".join(f"{escape_markdown(k)} {v:,}" for k, v in report["splits"].items())
                )
            if rejected:
                st.warning(f"{len(rejected):,} file(s) were not imported:")
                st.dataframe(rejected_table(rejected), hide_index=True, width="stretch")
        if st.button("Dismiss", key="datasets_dismiss"):
            st.session_state.pop("datasets_report", None)
            st.rerun()


# --------------------------------------------------------------------------- the workspace's datasets


def collection_file(ds: Dataset, ids: tuple[str, ...], suffix: str) -> bytes:
    """A collection's export (shoal.workflows.exports), made when the download is asked for."""
    from shoal.workflows import exports

    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / f"export{suffix}"
        if suffix in (".csv", ".parquet"):
            exports.export_table(ds, ids, target)
        elif suffix == ".json":
            exports.export_coco(ds, ids, target)
        elif suffix == ".tasks.json":
            exports.export_label_studio(ds, ids, target)
        else:
            exports.export_images(ds, ids, target)
        return target.read_bytes()


def grow_panel(ds: Dataset, collection_name: str) -> None:
    """More like these: the samples of this or another dataset (same model) nearest to the
    collection, with the distance cut-off in view; keep them as a collection."""
    from shoal.workflows.collections import grow

    key = f"datasets_grow_{ds.name}_{collection_name}"
    others = [n for n in ui.dataset_names() if n != ds.name]
    source = st.selectbox(
        "Search in",
        [ds.name, *others],
        key=f"{key}_source",
        format_func=lambda n: f"{n} (this dataset)" if n == ds.name else n,
        help="Another dataset must be embedded with the same model, e.g. an unlabelled pool.",
    )
    left, right = st.columns(2)
    k = left.number_input("How many", 1, 10_000, 50, key=f"{key}_k")
    cut = right.slider(
        "Largest cosine distance to a member",
        0.0,
        1.0,
        0.5,
        0.01,
        key=f"{key}_cut",
        help="0 = identical direction; candidates farther than this from every member are left out.",
    )
    target = ws.open(source)
    members = Collections(ds).get(collection_name).updated_at
    asked = (source, int(k), float(cut), members, ui.dataset_stamp(ds), ui.dataset_stamp(target))
    if st.button("Find more like these", key=f"{key}_find", icon=":material/search:"):
        try:
            found = grow(ds, collection_name, target=target, k=int(k), max_distance=float(cut))
        except StoreError as error:
            st.warning(visitor_error(error))
            return
        st.session_state[key] = (asked, found)
    kept = st.session_state.get(key)
    if kept is None or kept[0] != asked:
        return
    found = kept[1]
    if found.empty:
        st.info(f"No sample of {escape_markdown(source)} lies within {cut:.2f} of a member.")
        return
    st.caption(
        f"{len(found):,} samples of {escape_markdown(source)} within {cut:.2f}: distances "
        f"{found['distance'].min():.3f} to {found['distance'].max():.3f}, nearest first."
    )
    st.dataframe(found, hide_index=True, width="stretch", height=240)
    widgets.save_as_collection(
        target,
        found["sample_id"].astype(str).tolist(),
        level="sample",
        provenance={
            "page": "datasets",
            "grown_from": f"{ds.name}/{collection_name}",
            "k": int(k),
            "max_distance": float(cut),
        },
        key=key,
        created_by=ui.signed_in_user(),
        label=f"Keep {len(found):,} as a collection of {source}",
    )


@st.cache_data(show_spinner=False)
def describe(_ds: Dataset, dataset_key: str, stamp: str) -> dict:
    return _ds.describe()


names = ui.dataset_names()
st.subheader("Datasets in this workspace")
if not names:
    st.info(
        "This workspace has no datasets yet: drop some images above, or run `shoal demo` for a sample."
    )
    ui.stop()

rows = []
for name in names:
    listed = ws.open(name)
    info = describe(listed, ui.dataset_key(listed), ui.dataset_stamp(listed))
    rows.append(
        {
            "dataset": name,
            "samples": info["samples"],
            "images": "yes" if info["has_images"] else "no (embeddings only)",
            "embeddings": ", ".join(f"{e['name']} ({e['dim']}-d)" for e in info["embeddings"])
            or "none yet",
            "splits": ", ".join(f"{k} {v:,}" for k, v in info["splits"].items()),
            "classes": len(info["labels"]),
            "rejected at import": info["rejected"],
            "created": info["created_at"],
        }
    )
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

ds = ui.current_dataset()
if ds is None:
    ui.stop()
info = describe(ds, ui.dataset_key(ds), ui.dataset_stamp(ds))
st.subheader(escape_markdown(ds.name))
for problem in info.get("problems", []):
    st.warning(visitor_error(problem))
cols = st.columns(4)
cols[0].metric("Samples", f"{info['samples']:,}")
cols[1].metric("Classes", f"{len(info['labels']):,}")
cols[2].metric("Embedding sets", len(info["embeddings"]))
cols[3].metric("Rejected at import", f"{info['rejected']:,}")
if info["labels"]:
    st.caption(
        "Labels: "
        + ", ".join(f"{escape_markdown(k)} {v:,}" for k, v in list(info["labels"].items())[:30])
    )
st.caption("Columns: " + ", ".join(escape_markdown(c) for c in info["columns"]))
for embedding in info["embeddings"]:
    st.caption(
        f"Embedding set **{escape_markdown(embedding['name'])}**: {embedding['count']:,} × "
        f"{embedding['dim']} from {escape_markdown(embedding['model'])}, {embedding['created_at']}"
    )

job_id = st.session_state.get("job_id")
watched = None
if job_id:
    try:
        watched = jobs.get(ws, job_id)
    except StoreError:
        st.session_state["job_id"] = None
if watched is not None and watched.dataset == ds.name:
    widgets.job_panel(watched.id, key="datasets")

if not info["embeddings"]:
    if ds.has_images:
        active = next(
            (r for r in jobs.list_jobs(ws, dataset=ds.name, kind="embed") if r.active), None
        )
        if active is None:
            st.info(
                "This dataset has no embeddings yet: the map, outliers, similarity and comparison need them."
            )
            with st.expander("Embedding options"):
                left, middle, right = st.columns(3)
                backend = left.selectbox(
                    "Backend",
                    BACKENDS,
                    key="datasets_embed_backend",
                    help="auto: OpenVINO on x86 CPUs where it loads (f32, same vectors as torch "
                    "fp32, faster), else torch; a GPU always uses torch.",
                )
                precision = middle.selectbox(
                    "Precision",
                    ("auto", "fp32", "bf16"),
                    key="datasets_embed_precision",
                    help="auto: fp32 on OpenVINO, bf16 on torch CPUs that have it. bf16 is "
                    "faster and less faithful (mean cosine to fp32 about 0.999).",
                )
                # Only a cluster the server was configured with (SHOAL_RAY_ADDRESS): a visitor
                # never points the server at an address of their choosing.
                cluster = ray_address()
                engine = right.selectbox(
                    "Run on",
                    ENGINES if cluster else ("local",),
                    format_func={
                        "auto": "auto (the Ray cluster)",
                        "local": "this server",
                        "ray": "the Ray cluster",
                    }.get,
                    key="datasets_embed_engine",
                    help=f"Ray cluster: {cluster}"
                    if cluster
                    else "No Ray cluster configured (SHOAL_RAY_ADDRESS); see docs/ray.md.",
                )
            if st.button(
                "Generate embeddings", type="primary", key="datasets_embed", icon=":material/bolt:"
            ):
                params = {"backend": backend, "precision": precision, "engine": engine}
                st.session_state["job_id"] = jobs.submit(
                    ws, "embed", dataset=ds.name, params=params
                )
                st.rerun()
    else:
        st.info("This dataset has no images and no embeddings: add an embeddings file above.")

stored = ds.import_report() or {}
if stored.get("rejected"):
    with st.expander(f"Files rejected at import ({len(stored['rejected']):,})"):
        st.dataframe(rejected_table(stored["rejected"]), hide_index=True, width="stretch")

shelf = Collections(ds)
kept = shelf.list()
if kept:
    st.subheader("Collections")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "collection": c.name,
                    "size": c.size,
                    "of": f"{c.level}s",
                    "note": c.note,
                    "made by": c.created_by or "",
                    "from": c.provenance.get("page", next(iter(c.provenance), "")),
                    "updated": c.updated_at,
                }
                for c in kept
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    by_name = {c.name: c for c in kept}
    chosen = by_name[st.selectbox("Export or delete", list(by_name), key="datasets_collection")]
    with st.container(horizontal=True):
        formats = {"CSV": ".csv", "Parquet": ".parquet"}
        if chosen.level == "sample" and ds.has_images:
            formats |= {
                "COCO": ".json",
                "Label Studio tasks": ".tasks.json",
                "Images (zip)": ".zip",
            }
        for label, suffix in formats.items():
            st.download_button(
                label,
                data=lambda suffix=suffix: collection_file(ds, chosen.ids, suffix),
                file_name=f"{ds.name}-{chosen.name}{suffix}",
                key=f"datasets_collection_{suffix}",
                icon=":material/download:",
                disabled=chosen.level != "sample",
            )
        if st.button("Delete collection", key="datasets_collection_delete"):
            shelf.delete(chosen.name)
            st.rerun()
    if chosen.level == "sample" and ds.has_images:
        with st.expander("Label Studio: the project's labelling config and settings"):
            from shoal.workflows.exports import label_config

            st.caption(
                "Create a project with this labelling config, then import the tasks file. The "
                "tasks point at the images as local files: start Label Studio with "
                "`LOCAL_FILES_SERVING_ENABLED=true` and `LOCAL_FILES_DOCUMENT_ROOT` = this "
                "dataset's folder, and add a Local Files storage on it (no sync needed). "
                "`shoal collections export --format label-studio --url-prefix URL` writes "
                "tasks for images served over HTTP instead."
            )
            st.code(label_config(ds), language="xml")
    if chosen.level == "sample" and ds.default_embedding() is not None:
        with st.expander(f"More like these: grow {chosen.name} by similarity"):
            grow_panel(ds, chosen.name)

with st.popover("Delete this dataset…", icon=":material/delete:"):
    st.write(
        f"This deletes **{escape_markdown(ds.name)}**, its images, embeddings and every result "
        "computed from it."
    )
    typed = st.text_input("Type the dataset's name to confirm", key=f"datasets_confirm_{ds.name}")
    if st.button(
        "Delete for good", type="primary", disabled=typed != ds.name, key="datasets_delete"
    ):
        jobs.delete_dataset(ws, ds.name)  # stops its jobs first
        st.session_state["dataset"] = None
        st.session_state["embedding"] = None
        st.session_state.pop("datasets_report", None)
        st.toast(f"Deleted {escape_markdown(ds.name)}.")
        st.rerun()
