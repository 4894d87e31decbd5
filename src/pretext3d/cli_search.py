"""Command-line parts for search: ``index`` (and ``index merge``, ``index evaluate``), ``search``
and ``serve``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretext3d.cli_options import at_least, log_for

__all__ = ["add_index", "add_search", "add_serve", "index_actions"]

MODALITY_CHOICES = ("points", "image", "mesh")


def index_actions(argv: list[str]) -> list[str]:
    """``index merge ...`` / ``index evaluate ...`` -> the commands ``index-merge`` / ``index-evaluate``
    (``index SOURCE`` takes any path as SOURCE, so the actions are spelled apart for argparse).
    The program's own options may come first (``--threads N`` with its value)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--threads" else 1
    if i + 1 < len(argv) and argv[i] == "index" and argv[i + 1] in ("merge", "evaluate"):
        return [*argv[:i], f"index-{argv[i + 1]}", *argv[i + 2:]]
    return argv


def add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="index a 3D collection in a trained run's space, for search",
                       description="Embed every object of SOURCE (any dataset `data info` reads, or a prepared store) "
                       "with a pretraining run's encoders, one vector per modality, plus a thumbnail and its metadata. "
                       "Re-runs add new or changed objects and drop removed ones; a kill loses only the objects in "
                       "flight. Also: `pretext3d index merge INDEX [SHARD_FOLDER ...]` finishes an index from shards, "
                       "`pretext3d index evaluate INDEX` measures retrieval, latency and size from it.")
    p.add_argument("source", help="a dataset file or folder, a prepared store, or 'builtin[:seed=,train=,test=]'")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="the pretraining run folder whose space to use")
    p.add_argument("--out", required=True, metavar="INDEX", help="the index folder (created; re-runs update it)")
    p.add_argument("--modalities", nargs="+", choices=MODALITY_CHOICES,
                   help="modalities to embed (default: every one the run has and the source allows)")
    p.add_argument("--space", choices=("auto", "shared", "encoder"), default="auto",
                   help="the method's shared space (cross-modal search), or its encoders' (default: shared when the "
                   "method has one)")
    p.add_argument("--views", type=at_least(1), help="views rendered per object (default: as the run's training store)")
    p.add_argument("--render-size", type=at_least(8), help="side of the rendered views in pixels (default: the run's "
                   "training store's, at least the run's image size)")
    p.add_argument("--pool", choices=("max", "mean"), default="max",
                   help="how an object's views make its image vector (default max, as `evaluate retrieval`)")
    p.add_argument("--splits", nargs="+", metavar="SPLIT", help="index only these splits of SOURCE (default all)")
    p.add_argument("--workers", type=at_least(1), default=1, help="processes preparing objects (default 1)")
    p.add_argument("--shard", default="0/1", help="I/N: this machine takes objects i with i %% N == I; finish with "
                   "`pretext3d index merge` (default 0/1)")
    p.add_argument("--batch-size", type=at_least(1), default=32, help="objects per forward pass and per saved chunk")
    p.add_argument("--approximate", choices=("auto", "always", "never"), default="auto",
                   help="HNSW approximate search: auto above 100,000 objects (measured: exact search then takes "
                   "over 15 ms a query on 2 cores)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", metavar="OUT", help="also write the summary as JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_index)
    merge = sub.add_parser("index-merge", help="(index merge) finish an index from shards indexed apart",
                           description="Gather the chunks (and prepared objects) of shards indexed with --shard into "
                           "INDEX, from INDEX itself and from each SHARD_FOLDER (shards indexed on other machines), "
                           "and write the finished index.")
    merge.add_argument("index", metavar="INDEX")
    merge.add_argument("shards", nargs="*", metavar="SHARD_FOLDER")
    merge.add_argument("--quiet", action="store_true")
    merge.set_defaults(func=_cmd_merge)
    evaluate = sub.add_parser("index-evaluate", help="(index evaluate) retrieval scores, latency and size of an index")
    evaluate.add_argument("index", metavar="INDEX")
    evaluate.add_argument("--pairs", nargs="+", default=None, metavar="Q->G",
                          help="query->gallery modality pairs (default: every pair the index holds)")
    evaluate.add_argument("--split", default=None, help="only the objects of this split (default all)")
    evaluate.add_argument("--latency-queries", type=at_least(0), default=200,
                          help="queries timed one at a time, exact and approximate (default 200; 0: none)")
    evaluate.add_argument("--json", metavar="OUT")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(func=_cmd_evaluate_index)


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        from pretext3d.utils.io import atomic_write_json

        atomic_write_json(path, payload)


def _cmd_index(args: argparse.Namespace) -> int:
    from pretext3d.data.prepare import parse_shard
    from pretext3d.search.build import IndexOptions, build_search_index

    options = IndexOptions(modalities=tuple(args.modalities) if args.modalities else None, space=args.space,
                           views=args.views, render_size=args.render_size, pool=args.pool,
                           splits=tuple(args.splits) if args.splits else None, workers=args.workers,
                           shard=parse_shard(args.shard), batch_size=args.batch_size, device=args.device,
                           approximate=args.approximate, progress=not args.quiet)
    summary = build_search_index(args.source, args.checkpoint, args.out, options, log=log_for(args))
    rate = summary.embedded_now / summary.seconds if summary.seconds else 0.0
    print(f"indexed {args.source} into {args.out}: {summary.embedded_now} object(s) embedded now, {summary.reused} "
          f"kept from before, {len(summary.failed)} failed, in {summary.seconds:.1f} s ({rate:.2f} objects/s; "
          f"prepare {summary.prepare_seconds:.1f} s, embed {summary.embed_seconds:.1f} s)")
    for key, reason in summary.failed[:20]:
        print(f"  skipped {key}: {reason}", file=sys.stderr)
    if len(summary.failed) > 20:
        print(f"  ... and {len(summary.failed) - 20} more (see {args.out}/index.json)", file=sys.stderr)
    if summary.finished:
        print(f"  {summary.counts['indexed']} object(s) searchable: pretext3d search {args.out} QUERY")
    else:
        print(f"  shard {args.shard} done; when every shard is: pretext3d index merge {args.out} [SHARD_FOLDER ...]")
    _write_json(args.json, {"source": args.source, "index": args.out, "embedded_now": summary.embedded_now,
                            "reused": summary.reused, "failed": summary.failed, "seconds": summary.seconds,
                            "prepare_seconds": summary.prepare_seconds, "embed_seconds": summary.embed_seconds,
                            "objects_per_second": rate, "counts": summary.counts, "finished": summary.finished})
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from pretext3d.search.build import merge_indexes

    index = merge_indexes(args.index, args.shards, log=log_for(args), progress=not args.quiet)
    print(f"{args.index}: {index['counts']['indexed']} object(s) searchable "
          f"({index['counts']['missing']} not embedded by any shard)")
    return 0


def _cmd_evaluate_index(args: argparse.Namespace) -> int:
    from pretext3d.search.measure import evaluate_index, format_evaluation

    report = evaluate_index(args.index, args.pairs, args.split, args.latency_queries, args.device)
    print(format_evaluation(report))
    _write_json(args.json, report)
    return 0


def add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index by a mesh, point cloud, image or indexed object",
                       description="QUERY is a mesh file (.off .obj .ply .stl), a point-cloud file (.npy .ply .xyz "
                       ".txt .pts), an image (.png .jpg: a render or a photo), or the id of an indexed object. Prints "
                       "the ranked results (score = cosine similarity).")
    p.add_argument("index", metavar="INDEX")
    p.add_argument("query", metavar="QUERY")
    p.add_argument("--k", type=at_least(1), default=10, help="results (default 10)")
    p.add_argument("--modality", choices=MODALITY_CHOICES,
                   help="search the collection's vectors of this modality (default: the query's own, else points)")
    p.add_argument("--query-modality", choices=MODALITY_CHOICES,
                   help="for an indexed object's id: which of its vectors queries (default the index's first)")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_search)


def _cmd_search(args: argparse.Namespace) -> int:
    from pretext3d.search.index import open_index

    index = open_index(args.index, args.device)
    vector, asked_as, target = index.resolve(args.query, args.modality, args.query_modality)
    hits = index.search_vector(vector, target, args.k)
    print(f"{args.query} ({asked_as}) -> {target} of {args.index} ({len(index)} objects)")
    print(f"{'rank':>4s} {'score':>7s}  {'class':16s} {'id':32s} path")
    for hit in hits:
        print(f"{hit.rank:4d} {hit.score:7.4f}  {str(hit.class_ or '-'):16s} {hit.id:32s} {hit.path}")
    _write_json(args.json, {"query": args.query, "query_modality": asked_as, "modality": target, "k": args.k,
                            "index": args.index, "hits": [h.as_dict() for h in hits]})
    return 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a local web page to browse and search an index",
                       description="Serve INDEX as a web page (thumbnail gallery; search by an uploaded mesh, cloud or "
                       "image, or by clicking an object) with a JSON API behind it (/api/...). Binds to 127.0.0.1 "
                       "unless told otherwise.")
    p.add_argument("index", metavar="INDEX")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=at_least(0), default=8765)
    p.add_argument("--max-upload-mb", type=float, default=64.0, help="largest accepted upload (default 64 MB)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from pretext3d.search.server import serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"pretext3d: serving on {args.host}: anyone who can reach this machine can search the index and upload "
              "files", file=sys.stderr)
    serve(Path(args.index), args.host, args.port, int(args.max_upload_mb * 1024 * 1024), args.device)
    return 0
