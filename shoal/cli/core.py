"""Core commands: import, embed, add/export embeddings, datasets, info, delete, jobs, serve, demo."""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from shoal import jobs
from shoal.cli._util import (
    CliError,
    ProgressLine,
    add_command,
    print_counts,
    print_items,
    print_json,
    run_job,
    workspace,
)
from shoal.embedding.defaults import (
    AUTO_OPENVINO_MIN_IMAGES,
    BACKENDS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EXTRACT_BATCH_SIZE,
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MODEL,
    DEFAULT_OBJECT_BATCH_SIZE,
)


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    add = functools.partial(add_command, subparsers, common)

    p = add(
        "import",
        "Create a dataset from a folder, a .zip, a CSV/Parquet manifest of images, or a Label "
        "Studio JSON export.",
        cmd_import,
    )
    p.add_argument("source", help="folder, .zip, .csv, .parquet or Label Studio export .json")
    p.add_argument("--dataset", required=True, help="name of the new dataset")
    p.add_argument("--split", help="split for images not under a train/val/test folder")
    p.add_argument(
        "--metadata", help="with an embeddings SOURCE: table of per-id metadata (CSV/Parquet)"
    )
    p.add_argument("--ids", help="with an .npy embeddings SOURCE: file of row ids")
    p.add_argument(
        "--format",
        choices=("auto", "label-studio"),
        default="auto",
        help="what SOURCE is (default: from the file; a .json list of tasks is a Label Studio export)",
    )
    p.add_argument(
        "--images",
        help="Label Studio export: the folder its image references resolve against (for "
        "local-files URLs, the server's LOCAL_FILES_DOCUMENT_ROOT; default: the export's folder)",
    )
    p.add_argument("--json", action="store_true", help="print the import report as JSON")

    p = add(
        "embed", "Generate embeddings for a dataset's images (resumes if interrupted).", cmd_embed
    )
    p.add_argument("name", help="dataset")
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="registered model name (default: %(default)s)"
    )
    p.add_argument("--embedding", help="name of the embedding set (default: the model name)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"images per batch (default: {DEFAULT_BATCH_SIZE}, "
        f"or {DEFAULT_OBJECT_BATCH_SIZE} with --objects)",
    )
    p.add_argument(
        "--objects",
        action="store_true",
        help="embed each labelled/predicted box (detection datasets)",
    )
    add_backend_argument(p, "where it loads")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default=None,
        help="default auto: fp32 on OpenVINO, bf16 on torch CPUs with native bf16, fp16 on CUDA",
    )
    add_engine_arguments(p, "the images at the same path on every node")
    p.add_argument("--json", action="store_true")

    p = add(
        "extract",
        "Embed a dataset with your own model (a factory file or TorchScript) at a chosen layer.",
        cmd_extract,
    )
    p.add_argument("name", help="dataset")
    p.add_argument(
        "--model",
        required=True,
        help="module.py:build_model, package.module:factory, or a TorchScript file",
    )
    p.add_argument(
        "--layer",
        help="layer name (default: chosen for the task; a wrong name lists the valid ones)",
    )
    p.add_argument(
        "--task", choices=("classification", "detection", "segmentation"), default="classification"
    )
    p.add_argument("--embedding", help="name of the embedding set (default: the model file's name)")
    p.add_argument("--weights", help="state_dict file loaded with weights_only=True")
    p.add_argument("--batch-size", type=int, default=DEFAULT_EXTRACT_BATCH_SIZE)
    p.add_argument(
        "--max-elements",
        type=int,
        default=DEFAULT_MAX_ELEMENTS,
        help="pool spatial layers down to this many values",
    )
    add_backend_argument(
        p, f"for runs of {AUTO_OPENVINO_MIN_IMAGES}+ images where the layer converts"
    )
    add_engine_arguments(p, "the model file (and --weights) at the same path on every node")
    p.add_argument("--json", action="store_true")

    p = add(
        "add-embeddings",
        "Attach embeddings made by your own model (.npy, .parquet or .csv); a file keyed by "
        "object_id attaches box embeddings to a detection dataset's boxes.",
        cmd_add_embeddings,
    )
    p.add_argument("name", help="dataset")
    p.add_argument("file", help="embeddings file")
    p.add_argument(
        "--embedding", default="user", help="name for this embedding set (default: %(default)s)"
    )
    p.add_argument("--ids", help="for .npy: a file of sample ids, one per row")
    p.add_argument("--json", action="store_true")

    p = add(
        "export-embeddings",
        "Write sample_id, embedding and metadata to a Parquet file.",
        cmd_export,
    )
    p.add_argument("name", help="dataset")
    p.add_argument("--out", required=True, help="output .parquet file")
    p.add_argument("--embedding", help="embedding set (default: the dataset's default)")

    p = add("datasets", "List the datasets in the workspace.", cmd_datasets)
    p.add_argument("--json", action="store_true")

    p = add(
        "info", "Describe a dataset: samples, splits, labels, embeddings, rejected files.", cmd_info
    )
    p.add_argument("name")
    p.add_argument("--json", action="store_true")

    p = add("delete", "Delete a dataset and everything computed from it.", cmd_delete)
    p.add_argument("name")

    p = add("jobs", "List background jobs (and their progress or errors).", cmd_jobs)
    p.add_argument("--dataset")
    p.add_argument("--cancel", metavar="JOB_ID", help="ask a running job to stop")
    p.add_argument("--json", action="store_true")

    p = add(
        "sweep",
        "Remove leftovers: abandoned uploads and staging folders, old query images, old finished "
        "job records (never anything a live process holds, never a dataset).",
        cmd_sweep,
    )
    p.add_argument(
        "--older-than", type=float, default=30.0, metavar="DAYS", help="(default: %(default)s)"
    )

    p = add("serve", "Start the Shoal web app on the workspace.", cmd_serve)
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="localhost", help="bind address (0.0.0.0 to serve a team)")
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="serve on a non-local address without an access gate (a private network only)",
    )
    p.add_argument(
        "--secrets",
        type=Path,
        metavar="TOML",
        help="sign-in settings ([auth]) from this file instead of ./.streamlit/secrets.toml",
    )

    p = add(
        "demo",
        "Build the bundled sample dataset (with embeddings) if needed, then serve it.",
        cmd_demo,
    )
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="localhost")
    p.add_argument("--no-auth", action="store_true", help="as for serve")
    p.add_argument("--no-serve", action="store_true", help="only build the sample dataset")


# --------------------------------------------------------------------------- commands


def cmd_import(args: argparse.Namespace) -> int:
    from shoal.ingest.embeddings import create_from_embeddings, embeddings_table_columns
    from shoal.ingest.images import import_source
    from shoal.ingest.label_studio import import_label_studio, is_label_studio_export

    ws = workspace(args)
    source = Path(args.source)
    if args.format == "label-studio" or is_label_studio_export(source):
        report = import_label_studio(
            ws,
            source,
            dataset=args.dataset,
            images=args.images,
            split=args.split,
            progress=ProgressLine("import", unit="tasks"),
        )
    elif args.images:
        raise CliError(
            "--images is for a Label Studio export; a folder or manifest names its files"
        )
    elif (
        source.suffix.lower() == ".npy"
        or args.metadata
        or embeddings_table_columns(source) is not None  # ids + vectors (+ metadata), no images
    ):
        report = create_from_embeddings(
            ws, args.dataset, source, metadata_file=args.metadata, ids_file=args.ids
        )
    else:
        report = import_source(
            ws,
            source,
            dataset=args.dataset,
            split=args.split,
            progress=ProgressLine("import", unit="files"),
        )
    _print_report(report.to_dict(), as_json=args.json)
    return 0


def add_backend_argument(p: argparse.ArgumentParser, when: str) -> None:
    """``--backend``: the inference backend, "auto" (OpenVINO on x86 CPUs ``when``) by default."""
    p.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default=None,
        help=f"inference backend (default: auto = OpenVINO on x86 CPUs {when}, else torch)",
    )


def add_engine_arguments(p: argparse.ArgumentParser, needs: str) -> None:
    """``--engine`` and ``--address``: run here or on a Ray cluster."""
    p.add_argument(
        "--engine",
        choices=["auto", "local", "ray"],
        default=None,
        help="where to run (default auto: the Ray cluster named by --address or "
        f"SHOAL_RAY_ADDRESS if any, else this machine; the cluster needs {needs}; docs/ray.md)",
    )
    p.add_argument("--address", help="with --engine ray: the cluster's host:port (ray status)")


def _print_report(report: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json(report)
        return
    print(
        f"imported {report['imported']:,} samples into dataset {report['dataset']!r} from {report['source']}"
    )
    print_counts("splits", report.get("splits"))
    print_counts("labels", report.get("labels"))
    print_items("rejected", report.get("rejected"), noun="file")


def cmd_embed(args: argparse.Namespace) -> int:
    params = {
        "model": args.model,
        "name": args.embedding,
        "batch_size": args.batch_size,
        "engine": args.engine,
        "address": args.address,
    }
    params |= {"backend": args.backend, "precision": args.precision}
    result = run_job(
        args,
        "embed-objects" if args.objects else "embed",
        params,
        label=f"embed {args.name}",
        what="embedding",
    )
    if args.json:
        print_json(result)
    else:
        print(
            f"stored embedding set {result.get('embedding')!r}: {result.get('count'):,} x {result.get('dim')}"
        )
        _print_ray(result)
    return 0


def _print_ray(result: dict[str, Any]) -> None:
    """One line on what the cluster did, when the job ran on Ray."""
    ray = result.get("ray")
    if ray:
        per_node = ", ".join(f"{rows:,}" for rows in sorted(ray["rows_per_node"].values()))
        print(
            f"  on Ray at {ray['address']}: {len(ray['rows_per_node'])} node(s) "
            f"({per_node} images), {ray['actors']} actor(s), {ray['resumed_rows']:,} resumed"
        )


def cmd_extract(args: argparse.Namespace) -> int:
    params = {
        "model": args.model,
        "layer": args.layer,
        "task": args.task,
        "name": args.embedding,
        "weights": args.weights,
        "batch_size": args.batch_size,
        "max_elements": args.max_elements,
        "backend": args.backend,
        "engine": args.engine,
        "address": args.address,
    }
    result = run_job(args, "extract", params, label=f"extract {args.name}", what="extraction")
    written = result.get("embeddings", [])
    if args.json:
        print_json(written)
        return 0
    for info in written:
        print(
            f"stored embedding set {info['name']!r} ({info['level']}): {info['count']:,} x {info['dim']}, layer {info['preprocessing'].get('layer')}"
        )
    _print_ray(result)
    return 0


def cmd_add_embeddings(args: argparse.Namespace) -> int:
    from shoal.ingest.embeddings import add_embeddings

    ds = workspace(args).open(args.name)
    info = add_embeddings(ds, args.file, name=args.embedding, ids_file=args.ids)
    if args.json:
        print_json(info.to_dict())
    else:
        print(f"stored embedding set {info.name!r} on {args.name!r}: {info.count:,} x {info.dim}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from shoal.ingest.embeddings import export_embeddings

    out = export_embeddings(workspace(args).open(args.name), args.out, embedding=args.embedding)
    print(f"wrote {out}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    ws = workspace(args)
    described = [ws.open(name).describe() for name in ws.list_datasets()]
    if args.json:
        print_json(described)
        return 0
    if not described:
        print(f"no datasets in {ws.root}; create one with `shoal import SOURCE --dataset NAME`")
    for item in described:
        embeddings = ", ".join(e["name"] for e in item["embeddings"]) or "no embeddings"
        print(f"{item['name']}\t{item['samples']:,} samples\t{embeddings}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    ds = workspace(args).open(args.name)
    info = ds.describe()
    if args.json:
        info["import_report"] = ds.import_report()
        print_json(info)
        return 0
    print(f"dataset {info['name']} (created {info['created_at']})")
    print(
        f"  samples: {info['samples']:,}"
        + ("" if info["has_images"] else " (no images: embeddings + metadata)")
    )
    for key in ("splits", "labels"):
        if info[key]:
            print(f"  {key}: " + ", ".join(f"{k} {v:,}" for k, v in list(info[key].items())[:20]))
    if info["objects"] is not None:
        print(f"  objects: {info['objects']:,}")
    print(f"  columns: {', '.join(info['columns'])}")
    if not info["embeddings"]:
        print(f"  embeddings: none yet (run `shoal embed {info['name']}`)")
    for e in info["embeddings"]:
        print(
            f"  embedding {e['name']}: {e['count']:,} x {e['dim']} ({e['model']}, {e['level']}, {e['created_at']})"
        )
    if info["rejected"]:
        print(
            f"  rejected at import: {info['rejected']:,} file(s) (see `shoal info {info['name']} --json`)"
        )
    for problem in info.get("problems", []):
        print(f"  damaged: {problem}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from shoal.jobs.runner import sweep

    day = 24 * 3600.0
    removed = sweep(
        workspace(args),
        job_max_age=args.older_than * day,
        max_age=args.older_than * day,
        query_max_age=args.older_than * day,
    )
    print(f"removed {len(removed):,} leftover(s) older than {args.older_than:g} day(s)")
    for path in removed:
        print(f"  {path}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    stopped = jobs.delete_dataset(workspace(args), args.name)
    for record in stopped:
        print(f"stopped job {record.id} ({record.kind})")
    print(f"deleted dataset {args.name!r}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    ws = workspace(args)
    if args.cancel:
        record = jobs.cancel(ws, args.cancel)
        print(f"job {record.id}: {record.state}")
        return 0
    records = jobs.list_jobs(ws, dataset=args.dataset)
    if args.json:
        print_json([r.to_dict() for r in records])
        return 0
    for r in records:
        detail = r.error if r.state == "failed" else f"{r.progress.done:,}/{r.progress.total:,}"
        print(f"{r.id}\t{r.kind}\t{r.dataset}\t{r.state}\t{detail}")
    return 0


def app_path() -> Path:
    """The web app's ``app.py``: the checkout's top-level one, or the copy the wheel installs in
    ``shoal/webapp`` (in a checkout, links to the same files)."""
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "app.py").is_file():
        return checkout / "app.py"
    path = package / "webapp" / "app.py"
    if not path.exists():
        raise CliError(
            f"the web app is missing from this installation (looked for {path}); reinstall shoal"
        )
    return path


def serve(
    ws_root: Path,
    *,
    port: int,
    address: str,
    no_auth: bool = False,
    secrets: Path | None = None,
) -> int:
    app = app_path()
    if secrets is not None and not secrets.is_file():
        raise CliError(f"--secrets {secrets}: no such file")
    secrets = secrets.resolve() if secrets else app.parent / ".streamlit" / "secrets.toml"
    if not no_auth and not _loopback(address) and not _gated(secrets):
        raise CliError(
            f"refusing to serve on {address} with no access gate: anyone who can reach it could "
            "read, upload and delete every dataset. Set SHOAL_ACCESS_TOKEN, or configure sign-in "
            "(docs/team.md), or pass --no-auth if the network itself is private."
        )
    from shoal.jobs.runner import sweep_if_due
    from shoal.store import Workspace

    sweep_if_due(Workspace(ws_root))  # what crashed work left behind, at most hourly
    env = dict(os.environ, SHOAL_WORKSPACE=str(ws_root))
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app.with_name("asgi.py")),  # app.py behind the gate on every route
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--secrets.files",
        str(secrets),
    ]
    print(f"Shoal on http://{address}:{port}  (workspace {ws_root})", flush=True)
    return subprocess.call(command, env=env, cwd=app.parent)


def _loopback(address: str) -> bool:
    return address in ("localhost", "::1") or address.startswith("127.")


def _gated(secrets: Path) -> bool:
    """Whether the server will ask visitors to sign in (``secrets`` has ``[auth]``) or for the
    shared token."""
    import tomllib

    if os.environ.get("SHOAL_ACCESS_TOKEN", "").strip():
        return True
    try:
        return secrets.exists() and "auth" in tomllib.loads(secrets.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return True  # the app itself then refuses everyone (fail closed)


def cmd_serve(args: argparse.Namespace) -> int:
    return serve(
        workspace(args).root,
        port=args.port,
        address=args.address,
        no_auth=args.no_auth,
        secrets=args.secrets,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from shoal.cli.demo import ensure_sample_dataset

    ws = workspace(args)
    name = ensure_sample_dataset(ws, progress=ProgressLine("embed sample", unit="images").observe)
    print(f"sample dataset {name!r} ready in {ws.root}")
    if args.no_serve:
        return 0
    return serve(ws.root, port=args.port, address=args.address, no_auth=args.no_auth)
