"""``vlm index add|search|remove|info --db PATH``: a folder of images searchable by text or image (vlm.index)."""
from __future__ import annotations

import json
import sys

from .classify import add_clip_arguments

HELP = "index images and search them by text or image (CLIP + Milvus Lite)"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="add image files and folders (recursively); only new content is embedded")
    add.add_argument("paths", nargs="+", help="image files or folders")
    add.add_argument("--meta", default=None, help='JSON object stored with each image, e.g. \'{"album": "2024"}\'')
    add.add_argument("--batch-size", type=int, default=32)
    add.add_argument("--every", type=float, default=1.0, help="seconds between the indexed frames of a video "
                     "(default 1)")
    search = sub.add_parser("search", help="the images most similar to a text (or, with --image, an image)")
    search.add_argument("query", help="text to search for, or an image file with --image")
    search.add_argument("--image", action="store_true", help="QUERY is an image file")
    search.add_argument("-k", type=int, default=10, help="how many results (default: 10)")
    search.add_argument("--filter", default=None, help='Milvus expression, e.g. \'meta["album"] == "2024"\'')
    search.add_argument("--json", action="store_true", help="print the hits as JSON lines")
    remove = sub.add_parser("remove", help="remove images by file, folder or content id")
    remove.add_argument("items", nargs="+")
    info = sub.add_parser("info", help="how many images, which CLIP, where")
    for p in (add, search, remove, info):
        p.add_argument("--db", required=True, help="index folder (created by `add` when missing)")
        add_clip_arguments(p)


def _clip(args):
    """--clip, else the CLIP the index was built with (when that folder still exists), else --model's."""
    from pathlib import Path

    from vlm.clip import Clip
    from vlm.index import MANIFEST

    if args.clip:
        return Clip.load(args.clip)
    manifest = Path(args.db, MANIFEST)
    if manifest.is_file():
        try:
            built_with = json.loads(manifest.read_text()).get("clip")
        except (OSError, ValueError, AttributeError):
            built_with = None  # ImageIndex.open names the problem
        if built_with and Path(built_with).is_dir():
            return Clip.load(built_with)
    return Clip.load(args.model)


def run(args) -> int:
    from pathlib import Path

    from vlm.index import MANIFEST, ImageIndex

    if args.action != "add" and not Path(args.db, MANIFEST).is_file():
        ImageIndex.open(args.db, None)  # raises the missing-index error before any CLIP is loaded
    with ImageIndex.open(args.db, _clip(args), create=args.action == "add") as index:
        return {"add": _add, "search": _search, "remove": _remove, "info": _info}[args.action](index, args)


def _add(index, args) -> int:
    from tqdm import tqdm

    from vlm.index import image_files

    meta = None
    if args.meta:
        try:
            meta = json.loads(args.meta)
        except ValueError as exc:
            raise ValueError(f"--meta is not JSON: {exc}") from None
    files = image_files(args.paths)
    with tqdm(total=len(files), unit="file", desc="indexing", file=sys.stderr) as bar:
        report = index.add(files, metadata=meta, batch_size=args.batch_size, video_every_s=args.every,
                           on_progress=lambda done, total: bar.update(done - bar.n))
    for path, why in report.failed:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(f"{report.summary()}; {len(index)} images in {args.db}")
    return 0


def _search(index, args) -> int:
    query = _query(args.query, args.image)
    for hit in index.search(query, k=args.k, filter=args.filter):
        if args.json:
            print(json.dumps({"path": hit.path, "time_s": hit.time, "score": round(hit.score, 6), "id": hit.id,
                              "meta": hit.metadata}))
        else:
            print(f"{hit.score:.4f}  {hit.label()}")
    return 0


def _query(query: str, image: bool):
    from pathlib import Path

    if not image:
        return query
    path = Path(query)
    if not path.is_file():
        raise FileNotFoundError(f"query image not found: {query}")
    return path


def _remove(index, args) -> int:
    print(f"{index.remove(args.items)} removed; {len(index)} images in {args.db}")
    return 0


def _info(index, args) -> int:
    print(json.dumps({"db": str(index.folder), "images": len(index), "dim": index.manifest["dim"],
                      "store": index.manifest["store"], "clip": index.clip.describe()}, indent=2))
    return 0
