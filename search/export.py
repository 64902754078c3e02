"""Export any checkpoint of this project to ONNX (verified against onnxruntime) with a JSON sidecar:

    python -m search.export --checkpoint picked.pt [--out picked.onnx] [--int8]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pruning import image_spec_of, load_checkpoint, load_dataset
from search.cli import Parser, add_int8_flags, folder_arg, int8_settings, path_arg, run_cli
from search.config import quiet_libraries
from search.results import VERIFY_BATCH, check_calibration_count, export_paths, int8_table, ship, sidecar_path
from search.storage import check_targets
from search.trial import VAL_SPLIT_SEED


def get_args_parser() -> Parser:
    parser = Parser(prog="search.export", description="Export a checkpoint to ONNX with a preprocessing sidecar.",
                    example="python -m search.export --checkpoint picked.pt --out picked.onnx")
    parser.add_argument("--checkpoint", required=True, type=path_arg,
                        help="a .pt written by search.train, search.run or search.pick (required)")
    parser.add_argument("--out", type=path_arg, help="the .onnx to write (default: the checkpoint's name with .onnx); "
                                      "the sidecar is the same name with .json")
    parser.add_argument("--data-dir", default="data", type=folder_arg,
                        help=f"where the checkpoint's dataset is found, for the {VERIFY_BATCH}-image verification "
                             f"batch (default: data)")
    parser.add_argument("--model", help="the checkpoint's model source; needed for a model of your own code "
                                        "(naming it allows importing that code), checked otherwise (default: the one it records)")
    parser.add_argument("--cache-mb", type=float, default=4096, help="as search.run's (default 4096)")
    parser.add_argument("--force", action="store_true",
                        help="replace existing files at the export's paths (default: refuse them)")
    parser.add_argument("--no-download", dest="download", action="store_false",
                        help="never download the dataset (default: download where the network allows)")
    add_int8_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    quiet_libraries()
    int8 = int8_settings(args)
    onnx = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")
    check_targets(export_paths(onnx, int8=int8 is not None), "--out", force=args.force, pinned=(args.checkpoint,))
    ckpt = load_checkpoint(args.checkpoint, expect_model=args.model)
    pre = ckpt.meta.preprocessing
    data = load_dataset(ckpt.meta.dataset or "fashion-mnist", data_dir=args.data_dir, seed=VAL_SPLIT_SEED,
                        download=args.download, image=image_spec_of(pre) if pre else None, cache_mb=args.cache_mb)
    if int8 is not None:
        check_calibration_count(int8, data)
    sidecar = ship(ckpt.model, ckpt.meta, ckpt.plan, data, onnx, int8=int8)
    line = {"onnx": str(onnx), "sidecar": str(sidecar_path(onnx)), "max_abs_diff": sidecar["verification"]["max_abs_diff"],
            "latency_ms": sidecar["latency_ms"]["onnxruntime_cpu"]}
    if int8 is not None:
        print(int8_table(sidecar["int8"]), file=sys.stderr)
        block = sidecar["int8"]
        line["int8"] = {"onnx": str(onnx.parent / block["onnx"]),
                        **{k: block[k] for k in ("val_accuracy", "test_accuracy", "val_drop_pt", "top1_agreement",
                                                 "size_mb", "latency_ms", "speedup", "kept_fp32")}}
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    run_cli(main)
