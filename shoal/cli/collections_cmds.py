"""``shoal collections``: keep a finding as a named set of samples, grow it, export it."""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path
from typing import Any

from shoal.cli._util import CliError, add_command, print_json, workspace


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = add_command(
        subparsers,
        common,
        "collections",
        "Named sets of samples (or boxes) of a dataset: list, create, add, remove, rename, "
        "delete, show/export.",
        cmd_collections,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")

    def action(name: str, help_text: str, *, named: bool = True) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.add_argument("dataset")
        if named:
            p.add_argument("name", help="collection")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        return p

    action("list", "The dataset's collections.", named=False)
    p = action("show", "A collection's samples with their metadata (--out to export).")
    p.add_argument("--out", metavar="FILE", help="write the rows (.csv or .parquet)")
    for verb, text in (
        ("create", "A new collection."),
        ("add", "Add samples to a collection."),
        ("remove", "Remove samples from a collection."),
    ):
        p = action(verb, text)
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--ids", nargs="+", metavar="ID", help="sample (or object) ids")
        source.add_argument("--ids-file", type=Path, help="a file with one id per line")
        source.add_argument("--where", help="the samples a filter selects, e.g. 'label=cat'")
        if verb == "create":
            p.add_argument("--note", default="", help="what the collection is for")
            p.add_argument("--objects", action="store_true", help="ids are object (box) ids")
            p.add_argument("--replace", action="store_true", help="overwrite one of this name")
    p = action("grow", "More like these: the samples nearest to any member of a collection.")
    p.add_argument("--from", dest="source", metavar="DATASET", help="search this dataset instead")
    p.add_argument("--k", type=int, default=50, help="how many to find (default: %(default)s)")
    p.add_argument("--max-distance", type=float, help="cosine distance cut-off")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--add", action="store_true", help="add what was found to the collection")
    keep.add_argument(
        "--save-as", metavar="NAME", help="save what was found as a new collection of its dataset"
    )
    p.add_argument("--out", metavar="FILE", help="write the candidates (.csv or .parquet)")
    p = action(
        "export", "Export a collection: a table, COCO, Label Studio tasks, or a zip of its images."
    )
    p.add_argument(
        "--format",
        choices=("csv", "parquet", "coco", "label-studio", "zip"),
        default=None,
        help="default: from --out's suffix (.csv, .parquet, .json = COCO, .zip)",
    )
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--with-embeddings", action="store_true", help="Parquet: add the vectors")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--document-root",
        metavar="FOLDER",
        help="label-studio: the LOCAL_FILES_DOCUMENT_ROOT the server serves (default: the "
        "dataset's folder); images become /data/local-files/?d=… URLs under it",
    )
    where.add_argument(
        "--url-prefix",
        metavar="URL",
        help="label-studio: images as URL/<path in the dataset folder> instead",
    )
    p = action("rename", "Rename a collection.")
    p.add_argument("new_name")
    action("delete", "Delete a collection (the samples stay in the dataset).")


def cmd_collections(args: argparse.Namespace) -> int:
    from shoal.store.collections import Collections

    if not getattr(args, "action", None):
        raise CliError(
            "say what to do: shoal collections {list,show,create,add,remove,rename,delete} DATASET …"
        )
    ds = workspace(args).open(args.dataset)
    shelf = Collections(ds)
    if args.action == "list":
        summaries = [c.summary() for c in shelf.list()]
        if args.json:
            print_json(summaries)
        elif not summaries:
            print(f"dataset {ds.name!r} has no collections yet")
        for item in summaries if not args.json else []:
            note = f"  {item['note']}" if item["note"] else ""
            print(f"{item['name']}\t{item['size']:,} {item['level']}s\t{item['updated_at']}{note}")
        return 0
    if args.action == "show":
        return _show(ds, shelf.get(args.name), args)
    if args.action == "grow":
        return _grow(ds, shelf, args)
    if args.action == "export":
        return _export(ds, shelf.get(args.name), args)
    if args.action in ("create", "add", "remove"):
        ids = _ids(ds, args)
        if args.action == "create":
            collection = shelf.create(
                args.name,
                ids,
                level="object" if args.objects else "sample",
                note=args.note,
                provenance={"cli": _provenance(args)},
                created_by=_user(),
                replace_existing=args.replace,
            )
        elif args.action == "add":
            collection = shelf.add(args.name, ids)
        else:
            collection = shelf.remove(args.name, ids)
    elif args.action == "rename":
        collection = shelf.rename(args.name, args.new_name)
    else:
        shelf.delete(args.name)
        print(f"deleted collection {args.name!r} of {ds.name!r}")
        return 0
    if args.json:
        print_json(collection.summary())
    else:
        print(
            f"collection {collection.name!r} of {ds.name!r}: {collection.size:,} {collection.level}s"
        )
    return 0


def _ids(ds: Any, args: argparse.Namespace) -> list[str]:
    if args.ids:
        return [str(i) for i in args.ids]
    if args.ids_file:
        try:
            lines = args.ids_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise CliError(f"cannot read {args.ids_file}: {error}") from error
        return [line.strip() for line in lines if line.strip()]
    from shoal.workflows.filters import FilterError, parse_filter

    samples = ds.samples()
    try:
        mask = parse_filter(args.where, samples)
    except FilterError as error:
        raise CliError(str(error)) from error
    return samples.loc[mask, "sample_id"].astype(str).tolist()


def _show(ds: Any, collection: Any, args: argparse.Namespace) -> int:
    from shoal.cli.analysis_cmds import _write_table

    table = ds.objects() if collection.level == "object" else ds.samples()
    key = "object_id" if collection.level == "object" else "sample_id"
    rows = table.set_index(table[key].astype(str)).loc[list(collection.ids)].reset_index(drop=True)
    if args.json:
        print_json(collection.summary() | {"ids": list(collection.ids)})
    else:
        print(f"{collection.name}: {collection.size:,} {collection.level}s of {ds.name!r}")
        if collection.note:
            print(f"  {collection.note}")
        print(
            f"  made {collection.created_at}"
            + (f" by {collection.created_by}" if collection.created_by else "")
        )
        for row in rows.head(20).itertuples(index=False):
            print(
                "  "
                + "\t".join(str(getattr(row, c, "")) for c in (key, "split", "label") if c in rows)
            )
    _write_table(rows, args.out)
    return 0


def _grow(ds: Any, shelf: Any, args: argparse.Namespace) -> int:
    from shoal.cli.analysis_cmds import _write_table
    from shoal.store.collections import Collections
    from shoal.workflows.collections import grow

    target = workspace(args).open(args.source) if args.source else ds
    if args.add and target.root != ds.root:
        raise CliError("--add keeps samples of the collection's own dataset; use --save-as NAME")
    found = grow(ds, args.name, target=target, k=args.k, max_distance=args.max_distance)
    if args.json:
        print_json({"dataset": target.name, "found": found.to_dict(orient="records")})
    else:
        cut = f" within {args.max_distance:g}" if args.max_distance is not None else ""
        print(f"{len(found):,} samples of {target.name!r}{cut} nearest to {args.name!r}")
        for row in found.head(20).itertuples(index=False):
            print(f"  {row.sample_id}\t{row.distance:.3f}\tnear {row.nearest_member}")
    ids = found["sample_id"].tolist()
    if args.add:
        print(f"collection {args.name!r}: {shelf.add(args.name, ids).size:,} samples")
    elif args.save_as:
        made = Collections(target).create(
            args.save_as,
            ids,
            note=f"grown from {ds.name}/{args.name}",
            provenance={"grown_from": f"{ds.name}/{args.name}", "max_distance": args.max_distance},
            created_by=_user(),
        )
        print(f"collection {made.name!r} of {target.name!r}: {made.size:,} samples")
    _write_table(found, args.out)
    return 0


def _export(ds: Any, collection: Any, args: argparse.Namespace) -> int:
    from shoal.workflows import exports

    if collection.level != "sample":
        raise CliError("exports take collections of samples; boxes export with their images")
    out = Path(args.out)
    kind = args.format or {
        ".csv": "csv",
        ".parquet": "parquet",
        ".json": "coco",
        ".zip": "zip",
    }.get(out.suffix.lower())
    if kind is None:
        raise CliError(f"say --format, or end --out in .csv, .parquet, .json or .zip ({out.name})")
    if kind in ("csv", "parquet"):
        written = {
            "table": exports.export_table(
                ds, collection.ids, out, with_embeddings=args.with_embeddings
            )
        }
    elif kind == "coco":
        written = exports.export_coco(ds, collection.ids, out)
    elif kind == "label-studio":
        written = exports.export_label_studio(
            ds,
            collection.ids,
            out,
            document_root=args.document_root,
            url_prefix=args.url_prefix,
        )
        if args.url_prefix is None:
            root = Path(args.document_root or ds.root).resolve()
            print(
                "Label Studio serves these images when started with "
                f"LOCAL_FILES_SERVING_ENABLED=true LOCAL_FILES_DOCUMENT_ROOT={root}, and the "
                f"project has a Local Files storage on {root} (or a folder under it)"
            )
    else:
        written = {"images": exports.export_images(ds, collection.ids, out)}
    for what, path in written.items():
        print(f"wrote {what} of {collection.size:,} samples to {path}")
    return 0


def _provenance(args: argparse.Namespace) -> str:
    if args.where:
        return f"where {args.where}"
    return f"ids from {args.ids_file}" if args.ids_file else "ids on the command line"


def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name to record is fine
        return None
