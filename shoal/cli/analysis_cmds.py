"""Analysis commands: project, outliers, duplicates, mislabels, similar.

Each reads the dataset's embedding set, reuses (or builds once) its shared kNN graph and cached
results through :mod:`shoal.workflows.analyse`, prints a short summary (or JSON with ``--json``), and
with ``--out FILE`` writes the full per-sample table as CSV or Parquet.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from shoal.cli._util import CliError, add_command, print_json, workspace


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    from shoal.analysis.outliers import DEFAULT_METHOD, SCORERS
    from shoal.analysis.projection import METHODS as PROJECTION_METHODS

    def add(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        parser = add_command(subparsers, common, name, help_text, func)
        parser.add_argument("name", help="dataset")
        parser.add_argument("--embedding", help="embedding set (default: the dataset's default)")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
        parser.add_argument("--out", metavar="FILE", help="write the full table (.csv or .parquet)")
        parser.add_argument("--recompute", action="store_true", help="ignore cached results")
        return parser

    p = add(
        "project",
        "2-D (or 3-D) map of a dataset's embeddings (UMAP, t-SNE or PCA) from the shared kNN graph.",
        cmd_project,
    )
    p.add_argument(
        "--method",
        choices=PROJECTION_METHODS,
        default="umap",
        help="layout: umap, tsne (openTSNE on the same graph) or pca (default: %(default)s)",
    )
    p.add_argument("--components", type=int, choices=(2, 3), default=2)
    p.add_argument(
        "--neighbors", type=int, default=15, help="UMAP n_neighbors (default: %(default)s)"
    )
    p.add_argument("--min-dist", type=float, default=0.1)
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="make the map bit-reproducible (single-threaded layout); without a seed a map of "
        "more than 20,000 samples is laid out on all cores, as umap-learn's is",
    )

    p = add(
        "outliers", "Score and flag unusual samples (higher score = more anomalous).", cmd_outliers
    )
    p.add_argument(
        "--method",
        choices=sorted(SCORERS),
        default=DEFAULT_METHOD,
        help="scorer (default: %(default)s)",
    )
    p.add_argument(
        "--threshold", type=float, help="flag scores above this instead of the robust rule"
    )
    p.add_argument(
        "--fdr",
        type=float,
        default=0.05,
        help="false-discovery rate of the default flagging rule (default: %(default)s)",
    )
    p.add_argument(
        "--z",
        type=float,
        help="flag by a fixed robust z cut-off instead of the false-discovery rule (was 3.5)",
    )
    p.add_argument(
        "--top", type=int, default=20, help="flagged samples to list (default: %(default)s)"
    )

    p = add(
        "duplicates",
        "Find near-duplicate pairs, their groups, and copies that leak across splits.",
        cmd_duplicates,
    )
    p.add_argument(
        "--threshold", type=float, help="cosine distance (default: data-relative, see docs)"
    )
    p.add_argument("--top", type=int, default=20, help="pairs to list (default: %(default)s)")
    p.add_argument(
        "--exact",
        action="store_true",
        help="list byte-identical image files instead (by content hash; no embeddings needed)",
    )

    p = add(
        "splits",
        "Check a dataset's splits for copies that cross them, and make a leak-free assignment.",
        cmd_splits,
    )
    p.add_argument(
        "--policy",
        choices=("priority", "majority", "balanced"),
        default="priority",
        help="where a leaking group goes: the first split of --priority (default), the split "
        "holding most of it, or the one keeping split sizes closest to the original",
    )
    p.add_argument(
        "--priority",
        help="split order, comma-separated (default: largest first, e.g. train,val,test)",
    )
    p.add_argument(
        "--exact-only", action="store_true", help="only byte-identical files, no near-duplicates"
    )
    p.add_argument("--threshold", type=float, help="near-duplicate cosine distance (as duplicates)")
    p.add_argument(
        "--save-column",
        metavar="NAME",
        help="write the leak-free split into the samples table as this new column",
    )

    p = add(
        "select",
        "Pick N samples to label next: covering the dataset, a subset, or what a reference lacks.",
        cmd_select,
    )
    p.add_argument("--n", type=int, default=100, help="how many to pick (default: %(default)s)")
    p.add_argument("--where", help="pick among these samples, a filter (e.g. split=unlabelled)")
    p.add_argument(
        "--covered", help="samples already labelled: count as covered, never picked (a filter)"
    )
    p.add_argument(
        "--novel-vs",
        metavar="FILTER",
        help="a reference (e.g. split=train): pick the most novel samples outside it, all distinct",
    )
    p.add_argument(
        "--method",
        choices=("k-means", "k-center"),
        help="k-means: typical samples of every region (default); k-center: farthest first "
        "(default with --novel-vs)",
    )
    p.add_argument("--seed", type=int, default=0)

    p = add(
        "mislabels", "Rank samples whose label disagrees with their neighbours'.", cmd_mislabels
    )
    p.add_argument(
        "--label-column", default=None, help="default: label (images) or category (objects)"
    )
    p.add_argument(
        "--top", type=int, default=20, help="flagged samples to list (default: %(default)s)"
    )

    p = add("similar", "Samples most similar to given samples or to an image file.", cmd_similar)
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument(
        "--sample",
        "--sample-id",
        action="extend",
        nargs="+",
        dest="sample_ids",
        metavar="ID",
        help="one or several sample ids (their mean direction is the query)",
    )
    query.add_argument(
        "--image", metavar="FILE", help="embed this image with the embedding set's model"
    )
    p.add_argument("-k", "--k", type=int, default=10, help="results (default: %(default)s)")

    p = add(
        "compare",
        "Do two subsets differ (calibrated permutation test), and where: novel samples, shifted clusters.",
        cmd_compare,
    )
    p.add_argument(
        "--reference", required=True, help='filter, e.g. "split=train" or "label=cat,dog"'
    )
    p.add_argument(
        "--current", help="filter for the current set (default: everything not in reference)"
    )
    p.add_argument("--method", default="auto", help="two-sample test: auto (mmd), mmd, classifier")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--permutations", type=int, default=500)
    p.add_argument("--top", type=int, default=20, help="most novel current samples to list")


def _write_table(frame: pd.DataFrame, out: str | None) -> None:
    if not out:
        return
    from shoal.ingest.export import write_csv

    path = Path(out)
    if path.suffix.lower() == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix.lower() == ".csv":
        write_csv(frame, path)  # ids, labels and metadata come from uploads: no formula cells
    else:
        raise CliError(f"--out must end in .csv or .parquet, got {out!r}")
    print(f"wrote {len(frame):,} rows to {path}")


def _cached_note(computed: Any) -> str:
    return " (cached)" if computed.cached else ""


def _compute(args: argparse.Namespace, workflow: str, **params: Any) -> tuple[Any, Any]:
    """The dataset named on the command line and ``shoal.workflows.analyse.<workflow>`` of it."""
    from shoal.workflows import analyse

    ds = workspace(args).open(args.name)
    return ds, analyse.ANALYSES[workflow](ds, args.embedding, recompute=args.recompute, **params)


def cmd_project(args: argparse.Namespace) -> int:
    ds, computed = _compute(
        args,
        "project",
        n_components=args.components,
        n_neighbors=args.neighbors,
        min_dist=args.min_dist,
        random_state=args.seed,
        method=args.method,
    )
    result = computed.result
    if args.json:
        # The summary only: per-point values of a million points would take seconds to convert.
        print_json(
            {
                "dataset": computed.dataset,
                "embedding": computed.embedding,
                "key": computed.key,
                **result.summary(),
            }
        )
    else:
        sampled = (
            f" on a {result.trustworthiness_sample_size:,}-sample subset"
            if result.trustworthiness_sampled
            else ""
        )
        unit = ds.embedding_info(computed.embedding).unit
        print(
            f"projected {len(result.coords):,} {unit} of {args.name!r} ({computed.embedding}) "
            f"with {result.method}{_cached_note(computed)}"
        )
        print(f"  trustworthiness {result.trustworthiness:.3f}{sampled}")
        print(f"  mean neighbourhood preservation {result.neighborhood_preservation.mean():.3f}")
        if result.transformed_mask.any():
            print(
                f"  {int(result.transformed_mask.sum()):,} {unit} placed by transform (not in the fitted sample)"
            )
    _write_table(computed.to_frame(), args.out)
    return 0


def cmd_outliers(args: argparse.Namespace) -> int:
    ds, computed = _compute(
        args,
        "outliers",
        method=args.method,
        threshold=args.threshold,
        fdr=args.fdr,
        z_threshold=args.z,
    )
    result = computed.result
    if args.json:
        _print_ranked_json(ds, args, computed)
    else:
        print(
            f"{result.n_flagged:,} of {len(result.scores):,} {ds.embedding_info(computed.embedding).unit} "
            "flagged as outliers "
            f"({result.method}, score > {result.threshold:.4g}){_cached_note(computed)}"
        )
        print(f"  rule: {result.params.get('rule', 'user threshold')}")
        for position, row in enumerate(result.flagged_indices[: args.top]):
            neighbours = ", ".join(
                str(computed.sample_ids[j]) for j in result.neighbor_indices[position][:3]
            )
            print(
                f"  {computed.sample_ids[row]}\tscore {result.scores[row]:.4g}\tnearest: {neighbours}"
            )
    _write_table(computed.to_frame(), args.out)
    return 0


def _print_ranked_json(ds: Any, args: argparse.Namespace, computed: Any) -> None:
    """JSON of a scored result: summary, the first ``--top`` flagged, and the ``--top`` ranked."""
    payload = computed.to_dict()
    payload.pop("scores", None)
    payload["flagged"] = payload["flagged"][: args.top]
    payload["ranked"] = _ranked_outliers(ds, args.embedding, computed, args.top)
    print_json(payload)


def _ranked_outliers(
    ds: Any, embedding: str | None, computed: Any, top: int
) -> list[dict[str, Any]]:
    """The ``top`` highest scores, flagged or not, each with its nearest neighbours as the reason."""
    import numpy as np

    from shoal.workflows import analyse as analysis

    graph = analysis.knn_graph(ds, embedding).result
    scores = computed.result.scores
    ranked = []
    for row in np.argsort(-scores, kind="stable")[:top]:
        neighbours = [
            {"sample_id": str(computed.sample_ids[j]), "distance": float(d)}
            for j, d in zip(graph.indices[row][:5], graph.distances[row][:5], strict=True)
            if j >= 0
        ]
        ranked.append(
            {
                "sample_id": str(computed.sample_ids[row]),
                "score": float(scores[row]),
                "flagged": bool(computed.result.flagged[row]),
                "neighbours": neighbours,
            }
        )
    return ranked


def cmd_duplicates(args: argparse.Namespace) -> int:
    if args.exact:
        return _exact_duplicates(args)
    _, computed = _compute(args, "duplicates", threshold=args.threshold)
    result = computed.result
    if args.json:
        payload = computed.to_dict()
        payload["pairs"] = payload["pairs"][: max(args.top, int(result.cross_split.sum()))]
        print_json(payload)
    else:
        print(
            f"{len(result.pairs):,} near-duplicate pairs in {result.n_groups:,} groups "
            f"(distance <= {result.threshold:.4g}){_cached_note(computed)}"
        )
        leaks = int(result.cross_split.sum())
        if leaks:
            print(f"  {leaks:,} pairs cross splits (leakage)")
        frame = computed.to_frame()
        for item in frame.head(args.top).itertuples(index=False):
            flag = "  LEAK" if item.cross_split else ""
            print(f"  {item.a}\t{item.b}\t{item.distance:.4f}{flag}")
    _write_table(computed.to_frame(), args.out)
    return 0


def _exact_duplicates(args: argparse.Namespace) -> int:
    from shoal.workflows.splits import exact_duplicates

    frame = exact_duplicates(workspace(args).open(args.name))
    n_groups = int(frame["group"].nunique())
    crossing = frame.groupby("group")["split"].nunique(dropna=True) > 1
    if args.json:
        print_json(
            {
                "n_groups": n_groups,
                "n_samples": len(frame),
                "n_groups_across_splits": int(crossing.sum()),
                "groups": frame.head(max(args.top, 0) * 10).to_dict(orient="records"),
            }
        )
    else:
        print(f"{len(frame):,} samples are byte-identical copies, in {n_groups:,} groups")
        if crossing.any():
            print(f"  {int(crossing.sum()):,} groups cross splits (leakage)")
        for group, members in list(frame.groupby("group"))[: args.top]:
            leak = "  LEAK" if crossing.get(group, False) else ""
            listed = ", ".join(f"{m.sample_id} ({m.split})" for m in members.itertuples())
            print(f"  {group}: {listed}{leak}")
    _write_table(frame, args.out)
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    from shoal.workflows.splits import leak_free, save_split_column

    ds = workspace(args).open(args.name)
    priority = [p.strip() for p in args.priority.split(",") if p.strip()] if args.priority else None
    plan = leak_free(
        ds,
        args.embedding,
        policy=args.policy,
        priority=priority,
        near=not args.exact_only,
        threshold=args.threshold,
    )
    result = plan.result
    if args.json:
        print_json(plan.result.to_dict(sample_ids=plan.sample_ids) | {"embedding": plan.embedding})
    else:
        kinds = "exact copies" if args.exact_only else "exact and near-duplicate copies"
        print(
            f"{result.n_leaking_groups:,} groups of {kinds} cross splits "
            f"({result.n_leaking_samples:,} samples); the leak-free assignment moves "
            f"{result.n_moved:,} ({args.policy})"
        )
        for move in result.moves_frame().itertuples(index=False):
            print(f"  {move.n_samples:,} from {move.source} to {move.target}")
        for split in result.proportions_frame().itertuples(index=False):
            print(f"  {split.split}: {split.n_before:,} -> {split.n_after:,}")
    if args.save_column:
        save_split_column(ds, plan, args.save_column)
        print(f"saved the leak-free split as column {args.save_column!r}")
    _write_table(plan.to_frame(), args.out)
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from shoal.workflows.selection import select

    ds = workspace(args).open(args.name)
    try:
        picked = select(
            ds,
            args.n,
            args.embedding,
            where=args.where,
            covered=args.covered,
            novel_vs=args.novel_vs,
            method=args.method,
            random_state=args.seed,
        )
    except ValueError as error:  # a filter that selects nothing, n < 1 (FilterError included)
        raise CliError(str(error)) from error
    result, frame = picked.result, picked.to_frame()
    if args.json:
        print_json(picked.to_dict())
    else:
        print(
            f"picked {result.n_selected:,} of {result.n_candidates:,} candidates ({result.method}"
            f"{f', {result.n_seeds:,} covered already' if result.n_seeds else ''}): every "
            f"candidate is now within {result.radius:.3f} of a pick (mean {result.mean_distance:.3f}"
            f", cosine distance)"
        )
        for row in frame.head(20).itertuples(index=False):
            extra = " ".join(str(getattr(row, c)) for c in ("split", "label") if c in frame.columns)
            print(f"  {row.pick}\t{row.sample_id}\t{extra}\tcovers {row.represented:,}")
        if len(frame) > 20:
            print(f"  ... {len(frame) - 20:,} more (--out picks.csv for all)")
    _write_table(frame, args.out)
    return 0


def cmd_mislabels(args: argparse.Namespace) -> int:
    ds, computed = _compute(args, "mislabels", label_column=args.label_column)
    result = computed.result
    if args.json:
        _print_ranked_json(ds, args, computed)
    else:
        print(
            f"{result.n_flagged:,} of {int(result.params.get('n_labelled', 0)):,} labelled "
            f"{ds.embedding_info(computed.embedding).unit} "
            f"look mislabelled{_cached_note(computed)}"
        )
        for row in result.flagged_indices[: args.top]:
            print(
                f"  {computed.sample_ids[row]}\tscore {result.scores[row]:.3f}\t"
                f"suggested {str(result.suggested_labels[row])!r} ({result.suggested_posterior[row]:.2f})"
            )
    _write_table(computed.to_frame(), args.out)
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    from shoal.workflows import analyse as analysis

    ds = workspace(args).open(args.name)
    vector = None
    if args.image:
        vector = _embed_image(ds, args.embedding, Path(args.image))
    computed = analysis.similar(
        ds, args.embedding, sample_ids=args.sample_ids, vector=vector, k=args.k
    )
    frame = computed.to_frame()
    if args.json:
        print_json(computed.to_dict())
    else:
        query = args.image or ", ".join(args.sample_ids)
        print(f"{len(frame)} {ds.embedding_info(computed.embedding).unit} most similar to {query}:")
        for item in frame.itertuples(index=False):
            print(f"  {item.rank:>3}  {item.sample_id}\tdistance {item.distance:.4f}")
    _write_table(frame, args.out)
    return 0


def _embed_image(ds: Any, embedding: str | None, path: Path) -> Any:
    if not path.exists():
        raise CliError(f"image {path} does not exist")
    info = ds.load_embeddings(embedding).info
    try:
        from shoal.embedding import create_model, embed_paths

        model = create_model(info.model)
    except Exception as error:  # a user's own embedding set has no model here to embed with
        raise CliError(
            f"cannot embed {path.name} with model {info.model!r} of embedding set {info.name!r}: {error}"
        ) from error
    return embed_paths([path], model)[0]


def cmd_compare(args: argparse.Namespace) -> int:
    from shoal.workflows.compare import compare_dataset
    from shoal.workflows.filters import FilterError

    ds = workspace(args).open(args.name)
    try:
        result = compare_dataset(
            ds,
            reference=args.reference,
            current=args.current,
            embedding=args.embedding,
            method=args.method,
            alpha=args.alpha,
            n_permutations=args.permutations,
            recompute=args.recompute,
        ).result
    except (FilterError, ValueError) as error:
        raise CliError(str(error)) from error
    unit = ds.embedding_info(ds.resolve_embedding(args.embedding)).unit
    table = result.novelty_frame()
    if unit == "boxes":  # the two sides are boxes of an object-level set
        table = table.rename(columns={"sample_id": "object_id"})
    if args.json:
        print_json(result.to_dict())
    else:
        print(result.verdict(unit=unit))
        print(
            f"  {result.method}: p = {result.p_value:.4g}, {result.effect_name} = {result.effect_size:.4g}, "
            f"reference {result.n_reference:,}, current {result.n_current:,}"
            + (" boxes" if unit == "boxes" else "")
        )
        novelty = table.sort_values("novelty", ascending=False)
        print(
            f"  {int(result.novelty_flags.sum()):,} current {unit} are "
            "novel (not covered by the reference)"
        )
        for row in novelty.head(min(args.top, int(result.novelty_flags.sum()))).itertuples():
            print(f"    {row[1]}\tnovelty {row.novelty:.3f}")
        for shift in result.shifted_clusters:
            print(
                f"  cluster {shift.cluster}: {shift.direction}-represented in current "
                f"({shift.current_fraction:.1%} vs {shift.reference_fraction:.1%}, q = {shift.q_value:.3g})"
            )
    _write_table(table, args.out)
    return 0
