"""VQA v2, GQA and RAF-DB at their real sizes: load time (cold, warm), peak memory, one epoch.

Generates stand-ins in the official layouts at the official counts × ``--scale`` (into a temporary
folder, or ``--root`` where they are kept for the next run), then measures, each load in a fresh
subprocess (so its peak RSS is its own):

Every measuring process imports torch and ``vqalab.data`` first (0.7-0.9 GB of RSS), the official
readers' too, so peak RSS compares like for like; the growth during the load is reported as well.

- vqa_v2: ``build_data`` with feature files (``{train,val}2014_features/``, 512-d ``.npy``), cold
  (no prepared entry and no feature table: the JSON files are parsed and prepared, the feature
  files copied into one table per split, and both stored) and warm (both read back); the official VQA API's load (``VQA(annotation_file, question_file)``,
  reproduced below: ``json.load`` of both files and its ``createIndex``) for train and val, before
  and after, kept alive together as a user of the API holds them;
- gqa: ``build_data`` with scene graphs, cold and warm, and plain ``json.load`` of the same files;
- rafdb: ``build_data`` (official layout, 100 × 100 aligned JPEGs), cold (no decoded-image cache)
  and warm;
- ``vqalab data`` (the CLI, in a subprocess), first and second call;
- one epoch of model 1 (``vqa_mean_mlp``) at batch 512 over the VQA v2 features on the CPU:
  samples/s of the model step (representative batches already in memory) and end to end (the
  training loop's loader over the whole epoch). Goal: end to end within 1.5× of the model step.

"Cold" is a first load of unchanged files whose bytes are in the page cache, not a cold disk:
each data set's files are read once before its first measurement (``read_into_page_cache``), as
the kernel may have evicted files generated in an earlier run. Goals at full size: VQA v2 cold ≤ 2× and peak RSS ≤ 1.3× the official API's,
warm ≤ 0.3× its time; ``vqalab data`` second call < 5 s.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/full_size_data.py --scale 0.1
    PYTHONPATH=$PWD .venv/bin/python benchmarks/full_size_data.py --root /tmp/full_size --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve()
sys.path.insert(0, str(BENCH.parents[1] / "tests"))  # data_fixtures: the stand-in writers the tests use
RESULT = "RESULT "  # prefix of the child's one JSON line
DATASET_FOLDERS = {"vqa_v2": "vqa_v2", "gqa": "gqa", "rafdb": "RAF-DB"}  # under the data root
GOAL_COLD = 2.0
GOAL_RSS = 1.3
GOAL_WARM = 0.3
GOAL_EPOCH = 1.5
GOAL_DATA_CLI_S = 5.0
LINKS_PER_FILE = 60_000
VQA_FEATURES = {"train_features": "train2014_features", "val_features": "val2014_features"}


# --- Stand-ins ------------------------------------------------------------------------------------

def write_gqa(root: Path, scale: float, seed: int = 0) -> None:
    """GQA balanced questions (official keys) and scene graphs (official layout, 8 objects per image)."""
    from data_fixtures import GQA_COUNTS, pseudo_word, scaled, spread, write_json_object

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    structural = ("verify", "query", "choose", "logical", "compare")
    for split, (n_questions, n_images) in GQA_COUNTS.items():
        n_questions, n_images = scaled(n_questions, scale), scaled(n_images, scale)
        image_ids = [str(2_300_000 + i) if split == "train" else f"n{100_000 + i}" for i in range(n_images)]
        per_image = spread(n_questions, n_images, rng).tolist()
        words = rng.integers(0, 1800, (n_questions, 3)).tolist()
        kinds = rng.integers(0, 5, n_questions).tolist()

        def questions(image_ids=image_ids, per_image=per_image, words=words, kinds=kinds):
            row = 0
            for image, count in zip(image_ids, per_image):
                for _ in range(count):
                    a, b, c = (pseudo_word(w) for w in words[row])
                    answer = ("yes", "no")[row % 2] if kinds[row] in (0, 3, 4) else a
                    yield f"{row:08d}", {
                        "semantic": [{"operation": "select", "dependencies": [], "argument": f"{b} ({row})"}],
                        "entailed": [], "equivalent": [f"{row:08d}"],
                        "question": f"Is the {a} {b} to the left of the {c}?", "imageId": image, "isBalanced": True,
                        "groups": {"global": None, "local": f"10c-{b}"}, "answer": answer,
                        "semanticStr": f"select: {b} ({row})->verify", "annotations": {"answer": {}, "question": {},
                                                                                         "fullAnswer": {}},
                        "types": {"detailed": "verifyAttr", "semantic": "attr", "structural": structural[kinds[row]]},
                        "fullAnswer": f"Yes, the {a} is {b}."}
                    row += 1

        def graphs(image_ids=image_ids):
            names = rng.integers(0, 1800, (len(image_ids), 8)).tolist()
            for i, image in enumerate(image_ids):
                objects = {}
                for k in range(8):
                    relations = [{"name": "to the left of", "object": f"{i}_{(k + 1) % 8}"},
                                 {"name": "near", "object": f"{i}_{(k + 3) % 8}"}]
                    objects[f"{i}_{k}"] = {"name": pseudo_word(names[i][k]), "x": 10 * k, "y": 5 * k, "w": 40, "h": 30,
                                           "attributes": [pseudo_word(names[i][(k + 1) % 8])], "relations": relations}
                yield image, {"width": 640, "height": 480, "objects": objects}

        write_json_object(root / f"{split}_balanced_questions.json", questions())
        write_json_object(root / f"{split}_sceneGraphs.json", graphs())


def write_rafdb(root: Path, scale: float, seed: int = 0) -> None:
    """RAF-DB basic in the official layout: label file and 100 × 100 aligned JPEGs."""
    from PIL import Image

    from data_fixtures import RAFDB_COUNTS, expression_image, scaled

    rng = np.random.default_rng(seed)
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "Image" / "aligned").mkdir(parents=True, exist_ok=True)
    faces = [np.asarray(expression_image(k, 100, rng)) for k in range(7)]
    lines = []
    for split, digits in (("train", 5), ("test", 4)):
        for i in range(1, scaled(RAFDB_COUNTS[split], scale) + 1):
            label = int(rng.integers(7))
            pixels = np.clip(faces[label].astype(np.int16) + rng.integers(-8, 9, (100, 100, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / "Image" / "aligned" / f"{split}_{i:0{digits}d}_aligned.jpg")
            lines.append(f"{split}_{i:0{digits}d}.jpg {label + 1}")
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")


def link_coco_images(vqa_root: Path) -> None:
    """COCO-named ``.jpg`` entries in train2014/ and val2014/, all hard links to one tiny JPEG: the
    default ``vqalab data`` check (images) sees the real folder sizes at no disk cost."""
    from PIL import Image

    for split in ("train", "val"):
        folder = vqa_root / f"{split}2014"
        folder.mkdir(exist_ok=True)
        for i, path in enumerate(sorted((vqa_root / f"{split}2014_features").iterdir())):
            source = vqa_root / f".{split}_image_{i // LINKS_PER_FILE}.jpg"  # a file takes 65,000 links at most
            if i % LINKS_PER_FILE == 0:
                Image.new("RGB", (8, 8)).save(source)
            target = folder / (path.stem + ".jpg")
            if not target.exists():
                os.link(source, target)


def generate(root: Path, scale: float, datasets: list[str]) -> dict:
    from data_fixtures import write_vqa_v2_stand_in

    seconds = {}
    writers = {"vqa_v2": lambda: (write_vqa_v2_stand_in(root / "vqa_v2", scale=scale), link_coco_images(root / "vqa_v2")),
               "gqa": lambda: write_gqa(root / "gqa", scale), "rafdb": lambda: write_rafdb(root / "RAF-DB" / "basic", scale)}
    for name in datasets:
        done = root / f".{name}-scale-{scale}"
        if done.exists():
            continue
        t0 = time.perf_counter()
        writers[name]()
        done.touch()
        seconds[name] = round(time.perf_counter() - t0, 1)
    return seconds


# --- Measurements, each in a fresh process ----------------------------------------------------------

def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), MiB. (``ru_maxrss`` would
    start from the parent's size at fork.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def official_vqa(annotation_file: Path, question_file: Path) -> dict:
    """The official VQA API's ``VQA.__init__`` (vqaTools/vqa.py): load both files, ``createIndex``."""
    with open(annotation_file) as f:
        dataset = json.load(f)
    with open(question_file) as f:
        questions = json.load(f)
    img_to_qa = {ann["image_id"]: [] for ann in dataset["annotations"]}
    qa = {ann["question_id"]: [] for ann in dataset["annotations"]}
    qqa = {ann["question_id"]: [] for ann in dataset["annotations"]}
    for ann in dataset["annotations"]:
        img_to_qa[ann["image_id"]] += [ann]
        qa[ann["question_id"]] = ann
    for ques in questions["questions"]:
        qqa[ques["question_id"]] = ques
    return {"dataset": dataset, "questions": questions, "qa": qa, "qqa": qqa, "imgToQA": img_to_qa}


def measure(kind: str, root: Path, threads: int | None) -> dict:
    """One measurement in this (fresh) process: seconds, peak RSS and RSS before the load (MiB)."""
    import torch

    import vqalab.data  # noqa: F401 (every process starts from the same imports, so RSS compares like for like)

    if kind.endswith("official"):
        baseline = rss_mb()
        t0 = time.perf_counter()
        if kind == "vqa_v2_official":
            kept = [official_vqa(root / "vqa_v2" / f"v2_mscoco_{s}2014_annotations.json",
                                 root / "vqa_v2" / f"v2_OpenEnded_mscoco_{s}2014_questions.json") for s in ("train", "val")]
        else:
            kept = []
            for name in ("train_balanced_questions", "val_balanced_questions", "train_sceneGraphs", "val_sceneGraphs"):
                with open(root / "gqa" / f"{name}.json") as f:
                    kept.append(json.load(f))
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "peak_rss_mb": rss_mb("VmHWM"),
                "rss_before_mb": baseline, "held": len(kept)}

    from vqalab.data import build_data

    if threads:
        torch.set_num_threads(threads)
    specs = {"vqa_v2": {"name": "vqa_v2", "root": str(root / "vqa_v2"), **VQA_FEATURES},
             "gqa": {"name": "gqa", "root": str(root / "gqa")},
             "rafdb": {"name": "rafdb", "root": str(root / "RAF-DB" / "basic")}}
    if kind == "epoch":
        return one_epoch(build_data(specs["vqa_v2"]))
    baseline = rss_mb()
    t0 = time.perf_counter()
    data = build_data(specs[kind])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mb": rss_mb("VmHWM"),
            "rss_before_mb": baseline, "train": len(data.train), "val": len(data.val),
            "from_cache": data.info.get("prepared_from_cache")}


def one_epoch(data, batch_size: int = 512) -> dict:
    """Model 1 over the features: model step on representative batches, then one whole epoch."""
    import torch

    from vqalab.bench import fresh_training_state, measure_training
    from vqalab.config import build_config
    from vqalab.data.samplers import epoch_batches
    from vqalab.engine import make_loader, to_device, training_step

    cfg = build_config({"model": {"name": "vqa_mean_mlp"}, "data": {"name": "vqa_v2", **VQA_FEATURES},
                        "train": {"batch_size": batch_size, "device": "cpu", "loss": "bce", "progress": False}})
    device = torch.device("cpu")
    step = measure_training(cfg, batch_size, data=data, device=device, warmup_steps=3, timed_steps=20)
    model_step = batch_size * len(step["times"]) / sum(step["times"])
    model, optimizer, scaler = fresh_training_state(cfg, data, device, "off", False, False)
    batches = epoch_batches(len(data.train), batch_size, cfg.seed, 1, data.train_groups)
    t0 = time.perf_counter()
    seen = 0
    for batch in make_loader(data.train, batches, data, cfg, device):
        training_step(model, optimizer, scaler, to_device(batch, device), input_keys=data.input_keys,
                      task=data.task, cfg=cfg, device=device, amp="off")
        seen += len(batch["target"])
    epoch_s = time.perf_counter() - t0
    return {"model_step_samples_per_s": model_step, "end_to_end_samples_per_s": seen / epoch_s, "epoch_s": epoch_s,
            "samples": seen, "threads": torch.get_num_threads(), "image_dim": data.model_kwargs["image_dim"],
            "num_answers": data.model_kwargs["num_answers"]}


def read_into_page_cache(folder: Path) -> dict:
    """Read every file under ``folder`` once; the seconds it took say how cold the disk was."""
    t0, files, size = time.perf_counter(), 0, 0
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                while chunk := os.read(fd, 1 << 20):
                    size += len(chunk)
            finally:
                os.close(fd)
            files += 1
    return {"files": files, "mb": round(size / 2**20), "seconds": round(time.perf_counter() - t0, 2)}


def in_subprocess(kind: str, root: Path, threads: int | None, env: dict) -> dict:
    load = os.getloadavg()[0]
    command = [sys.executable, str(BENCH), "--measure", kind, "--root", str(root)]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    result = {**json.loads(lines[-1][len(RESULT):]), "load_avg_1min": load}
    print(kind, json.dumps(result), file=sys.stderr, flush=True)  # progress: each figure as it comes
    return result


def data_cli(root: Path, env: dict) -> dict:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vqalab", "data"], check=False, env={**env, "VQALAB_DATA": str(root)},
                          capture_output=True, text=True)
    return {"seconds": time.perf_counter() - t0, "load_avg_1min": load, "exit": done.returncode,
            "lines": [line for line in done.stdout.splitlines() if line.split()[:1] in (["vqa_v2"], ["gqa"], ["rafdb"])]}


def run(args: argparse.Namespace, root: Path) -> dict:
    datasets = args.datasets.split(",")
    generated = generate(root, args.scale, datasets)
    cache = root / "cache"
    env = {**os.environ, "VQALAB_CACHE": str(cache), "OMP_NUM_THREADS": str(args.threads or os.cpu_count())}
    out: dict = {"scale": args.scale, "root": str(root), "generated_s": generated, "cpus": os.cpu_count()}
    for name in datasets:
        result: dict = {"read_into_page_cache": read_into_page_cache(root / DATASET_FOLDERS[name])}
        if name in ("vqa_v2", "gqa"):
            result["official_before"] = in_subprocess(f"{name}_official", root, args.threads, env)
        shutil.rmtree(cache / ("rafdb" if name == "rafdb" else "prepared"), ignore_errors=True)
        if name == "vqa_v2":
            shutil.rmtree(cache / "features", ignore_errors=True)  # the feature tables are built cold too
        result["cold"] = in_subprocess(name, root, args.threads, env)
        result["warm"] = in_subprocess(name, root, args.threads, env)
        if name in ("vqa_v2", "gqa"):
            result["official_after"] = in_subprocess(f"{name}_official", root, args.threads, env)
            official_s = min(result["official_before"]["seconds"], result["official_after"]["seconds"])
            official_rss = max(result["official_before"]["peak_rss_mb"], result["official_after"]["peak_rss_mb"])
            result["cold_over_official_time"] = result["cold"]["seconds"] / official_s
            result["warm_over_official_time"] = result["warm"]["seconds"] / official_s
            result["cold_over_official_rss"] = result["cold"]["peak_rss_mb"] / official_rss
            official_growth = max(r["peak_rss_mb"] - r["rss_before_mb"] for r in (result["official_before"],
                                                                                   result["official_after"]))
            result["cold_over_official_rss_growth"] = \
                (result["cold"]["peak_rss_mb"] - result["cold"]["rss_before_mb"]) / official_growth
        out[name] = result
    if "vqa_v2" in datasets:
        out["vqa_v2"]["goals"] = {"cold_time": GOAL_COLD, "peak_rss": GOAL_RSS, "warm_time": GOAL_WARM}
        if not args.no_epoch:
            epoch = in_subprocess("epoch", root, args.threads, env)
            epoch["model_step_over_end_to_end"] = epoch["model_step_samples_per_s"] / epoch["end_to_end_samples_per_s"]
            epoch["goal"] = GOAL_EPOCH
            out["epoch_vqa_mean_mlp_batch_512"] = epoch
    shutil.rmtree(cache / "data_status", ignore_errors=True)
    out["vqalab_data"] = {"first": data_cli(root, env), "second": data_cli(root, env), "goal_s": GOAL_DATA_CLI_S}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the official counts (1: full size)")
    parser.add_argument("--root", default=None, help="where the stand-ins are written and kept (default: a temporary folder)")
    parser.add_argument("--datasets", default="vqa_v2,gqa,rafdb", help="comma-separated: vqa_v2, gqa, rafdb")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-epoch", action="store_true", help="skip the one-epoch training measurement")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # child process: one measurement
    args = parser.parse_args()
    if args.measure:
        print(RESULT + json.dumps(measure(args.measure, Path(args.root), args.threads)))
        return
    if args.root:
        result = run(args, Path(args.root))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args, Path(tmp))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
